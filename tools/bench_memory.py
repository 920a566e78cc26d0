# SPDX-License-Identifier: GPL-3.0-or-later
"""Peak memory of a Hierarchical KSampler run, in units of one latent tensor of all N prompts.

The sampler holds one latent row per prompt; the engine must not copy those N rows per step. Each N
runs in a fresh subprocess (CPU, tiny model, euler, cfg 7). The prompts are 4 distinct
texts repeated, so that model evaluations (at most 4 groups per step) cost little and the N-row
tensors dominate memory. Prints, per N: the size of one N-row latent tensor, the growth of peak RSS
during sampling, and their ratio. ComfyUI's euler needs a handful of N-row tensors per step (x, the
denoised rows, the noise, the derivative), so a ratio near that count, constant in N, means no
per-step copies.

    .venv/bin/python tools/bench_memory.py [--sizes 500,1000,2000] [--latent 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = ["a red cat on a sofa", "a blue dog in the snow", "a green tree in a field", "an old castle"]


def measure(n: int, side: int, steps: int) -> dict:
    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-mem-"))
    prepare_comfy_imports(base)
    host = InProcessHost.start(base)
    import comfy.utils
    import torch

    import nodes as comfy_nodes
    from testkit.tiny_model import load_tiny_model

    comfy.utils.PROGRESS_BAR_ENABLED = False
    model, clip, _ = load_tiny_model()
    classes = host.node_classes
    prompts = (PROMPTS * (n // len(PROMPTS) + 1))[:n]
    prompt_set = classes["HierPromptSetCluster"].execute(
        [clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]
    )
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, side, side)}
    arguments = (
        model,
        prompt_set.args[0],
        negative,
        latent,
        0,
        10,
        7.0,
        "euler",
        "normal",
        1.0,
        "tau",
        0.5,
        64,
        "shared",
        "mean",
    )
    classes["HierKSampler"].execute(*arguments[:5], 2, *arguments[6:])  # warm-up: allocator pools, kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    samples = classes["HierKSampler"].execute(*arguments).args[0]["samples"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = samples.numel() * samples.element_size()
    return {"n": n, "rows_bytes": rows, "growth_bytes": max(peak - before, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000")
    parser.add_argument("--latent", type=int, default=32, help="latent side (pixels / 8)")
    parser.add_argument("--steps", default="10,40", help="step counts: per-step copies would grow with them")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(measure(options.child, options.latent, int(options.steps))))
        return
    print(f"tiny SD1.5-architecture model, {options.latent * 8} px, euler, CPU")
    print(f"{'N':>6} {'steps':>5} {'N-row latent MB':>16} {'peak growth MB':>15} {'ratio':>6}")
    runs = [(int(n), int(k)) for n in options.sizes.split(",") for k in options.steps.split(",")]
    for n, steps in runs:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(n),
                "--latent",
                str(options.latent),
                "--steps",
                str(steps),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        mb = 1024 * 1024
        print(
            f"{n:>6} {steps:>5} {result['rows_bytes'] / mb:>16.1f} {result['growth_bytes'] / mb:>15.1f} "
            f"{result['growth_bytes'] / result['rows_bytes']:>6.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
