# SPDX-License-Identifier: GPL-3.0-or-later
"""Prompt Set Cluster's encoding time, and what padding prompts of different lengths costs sampling.

Runs ComfyUI in this process (CPU) with the testkit's tiny model; each measurement runs in a fresh
subprocess, so that peak memory and one-off costs belong to it alone. Prints:

- the node's wall time for ``--distinct`` distinct prompts (``../shared/prompts/prompt_templates.txt``
  beside the checkout, or ``--prompts FILE``, else generated distinct prompts) and for ``--copies``
  copies of one prompt;
- for a set mixing prompts of 1 to 7 CLIP chunks (77 tokens each), the token length of the PROMPT_TREE's
  conditioning and its size, then Hierarchical KSampler's wall time and the growth of the process's peak
  memory over clustering and sampling, at tau = 0 (every prompt alone) and at a 50 % target saving.

    .venv/bin/python tools/bench_cluster.py [--distinct 2000] [--copies 5000] [--prompts FILE]
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_PROMPTS = REPO.parent / "shared" / "prompts" / "prompt_templates.txt"
CHUNK_TOKENS = 75  # one CLIP chunk: 77 tokens with its start and end tokens
WORDS = ("red", "blue", "green", "cat", "dog", "tree", "house", "river", "sky", "stone", "light", "night")
MIXED_CHUNKS = range(1, 8)
MIXED_PER_LENGTH = 2
MB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", type=int, default=2000, help="distinct prompts to encode")
    parser.add_argument("--copies", type=int, default=5000, help="copies of one prompt to encode")
    parser.add_argument("--prompts", type=Path, default=None, help="file of distinct prompts, one per line")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps of the mixed-length runs")
    parser.add_argument("--latent", type=int, default=8, help="latent side of the mixed-length runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def distinct_prompts(n: int, path: Path | None) -> tuple[str, list[str]]:
    """(where they came from, ``n`` distinct prompts): the file's first n, else generated ones."""
    path = path if path is not None else SHARED_PROMPTS if SHARED_PROMPTS.is_file() else None
    if path is not None:
        lines = list(dict.fromkeys(line.strip() for line in path.read_text("utf-8").splitlines()))
        prompts = [line for line in lines if line][:n]
        if len(prompts) == n:
            return str(path), prompts
    generated = [f"a {WORDS[i % 12]} {WORDS[i // 12 % 12]} painting, study number {i}" for i in range(n)]
    return "generated", generated


def chunked_prompt(chunks: int, variant: int) -> str:
    """A prompt of single-token words that ComfyUI's CLIP tokenizer splits into ``chunks`` chunks, its
    first chunk unlike any other prompt's: a prompt's pooled output is its first chunk's, and prompts of
    equal pooled outputs would share even at tau = 0."""
    count = CHUNK_TOKENS * (chunks - 1) + 20
    head = [WORDS[chunks], WORDS[variant]]
    return " ".join(head + [WORDS[i % len(WORDS)] for i in range(count - len(head))])


def start_host() -> tuple[dict[str, type], Any, Any]:
    """ComfyUI in this process on the CPU: (node classes, tiny MODEL, tiny CLIP)."""
    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-bench-cluster-"))
    prepare_comfy_imports(base)
    host = InProcessHost.start(base)
    import comfy.utils

    from testkit.tiny_model import load_tiny_model

    comfy.utils.PROGRESS_BAR_ENABLED = False
    model, clip, _ = load_tiny_model()
    return host.node_classes, model, clip


def cluster(classes: dict[str, type], clip: Any, prompts: list[str]) -> Any:
    return classes["HierPromptSetCluster"].execute([clip], prompts, ["ward"], ["clip_pooled"]).args[0]


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_cluster(prompts: list[str]) -> dict:
    classes, _, clip = start_host()
    cluster(classes, clip, prompts[:2])  # warm-up: first-call costs
    start, cpu = time.perf_counter(), time.process_time()
    prompt_set = cluster(classes, clip, prompts)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "rows": prompt_set.conditioning[0][0].shape[0]}


def child_mixed(options: argparse.Namespace, budget: str, value: float) -> dict:
    classes, model, clip = start_host()
    import torch

    import nodes as comfy_nodes  # ComfyUI's: only once start_host has set its arguments

    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, options.latent, options.latent)}

    def sample(prompt_set: Any, steps: int, budget: str, value: float) -> None:
        classes["HierKSampler"].execute(
            model, prompt_set, negative, latent, 0, steps, 7.0, "euler", "normal", 1.0, budget, value, 64,
            "shared", "mean",
        )  # fmt: skip

    sample(cluster(classes, clip, ["a red cat", "a blue dog"]), 2, "tau", 0.0)  # warm-up: allocator, kernels
    baseline = peak_bytes()
    prompts = [chunked_prompt(k, v) for k in MIXED_CHUNKS for v in range(MIXED_PER_LENGTH)]
    lengths = sorted({len(clip.tokenize(p)["l"]) * 77 for p in prompts})
    prompt_set = cluster(classes, clip, prompts)
    tokens = prompt_set.conditioning[0][0]
    start, cpu = time.perf_counter(), time.process_time()
    sample(prompt_set, options.steps, budget, value)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "prompts": len(prompts),
        "lengths": lengths,
        "stored_tokens": int(tokens.shape[1]),
        "conditioning_bytes": tokens.numel() * tokens.element_size(),
        "seconds": seconds,
        "cpu": cpu,
        "growth_bytes": max(peak_bytes() - baseline, 0),
    }


def run_child(options: argparse.Namespace, child: str) -> dict:
    command = [sys.executable, __file__, "--child", child, "--distinct", str(options.distinct)]
    command += ["--copies", str(options.copies), "--steps", str(options.steps)]
    command += ["--latent", str(options.latent)]
    if options.prompts is not None:
        command += ["--prompts", str(options.prompts)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child {child!r} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_as_child(options: argparse.Namespace) -> dict:
    if options.child == "distinct":
        return child_cluster(distinct_prompts(options.distinct, options.prompts)[1])
    if options.child == "copies":
        return child_cluster(["a red cat sitting on a sofa"] * options.copies)
    if options.child == "mixed-tau0":
        return child_mixed(options, "tau", 0.0)
    if options.child == "mixed-saving":
        return child_mixed(options, "target_saving", 0.5)
    raise SystemExit(f"unknown child {options.child!r}")


def main() -> None:
    options = parse_args()
    if options.child:
        print(json.dumps(run_as_child(options)))
        return
    source, _ = distinct_prompts(options.distinct, options.prompts)
    print(f"checkout: {REPO}; CPU, tiny SD1.5-architecture model")
    print(f"{'Prompt Set Cluster over':>44} {'wall s':>8} {'CPU s':>8}")
    distinct = run_child(options, "distinct")
    label = f"{options.distinct} distinct prompts ({Path(source).name})"
    print(f"{label:>44} {distinct['seconds']:>8.2f} {distinct['cpu']:>8.2f}", flush=True)
    copies = run_child(options, "copies")
    label = f"{options.copies} copies of one prompt"
    print(f"{label:>44} {copies['seconds']:>8.2f} {copies['cpu']:>8.2f}", flush=True)
    print(
        f"Hierarchical KSampler, prompts of {MIXED_CHUNKS[0]} to {MIXED_CHUNKS[-1]} chunks "
        f"({options.steps} steps, euler, cfg 7, {options.latent * 8} px):"
    )
    header = f"{'budget':>18} {'token lengths':>26} {'stored':>7} {'cond MB':>8} {'wall s':>8} {'CPU s':>8}"
    print(f"{header} {'peak MB':>8}")
    for child, label in (("mixed-tau0", "tau 0"), ("mixed-saving", "target saving 0.5")):
        run = run_child(options, child)
        lengths = f"{len(run['lengths'])} from {run['lengths'][0]} to {run['lengths'][-1]}"
        print(
            f"{label:>18} {lengths:>26} {run['stored_tokens']:>7} {run['conditioning_bytes'] / MB:>8.1f} "
            f"{run['seconds']:>8.2f} {run['cpu']:>8.2f} {run['growth_bytes'] / MB:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
