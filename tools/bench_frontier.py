#!/usr/bin/env python
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where sharing beats cutting steps: attribute accuracy against compute, per sampler.

At each budget E (model evaluations per image, conditional rows; guidance doubles every method alike)
and for each sampler, through ComfyUI in this process on the trained model of a synthetic domain:

- **fewer steps**: independent sampling (stock KSampler per prompt) with E steps;
- **sharing**: the published method at the full step count K, sharing until E evaluations per image;
- **combinations**: K' steps (E < K' < K) with sharing down to E, i.e. K'(1 - s) = E;
- the **best independent** sampler at E over every sampler and scheduler tried (``--extra`` adds
  samplers that are only run independently), the baseline the issue sets.

Every run records, per picture, the attributes the domain's checker finds satisfied, and the set's
diversity (Vendi score over checker readings and over pixels). Records go to ``records.jsonl`` in
``--out``; ``--rule-from DEV_RECORDS`` derives the "spend" rule (the smallest step count per sampler
below which sharing takes over, chosen on development sets) and evaluates it on these records (the
held-out sets), with win/tie/loss against the better pure strategy at each budget.

    OMP_NUM_THREADS=1 nice .venv/bin/python -P tools/bench_frontier.py --sets development \\
        --seeds 0 --out out/frontier-dev
    OMP_NUM_THREADS=1 nice .venv/bin/python -P tools/bench_frontier.py --sets held_out \\
        --seeds 0 1 --rule-from out/frontier-dev/records.jsonl --out out/frontier-held-out

``--committed-rule`` evaluates the rule the node runs (``hierdiff_core.spend``'s minimums) instead, e.g. on
another domain's held-out sets. ``--records FILE`` skips generation and tabulates existing records.
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

from hierdiff_core.spend import minimum_steps, spent_steps
from hierdiff_lab import charts
from hierdiff_lab.scoring import win_tie_loss

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("euler:normal", "dpmpp_2m:karras", "euler_ancestral:normal", "dpmpp_2m_sde:karras")
EXTRA_SAMPLERS = ("ddim:ddim_uniform", "uni_pc:normal")
BUDGETS = (3, 4, 5, 6, 8, 10, 14)
STEP_COUNTS = (4, 5, 6, 8, 10, 14, 20)


@dataclasses.dataclass(frozen=True)
class Record:
    """One generation over a prompt set: per picture the satisfied attributes; diversity of the set."""

    domain: str
    set_name: str
    seed: int
    sampler: str  # "name:scheduler"
    budget: float  # evaluations per image asked for (== steps for independent runs)
    steps: int
    evaluations_per_image: float  # what the plan reached
    satisfied: list[int]
    attributes: int
    reading_vendi: float
    pixel_vendi: float

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.satisfied)) / self.attributes


def generate(host, models, domain: str, set_name: str, prompts: list[str], seed: int, sampler: str,
             budget: float, steps: int) -> Record:  # fmt: skip
    """One run: independent (budget == steps) or sharing down to ``budget`` evaluations per image."""
    from hierdiff_lab import comfy_generation, domains, scoring

    spec = domains.DOMAINS[domain]
    name, scheduler = sampler.split(":")
    settings = comfy_generation.SamplingSettings(
        seed=seed, steps=steps, cfg=4.0, sampler_name=name, scheduler=scheduler,
        width=spec.resolution, height=spec.resolution,
    )  # fmt: skip
    mode, value = ("tau", 0.0) if budget >= steps else ("evaluations_per_image", float(budget))
    generation = comfy_generation.hierarchical(host.node_classes, *models, prompts, settings, mode, value)
    readings = [spec.read(image) for image in generation.images]
    satisfied = [
        sum(reading.get(a) == v for a, v in spec.parse(text).items())
        for reading, text in zip(readings, prompts, strict=True)
    ]
    return Record(
        domain, set_name, seed, sampler, float(budget), steps, generation.model_evaluations / len(prompts),
        satisfied, len(spec.attributes), scoring.reading_vendi(readings),
        scoring.pixel_vendi(generation.images),
    )  # fmt: skip


def planned_runs(args: argparse.Namespace) -> list[tuple[str, float, int]]:
    """(sampler, budget, steps) of every run per set and seed: the full-step reference, independent at
    each budget for every sampler, and sharing at every step count above each budget for the main ones."""
    runs = [(s, float(args.full_steps), args.full_steps) for s in args.samplers]
    for sampler in (*args.samplers, *args.extra):
        runs += [(sampler, float(e), int(e)) for e in args.budgets]
    for sampler, budget in itertools.product(args.samplers, args.budgets):
        runs += [(sampler, float(budget), k) for k in sorted({*args.step_counts, args.full_steps})
                 if budget < k <= args.full_steps]  # fmt: skip
    return runs


def collect(args: argparse.Namespace) -> list[Record]:
    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports

    base = Path(tempfile.mkdtemp(prefix="hierdiff-frontier-"))
    prepare_comfy_imports(base)
    host = InProcessHost.start(base)
    from hierdiff_lab import domains
    from testkit.tiny_model import load_tiny_model

    spec = domains.DOMAINS[args.domain]
    models = load_tiny_model(str(args.checkpoint or spec.checkpoint))
    args.out.mkdir(parents=True, exist_ok=True)
    records: list[Record] = []
    runs = planned_runs(args)
    with open(args.out / "records.jsonl", "w", encoding="utf-8") as sink:
        for (set_name, prompts), seed in itertools.product(args.prompt_sets.items(), args.seeds):
            for sampler, budget, steps in runs:
                record = generate(host, models, args.domain, set_name, prompts, seed, sampler, budget, steps)
                records.append(record)
                sink.write(json.dumps(dataclasses.asdict(record)) + "\n")
                sink.flush()
            elapsed = time.time() - args.started
            print(f"[{elapsed:5.0f}s] {set_name} seed {seed}: {len(runs)} runs", flush=True)
    return records


def load_records(path: Path) -> list[Record]:
    return [Record(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


# --------------------------------------------------------------------------------------------- analysis
def grouped(records: list[Record]) -> dict[tuple[str, float, int], list[Record]]:
    """(sampler, budget, steps) -> its records, over sets and seeds (same order in every group)."""
    groups: dict[tuple[str, float, int], list[Record]] = {}
    for record in sorted(records, key=lambda r: (r.set_name, r.seed)):
        groups.setdefault((record.sampler, record.budget, record.steps), []).append(record)
    return groups


def mean_accuracy(runs: list[Record]) -> float:
    return float(np.mean([r.accuracy for r in runs]))


def satisfied(runs: list[Record]) -> np.ndarray:
    return np.concatenate([r.satisfied for r in runs])


def best_independent(groups, budget: float) -> tuple[str, list[Record]]:
    """The sampler whose independent run at ``budget`` steps scores best (over the records given)."""
    candidates = {s: runs for (s, e, k), runs in groups.items() if e == budget and k == budget}
    sampler = max(candidates, key=lambda s: mean_accuracy(candidates[s]))
    return sampler, candidates[sampler]


def rule_steps(minimum: int, budget: float, full_steps: int) -> int:
    """The spend rule's step count (hierdiff_core.spend.spent_steps) for a candidate ``minimum``."""
    return spent_steps(budget, full_steps, minimum)


def derive_minimums(records: list[Record], full_steps: int, step_counts: tuple[int, ...]) -> dict[str, int]:
    """Per sampler, the minimum step count whose rule scores best on these (development) records, mean
    over budgets; ties go to the smaller minimum (fewer steps is the plainer strategy)."""
    groups = grouped(records)
    minimums = {}
    for sampler in sorted({r.sampler for r in records if r.steps > r.budget}):
        budgets = sorted({e for s, e, k in groups if s == sampler and k == e})
        scores = {}
        for minimum in sorted({1, *step_counts}):
            picked = [groups.get((sampler, e, rule_steps(minimum, e, full_steps))) for e in budgets]
            if all(picked):
                scores[minimum] = float(np.mean([mean_accuracy(runs) for runs in picked]))
        best = max(scores.values())
        minimums[sampler] = min(m for m, v in scores.items() if v >= best - 1e-9)
    return minimums


def committed_minimums(records: list[Record]) -> dict[str, int]:
    """The spend rule as the node runs it (hierdiff_core.spend.minimum_steps), for the records' samplers."""
    shared = {r.sampler for r in records if r.steps > r.budget}
    return {sampler: minimum_steps(sampler.split(":")[0]) for sampler in sorted(shared)}


def vet_minimums(minimums: dict[str, int], records: list[Record], full_steps: int) -> dict[str, int]:
    """The minimums, checked on other (held-out) records: where a sampler's rule scores below the
    better pure strategy (fewer steps or pure sharing, by mean accuracy) at any budget there, its
    minimum falls to the smallest budget measured, so that the rule cuts steps alone at every measured
    budget (and shares only below them)."""
    groups = grouped(records)
    vetted = {}
    for sampler, minimum in minimums.items():
        budgets = sorted({e for s, e, k in groups if s == sampler and k == e and e < full_steps})
        fewer = {e: mean_accuracy(groups[(sampler, e, int(e))]) for e in budgets}
        sharing = {e: mean_accuracy(groups[(sampler, e, full_steps)]) for e in budgets}
        ruled = {e: mean_accuracy(groups[(sampler, e, rule_steps(minimum, e, full_steps))]) for e in budgets}
        fails = [e for e in budgets if ruled[e] + 1e-9 < max(fewer[e], sharing[e])]
        vetted[sampler] = int(min(budgets)) if fails else minimum
    return vetted


def frontier_tables(records: list[Record], full_steps: int, minimums: dict[str, int] | None) -> list[str]:
    groups = grouped(records)
    samplers = sorted({r.sampler for r in records if r.steps > r.budget})
    budgets = sorted({r.budget for r in records if r.steps == r.budget and r.budget < full_steps})
    lines = []
    for sampler in samplers:
        steps = sorted({k for s, e, k in groups if s == sampler and k > e})
        lines += [f"\n#### {sampler}: accuracy by budget (rows) and step count K' (columns; K' = E is "
                  f"fewer steps, K' = {full_steps} pure sharing)\n"]  # fmt: skip
        header = "| E | K' = E (fewer steps) | " + " | ".join(f"K' = {k}" for k in steps) + " |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for budget in budgets:
            cells = [f"{mean_accuracy(groups[(sampler, budget, int(budget))]):.3f}"]
            cells += [f"{mean_accuracy(groups[(sampler, budget, k)]):.3f}" if (sampler, budget, k) in groups
                      else "" for k in steps]  # fmt: skip
            lines.append(f"| {budget:g} | " + " | ".join(cells) + " |")
    lines += ["\n#### The spend rule against the pure strategies and the best independent sampler\n",
              "W/T/L: pictures where the rule satisfies more / as many / fewer attributes than the better "
              "pure strategy of the same sampler (fewer steps or pure sharing, whichever scores higher here) "
              "and than the best independent sampler at that budget. Vendi: of the checker's readings.\n"]
    header = ("| E | sampler | fewer steps | pure sharing | rule K' | rule | W/T/L vs better pure "
              "| best independent (sampler) | W/T/L vs it | Vendi fewer / sharing / rule |")  # fmt: skip
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for sampler in samplers:
        for budget in budgets:
            best_sampler, best_runs = best_independent(groups, budget)
            fewer = groups[(sampler, budget, int(budget))]
            sharing = groups[(sampler, budget, full_steps)]
            cells = [f"{budget:g}", sampler, f"{mean_accuracy(fewer):.3f}", f"{mean_accuracy(sharing):.3f}"]
            rule = fewer  # without a rule, the Vendi column's third entry repeats fewer steps
            if minimums and sampler in minimums:
                k = rule_steps(minimums[sampler], budget, full_steps)
                rule = groups[(sampler, budget, k)]
                better = max((fewer, sharing), key=mean_accuracy)
                cells += [str(k), f"{mean_accuracy(rule):.3f}",
                          "/".join(map(str, win_tie_loss(satisfied(rule), satisfied(better))))]  # fmt: skip
            else:
                cells += ["", "", ""]
            against_best = win_tie_loss(satisfied(rule), satisfied(best_runs))
            cells += [f"{mean_accuracy(best_runs):.3f} ({best_sampler})",
                      "/".join(map(str, against_best)) if minimums else "",
                      " / ".join(f"{np.mean([r.reading_vendi for r in runs]):.2f}"
                                 for runs in (fewer, sharing, rule))]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    full = {s: groups[(s, float(full_steps), full_steps)] for s in samplers}
    lines += [f"\nFull {full_steps} steps, independent: " + ", ".join(
        f"{s} {mean_accuracy(r):.3f} (reading Vendi {np.mean([x.reading_vendi for x in r]):.2f}, "
        f"pixel Vendi {np.mean([x.pixel_vendi for x in r]):.2f})" for s, r in full.items())]  # fmt: skip
    return lines


def draw_curves(records: list[Record], full_steps: int, minimums: dict[str, int] | None, path: Path,
                title: str) -> None:  # fmt: skip
    """accuracy against evaluations per image reached, one panel per sampler: fewer steps, pure
    sharing, the rule (when given) and the best independent sampler at each budget."""
    groups = grouped(records)
    samplers = sorted({r.sampler for r in records if r.steps > r.budget})
    budgets = sorted({r.budget for r in records if r.steps == r.budget and r.budget < full_steps})

    def point(runs: list[Record]) -> tuple[float, float]:
        return float(np.mean([r.evaluations_per_image for r in runs])), mean_accuracy(runs)

    panels = []
    for sampler in samplers:
        full = point(groups[(sampler, float(full_steps), full_steps)])
        curves = {
            "fewer steps": [point(groups[(sampler, e, int(e))]) for e in budgets] + [full],
            f"sharing from {full_steps} steps": [point(groups[(sampler, e, full_steps)]) for e in budgets]
            + [full],
            "best independent sampler": [point(best_independent(groups, e)[1]) for e in budgets],
        }
        if minimums and sampler in minimums:
            curves["steps_then_sharing"] = [
                point(groups[(sampler, e, rule_steps(minimums[sampler], e, full_steps))]) for e in budgets
            ] + [full]
        panels.append((f"{sampler}: attribute accuracy", curves))
    charts.plot(panels, path, title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="shapes")
    parser.add_argument("--sets", choices=("held_out", "development", "confirmation"), default="held_out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--extra", nargs="*", default=list(EXTRA_SAMPLERS))
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    parser.add_argument("--step-counts", nargs="+", type=int, default=list(STEP_COUNTS))
    parser.add_argument("--full-steps", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the domain's trained model")
    parser.add_argument("--records", type=Path, default=None, help="tabulate these records, run nothing")
    parser.add_argument("--rule-from", type=Path, default=None, help="development records for the rule")
    parser.add_argument("--rule-check", type=Path, default=None,
                        help="held-out records that vet the rule (vet_minimums)")  # fmt: skip
    parser.add_argument("--committed-rule", action="store_true",
                        help="evaluate hierdiff_core.spend's minimums (instead of --rule-from)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "out" / "frontier")
    args = parser.parse_args(argv)
    if args.committed_rule and args.rule_from:
        parser.error("--committed-rule and --rule-from are two sources of the rule: give one")
    args.started = time.time()
    if not args.records:
        from hierdiff_lab import domains

        checkpoint = args.checkpoint or domains.DOMAINS[args.domain].checkpoint
        if not Path(checkpoint).is_file():
            parser.error(f"no trained model for the {args.domain} domain at {checkpoint} (train it: "
                         f"python -m hierdiff_lab.train --domain {args.domain})")  # fmt: skip
        try:
            args.prompt_sets = domains.DOMAINS[args.domain].sets(args.sets)
        except ValueError as error:
            parser.error(f"--sets: {error}")
    records = load_records(args.records) if args.records else collect(args)
    minimums = None
    if args.committed_rule:
        minimums = committed_minimums(records)
    if args.rule_from:
        minimums = derive_minimums(load_records(args.rule_from), args.full_steps, tuple(args.step_counts))
        if args.rule_check:
            derived = minimums
            minimums = vet_minimums(derived, load_records(args.rule_check), args.full_steps)
    lines = [f"{args.domain}, sets {', '.join(sorted({r.set_name for r in records}))}, "
             f"seeds {sorted({r.seed for r in records})}, cfg 4, full {args.full_steps} steps"]  # fmt: skip
    if minimums:
        source = "hierdiff_core.spend" if args.committed_rule else args.rule_from
        lines.append(f"Spend rule's minimum steps per sampler (from {source}): {minimums}")
    if args.rule_check:
        lines.append(f"(derived {derived}, vetted on {args.rule_check})")
    lines += frontier_tables(records, args.full_steps, minimums)
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.md").write_text(text, encoding="utf-8")
    draw_curves(records, args.full_steps, minimums, args.out / "accuracy_vs_evaluations.png", lines[0])
    print("\n" + text + f"\n({time.time() - args.started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
