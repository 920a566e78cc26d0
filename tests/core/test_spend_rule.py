# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff_core.spend: where steps_then_sharing puts a budget.

Specification: with a sampler's minimum m and a run of K steps asked for E evaluations per image, the
rule runs K' = min(K, max(ceil(E), m)) steps, sharing nothing when K' fits in E and sharing down to E
otherwise; a target saving s means E = K (1 - s); a first-step tree's probe is paid from E; tau cannot be
spent; samplers never measured get the most cautious (largest) measured minimum.
"""

from __future__ import annotations

import pytest

from hierdiff_core import spend as spend_module
from hierdiff_core.schedule import Budget
from hierdiff_core.spend import DEFAULT_MINIMUM_STEPS, MINIMUM_STEPS, spend


@pytest.fixture
def euler_minimum_6(monkeypatch) -> None:
    monkeypatch.setitem(spend_module.MINIMUM_STEPS, "euler", 6)


@pytest.mark.usefixtures("euler_minimum_6")
@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (Budget("evaluations_per_image", 10.0), (10, Budget("tau", 0.0))),
        (Budget("evaluations_per_image", 6.0), (6, Budget("tau", 0.0))),
        (Budget("evaluations_per_image", 7.5), (8, Budget("evaluations_per_image", 7.5))),
        (Budget("evaluations_per_image", 4.0), (6, Budget("evaluations_per_image", 4.0))),
        (Budget("target_saving", 0.5), (10, Budget("tau", 0.0))),
        (Budget("target_saving", 0.8), (6, Budget("evaluations_per_image", 4.0))),
        (Budget("target_saving", 0.0), (20, Budget("tau", 0.0))),
    ],
)
def test_steps_first_down_to_the_minimum_then_sharing(budget, expected) -> None:
    steps, spent = spend(budget, 20, "euler")
    assert (steps, spent.mode) == (expected[0], expected[1].mode)
    assert spent.value == pytest.approx(expected[1].value)


@pytest.mark.usefixtures("euler_minimum_6")
def test_a_first_step_probe_is_paid_from_the_budget() -> None:
    assert spend(Budget("evaluations_per_image", 10.0), 20, "euler", probe_per_image=1) == (9, ("tau", 0.0))
    assert spend(Budget("evaluations_per_image", 5.0), 20, "euler", probe_per_image=1) == (
        6, ("evaluations_per_image", 5.0))  # fmt: skip


def test_the_minimum_never_exceeds_the_runs_steps() -> None:
    assert spend(Budget("evaluations_per_image", 2.0), 3, "euler") == (3, ("evaluations_per_image", 2.0))


def test_tau_is_not_an_amount_of_compute() -> None:
    with pytest.raises(ValueError, match="target_saving or evaluations_per_image"):
        spend(Budget("tau", 0.5), 20, "euler")


def test_unmeasured_samplers_take_the_largest_measured_minimum() -> None:
    assert DEFAULT_MINIMUM_STEPS == max(MINIMUM_STEPS.values())
    assert spend(Budget("evaluations_per_image", 1.0), 20, "no_such_sampler")[0] == DEFAULT_MINIMUM_STEPS


def test_a_probe_may_leave_more_evaluations_than_steps_to_share() -> None:
    # 5.8 evaluations, 1 for the probe: 5 steps need 0.2 per image shared, and the budget, 5.8 for 5 steps,
    # counts the probe's evaluation on top of the steps.
    assert spend(Budget("evaluations_per_image", 5.8), 20, "euler", probe_per_image=1) == (
        5, ("evaluations_per_image", 5.8))  # fmt: skip
