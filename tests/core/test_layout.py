# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff_core.layout: reading layouts off first-step predictions and keeping sharing within them.

Specification:
- a prediction's layout map is where it departs from its own per-channel mean; rescaling or offsetting
  its channels (colour, background) leaves the map as it was, moving what it draws moves the map;
- layout groups are complete-linkage clusters: every two prompts of a group within the cut;
- the tree kept within groups joins prompts inside a group at the heights the given tree does, and
  across groups only above the ceiling, so no plan with tau at most the ceiling shares across groups;
- the steps chosen are the most that reach the budget sharing only within groups (down to the budget
  itself, where nothing need be shared); sharing_within_layout pays the probe from the budget and never
  cuts below the sampler's minimum.
"""

from __future__ import annotations

import numpy as np
import pytest

from hierdiff_core.layout import (
    evaluations_within,
    layout_distances,
    layout_groups,
    layout_maps,
    steps_within,
    within_groups,
)
from hierdiff_core.schedule import Budget, Plan
from hierdiff_core.spend import minimum_steps, spend_within_layout
from hierdiff_core.tree import PromptTree, build_tree


def square(corner: tuple[int, int], channels=(1.0, 1.0, 1.0), offset: float = 0.0) -> np.ndarray:
    """(3, 8, 8): a 2 x 2 square at ``corner`` with the channels' values, on ``offset``."""
    x = np.full((3, 8, 8), offset)
    r, c = corner
    x[:, r : r + 2, c : c + 2] += np.asarray(channels)[:, None, None]
    return x


def test_colour_and_background_keep_a_layout_and_a_move_changes_it() -> None:
    x = np.stack([
        square((0, 0)),
        square((0, 0), channels=(2.0, 2.0, 2.0), offset=3.0),  # brighter, on another background
        square((6, 6)),
    ])  # fmt: skip
    maps = layout_maps(x)
    assert maps.shape == (3, 64)
    np.testing.assert_allclose(maps.sum(axis=1), 1.0)
    d = layout_distances(x)
    assert d[0, 1] == pytest.approx(0.0, abs=1e-12)
    # A 2 x 2 square departs 15/16 from the mean on its 4 pixels and 1/16 on the other 60: half the map
    # sits on the square (1/8 per pixel), half on the rest (1/120); two squares apart differ on 8 pixels.
    assert d[0, 2] == pytest.approx(0.5 * 8 * (1 / 8 - 1 / 120))
    np.testing.assert_allclose(d, d.T)


def test_a_uniform_prediction_has_an_even_map() -> None:
    maps = layout_maps(np.zeros((1, 4, 2, 2)))
    np.testing.assert_allclose(maps, 0.25)


def test_groups_are_complete_linkage_cut_at_the_cut_and_numbered_by_first_member() -> None:
    x = np.stack([square((6, 6)), square((0, 0)), square((6, 5)), square((0, 0), offset=1.0)])
    d = layout_distances(x)
    assert d[0, 2] < 0.3 < d[0, 1]
    np.testing.assert_array_equal(layout_groups(x, 0.3), [0, 1, 0, 1])
    np.testing.assert_array_equal(layout_groups(x, 0.0), [0, 1, 2, 1])  # identical layouts stay together
    np.testing.assert_array_equal(layout_groups(x, 1.0), [0, 0, 0, 0])
    np.testing.assert_array_equal(layout_groups(x[:1]), [0])


@pytest.mark.parametrize("cut", [-0.1, float("nan"), True, "0.2"])
def test_a_bad_cut_is_refused(cut) -> None:
    with pytest.raises(ValueError, match="layout cut"):
        layout_groups(np.stack([square((0, 0)), square((6, 6))]), cut)


def text_tree() -> PromptTree:
    """Four prompts; the texts pair 0 with 2 (height 1) and 1 with 3 (height 2), joined at 5."""
    return PromptTree(np.array([[0, 2, 1.0, 2], [1, 3, 2.0, 2], [4, 5, 5.0, 4]]), 4)


def test_within_groups_keeps_the_trees_heights_inside_and_joins_groups_above_the_ceiling() -> None:
    guarded, ceiling = within_groups(text_tree(), np.array([0, 0, 1, 1]))
    # Inside group {0, 1} the text tree joins them at 5, inside {2, 3} at 5: the ceiling.
    assert ceiling == 5.0
    heights = sorted(guarded.heights.tolist())
    assert heights[:2] == [5.0, 5.0] and heights[2] > ceiling
    for step in range(10):
        for node in Plan(guarded, 10, ceiling).groups(step).nodes:
            assert len({0 if m < 2 else 1 for m in guarded.members(node)}) == 1


def test_within_one_group_the_tree_is_unchanged() -> None:
    tree = build_tree(np.random.default_rng(0).normal(size=(7, 3)), "ward", "euclidean")
    guarded, ceiling = within_groups(tree, np.zeros(7, dtype=int))
    assert ceiling == tree.heights.max()
    for tau in (0.0, 0.5 * ceiling, ceiling):
        for step in range(6):
            ours = {tuple(guarded.members(n)) for n in Plan(guarded, 6, tau).groups(step).nodes}
            theirs = {tuple(tree.members(n)) for n in Plan(tree, 6, tau).groups(step).nodes}
            assert ours == theirs


def test_groups_of_one_leave_nothing_to_share() -> None:
    guarded, ceiling = within_groups(text_tree(), np.arange(4))
    assert ceiling == 0.0
    assert evaluations_within(guarded, ceiling, 6) == 6.0


def test_steps_within_are_the_most_that_reach_the_budget() -> None:
    guarded, ceiling = within_groups(text_tree(), np.array([0, 0, 1, 1]))
    # At tau = ceiling = 5 both pairs (height 5) share step 0 only: K - 1/2 evaluations per image.
    assert evaluations_within(guarded, ceiling, 8) == 7.5
    assert steps_within(guarded, ceiling, 7.5, 20) == 8
    assert steps_within(guarded, ceiling, 7.4, 20) == 7  # 8 steps reach 7.5 at best: 7, unshared
    assert steps_within(guarded, ceiling, 3.0, 20) == 3
    assert steps_within(guarded, ceiling, 30.0, 20) == 20


def test_sharing_within_layout_pays_the_probe_and_keeps_the_samplers_minimum() -> None:
    guarded, ceiling = within_groups(text_tree(), np.arange(4))  # nothing may share
    budget = Budget("evaluations_per_image", 6.0)
    assert spend_within_layout(budget, 20, "euler", guarded, ceiling, 1.0) == (5, ("tau", 0.0))
    low = minimum_steps("dpmpp_2m")
    assert low > 5
    assert spend_within_layout(budget, 20, "dpmpp_2m", guarded, ceiling, 1.0) == (
        low, ("evaluations_per_image", 6.0))  # fmt: skip
    with pytest.raises(ValueError, match="target_saving or evaluations_per_image"):
        spend_within_layout(Budget("tau", 1.0), 20, "euler", guarded, ceiling, 1.0)
