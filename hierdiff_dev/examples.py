# SPDX-License-Identifier: GPL-3.0-or-later
"""The example workflows of example_workflows/, built from a ComfyUI server's /object_info.

Each workflow is described here as nodes (with the widget values that differ from the defaults, and
the column of the layout each sits in), links by socket name and a note (a Markdown Note node: what the
workflow does, what to change); the widget order, the control widget after a seed, slot numbers, types
and node heights come from the live node schemas, so the files stay in step with the nodes. A node's
height is the one ComfyUI's frontend gives it (``node_height``), so that the columns never overlap.

ComfyUI's template browser (frontend 1.32) names a pack's template by its file name alone, so the files
are named for people (``Workflow.title``); ``Workflow.name`` is the stable key code and tests use.
``tools/make_example_workflows.py`` writes them, and their thumbnails through tests/browser/templates.mjs
(``templates_job``: each example run on the tiny model, its graph photographed with no editor chrome);
tests/comfy/test_browser.py regenerates both from the test server and fails if the committed files differ;
the demo runs the basic one on the tiny model.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import PACK_LINK_NAME, REPO_ROOT, TINY_LOADER

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # the user picks their own; the name is only a hint
LORA = "your_style_lora.safetensors"
PROMPTS = "\n".join(
    f"a photograph of a {animal} resting in tall grass, golden hour"
    for animal in ("tiger", "lion", "panther", "jaguar", "cheetah", "leopard")
)
NEGATIVE = "blurry, low quality, watermark"
# The video example loads Wan 2.1 T2V 1.3B as ComfyUI's own Wan template does (the names are hints).
WAN_MODEL = "wan2.1_t2v_1.3B_fp16.safetensors"
WAN_TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
VIDEO_PROMPTS = "\n".join(
    f"a {animal} walking through a snowy forest, slow tracking shot, cinematic"
    for animal in ("wolf", "fox", "lynx", "deer", "bear", "snow leopard")
)
VIDEO_NEGATIVE = "blurry, low quality, watermark, static, still frame"
# What the tiny-model versions substitute for the video loaders (testkit nodes with the same outputs).
TINY_VIDEO_LOADERS = {
    "UNETLoader": "HierTestTinyWanModelLoader",
    "CLIPLoader": "HierTestTinyUMT5Loader",
    "VAELoader": "HierTestTinyWanVAELoader",
}


BROWSER_DIR = REPO_ROOT / "tests" / "browser"
THUMBNAIL_WIDTH = 1024  # px; the template browser shows it at most 256 px high, zoomed a little on hover
TOOLTIP_WIDGETS = ["budget", "budget_value", "tree_from"]
SAVE_NODES = {"SaveImage", "SaveAnimatedWEBP"}
NOTE = "MarkdownNote"  # the frontend's own note node (no Python class: it never reaches the server)
NOTE_TITLE = "About this workflow"
# The layout: columns left to right, nodes stacked top to bottom in each, with these gaps (canvas units).
LEFT, TOP, COLUMN_GAP, ROW_GAP = 40, 40, 80, 50
TITLE_PX = 30  # a node's title bar, above its position
NARROW, WIDE = 340, 440  # node widths; WIDE for nodes that draw a plan (the plan view's own minimum)
# Heights as ComfyUI's frontend 1.32 computes a node's (LGraphNode.computeSize, measured): a row per
# socket (the longer of inputs and outputs), 24 per plain widget plus 8, and the DOM widgets: a multiline
# text box and the pack's plan view (web/hierdiff.js: MIN_HEIGHT 200). Larger sizes are kept as they are.
SLOT_PX, SLOTS_PAD_PX, WIDGET_PX, WIDGETS_PAD_PX = 20, 6, 24, 8
TEXT_BOX_PX, PLAN_VIEW_PX = 54, 204
# What the examples give more room than the minimum: the prompts (six lines of text), the note's text.
EXTRA_PX = {"HierPromptSetCluster": 110, "CLIPTextEncode": 20}
# Node types that draw a plan or tree (web/hierdiff.js: PLANNERS, FOLLOWERS, CLUSTER, and any node with
# a PROMPT_TREE output).
PLAN_VIEW_TYPES = {
    "HierKSampler", "HierSharedTrunkSampler", "HierGuider", "HierBranchSampler", "HierPlanPreview",
    "HierPromptSetCluster",
}  # fmt: skip


@dataclass
class Node:
    """One node of an example: its key in the links, type, layout column, non-default widgets."""

    key: str
    type: str
    column: int
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None


@dataclass
class Workflow:
    """One example workflow: its key, title (its file name, without .json, which the template browser
    shows), note (Markdown: what it does, what to change), nodes and links by socket name."""

    name: str
    title: str
    note: str
    nodes: list[Node]
    links: list[tuple[str, str, str, str]]  # (from node, output name, to node, input name)


def _common(sampler_key: str) -> tuple[list[Node], list[tuple[str, str, str, str]]]:
    """Checkpoint (column 0), prompt set, negative and empty latent (column 1), wired to `sampler_key`."""
    nodes = [
        Node("checkpoint", "CheckpointLoaderSimple", 0, {"ckpt_name": CHECKPOINT}),
        Node("cluster", "HierPromptSetCluster", 1, {"prompts": PROMPTS}),
        Node("negative", "CLIPTextEncode", 1, {"text": NEGATIVE}, title="Negative"),
        Node("latent", "EmptyLatentImage", 1, {"width": 512, "height": 512, "batch_size": 1}),
    ]
    links = [
        ("checkpoint", "CLIP", "cluster", "clip"),
        ("checkpoint", "CLIP", "negative", "clip"),
        ("cluster", "prompt_tree", sampler_key, "prompt_tree"),
        ("negative", "CONDITIONING", sampler_key, "negative"),
    ]
    return nodes, links


def _output(source: str, source_output: str, prefix: str, column: int) -> tuple[list[Node], list]:
    """VAE decode and save of a LATENT output."""
    nodes = [
        Node("decode", "VAEDecode", column),
        Node("save", "SaveImage", column, {"filename_prefix": prefix}),
    ]
    links = [
        (source, source_output, "decode", "samples"),
        ("checkpoint", "VAE", "decode", "vae"),
        ("decode", "IMAGE", "save", "images"),
    ]
    return nodes, links


BUDGET_NOTE = (
    "**budget_value**: the share of model evaluations saved (0 = ordinary sampling). Sharing may change "
    "what the first steps decide, the place and size of things, first; if pictures move, lower it or set "
    "**tree_from** to `first_step`."
)


def workflows() -> list[Workflow]:
    """The examples: basic (Hierarchical KSampler), trunk and branch (with a LoRA), custom sampling, and a
    video variation set (Wan 2.1 T2V). They save half the evaluations (budget_value 0.5, above the
    samplers' cautious default, docs/fidelity.md), so that the tree shows sharing; their notes say what
    that may change."""
    sampling = {"seed": 42, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}
    budget = {"budget": "target_saving", "budget_value": 0.5}

    nodes, links = _common("sampler")
    out_nodes, out_links = _output("sampler", "LATENT", "hierdiff/basic", 3)
    basic = Workflow(
        "hierdiff_basic",
        "Image set, shared steps",
        "## One image per prompt, early steps shared\n\n"
        "**Prompt Set Cluster** holds the prompts, one a line, and clusters them; **Hierarchical KSampler** "
        "computes the early steps once for prompts that are alike. The tree on it shows which prompts share "
        "which steps, and how much is saved.\n\n"
        f"**Change**: the checkpoint, the prompts, seed and steps. {BUDGET_NOTE}",
        [
            *nodes,
            Node("sampler", "HierKSampler", 2, {**sampling, **budget}),
            *out_nodes,
            Node("preview", "HierPlanPreview", 3, {"filename_prefix": "hierdiff/basic_plan"}),
        ],
        [
            *links,
            ("checkpoint", "MODEL", "sampler", "model"),
            ("latent", "LATENT", "sampler", "latent_image"),
            *out_links,
            ("sampler", "plan", "preview", "plan_json"),
        ],
    )

    nodes, links = _common("trunk")
    out_nodes, out_links = _output("branch", "LATENT", "hierdiff/trunk_branch", 4)
    trunk_branch = Workflow(
        "hierdiff_trunk_and_branch",
        "Shared trunk and LoRA branch",
        "## Shared trunk, then another model\n\n"
        "**Shared Trunk Sampler** runs the shared early steps on the checkpoint's model up to "
        "**end_at_step**; **Branch Sampler** finishes every image with another model: here the checkpoint "
        "with a LoRA.\n\n"
        f"**Change**: the checkpoint, the LoRA and its strength, **end_at_step** (where the branch model "
        f"takes over), the prompts. {BUDGET_NOTE}",
        [
            *nodes,
            Node("lora", "LoraLoader", 0, {"lora_name": LORA, "strength_model": 0.8}),
            Node("trunk", "HierSharedTrunkSampler", 2, {**sampling, **budget, "end_at_step": 12}),
            Node("branch", "HierBranchSampler", 3, {"cfg": 7.0, "sampler_name": "euler"}),
            *out_nodes,
            Node("preview", "HierPlanPreview", 3, {"filename_prefix": "hierdiff/branch_plan"}),
        ],
        [
            *links,
            ("checkpoint", "MODEL", "trunk", "model"),
            ("latent", "LATENT", "trunk", "latent_image"),
            ("checkpoint", "MODEL", "lora", "model"),
            ("checkpoint", "CLIP", "lora", "clip"),
            ("lora", "MODEL", "branch", "model"),
            ("trunk", "hier_latent", "branch", "hier_latent"),
            ("negative", "CONDITIONING", "branch", "negative"),
            *out_links,
            ("branch", "plan", "preview", "plan_json"),
        ],
    )

    nodes, links = _common("guider")
    out_nodes, out_links = _output("custom", "output", "hierdiff/custom_sampling", 3)
    custom = Workflow(
        "hierdiff_custom_sampling",
        "Custom sampling (Guider)",
        "## Any sampler and sigmas\n\n"
        "**Hierarchical Guider** is a GUIDER for **SamplerCustomAdvanced**: any SAMPLER (here "
        "KSamplerSelect) and SIGMAS (here BasicScheduler, whose steps the plan follows). Keep the latent at "
        "batch 1: one image per prompt comes out.\n\n"
        f"**Change**: the checkpoint, the prompts, sampler, scheduler and steps. {BUDGET_NOTE}",
        [
            *nodes,
            Node("guider", "HierGuider", 2, {"cfg": 7.0, **budget}),
            Node("noise", "RandomNoise", 2, {"noise_seed": 42}),
            Node("sampler_select", "KSamplerSelect", 2, {"sampler_name": "euler"}),
            Node("scheduler", "BasicScheduler", 2, {"scheduler": "normal", "steps": 20}),
            Node("custom", "SamplerCustomAdvanced", 3),
            *out_nodes,
        ],
        [
            *links,
            ("checkpoint", "MODEL", "guider", "model"),
            ("checkpoint", "MODEL", "scheduler", "model"),
            ("noise", "NOISE", "custom", "noise"),
            ("guider", "GUIDER", "custom", "guider"),
            ("sampler_select", "SAMPLER", "custom", "sampler"),
            ("scheduler", "SIGMAS", "custom", "sigmas"),
            ("latent", "LATENT", "custom", "latent_image"),
            *out_links,
        ],
    )
    return [basic, trunk_branch, custom, _video(budget)]


def _video(budget: dict) -> Workflow:
    """A video variation set on Wan 2.1 T2V: the diffusion model, umt5 and VAE load from their own files;
    one video per prompt, saved as one animated WEBP that plays them one after another."""
    video_sampling = {"seed": 42, "steps": 30, "cfg": 6.0, "sampler_name": "uni_pc", "scheduler": "simple"}
    return Workflow(
        "hierdiff_video_variations",
        "Video variations (Wan 2.1)",
        "## One video per prompt, early steps shared\n\n"
        "Wan 2.1 text-to-video 1.3B, loaded from its own files; prompts that are alike share their early "
        "steps. The videos are saved as one animated WEBP that plays them one after another.\n\n"
        "**Change**: pick the Wan 2.1 files (in models/diffusion_models, text_encoders, vae), the prompts, "
        f"**length** (frames). {BUDGET_NOTE}",
        [
            Node("model", "UNETLoader", 0, {"unet_name": WAN_MODEL}),
            Node("text_encoder", "CLIPLoader", 0, {"clip_name": WAN_TEXT_ENCODER, "type": "wan"}),
            Node("vae", "VAELoader", 0, {"vae_name": WAN_VAE}),
            Node("cluster", "HierPromptSetCluster", 1, {"prompts": VIDEO_PROMPTS}),
            Node("negative", "CLIPTextEncode", 1, {"text": VIDEO_NEGATIVE}, title="Negative"),
            Node("latent", "EmptyHunyuanLatentVideo", 1, {"width": 832, "height": 480, "length": 33}),
            Node("sampler", "HierKSampler", 2, {**video_sampling, **budget}),
            Node("decode", "VAEDecode", 3),
            Node("save", "SaveAnimatedWEBP", 3, {"filename_prefix": "hierdiff/video", "fps": 16.0}),
            Node("preview", "HierPlanPreview", 3, {"filename_prefix": "hierdiff/video_plan"}),
        ],
        [
            ("text_encoder", "CLIP", "cluster", "clip"),
            ("text_encoder", "CLIP", "negative", "clip"),
            ("model", "MODEL", "sampler", "model"),
            ("cluster", "prompt_tree", "sampler", "prompt_tree"),
            ("negative", "CONDITIONING", "sampler", "negative"),
            ("latent", "LATENT", "sampler", "latent_image"),
            ("sampler", "LATENT", "decode", "samples"),
            ("vae", "VAE", "decode", "vae"),
            ("decode", "IMAGE", "save", "images"),
            ("sampler", "plan", "preview", "plan_json"),
        ],
    )


def on_tiny_model(
    workflow: Workflow,
    *,
    steps: int | None,
    size: int,
    prompts: str | None = None,
    checkpoint: str = "",
    cfg: float | None = None,
) -> Workflow:
    """The workflow on the testkit's tiny model (CPU seconds): a size x size image (for the video example a
    5-frame video on the tiny Wan 2.1 files), `steps` steps (the trunk sampler stops at half of them; None
    keeps the workflow's steps), and optionally other prompts for the cluster, another checkpoint of the
    tiny family (e.g. the trained shapes model) and another cfg for HierKSampler. Node ids and the layout
    stay the workflow's."""
    step_changes = {} if steps is None else {
        "HierKSampler": {"steps": steps},
        "HierSharedTrunkSampler": {"steps": steps, "end_at_step": max(1, steps // 2)},
        "BasicScheduler": {"steps": steps},
    }  # fmt: skip
    changes = {
        "EmptyLatentImage": {"width": size, "height": size},
        "HierPromptSetCluster": {} if prompts is None else {"prompts": prompts},
        "EmptyHunyuanLatentVideo": {"width": size, "height": size, "length": 5},
    }
    for kind, values in step_changes.items():
        changes[kind] = {**changes.get(kind, {}), **values}
    if cfg is not None:
        changes["HierKSampler"] = {**changes.get("HierKSampler", {}), "cfg": cfg}
    nodes = []
    for node in workflow.nodes:
        if node.type == "CheckpointLoaderSimple":
            node = Node(node.key, TINY_LOADER, node.column, {"checkpoint": checkpoint} if checkpoint else {})
        elif node.type in TINY_VIDEO_LOADERS:  # the tiny Wan 2.1 T2V files
            node = Node(node.key, TINY_VIDEO_LOADERS[node.type], node.column)
        else:
            node = dataclasses.replace(node, widgets={**node.widgets, **changes.get(node.type, {})})
        nodes.append(node)
    return dataclasses.replace(workflow, name=f"{workflow.name}_tiny", nodes=nodes)


def _inputs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of a node's inputs in the order the frontend makes them."""
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(specs)):
            spec = specs[name]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            options = dict(spec[1]) if len(spec) > 1 else {}
            if isinstance(spec[0], list):
                options["options"] = spec[0]
            out.append((name, kind, options))
    return out


def _is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput")


def node_height(node_type: str, info: dict) -> int:
    """The height ComfyUI's frontend gives a node of this type (its title bar excluded), plus the room the
    examples give it (EXTRA_PX)."""
    inputs = _inputs(info)
    sockets = sum(not _is_widget(kind, options) for _, kind, options in inputs)
    rows = max(sockets, len(info["output"]))
    widgets = [(kind, options) for _, kind, options in inputs if _is_widget(kind, options)]
    text_boxes = sum(kind == "STRING" and bool(options.get("multiline")) for kind, options in widgets)
    controls = sum(bool(options.get("control_after_generate")) for _, options in widgets)
    plain = len(widgets) - text_boxes + controls
    height = SLOT_PX * rows + SLOTS_PAD_PX
    if widgets:
        height += WIDGETS_PAD_PX + WIDGET_PX * plain + TEXT_BOX_PX * text_boxes
    tree_node = node_type.startswith("Hier") and "PROMPT_TREE" in info["output"]
    draws_plan = node_type in PLAN_VIEW_TYPES or tree_node
    return height + PLAN_VIEW_PX * draws_plan + EXTRA_PX.get(node_type, 0)


def note_height(text: str) -> int:
    """Room for a Markdown Note of WIDE width to show ``text`` whole (at most 70 characters a line)."""
    paragraphs = text.split("\n\n")
    lines = sum(max(1, -(-len(paragraph) // 70)) for paragraph in paragraphs)
    return 40 + 14 * lines + 12 * len(paragraphs)


def layout(workflow: Workflow, object_info: dict[str, dict]) -> dict[str, tuple[list[int], list[int]]]:
    """Node key (and "note") -> (pos, size): columns left to right, each as wide as its widest kind of node,
    nodes stacked in each in their order with ROW_GAP between a node's bottom and the next one's title.
    The note heads column 0."""
    columns: dict[int, list[tuple[str, int, int]]] = {0: [("note", WIDE, note_height(workflow.note))]}
    for node in workflow.nodes:
        info = object_info[node.type]
        wide = node.type in PLAN_VIEW_TYPES
        entry = (node.key, WIDE if wide else NARROW, node_height(node.type, info))
        columns.setdefault(node.column, []).append(entry)
    placed, x = {}, LEFT
    for column in sorted(columns):
        width = max(w for _, w, _ in columns[column])
        y = TOP + TITLE_PX
        for key, _, height in columns[column]:
            placed[key] = ([x, y], [width, height])
            y += height + ROW_GAP + TITLE_PX
        x += width + COLUMN_GAP
    return placed


def build(workflow: Workflow, object_info: dict[str, dict]) -> dict:
    """The UI-format JSON (version 0.4) of one workflow; its note is the last node."""
    ids = {node.key: index + 1 for index, node in enumerate(workflow.nodes)}
    by_key = {node.key: node for node in workflow.nodes}
    for node in workflow.nodes:
        if node.type not in object_info:
            raise KeyError(f"{workflow.name}: node type {node.type!r} is not on the server")
    placed = layout(workflow, object_info)

    def output_slot(key: str, name: str) -> tuple[int, str]:
        info = object_info[by_key[key].type]
        names = info["output_name"]
        if name not in names:
            raise KeyError(f"{workflow.name}: {by_key[key].type} has no output {name!r} (has {names})")
        slot = names.index(name)
        return slot, info["output"][slot]

    def input_slot(key: str, name: str) -> int:
        names = [n for n, _, _ in _inputs(object_info[by_key[key].type])]
        if name not in names:
            raise KeyError(f"{workflow.name}: {by_key[key].type} has no input {name!r} (has {names})")
        return names.index(name)

    links = []
    for link_id, (src, out_name, dst, in_name) in enumerate(workflow.links, start=1):
        slot, kind = output_slot(src, out_name)
        links.append([link_id, ids[src], slot, ids[dst], input_slot(dst, in_name), kind])

    nodes = []
    for order, node in enumerate(workflow.nodes):
        info = object_info[node.type]
        unknown = set(node.widgets) - {name for name, _, _ in _inputs(info)}
        if unknown:
            raise KeyError(f"{workflow.name}: {node.type} has no widget(s) {sorted(unknown)}")
        inputs, values = [], []
        for slot, (name, kind, options) in enumerate(_inputs(info)):
            link = next((lk[0] for lk in links if lk[3] == ids[node.key] and lk[4] == slot), None)
            entry = {"localized_name": name, "name": name, "type": kind, "link": link}
            if _is_widget(kind, options):
                entry["widget"] = {"name": name}
                default = options.get("default", (options.get("options") or [None])[0])
                values.append(node.widgets.get(name, default))
                if options.get("control_after_generate"):
                    values.append("fixed")  # the seed's "control after generate" widget
            inputs.append(entry)
        outputs = []
        for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"], strict=True)):
            targets = [lk[0] for lk in links if lk[1] == ids[node.key] and lk[2] == slot]
            outputs.append({"localized_name": name, "name": name, "type": kind, "links": targets or None})
        pos, size = placed[node.key]
        entry = {
            "id": ids[node.key],
            "type": node.type,
            "pos": pos,
            "size": size,
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": node.type},
            "widgets_values": values,
        }
        if node.title:
            entry["title"] = node.title
        nodes.append(entry)
    pos, size = placed["note"]
    nodes.append({
        "id": len(nodes) + 1, "type": NOTE, "title": NOTE_TITLE, "pos": pos, "size": size, "flags": {},
        "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
        "widgets_values": [workflow.note],
    })  # fmt: skip

    return {
        # The frontend wants a UUID; a name-derived one keeps the files stable.
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hierdiff/example_workflows/{workflow.name}")),
        "revision": 0,
        "last_node_id": len(nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}},
        "version": 0.4,
    }


def build_api(workflow: Workflow, object_info: dict[str, dict]) -> dict[str, dict]:
    """The same workflow as an API-format prompt (node id -> class_type and inputs), for POST /prompt; the
    note, which only the frontend knows, is left out as the frontend leaves it out."""
    ui = build(workflow, object_info)
    by_link = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] == NOTE:
            continue
        values = iter(node["widgets_values"])
        inputs: dict[str, Any] = {}
        for name, kind, options in _inputs(object_info[node["type"]]):
            widget = _is_widget(kind, options)
            if widget:
                inputs[name] = next(values)
                if options.get("control_after_generate"):
                    next(values)
            link = next(i["link"] for i in node["inputs"] if i["name"] == name)
            if link is not None:
                origin = by_link[link]
                inputs[name] = [str(origin[1]), origin[2]]
            elif not widget:
                inputs.pop(name, None)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def write_all(object_info: dict[str, dict], out_dir: Path) -> list[Path]:
    """Write every example as ``out_dir/<title>.json``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for workflow in workflows():
        path = out_dir / f"{workflow.title}.json"
        path.write_text(json.dumps(build(workflow, object_info), indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def prepare_server_dir(base: Path) -> None:
    """What a fresh server folder needs for the examples to load and run: a returning user's settings (no
    template browser over the graph at the first start) and the LoRA the trunk-and-branch example names
    (an empty one: no patches)."""
    from safetensors.torch import save_file

    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    if not settings.exists():
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    loras = base / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_file({}, str(loras / LORA))


def templates_job(url: str, object_info: dict[str, dict], example_dir: Path, out_dir: Path) -> dict:
    """The job of tests/browser/templates.mjs for the examples in ``example_dir``: each with the API prompt
    of the same graph on the tiny model (64 x 64, the example's steps; its save nodes left out where
    another output node makes the samplers run)."""
    templates = []
    for workflow in workflows():
        prompt = build_api(on_tiny_model(workflow, steps=None, size=64), object_info)
        if any(node["class_type"] == "HierPlanPreview" for node in prompt.values()):
            # Hierarchy Preview makes the samplers run; the tiny model's noise need not be saved (and
            # drawn on the save node).
            prompt = {key: node for key, node in prompt.items() if node["class_type"] not in SAVE_NODES}
        templates.append({"title": workflow.title, "file": str(example_dir / f"{workflow.title}.json"),
                          "tiny_prompt": prompt})  # fmt: skip
    basic = example_dir / f"{workflows()[0].title}.json"
    tooltips = {"file": str(basic), "type": "HierKSampler", "widgets": TOOLTIP_WIDGETS}
    return {"url": url, "out_dir": str(out_dir), "module": PACK_LINK_NAME, "templates": templates,
            "tooltips": tooltips}  # fmt: skip


def run_templates_job(job: dict, work: Path, timeout: float = 900) -> dict:
    """Run tests/browser/templates.mjs on ``job``; its report (``fatal`` set when the session failed)."""
    job_file, report_file = work / "templates-job.json", work / "templates.json"
    job_file.write_text(json.dumps(job))
    result = subprocess.run(
        ["node", str(BROWSER_DIR / "templates.mjs"), str(job_file), str(report_file)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if not report_file.exists():
        return {"fatal": f"templates.mjs wrote no report:\n{result.stdout}\n{result.stderr}"}
    return json.loads(report_file.read_text())
