#!/usr/bin/env python
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which default budget keeps the pictures? Candidate node defaults measured on held-out shapes sets.

The sampler nodes' default budget (``target_saving`` at ``budget_value``, ``tree_from`` optional and
``prompt_tree`` by default) is chosen from this, on the trained shapes model
(``hierdiff_lab/weights/shapes-t2i.safetensors``) through ComfyUI in this process, on the CPU:

1. **Candidates against independent sampling.** Prompt sets in the shapes domain that were not used to
   develop the method (made here, deterministic; none of their prompts is in the embedded shapes sets),
   each run independently (the node at tau = 0: stock KSampler per prompt) and at every candidate
   (tree, target saving); the checker scores each attribute of each picture.
2. **When an attribute is decided.** Pairs of prompts that differ in one attribute only share their
   first s steps (mean conditioning, as a group does) and then go on apart; for each attribute, the
   fraction of pictures that still get their own value of it, against s. What sharing can take from a
   picture is what is decided before its group splits.

    OMP_NUM_THREADS=1 nice .venv/bin/python -P tools/bench_budget_defaults.py [--seeds 0 1]
        [--prompt-tree S ...] [--first-step S ...] [--skip-split-steps] [--out out/budget_defaults]

Writes ``defaults.md`` (both tables) into ``--out`` and prints them. One thread per process: on a shared
2-core machine torch's own two threads only contend.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Target savings tried with each tree (the reference, target saving 0, is tau = 0: independent sampling).
PROMPT_TREE_SAVINGS = (0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5)
FIRST_STEP_SAVINGS = (0.1, 0.25, 0.35, 0.5)
SPLIT_STEPS = (2, 4, 6, 8, 10, 12, 14)
PAIRS_PER_ATTRIBUTE = 6


def attribute_pairs(seed: int = 2027) -> dict[str, list[tuple[str, str]]]:
    """For each attribute, PAIRS_PER_ATTRIBUTE pairs of canonical captions of random scenes that differ
    in that attribute only."""
    from hierdiff_lab import synthetic
    from hierdiff_lab.synthetic import canonical_caption

    rng = np.random.default_rng(seed)
    values = {
        "shape": synthetic.SHAPES,
        "colour": tuple(synthetic.SHAPE_COLOURS),
        "size": synthetic.SIZES,
        "position": tuple(synthetic.POSITION_CELL),
        "background": tuple(synthetic.BACKGROUNDS),
    }
    pairs: dict[str, list[tuple[str, str]]] = {}
    for attribute in synthetic.ATTRIBUTES:
        pairs[attribute] = []
        for _ in range(PAIRS_PER_ATTRIBUTE):
            scene = synthetic.random_scene(rng)
            others = [v for v in values[attribute] if v != getattr(scene, attribute)]
            other = dataclasses.replace(scene, **{attribute: others[rng.integers(len(others))]})
            pairs[attribute].append((canonical_caption(scene), canonical_caption(other)))
    return pairs


@dataclasses.dataclass
class Run:
    """One generation's checker results: per prompt, attribute -> satisfied; its plan's saving."""

    checks: list[dict[str, bool]]
    saving: float
    evaluations_per_image: float


def start(args: argparse.Namespace):
    """ComfyUI in this process with the pack; the trained model (model, clip, vae) and the node classes."""
    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-budget-defaults-"))
    prepare_comfy_imports(base)
    host = InProcessHost.start(base)
    from hierdiff_lab import comfy_generation
    from testkit.tiny_model import load_tiny_model

    return host.node_classes, load_tiny_model(str(comfy_generation.TRAINED_CHECKPOINT))


def generate(node_classes, models, prompts: list[str], settings, budget: str, value: float, tree_from: str):
    from hierdiff_lab import checker, comfy_generation

    model, clip, vae = models
    generation = comfy_generation.hierarchical(
        node_classes, model, clip, vae, prompts, settings, budget, value, tree_from
    )
    checks = [checker.check(image, text) for image, text in zip(generation.images, prompts, strict=True)]
    return generation, Run(
        checks, float(generation.plan["saving"]), generation.model_evaluations / len(prompts)
    )


def candidates_table(node_classes, models, args: argparse.Namespace) -> list[str]:
    """Per candidate: saving reached, evaluations per image, mean accuracy and per attribute, all five,
    points against independent; means over the held-out sets and seeds."""
    from hierdiff_lab import comfy_generation, held_out, synthetic

    results: dict[tuple[str, float], list[Run]] = {}
    per_set: dict[tuple[str, float, str], list[float]] = {}
    for (name, prompts), seed in itertools.product(held_out.held_out_sets().items(), args.seeds):
        settings = comfy_generation.SamplingSettings(seed=seed, steps=args.steps, cfg=args.cfg)
        candidates = [("prompt_tree", s) for s in args.prompt_tree] + [
            ("first_step", s) for s in args.first_step
        ]
        for tree_from, saving in (("prompt_tree", 0.0), *candidates):
            budget, value = ("tau", 0.0) if saving == 0 else ("target_saving", saving)
            _, run = generate(node_classes, models, prompts, settings, budget, value, tree_from)
            results.setdefault((tree_from, saving), []).append(run)
            accuracy = np.mean([np.mean(list(c.values())) for c in run.checks])
            per_set.setdefault((tree_from, saving, name), []).append(float(accuracy))
            print(f"[{time.time() - args.started:5.0f}s] {name} seed {seed} {tree_from} {saving}: "
                  f"accuracy {accuracy:.3f}, saving {run.saving:.3f}", flush=True)  # fmt: skip
    names = list(held_out.held_out_sets())
    header = (
        "| tree_from | target saving | saving reached | evals/image | accuracy | points vs independent | "
        + " | ".join(synthetic.ATTRIBUTES)
        + " | all 5 | "
        + " | ".join(names)
        + " |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    reference = None
    for key, runs in results.items():
        checks = [c for run in runs for c in run.checks]
        accuracy = float(np.mean([np.mean(list(c.values())) for c in checks]))
        reference = accuracy if reference is None else reference
        per_attribute = [np.mean([c[a] for c in checks]) for a in synthetic.ATTRIBUTES]
        label = ("independent", "0") if key[1] == 0 else (key[0], f"{key[1]:g}")
        rows.append(
            f"| {label[0]} | {label[1]} | {np.mean([r.saving for r in runs]):.3f} "
            f"| {np.mean([r.evaluations_per_image for r in runs]):.2f} | {accuracy:.3f} "
            f"| {100 * (accuracy - reference):+.1f} | "
            + " | ".join(f"{v:.3f}" for v in per_attribute)
            + f" | {np.mean([all(c.values()) for c in checks]):.3f} | "
            + " | ".join(f"{np.mean(per_set[(*key, n)]):.3f}" for n in names)
            + " |"
        )
    return rows


def split_step_table(node_classes, models, args: argparse.Namespace) -> list[str]:
    """Per attribute: the fraction of pictures that get their own value of it when a pair differing in
    it alone shares its first s steps, for s in SPLIT_STEPS (s = 0: independent)."""
    from hierdiff_lab import comfy_generation, synthetic

    right: dict[tuple[str, int], list[bool]] = {}
    for (attribute, pairs), seed in itertools.product(attribute_pairs().items(), args.seeds):
        settings = comfy_generation.SamplingSettings(seed=seed, steps=args.steps, cfg=args.cfg)
        for pair, split in itertools.product(pairs, (0, *SPLIT_STEPS)):
            # Two prompts sharing s of K steps cost s + 2 (K - s) evaluations: K - s / 2 per image.
            budget, value = ("tau", 0.0) if split == 0 else ("evaluations_per_image", args.steps - split / 2)
            _, run = generate(node_classes, models, list(pair), settings, budget, value, "prompt_tree")
            shared = 2 * args.steps - 2 * run.evaluations_per_image
            if abs(shared - split) > 1e-6:
                raise AssertionError(f"{pair}: the plan shares {shared} steps, not {split}")
            right.setdefault((attribute, split), []).extend(c[attribute] for c in run.checks)
        print(f"[{time.time() - args.started:5.0f}s] split steps of {attribute}, seed {seed}", flush=True)
    header = "| attribute | " + " | ".join(f"s = {s}" for s in (0, *SPLIT_STEPS)) + " |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for attribute in synthetic.ATTRIBUTES:
        cells = [f"{np.mean(right[(attribute, s)]):.2f}" for s in (0, *SPLIT_STEPS)]
        rows.append(f"| {attribute} | " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--prompt-tree", nargs="*", type=float, default=list(PROMPT_TREE_SAVINGS))
    parser.add_argument("--first-step", nargs="*", type=float, default=list(FIRST_STEP_SAVINGS))
    parser.add_argument("--skip-split-steps", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "budget_defaults")
    args = parser.parse_args(argv)
    args.started = time.time()
    node_classes, models = start(args)
    candidates = candidates_table(node_classes, models, args)
    split = [] if args.skip_split_steps else split_step_table(node_classes, models, args)
    text = (
        f"Held-out shapes sets, euler {args.steps} steps, cfg {args.cfg}, seeds {args.seeds}:\n\n"
        + "\n".join(candidates)
        + ("\n\nPairs differing in one attribute, sharing their first s steps:\n\n" if split else "")
        + "\n".join(split)
        + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "defaults.md").write_text(text, encoding="utf-8")
    print("\n" + text + f"\n({time.time() - args.started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
