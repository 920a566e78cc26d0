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
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests" / "comfy"))

DEFAULT_PROMPTS = [
    REPO.parent / "shared" / "prompts" / "prompt_templates.txt",
    REPO / "hierdiff_core" / "prompt_sets" / "style_variations.txt",
]


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


def read_prompts(path: Path | None) -> tuple[Path, list[str]]:
    candidates = [path] if path else DEFAULT_PROMPTS
    for candidate in candidates:
        if candidate.is_file():
            lines = candidate.read_text(encoding="utf-8").splitlines()
            return candidate, [line.strip() for line in lines if line.strip()]
    raise SystemExit(f"no prompt file found among {[str(c) for c in candidates]}")


def main() -> None:
    options = parse_args()
    from host import InProcessHost, prepare_comfy_imports, tiny_model_module

    base = Path(tempfile.mkdtemp(prefix="hierdiff-bench-"))
    prepare_comfy_imports(base, cpu=not options.cuda)
    host = InProcessHost.start(base, cpu=not options.cuda)
    import comfy.model_management
    import comfy.sample
    import comfy.utils

    import nodes as comfy_nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    model, clip, _ = tiny_model_module().load_tiny_model()

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    counted = {"rows": 0, "seconds": 0.0}

    def counter(apply_model, call):
        counted["rows"] += call["input"].shape[0]
        start = time.perf_counter()
        out = apply_model(call["input"], call["timestep"], **call["c"])
        synchronise()
        counted["seconds"] += time.perf_counter() - start
        return out

    model = model.clone()
    model.set_model_unet_function_wrapper(counter)
    source, all_prompts = read_prompts(options.prompts)
    sizes = [int(s) for s in options.sizes.split(",")]
    classes = host.node_classes
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    side = options.latent
    latent = {"samples": torch.zeros(1, 4, side, side)}
    device = comfy.model_management.get_torch_device()
    print(
        f"prompts: {source} ({len(all_prompts)}); device: {device}; tiny SD1.5-architecture model, "
        f"{side * 8}x{side * 8} px, {options.steps} steps, cfg {options.cfg}, {options.sampler}, "
        f"batch {options.batch}, target saving {options.target_saving}"
    )
    print(
        f"{'N':>5} {'stock s':>9} {'hier s':>9} {'eval saving':>12} {'wall saving':>12} {'ratio':>6} "
        f"{'cpu saving':>11} {'stock out':>9} {'hier out':>9}"
    )

    def hierarchical_run(prompt_set, seed: int, budget: str, value: float):
        return classes["HierKSampler"].execute(
            model,
            prompt_set,
            negative,
            latent,
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

    # Exactness on this device first: at tau = 0 each prompt must equal stock KSampler run alone.
    check = all_prompts[:3]
    check_tree = classes["HierPromptSetCluster"].execute(
        [clip], ["\n".join(check)], ["ward"], ["clip_pooled"]
    )
    rows = hierarchical_run(check_tree.args[0], 5, "tau", 0.0).args[0]["samples"]
    worst = 0.0
    for i, text in enumerate(check):
        positive = comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
        reference = comfy_nodes.common_ksampler(
            model, 5, options.steps, options.cfg, options.sampler, "normal", positive, negative, latent
        )[0]["samples"]
        worst = max(worst, ((rows[i : i + 1] - reference).abs().max() / reference.abs().max()).item())
    print(f"tau = 0 against stock KSampler per prompt on {device}: max relative difference {worst:.2e}")

    for n in sizes:
        prompts = (all_prompts * (n // len(all_prompts) + 1))[:n]
        tree = classes["HierPromptSetCluster"].execute(
            [clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]
        )
        prompt_set = tree.args[0]

        def stock(prompt_set=prompt_set, n=n) -> None:
            cond, extras = prompt_set.conditioning[0]
            noise = comfy.sample.prepare_noise(latent["samples"], 0)
            for first in range(0, n, options.batch):
                rows = slice(first, min(first + options.batch, n))
                row_extras = {
                    k: v[rows] if torch.is_tensor(v) and v.shape[0] == n else v for k, v in extras.items()
                }
                size = rows.stop - rows.start
                comfy.sample.sample(
                    model,
                    noise.expand(size, -1, -1, -1),
                    options.steps,
                    options.cfg,
                    options.sampler,
                    "normal",
                    [[cond[rows], row_extras]],
                    negative,
                    latent["samples"].expand(size, -1, -1, -1),
                    seed=0,
                )

        def hierarchical(prompt_set=prompt_set) -> None:
            hierarchical_run(prompt_set, 0, "target_saving", options.target_saving)

        def timed(run) -> tuple[float, float, int, float]:
            """(wall s, CPU s, model rows, wall s outside model calls) of a second run: the first pays
            one-off costs such as CUDA kernel loading for each new batch size, on both sides alike."""
            run()
            synchronise()
            counted.update(rows=0, seconds=0.0)
            start, cpu_start = time.perf_counter(), time.process_time()
            run()
            synchronise()
            wall = time.perf_counter() - start
            return wall, time.process_time() - cpu_start, counted["rows"], wall - counted["seconds"]

        stock_seconds, stock_cpu, stock_rows, stock_outside = timed(stock)
        hier_seconds, hier_cpu, hier_rows, hier_outside = timed(hierarchical)
        eval_saving = 1 - hier_rows / stock_rows
        wall_saving = 1 - hier_seconds / stock_seconds
        ratio = wall_saving / eval_saving if eval_saving > 0 else float("nan")
        print(
            f"{n:>5} {stock_seconds:>9.2f} {hier_seconds:>9.2f} {eval_saving:>11.1%} {wall_saving:>11.1%} "
            f"{ratio:>6.2f} {1 - hier_cpu / stock_cpu:>10.1%} {stock_outside:>9.2f} {hier_outside:>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
