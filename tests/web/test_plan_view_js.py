# SPDX-License-Identifier: GPL-3.0-or-later
"""The web extension's plan model (web/plan_view.js) agrees with hierdiff_core's schedule.

Plans (and their bare trees) are made here by the real planner and written, with the planner's
answers (the group of every prompt at every step, the summary line), for
tests/browser/plan_view.test.mjs to check under Node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hierdiff_core.report import summary_line
from hierdiff_core.schedule import plan
from hierdiff_core.tree import build_tree

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_TEST = REPO_ROOT / "tests" / "browser" / "plan_view.test.mjs"


def clustered_embeddings(n: int, seed: int) -> np.ndarray:
    """(n, 16) embeddings around 6 centres, so the tree has real structure."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 16))
    return centres[rng.integers(0, 6, n)] + 0.35 * rng.normal(size=(n, 16))


def write_plan(directory: Path, name: str, n: int, steps: int, tau: float) -> None:
    prompts = [f"prompt {i}: a scene in style {i % 17}" for i in range(n)]
    tree = build_tree(clustered_embeddings(n, seed=n), prompts=prompts)
    schedule = plan(tree, steps, tau=tau)
    (directory / f"{name}.tree.json").write_text(json.dumps(tree.to_dict()))
    group_of = [schedule.active_groups(k)[schedule.group_index(k)].tolist() for k in range(steps)]
    (directory / f"{name}.plan.json").write_text(schedule.to_json())
    expect = {"group_of": group_of, "summary": summary_line(schedule)}
    (directory / f"{name}.expect.json").write_text(json.dumps(expect))


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_plan_view_module_under_node(tmp_path: Path) -> None:
    write_plan(tmp_path, "small", n=12, steps=20, tau=1.0)
    write_plan(tmp_path, "medium", n=300, steps=30, tau=1.5)
    write_plan(tmp_path, "large", n=2000, steps=40, tau=1.5)
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", str(NODE_TEST)],
        env={"PATH": "/usr/bin:/bin", "HIERDIFF_PLAN_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
