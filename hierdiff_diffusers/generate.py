# SPDX-License-Identifier: GPL-3.0-or-later
"""``hierdiff generate``: its command line, and one image per prompt with Kandinsky 2.2 (prior +
decoder, the published configuration) through the hierarchical engine. ``--pipeline DIR`` runs any
other supported diffusers pipeline folder instead (:mod:`hierdiff_diffusers.generate_pipeline`).

The output folder (lock, images with PNG text, manifest, settings, checkpoint) is the shared one of
:mod:`hierdiff_diffusers.output`. Each manifest record holds: index, file, prompt, seed,
group_path (the prompt's leaf path in the tree), steps_shared (steps denoised inside a group of two or
more prompts) and steps. The checkpoint holds the run's settings, the prior embeddings and the
denoising state after the last completed step (one latent row per active group).

Every setting, the model folders and the device are checked before the output folder is touched, so
a refused command leaves nothing behind and the corrected command simply runs.

Resuming. A restart skips prompts whose image is recorded and verified, continues denoising from
the checkpoint (the same latents, noise-generator states and group batches, so every remaining image
is bit-identical to an uninterrupted run) and decodes only the missing images, one at a time. A
checkpoint that cannot be loaded or was not written by this run (other settings, embeddings of the
wrong shape) is discarded and the run starts again from the prior; one whose embeddings are intact but
whose denoising state does not fit the plan (step out of range, latents of the wrong shape, missing or
damaged noise-generator states) keeps the embeddings and denoises again from the first step. Both give
the same images as an uninterrupted run, only later.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hierdiff_core.prompts import read_prompts
from hierdiff_core.run_folder import RunFolder
from hierdiff_core.schedule import MAX_STEPS, Budget, Plan
from hierdiff_core.schedule import plan as make_plan

from .output import (
    DEVICES,
    MAX_BATCH,
    MAX_SEED,
    MAX_SIDE,
    ImageWriter,
    Progress,
    check_finite,
    check_int,
    check_prompts,
    check_side,
    open_run,
    plan_figures,
    resolve_device,
)

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "MAX_BATCH", "MAX_SEED", "MAX_SIDE", "KandinskyRun", "generate", "resolve_device"]

KANDINSKY_DEFAULTS = {"steps": 40, "guidance": 10.0, "prior_guidance": 4.0, "prior_steps": 25, "height": 512,
                      "width": 512, "max_batch": 16}  # fmt: skip
"""The Kandinsky path's defaults (the published configuration; 16 groups per UNet batch)."""


@dataclass(frozen=True)
class KandinskyRun:
    """What a Kandinsky 2.2 run is asked for (all of it goes into the run folder's settings)."""

    prompts: tuple[str, ...]
    prior_dir: str
    decoder_dir: str
    seed: int = 0
    steps: int = 40
    budget: Budget | None = None
    guidance_scale: float = 10.0
    prior_guidance_scale: float = 4.0
    prior_steps: int = 25
    height: int = 512
    width: int = 512
    max_batch: int = 16

    def settings(self) -> dict:
        """The run folder's settings; the budget as the three optional values (None when not given)."""
        given = {} if self.budget is None else {self.budget.mode: self.budget.value}
        return {
            "prompts": list(self.prompts),
            "prior": str(Path(self.prior_dir).resolve()),
            "decoder": str(Path(self.decoder_dir).resolve()),
            "seed": int(self.seed),
            "steps": int(self.steps),
            **{mode: given.get(mode) for mode in ("tau", "target_saving", "evaluations_per_image")},
            "guidance_scale": float(self.guidance_scale),
            "prior_guidance_scale": float(self.prior_guidance_scale),
            "prior_steps": int(self.prior_steps),
            "height": int(self.height),
            "width": int(self.width),
            "max_batch": int(self.max_batch),
        }

    def check(self) -> None:
        """Raise ValueError (one line naming the setting and what it accepts) for any bad setting, a
        missing or incomplete model folder, or a size the decoder cannot make. Reads only configs."""
        check_prompts(self.prompts)
        check_int(self.seed, "seed", 0, MAX_SEED)
        (self.budget or Budget("tau", 0.0)).check(self.steps)  # the planner's own steps bounds
        check_int(self.prior_steps, "prior steps", 1, MAX_STEPS)
        check_finite(self.guidance_scale, "guidance scale")
        check_finite(self.prior_guidance_scale, "prior guidance scale")
        check_int(self.max_batch, "max batch (groups per UNet batch)", 1, MAX_BATCH)
        for name in ("height", "width"):
            check_int(getattr(self, name), name, 1, MAX_SIDE, why="memory grows with height x width")
        from .kandinsky import check_decoder_folder
        from .prior import check_prior_folder

        check_prior_folder(self.prior_dir)
        check_decoder_folder(self.decoder_dir)
        factor = decoder_factor(self.decoder_dir)
        for name in ("height", "width"):
            model = f"decoder {self.decoder_dir!r} (its movq's downscale factor)"
            check_side(getattr(self, name), name, factor, model)


def decoder_factor(decoder_dir: str | os.PathLike[str]) -> int:
    """The decoder's pixels per latent cell (8 for the published movq), read from movq/config.json
    the way :func:`~hierdiff_diffusers.kandinsky.start_latent` computes it, without loading weights."""
    config = Path(decoder_dir) / "movq" / "config.json"
    try:
        blocks = json.loads(config.read_text(encoding="utf-8"))["block_out_channels"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        blocks = None
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(
            f"decoder config {str(config)!r} is not a movq config with block_out_channels; "
            "use a complete kandinsky-2-2-decoder folder"
        )
    return 2 ** (len(blocks) - 1)


def generate(
    prompts: Sequence[str],
    prior_dir: str | os.PathLike[str],
    decoder_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    budget: Budget | None = None,
    on_step: Callable[[int], None] | None = None,
    on_image: Callable[[int], None] | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    **options,
) -> dict:
    """Generate (or finish generating) one image per prompt into ``out_dir``.

    ``budget`` sets how much to share (None: tau = 0, ordinary sampling); ``options`` are the other
    fields of :class:`KandinskyRun` (seed, steps, guidance_scale, prior_guidance_scale, prior_steps,
    height, width, max_batch); ``device`` as :func:`resolve_device` takes it. ``on_step(step)`` and
    ``on_image(index)`` are called after each completed denoising step and each written image;
    ``progress`` shows them as a bar. Returns a summary: counts, tau, model evaluations and saving.
    ValueError (one line) for a bad setting (nothing written) or an output folder that cannot be used.
    """
    run = KandinskyRun(
        tuple(prompts), str(prior_dir), str(decoder_dir), budget=None if budget is None else Budget(*budget),
        **options,
    )  # fmt: skip
    run.check()
    device = resolve_device(device)
    with open_run(out_dir, run.settings(), run.prompts, (run.width, run.height)) as (folder, summary):
        pending = folder.pending()
        if not pending:
            return summary

        from .kandinsky import check_prior_matches_decoder, load_decoder
        from .prior import load_prior

        prior = load_prior(prior_dir, device=device)
        decoder = load_decoder(decoder_dir, device=device)
        check_prior_matches_decoder(prior, decoder)
        writers: list[ImageWriter] = []

        def start(plan: Plan, steps_to_run: int) -> None:
            writers.append(ImageWriter(folder, plan, run.seed, on_image, progress, plan_files=False))
            if progress is not None:
                progress.start(steps_to_run, len(run.prompts), len(run.prompts) - len(pending))

        plan, latents = _denoise(run, prior, decoder, folder, on_step, progress, start)
        summary["written"] = _write_images(writers[0], decoder, latents, pending)
    summary.update(plan_figures(plan))
    return summary


def _denoise(
    run: KandinskyRun,
    prior,
    decoder,
    folder: RunFolder,
    on_step: Callable[[int], None] | None,
    progress: Progress | None,
    start: Callable[[Plan, int], None],
) -> tuple[Plan, torch.Tensor]:
    """Embed (or reload the embeddings), plan, call ``start(plan, steps to run)``, and denoise from the
    folder's checkpoint; returns the plan and the (N, C, h, w) final latents."""

    from .kandinsky import DenoiseState, denoise_hierarchical, start_latent
    from .prior import embed_prompts_with_prior, prior_tree

    settings = run.settings()
    saved = folder.load_state()
    kept = _saved_embeddings(saved, settings, len(run.prompts), prior.embedding_dim)
    if kept is None:
        embeds = embed_prompts_with_prior(
            prior, run.prompts, run.seed, run.prior_guidance_scale, run.prior_steps
        )
        negative = prior.negative_embedding().float().cpu()
        saved = None
        folder.save_state({"settings": settings, "embeds": embeds, "negative": negative, "denoise": None})
    else:
        embeds, negative = kept
    plan = make_plan(prior_tree(embeds, run.prompts), run.steps, run.budget or Budget("tau", 0.0))
    row_shape = tuple(start_latent(decoder, run.seed, run.height, run.width).shape[1:])
    state = None if saved is None else _saved_denoise_state(saved["denoise"], run, plan, row_shape)
    start(plan, run.steps - 1 - (-1 if state is None else state.step))
    if state is not None and state.step == run.steps - 1:
        return plan, state.latents

    def checkpoint(current: DenoiseState) -> None:
        compact = current.compact(plan)
        folder.save_state({"settings": settings, "embeds": embeds, "negative": negative, "denoise": compact})
        if progress is not None:
            progress.step(current.step, int(plan.evaluations_per_step[current.step]))
        if on_step is not None:
            on_step(current.step)

    latents, _ = denoise_hierarchical(
        decoder, plan, embeds, negative, run.seed, run.guidance_scale, run.height, run.width, run.max_batch,
        state=state, on_step=checkpoint,
    )  # fmt: skip
    return plan, latents


def _saved_embeddings(
    saved: Any, settings: dict, n: int, width: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The checkpoint's (embeds, negative) when it was written by this run and they are well formed."""
    import torch

    if not isinstance(saved, dict) or saved.get("settings") != settings:
        return None
    embeds, negative = saved.get("embeds"), saved.get("negative")
    for tensor, shape in ((embeds, (n, width)), (negative, (1, width))):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            return None
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            return None
    return embeds, negative


def _saved_denoise_state(data: Any, run: KandinskyRun, plan: Plan, row_shape: tuple[int, ...]):
    """The checkpoint's :class:`DenoiseState` when it fits this plan, else None (denoise from the start)."""
    import torch

    from hierdiff_core.engine import GroupGenerators

    from .kandinsky import DenoiseState

    if not isinstance(data, dict):
        return None
    step, latents, generators = data.get("step"), data.get("latents"), data.get("generators")
    if isinstance(step, bool) or not isinstance(step, int) or not -1 <= step < run.steps:
        return None
    nodes = [] if step < 0 else plan.groups(step).nodes.tolist()
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != (max(len(nodes), 1), *row_shape):
        return None
    if not latents.is_floating_point() or not isinstance(generators, dict) or set(generators) != set(nodes):
        return None
    try:
        GroupGenerators(plan, run.seed, generators)  # a damaged generator state raises here
    except (RuntimeError, TypeError, ValueError):
        return None
    return DenoiseState.expand(data, plan)


def _write_images(writer: ImageWriter, decoder, latents: torch.Tensor, pending: list[int]) -> int:
    """Decode each pending latent on its own and write it with its record; returns the count."""
    from .kandinsky import decode_latents

    for index in pending:
        writer.write(index, decode_latents(decoder, latents[index : index + 1])[0])
    return writer.written


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hierdiff generate`` arguments (``run_generate`` handles them). Options left out take the
    model's defaults: the pipeline's own for ``--pipeline``, the published ones for Kandinsky."""
    from .generate_pipeline import DTYPES, TREE_SOURCES

    parser.add_argument("prompts", help="UTF-8 text file, one prompt per line")
    model = parser.add_argument_group(
        "model", "--pipeline, or Kandinsky 2.2's --model or --prior and --decoder"
    )
    model.add_argument(
        "--pipeline", metavar="DIR", help="diffusers pipeline folder: SD 1.x, SDXL, SD3, Flux or PixArt-Sigma"
    )
    model.add_argument(
        "--model", help="folder holding prior/ (kandinsky-2-2-prior) and decoder/ (kandinsky-2-2-decoder)"
    )
    model.add_argument("--prior", help="prior pipeline folder (instead of MODEL/prior)")
    model.add_argument("--decoder", help="decoder pipeline folder (instead of MODEL/decoder)")
    parser.add_argument("--out", default="hierdiff-out", help="output folder (default: hierdiff-out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's; Kandinsky 40)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--tau", type=float, help="threshold at the first step (0: ordinary sampling)")
    budget.add_argument(
        "--target-saving", type=float, help="fraction of model evaluations to save, in [0, 1)"
    )
    budget.add_argument(
        "--evaluations-per-image", type=float, help="average model evaluations per image, in [1, steps]"
    )
    parser.add_argument("--guidance", type=float, help="guidance (default: the pipeline's; Kandinsky 10)")
    parser.add_argument("--height", type=int, help="pixels (default: the pipeline's; Kandinsky 512)")
    parser.add_argument("--width", type=int, help="pixels (default: the pipeline's; Kandinsky 512)")
    parser.add_argument(
        "--max-batch", type=int, help="groups per denoiser batch (default 64; Kandinsky 16)"
    )
    parser.add_argument("--device", default="auto", help="torch device; auto: cuda when available, else cpu")
    pipeline = parser.add_argument_group("--pipeline runs")
    pipeline.add_argument(
        "--scheduler", metavar="NAME", help="a diffusers scheduler class name (default: the folder's)"
    )
    pipeline.add_argument(
        "--tree-from", choices=(*TREE_SOURCES, "prior", "first-step"),
        help="what the tree is built on: text-encoder (the pipeline's pooled text embedding, default) or "
        "prompt (the sentence encoder); Kandinsky: prior",
    )  # fmt: skip
    pipeline.add_argument("--chunk-size", type=int, help="prompts per pipeline call (default 64)")
    pipeline.add_argument("--dtype", choices=DTYPES, help="weights' precision (default: as saved)")
    distributed = parser.add_argument_group("--pipeline runs on a Ray cluster (docs/distributed.md)")
    distributed.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS",
        help="run on Ray: no ADDRESS starts a local Ray instance with --workers slots; an ADDRESS "
        "(HOST:PORT, ray://HOST:PORT, auto) joins a running cluster",
    )  # fmt: skip
    distributed.add_argument(
        "--workers", type=int, help="Ray workers (default: one per GPU of the cluster, else per CPU)"
    )
    kandinsky = parser.add_argument_group("Kandinsky 2.2 runs")
    kandinsky.add_argument("--prior-guidance", type=float, help="prior guidance scale (published: 4)")
    kandinsky.add_argument("--prior-steps", type=int, help="prior steps (default 25)")


_KANDINSKY_ONLY = ("model", "prior", "decoder", "prior_guidance", "prior_steps")
_PIPELINE_ONLY = ("scheduler", "chunk_size", "dtype", "ray", "workers")
_NOT_WITH_RAY = ("scheduler", "chunk_size", "dtype", "tree_from")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_generate(args: argparse.Namespace) -> int:
    """Handler for ``hierdiff generate``; one-line errors and exit code 2 on bad input."""
    options = (args.tau, args.target_saving, args.evaluations_per_image)
    progress = Progress()
    try:
        given = [name for name in _KANDINSKY_ONLY + _PIPELINE_ONLY if getattr(args, name) is not None]
        if args.pipeline is not None:
            wrong = [_option(name) for name in given if name in _KANDINSKY_ONLY]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} go with Kandinsky 2.2 runs, not with --pipeline")
            run = _pipeline_run(args) if args.ray is None else _ray_run(args)
        else:
            wrong = [_option(name) for name in given if name in _PIPELINE_ONLY]
            if args.tree_from not in (None, "prior"):
                wrong.append(f"--tree-from {args.tree_from}")
            if wrong:
                raise ValueError(f"{', '.join(wrong)} go with --pipeline runs; Kandinsky 2.2 builds the tree "
                                 "on its prior's embeddings and runs DDPM as published")  # fmt: skip
            run = _kandinsky_run(args)
        budget = None if options == (None, None, None) else Budget.from_options(*options)
        summary = run(read_prompts(args.prompts), budget, progress)
    except ValueError as exc:  # PriorFolderError, PipelineFolderError and RunFolderError are ValueErrors
        print(f"hierdiff generate: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk failed under a running run (full, removed): the run can resume
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"hierdiff generate: error: {exc.strerror or exc}{where}; rerun the command to resume",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        progress.close()
    if "saving" in summary:
        chunks = summary.get("chunks")
        tail = "; x2 with guidance)" if chunks is None else f"; {chunks} chunks)" if chunks > 1 else ")"
        print(
            f"{summary['written']} images written to {args.out} ({summary['already_done']} already there); "
            f"tau {summary['tau']:.4g}: {summary['model_evaluations']} model evaluations instead of "
            f"{summary['independent_evaluations']} ({100 * summary['saving']:.1f} % saved"
            + tail
        )
    else:
        print(f"all {summary['prompts']} images already in {args.out}; nothing to do")
    return 0


def _default(value: Any, name: str) -> Any:
    return KANDINSKY_DEFAULTS[name] if value is None else value


def _kandinsky_run(args: argparse.Namespace) -> Callable[[list[str], Budget | None, Progress], dict]:
    if args.prior is None and args.model is None or args.decoder is None and args.model is None:
        raise ValueError(
            "give --pipeline DIR (a diffusers pipeline folder), or --model DIR or both --prior and --decoder "
            "(Kandinsky 2.2)"
        )
    prior_dir = args.prior or os.path.join(args.model, "prior")
    decoder_dir = args.decoder or os.path.join(args.model, "decoder")
    _quiet_loading()

    def run(prompts: list[str], budget: Budget | None, progress: Progress) -> dict:
        steps = _default(args.steps, "steps")
        return generate(
            prompts, prior_dir, decoder_dir, args.out, budget=None if budget is None else budget.check(steps),
            device=args.device, progress=progress, seed=args.seed, steps=steps,
            guidance_scale=_default(args.guidance, "guidance"),
            prior_guidance_scale=_default(args.prior_guidance, "prior_guidance"),
            prior_steps=_default(args.prior_steps, "prior_steps"), height=_default(args.height, "height"),
            width=_default(args.width, "width"), max_batch=_default(args.max_batch, "max_batch"),
        )  # fmt: skip

    return run


def _pipeline_run(args: argparse.Namespace) -> Callable[[list[str], Budget | None, Progress], dict]:
    from .generate_pipeline import generate_pipeline

    options = {
        name: getattr(args, attribute)
        for name, attribute in (("steps", "steps"), ("guidance_scale", "guidance"), ("height", "height"),
                                ("width", "width"), ("max_batch", "max_batch"), ("chunk_size", "chunk_size"),
                                ("tree_from", "tree_from"), ("scheduler", "scheduler"), ("dtype", "dtype"))
        if getattr(args, attribute) is not None
    }  # fmt: skip
    _quiet_loading()

    def run(prompts: list[str], budget: Budget | None, progress: Progress) -> dict:
        return generate_pipeline(
            prompts, args.pipeline, args.out, budget=budget, device=args.device, progress=progress,
            seed=args.seed, **options,
        )  # fmt: skip

    return run


def _ray_run(args: argparse.Namespace) -> Callable[[list[str], Budget | None, Progress], dict]:
    """The ``--pipeline ... --ray`` run: subtrees of the plan on Ray workers (docs/distributed.md)."""
    wrong = [_option(name) for name in _NOT_WITH_RAY if getattr(args, name) is not None]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} go with single-process --pipeline runs, not with --ray (the "
                         "Ray runner uses the folder's scheduler and the text encoder's tree)")  # fmt: skip
    from .distributed import run_distributed

    options = {
        name: getattr(args, attribute)
        for name, attribute in (("steps", "steps"), ("guidance_scale", "guidance"), ("height", "height"),
                                ("width", "width"), ("max_batch", "max_batch"))
        if getattr(args, attribute) is not None
    }  # fmt: skip
    _quiet_loading()

    def run(prompts: list[str], budget: Budget | None, progress: Progress) -> dict:
        bar = _RayBar(progress.file)
        try:
            result = run_distributed(
                args.pipeline, prompts, budget or Budget("tau", 0.0), out=args.out,
                workers=args.workers, address=args.ray or None, seed=args.seed, device=args.device,
                progress=bar.update, **options,
            )  # fmt: skip
        finally:
            bar.close()
        if result.plan is None:
            return {"prompts": len(prompts)}
        plan = result.plan
        return {
            "written": result.written, "already_done": result.already_done, "tau": plan.tau,
            "model_evaluations": plan.model_evaluations, "saving": plan.saving, "chunks": None,
            "independent_evaluations": plan.steps * plan.tree.n_prompts,
        }  # fmt: skip

    return run


class _RayBar:
    """One tqdm bar for a whole Ray run: images finished, with evaluations done / planned."""

    def __init__(self, file: Any = None):
        self.file, self._bar = file, None

    def update(self, progress: Any) -> None:
        from tqdm import tqdm

        if self._bar is None:
            disable = None if self.file is None else False  # None: shown on a terminal only
            self._bar = tqdm(total=progress.images_total, unit="image", desc="images", file=self.file,
                             disable=disable)  # fmt: skip
        self._bar.n = progress.images_done
        self._bar.set_postfix_str(
            f"{progress.phase}, evaluations {progress.evaluations_done}/{progress.evaluations_planned}",
            refresh=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _quiet_loading() -> None:
    """No loading bars or advice from diffusers and transformers on the command's stderr (the run's own
    progress bar is there)."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:  # the run itself says what to install
        return
    for logging in (diffusers_logging, transformers_logging):
        logging.disable_progress_bar()
        logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hierdiff_diffusers.generate PROMPTS.txt ...``: the generate subcommand on its own."""
    from hierdiff_core.cli import GENERATE_HELP

    parser = argparse.ArgumentParser(prog="hierdiff generate", description=GENERATE_HELP)
    add_generate_arguments(parser)
    return run_generate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
