# SPDX-License-Identifier: GPL-3.0-or-later
"""A generation run's output folder: its settings, its manifest, atomic writes and resume.

Layout::

    OUT/00000.png ...            one image per prompt, in prompt order
    OUT/manifest.jsonl           one JSON line per COMPLETED image (whatever the run records: index,
                                 prompt, file, seed, ...)
    OUT/.hierdiff-run.json       the run's settings; a restart with other settings is refused
    OUT/.hierdiff-state.pt       the model run's checkpoint (whatever it saves), replaced atomically

Each image is written to a temporary name, renamed, and only then recorded in the manifest (flushed
and synced), so the manifest never lists an image that is not completely written. Any model run
(Kandinsky today, other pipelines later) keeps its folder through this one class.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
RUN_FILE = ".hierdiff-run.json"
STATE_FILE = ".hierdiff-state.pt"


def image_name(index: int) -> str:
    """File name of prompt ``index``'s image."""
    return f"{index:05d}.png"


class RunFolder:
    """The output folder of one run, created (or reopened for resuming) by :meth:`open`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], settings: dict[str, Any]) -> RunFolder:
        """Create the folder, or reopen it when it holds a run with exactly these settings.

        ValueError (one line) naming the differing settings when it holds another run.
        """
        folder = cls(path)
        folder.path.mkdir(parents=True, exist_ok=True)
        stored_path = folder.path / RUN_FILE
        if stored_path.is_file():
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
            differing = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            if differing:
                raise ValueError(
                    f"output folder {str(folder.path)!r} holds a run with other settings "
                    f"({', '.join(differing)} differ); use another --out or the same settings to resume"
                )
        else:
            text = json.dumps(settings, indent=1)
            _replace_with(stored_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return folder

    def finished(self) -> dict[int, dict]:
        """Completed images recorded in the manifest whose file exists: {prompt index: record}."""
        path = self.path / MANIFEST
        done: dict[int, dict] = {}
        if not path.is_file():
            return done
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption: that image is redone
            if (self.path / record["file"]).is_file():
                done[int(record["index"])] = record
        return done

    def load_state(self) -> Any | None:
        """The model run's last checkpoint, or None when there is none."""
        import torch

        path = self.path / STATE_FILE
        return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None

    def save_state(self, state: Any) -> None:
        """Replace the checkpoint atomically."""
        import torch

        _replace_with(self.path / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def add_image(self, index: int, image: Any, record: dict[str, Any]) -> None:
        """Write prompt ``index``'s PIL image, then append its manifest record (with ``file`` added)."""
        name = image_name(index)
        tmp = self.path / f".{name}.tmp"
        image.save(tmp, format="PNG")
        os.replace(tmp, self.path / name)
        with (self.path / MANIFEST).open("a", encoding="utf-8") as manifest:
            manifest.write(json.dumps({"index": index, "file": name, **record}) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())


def _replace_with(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary name beside ``path``, renamed into place once complete."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
