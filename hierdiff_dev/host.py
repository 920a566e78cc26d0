# SPDX-License-Identifier: GPL-3.0-or-later
"""Run hierdiff on the real ComfyUI host in this process (the tests' ``comfy_host``, the benchmarks).

A pack that fails to import makes ComfyUI log a warning and carry on; here it raises, with the error.
The host uses ComfyUI's own pieces (``nodes.load_custom_node``, ``execution.validate_prompt``,
``execution.PromptExecutor``); ComfyUI keeps module-level state, so there is one per process.
ComfyUI is importable through the ``.pth`` file that ``tools/setup_env.sh`` writes into the virtualenv.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import (
    COMFY_ROOT,
    PACK_LINK_NAME,
    TESTKIT_LINK_NAME,
    ComfyHostError,
    describe_failure,
    make_custom_nodes_folder,
)


def prepare_comfy_imports(base_dir: Path, cpu: bool = True) -> None:
    """Set ComfyUI's arguments for this process: the CPU (or its GPU when ``cpu`` is False), and its
    folders under ``base_dir``.

    Must run before anything imports ``comfy.model_management`` or ``folder_paths``: both read these
    arguments at import time. Calling it again with the same arguments does nothing.
    """
    check_comfy_importable()
    from comfy.cli_args import args

    if args.base_directory == str(base_dir) and args.cpu == cpu:
        return
    if "comfy.model_management" in sys.modules or "folder_paths" in sys.modules:
        raise ComfyHostError("ComfyUI was imported before prepare_comfy_imports set its arguments")
    args.cpu = cpu
    args.base_directory = str(base_dir)


def check_comfy_importable() -> None:
    """Raise :class:`ComfyHostError` unless ComfyUI's ``comfy`` and ``nodes`` resolve to ``.comfyui/``.

    Catches a virtualenv without the ``.pth`` file, and our ``nodes/`` folder hiding ComfyUI's
    ``nodes`` when the repository root is on the import path (``python -m``/``-c`` run from it).
    """
    try:
        cli_args = importlib.util.find_spec("comfy.cli_args")  # `comfy` is a namespace package
    except ImportError:
        cli_args = None
    if cli_args is None:
        raise ComfyHostError(f"ComfyUI is not importable: run tools/setup_env.sh (it links {COMFY_ROOT})")
    nodes = importlib.util.find_spec("nodes")
    for name, spec, path in (
        ("comfy.cli_args", cli_args, COMFY_ROOT / "comfy" / "cli_args.py"),
        ("nodes", nodes, COMFY_ROOT / "nodes.py"),
    ):
        found = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if found != path.resolve():
            raise ComfyHostError(
                f"`import {name}` would load {found}, not ComfyUI's {path}: run from outside the "
                "repository root (or with python -P), so that our folders do not hide ComfyUI's modules"
            )


class RecordingServer:
    """The part of ComfyUI's PromptServer that PromptExecutor talks to; records every message it sends.

    ``messages`` is a list of ``(event, data)``: "execution_start", "executing", "progress",
    "progress_state", "executed" (a node's UI output), "execution_error", "execution_success", ...
    """

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, dict] = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass

    def events(self, event: str) -> list[Any]:
        """The data of every recorded message of one kind, in order."""
        return [data for name, data in self.messages if name == event]


@dataclass
class RunResult:
    """What one in-process prompt produced.

    ``outputs``: node id -> UI output, as in ``/history/<id>["outputs"]`` (e.g. SaveImage's
    ``{"images": [{"filename", "subfolder", "type"}]}``). ``messages``: ``(event, data)`` sent during
    the run. ``output_dir``: ComfyUI's output folder, where "output"-type files are.
    """

    prompt_id: str
    outputs: dict[str, dict]
    messages: list[tuple[str, Any]]
    output_dir: Path

    def events(self, event: str) -> list[Any]:
        return [data for name, data in self.messages if name == event]

    def image_paths(self, node_id: str) -> list[Path]:
        """Files of a SaveImage-like node's ``images`` UI output."""
        return [
            self.output_dir / image["subfolder"] / image["filename"]
            for image in self.outputs[node_id]["images"]
        ]


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class InProcessHost:
    """ComfyUI's executor in this process, with the pack and the testkit loaded from a base directory.

    Build it with :meth:`start` (once per process). ``run(prompt)`` validates and executes an API-format
    prompt and returns a :class:`RunResult`, raising :class:`ComfyHostError` with ComfyUI's error text.
    """

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.server = RecordingServer()
        self.loaded_modules: dict[str, str] = {}  # link name -> module name in sys.modules

    @classmethod
    def start(cls, base_dir: Path, cpu: bool = True) -> InProcessHost:
        """Import ComfyUI (after :func:`prepare_comfy_imports` with the same arguments), initialise
        its built-in nodes, and load the pack and the testkit through ``nodes.load_custom_node``."""
        host = cls(base_dir)
        host._import_comfy(cpu)
        host._load_packs()
        return host

    def _import_comfy(self, cpu: bool) -> None:
        prepare_comfy_imports(self.base_dir, cpu)
        import utils.extra_config  # noqa: F401  (before `nodes`, which puts comfy/ first on the import path)

        import nodes

        if Path(nodes.__file__).resolve().parent != COMFY_ROOT.resolve():
            raise ComfyHostError(f"`import nodes` found {nodes.__file__}, not ComfyUI's nodes.py")
        import comfy.utils

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)

    def _progress_hook(self, value, total, preview_image, prompt_id=None, node_id=None) -> None:
        # What ComfyUI's main.py installs: progress goes to the progress registry and to the client,
        # and every progress update is a point where a Cancel takes effect.
        import comfy.model_management
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if context is not None:
            prompt_id = prompt_id or context.prompt_id
            node_id = node_id or context.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        prompt_id = prompt_id or self.server.last_prompt_id
        node_id = node_id or self.server.last_node_id
        get_progress_state().update_progress(node_id, value, total, preview_image)
        self.server.send_sync(
            "progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}
        )

    def _load_packs(self) -> None:
        import nodes

        folder = make_custom_nodes_folder(self.base_dir)
        for name in (PACK_LINK_NAME, TESTKIT_LINK_NAME):
            path = str(folder / name)
            capture = _LogCapture()
            logging.getLogger().addHandler(capture)
            try:
                loaded = asyncio.run(nodes.load_custom_node(path))
            finally:
                logging.getLogger().removeHandler(capture)
            module_name = path.replace(".", "_x_")  # how load_custom_node names a folder's module
            if not loaded:
                raise ComfyHostError(
                    f"ComfyUI failed to load the custom node pack {name!r} ({path}):\n"
                    + "\n".join(capture.lines)
                    + _reproduce_entrypoint_error(module_name)
                )
            self.loaded_modules[name] = module_name

    @property
    def node_classes(self) -> dict[str, type]:
        """ComfyUI's NODE_CLASS_MAPPINGS (node id -> class), all packs included."""
        import nodes

        return nodes.NODE_CLASS_MAPPINGS

    def node_ids_of(self, link_name: str) -> set[str]:
        """Node ids registered by one of the loaded packs (``PACK_LINK_NAME`` or ``TESTKIT_LINK_NAME``)."""
        module = f"custom_nodes.{link_name}"
        return {
            node_id
            for node_id, cls in self.node_classes.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == module
        }

    @property
    def output_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_output_directory())

    def run(self, prompt: dict[str, dict], *, client_id: str | None = "hierdiff-tests") -> RunResult:
        """Validate and execute an API-format prompt; return its UI outputs and the messages sent.

        Each run uses a fresh executor (no outputs cached between runs). ``client_id`` makes the
        executor send per-client messages ("executed", "execution_error", ...) to the recorder.
        """
        import execution

        prompt_id = str(uuid.uuid4())
        valid, error, outputs_to_execute, node_errors = asyncio.run(
            execution.validate_prompt(prompt_id, prompt, None)
        )
        if not valid:
            raise ComfyHostError(
                "ComfyUI rejected the prompt: "
                + json.dumps({"error": error, "node_errors": node_errors}, indent=1)
            )
        self.server.messages.clear()
        self.server.last_prompt_id = prompt_id
        # Newer hosts read "ram_inactive" too; 0.3.75 ignores keys it does not know.
        executor = execution.PromptExecutor(self.server, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        extra_data = {"client_id": client_id} if client_id is not None else {}
        executor.execute(prompt, prompt_id, extra_data, outputs_to_execute)
        messages = list(self.server.messages)
        if not executor.success:
            failures = [data for event, data in executor.status_messages if event.startswith("execution_")]
            raise ComfyHostError(f"ComfyUI failed the prompt: {describe_failure(failures)}")
        return RunResult(prompt_id, executor.history_result["outputs"], messages, self.output_dir)


def _reproduce_entrypoint_error(module_name: str) -> str:
    """A failing V3 entry point is logged by ComfyUI without its traceback; call it again to get one."""
    import traceback

    module = sys.modules.get(module_name)
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if entrypoint is None:
        return ""

    async def node_list() -> list:
        extension = await entrypoint()
        return await extension.get_node_list()

    try:
        asyncio.run(node_list())
    except Exception:  # the error is the result here: it goes into the message
        return "\n" + traceback.format_exc()
    return ""
