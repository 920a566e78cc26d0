# SPDX-License-Identifier: GPL-3.0-or-later
"""How a budget of model evaluations is spent: on sharing steps alone (the published method) or on
fewer steps first and sharing for the rest (the rule measured in ``tools/bench_frontier.py``).

A run of K steps asked for E evaluations per image can cut steps (E steps, nothing shared), share
(K steps, shared down to E), or both (K' steps with E < K' < K, shared down to E: K'(1 - s) = E).
Measured on the shapes test bed (docs/fidelity.md, "Spending a budget"), fewer steps keeps the
pictures better as long as the sampler still works at that step count; below it, sharing at the
sampler's minimum step count beats both cutting further and sharing from K. :data:`MINIMUM_STEPS`
holds each measured sampler's minimum.
"""

from __future__ import annotations

import math

from .layout import steps_within
from .schedule import Budget
from .tree import PromptTree

SPEND_MODES = ("sharing", "steps_then_sharing", "sharing_within_layout")
"""sharing: keep the run's steps and share down to the budget (published); steps_then_sharing: cut steps
down to the sampler's minimum first, share for the rest; sharing_within_layout: share only among prompts
whose first-step layouts agree, and cut steps where that cannot reach the budget
(:func:`spend_within_layout`)."""

MINIMUM_STEPS: dict[str, int] = {"euler": 3, "euler_ancestral": 3, "dpmpp_2m": 8, "dpmpp_2m_sde": 10}
"""Per ComfyUI sampler name: the fewest steps the rule cuts to before it shares. Measured on the shapes
domain (cfg 4, 20 steps; euler and euler_ancestral with the normal schedule, the dpmpp samplers with
karras) by ``tools/bench_frontier.py``: proposed on the development sets (the minimum scoring best on
average over budgets of 3 to 14 evaluations per image: 4, 6, 8, 10), vetted on the held-out sets
(euler's and euler_ancestral's proposals lost to cutting steps there, so they fall to 3, the smallest
budget measured: at every measured budget those two samplers cut steps and share nothing), and checked
on a third collection made afterwards: there as good as the better of sharing alone and fewer steps
alone at every budget for euler, euler_ancestral and dpmpp_2m (better for dpmpp_2m at 3 to 6
evaluations per image), and for dpmpp_2m_sde better at 3 and 4, within 0.006 at 5 to 8
(docs/fidelity.md, "Spending a budget")."""

DEFAULT_MINIMUM_STEPS = max(MINIMUM_STEPS.values())
"""For samplers not measured: the largest measured minimum. Too high a minimum costs less than too low
a one: on the held-out sets, sharing from 10 steps down to 5 evaluations per image cost euler 0.135 of
attribute accuracy against 5 plain steps, while 5 plain steps of dpmpp_2m instead of 8 shared down to 5
cost 0.184."""


def budget_evaluations(budget: Budget, steps: int) -> float:
    """The model evaluations per image a budget allows a run of ``steps`` steps.

    ValueError for a tau budget: a threshold, not an amount of compute."""
    budget = budget.check(steps)
    if budget.mode == "target_saving":
        return steps * (1.0 - budget.value)
    if budget.mode == "evaluations_per_image":
        return budget.value
    raise ValueError(
        "steps_then_sharing spends an amount of compute: give the budget as target_saving or "
        f"evaluations_per_image, not {budget.describe()} (a threshold)"
    )


def minimum_steps(sampler_name: str) -> int:
    """The step count the rule does not cut below for this sampler (:data:`MINIMUM_STEPS`)."""
    return MINIMUM_STEPS.get(sampler_name, DEFAULT_MINIMUM_STEPS)


def spent_steps(evaluations: float, steps: int, minimum: int, probe_per_image: float = 0.0) -> int:
    """K' = min(K, max(ceil(E - probe), minimum)): the steps a run of ``steps`` steps takes for
    ``evaluations`` per image when it cuts steps no lower than ``minimum``."""
    reduced = max(1, math.ceil(evaluations - probe_per_image - 1e-9))
    return min(steps, max(reduced, minimum))


def spend(budget: Budget, steps: int, sampler_name: str, probe_per_image: float = 0.0) -> tuple[int, Budget]:
    """Where steps_then_sharing spends ``budget`` for a run of ``steps`` steps with ``sampler_name``.

    Returns (K', budget at K'): K' (:func:`spent_steps`) steps for E evaluations per image, and tau 0
    (nothing shared) when K' steps fit in E, else sharing down to E at K' steps.
    ``probe_per_image``: evaluations per image spent before step 0 (1 for a first-step tree)."""
    evaluations = budget_evaluations(budget, steps)
    chosen = spent_steps(evaluations, steps, minimum_steps(sampler_name), probe_per_image)
    if chosen + probe_per_image <= evaluations + 1e-9:
        return chosen, Budget("tau", 0.0)
    return chosen, Budget("evaluations_per_image", evaluations).check(chosen, probe_per_image)


def spend_within_layout(
    budget: Budget, steps: int, sampler_name: str, tree: PromptTree, ceiling: float, probe_per_image: float
) -> tuple[int, Budget]:
    """Where sharing_within_layout spends ``budget`` for a run of ``steps`` steps, on a tree whose merges
    at or below ``ceiling`` stay within a layout (:func:`hierdiff_core.layout.within_groups`).

    Returns (K', budget at K'): the most steps, at most K, whose sharing within the layouts reaches E
    evaluations per image (the probe included); where it cannot, fewer steps, but never below the
    sampler's minimum (:func:`minimum_steps`, where cutting steps breaks the sampler): there prompts of
    different layouts share too, those merges splitting first. tau 0 when K' steps fit in E."""
    evaluations = budget_evaluations(budget, steps)
    within = steps_within(tree, ceiling, evaluations - probe_per_image, steps)
    chosen = max(within, min(steps, minimum_steps(sampler_name)))
    if chosen + probe_per_image <= evaluations + 1e-9:
        return chosen, Budget("tau", 0.0)
    return chosen, Budget("evaluations_per_image", evaluations).check(chosen, probe_per_image)
