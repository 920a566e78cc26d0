# SPDX-License-Identifier: GPL-3.0-or-later
"""Generate sets of images on a real headless ComfyUI server with the embedded model.

    .venv/bin/python tools/demo.py [--model trained|random] [--prompt-set NAME ... | --prompts FILE]

Starts ComfyUI (``.comfyui/main.py --cpu``) on a free 127.0.0.1 port with this pack and the testkit in
its custom_nodes, then queues the basic example workflow ("Image set, shared steps" in example_workflows/:
Prompt Set Cluster -> Hierarchical KSampler -> VAEDecode -> SaveImage, plus the Hierarchy Preview) once per
prompt set, waits for each through /history, writes the plan (plan.json) and the table of model
evaluations and savings (savings.txt) beside the images and the dendrogram picture, prints where they
all are, and stops the server.

The embedded default model is the small text-to-image model this project trained on synthetic scenes
of coloured shapes (hierdiff_lab/weights), loaded through the testkit's loader like any checkpoint of
the tiny SD1.5-architecture family; the default runs its `shapes_variations` and `shapes_grid` sets.
The paper's `demo` set (big cats) is outside its vocabulary: its text encoder knows only the shapes
captions' words (the other token rows are zero), so to it those prompts differ only in length and the
plan shares nearly every step. ``--model random`` uses the random-weight test model, whose text
encoder tells every word apart (its pictures are noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from hierdiff_core.prompts import embedded_prompt_set, read_prompts
from hierdiff_core.report import savings_table
from hierdiff_core.schedule import Plan
from hierdiff_dev import REPO_ROOT, ComfyHostError, examples
from hierdiff_dev.server import ComfyServer

# the demo's --prompt-set name -> the embedded prompt set's name (hierdiff_core.prompts)
DEMO_PROMPT_SETS = {
    "shapes_variations": "variations",
    "shapes_grid": "attribute_grid",
    "shapes_wording": "wording",
    "demo": "demo",
    "style_variations": "style_variations",
}
TRAINED_CHECKPOINT = REPO_ROOT / "hierdiff_lab" / "weights" / "shapes-t2i.safetensors"
# What each model is made for: the trained one at its training size and a moderate guidance.
# The trained model learnt guidance against the empty prompt (its caption dropout) and knows no word of
# the example's negative prompt.
MODEL_SETTINGS = {
    "trained": {"size": 64, "cfg": 4.0, "negative": ""},
    "random": {"size": 128, "cfg": 7.0, "negative": examples.NEGATIVE},
}


def demo_prompts(path: Path | None, prompt_set: str) -> list[str]:
    """One prompt per line, blank lines ignored: from ``path``, or else an embedded prompt set."""
    try:
        return read_prompts(path) if path is not None else embedded_prompt_set(DEMO_PROMPT_SETS[prompt_set])
    except ValueError as exc:
        raise SystemExit(f"demo: {exc}") from None


def run_set(server: ComfyServer, name: str, prompts: list[str], args: argparse.Namespace) -> None:
    """Queue the basic example for one prompt set, write plan.json and savings.txt, print the paths."""
    settings = MODEL_SETTINGS[args.model]
    checkpoint = str(TRAINED_CHECKPOINT) if args.model == "trained" else ""
    (basic,) = [w for w in examples.workflows() if w.name == "hierdiff_basic"]
    tiny = examples.on_tiny_model(
        basic,
        steps=args.steps,
        size=settings["size"],
        prompts="\n".join(prompts),
        checkpoint=checkpoint,
        cfg=settings["cfg"],
    )
    overrides = {
        "sampler": {"seed": args.seed, "budget_value": args.target_saving, "tree_from": args.tree_from},
        "negative": {"text": settings["negative"]},
        "save": {"filename_prefix": f"hierdiff/{name}/image"},
        "preview": {"filename_prefix": f"hierdiff/{name}/plan"},
    }
    tiny.nodes = [
        dataclasses.replace(n, widgets={**n.widgets, **overrides[n.key]}) if n.key in overrides else n
        for n in tiny.nodes
    ]
    started = time.monotonic()
    entry = server.run(examples.build_api(tiny, server.object_info()), timeout=600)
    seconds = time.monotonic() - started

    ids = {node.key: str(index + 1) for index, node in enumerate(tiny.nodes)}
    preview = entry["outputs"][ids["preview"]]
    schedule = Plan.from_json(preview["hierdiff_plan"][0])
    results = server.base_dir / "output" / "hierdiff" / name
    results.mkdir(parents=True, exist_ok=True)
    (results / "plan.json").write_text(schedule.to_json(indent=1) + "\n", encoding="utf-8")
    table = savings_table(schedule)
    (results / "savings.txt").write_text(table + "\n", encoding="utf-8")

    images = [server.output_path(image) for image in entry["outputs"][ids["save"]]["images"]]
    (picture,) = preview["images"]
    print(f"\n== {name}: {len(prompts)} images, {args.steps} steps each, {args.model} model, {seconds:.1f} s")
    print(f"demo: {preview['hierdiff_summary'][0]}")
    print(table)
    print(f"images:     {len(images)} PNGs in {images[0].parent}")
    print(f"dendrogram: {server.output_path(picture)}")
    print(f"plan:       {results / 'plan.json'}")
    print(f"savings:    {results / 'savings.txt'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODEL_SETTINGS), default="trained")
    parser.add_argument(
        "--prompt-set",
        choices=list(DEMO_PROMPT_SETS),
        nargs="+",
        default=["shapes_variations", "shapes_grid"],
        help="embedded prompt sets, one workflow run each",
    )
    parser.add_argument(
        "--tree-from",
        choices=("first_step", "prompt_tree"),
        default="first_step",
        help="the sampler's tree source: first_step keeps the shapes' layout (docs/fidelity.md)",
    )
    parser.add_argument("--prompts", type=Path, help="a text file, one prompt per line (instead of the sets)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target-saving", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "demo", help="ComfyUI base directory")
    args = parser.parse_args(argv)

    sets = (
        {args.prompts.stem: demo_prompts(args.prompts, "")}
        if args.prompts
        else {name: demo_prompts(None, name) for name in args.prompt_set}
    )
    server = ComfyServer(args.out.resolve())
    print(f"demo: starting ComfyUI on {server.url} (base directory {server.base_dir})")
    try:
        server.start()
        failures = server.import_failures()
        if failures:
            raise ComfyHostError("a custom node pack failed to import:\n" + "\n".join(failures))
        for name, prompts in sets.items():
            run_set(server, name, prompts, args)
    except ComfyHostError as error:
        print(f"demo: {error}\nserver log: {server.log_path}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
