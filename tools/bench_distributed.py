# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark of the Ray runner: one prompt set on 1 and 2 workers, and the partition of 20,000 prompts.

Part 1 (``--sizes``, default 512 prompts): the testkit's tiny SD pipeline with a widened UNet (32/64
channels, as tools/bench_diffusers.py) and DDIM, ``--steps`` steps, guidance 7.5, target saving 0.5, run
by :func:`hierdiff_diffusers.distributed.run_distributed` on a local Ray instance with W workers (one
CPU slot and one torch thread each): wall seconds per phase, evaluations planned and measured (a hook
on each worker's real UNet), and whether the images equal the 1-worker run's.

Part 2 (``--simulate``, default 20,000 prompts): the partition alone (no model), for 8, 64 and 512
workers: cut step, tasks, the serial share (evaluations before the cut), the imbalance of the largest
task and of the most loaded worker, the speed-up the partition allows (cut by the k x W rule and by
:func:`~hierdiff_core.partition.best_cut`), and the bytes that cross the
object store for SD 1.5 at 512 px in half precision. Embeddings: the paper's prompt_templates.txt
(../shared) or the embedded style_variations, each prompt numbered into copies, embedded by hashed
character trigrams (cheap, deterministic; no encoder needed).

    .venv/bin/python -P tools/bench_distributed.py                 # both parts
    .venv/bin/python -P tools/bench_distributed.py --sizes 128 --simulate 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_PROMPTS = REPO.parent / "shared" / "prompts" / "prompt_templates.txt"

# SD 1.5 at 512 x 512 in float16: what one prompt's conditioning and one latent row weigh.
SD15_CONDITIONING_ROW = 2 * 77 * 768 * 2  # prompt and negative prompt token states
SD15_LATENT_ROW = 4 * 64 * 64 * 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512", help="prompt counts for part 1, comma separated ('' skips)")
    parser.add_argument("--workers", default="1,2", help="worker counts for part 1")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--simulate", type=int, default=20_000, help="prompts for part 2 (0 skips)")
    parser.add_argument("--sim-workers", default="8,64,512")
    parser.add_argument("--savings", default="0.5,0.75,0.9", help="target savings planned in part 2")
    parser.add_argument("--balance", type=int, default=4)
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args()


def bench_prompts(n: int) -> list[str]:
    """n distinct prompts: prompt_templates (or style_variations), numbered into copies past its end."""
    from hierdiff_core.prompts import embedded_prompt_set, read_prompts

    shared = SHARED_PROMPTS.is_file()
    base = read_prompts(SHARED_PROMPTS) if shared else embedded_prompt_set("style_variations")
    return [base[i % len(base)] + ("" if i < len(base) else f", variant {i // len(base)}") for i in range(n)]


def trigram_embeddings(prompts: list[str], width: int = 512) -> np.ndarray:
    """(N, width) hashed character-trigram counts, L2-normalised: a cheap text embedding."""
    rows = np.zeros((len(prompts), width), dtype=np.float64)
    for i, prompt in enumerate(prompts):
        text = f"  {prompt.lower()} "
        for j in range(len(text) - 2):
            rows[i, zlib.crc32(text[j : j + 3].encode()) % width] += 1.0
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def part1(sizes: list[int], workers: list[int], steps: int, balance: int) -> list[dict]:
    from diffusers import DDIMScheduler, DiffusionPipeline
    from PIL import Image

    from hierdiff_core.schedule import Budget
    from hierdiff_diffusers.distributed import run_distributed
    from testkit.tiny_pipelines import build_tiny_sd

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_sd(Path(tmp) / "sd", unet_channels=(32, 64))
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        pipe.save_pretrained(folder)
        for n in sizes:
            prompts = bench_prompts(n)
            first: list[np.ndarray] | None = None
            for w in workers:
                out = Path(tmp) / f"out-{n}-{w}"
                start = time.perf_counter()
                result = run_distributed(folder, prompts, Budget("target_saving", 0.5), out=out, workers=w,
                                         steps=steps, seed=0, balance=balance)  # fmt: skip
                wall = time.perf_counter() - start
                images = [np.asarray(Image.open(out / f"{i:05d}.png")) for i in range(n)]
                same = None if first is None else all(map(np.array_equal, first, images))
                first = first if first is not None else images
                row = {
                    "prompts": n, "workers": w, "wall_s": round(wall, 2),
                    **{f"{k}_s": round(v, 2) for k, v in result.timings.items()},
                    "cut_step": result.partition.cut_step, "tasks": result.partition.tasks,
                    "planned": result.plan.model_evaluations, "measured_rows": result.denoiser_rows,
                    "independent": result.plan.independent_evaluations,
                    "same_images_as_1_worker": same,
                }  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)
    return results


def part2(n: int, workers: list[int], balance: int, savings: list[float], steps: int = 40) -> list[dict]:
    from hierdiff_core.partition import best_cut, partition
    from hierdiff_core.schedule import plan
    from hierdiff_core.tree import build_tree

    prompts = bench_prompts(n)
    start = time.perf_counter()
    tree = build_tree(trigram_embeddings(prompts), method="ward", metric="cosine")
    print(f"# {n} prompts: tree {time.perf_counter() - start:.1f} s (exact={tree.exact})", flush=True)
    results = []
    for saving in savings:
        schedule = plan(tree, steps, target_saving=saving)
        print(f"# {steps} steps, target saving {saving}: tau {schedule.tau:.4g}, "
              f"{schedule.model_evaluations} evaluations, groups at step 0: "
              f"{schedule.evaluations_per_step[0]}", flush=True)  # fmt: skip
        for w in workers:
            for k, rule in ((balance, "first"), (balance, "best")):
                p = partition(schedule, w, k, cut_step=best_cut(schedule, w, k) if rule == "best" else None)
                # The driver puts each task's conditioning rows once, and all rows once more for the
                # top part when there is one.
                conditioning = n * SD15_CONDITIONING_ROW * (2 if p.cut_step > 0 else 1)
                row = {
                    "prompts": n, "target_saving": saving, "workers": w, "rule": rule, **p.summary(),
                    "conditioning_bytes": conditioning,
                    "trunk_bytes": p.trunk_bytes(SD15_LATENT_ROW, stochastic=True),
                }  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)
    return results


def main() -> None:
    args = parse_args()
    found: dict[str, list[dict]] = {}
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if sizes:
        found["runs"] = part1(sizes, [int(w) for w in args.workers.split(",")], args.steps, args.balance)
    if args.simulate:
        found["partition"] = part2(args.simulate, [int(w) for w in args.sim_workers.split(",")], args.balance,
                                   [float(s) for s in args.savings.split(",")])  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
