# SPDX-License-Identifier: GPL-3.0-or-later
"""The web extension and the example workflows in a real browser against the real server.

Debian's chromium, driven by npm's playwright-core (both installed by tools/setup_browser.sh), opens
the ComfyUI frontend served by the ``comfy_server`` fixture. tests/browser/drive.mjs does everything
in one browser session and writes a report; the tests below judge it:

- the page loads and every node of the pack is registered in the frontend;
- each committed example workflow loads with no unknown node types;
- each example, switched to the tiny test model (smaller latent, fewer steps), is converted to a
  prompt by the frontend, queued, and completes; the plan widgets are on screen, photographed, and
  the photographs hold the dendrogram's coloured lines, and hovering shows the group's prompts; the
  Hierarchy Preview node saved a PNG;
- a saved workflow, loaded after a page reload, draws its plans again without running;
- the plan is previewed live: before anything is queued, an edit of steps or of the prompts changes the
  summary and the picture, and until the new preview arrives the old picture is dimmed and marked out
  of date;
- a run shows its own plan while it runs; a PNG saved by the second of two runs carries that run's plan,
  once, and shows it when opened (the first run's PNG carries none: its tree was not known yet);
- a 2,000-prompt plan is laid out and painted quickly, as its top groups labelled with their size and
  a prompt; a click opens a group, typing part of a prompt highlights its path, and zooming the graph
  redraws the picture at the new resolution;
- our extension logs no console errors and raises no page errors.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hierdiff_core.schedule import plan
from hierdiff_core.tree import build_tree
from hierdiff_dev import PACK_LINK_NAME as PACK
from hierdiff_dev import REPO_ROOT, examples
from hierdiff_dev.server import ComfyServer

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
EXAMPLES_DIR = REPO_ROOT / "example_workflows"
CHROMIUM = Path("/usr/bin/chromium")
# A dendrogram photograph must hold at least this many strongly coloured pixels (its lines); an
# empty or grey widget holds none.
MIN_COLOURED_PIXELS = 300
# Our extension's scripts, as the page loads them.
OUR_SCRIPTS = "/extensions/hierdiff/"
PREVIEW_STEPS = 12
EXTRA_PROMPT = "a photograph of a lynx resting in tall grass, golden hour"
PNG_RUN_STEPS = [5, 10]  # not the examples' 6 steps: a run ComfyUI has cached would report nothing
FIND = "prompt 1234:"


def big_plan_json(path: Path) -> None:
    """A 2,000-prompt plan from the real planner (clustered random embeddings, numbered prompts)."""
    rng = np.random.default_rng(2000)
    centres = rng.normal(size=(20, 32))
    embeddings = centres[rng.integers(0, 20, 2000)] + 0.4 * rng.normal(size=(2000, 32))
    prompts = [f"prompt {i}: a painting of subject {i % 20}" for i in range(2000)]
    schedule = plan(build_tree(embeddings, prompts=prompts), 40, target_saving=0.7)
    path.write_text(schedule.to_json())


@pytest.fixture(scope="module")
def object_info(comfy_server: ComfyServer) -> dict[str, dict]:
    return comfy_server.object_info()


SAVED_BEFORE_TREE_FROM = "hierdiff_basic_saved_before_tree_from"
OLD_BUDGET_VALUE = 0.5  # budget_value's default before it was measured (docs/fidelity.md)


def saved_without_last_widget(workflow: dict, name: str) -> dict:
    """``workflow`` as the frontend saved it before the last widget input ``name`` was added to its nodes."""
    older = json.loads(json.dumps(workflow))
    for node in older["nodes"]:
        if node["inputs"] and node["inputs"][-1]["name"] == name:
            node["inputs"].pop()
            node["widgets_values"].pop()
    return older


@pytest.fixture(scope="module")
def browser_report(comfy_server: ComfyServer, object_info, tmp_path_factory) -> dict:
    if not CHROMIUM.exists() or not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("chromium or playwright-core is missing: run tools/setup_browser.sh", pytrace=False)
    work = tmp_path_factory.mktemp("browser")
    # A first start of the frontend opens the template browser over the graph; a returning user's doesn't.
    settings = comfy_server.base_dir / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    # The trunk-and-branch example names a LoRA: an empty one (no patches) lets the graph run.
    loras = comfy_server.base_dir / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({}, str(loras / examples.LORA))

    committed = sorted(EXAMPLES_DIR.glob("*.json"))
    jobs = [{"name": path.stem, "file": str(path), "run": False} for path in committed]
    for workflow in examples.workflows():
        path = work / f"{workflow.name}_tiny.json"
        tiny = examples.on_tiny_model(workflow, steps=6, size=64)
        path.write_text(json.dumps(examples.build(tiny, object_info)))
        jobs.append({"name": f"{workflow.name}_tiny", "file": str(path), "run": True})
    # The basic example as saved before the samplers' optional tree_from input existed, when budget_value's
    # default was OLD_BUDGET_VALUE: the saved value is in its widget values.
    basic = next(w for w in examples.workflows() if w.name == "hierdiff_basic")
    tiny = examples.on_tiny_model(basic, steps=6, size=64)
    tiny.nodes = [dataclasses.replace(n, widgets={**n.widgets, "budget_value": OLD_BUDGET_VALUE})
                  if n.type == "HierKSampler" else n for n in tiny.nodes]  # fmt: skip
    older = saved_without_last_widget(examples.build(tiny, object_info), "tree_from")
    older_path = work / f"{SAVED_BEFORE_TREE_FROM}.json"
    older_path.write_text(json.dumps(older))
    jobs.append({"name": SAVED_BEFORE_TREE_FROM, "file": str(older_path), "run": True})
    big_plan = work / "big_plan.json"
    big_plan_json(big_plan)
    basic_tiny = str(work / "hierdiff_basic_tiny.json")
    job = {
        "url": comfy_server.url,
        "out_dir": str(work),
        "workflows": jobs,
        "big_plan_file": str(big_plan),
        "big_plan_workflow": basic_tiny,
        "big_plan_find": FIND,
        "preview": {"file": basic_tiny, "steps": PREVIEW_STEPS, "extra_prompt": EXTRA_PROMPT},
        "png": {"file": basic_tiny, "steps": PNG_RUN_STEPS},
    }
    (work / "job.json").write_text(json.dumps(job))
    result = subprocess.run(
        ["node", str(BROWSER_DIR / "drive.mjs"), str(work / "job.json"), str(work / "report.json")],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if not (work / "report.json").exists():
        pytest.fail(f"drive.mjs wrote no report:\n{result.stdout}\n{result.stderr}", pytrace=False)
    report = json.loads((work / "report.json").read_text())
    report["work_dir"] = str(work)
    if report.get("fatal"):
        message = f"the browser session failed: {report['fatal']}\n{comfy_server.log_tail()}"
        pytest.fail(message, pytrace=False)
    return report


def runs(report: dict) -> dict[str, dict]:
    return {w["name"]: w for w in report["workflows"] if "status" in w or "queue_error" in w}


def our_node_ids(object_info: dict[str, dict]) -> set[str]:
    return {name for name, info in object_info.items() if info.get("python_module") == f"custom_nodes.{PACK}"}


def test_committed_examples_are_what_the_generator_makes_from_the_live_schemas(object_info, tmp_path) -> None:
    written = examples.write_all(object_info, tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in EXAMPLES_DIR.glob("*.json"))
    for path in written:
        assert json.loads(path.read_text()) == json.loads((EXAMPLES_DIR / path.name).read_text()), path.name
        assert (EXAMPLES_DIR / f"{path.stem}.jpg").is_file(), f"{path.stem}.jpg: the template's thumbnail"


def test_page_registers_every_node_of_the_pack(browser_report, object_info) -> None:
    ours = our_node_ids(object_info)
    assert {"HierPromptSetCluster", "HierKSampler", "HierGuider", "HierPlanPreview"} <= ours
    assert ours <= set(browser_report["registered"])


def test_each_example_loads_with_no_unknown_nodes(browser_report) -> None:
    loaded = {w["name"]: w for w in browser_report["workflows"]}
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        assert loaded[path.stem]["missing"] == []
        assert sorted(loaded[path.stem]["node_types"]) == sorted(n["type"] for n in data["nodes"])


def test_each_example_on_the_tiny_model_queues_and_completes(browser_report) -> None:
    done = runs(browser_report)
    assert sorted(done) == sorted([f"{w.name}_tiny" for w in examples.workflows()] + [SAVED_BEFORE_TREE_FROM])
    for name, run in done.items():
        assert run.get("queue_error") is None, f"{name}: {run.get('queue_error_detail')}"
        assert run["status"] == "execution_success", f"{name}: {run['error']}"


def test_a_workflow_saved_before_tree_from_runs_with_its_default(browser_report) -> None:
    run = runs(browser_report)[SAVED_BEFORE_TREE_FROM]
    assert run["status"] == "execution_success", run.get("error")
    (sampler,) = [node for node in run["prompt"].values() if node["class_type"] == "HierKSampler"]
    assert sampler["inputs"].get("tree_from", "prompt_tree") == "prompt_tree"
    # the saved widget values still land on their own inputs
    assert (sampler["inputs"]["budget"], sampler["inputs"]["conditioning_mix"]) == ("target_saving", "mean")


def test_a_workflow_saved_with_the_old_budget_default_keeps_its_budget(browser_report, object_info) -> None:
    """budget_value is a required widget, so a saved workflow holds its value and the frontend puts it back
    by position (LGraphNode.configure); only widgets missing from the saved values take today's defaults."""
    default = object_info["HierKSampler"]["input"]["required"]["budget_value"][1]["default"]
    assert default != OLD_BUDGET_VALUE
    run = runs(browser_report)[SAVED_BEFORE_TREE_FROM]
    (sampler,) = [node for node in run["prompt"].values() if node["class_type"] == "HierKSampler"]
    assert sampler["inputs"]["budget_value"] == OLD_BUDGET_VALUE
    summaries = [e["summary"][0] for e in run["executed"] if e["summary"] and "images, " in e["summary"][0]]
    assert summaries and all(s.endswith(", 50.0 % saved") for s in summaries), summaries


def test_plans_are_drawn_on_screen_after_the_run(browser_report) -> None:
    done = runs(browser_report)
    for name in ("hierdiff_basic_tiny", "hierdiff_trunk_and_branch_tiny"):
        run = done[name]
        with_plan = {e["node"] for e in run["executed"] if "hierdiff_plan" in e["keys"]}
        drawn = {str(w["node"]) for w in run["widgets"]}
        assert with_plan, f"{name}: no node reported a plan"
        assert with_plan <= drawn, f"{name}: plans of {with_plan - drawn} not drawn"
        for widget in run["widgets"]:
            assert widget["painted"] >= 1
            assert widget["coloured_pixels"] >= MIN_COLOURED_PIXELS, widget
    basic = done["hierdiff_basic_tiny"]
    types = {w["type"] for w in basic["widgets"]}
    assert {"HierPromptSetCluster", "HierKSampler", "HierPlanPreview"} <= types
    prompts = examples.PROMPTS.splitlines()
    (sampler,) = [w for w in basic["widgets"] if w["type"] == "HierKSampler"]
    head, *lines = sampler["tooltip"].split("\n")
    assert head.split(" ")[0] in {"1", "2", "3", "4", "5", "6"} and " prompt" in head, head
    listed = [line.removeprefix("\u2022 ") for line in lines if line.startswith("\u2022 ")]
    assert listed and all(line in prompts for line in listed), sampler["tooltip"]
    summaries = [e["summary"][0] for e in basic["executed"] if e["summary"]]
    assert any(s.startswith("6 images, ") and s.endswith(" % saved") for s in summaries), summaries


def test_preview_node_saves_the_dendrogram_picture(browser_report, comfy_server: ComfyServer) -> None:
    for name in ("hierdiff_basic_tiny", "hierdiff_trunk_and_branch_tiny"):
        run = runs(browser_report)[name]
        history = comfy_server.get_json(f"/history/{run['prompt_id']}")[run["prompt_id"]]
        preview = next(k for k, v in run["prompt"].items() if v["class_type"] == "HierPlanPreview")
        (image,) = history["outputs"][preview]["images"]
        assert image["type"] == "output" and image["filename"].endswith(".png")
        assert comfy_server.view(image)[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads(history["outputs"][preview]["hierdiff_plan"][0])["format"] == "hierdiff.plan"


def test_saved_workflow_draws_its_plans_after_a_reload(browser_report) -> None:
    saved_run = runs(browser_report)[browser_report["reload"]["name"]]
    before = {w["node"] for w in saved_run["widgets"]}
    after = browser_report["reload"]["widgets"]
    assert before and {w["node"] for w in after} == before
    for widget in after:
        assert widget["coloured_pixels"] >= MIN_COLOURED_PIXELS, widget


def test_two_thousand_prompts_draw_quickly_as_collapsed_groups(browser_report) -> None:
    big = browser_report["big_plan"]
    assert "error" not in big, big
    assert big["ms"] < 500, f"layout and paint of 2,000 prompts took {big['ms']:.0f} ms"
    assert 1 <= big["painted"] < 2000  # groups drawn, not one bar per prompt
    (widget,) = [w for w in big["widgets"] if w["node"] == big["node"]]
    assert widget["coloured_pixels"] >= MIN_COLOURED_PIXELS


def test_two_thousand_prompts_show_their_top_groups_labelled_with_size_and_a_prompt(browser_report) -> None:
    view = browser_report["big_plan"]["collapsed"]
    assert view["n"] == 2000 and 10 <= view["rows"] <= 40, view["rows"]
    sizes = []
    for label in view["labels"]:
        size, _, prompt = label.partition("] ")
        assert size.startswith("[") and prompt.startswith("prompt "), label
        sizes.append(int(size[1:]))
    assert sum(sizes) == 2000  # every prompt in exactly one row


def test_a_click_opens_a_group_into_its_own_groups(browser_report) -> None:
    big = browser_report["big_plan"]
    before, after = big["collapsed"], big["opened"]
    assert after["rows"] > before["rows"]
    opened = before["labels"][big["clicked"]["row"]]
    assert opened not in after["labels"]
    assert after["coloured_pixels"] >= MIN_COLOURED_PIXELS


def test_typing_part_of_a_prompt_highlights_its_path(browser_report) -> None:
    big = browser_report["big_plan"]
    found = big["found"]
    assert found["found"] == 1234
    assert "find: 1 of 1" in found["status"]
    before = big["opened"]["yellow_pixels"]
    assert before < 20 <= found["yellow_pixels"], (before, found["yellow_pixels"])


def test_zooming_in_redraws_the_picture_at_the_new_resolution(browser_report) -> None:
    big = browser_report["big_plan"]
    normal, zoomed = big["found"]["canvas"], big["zoomed"]["canvas"]
    assert zoomed["ratio"] == pytest.approx(2 * normal["ratio"], rel=0.02)
    # the canvas holds twice the pixels: drawn again, not a stretched bitmap
    assert zoomed["width"] == pytest.approx(2 * normal["width"], abs=2)
    assert zoomed["cssWidth"] == normal["cssWidth"]
    assert big["zoomed"]["coloured_pixels"] > 2 * big["found"]["coloured_pixels"]


def test_an_edit_changes_the_preview_before_anything_is_queued(browser_report) -> None:
    preview = browser_report["preview"]
    first, second, third = preview["first"], preview["second"], preview["third"]
    prompts = examples.PROMPTS.splitlines()
    assert first["waited"] and first["summary"].startswith(f"{len(prompts)} images, ")
    assert f" x {len(prompts)} = " in first["summary"] and first["status"].startswith("preview")
    assert "preview tree" in first["status"]  # the sentence encoder's tree: the run clusters on CLIP
    assert second["waited"] and f"instead of {PREVIEW_STEPS} x {len(prompts)} = " in second["summary"]
    assert third["waited"] and third["summary"].startswith(f"{len(prompts) + 1} images, ")
    assert preview["cluster"]["waited"]
    assert preview["prompt_posts"] == 0 and preview["run_events"] == []  # nothing queued, nothing ran
    for shot in ("first_shot", "second_shot", "third_shot"):
        assert preview[shot]["coloured_pixels"] >= MIN_COLOURED_PIXELS, shot


def test_until_the_new_preview_arrives_the_old_picture_is_out_of_date(browser_report) -> None:
    preview = browser_report["preview"]
    stale = preview["stale_shot"]
    assert preview["stale"]["waited"] and stale["stale"]
    assert stale["status"].startswith("out of date")
    assert stale["summary"] == preview["first"]["summary"]  # the old plan, marked, not passed off as new
    # dimmed: its colours fade
    assert stale["coloured_pixels"] < preview["first_shot"]["coloured_pixels"] / 2


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG, keyword -> text."""
    chunks, pos = {}, 8
    while pos < len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"tEXt":
            keyword, _, text = data[pos + 8 : pos + 8 + length].partition(b"\0")
            chunks[keyword.decode("latin-1")] = text.decode("latin-1")
        pos += 12 + length
    return chunks


def saved_plans(comfy_server: ComfyServer, image: dict) -> list[dict]:
    """The plans kept in the workflow a saved PNG embeds, with their node types."""
    workflow = json.loads(png_text(comfy_server.view(image))["workflow"])
    return [{"type": n["type"], **n["properties"]["hierdiff_plan"]} for n in workflow["nodes"]
            if "hierdiff_plan" in (n.get("properties") or {})]  # fmt: skip


def test_each_png_carries_the_plan_of_the_run_that_made_it_or_none(browser_report, comfy_server) -> None:
    first, second = browser_report["png"]["runs"]
    assert first["status"] == second["status"] == "execution_success"
    assert first["summary"] and second["summary"], "both runs must execute (not come from ComfyUI's cache)"
    assert first["summary"] != second["summary"]
    assert saved_plans(comfy_server, first["image"]) == []  # the tree was not known when it was queued
    (plan_of_second,) = saved_plans(comfy_server, second["image"])  # one copy, on the sampler
    assert plan_of_second["type"] == "HierKSampler"
    assert (plan_of_second["steps"], plan_of_second["summary"]) == (PNG_RUN_STEPS[1], second["summary"])


def test_a_png_reopened_after_a_second_run_shows_its_own_plan(browser_report) -> None:
    png = browser_report["png"]
    reopened, shot = png["reopened"], png["reopened_shot"]
    assert reopened["waited"], reopened
    assert reopened["summary"] == png["runs"][1]["summary"] != png["runs"][0]["summary"]
    assert reopened["steps"] == PNG_RUN_STEPS[1] and not reopened["stale"]
    assert shot["coloured_pixels"] >= MIN_COLOURED_PIXELS


def test_a_running_job_shows_its_own_plan_never_the_previous_runs(browser_report) -> None:
    first, second = browser_report["png"]["runs"]
    running = [s for s in second["seen"] if s["origin"] == "running"]
    assert running, "the run was never seen running"
    # The second run's tree is the first run's (same prompts): its plan is known when it is queued.
    assert {s["summary"] for s in running} == {second["summary"]}
    assert all(s["status"].startswith("running: this run's plan") for s in running)
    # From the moment the page sees the run start (the first poll may come before the widget has seen the
    # edit and the queued run), never the first run's plan.
    started = next(i for i, s in enumerate(second["seen"]) if s["origin"] == "running")
    assert all(s["summary"] != first["summary"] for s in second["seen"][started:])


def test_our_extension_logs_no_errors(browser_report) -> None:
    ours = [
        m for m in browser_report["console"]
        if m["type"] == "error" and (OUR_SCRIPTS in m["url"] or OUR_SCRIPTS in m["text"])
    ]  # fmt: skip
    ours += [e for e in browser_report["page_errors"] if OUR_SCRIPTS in e["stack"] + e["message"]]
    assert ours == []


# ----- the example workflows as templates (tests/browser/templates.mjs) ------------------------------------

# In a thumbnail, the committed JPEG and a photograph made now differ by at most this on average (0..255):
# JPEG compression alone is about 2, the video example's output preview changes from run to run (7.7
# measured right after regenerating it); a moved node or another layout goes well past this.
MAX_THUMBNAIL_DIFFERENCE = 12.0
# A plan widget in a thumbnail holds at least this many strongly coloured pixels (its tree's lines and
# group-coloured labels; 60 on the smallest, the cluster's, at 1024 px; a view with nothing drawn is grey).
MIN_TREE_PIXELS = 40
SAMPLER_TYPES = ("HierKSampler", "HierSharedTrunkSampler", "HierGuider")


@pytest.fixture(scope="module")
def templates_report(comfy_server: ComfyServer, object_info, tmp_path_factory) -> dict:
    if not CHROMIUM.exists() or not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("chromium or playwright-core is missing: run tools/setup_browser.sh", pytrace=False)
    examples.prepare_server_dir(comfy_server.base_dir)
    work = tmp_path_factory.mktemp("templates")
    report = examples.run_templates_job(
        examples.templates_job(comfy_server.url, object_info, EXAMPLES_DIR, work), work
    )
    if report.get("fatal"):
        pytest.fail(
            f"the browser session failed: {report['fatal']}\n{comfy_server.log_tail()}", pytrace=False
        )
    return report


def template_runs(report: dict) -> dict[str, dict]:
    return {entry["title"]: entry for entry in report["templates"]}


def overlaps(boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of nodes whose boxes ([x, y, width, height], title bars included) share any area."""
    pairs = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["box"], b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                pairs.append((f"{a['type']} {a['id']}", f"{b['type']} {b['id']}"))
    return pairs


def coloured(pixels: np.ndarray) -> int:
    """Strongly coloured pixels: the trees' lines (background, text and axes are greys)."""
    channels = pixels.astype(int)
    return int((channels.max(axis=-1) - channels.min(axis=-1) > 60).sum())


def committed_thumbnail(title: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(EXAMPLES_DIR / f"{title}.jpg").convert("RGB"))


def test_the_template_browser_shows_each_example_by_its_title_with_its_thumbnail(templates_report) -> None:
    """ComfyUI's frontend 1.32 names a pack's template by its file name (title and description alike), so
    the files are named for people; each card shows the committed thumbnail (the frontend hands it to the
    card as a blob, so its size is what identifies it)."""
    cards = {card["title"]: card for card in templates_report["browser"]["cards"]}
    titles = [w.title for w in examples.workflows()]
    assert sorted(cards) == sorted(titles)
    for title in titles:
        assert cards[title]["description"] == title
        assert cards[title]["natural"][0] == examples.THUMBNAIL_WIDTH


def test_each_template_has_a_note_saying_what_it_does_and_what_to_change(templates_report) -> None:
    runs_by_title = template_runs(templates_report)
    for workflow in examples.workflows():
        (note,) = [n for n in runs_by_title[workflow.title]["loaded"] if n["type"] == examples.NOTE]
        assert note["title"] == examples.NOTE_TITLE and note["text"] == workflow.note
        assert "**Change**" in note["text"] and "budget_value" in note["text"]
        box = note["note_box"]
        assert box["blocks"] >= 3 and box["text_bottom"] <= box["height"], box  # shown whole


def test_no_two_nodes_of_a_template_overlap(templates_report) -> None:
    for title, run in template_runs(templates_report).items():
        assert overlaps(run["loaded"]) == [], f"{title}, as loaded"
        assert overlaps(run["after_run"]) == [], f"{title}, with its plans drawn"


def test_each_thumbnail_is_the_graph_alone_as_the_frontend_draws_it_now(templates_report) -> None:
    """Nothing but the canvas and the nodes' own widgets lies over the photographed region, which is inside
    the canvas; the committed JPEG is that photograph (the same picture, scaled) and its edges are empty
    canvas, where a menu, tab bar or button would show."""
    from PIL import Image

    for title, run in template_runs(templates_report).items():
        assert run["run"]["status"] == "execution_success", run["run"]
        assert run["drawn"]["waited"], run["drawn"]["states"]
        assert run["chrome"] == [], f"{title}: {run['chrome']} over the graph"
        clip, canvas = run["fit"]["clip"], run["fit"]["canvas"]
        assert canvas["x"] <= clip["x"] and clip["x"] + clip["width"] <= canvas["x"] + canvas["width"]
        assert canvas["y"] <= clip["y"] and clip["y"] + clip["height"] <= canvas["y"] + canvas["height"]
        committed = committed_thumbnail(title)
        height, width = committed.shape[:2]
        assert width == examples.THUMBNAIL_WIDTH
        assert height / width == pytest.approx(clip["height"] / clip["width"], abs=0.01)
        now = np.asarray(Image.open(run["thumbnail"]).convert("RGB").resize((width, height), Image.LANCZOS))
        difference = np.abs(now.astype(float) - committed).mean()
        assert difference < MAX_THUMBNAIL_DIFFERENCE, (
            f"{title}: {difference:.1f}; run tools/make_example_workflows.py --thumbnails"
        )
        background = np.median(now[:4].reshape(-1, 3), axis=0)
        for edge in (committed[:6], committed[-6:], committed[:, :6], committed[:, -6:]):
            near = (np.abs(edge.astype(float) - background).max(axis=-1) < 24).mean()
            assert near > 0.9, f"{title}: an edge of the thumbnail is not empty canvas ({near:.2f})"


def test_each_thumbnail_shows_the_trees_drawn(templates_report) -> None:
    """In the photograph made now (its view boxes are of that run; the committed JPEG matches it, above),
    every plan view holds a drawn tree."""
    from PIL import Image

    for title, run in template_runs(templates_report).items():
        committed = np.asarray(Image.open(run["thumbnail"]).convert("RGB"))
        scale = committed.shape[1] / run["fit"]["clip"]["width"]
        views = run["views"]
        assert {v["type"] for v in views} & set(SAMPLER_TYPES), title
        for view in views:
            x0, y0 = round(view["x"] * scale), round(view["y"] * scale)
            x1, y1 = round((view["x"] + view["width"]) * scale), round((view["y"] + view["height"]) * scale)
            region = committed[max(0, y0) : y1, max(0, x0) : x1]
            assert coloured(region) >= MIN_TREE_PIXELS, (
                f"{title}: no tree drawn on {view['type']} {view['node']}"
            )


def test_the_budget_tooltips_say_what_sharing_may_change(templates_report, object_info) -> None:
    schema = object_info["HierKSampler"]["input"]
    shown = {t["name"]: t["text"] for t in templates_report["tooltips"]}
    for name in examples.TOOLTIP_WIDGETS:
        section = "optional" if name == "tree_from" else "required"
        assert shown[name] == schema[section][name][1]["tooltip"]  # the frontend shows the node's own
        assert "place" in shown[name] and "size" in shown[name], name
    default = schema["required"]["budget_value"][1]["default"]
    assert f"default, {default:g}," in shown["budget_value"]


def test_defaults_a_saved_workflow_may_lack_keep_what_it_did_and_the_budget_tooltips_say_what_may_change(
    object_info,
) -> None:
    """The frontend gives a widget missing from a saved workflow's values today's default, so the optional
    inputs added after workflows were saved keep the defaults that reproduce those workflows; the budget is
    a required widget, saved with every workflow (the basic example keeps its 0.5), so its default follows
    the held-out measurements (docs/fidelity.md) and its tooltips say what sharing may change."""
    for node in ("HierKSampler", "HierSharedTrunkSampler", "HierGuider"):
        inputs = object_info[node]["input"]
        assert inputs["optional"]["tree_from"][1]["default"] == "prompt_tree"
        assert inputs["optional"]["images_per_prompt"][1]["default"] == 1
        assert {"budget", "budget_value"} <= set(inputs["required"])
        assert inputs["required"]["budget_value"][1]["default"] == 0.05  # docs/fidelity.md, node defaults
        widgets = [("budget", "required"), ("budget_value", "required"), ("tree_from", "optional")]
        for name, section in widgets:
            tooltip = inputs[section][name][1]["tooltip"]
            assert "place" in tooltip and "size" in tooltip, (node, name)
    (basic,) = [w for w in examples.workflows() if w.name == "hierdiff_basic"]
    (sampler,) = [n for n in basic.nodes if n.type == "HierKSampler"]
    assert sampler.widgets["budget_value"] == 0.5


def test_every_input_and_output_of_the_pack_has_a_tooltip(object_info) -> None:
    ours = {n: i for n, i in object_info.items() if i["category"].startswith("sampling/hierarchical")}
    assert len(ours) >= 10
    missing = []
    for name, info in ours.items():
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                if len(spec) < 2 or not spec[1].get("tooltip"):
                    missing.append(f"{name}.{input_name}")
        tooltips = info.get("output_tooltips") or []
        for index, output_name in enumerate(info["output_name"]):
            if index >= len(tooltips) or not tooltips[index]:
                missing.append(f"{name} -> {output_name}")
    assert missing == []
