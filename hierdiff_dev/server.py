# SPDX-License-Identifier: GPL-3.0-or-later
"""Drive a real headless ComfyUI server with the hierdiff pack and its testkit installed.

Used by the demo (``tools/demo.py``) and the tests (the ``comfy_server`` fixture). The server is
ComfyUI's ``main.py`` from ``.comfyui/`` (made by ``tools/setup_env.sh``) in a subprocess on a free
127.0.0.1 port, with every folder it writes (models, output, user data, its log) under one base
directory whose ``custom_nodes/`` links the pack and the testkit (see ``hierdiff_dev``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import COMFY_ROOT, ComfyHostError, describe_failure, make_custom_nodes_folder


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ComfyServer:
    """A headless ComfyUI server (``main.py``) in a subprocess, bound to 127.0.0.1 on a free port.

    Everything it writes (models, outputs, user data, its log) goes under ``base_dir``.
    """

    base_dir: Path
    python: str = sys.executable
    port: int = field(default_factory=free_loopback_port)
    process: subprocess.Popen | None = None
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def start(self, timeout: float = 120.0) -> ComfyServer:
        """Start the server and wait until ``GET /object_info`` answers; raise with the log otherwise."""
        make_custom_nodes_folder(self.base_dir)
        command = [
            self.python, str(COMFY_ROOT / "main.py"),
            "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
            "--database-url", "sqlite:///:memory:", "--base-directory", str(self.base_dir),
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=COMFY_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyHostError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/object_info", timeout=5)
                return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise ComfyHostError(f"ComfyUI did not answer /object_info within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server by its process id: terminate, then kill if it has not exited in 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        """Log lines where ComfyUI reports a custom node pack that failed to import."""
        markers = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint")
        return [line for line in self.log_text().splitlines() if any(m in line for m in markers)]

    # --- HTTP -------------------------------------------------------------------------------------

    def get_json(self, path: str, timeout: float = 30) -> Any:
        import requests

        response = requests.get(self.url + path, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def object_info(self) -> dict[str, dict]:
        """``GET /object_info``: node id -> its schema as the frontend sees it."""
        return self.get_json("/object_info")

    def queue(self, prompt: dict[str, dict]) -> str:
        """``POST /prompt``; return the prompt id. Raise with ComfyUI's validation errors if rejected."""
        import requests

        response = requests.post(
            self.url + "/prompt", json={"prompt": prompt, "client_id": self.client_id}, timeout=30
        )
        if response.status_code != 200:
            raise ComfyHostError(f"ComfyUI rejected the prompt ({response.status_code}): {response.text}")
        return response.json()["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Poll ``GET /history/<id>`` until the prompt finished; return its history entry.

        Raise :class:`ComfyHostError` with the node's error if it failed, or on timeout.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    failures = [
                        data for event, data in status.get("messages", []) if event.startswith("execution_")
                    ]
                    raise ComfyHostError(f"ComfyUI failed the prompt: {describe_failure(failures)}")
                return entry
            if self.process is not None and self.process.poll() is not None:
                raise ComfyHostError(f"ComfyUI exited while running the prompt:\n{self.log_tail()}")
            time.sleep(0.1)
        raise ComfyHostError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log_tail()}")

    def run(self, prompt: dict[str, dict], timeout: float = 120.0) -> dict:
        """Queue a prompt and wait for it; return its history entry."""
        return self.wait(self.queue(prompt), timeout=timeout)

    def output_path(self, image: dict) -> Path:
        """Where an "output"-type file named in a history entry lies on disk."""
        return self.base_dir / image["type"] / image["subfolder"] / image["filename"]

    def view(self, image: dict) -> bytes:
        """The bytes of an output file named in a history entry (``{"filename", "subfolder", "type"}``)."""
        import requests

        response = requests.get(
            self.url + "/view",
            params={"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]},
            timeout=30,
        )
        response.raise_for_status()
        return response.content
