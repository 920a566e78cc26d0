# SPDX-License-Identifier: GPL-3.0-or-later
"""Wall-clock of Hierarchical KSampler against stock KSampler over the same N prompts.

Runs ComfyUI in this process (CPU unless --cuda) with the testkit's tiny model. Stock sampling is
batched as ComfyUI users batch: KSampler over ``--batch`` prompts at a time, one conditioning row
per prompt, every prompt from the seed's noise. The hierarchical run evaluates at most ``--batch``
groups per model call. Prompt encoding is done once, outside both timings. Prints one row per N:
evaluation saving (from the model's own call counter), wall-clock saving, their ratio, the saving in
process CPU time (which other programs sharing the machine cannot distort), and the wall seconds each
side spends outside model calls ("out": sampler arithmetic, conditioning, and for the hierarchical side
all of its bookkeeping). Where the ratio falls below 1 with equal "out" columns, the cause is the model
itself: a call on a few groups costs more per row than a call on a full batch.

    .venv/bin/python tools/bench_sampling.py [--sizes 8,32,128,512] [--prompts FILE] [--cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

# The paper's large set when ../shared is beside the checkout, else its embedded style_variations set.
SHARED_PROMPTS = REPO.parent / "shared" / "prompts" / "prompt_templates.txt"
EMBEDDED_PROMPTS = "style_variations"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,32,128,512")
    parser.add_argument("--prompts", type=Path, default=None, help="prompt file (default: the paper's sets)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--latent", type=int, default=16, help="latent side (pixels / 8)")
    parser.add_argument("--target-saving", type=float, default=0.5)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--cuda", action="store_true", help="run on the GPU (default: CPU)")
    return parser.parse_args()


def bench_prompts(path: Path | None) -> tuple[str, list[str]]:
    """(where the prompts came from, the prompts): ``path``, else the default sets above."""
    from hierdiff_core.prompts import embedded_prompt_set, read_prompts

    try:
        if path is not None:
            return str(path), read_prompts(path)
        if SHARED_PROMPTS.is_file():
            return str(SHARED_PROMPTS), read_prompts(SHARED_PROMPTS)
        return f"embedded {EMBEDDED_PROMPTS}", embedded_prompt_set(EMBEDDED_PROMPTS)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


@dataclasses.dataclass
class Bench:
    """What both sides of the comparison share: the tiny model (wrapped by the evaluation counter), the
    node classes, the empty negative, the batch-1 latent, the device and the counter's totals."""

    options: argparse.Namespace
    classes: dict[str, type]
    model: Any
    clip: Any
    negative: list
    latent: dict[str, torch.Tensor]
    device: torch.device
    counted: dict[str, float]

    def prompt_set(self, prompts: list[str]) -> Any:
        """The Prompt Set Cluster node's PROMPT_TREE of ``prompts``."""
        tree = self.classes["HierPromptSetCluster"].execute(
            [self.clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]
        )
        return tree.args[0]

    def hierarchical(self, prompt_set: Any, seed: int, budget: str, value: float) -> Any:
        """One Hierarchical KSampler run over ``prompt_set``; returns the node's output."""
        options = self.options
        return self.classes["HierKSampler"].execute(
            self.model,
            prompt_set,
            self.negative,
            self.latent,
            seed,
            options.steps,
            options.cfg,
            options.sampler,
            "normal",
            1.0,
            budget,
            value,
            options.batch,
            "shared",
            "mean",
        )


@dataclasses.dataclass(frozen=True)
class Timing:
    """One timed run: wall and CPU seconds, model rows, wall seconds outside model calls."""

    wall: float
    cpu: float
    rows: int
    outside: float


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def evaluation_counter(counted: dict[str, float], device: torch.device) -> Callable:
    """A UNet function wrapper adding each call's rows and seconds to ``counted``.

    A closure, not a method: ComfyUI deep-copies model options when it clones the model, and a bound
    method would be copied with its object, so the counts would land in the copy.
    """

    def counter(apply_model, call):
        counted["rows"] += call["input"].shape[0]
        start = time.perf_counter()
        out = apply_model(call["input"], call["timestep"], **call["c"])
        synchronise(device)
        counted["seconds"] += time.perf_counter() - start
        return out

    return counter


def start_bench(options: argparse.Namespace) -> Bench:
    """Start ComfyUI in this process and load the tiny model behind the evaluation counter."""
    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-bench-"))
    prepare_comfy_imports(base, cpu=not options.cuda)
    host = InProcessHost.start(base, cpu=not options.cuda)
    import comfy.model_management
    import comfy.utils

    import nodes as comfy_nodes
    from testkit.tiny_model import load_tiny_model

    comfy.utils.PROGRESS_BAR_ENABLED = False
    model, clip, _ = load_tiny_model()
    device = comfy.model_management.get_torch_device()
    counted = {"rows": 0, "seconds": 0.0}
    model = model.clone()
    model.set_model_unet_function_wrapper(evaluation_counter(counted, device))
    return Bench(
        options=options,
        classes=host.node_classes,
        model=model,
        clip=clip,
        negative=comfy_nodes.CLIPTextEncode().encode(clip, "")[0],
        latent={"samples": torch.zeros(1, 4, options.latent, options.latent)},
        device=device,
        counted=counted,
    )


def print_settings(bench: Bench, source: str, all_prompts: list[str]) -> None:
    options, side = bench.options, bench.options.latent
    print(
        f"prompts: {source} ({len(all_prompts)}); device: {bench.device}; tiny SD1.5-architecture model, "
        f"{side * 8}x{side * 8} px, {options.steps} steps, cfg {options.cfg}, {options.sampler}, "
        f"batch {options.batch}, target saving {options.target_saving}"
    )
    print(
        f"{'N':>5} {'stock s':>9} {'hier s':>9} {'eval saving':>12} {'wall saving':>12} {'ratio':>6} "
        f"{'cpu saving':>11} {'stock out':>9} {'hier out':>9}"
    )


def check_exactness(bench: Bench, check: list[str]) -> None:
    """Print how far, at tau = 0, each prompt is from stock KSampler run alone on this device."""
    import nodes as comfy_nodes

    options = bench.options
    rows = bench.hierarchical(bench.prompt_set(check), 5, "tau", 0.0).args[0]["samples"]
    worst = 0.0
    for i, text in enumerate(check):
        positive = comfy_nodes.CLIPTextEncode().encode(bench.clip, text)[0]
        reference = comfy_nodes.common_ksampler(
            bench.model, 5, options.steps, options.cfg, options.sampler, "normal", positive, bench.negative,
            bench.latent,
        )[0]["samples"]  # fmt: skip
        worst = max(worst, ((rows[i : i + 1] - reference).abs().max() / reference.abs().max()).item())
    print(f"tau = 0 against stock KSampler per prompt on {bench.device}: max relative difference {worst:.2e}")


def stock_batches(bench: Bench, prompt_set: Any, n: int) -> None:
    """Stock sampling as users batch it: ``--batch`` prompts per call, every one from the seed's noise."""
    import comfy.sample

    options, latent = bench.options, bench.latent
    cond, extras = prompt_set.conditioning[0]
    noise = comfy.sample.prepare_noise(latent["samples"], 0)
    for first in range(0, n, options.batch):
        rows = slice(first, min(first + options.batch, n))
        row_extras = {k: v[rows] if torch.is_tensor(v) and v.shape[0] == n else v for k, v in extras.items()}
        size = rows.stop - rows.start
        comfy.sample.sample(
            bench.model,
            noise.expand(size, -1, -1, -1),
            options.steps,
            options.cfg,
            options.sampler,
            "normal",
            [[cond[rows], row_extras]],
            bench.negative,
            latent["samples"].expand(size, -1, -1, -1),
            seed=0,
        )


def timed(bench: Bench, run: Callable[[], Any]) -> Timing:
    """The second of two runs: the first pays one-off costs such as CUDA kernel loading for each new
    batch size, on both sides alike."""
    run()
    synchronise(bench.device)
    bench.counted.update(rows=0, seconds=0.0)
    start, cpu_start = time.perf_counter(), time.process_time()
    run()
    synchronise(bench.device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return Timing(wall, cpu, bench.counted["rows"], wall - bench.counted["seconds"])


def compare(bench: Bench, prompts: list[str]) -> tuple[Timing, Timing]:
    """Timings of stock and hierarchical sampling over ``prompts``."""
    prompt_set = bench.prompt_set(prompts)
    stock = timed(bench, lambda: stock_batches(bench, prompt_set, len(prompts)))
    saving = bench.options.target_saving
    hierarchical = timed(bench, lambda: bench.hierarchical(prompt_set, 0, "target_saving", saving))
    return stock, hierarchical


def print_row(n: int, stock: Timing, hier: Timing) -> None:
    eval_saving = 1 - hier.rows / stock.rows
    wall_saving = 1 - hier.wall / stock.wall
    ratio = wall_saving / eval_saving if eval_saving > 0 else float("nan")
    print(
        f"{n:>5} {stock.wall:>9.2f} {hier.wall:>9.2f} {eval_saving:>11.1%} {wall_saving:>11.1%} "
        f"{ratio:>6.2f} {1 - hier.cpu / stock.cpu:>10.1%} {stock.outside:>9.2f} {hier.outside:>9.2f}",
        flush=True,
    )


def main() -> None:
    options = parse_args()
    bench = start_bench(options)
    source, all_prompts = bench_prompts(options.prompts)
    sizes = [int(s) for s in options.sizes.split(",")]
    print_settings(bench, source, all_prompts)
    # Exactness on this device first: at tau = 0 each prompt must equal stock KSampler run alone.
    check_exactness(bench, all_prompts[:3])
    for n in sizes:
        print_row(n, *compare(bench, (all_prompts * (n // len(all_prompts) + 1))[:n]))


if __name__ == "__main__":
    main()
