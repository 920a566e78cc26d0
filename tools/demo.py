# SPDX-License-Identifier: GPL-3.0-or-later
"""Generate a set of images on a real headless ComfyUI server with the embedded tiny test model.

    .venv/bin/python tools/demo.py [--prompts FILE | --prompt-set NAME] [--steps K] [--out DIR]

Starts ComfyUI (``.comfyui/main.py --cpu``) on a free 127.0.0.1 port with this pack and the testkit in
its custom_nodes, queues one workflow for the prompt set (tiny model loader -> CLIPTextEncode ->
KSampler -> VAEDecode -> SaveImage, per prompt), waits for it through /history, prints where the
images are, and stops the server. The tiny model has random weights: its images are noise; the demo
shows the machinery running end to end.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from comfy_server import REPO_ROOT, ComfyHostError, ComfyServer, basic_workflow

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
        workflow = basic_workflow(
            prompts,
            seed=args.seed,
            steps=args.steps,
            width=args.size,
            height=args.size,
            filename_prefix="demo",
        )
        entry = server.run(workflow, timeout=600)
        seconds = time.monotonic() - started
    except ComfyHostError as error:
        print(f"demo: {error}\nserver log: {server.log_path}", file=sys.stderr)
        return 1
    finally:
        server.stop()

    print(f"demo: {len(prompts)} images, {args.steps} steps each, in {seconds:.1f} s")
    for i, prompt in enumerate(prompts):
        for image in entry["outputs"][f"save_{i}"]["images"]:
            print(f"  {server.output_path(image)}  <- {prompt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
