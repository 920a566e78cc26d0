#!/usr/bin/env python
"""Benchmark of planning from given embeddings: time and peak memory for 2,000 and 20,000 prompts.

    .venv/bin/python tools/bench_plan.py [--prompts ../shared/prompts/prompt_templates.txt]

Each measurement runs in its own subprocess so that peak memory (ru_maxrss) belongs to that size
alone. "planning" is build_tree (linkage) plus plan(..., target_saving=0.5) (the budget search),
from embeddings already in memory; encoding the prompts is not part of it.

The 2,000 case uses the real sentence embeddings of the prompt_templates set. No real 20,000-prompt
set exists, so the 20,000 case is SYNTHETIC: the 2,000 real embeddings, each repeated 10 times with
seeded Gaussian noise added (a different perturbation per copy). It is measured twice: with the
default path (automatically bucketed above hierdiff_core.tree.DEFAULT_MAX_EXACT prompts) and forced
exact (scipy over the full condensed distance matrix).
Targets (issue 2): 2,000 in < 2 s; 20,000 in < 60 s and < 4 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = ROOT.parent / "shared" / "prompts" / "prompt_templates.txt"
STEPS = 40


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child(npy: str, mode: str) -> None:
    """Measure one planning run and print its figures as one JSON line."""
    from hierdiff_core.schedule import plan
    from hierdiff_core.tree import build_tree

    E = np.load(npy)
    base = _peak_rss_mb()
    kwargs = {"max_exact": len(E)} if mode == "exact" else {}
    t0 = time.perf_counter()
    tree = build_tree(E, **kwargs)
    t1 = time.perf_counter()
    schedule = plan(tree, STEPS, target_saving=0.5)
    t2 = time.perf_counter()
    print(json.dumps({
        "n": len(E), "mode": mode, "exact_tree": tree.exact, "tree_s": t1 - t0, "plan_s": t2 - t1,
        "total_s": t2 - t0, "peak_mb": _peak_rss_mb(), "baseline_mb": base, "tau": schedule.tau,
        "saving": schedule.saving,
    }))


def synthesize(E: np.ndarray, copies: int, seed: int = 0) -> np.ndarray:
    """copies x N rows: every real row repeated with seeded Gaussian noise (0.3 x the per-dim spread)."""
    rng = np.random.default_rng(seed)
    scale = 0.3 * float(E.std(axis=0).mean())
    tiled = np.tile(E, (copies, 1)).astype(np.float64)
    return (tiled + rng.normal(scale=scale, size=tiled.shape)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="2,000-prompt file to embed")
    parser.add_argument("--embeddings", help="use this (N, D) .npy instead of encoding --prompts")
    parser.add_argument("--skip-exact-20k", action="store_true", help="skip the forced-exact 20,000 run")
    parser.add_argument("--child", nargs=2, metavar=("NPY", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from hierdiff_core.embed import encode_prompts
    from hierdiff_core.prompts import read_prompts
    from hierdiff_core.tree import DEFAULT_BUCKET_SIZE, DEFAULT_MAX_EXACT

    if args.embeddings:
        E = np.load(args.embeddings)
        source = f"embeddings from {args.embeddings}"
    else:
        prompts = read_prompts(args.prompts)
        t = time.perf_counter()
        E = encode_prompts(prompts)
        source = f"real sentence embeddings of {args.prompts} (encoded in {time.perf_counter() - t:.1f} s)"
    print(f"2,000 case: {len(E)} {source}")
    print(f"20,000 case: SYNTHETIC, those {len(E)} rows x 10 with seeded Gaussian noise (no real 20k set)")
    print(f"default path: exact up to {DEFAULT_MAX_EXACT:,} prompts, above that buckets of <= "
          f"{DEFAULT_BUCKET_SIZE:,}; {STEPS} steps, budget target_saving=0.5\n")
    runs = [(E, "default")]
    big = synthesize(E, 10)
    runs.append((big, "default"))
    if not args.skip_exact_20k:
        runs.append((big, "exact"))
    header = (f"{'prompts':>8}  {'path':<9} {'tree':>9} {'plan':>8} {'total':>9} {'peak RSS':>10}  "
              f"{'saving':>7}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (array, mode) in enumerate(runs):
            npy = Path(tmp) / f"E{i}.npy"
            np.save(npy, array)
            done = subprocess.run([sys.executable, __file__, "--child", str(npy), mode],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{len(array):>8}  {mode:<9} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            path = "exact" if r["exact_tree"] else "bucketed"
            print(f"{r['n']:>8,}  {path:<9} {r['tree_s']:>8.2f}s {r['plan_s']:>7.3f}s {r['total_s']:>8.2f}s "
                  f"{r['peak_mb']:>8.0f}MB  {100 * r['saving']:>6.1f}%")
    print("\npeak RSS is the whole child process (Python, numpy, scipy and the embeddings included).")


if __name__ == "__main__":
    main()
