# SPDX-License-Identifier: GPL-3.0-or-later
"""Generate a set of images on a real headless ComfyUI server with the embedded tiny test model.

    .venv/bin/python tools/demo.py [--prompts FILE | --prompt-set NAME] [--steps K] [--out DIR]

Starts ComfyUI (``.comfyui/main.py --cpu``) on a free 127.0.0.1 port with this pack and the testkit in
its custom_nodes, queues the basic example workflow (example_workflows/hierdiff_basic.json: Prompt Set
Cluster -> Hierarchical KSampler -> VAEDecode -> SaveImage, plus the Hierarchy Preview) on the tiny
model with the prompt set, waits for it through /history, writes the plan (plan.json) and the table of
model evaluations and savings (savings.txt) beside the images and the dendrogram picture, prints where
they all are, and stops the server. The tiny model has random weights: its images are noise; the demo
shows the machinery, and the compute it saves, end to end.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from importlib import resources
from pathlib import Path

import make_example_workflows as examples
from comfy_server import REPO_ROOT, ComfyHostError, ComfyServer

from hierdiff_core.report import savings_table
from hierdiff_core.schedule import BranchSchedule

EMBEDDED_PROMPT_SETS = ("demo", "style_variations")


def read_prompts(path: Path | None, prompt_set: str) -> list[str]:
    """One prompt per line, blank lines ignored: from ``path``, or else an embedded prompt set."""
    if path is not None:
        text = path.read_text(encoding="utf-8")
    else:
        text = (resources.files("hierdiff_core") / "prompt_sets" / f"{prompt_set}.txt").read_text(
            encoding="utf-8"
        )
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"demo: no prompts in {path or prompt_set}")
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, help="a text file, one prompt per line")
    parser.add_argument(
        "--prompt-set", choices=EMBEDDED_PROMPT_SETS, default="demo", help="embedded prompt set"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=128, help="image width and height in pixels")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "demo", help="ComfyUI base directory")
    args = parser.parse_args(argv)

    prompts = read_prompts(args.prompts, args.prompt_set)
    server = ComfyServer(args.out.resolve())
    print(f"demo: starting ComfyUI on {server.url} (base directory {server.base_dir})")
    try:
        server.start()
        failures = server.import_failures()
        if failures:
            raise ComfyHostError("a custom node pack failed to import:\n" + "\n".join(failures))
        started = time.monotonic()
        (basic,) = [w for w in examples.workflows() if w.name == "hierdiff_basic"]
        tiny = examples.on_tiny_model(basic, steps=args.steps, size=args.size, prompts="\n".join(prompts))
        tiny.nodes = [
            dataclasses.replace(n, widgets={**n.widgets, "seed": args.seed}) if n.key == "sampler" else n
            for n in tiny.nodes
        ]
        prompt = examples.build_api(tiny, server.object_info())
        entry = server.run(prompt, timeout=600)
        seconds = time.monotonic() - started
    except ComfyHostError as error:
        print(f"demo: {error}\nserver log: {server.log_path}", file=sys.stderr)
        return 1
    finally:
        server.stop()

    ids = {node.key: str(index + 1) for index, node in enumerate(tiny.nodes)}
    preview = entry["outputs"][ids["preview"]]
    schedule = BranchSchedule.from_json(preview["hierdiff_plan"][0])
    results = server.base_dir / "output" / "hierdiff"
    results.mkdir(parents=True, exist_ok=True)
    (results / "plan.json").write_text(schedule.to_json(indent=1) + "\n", encoding="utf-8")
    table = savings_table(schedule)
    (results / "savings.txt").write_text(table + "\n", encoding="utf-8")

    print(f"demo: {len(prompts)} images, {args.steps} steps each, in {seconds:.1f} s")
    print(f"demo: {preview['hierdiff_summary'][0]}")
    print(table)
    print("images:")
    for image in entry["outputs"][ids["save"]]["images"]:
        print(f"  {server.output_path(image)}")
    (picture,) = preview["images"]
    print(f"dendrogram: {server.output_path(picture)}")
    print(f"plan:       {results / 'plan.json'}")
    print(f"savings:    {results / 'savings.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
