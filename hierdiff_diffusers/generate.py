# SPDX-License-Identifier: GPL-3.0-or-later
"""``hierdiff generate``: one image per prompt with Kandinsky 2.2 through the hierarchical engine.

The output folder (lock, images, manifest, settings, checkpoint) is a
:class:`~hierdiff_core.run_folder.RunFolder`. Each manifest record holds: index, file, prompt, seed,
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
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hierdiff_core.prompts import read_prompts
from hierdiff_core.run_folder import RunFolder
from hierdiff_core.schedule import MAX_STEPS, Budget, Plan
from hierdiff_core.schedule import plan as make_plan

if TYPE_CHECKING:
    import torch

MAX_SIDE = 2048
"""Largest height or width in pixels: the decoder's memory grows with height x width."""
MAX_BATCH = 4096
"""Largest number of groups in one UNet batch."""
MAX_SEED = 2**64 - 1
"""torch generators take seeds up to this."""
DEVICES = "auto, cpu, cuda, cuda:N or mps"


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
        if not self.prompts:
            raise ValueError("no prompts to generate")
        if not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ValueError("every prompt must be a non-blank string")
        _check_int(self.seed, "seed", 0, MAX_SEED)
        (self.budget or Budget("tau", 0.0)).check(self.steps)  # the planner's own steps bounds
        _check_int(self.prior_steps, "prior steps", 1, MAX_STEPS)
        _check_finite(self.guidance_scale, "guidance scale")
        _check_finite(self.prior_guidance_scale, "prior guidance scale")
        _check_int(self.max_batch, "max batch (groups per UNet batch)", 1, MAX_BATCH)
        for name in ("height", "width"):
            _check_int(getattr(self, name), name, 1, MAX_SIDE, why="memory grows with height x width")
        from .kandinsky import check_decoder_folder
        from .prior import check_prior_folder

        check_prior_folder(self.prior_dir)
        check_decoder_folder(self.decoder_dir)
        factor = decoder_factor(self.decoder_dir)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value % factor:
                below = value // factor * factor
                nearest = f"{below} or {below + factor}" if below else str(factor)
                raise ValueError(
                    f"{name} must be a multiple of {factor} for decoder {self.decoder_dir!r} "
                    f"(its movq's downscale factor), got {value}; try {nearest}"
                )


def _check_int(value: Any, name: str, low: int, high: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{reason}, got {value!r}")


def _check_finite(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


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
    **options,
) -> dict:
    """Generate (or finish generating) one image per prompt into ``out_dir``.

    ``budget`` sets how much to share (None: tau = 0, ordinary sampling); ``options`` are the other
    fields of :class:`KandinskyRun` (seed, steps, guidance_scale, prior_guidance_scale, prior_steps,
    height, width, max_batch); ``device`` as :func:`resolve_device` takes it. ``on_step(step)`` and
    ``on_image(index)`` are called after each completed denoising step and each written image.
    Returns a summary: counts, tau, model evaluations and saving. ValueError (one line) for a bad
    setting (nothing written) or an output folder that cannot be used.
    """
    run = KandinskyRun(
        tuple(prompts), str(prior_dir), str(decoder_dir), budget=None if budget is None else Budget(*budget),
        **options,
    )  # fmt: skip
    run.check()
    device = resolve_device(device)
    with RunFolder.open(out_dir, run.settings(), run.prompts, (run.width, run.height)) as folder:
        pending = folder.pending()
        summary = {"prompts": len(run.prompts), "already_done": len(run.prompts) - len(pending), "written": 0}
        if not pending:
            return summary

        from .kandinsky import check_prior_matches_decoder, load_decoder
        from .prior import load_prior

        prior = load_prior(prior_dir, device=device)
        decoder = load_decoder(decoder_dir, device=device)
        check_prior_matches_decoder(prior, decoder)
        plan, latents = _denoise(run, prior, decoder, folder, on_step)
        summary["written"] = _write_images(run, plan, decoder, latents, folder, pending, on_image)
    summary.update(
        tau=float(plan.tau),
        model_evaluations=int(plan.model_evaluations),
        independent_evaluations=int(plan.independent_evaluations),
        saving=float(plan.saving),
    )
    return summary


def _denoise(
    run: KandinskyRun, prior, decoder, folder: RunFolder, on_step: Callable[[int], None] | None
) -> tuple[Plan, torch.Tensor]:
    """Embed (or reload the embeddings), plan, and denoise from the folder's checkpoint; returns
    the plan and the (N, C, h, w) final latents."""

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
    if state is not None and state.step == run.steps - 1:
        return plan, state.latents

    def checkpoint(current: DenoiseState) -> None:
        compact = current.compact(plan)
        folder.save_state({"settings": settings, "embeds": embeds, "negative": negative, "denoise": compact})
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


def _write_images(
    run: KandinskyRun,
    plan: Plan,
    decoder,
    latents: torch.Tensor,
    folder: RunFolder,
    pending: list[int],
    on_image: Callable[[int], None] | None,
) -> int:
    """Decode each pending latent on its own and add it to the folder with its record; returns the count."""
    from .kandinsky import decode_latents

    first_steps = plan.first_steps
    for index in pending:
        image = decode_latents(decoder, latents[index : index + 1])[0]
        record = {
            "seed": int(run.seed),
            "group_path": plan.tree.path(index),
            "steps_shared": int(first_steps[index]),
            "steps": int(run.steps),
        }
        folder.add_image(index, image, record)
        if on_image is not None:
            on_image(index)
    return len(pending)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hierdiff generate`` arguments (``run_generate`` handles them)."""
    parser.add_argument("prompts", help="UTF-8 text file, one prompt per line")
    parser.add_argument(
        "--model", help="folder holding prior/ (kandinsky-2-2-prior) and decoder/ (kandinsky-2-2-decoder)"
    )
    parser.add_argument("--prior", help="prior pipeline folder (instead of MODEL/prior)")
    parser.add_argument("--decoder", help="decoder pipeline folder (instead of MODEL/decoder)")
    parser.add_argument("--out", default="hierdiff-out", help="output folder (default: hierdiff-out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--tau", type=float, help="threshold at the first step (0: ordinary sampling)")
    budget.add_argument(
        "--target-saving", type=float, help="fraction of model evaluations to save, in [0, 1)"
    )
    budget.add_argument(
        "--evaluations-per-image", type=float, help="average model evaluations per image, in [1, steps]"
    )
    parser.add_argument("--guidance", type=float, default=10.0, help="decoder guidance scale (published: 10)")
    parser.add_argument(
        "--prior-guidance", type=float, default=4.0, help="prior guidance scale (published: 4)"
    )
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--max-batch", type=int, default=16, help="groups per UNet batch")
    parser.add_argument("--device", default="auto", help="torch device; auto: cuda when available, else cpu")


def run_generate(args: argparse.Namespace) -> int:
    """Handler for ``hierdiff generate``; one-line errors and exit code 2 on bad input."""
    if args.prior is None and args.model is None or args.decoder is None and args.model is None:
        print("hierdiff generate: error: give --model DIR or both --prior and --decoder", file=sys.stderr)
        return 2
    prior_dir = args.prior or os.path.join(args.model, "prior")
    decoder_dir = args.decoder or os.path.join(args.model, "decoder")
    options = (args.tau, args.target_saving, args.evaluations_per_image)
    try:
        budget = None if options == (None, None, None) else Budget.from_options(*options).check(args.steps)
        summary = generate(
            read_prompts(args.prompts),
            prior_dir,
            decoder_dir,
            args.out,
            budget=budget,
            device=args.device,
            seed=args.seed,
            steps=args.steps,
            guidance_scale=args.guidance,
            prior_guidance_scale=args.prior_guidance,
            prior_steps=args.prior_steps,
            height=args.height,
            width=args.width,
            max_batch=args.max_batch,
        )
    except ValueError as exc:  # PriorFolderError and RunFolderError are ValueErrors
        print(f"hierdiff generate: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk failed under a running run (full, removed): the run can resume
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"hierdiff generate: error: {exc.strerror or exc}{where}; rerun the command to resume",
              file=sys.stderr)  # fmt: skip
        return 1
    if "saving" in summary:
        print(
            f"{summary['written']} images written to {args.out} ({summary['already_done']} already there); "
            f"tau {summary['tau']:.4g}: {summary['model_evaluations']} model evaluations instead of "
            f"{summary['independent_evaluations']} ({100 * summary['saving']:.1f} % saved; x2 with guidance)"
        )
    else:
        print(f"all {summary['prompts']} images already in {args.out}; nothing to do")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hierdiff_diffusers.generate PROMPTS.txt ...``: the generate subcommand on its own."""
    from hierdiff_core.cli import GENERATE_HELP

    parser = argparse.ArgumentParser(prog="hierdiff generate", description=GENERATE_HELP)
    add_generate_arguments(parser)
    return run_generate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
