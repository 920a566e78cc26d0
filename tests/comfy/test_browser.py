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
- a 2,000-prompt plan is laid out and painted quickly, as collapsed groups;
- our extension logs no console errors and raises no page errors.
"""

from __future__ import annotations

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
    # The basic example as saved before the samplers' optional tree_from input existed.
    basic = next(w for w in examples.workflows() if w.name == "hierdiff_basic")
    older = saved_without_last_widget(
        examples.build(examples.on_tiny_model(basic, steps=6, size=64), object_info), "tree_from"
    )
    older_path = work / f"{SAVED_BEFORE_TREE_FROM}.json"
    older_path.write_text(json.dumps(older))
    jobs.append({"name": SAVED_BEFORE_TREE_FROM, "file": str(older_path), "run": True})
    big_plan = work / "big_plan.json"
    big_plan_json(big_plan)
    job = {"url": comfy_server.url, "out_dir": str(work), "workflows": jobs, "big_plan_file": str(big_plan)}
    (work / "job.json").write_text(json.dumps(job))
    result = subprocess.run(
        ["node", str(BROWSER_DIR / "drive.mjs"), str(work / "job.json"), str(work / "report.json")],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=400,
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
    head, *listed = sampler["tooltip"].split("\n")
    assert head.split(" ")[0] in {"1", "2", "3", "4", "5", "6"} and " prompt" in head, head
    assert listed and all(line.removeprefix("\u2022 ") in prompts for line in listed), sampler["tooltip"]
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


def test_our_extension_logs_no_errors(browser_report) -> None:
    ours = [
        m for m in browser_report["console"]
        if m["type"] == "error" and (OUR_SCRIPTS in m["url"] or OUR_SCRIPTS in m["text"])
    ]  # fmt: skip
    ours += [e for e in browser_report["page_errors"] if OUR_SCRIPTS in e["stack"] + e["message"]]
    assert ours == []

