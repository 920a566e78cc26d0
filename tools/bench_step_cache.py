#!/usr/bin/env python
# SPDX-License-Identifier: GPL-3.0-or-later
"""Step caching and sharing together: what ComfyUI's EasyCache adds to hierarchical sampling.

On the trained shapes model (``hierdiff_lab/weights/shapes-t2i.safetensors``), through ComfyUI in this
process, on the CPU, for each held-out prompt set (``hierdiff_lab/held_out.py``, never used while
developing hierdiff) and seed, four runs:

- stock: KSampler over the set as one batch (``comfy_generation.independent_batch``);
- stock + EasyCache: the same with the MODEL through ComfyUI's EasyCache node (its settings below);
- hierdiff: Prompt Set Cluster + Hierarchical KSampler at the target saving;
- hierdiff + EasyCache: the same on the EasyCache MODEL (the sampler runs EasyCache's rule per group).

Rows are counted inside the network (a hook on the UNet's first layer, below every wrapper), so rows a
cache answers are not counted; "evals/image" is rows / (2 N): one conditional and one unconditional row
per evaluation. The checker scores each picture's five attributes.

    OMP_NUM_THREADS=1 .venv/bin/python -P tools/bench_step_cache.py [--seeds 0 1] [--saving 0.5]
        [--reuse-threshold 0.2] [--out out/step_cache]

Writes ``step_cache.md`` into ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = ("stock", "stock + EasyCache", "hierdiff", "hierdiff + EasyCache")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--saving", type=float, default=0.5, help="hierdiff's target saving")
    parser.add_argument("--reuse-threshold", type=float, default=0.2, help="EasyCache's (its default)")
    parser.add_argument("--start-percent", type=float, default=0.15, help="EasyCache's (its default)")
    parser.add_argument("--end-percent", type=float, default=0.95, help="EasyCache's (its default)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "step_cache")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-step-cache-"))
    prepare_comfy_imports(base)
    host = InProcessHost.start(base)
    from hierdiff_dev.expect import network_counting
    from hierdiff_lab import checker, comfy_generation, held_out
    from testkit.tiny_model import load_tiny_model

    model, clip, vae = load_tiny_model(str(comfy_generation.TRAINED_CHECKPOINT))
    # Rows counted in the network's first layer, which EasyCache's clone shares: both MODELs' rows.
    model, rows, _ = network_counting(model)
    easycache = host.node_classes["EasyCache"].execute(
        model, args.reuse_threshold, args.start_percent, args.end_percent, False
    )
    models = {False: model, True: easycache.args[0]}

    lines = [
        "| set | seed | N | method | evals/image | wall s | accuracy | W/T/L vs stock |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    totals: dict[str, list[tuple[float, float, float]]] = {m: [] for m in METHODS}
    for (name, prompts), seed in itertools.product(held_out.held_out_sets().items(), args.seeds):
        settings = comfy_generation.SamplingSettings(seed=seed, steps=args.steps, cfg=args.cfg)
        reference: np.ndarray | None = None
        for method in METHODS:
            cached = method.endswith("EasyCache")
            rows["rows"] = 0
            started = time.perf_counter()
            if method.startswith("stock"):
                generation = comfy_generation.independent_batch(models[cached], clip, vae, prompts, settings)
            else:
                generation = comfy_generation.hierarchical(
                    host.node_classes,
                    models[cached],
                    clip,
                    vae,
                    prompts,
                    settings,
                    "target_saving",
                    args.saving,
                )
            wall = time.perf_counter() - started
            satisfied = np.array(
                [
                    sum(checker.check(image, text).values())
                    for image, text in zip(generation.images, prompts, strict=True)
                ]
            )
            if reference is None:
                reference = satisfied
            wins, ties = int((satisfied > reference).sum()), int((satisfied == reference).sum())
            per_image = rows["rows"] / (2 * len(prompts))
            accuracy = float(satisfied.mean() / 5)
            totals[method].append((per_image, wall, accuracy))
            lines.append(
                f"| {name} | {seed} | {len(prompts)} | {method} | {per_image:.2f} | {wall:.1f} "
                f"| {accuracy:.3f} | {wins}/{ties}/{len(prompts) - wins - ties} |"
            )
            print(lines[-1], flush=True)
    lines += ["", "| method | evals/image | wall s (sum) | accuracy |", "|---|---:|---:|---:|"]
    for method, values in totals.items():
        per_image, wall, accuracy = np.array(values).T
        lines.append(f"| {method} | {per_image.mean():.2f} | {wall.sum():.1f} | {accuracy.mean():.3f} |")
    header = (
        f"Shapes model, {args.steps} steps euler/normal, cfg {args.cfg}, seeds {args.seeds}; hierdiff at "
        f"target saving {args.saving}; EasyCache reuse_threshold {args.reuse_threshold}, "
        f"start {args.start_percent}, "
        f"end {args.end_percent}."
    )
    text = "\n".join([header, "", *lines]) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_cache.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
