# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures that run hierdiff on the real ComfyUI host (``.comfyui/``, made by ``tools/setup_env.sh``).

Fixtures (all session-scoped):

``comfy_host`` -> ``hierdiff_dev.host.InProcessHost``
    ComfyUI's executor in this process, on the CPU, with the pack (module ``custom_nodes.hierdiff``) and
    the testkit (``custom_nodes.hierdiff_testkit``) loaded by ``nodes.load_custom_node``; the session
    fails loudly, with the import error, if either does not load.
    ``comfy_host.run(prompt) -> RunResult`` validates (``execution.validate_prompt``) and executes
    (``execution.PromptExecutor``) an API-format prompt; ``RunResult.outputs`` is node id -> UI output
    (as in /history), ``RunResult.events("progress")`` etc. are the messages sent, and
    ``RunResult.image_paths(node_id)`` the files a SaveImage node wrote. Failures raise
    ``hierdiff_dev.ComfyHostError`` with ComfyUI's error text. ``comfy_host.node_classes`` is ComfyUI's
    NODE_CLASS_MAPPINGS; ``comfy_host.node_ids_of(hierdiff_dev.PACK_LINK_NAME)`` the pack's node ids.

``comfy_server`` -> ``hierdiff_dev.server.ComfyServer``
    A real headless server (``main.py --cpu``) on a free 127.0.0.1 port, all folders in a temporary
    base directory, the same two packs in its ``custom_nodes/``. ``object_info()``, ``queue(prompt) ->
    prompt_id``, ``wait(prompt_id) -> history entry``, ``run(prompt) -> history entry``,
    ``view(image) -> bytes``; ``log_text()`` for its log. Stopped by process id at the end.

``tiny_model`` -> ``(ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE)``
    The testkit's tiny SD1.5-architecture model with random weights, loaded in-process (needs
    ``comfy_host``). Shared by the whole session: ``model.clone()`` before patching or wrapping it.
    Node id of its loader: ``hierdiff_dev.TINY_LOADER``; ``hierdiff_dev.workflows.basic_workflow(prompts)``
    builds the API prompt load -> encode -> KSampler -> decode -> save (node ids "loader",
    "positive_i", ..., "save_i").

ComfyUI reads its arguments when ``comfy.model_management`` and ``folder_paths`` are first imported,
so this file prepares them at import time: test modules in this folder may ``import comfy...`` at the
top, but must not import ComfyUI's ``nodes``/``execution`` before ``comfy_host`` has started.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from hierdiff_dev import COMFY_ROOT, ComfyHostError
from hierdiff_dev.host import InProcessHost, prepare_comfy_imports
from hierdiff_dev.server import ComfyServer

if not (COMFY_ROOT / "main.py").is_file():
    raise RuntimeError("the ComfyUI host is missing: run tools/setup_env.sh (make test does)")

# One base directory per test process for the in-process host (models, output, temp, input, user).
_IN_PROCESS_BASE = Path(tempfile.mkdtemp(prefix="hierdiff-comfy-"))
prepare_comfy_imports(_IN_PROCESS_BASE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_IN_PROCESS_BASE, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy_host() -> InProcessHost:
    try:
        return InProcessHost.start(_IN_PROCESS_BASE)
    except ComfyHostError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory):
    server = ComfyServer(tmp_path_factory.mktemp("comfy_server"))
    try:
        server.start()
    except ComfyHostError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        failures = server.import_failures()
        if failures:
            pytest.fail(
                "ComfyUI server could not import a custom node pack:\n"
                + "\n".join(failures)
                + "\n"
                + server.log_tail(),
                pytrace=False,
            )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model(comfy_host: InProcessHost):
    from testkit.tiny_model import load_tiny_model  # imports ComfyUI: after prepare_comfy_imports

    return load_tiny_model()


@pytest.fixture(scope="session")
def comfy(comfy_host: InProcessHost, tiny_model) -> SimpleNamespace:
    """ComfyUI's node classes (``classes``) and ``nodes`` module (``stock``), the tiny model's ``model``,
    ``clip`` and ``vae``, and a ``negative`` ("blurry") encoded with that clip; progress bars off."""
    import comfy.utils

    import nodes as comfy_nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    model, clip, vae = tiny_model
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    return SimpleNamespace(
        classes=comfy_host.node_classes, stock=comfy_nodes, model=model, clip=clip, vae=vae, negative=negative
    )
