#!/usr/bin/env python
"""Fidelity benchmark: what does sharing steps cost in prompt adherence, on the trained shapes model?

For each synthetic prompt set (``hierdiff_lab/prompt_sets``) and each target saving, through ComfyUI
in this process (the test host's helper), on the CPU:

- hierarchical: Prompt Set Cluster + Hierarchical KSampler at that target saving;
- independent, full steps: the same node at tau = 0, i.e. stock KSampler per prompt with the same seed
  (every prompt starts from the seed's batch-1 noise, as the hierarchical run does);
- independent, fewer steps: tau = 0 with round(K * (1 - saving)) steps, the same compute per image.

Per prompt the rule-based checker counts satisfied caption attributes (of 5); the table gives mean
attribute accuracy, full acceptance (all 5), win/tie/loss of hierarchical against each baseline, the
per-image RMS latent and mean absolute pixel difference from the full-step independent result, and
diversity within the set (mean pairwise absolute pixel difference). The plot is accuracy against
average model evaluations per image (conditional rows; guidance doubles both sides alike).

    .venv/bin/python tools/bench_fidelity.py [--savings 0.25 0.5 0.75] [--seeds 0 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "comfy"))  # the in-process host helper shared with the tests


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


def diversity(images: np.ndarray) -> float:
    """Mean absolute pixel difference over all pairs of pictures in the set (0..255)."""
    pairs = itertools.combinations(range(len(images)), 2)
    return float(np.mean([np.abs(images[i].astype(float) - images[j]).mean() for i, j in pairs]))


def plot(curves: dict[str, list[tuple[float, float]]], path: Path, title: str) -> None:
    """Accuracy against evaluations per image, one polyline per curve; matplotlib if present, else Pillow."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6, 4))
        for name, points in curves.items():
            xs, ys = zip(*sorted(points), strict=True)
            axes.plot(xs, ys, marker="o", label=name)
        axes.set_xlabel("model evaluations per image")
        axes.set_ylabel("attribute accuracy")
        axes.set_title(title)
        axes.legend()
        figure.savefig(path, dpi=120, bbox_inches="tight")
        return
    except ImportError:
        pass
    from PIL import Image, ImageDraw

    width, height, margin = 640, 420, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    all_points = [p for points in curves.values() for p in points]
    x_max = max(x for x, _ in all_points) * 1.05
    y_min = min(0.5, min(y for _, y in all_points) - 0.05)

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            margin + x / x_max * (width - 2 * margin),
            height - margin - (y - y_min) / (1 - y_min) * (height - 2 * margin),
        )

    draw.line([at(0, y_min), at(x_max, y_min)], fill="black")
    draw.line([at(0, y_min), at(0, 1)], fill="black")
    for tick in np.linspace(y_min, 1, 6):
        draw.text((5, at(0, tick)[1] - 6), f"{tick:.2f}", fill="black")
    for tick in np.linspace(0, x_max, 6):
        draw.text((at(tick, y_min)[0] - 8, height - margin + 8), f"{tick:.1f}", fill="black")
    draw.text((width // 2 - 110, height - 25), "model evaluations per image", fill="black")
    draw.text((margin, 15), title + "  (y: attribute accuracy)", fill="black")
    colours = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")
    for index, ((name, points), colour) in enumerate(zip(curves.items(), colours, strict=False)):
        xy = [at(x, y) for x, y in sorted(points)]
        draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        legend_y = height - margin - 20 - 16 * index  # legend in the lower right, one line per curve
        legend_x = width - margin - 190
        draw.line([(legend_x, legend_y + 6), (legend_x + 20, legend_y + 6)], fill=colour, width=2)
        draw.text((legend_x + 25, legend_y), name, fill=colour)
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["variations", "attribute_grid", "wording"])
    parser.add_argument("--savings", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the trained shapes model")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "fidelity")
    args = parser.parse_args(argv)

    from host import InProcessHost, prepare_comfy_imports, tiny_model_module

    base = Path(tempfile.mkdtemp(prefix="hierdiff-fidelity-"))
    prepare_comfy_imports(base)
    host = InProcessHost.start(base)
    from hierdiff_lab import comfy_generation, synthetic, train

    checkpoint = args.checkpoint or comfy_generation.TRAINED_CHECKPOINT
    model, clip, vae = tiny_model_module().load_tiny_model(str(checkpoint))
    args.out.mkdir(parents=True, exist_ok=True)

    header = (
        "| set | seed | target saving | evals/image (hier) | acc hier | acc indep full | acc indep fewer "
        "| accept hier / full / fewer | W/T/L vs full | W/T/L vs fewer | latent RMS diff | pixel diff "
        "| diversity hier / full |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    # curve name -> point key (target saving, or step count) -> (evaluations per image, accuracy) per run
    curves: dict[str, dict[float, list[tuple[float, float]]]] = {
        "hierarchical": {},
        "independent (fewer steps)": {},
    }
    totals: dict[str, list[float]] = {}
    started = time.time()
    for set_name, seed in itertools.product(args.sets, args.seeds):
        prompts = synthetic.PROMPT_SETS[set_name]()
        settings = comfy_generation.SamplingSettings(seed=seed, steps=args.steps, cfg=args.cfg)

        def run(budget: str, value: float, steps: int = args.steps, prompts=prompts, settings=settings):
            generation = comfy_generation.hierarchical(
                host.node_classes,
                model,
                clip,
                vae,
                prompts,
                dataclasses.replace(settings, steps=steps),
                budget,
                value,
            )
            return generation, score(generation.images, prompts, generation.model_evaluations)

        full, full_scores = run("tau", 0.0)
        full_point = (full_scores.evaluations_per_image, full_scores.accuracy)
        for name in curves:  # sharing nothing is a point of both curves
            curves[name].setdefault(0.0, []).append(full_point)
        train.save_grid(full.images, args.out / f"{set_name}-seed{seed}-independent.png", columns=8)
        for saving in args.savings:
            hier, hier_scores = run("target_saving", saving)
            fewer_steps = max(1, round(args.steps * (1 - saving)))
            _, fewer_scores = run("tau", 0.0, steps=fewer_steps)
            curves["hierarchical"].setdefault(saving, []).append(
                (hier_scores.evaluations_per_image, hier_scores.accuracy)
            )
            curves["independent (fewer steps)"].setdefault(saving, []).append(
                (fewer_scores.evaluations_per_image, fewer_scores.accuracy)
            )
            train.save_grid(
                hier.images, args.out / f"{set_name}-seed{seed}-saving{saving:.2f}.png", columns=8
            )
            latent_diff = float(((hier.latents - full.latents) ** 2).mean(dim=(1, 2, 3)).sqrt().mean())
            pixel_diff = float(np.abs(hier.images.astype(float) - full.images).mean())
            row = (
                f"| {set_name} | {seed} | {saving:.2f} | {hier_scores.evaluations_per_image:.1f} "
                f"(fewer: {fewer_steps}) | {hier_scores.accuracy:.3f} | {full_scores.accuracy:.3f} "
                f"| {fewer_scores.accuracy:.3f} | {hier_scores.acceptance:.2f} / "
                f"{full_scores.acceptance:.2f} / {fewer_scores.acceptance:.2f} "
                f"| {win_tie_loss(hier_scores, full_scores)} "
                f"| {win_tie_loss(hier_scores, fewer_scores)} | {latent_diff:.3f} | {pixel_diff:.1f} "
                f"| {diversity(hier.images):.1f} / {diversity(full.images):.1f} |"
            )
            rows.append(row)
            print(row, f"  [{time.time() - started:.0f}s]", flush=True)
            for key, value in (
                ("hier", hier_scores.accuracy),
                ("full", full_scores.accuracy),
                ("fewer", fewer_scores.accuracy),
            ):
                totals.setdefault(f"{saving:.2f}-{key}", []).append(value)

    averaged = {
        name: [tuple(np.mean(runs, axis=0)) for runs in by_key.values()] for name, by_key in curves.items()
    }
    plot(averaged, args.out / "accuracy_vs_evaluations.png", "shapes-t2i, mean over prompt sets")
    table = "\n".join(rows)
    summary = "\n".join(
        f"saving {saving:.2f}: mean accuracy hierarchical {np.mean(totals[f'{saving:.2f}-hier']):.3f}, "
        f"independent full {np.mean(totals[f'{saving:.2f}-full']):.3f}, "
        f"independent fewer steps {np.mean(totals[f'{saving:.2f}-fewer']):.3f}"
        for saving in args.savings
    )
    (args.out / "fidelity_table.md").write_text(table + "\n\n" + summary + "\n", encoding="utf-8")
    print("\n" + table + "\n\n" + summary)
    print(
        f"\nwrote {args.out}/fidelity_table.md, accuracy_vs_evaluations.png and picture grids "
        f"({time.time() - started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
