# SPDX-License-Identifier: GPL-3.0-or-later
"""What every ``hierdiff generate`` run shares, whatever model makes its images: argument checks, the
device, the run folder (:class:`~hierdiff_core.run_folder.RunFolder`), the plan files, the images with
their records, and the progress bar.

A run's output folder::

    OUT/00000.png ...        one image per prompt; PNG text: prompt, seed, group_path, hierdiff (the
                             whole manifest record as JSON)
    OUT/manifest.jsonl       one record per finished image: index, file, prompt, seed, group_path
                             (the prompt's leaf path in the tree, '0'/'1' per split), steps_shared
                             (steps denoised inside a group of two or more prompts), steps, and what
                             the model run adds
    OUT/plan/plan.json       the plan (tree, tau, budget; ``Plan.from_json`` reads it back)
    OUT/plan/dendrogram.png  the hierarchy against the step axis
    OUT/plan/savings.txt     model evaluations per step and in total, and the saving

The plan files are (re)written, atomically, by every ``--pipeline`` run that has images to make (the
Kandinsky path's folder holds its images and manifest only, as before).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral, Real
from pathlib import Path
from typing import IO, Any

from hierdiff_core.report import render_dendrogram, savings_table, summary_line
from hierdiff_core.run_folder import RunFolder, write_atomically
from hierdiff_core.schedule import Plan

MAX_SIDE = 2048
"""Largest height or width in pixels: the decoder's memory grows with height x width."""
MAX_BATCH = 4096
"""Largest number of groups in one denoiser batch."""
MAX_SEED = 2**64 - 1
"""torch generators take seeds up to this."""
DEVICES = "auto, cpu, cuda, cuda:N or mps"
PLAN_FOLDER = "plan"
"""Sub-folder of the output folder holding plan.json, dendrogram.png and savings.txt."""


# ----- argument checks (each a one-line ValueError naming the setting) -----
def check_int(value: Any, name: str, low: int, high: int, why: str = "") -> None:
    """ValueError unless ``value`` is an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{reason}, got {value!r}")


def check_finite(value: Any, name: str) -> None:
    """ValueError unless ``value`` is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_prompts(prompts: Sequence[str]) -> None:
    """ValueError for no prompts or a blank one."""
    if not prompts:
        raise ValueError("no prompts to generate")
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("every prompt must be a non-blank string")


def check_side(value: int, name: str, factor: int, model: str) -> None:
    """ValueError unless ``value`` (a height or width in pixels, already in [1, MAX_SIDE]) is a multiple
    of ``factor``; ``model`` says whose factor it is, e.g. "decoder 'K22' (its movq's downscale factor)"."""
    if value % factor:
        below = value // factor * factor
        nearest = f"{below} or {below + factor}" if below else str(factor)
        raise ValueError(f"{name} must be a multiple of {factor} for {model}, got {value}; try {nearest}")


def resolve_device(name: str) -> str:
    """The torch device for ``name``: "auto" is cuda when a GPU is available, else cpu. ValueError
    (one line) for an unknown device or one this machine does not have."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use {DEVICES}") from None
    if device.type == "cpu":
        return name
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has cuda:0 to cuda:{count - 1}")
        return name
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: MPS is not available here; use --device cpu")
        return name
    raise ValueError(f"device {name!r} is not supported; use {DEVICES}")


# ----- progress -----
class Progress:
    """A tqdm bar over a run's denoising steps, showing the groups active in the latest step and the
    images finished. ``file`` None writes to stderr, and only when it is a terminal."""

    def __init__(self, file: IO[str] | None = None):
        self.file = file
        self._bar: Any = None
        self.images_done = 0
        self.images = 0

    def start(self, steps: int, images: int, images_done: int) -> None:
        """Begin: ``steps`` denoising steps to run in all, ``images`` in the run, ``images_done`` of
        them already there."""
        from tqdm import tqdm

        self.images, self.images_done = images, images_done
        disable = None if self.file is None else False  # None: tqdm shows it on a terminal only
        self._bar = tqdm(total=steps, unit="step", desc="denoising", file=self.file, disable=disable)
        self._show(0)

    def step(self, step: int, groups: int) -> None:
        """``step`` is done; ``groups`` groups were active in it."""
        if self._bar is not None:
            self._bar.update(1)
            self._show(groups)

    def image(self, index: int) -> None:
        """Image ``index`` is written."""
        self.images_done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"images {self.images_done}/{self.images}", refresh=True)

    def _show(self, groups: int) -> None:
        self._bar.set_postfix_str(f"groups {groups}, images {self.images_done}/{self.images}", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ----- the run folder -----
class ImageWriter:
    """Writes a run's images with their records, and (``plan_files``) its plan files when created.

    ``plan`` is the plan over all prompts: records take each prompt's ``group_path`` from its tree.
    ``notes`` are lines added to savings.txt.
    """

    def __init__(
        self,
        folder: RunFolder,
        plan: Plan,
        seed: int,
        on_image: Callable[[int], None] | None = None,
        progress: Progress | None = None,
        notes: Sequence[str] = (),
        plan_files: bool = True,
    ):
        self.folder, self.plan, self.seed = folder, plan, int(seed)
        self.on_image, self.progress = on_image, progress
        self.written = 0
        self._first_steps = plan.first_steps
        if plan_files:
            write_plan_files(folder.path / PLAN_FOLDER, plan, notes)

    def write(self, index: int, image: Any, steps_shared: int | None = None, **extra: Any) -> None:
        """Add prompt ``index``'s PIL image with its record (``steps_shared`` defaults to the plan's;
        ``extra`` adds JSON fields) and its PNG text."""
        if steps_shared is None:
            steps_shared = int(self._first_steps[index])
        record = {
            "seed": self.seed,
            "group_path": self.plan.tree.path(index),
            "steps_shared": int(steps_shared),
            "steps": int(self.plan.steps),
            **extra,
        }
        text = {
            "prompt": self.folder.prompts[index],
            "seed": str(self.seed),
            "group_path": record["group_path"],
            "hierdiff": json.dumps({"index": index, "prompt": self.folder.prompts[index], **record}),
        }
        self.folder.add_image(index, image, record, text)
        self.written += 1
        if self.progress is not None:
            self.progress.image(index)
        if self.on_image is not None:
            self.on_image(index)


def write_plan_files(folder: Path, plan: Plan, notes: Sequence[str] = ()) -> None:
    """plan.json, dendrogram.png and savings.txt (the table, then ``notes`` lines) into ``folder``,
    each atomically."""
    folder.mkdir(exist_ok=True)
    for stale in folder.glob(".tmp-*"):  # left by a killed run; the run folder's lock is held
        stale.unlink(missing_ok=True)
    text = "\n".join([summary_line(plan), "", savings_table(plan), *notes]) + "\n"
    picture = render_dendrogram(plan)
    write_atomically(folder / "plan.json", lambda f: f.write(plan.to_json(indent=1).encode("utf-8")))
    write_atomically(folder / "dendrogram.png", lambda f: picture.save(f, format="PNG"))
    write_atomically(folder / "savings.txt", lambda f: f.write(text.encode("utf-8")))


@contextmanager
def open_run(
    out_dir: str | os.PathLike[str], settings: dict, prompts: Sequence[str], image_size: tuple[int, int]
) -> Iterator[tuple[RunFolder, dict]]:
    """Open the run folder (checked, locked) and start the run's summary: {prompts, already_done,
    written}. The caller makes the pending images and adds its figures to the summary."""
    with RunFolder.open(out_dir, settings, prompts, image_size) as folder:
        pending = folder.pending()
        yield folder, {"prompts": len(prompts), "already_done": len(prompts) - len(pending), "written": 0}


def plan_figures(plan: Plan, model_evaluations: int | None = None) -> dict:
    """The summary's figures of a plan; ``model_evaluations`` overrides the plan's count (a chunked run
    gives up sharing above its chunks)."""
    evaluations = int(plan.model_evaluations if model_evaluations is None else model_evaluations)
    independent = int(plan.independent_evaluations)
    return {
        "tau": float(plan.tau),
        "model_evaluations": evaluations,
        "independent_evaluations": independent,
        "saving": 1.0 - evaluations / independent,
    }
