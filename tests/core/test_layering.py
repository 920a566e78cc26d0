# SPDX-License-Identifier: GPL-3.0-or-later
"""The layers import what they say: hierdiff_core is framework-free in fact, and the diffusers side and the
test models load their frameworks only where they are used. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("diffusers", "transformers", "comfy", "comfy_api", "ray")
CORE_MODULES = ("embed", "tree", "schedule", "engine", "report", "cli", "prompts", "run_folder", "partition")


def frameworks_loaded_by(statement: str) -> list[str]:
    """Top-level framework modules in sys.modules after running ``statement`` in a new interpreter."""
    loaded = f"sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r})"
    script = f"import json, sys\n{statement}\nprint(json.dumps({loaded}))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_every_core_module_imports_no_framework():
    statement = "import hierdiff_core, " + ", ".join(f"hierdiff_core.{m}" for m in CORE_MODULES)
    assert frameworks_loaded_by(statement) == []


def test_the_plan_command_runs_without_any_framework(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n", encoding="utf-8")
    embeddings = tmp_path / "e.npy"
    statement = (
        "import numpy\n"
        f"numpy.save({str(embeddings)!r}, numpy.eye(3) + 0.1)\n"
        "from hierdiff_core.cli import main\n"
        f"assert main(['plan', {str(prompts)!r}, '--embeddings', {str(embeddings)!r}, '--tau', '0.5']) == 0"
    )
    assert frameworks_loaded_by(statement) == []


@pytest.mark.parametrize(
    ("statement", "allowed"),
    [
        ("import hierdiff_diffusers, hierdiff_diffusers.generate", set()),
        ("import hierdiff_diffusers.distributed", set()),  # Ray and diffusers load only when a run starts
        ("import testkit", set()),
        ("import testkit.tiny_kandinsky", {"diffusers", "transformers"}),
    ],
)
def test_frameworks_load_only_where_they_are_used(statement, allowed):
    assert set(frameworks_loaded_by(statement)) <= allowed
