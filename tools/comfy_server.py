# SPDX-License-Identifier: GPL-3.0-or-later
"""Drive a real headless ComfyUI server with the hierdiff pack and its testkit installed.

Used by the demo (``tools/demo.py``) and the tests (``tests/comfy/host.py``). The server is ComfyUI's
``main.py`` from ``.comfyui/`` (made by ``tools/setup_env.sh``) in a subprocess on a free 127.0.0.1
port, with every folder it writes (models, output, user data, its log) under one base directory whose
``custom_nodes/`` holds two links: ``hierdiff`` -> the repository root (the pack; the link's name is
the module name ComfyUI gives it) and ``hierdiff_testkit`` -> ``testkit/`` (the tiny test model).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_ROOT = REPO_ROOT / ".comfyui"
PACK_LINK_NAME = "hierdiff"
TESTKIT_LINK_NAME = "hierdiff_testkit"
TINY_LOADER = "HierTestTinyModelLoader"


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


def prompt_tree_workflow(prompts: list[str], size: int = 64) -> dict[str, dict]:
    """The common head of hierarchical API prompts: tiny model loader ("loader"), empty negative
    ("negative"), Prompt Set Cluster over ``prompts`` ("cluster") and an empty latent of batch 1
    ("latent"). Tests add their sampler nodes to it."""
    return {
        "loader": {"class_type": TINY_LOADER, "inputs": {}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["loader", 1], "text": ""}},
        "cluster": {
            "class_type": "HierPromptSetCluster",
            "inputs": {
                "clip": ["loader", 1],
                "prompts": "\n".join(prompts),
                "linkage": "ward",
                "embedding": "clip_pooled",
            },
        },
        "latent": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": size, "height": size, "batch_size": 1},
        },
    }


def hier_sampling_inputs(steps: int, **overrides) -> dict:
    """Widget values of a Hierarchical KSampler / Shared Trunk Sampler: euler, target saving 0.5."""
    return {
        "seed": 3,
        "steps": steps,
        "cfg": 6.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1.0,
        "budget": "target_saving",
        "budget_value": 0.5,
        "max_batch": 64,
        "noise_mode": "shared",
        "conditioning_mix": "mean",
        **overrides,
    }


def decoded_and_saved(graph: dict[str, dict], source: list, prefix: str = "hier") -> dict[str, dict]:
    """``graph`` plus VAEDecode ("decode", the loader's VAE) of ``source`` and SaveImage ("save")."""
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": source, "vae": ["loader", 2]}}
    graph["save"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["decode", 0], "filename_prefix": prefix},
    }
    return graph


def basic_workflow(
    prompts: list[str] | str,
    *,
    seed: int = 1,
    steps: int = 8,
    width: int = 128,
    height: int = 128,
    cfg: float = 7.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    negative: str = "",
    filename_prefix: str = "hierdiff_test",
    checkpoint: str = "",
) -> dict[str, dict]:
    """An API-format prompt: tiny model loader -> CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage.

    ``prompts`` is one text or a list; each text gets its own KSampler (batch of one, same seed), all
    sharing the loader and the negative. Node ids are stable: "loader", "negative", and for text i
    "positive_i", "latent_i", "sampler_i", "decode_i", "save_i".
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    graph: dict[str, dict] = {
        "loader": {"class_type": TINY_LOADER, "inputs": {"checkpoint": checkpoint}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["loader", 1], "text": negative}},
    }
    for i, text in enumerate(texts):
        graph[f"positive_{i}"] = {
            "class_type": "CLIPTextEncode",
            "inputs": {"clip": ["loader", 1], "text": text},
        }
        graph[f"latent_{i}"] = {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": 1},
        }
        graph[f"sampler_{i}"] = {
            "class_type": "KSampler",
            "inputs": {
                "model": ["loader", 0],
                "positive": [f"positive_{i}", 0],
                "negative": ["negative", 0],
                "latent_image": [f"latent_{i}", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        }
        graph[f"decode_{i}"] = {
            "class_type": "VAEDecode",
            "inputs": {"samples": [f"sampler_{i}", 0], "vae": ["loader", 2]},
        }
        graph[f"save_{i}"] = {
            "class_type": "SaveImage",
            "inputs": {"images": [f"decode_{i}", 0], "filename_prefix": f"{filename_prefix}_{i}"},
        }
    return graph


def describe_failure(status: list[dict]) -> str:
    """One readable text from ComfyUI's execution status messages: the failing node, error, traceback."""
    for data in status:
        if "exception_message" in data:
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}): {data['exception_type']}: "
                f"{data['exception_message']}\n" + "".join(data.get("traceback", []))
            )
    return json.dumps(status, default=str)


def free_loopback_port() -> int:
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
