#!/usr/bin/env python
# SPDX-License-Identifier: GPL-3.0-or-later
"""When each attribute is decided: the checker's reading of the model's x0 prediction, step by step.

For every prompt of a domain's prompt sets, stock ComfyUI sampling (KSampler's noise for the seed)
records the decoded x0 prediction after each step; the domain's checker reads every one. The table
gives, per step and attribute, the fraction of pictures whose reading already equals the final
picture's reading: an attribute decided early reaches 1.0 after a few steps, a detail decided late
only near the end. Sharing the first steps of a run can only cost what is not yet decided.

    OMP_NUM_THREADS=1 .venv/bin/python -P tools/bench_trajectory.py --domain shapes --seeds 0 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def settled(readings: list[list[dict]], attributes: tuple[str, ...]) -> np.ndarray:
    """readings[step][picture] -> (steps, attributes): fraction of pictures whose reading of that
    attribute at that step equals the last step's."""
    final = readings[-1]
    return np.array(
        [
            [np.mean([r[a] == f[a] for r, f in zip(step, final, strict=True)]) for a in attributes]
            for step in readings
        ]
    )


def table(fractions: np.ndarray, attributes: tuple[str, ...], pictures: int) -> str:
    header = "| step | " + " | ".join(attributes) + " |"
    lines = [header, "|" + "---|" * (len(attributes) + 1)]
    lines += [f"| {i + 1} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for i, row in enumerate(fractions)]
    return "\n".join(lines) + f"\n\n({pictures} pictures; 1.00: every reading already equals the final one)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="shapes")
    parser.add_argument("--sets", choices=("held_out", "development", "confirmation"), default="held_out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--sampler", default="euler:normal", help="name:scheduler")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the domain's trained model")
    parser.add_argument("--out", type=Path, default=None, help="default: out/trajectory-DOMAIN")
    args = parser.parse_args(argv)
    started = time.time()

    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-trajectory-"))
    prepare_comfy_imports(base)
    InProcessHost.start(base)
    from hierdiff_lab import comfy_generation, domains
    from testkit.tiny_model import load_tiny_model

    domain = domains.DOMAINS[args.domain]
    checkpoint = args.checkpoint or domain.checkpoint
    if not Path(checkpoint).is_file():
        parser.error(f"no trained model for the {domain.name} domain at {checkpoint} (train it: "
                     f"python -m hierdiff_lab.train --domain {domain.name})")  # fmt: skip
    model, clip, vae = load_tiny_model(str(checkpoint))
    try:
        sets = domain.sets(args.sets)
    except ValueError as error:
        parser.error(f"--sets: {error}")
    name, scheduler = args.sampler.split(":")
    readings: list[list[dict]] = [[] for _ in range(args.steps)]
    for prompts in sets.values():
        for seed in args.seeds:
            settings = comfy_generation.SamplingSettings(
                seed=seed, steps=args.steps, sampler_name=name, scheduler=scheduler,
                width=domain.resolution, height=domain.resolution,
            )  # fmt: skip
            pictures = comfy_generation.x0_trajectory(model, clip, vae, prompts, settings)
            for step, images in enumerate(pictures):
                readings[step] += [domain.read(image) for image in images]
    fractions = settled(readings, domain.attributes)
    text = (
        f"{domain.name}, {args.sets} sets ({', '.join(sets)}), seeds {args.seeds}, {args.sampler}, "
        f"{args.steps} steps, cfg 4: fraction of pictures whose x0 prediction after each step reads as "
        f"the final picture\n\n" + table(fractions, domain.attributes, len(readings[0]))
    )
    out = args.out or REPO / "out" / f"trajectory-{domain.name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "trajectory.md").write_text(text, encoding="utf-8")
    print(text + f"({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
