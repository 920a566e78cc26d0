# SPDX-License-Identifier: GPL-3.0-or-later
"""Check the virtualenv's import path; ``tools/setup_env.sh`` runs this after it installs anything.

    .venv/bin/python -P -m hierdiff_dev.environment

ComfyUI is importable through a ``.pth`` file naming ``.comfyui/``; Python appends that entry after
site-packages, so the standard library or an installed distribution with a top-level module of one
of ComfyUI's names (``utils``, ``app``, ``server``, ``nodes``, ...) would hide ComfyUI's. Our
packages come from the editable install, which maps each package by name and must not put the
repository root on the path, where our ``nodes/`` folder would hide ComfyUI's ``nodes``. (``-P``: no
current directory on the path.)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import tomllib  # Python 3.11+, the development virtualenv's (tools/setup_env.sh)

from . import COMFY_ROOT, REPO_ROOT


def comfy_top_level_names() -> set[str]:
    """Module names ComfyUI's folder provides at the top level (modules, packages, namespace folders)."""
    names = set()
    for entry in COMFY_ROOT.iterdir():
        if entry.suffix == ".py":
            names.add(entry.stem)
        elif entry.is_dir() and entry.name.isidentifier():
            names.add(entry.name)
    return names


def distribution_top_levels() -> dict[str, set[str]]:
    """Installed distribution name -> the top-level module names its files put in site-packages."""
    found: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        names = set((dist.read_text("top_level.txt") or "").split())
        for file in dist.files or []:
            first = file.parts[0]
            if first == ".." or first.endswith((".dist-info", ".egg-info", ".data", ".pth")):
                continue
            names.add(first.split(".")[0] if len(file.parts) == 1 else first)
        found[dist.metadata["Name"]] = names
    return found


def problems() -> list[str]:
    """What is wrong with the import path, one line each; empty when all is well."""
    found = []
    comfy_names = comfy_top_level_names()
    for dist, names in sorted(distribution_top_levels().items()):
        for name in sorted(names & comfy_names):
            found.append(f"the installed distribution {dist} provides `{name}`, hiding ComfyUI's")
    for name in sorted(comfy_names & sys.stdlib_module_names):
        found.append(f"the standard library's `{name}` hides ComfyUI's")
    if origin("nodes") != (COMFY_ROOT / "nodes.py").resolve():
        found.append(f"`import nodes` finds {origin('nodes')}, not ComfyUI's: no .pth file, or ours first?")
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = pyproject["tool"]["setuptools"]["packages"]
    installed = (importlib.metadata.distribution("hierdiff").read_text("top_level.txt") or "").split()
    if sorted(installed) != sorted(packages):
        found.append(f"the editable install exposes {sorted(installed)}, pyproject.toml lists {packages}")
    for name in packages:
        if origin(name) != REPO_ROOT / name / "__init__.py":
            found.append(f"`import {name}` finds {origin(name)}, not {REPO_ROOT / name}")
    return found


def origin(name: str) -> Path | None:
    """The file a top-level import of ``name`` would load, without importing it."""
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def main() -> int:
    found = problems()
    for line in found:
        print(f"[environment] {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
