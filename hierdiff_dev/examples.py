# SPDX-License-Identifier: GPL-3.0-or-later
"""The example workflows of example_workflows/, built from a ComfyUI server's /object_info.

Each workflow is described here as nodes (with the widget values that differ from the defaults) and
links by socket name; the widget order, the control widget after a seed, slot numbers and types come
from the live node schemas, so the files stay in step with the nodes. ``tools/make_example_workflows.py``
writes them; tests/comfy/test_browser.py regenerates them from the test server and fails if the
committed files differ; the demo runs the basic one on the tiny model.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import TINY_LOADER

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


@dataclass
class Node:
    """One node of an example: its key in the links, type, canvas position, non-default widgets."""

    key: str
    type: str
    pos: tuple[int, int]
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None


@dataclass
class Workflow:
    """One example workflow: its file name (without .json), nodes and links by socket name."""

    name: str
    nodes: list[Node]
    links: list[tuple[str, str, str, str]]  # (from node, output name, to node, input name)


def _common(sampler_key: str) -> tuple[list[Node], list[tuple[str, str, str, str]]]:
    """Checkpoint, prompt set, negative and empty latent, wired to the node `sampler_key`."""
    nodes = [
        Node("checkpoint", "CheckpointLoaderSimple", (40, 200), {"ckpt_name": CHECKPOINT}),
        Node("cluster", "HierPromptSetCluster", (400, 40), {"prompts": PROMPTS}),
        Node("negative", "CLIPTextEncode", (400, 620), {"text": NEGATIVE}, title="Negative"),
        Node("latent", "EmptyLatentImage", (400, 860), {"width": 512, "height": 512, "batch_size": 1}),
    ]
    links = [
        ("checkpoint", "CLIP", "cluster", "clip"),
        ("checkpoint", "CLIP", "negative", "clip"),
        ("cluster", "prompt_tree", sampler_key, "prompt_tree"),
        ("negative", "CONDITIONING", sampler_key, "negative"),
    ]
    return nodes, links


def _output(source: str, source_output: str, prefix: str, x: int) -> tuple[list[Node], list]:
    """VAE decode and save of a LATENT output."""
    nodes = [
        Node("decode", "VAEDecode", (x, 40)),
        Node("save", "SaveImage", (x, 160), {"filename_prefix": prefix}),
    ]
    links = [
        (source, source_output, "decode", "samples"),
        ("checkpoint", "VAE", "decode", "vae"),
        ("decode", "IMAGE", "save", "images"),
    ]
    return nodes, links


def workflows() -> list[Workflow]:
    """The examples: basic (Hierarchical KSampler), trunk and branch (with a LoRA), custom sampling, and a
    video variation set (Wan 2.1 T2V)."""
    sampling = {"seed": 42, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}
    budget = {"budget": "target_saving", "budget_value": 0.5}

    nodes, links = _common("sampler")
    out_nodes, out_links = _output("sampler", "LATENT", "hierdiff/basic", 1340)
    basic = Workflow(
        "hierdiff_basic",
        [
            *nodes,
            Node("sampler", "HierKSampler", (860, 40), {**sampling, **budget}),
            *out_nodes,
            Node("preview", "HierPlanPreview", (1340, 600), {"filename_prefix": "hierdiff/basic_plan"}),
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
    out_nodes, out_links = _output("branch", "LATENT", "hierdiff/trunk_branch", 1820)
    trunk_branch = Workflow(
        "hierdiff_trunk_and_branch",
        [
            *nodes,
            Node("lora", "LoraLoader", (400, 1060), {"lora_name": LORA, "strength_model": 0.8}),
            Node("trunk", "HierSharedTrunkSampler", (860, 40), {**sampling, **budget, "end_at_step": 12}),
            Node("branch", "HierBranchSampler", (1340, 40), {"cfg": 7.0, "sampler_name": "euler"}),
            *out_nodes,
            Node("preview", "HierPlanPreview", (1820, 600), {"filename_prefix": "hierdiff/branch_plan"}),
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
    out_nodes, out_links = _output("custom", "output", "hierdiff/custom_sampling", 1820)
    custom = Workflow(
        "hierdiff_custom_sampling",
        [
            *nodes,
            Node("guider", "HierGuider", (860, 40), {"cfg": 7.0, **budget}),
            Node("noise", "RandomNoise", (860, 420), {"noise_seed": 42}),
            Node("sampler_select", "KSamplerSelect", (860, 560), {"sampler_name": "euler"}),
            Node("scheduler", "BasicScheduler", (860, 680), {"scheduler": "normal", "steps": 20}),
            Node("custom", "SamplerCustomAdvanced", (1340, 40)),
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
        [
            Node("model", "UNETLoader", (40, 40), {"unet_name": WAN_MODEL}),
            Node("text_encoder", "CLIPLoader", (40, 240), {"clip_name": WAN_TEXT_ENCODER, "type": "wan"}),
            Node("vae", "VAELoader", (40, 440), {"vae_name": WAN_VAE}),
            Node("cluster", "HierPromptSetCluster", (400, 40), {"prompts": VIDEO_PROMPTS}),
            Node("negative", "CLIPTextEncode", (400, 620), {"text": VIDEO_NEGATIVE}, title="Negative"),
            Node(
                "latent", "EmptyHunyuanLatentVideo", (400, 860), {"width": 832, "height": 480, "length": 33}
            ),
            Node("sampler", "HierKSampler", (860, 40), {**video_sampling, **budget}),
            Node("decode", "VAEDecode", (1340, 40)),
            Node("save", "SaveAnimatedWEBP", (1340, 160), {"filename_prefix": "hierdiff/video", "fps": 16.0}),
            Node("preview", "HierPlanPreview", (1340, 600), {"filename_prefix": "hierdiff/video_plan"}),
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
    steps: int,
    size: int,
    prompts: str | None = None,
    checkpoint: str = "",
    cfg: float | None = None,
) -> Workflow:
    """The workflow on the testkit's tiny model (CPU seconds): a size x size image (for the video example a
    5-frame video on the tiny Wan 2.1 files), `steps` steps (the trunk sampler stops at half of them), and
    optionally other prompts for the cluster, another checkpoint of the tiny family (e.g. the trained shapes
    model) and another cfg for HierKSampler."""
    changes = {
        "EmptyLatentImage": {"width": size, "height": size},
        "HierKSampler": {"steps": steps} if cfg is None else {"steps": steps, "cfg": cfg},
        "HierSharedTrunkSampler": {"steps": steps, "end_at_step": max(1, steps // 2)},
        "BasicScheduler": {"steps": steps},
        "HierPromptSetCluster": {} if prompts is None else {"prompts": prompts},
        "EmptyHunyuanLatentVideo": {"width": size, "height": size, "length": 5},
    }
    nodes = []
    for node in workflow.nodes:
        if node.type == "CheckpointLoaderSimple":
            node = Node(node.key, TINY_LOADER, node.pos, {"checkpoint": checkpoint} if checkpoint else {})
        elif node.type in TINY_VIDEO_LOADERS:  # the tiny Wan 2.1 T2V files
            node = Node(node.key, TINY_VIDEO_LOADERS[node.type], node.pos)
        else:
            node = dataclasses.replace(node, widgets={**node.widgets, **changes.get(node.type, {})})
        nodes.append(node)
    return Workflow(f"{workflow.name}_tiny", nodes, workflow.links)


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


def build(workflow: Workflow, object_info: dict[str, dict]) -> dict:
    """The UI-format JSON (version 0.4) of one workflow."""
    ids = {node.key: index + 1 for index, node in enumerate(workflow.nodes)}
    by_key = {node.key: node for node in workflow.nodes}
    for node in workflow.nodes:
        if node.type not in object_info:
            raise KeyError(f"{workflow.name}: node type {node.type!r} is not on the server")

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
        entry = {
            "id": ids[node.key],
            "type": node.type,
            "pos": list(node.pos),
            "size": [380, 120 + 26 * len(values)],
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
    """The same workflow as an API-format prompt (node id -> class_type and inputs), for POST /prompt."""
    ui = build(workflow, object_info)
    by_link = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
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
    """Write every example as ``out_dir/<name>.json``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for workflow in workflows():
        path = out_dir / f"{workflow.name}.json"
        path.write_text(json.dumps(build(workflow, object_info), indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
