#!/usr/bin/env python
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the first-step tree sees: distances between first-step predictions, by the attribute that differs.

For every pair of prompts in a domain's prompt sets whose captions differ in exactly one attribute, the
Euclidean distance between their first-step x0 predictions (one euler step at the first sigma from the
seed's batch-1 noise, cfg 4: what ``nodes.guider.first_step_tree`` clusters), divided by the median
distance over all pairs of that set and seed. The mean per attribute says which differences the
first-step tree separates first (largest) and which it lets share longest (smallest).

    .venv/bin/python -P tools/bench_first_step_distances.py --domain shapes --sets held_out
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np


def pair_distances(x0: np.ndarray, parsed: list[dict]) -> dict[str, list[float]]:
    """x0 (N, ...) predictions, parsed captions -> attribute -> distances (over the median) of the pairs
    differing in that attribute alone."""
    flat = x0.reshape(len(x0), -1).astype(np.float64)
    distances = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    median = float(np.median(distances[np.triu_indices(len(flat), 1)]))
    found: dict[str, list[float]] = {}
    for i, j in itertools.combinations(range(len(flat)), 2):
        differ = [a for a in parsed[i].keys() | parsed[j].keys() if parsed[i].get(a) != parsed[j].get(a)]
        if len(differ) == 1:
            found.setdefault(differ[0], []).append(float(distances[i, j]) / median)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="shapes")
    parser.add_argument("--sets", choices=("held_out", "development", "confirmation"), default="held_out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = parser.parse_args(argv)

    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-first-step-"))
    prepare_comfy_imports(base)
    InProcessHost.start(base)
    from hierdiff_lab import comfy_generation, domains
    from testkit.tiny_model import load_tiny_model

    domain = domains.DOMAINS[args.domain]
    model, clip, _ = load_tiny_model(str(domain.checkpoint))
    found: dict[str, list[float]] = {}
    for prompts in domain.sets(args.sets).values():
        parsed = [domain.parse(p) for p in prompts]
        for seed in args.seeds:
            settings = comfy_generation.SamplingSettings(
                seed=seed, width=domain.resolution, height=domain.resolution
            )
            x0 = comfy_generation.first_step_predictions(model, clip, prompts, settings)
            for attribute, values in pair_distances(x0, parsed).items():
                found.setdefault(attribute, []).extend(values)
    print(f"{domain.name}, {args.sets} sets, seeds {args.seeds}: first-step distance / the set's median\n")
    print("| differs only in | pairs | mean distance |\n|---|---:|---:|")
    for attribute, values in sorted(found.items(), key=lambda item: -np.mean(item[1])):
        print(f"| {attribute} | {len(values)} | {np.mean(values):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
