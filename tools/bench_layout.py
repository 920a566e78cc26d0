#!/usr/bin/env python
# SPDX-License-Identifier: GPL-3.0-or-later
"""Sharing within layouts against the published method, the spend rule and fewer steps.

For each prompt set, seed, sampler and budget E (model evaluations per image, probe included), through
ComfyUI in this process on a synthetic domain's trained model, four ways to spend E:

- **fewer steps**: independent sampling with E steps;
- **sharing**: the published method, 20 steps shared down to E (spend "sharing");
- **rule**: spend "steps_then_sharing" (fewer steps down to the sampler's minimum, then sharing);
- **within layout**: spend "sharing_within_layout" (a first-step probe, sharing only among prompts whose
  layouts agree, steps cut where that cannot reach E).

Prints mean attribute accuracy per cell, W/T/L of "within layout" against each of the others, the
readings' Vendi score, and (``--distances``) the layout distances of caption pairs differing in one
attribute, from which ``hierdiff_core.layout.LAYOUT_CUT`` was read on the shapes development sets.

    OMP_NUM_THREADS=1 .venv/bin/python -P tools/bench_layout.py --domain shapes --sets held_out
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hierdiff_lab.scoring import win_tie_loss

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("euler:normal", "dpmpp_2m:karras", "euler_ancestral:normal", "dpmpp_2m_sde:karras")
BUDGETS = (3, 4, 6, 10)
METHODS = ("fewer steps", "sharing", "rule", "within layout")
SPEND = {"sharing": "sharing", "rule": "steps_then_sharing", "within layout": "sharing_within_layout"}


@dataclasses.dataclass(frozen=True)
class Record:
    set_name: str
    seed: int
    sampler: str
    budget: float
    method: str
    steps: int  # what the run took
    evaluations_per_image: float
    satisfied: list[int]
    attributes: int
    reading_vendi: float

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.satisfied)) / self.attributes


def layout_distance_table(domain, model, clip, collection: str, seeds: list[int]) -> list[str]:
    """Per attribute, the layout distances of caption pairs differing in that attribute alone."""
    from hierdiff_core.layout import layout_distances
    from hierdiff_lab import comfy_generation

    found: dict[str, list[float]] = {}
    for prompts in domain.sets(collection).values():
        parsed = [domain.parse(p) for p in prompts]
        for seed in seeds:
            settings = comfy_generation.SamplingSettings(
                seed=seed, width=domain.resolution, height=domain.resolution
            )
            x0 = comfy_generation.first_step_predictions(model, clip, prompts, settings)
            distances = layout_distances(x0)
            for i, j in itertools.combinations(range(len(prompts)), 2):
                keys = parsed[i].keys() | parsed[j].keys()
                differ = [a for a in keys if parsed[i].get(a) != parsed[j].get(a)]
                if len(differ) == 1:
                    found.setdefault(differ[0], []).append(float(distances[i, j]))
    lines = [f"\nLayout distances, {domain.name} {collection} sets, seeds {seeds}, pairs differing in one "
             "attribute:\n", "| differs only in | pairs | 10th percentile | median | 90th percentile |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for attribute, values in sorted(found.items(), key=lambda item: -np.median(item[1])):
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        lines.append(f"| {attribute} | {len(values)} | {p10:.3f} | {p50:.3f} | {p90:.3f} |")
    return lines


def run(host, models, domain, set_name: str, prompts: list[str], seed: int, sampler: str, budget: float,
        method: str, full_steps: int) -> Record:  # fmt: skip
    from hierdiff_lab import comfy_generation, scoring

    name, scheduler = sampler.split(":")
    steps = int(budget) if method == "fewer steps" else full_steps
    settings = comfy_generation.SamplingSettings(
        seed=seed, steps=steps, cfg=4.0, sampler_name=name, scheduler=scheduler,
        width=domain.resolution, height=domain.resolution,
    )  # fmt: skip
    mode, value = ("tau", 0.0) if method == "fewer steps" else ("evaluations_per_image", float(budget))
    generation = comfy_generation.hierarchical(
        host.node_classes, *models, prompts, settings, mode, value, spend=SPEND.get(method, "sharing")
    )
    readings = [domain.read(image) for image in generation.images]
    satisfied = [sum(reading.get(a) == v for a, v in domain.parse(text).items())
                 for reading, text in zip(readings, prompts, strict=True)]  # fmt: skip
    return Record(set_name, seed, sampler, float(budget), method, int(generation.plan["steps"]),
                  generation.model_evaluations / len(prompts), satisfied, len(domain.attributes),
                  scoring.reading_vendi(readings))  # fmt: skip


def tables(records: list[Record]) -> list[str]:
    cells: dict[tuple[str, float, str], list[Record]] = {}
    for record in sorted(records, key=lambda r: (r.set_name, r.seed)):
        cells.setdefault((record.sampler, record.budget, record.method), []).append(record)

    def accuracy(runs: list[Record]) -> float:
        return float(np.mean([r.accuracy for r in runs]))

    def picked(runs: list[Record]) -> np.ndarray:
        return np.concatenate([r.satisfied for r in runs])

    lines = ["| E | sampler | " + " | ".join(METHODS) + " | within layout's steps | W/T/L vs fewer steps "
             "| vs sharing | vs rule | vs better of fewer steps and sharing "
             "| Vendi fewer / sharing / within |",
             "|" + "---|" * 11]  # fmt: skip
    for sampler, budget in sorted({(r.sampler, r.budget) for r in records}):
        runs = {m: cells[(sampler, budget, m)] for m in METHODS}
        mine = runs["within layout"]
        better = max((runs["fewer steps"], runs["sharing"]), key=accuracy)
        wtl = ["/".join(map(str, win_tie_loss(picked(mine), picked(runs[m])))) for m in METHODS[:3]]
        wtl.append("/".join(map(str, win_tie_loss(picked(mine), picked(better)))))
        steps = sorted({r.steps for r in mine})
        vendi = " / ".join(f"{np.mean([r.reading_vendi for r in runs[m]]):.2f}"
                           for m in ("fewer steps", "sharing", "within layout"))  # fmt: skip
        lines.append(f"| {budget:g} | {sampler} | " + " | ".join(f"{accuracy(runs[m]):.3f}" for m in METHODS)
                     + f" | {'-'.join(map(str, (steps[0], steps[-1]))) if len(steps) > 1 else steps[0]} | "
                     + " | ".join(wtl) + f" | {vendi} |")  # fmt: skip
    per_set = sorted({r.set_name for r in records})
    lines += ["\nPer set (mean over samplers and budgets):\n", "| set | " + " | ".join(METHODS) + " |",
              "|" + "---|" * (len(METHODS) + 1)]  # fmt: skip
    for set_name in per_set:
        lines.append(f"| {set_name} | " + " | ".join(
            f"{np.mean([r.accuracy for r in records if r.set_name == set_name and r.method == m]):.3f}"
            for m in METHODS) + " |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="shapes")
    parser.add_argument("--sets", choices=("held_out", "development", "confirmation"), default="held_out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    parser.add_argument("--full-steps", type=int, default=20)
    parser.add_argument("--distances", action="store_true", help="also print the layout distance table")
    parser.add_argument("--records", type=Path, default=None, help="tabulate these records, run nothing")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "layout")
    args = parser.parse_args(argv)
    started = time.time()
    lines: list[str] = []
    if args.records:
        records = [Record(**json.loads(line)) for line in args.records.read_text().splitlines() if line]
    else:
        from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

        base = Path(tempfile.mkdtemp(prefix="hierdiff-layout-"))
        prepare_comfy_imports(base)
        host = InProcessHost.start(base)
        from hierdiff_lab import domains
        from testkit.tiny_model import load_tiny_model

        domain = domains.DOMAINS[args.domain]
        models = load_tiny_model(str(domain.checkpoint))
        if args.distances:
            lines += layout_distance_table(domain, models[0], models[1], args.sets, args.seeds)
        args.out.mkdir(parents=True, exist_ok=True)
        records = []
        with open(args.out / f"records-{args.domain}-{args.sets}.jsonl", "w", encoding="utf-8") as sink:
            for (set_name, prompts), seed in itertools.product(domain.sets(args.sets).items(), args.seeds):
                for sampler, budget, method in itertools.product(args.samplers, args.budgets, METHODS):
                    record = run(host, models, domain, set_name, prompts, seed, sampler, budget, method,
                                 args.full_steps)  # fmt: skip
                    records.append(record)
                    sink.write(json.dumps(dataclasses.asdict(record)) + "\n")
                    sink.flush()
                print(f"[{time.time() - started:5.0f}s] {set_name} seed {seed}", flush=True)
    lines = [f"{args.domain}, {args.sets} sets, seeds {args.seeds}, cfg 4, {args.full_steps} steps\n",
             *tables(records), *lines]  # fmt: skip
    print("\n".join(lines) + f"\n\n({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
