#!/usr/bin/env python
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fidelity benchmark: what does sharing steps cost in prompt adherence, on the trained shapes model?

For each prompt set (by default the held-out sets of ``hierdiff_lab.held_out``, never used while
developing; the development sets of ``hierdiff_core/prompt_sets`` by name) and each target saving,
through ComfyUI in this process (``hierdiff_dev.host``), on the CPU:

- hierarchical: Prompt Set Cluster + Hierarchical KSampler at that target saving;
- independent, full steps: the same node at tau = 0, i.e. stock KSampler per prompt with the same seed
  (every prompt starts from the seed's batch-1 noise, as the hierarchical run does);
- independent, fewer steps: tau = 0 with round(K * (1 - saving)) steps, the same compute per image.

Per prompt the rule-based checker counts satisfied caption attributes (of 5); the table gives mean
attribute accuracy, full acceptance (all 5), win/tie/loss of hierarchical against each baseline, the
per-image RMS latent and mean absolute pixel difference of both cheaper runs from the full-step
independent picture (how far from "the same picture" each saving lands), and diversity within the set
(mean pairwise absolute pixel difference). The plot has two panels against average model evaluations
per image (conditional rows; guidance doubles both sides alike): accuracy, and pixel difference.

    .venv/bin/python tools/bench_fidelity.py [--savings 0.25 0.5 0.75 0.8] [--seeds 0 1] [--out DIR]
        [--sampler dpmpp_2m --scheduler karras] [--sets variations attribute_grid wording]
        [--mix medoid]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = ("hierarchical, prompt tree", "hierarchical, first-step tree", "independent, fewer steps")
METRICS = ("attribute accuracy", "mean |pixel difference| from the full-step picture")


@dataclasses.dataclass
class Scores:
    """Per-prompt results of one run: attributes satisfied (N,), accepted (N,), evaluations per image."""

    satisfied: np.ndarray
    evaluations_per_image: float

    @property
    def accuracy(self) -> float:
        return float(self.satisfied.mean() / 5)

    @property
    def acceptance(self) -> float:
        return float((self.satisfied == 5).mean())


def score(images: np.ndarray, prompts: list[str], evaluations: int) -> Scores:
    from hierdiff_lab import checker

    satisfied = np.array(
        [sum(checker.check(image, text).values()) for image, text in zip(images, prompts, strict=True)]
    )
    return Scores(satisfied, evaluations / len(prompts))


def win_tie_loss(a: Scores, b: Scores) -> str:
    return (
        f"{int((a.satisfied > b.satisfied).sum())}/{int((a.satisfied == b.satisfied).sum())}/"
        f"{int((a.satisfied < b.satisfied).sum())}"
    )


def difference(a, b) -> tuple[float, float]:
    """(mean per-image RMS latent difference, mean absolute pixel difference 0..255) of two runs over
    the same prompts (``comfy_generation.Generation``)."""
    latent = float(((a.latents - b.latents) ** 2).mean(dim=(1, 2, 3)).sqrt().mean())
    return latent, float(np.abs(a.images.astype(float) - b.images).mean())


def diversity(images: np.ndarray) -> float:
    """Mean absolute pixel difference over all pairs of pictures in the set (0..255)."""
    pairs = itertools.combinations(range(len(images)), 2)
    return float(np.mean([np.abs(images[i].astype(float) - images[j]).mean() for i, j in pairs]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sets",
        nargs="+",
        default=None,
        help="prompt sets by name (default: the shapes domain's held-out sets, never used while developing)",
    )
    parser.add_argument("--savings", nargs="+", type=float, default=[0.25, 0.5, 0.75, 0.8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--sampler", default="euler", help="a ComfyUI sampler name")
    parser.add_argument("--scheduler", default="normal", help="a ComfyUI scheduler name")
    parser.add_argument("--mix", choices=("mean", "medoid"), default="mean",
                        help="what a group is conditioned on (mean: as published)")  # fmt: skip
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the trained shapes model")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "fidelity")
    args = parser.parse_args(argv)
    if args.sets is None:
        from hierdiff_lab.domains import DOMAINS

        args.sets = list(DOMAINS["shapes"].sets("held_out"))
    return args


@dataclasses.dataclass
class Bench:
    """The model on the in-process host, and what the runs accumulate: the per-run table (header
    first) and the curves, metric -> method -> target saving -> [(evaluations per image, value)], one
    point per set and seed."""

    args: argparse.Namespace
    node_classes: dict[str, type]
    model: Any
    clip: Any
    vae: Any
    checkpoint: Path
    started: float
    rows: list[str]
    curves: dict[str, dict[str, dict[float, list[tuple[float, float]]]]]

    def generate(
        self, prompts: list[str], settings: Any, budget: str, value: float, tree_from: str = "prompt_tree"
    ) -> tuple[Any, Scores]:
        """One Hierarchical KSampler run (``comfy_generation.Generation``) and its checker scores."""
        from hierdiff_lab import comfy_generation

        generation = comfy_generation.hierarchical(
            self.node_classes, self.model, self.clip, self.vae, prompts, settings, budget, value, tree_from,
            conditioning_mix=self.args.mix,
        )  # fmt: skip
        return generation, score(generation.images, prompts, generation.model_evaluations)

    def add_point(self, method: str, saving: float, scores: Scores, pixel_diff: float) -> None:
        self.curves[METRICS[0]][method].setdefault(saving, []).append(
            (scores.evaluations_per_image, scores.accuracy)
        )
        self.curves[METRICS[1]][method].setdefault(saving, []).append(
            (scores.evaluations_per_image, pixel_diff)
        )


@dataclasses.dataclass
class Reference:
    """One prompt set and seed: its sampling settings and the full-step independent pictures."""

    set_name: str
    seed: int
    prompts: list[str]
    settings: Any  # comfy_generation.SamplingSettings
    full: Any  # comfy_generation.Generation
    scores: Scores
    diversity: float


def start_bench(args: argparse.Namespace) -> Bench:
    """Start ComfyUI in this process, load the checkpoint through the testkit, create ``--out``."""
    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-fidelity-"))
    prepare_comfy_imports(base)
    host = InProcessHost.start(base)
    from hierdiff_lab import comfy_generation
    from testkit.tiny_model import load_tiny_model

    checkpoint = args.checkpoint or comfy_generation.TRAINED_CHECKPOINT
    model, clip, vae = load_tiny_model(str(checkpoint))
    args.out.mkdir(parents=True, exist_ok=True)
    header = (
        "| set | seed | target saving | method | evals/image | accuracy | all 5 | W/T/L vs full "
        "| W/T/L vs fewer | latent RMS diff | pixel diff | diversity (full) |"
    )
    return Bench(
        args=args,
        node_classes=host.node_classes,
        model=model,
        clip=clip,
        vae=vae,
        checkpoint=checkpoint,
        started=time.time(),
        rows=[header, "|" + "---|" * (header.count("|") - 1)],
        curves={metric: {method: {} for method in METHODS} for metric in METRICS},
    )


def run_reference(bench: Bench, set_name: str, seed: int) -> Reference:
    """The full-step independent run of one set and seed; sharing nothing is a point of every curve."""
    from hierdiff_lab import comfy_generation, train
    from hierdiff_lab.domains import DOMAINS

    args = bench.args
    shapes = DOMAINS["shapes"]
    sets = {**shapes.sets("development"), **shapes.sets("held_out")}
    if set_name not in sets:
        raise SystemExit(f"--sets: no prompt set {set_name!r}; known: {', '.join(sets)}")
    prompts = sets[set_name]
    settings = comfy_generation.SamplingSettings(
        seed=seed, steps=args.steps, cfg=args.cfg, sampler_name=args.sampler, scheduler=args.scheduler
    )
    full, full_scores = bench.generate(prompts, settings, "tau", 0.0)
    for method in METHODS:
        bench.add_point(method, 0.0, full_scores, 0.0)
    train.save_grid(full.images, args.out / f"{set_name}-seed{seed}-independent.png", columns=8)
    return Reference(set_name, seed, prompts, settings, full, full_scores, diversity(full.images))


def compare_at_saving(bench: Bench, reference: Reference, saving: float) -> None:
    """Both hierarchical methods and the fewer-steps baseline at one target saving: table rows (printed
    as they come), curve points, and the hierarchical picture grids."""
    from hierdiff_lab import train

    prompts, settings = reference.prompts, reference.settings
    fewer_steps = max(1, round(bench.args.steps * (1 - saving)))
    fewer, fewer_scores = bench.generate(
        prompts, dataclasses.replace(settings, steps=fewer_steps), "tau", 0.0
    )
    results = {
        METHODS[0]: bench.generate(prompts, settings, "target_saving", saving),
        METHODS[1]: bench.generate(prompts, settings, "target_saving", saving, tree_from="first_step"),
        METHODS[2]: (fewer, fewer_scores),
    }
    for method, (generation, scores) in results.items():
        latent_diff, pixel_diff = difference(generation, reference.full)
        bench.add_point(method, saving, scores, pixel_diff)
        steps_note = f" ({fewer_steps} steps)" if method == METHODS[2] else ""
        versus_fewer = "" if method == METHODS[2] else win_tie_loss(scores, fewer_scores)
        bench.rows.append(
            f"| {reference.set_name} | {reference.seed} | {saving:.2f} | {method} "
            f"| {scores.evaluations_per_image:.2f}"
            f"{steps_note} | {scores.accuracy:.3f} | {scores.acceptance:.2f} "
            f"| {win_tie_loss(scores, reference.scores)} | {versus_fewer} | {latent_diff:.3f} "
            f"| {pixel_diff:.1f} | {diversity(generation.images):.1f} ({reference.diversity:.1f}) |"
        )
        print(bench.rows[-1], f"  [{time.time() - bench.started:.0f}s]", flush=True)
    stem = f"{reference.set_name}-seed{reference.seed}-saving{saving:.2f}"
    train.save_grid(results[METHODS[0]][0].images, bench.args.out / f"{stem}.png", columns=8)
    train.save_grid(results[METHODS[1]][0].images, bench.args.out / f"{stem}-first-step.png", columns=8)


def mean_curves(bench: Bench) -> dict[str, dict[str, dict[float, tuple[float, float]]]]:
    """The curves' points averaged over sets and seeds."""
    return {
        metric: {
            method: {key: tuple(np.mean(runs, axis=0)) for key, runs in by_key.items()}
            for method, by_key in by_method.items()
        }
        for metric, by_method in bench.curves.items()
    }


def summary_table(bench: Bench, means: dict) -> list[str]:
    """Markdown rows: the full-step independent run, then each saving and method."""
    args = bench.args
    summary = [
        "| target saving | method | evals/image | accuracy | pixel diff from full |",
        "|---|---|---|---|---|",
        f"| 0 | independent, {args.steps} steps | {means[METRICS[0]][METHODS[2]][0.0][0]:.2f} "
        f"| {means[METRICS[0]][METHODS[2]][0.0][1]:.3f} | 0 |",
    ]
    for saving in args.savings:
        for method in METHODS:
            evaluations, accuracy = means[METRICS[0]][method][saving]
            summary.append(
                f"| {saving:.2f} | {method} | {evaluations:.2f} | {accuracy:.3f} "
                f"| {means[METRICS[1]][method][saving][1]:.1f} |"
            )
    return summary


def write_results(bench: Bench, means: dict, summary: list[str]) -> None:
    """The plot (accuracy_vs_evaluations.png) and both tables (fidelity_table.md) in ``--out``."""
    from hierdiff_lab import charts

    args = bench.args
    panels = [
        (metric, {method: list(by_key.values()) for method, by_key in by_method.items()})
        for metric, by_method in means.items()
    ]
    title = (
        f"{bench.checkpoint.name}, {args.sampler}/{args.scheduler} {args.steps} steps, "
        f"{args.mix} conditioning, mean over sets and seeds"
    )
    charts.plot(panels, args.out / "accuracy_vs_evaluations.png", title)
    text = "\n".join(summary) + "\n\n" + "\n".join(bench.rows) + "\n"
    (args.out / "fidelity_table.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = start_bench(args)
    for set_name, seed in itertools.product(args.sets, args.seeds):
        reference = run_reference(bench, set_name, seed)
        for saving in args.savings:
            compare_at_saving(bench, reference, saving)
    means = mean_curves(bench)
    summary = summary_table(bench, means)
    write_results(bench, means, summary)
    print("\n" + "\n".join(summary))
    print(
        f"\nwrote {args.out}/fidelity_table.md, accuracy_vs_evaluations.png and picture grids "
        f"({time.time() - bench.started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
