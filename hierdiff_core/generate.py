# SPDX-License-Identifier: GPL-3.0-or-later
"""``hierdiff generate``: one image per prompt with Kandinsky 2.2 through the hierarchical engine.

Output folder::

    OUT/00000.png ...            one image per prompt, in prompt order
    OUT/manifest.jsonl           one JSON line per COMPLETED image: index, prompt, file, seed,
                                 group_path (the prompt's leaf path in the tree), steps_shared
                                 (steps denoised inside a group of two or more prompts), steps
    OUT/.hierdiff-run.json       the run's settings; a restart with other settings is refused
    OUT/.hierdiff-state.pt       checkpoint: prior embeddings and the denoising state after the
                                 last completed step (one latent row per active group)

Resuming. Each image is written to a temporary name, renamed, and only then recorded in the
manifest. A restart skips prompts whose image exists and is recorded, continues denoising from the
checkpoint (the same latents, noise-generator states and group batches, so every remaining image
is bit-identical to an uninterrupted run) and decodes only the missing images, one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .embed import read_prompts

MANIFEST = "manifest.jsonl"
RUN_FILE = ".hierdiff-run.json"
STATE_FILE = ".hierdiff-state.pt"


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def read_manifest(out_dir: Path) -> dict[int, dict]:
    """Completed images recorded in the manifest whose file exists: {prompt index: record}."""
    path = out_dir / MANIFEST
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
        if (out_dir / record["file"]).is_file():
            done[int(record["index"])] = record
    return done


def _atomic_torch_save(obj: object, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_run_settings(out_dir: Path, settings: dict) -> None:
    path = out_dir / RUN_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        differing = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        if differing:
            raise ValueError(
                f"output folder {str(out_dir)!r} holds a run with other settings ({', '.join(differing)} "
                "differ); use another --out or the same settings to resume"
            )
    else:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(settings, indent=1), encoding="utf-8")
        os.replace(tmp, path)


def generate(
    prompts: Sequence[str],
    prior_dir: str | os.PathLike[str],
    decoder_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    steps: int = 40,
    tau: float | None = None,
    target_saving: float | None = None,
    guidance_scale: float = 10.0,
    prior_guidance_scale: float = 4.0,
    prior_steps: int = 25,
    height: int = 512,
    width: int = 512,
    max_batch: int = 16,
    device: str = "cpu",
    on_step: Callable[[int], None] | None = None,
    on_image: Callable[[int], None] | None = None,
) -> dict:
    """Generate (or finish generating) one image per prompt into ``out_dir``.

    ``tau`` or ``target_saving`` sets the budget (neither: tau = 0, ordinary sampling).
    ``on_step(step)`` and ``on_image(index)`` are called after each completed denoising step and
    each written image. Returns a summary: counts, tau, model evaluations and saving.
    """
    import torch

    from .pipelines import (
        DenoiseState,
        check_prior_matches_decoder,
        decode_latents,
        denoise_hierarchical,
        load_decoder,
    )
    from .prior import embed_prompts_with_prior, load_prior, prior_tree
    from .schedule import plan

    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to generate")
    if tau is not None and target_saving is not None:
        raise ValueError("give either tau or target_saving, not both")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "prompts": prompts,
        "prior": str(Path(prior_dir).resolve()),
        "decoder": str(Path(decoder_dir).resolve()),
        "seed": int(seed),
        "steps": int(steps),
        "tau": tau,
        "target_saving": target_saving,
        "guidance_scale": float(guidance_scale),
        "prior_guidance_scale": float(prior_guidance_scale),
        "prior_steps": int(prior_steps),
        "height": int(height),
        "width": int(width),
        "max_batch": int(max_batch),
    }
    _check_run_settings(out, settings)
    done = read_manifest(out)
    pending = [i for i in range(len(prompts)) if i not in done]
    summary = {"prompts": len(prompts), "already_done": len(done), "written": 0}
    if not pending:
        return summary

    prior = load_prior(prior_dir, device=device)
    decoder = load_decoder(decoder_dir, device=device)
    check_prior_matches_decoder(prior, decoder)
    state_path = out / STATE_FILE
    saved = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.is_file() else None
    if saved is None:
        embeds = embed_prompts_with_prior(prior, prompts, seed, prior_guidance_scale, prior_steps)
        negative = prior.negative_embedding().float().cpu()
    else:
        embeds, negative = saved["embeds"], saved["negative"]
    tree = prior_tree(embeds, prompts)
    schedule = plan(
        tree,
        steps,
        tau=tau if tau is not None or target_saving is not None else 0.0,
        target_saving=target_saving,
    )

    state = (
        None if saved is None or saved["denoise"] is None else DenoiseState.expand(saved["denoise"], schedule)
    )

    def checkpoint(current: DenoiseState) -> None:
        _atomic_torch_save(
            {"embeds": embeds, "negative": negative, "denoise": current.compact(schedule)}, state_path
        )
        if on_step is not None:
            on_step(current.step)

    if saved is None:
        _atomic_torch_save({"embeds": embeds, "negative": negative, "denoise": None}, state_path)
    if state is None or state.step < steps - 1:
        latents, _ = denoise_hierarchical(
            decoder,
            schedule,
            embeds,
            negative,
            seed,
            guidance_scale,
            height,
            width,
            max_batch,
            state=state,
            on_step=checkpoint,
        )
    else:
        latents = state.latents

    first_steps = schedule.first_steps
    with (out / MANIFEST).open("a", encoding="utf-8") as manifest:
        for index in pending:
            image = decode_latents(decoder, latents[index : index + 1])[0]
            name = image_name(index)
            tmp = out / f".{name}.tmp"
            image.save(tmp, format="PNG")
            os.replace(tmp, out / name)
            record = {
                "index": index,
                "prompt": prompts[index],
                "file": name,
                "seed": int(seed),
                "group_path": tree.path(index),
                "steps_shared": int(first_steps[index]),
                "steps": int(steps),
            }
            manifest.write(json.dumps(record) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())
            summary["written"] += 1
            if on_image is not None:
                on_image(index)
    summary.update(
        tau=float(schedule.tau),
        model_evaluations=int(schedule.model_evaluations),
        independent_evaluations=int(schedule.independent_evaluations),
        saving=float(schedule.saving),
    )
    return summary


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
    parser.add_argument("--guidance", type=float, default=10.0, help="decoder guidance scale (published: 10)")
    parser.add_argument(
        "--prior-guidance", type=float, default=4.0, help="prior guidance scale (published: 4)"
    )
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--max-batch", type=int, default=16, help="groups per UNet batch")
    parser.add_argument("--device", default="auto", help="torch device; auto: cuda when available, else cpu")


GENERATE_HELP = "generate one image per prompt with Kandinsky 2.2 (prior + decoder), sharing steps; resumable"


def run_generate(args: argparse.Namespace) -> int:
    """Handler for ``hierdiff generate``; one-line errors and exit code 2 on bad input."""
    from .prior import PriorFolderError

    if args.prior is None and args.model is None or args.decoder is None and args.model is None:
        print("hierdiff generate: error: give --model DIR or both --prior and --decoder", file=sys.stderr)
        return 2
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    prior_dir = args.prior or os.path.join(args.model, "prior")
    decoder_dir = args.decoder or os.path.join(args.model, "decoder")
    try:
        prompts = read_prompts(args.prompts)
        summary = generate(
            prompts,
            prior_dir,
            decoder_dir,
            args.out,
            seed=args.seed,
            steps=args.steps,
            tau=args.tau,
            target_saving=args.target_saving,
            guidance_scale=args.guidance,
            prior_guidance_scale=args.prior_guidance,
            prior_steps=args.prior_steps,
            height=args.height,
            width=args.width,
            max_batch=args.max_batch,
            device=device,
        )
    except (ValueError, PriorFolderError) as exc:
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
    """``python -m hierdiff_core.generate PROMPTS.txt ...``: the generate subcommand on its own."""
    parser = argparse.ArgumentParser(prog="hierdiff generate", description=GENERATE_HELP)
    add_generate_arguments(parser)
    return run_generate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
