# SPDX-License-Identifier: GPL-3.0-or-later
"""Wall-clock of a diffusers pipeline run hierarchically against the plain pipeline over N prompts.

Builds the testkit's tiny Stable Diffusion pipeline (random weights, a widened UNet so that, as in a
real pipeline, the UNet dominates the cost), saves it and loads it back like a real folder. The plain
pipeline runs as users batch it: ``--batch`` prompts per call, each prompt with its own generator.
The hierarchical run is one :func:`hierdiff_diffusers.hierarchical` call over all N prompts at the
target saving (prompt encoding, tree and plan included in its time). Both decode their images with
the pipeline's VAE. Each side runs once on a few prompts before anything is timed. Prints one row per
N: the evaluation saving (UNet rows counted at the real UNet), wall-clock and process-CPU savings,
the ratio wall saving / evaluation saving, each side's UNet milliseconds per latent row (what a batch
size costs per row), and its wall seconds outside the UNet ("out": text encoding, scheduler, VAE,
and for the hierarchical side the tree, plan and all of the adapter's bookkeeping).

    .venv/bin/python tools/bench_diffusers.py [--sizes 32,64,128] [--steps 20] [--batch 8] [--repeat 1]
                                              [--threads 1] [--cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_PROMPTS = REPO.parent / "shared" / "prompts" / "prompt_templates.txt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64,128")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch", type=int, default=8, help="prompts per plain pipeline call")
    parser.add_argument("--max-batch", type=int, default=64, help="groups per hierarchical UNet batch")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (latents: size / 4)")
    parser.add_argument("--unet", default="32,64", help="the tiny UNet's two block widths")
    parser.add_argument("--target-saving", type=float, default=0.5)
    parser.add_argument("--prompts", type=Path, default=None, help="prompt file (default: the paper's set)")
    parser.add_argument("--repeat", type=int, default=1, help="time each side this often, keep its fastest")
    # One thread by default: the tiny model's kernels gain nothing from more, and on a shared machine
    # OpenMP workers spinning against other processes made each call up to 45x slower (measured).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--cuda", action="store_true")
    return parser.parse_args()


def bench_prompts(path: Path | None, n: int) -> list[str]:
    """n distinct prompts: the given file, the paper's prompt_templates when ../shared is there, else
    the embedded style_variations set (numbered copies past its 100 prompts)."""
    from hierdiff_core.prompts import embedded_prompt_set, read_prompts

    if path is None and SHARED_PROMPTS.is_file():
        path = SHARED_PROMPTS
    base = read_prompts(path) if path is not None else embedded_prompt_set("style_variations")
    return [base[i % len(base)] + ("" if i < len(base) else f", variant {i // len(base)}") for i in range(n)]


class UNetMeter:
    """Latent rows through the real UNet (both guidance halves) and wall seconds inside it, measured by
    forward hooks on the real module."""

    def __init__(self, unet: torch.nn.Module):
        self.rows = 0
        self.seconds = 0.0
        self._started = 0.0
        unet.register_forward_pre_hook(self._enter, with_kwargs=True)
        unet.register_forward_hook(self._leave)

    def reset(self) -> None:
        self.rows, self.seconds = 0, 0.0

    def _enter(self, _module, args, kwargs) -> None:
        self.rows += int((args[0] if args else kwargs["sample"]).shape[0])
        self._started = time.perf_counter()

    def _leave(self, _module, _args, _output) -> None:
        self.seconds += time.perf_counter() - self._started


def timed(run, meter: UNetMeter) -> tuple[float, float, float, int]:
    """(wall s, process CPU s, UNet wall s, UNet rows) of run()."""
    meter.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu, meter.seconds, meter.rows


def fastest(results: list[tuple[float, float, float, int]]) -> tuple[float, float, float, int]:
    """The repetition with the least wall time: programs sharing the machine only ever add time."""
    return min(results, key=lambda result: result[0])


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler
    from diffusers.utils import logging

    from hierdiff_core.schedule import Budget
    from hierdiff_diffusers import hierarchical
    from testkit.tiny_pipelines import build_tiny_sd

    logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.cuda else "cpu"
    widths = tuple(int(w) for w in args.unet.split(","))
    with tempfile.TemporaryDirectory() as folder:
        build_tiny_sd(Path(folder) / "sd", unet_channels=widths)
        pipe = DiffusionPipeline.from_pretrained(Path(folder) / "sd", local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    meter = UNetMeter(pipe.unet)
    common = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "height": args.size,
        "width": args.size,
    }
    budget = Budget("target_saving", args.target_saving)

    def plain(prompts: list[str]) -> None:
        for start in range(0, len(prompts), args.batch):
            chunk = prompts[start : start + args.batch]
            generators = [torch.Generator().manual_seed(start + i) for i in range(len(chunk))]
            pipe(chunk, generator=generators, **common)

    def hier(prompts: list[str]) -> None:
        hierarchical(pipe, prompts, budget, seed=0, max_batch=args.max_batch, **common)

    warm = bench_prompts(args.prompts, 8)
    plain(warm)
    hier(warm)
    print(
        f"tiny SD pipeline, UNet {widths}, {args.size} px, Euler, {args.steps} steps, guidance "
        f"{args.guidance}, plain in batches of {args.batch}, hierarchical max_batch {args.max_batch}, "
        f"target saving {args.target_saving}, {device}, {torch.get_num_threads()} threads"
    )
    print(
        "| N | plain s | hier s | eval saving | wall saving | ratio | CPU saving "
        "| plain UNet ms/row | hier UNet ms/row | plain out s | hier out s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        prompts = bench_prompts(args.prompts, n)
        plain_runs, hier_runs = [], []
        for _ in range(args.repeat):  # interleaved, so both sides meet the same load from other programs
            plain_runs.append(timed(lambda p=prompts: plain(p), meter))
            hier_runs.append(timed(lambda p=prompts: hier(p), meter))
        plain_wall, plain_cpu, plain_unet, plain_rows = fastest(plain_runs)
        hier_wall, hier_cpu, hier_unet, hier_rows = fastest(hier_runs)
        eval_saving = 1.0 - hier_rows / plain_rows
        wall_saving = 1.0 - hier_wall / plain_wall
        cpu_saving = 1.0 - hier_cpu / plain_cpu
        print(
            f"| {n} | {plain_wall:.2f} | {hier_wall:.2f} | {100 * eval_saving:.1f} % "
            f"| {100 * wall_saving:.1f} % | {wall_saving / eval_saving:.2f} | {100 * cpu_saving:.1f} % "
            f"| {1000 * plain_unet / plain_rows:.1f} | {1000 * hier_unet / hier_rows:.1f} "
            f"| {plain_wall - plain_unet:.2f} | {hier_wall - hier_unet:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
