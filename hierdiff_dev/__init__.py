# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff's developer harness: run the pack on the real ComfyUI host (``.comfyui/``). NOT for users.

- ``hierdiff_dev.server``: ``ComfyServer``, a headless ComfyUI server in a subprocess (demo, tests);
- ``hierdiff_dev.host``: ``InProcessHost``, ComfyUI's executor in this process (tests, benchmarks);
- ``hierdiff_dev.workflows``: API-format prompts on the testkit's tiny model, for the tests;
- ``hierdiff_dev.examples``: the example workflows of ``example_workflows/`` (UI and API format).

Both hosts see a custom_nodes folder holding two links: ``hierdiff`` -> the repository root (the pack;
the link's name is the module name ComfyUI gives it) and ``hierdiff_testkit`` -> ``testkit/``.
Works from the source tree (the editable install that ``tools/setup_env.sh`` makes), which also puts
``.comfyui/`` on the virtualenv's import path. Nothing here imports ComfyUI at module level.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_ROOT = REPO_ROOT / ".comfyui"
PACK_LINK_NAME = "hierdiff"
TESTKIT_LINK_NAME = "hierdiff_testkit"
TINY_LOADER = "HierTestTinyModelLoader"  # the testkit's loader: MODEL, CLIP, VAE like a checkpoint


class ComfyHostError(RuntimeError):
    """ComfyUI rejected or failed a prompt, or a pack failed to load; the message carries ComfyUI's text."""


def make_custom_nodes_folder(base_dir: Path) -> Path:
    """Create ``base_dir/custom_nodes`` holding links to the pack and the testkit; return the folder."""
    folder = base_dir / "custom_nodes"
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_LINK_NAME, REPO_ROOT), (TESTKIT_LINK_NAME, REPO_ROOT / "testkit")):
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    return folder


def describe_failure(status: list[dict]) -> str:
    """One readable text from ComfyUI's execution status messages: the failing node, error, traceback."""
    for data in status:
        if "exception_message" in data:
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}): {data['exception_type']}: "
                f"{data['exception_message']}\n" + "".join(data.get("traceback", []))
            )
    return json.dumps(status, default=str)
