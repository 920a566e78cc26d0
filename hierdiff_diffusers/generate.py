# SPDX-License-Identifier: GPL-3.0-or-later
"""``hierdiff generate``: one image per prompt with Kandinsky 2.2 through the hierarchical engine.

The output folder (images, manifest, settings, checkpoint) is a :class:`~hierdiff_core.run_folder.RunFolder`.
Each manifest record holds: index, file, prompt, seed, group_path (the prompt's leaf path in the tree),
steps_shared (steps denoised inside a group of two or more prompts) and steps. The checkpoint holds the
prior embeddings and the denoising state after the last completed step (one latent row per active group).

Resuming. A restart skips prompts whose image exists and is recorded, continues denoising from the
checkpoint (the same latents, noise-generator states and group batches, so every remaining image
is bit-identical to an uninterrupted run) and decodes only the missing images, one at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hierdiff_core.prompts import read_prompts
from hierdiff_core.run_folder import RunFolder
from hierdiff_core.schedule import Budget, Plan
from hierdiff_core.schedule import plan as make_plan

if TYPE_CHECKING:
    import torch


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
    height, width, max_batch). ``on_step(step)`` and ``on_image(index)`` are called after each
    completed denoising step and each written image. Returns a summary: counts, tau, model
    evaluations and saving.
    """
    prompts = tuple(prompts)
    if not prompts:
        raise ValueError("no prompts to generate")
    run = KandinskyRun(prompts, str(prior_dir), str(decoder_dir), budget=budget, **options)
    folder = RunFolder.open(out_dir, run.settings())
    done = folder.finished()
    pending = [i for i in range(len(prompts)) if i not in done]
    summary = {"prompts": len(prompts), "already_done": len(done), "written": 0}
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

    from .kandinsky import DenoiseState, denoise_hierarchical
    from .prior import embed_prompts_with_prior, prior_tree

    saved = folder.load_state()
    if saved is None:
        embeds = embed_prompts_with_prior(
            prior, run.prompts, run.seed, run.prior_guidance_scale, run.prior_steps
        )
        negative = prior.negative_embedding().float().cpu()
        folder.save_state({"embeds": embeds, "negative": negative, "denoise": None})
    else:
        embeds, negative = saved["embeds"], saved["negative"]
    plan = make_plan(prior_tree(embeds, run.prompts), run.steps, run.budget or Budget("tau", 0.0))
    state = None if saved is None or saved["denoise"] is None else DenoiseState.expand(saved["denoise"], plan)
    if state is not None and state.step == run.steps - 1:
        return plan, state.latents

    def checkpoint(current: DenoiseState) -> None:
        folder.save_state({"embeds": embeds, "negative": negative, "denoise": current.compact(plan)})
        if on_step is not None:
            on_step(current.step)

    latents, _ = denoise_hierarchical(
        decoder, plan, embeds, negative, run.seed, run.guidance_scale, run.height, run.width, run.max_batch,
        state=state, on_step=checkpoint,
    )  # fmt: skip
    return plan, latents


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
            "prompt": run.prompts[index],
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
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
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
            device=device,
            seed=args.seed,
            steps=args.steps,
            guidance_scale=args.guidance,
            prior_guidance_scale=args.prior_guidance,
            prior_steps=args.prior_steps,
            height=args.height,
            width=args.width,
            max_batch=args.max_batch,
        )
    except ValueError as exc:  # PriorFolderError is a ValueError
        print(f"hierdiff generate: error: {exc}", file=sys.stderr)
        return 2
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
