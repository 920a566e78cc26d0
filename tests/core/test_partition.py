# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff_core.partition: cutting a plan into a top part and subtree tasks without adding evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from hierdiff_core.engine import group_seed
from hierdiff_core.partition import (
    GENERATOR_STATE_BYTES,
    RootedTree,
    assign_longest_first,
    best_cut,
    choose_cut,
    partition,
    subtree_tree,
    task_plan,
)
from hierdiff_core.schedule import Plan, plan
from hierdiff_core.tree import PromptTree, build_tree


@pytest.fixture
def small():
    """4 prompts: (0, 1) merge at 1 -> node 4, (2, 3) at 2 -> node 5, both at 4 -> node 6. With 5 steps
    and tau 4 the thresholds are [4, 3, 2, 1, 0], the groups per step {6}, {4, 5}, {4, 5}, {4, 2, 3},
    {0, 1, 2, 3}: [1, 2, 2, 3, 4], 12 evaluations."""
    tree = PromptTree(np.array([[0, 1, 1.0, 2], [2, 3, 2.0, 2], [4, 5, 4.0, 4]]), 4, prompts=list("abcd"))
    schedule = Plan(tree, 5, 4.0)
    assert schedule.evaluations_per_step.tolist() == [1, 2, 2, 3, 4]
    return schedule


def test_the_cut_is_the_first_step_with_enough_groups(small):
    assert [choose_cut(small, t) for t in (1, 2, 3, 4, 5, 100)] == [0, 1, 3, 4, 4, 4]


def test_one_worker_two_tasks(small):
    p = partition(small, workers=1, balance=2)
    assert p.cut_step == 1
    assert p.roots.tolist() == [4, 5]
    # node 4: steps 1-3 (3) + leaves 0, 1 at step 4 (2); node 5: steps 1-2 (2) + leaves 2, 3 at 3-4 (4)
    assert p.task_evaluations.tolist() == [5, 6]
    assert p.task_sizes.tolist() == [2, 2]
    assert p.serial_evaluations == 1
    assert (p.total_evaluations, p.added_evaluations) == (12, 0)
    assert p.order.tolist() == [1, 0]  # largest first
    assert p.assignment.tolist() == [0, 0]
    assert p.worker_evaluations.tolist() == [11]
    assert p.task_imbalance == pytest.approx(6 / 5.5)
    assert p.worker_imbalance == 1.0
    assert p.speedup_bound == 1.0
    assert p.serial_share == pytest.approx(1 / 12)
    assert p.members(0).tolist() == [0, 1] and p.members(1).tolist() == [2, 3]


def test_two_workers_get_one_task_each(small):
    p = partition(small, workers=2, balance=1)
    assert p.cut_step == 1
    assert p.assignment.tolist() == [1, 0]
    assert p.worker_evaluations.tolist() == [6, 5]
    assert p.worker_imbalance == pytest.approx(6 / 5.5)
    assert p.speedup_bound == pytest.approx(12 / 7)


def test_more_tasks_than_the_plan_has_cut_at_its_finest_step(small):
    p = partition(small, workers=2, balance=2)  # 4 tasks wanted: first at step 4
    assert (p.cut_step, p.roots.tolist(), p.task_evaluations.tolist()) == (4, [0, 1, 2, 3], [1, 1, 1, 1])
    assert p.serial_evaluations == 8 and p.added_evaluations == 0
    assert p.order.tolist() == [0, 1, 2, 3]  # equal costs: by smallest prompt
    assert p.assignment.tolist() == [0, 1, 0, 1]
    assert p.worker_evaluations.tolist() == [2, 2]
    never = partition(small, workers=8, balance=4)
    assert never.cut_step == 4 and never.tasks == 4


def test_a_given_cut_step(small):
    p = partition(small, workers=3, cut_step=0)
    assert (p.roots.tolist(), p.task_evaluations.tolist(), p.serial_evaluations) == ([6], [12], 0)
    assert p.worker_evaluations.tolist() == [12, 0, 0]
    assert p.worker_imbalance == 3.0
    p = partition(small, workers=2, cut_step=3)
    assert (p.roots.tolist(), p.task_evaluations.tolist(), p.serial_evaluations) == ([4, 2, 3], [3, 2, 2], 5)


def test_the_best_cut_has_the_shortest_critical_path(small):
    # Top part + most loaded worker, cut at 0..4 with 2 workers: 12, 1 + 6, 3 + 5, 5 + 4, (8: stop).
    assert best_cut(small, workers=2, balance=2) == 1
    assert best_cut(small, workers=4, balance=1) == 1  # 12, 1 + 6, 3 + 5, 5 + 3: step 1
    assert best_cut(small, workers=1, balance=1) == 0  # the k x W rule's step bounds it


def test_trunk_bytes(small):
    assert partition(small, 1, 2).trunk_bytes(1000) == 2 * 1000
    assert partition(small, 1, 2).trunk_bytes(1000, stochastic=True) == 2 * (1000 + GENERATOR_STATE_BYTES)
    assert partition(small, 1, 1).trunk_bytes(1000) == 0  # cut at step 0: nothing crosses


def test_probe_evaluations_are_serial(small):
    probed = Plan(small.tree, 5, 4.0, probe_evaluations=4)
    p = partition(probed, workers=1, balance=2)
    assert p.serial_evaluations == 5 and p.total_evaluations == probed.model_evaluations == 16
    assert p.added_evaluations == 0


def test_bad_arguments(small):
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        partition(small, 0)
    with pytest.raises(ValueError, match="balance must be an integer >= 1, got 0"):
        partition(small, 1, 0)
    with pytest.raises(ValueError, match=r"cut step must be an integer in 0..4, got 5"):
        partition(small, 1, cut_step=5)


def test_longest_first_assignment():
    order, assignment, loads = assign_longest_first(np.array([3, 7, 5, 5, 1]), 2)
    assert order.tolist() == [1, 2, 3, 0, 4]
    # 7 -> w0; 5 -> w1; 5 -> w1 (5 < 7); 3 -> w0 (7 < 10); 1 -> w0 (10 = 10: the lower index)
    assert assignment.tolist() == [0, 0, 1, 1, 0]
    assert loads.tolist() == [11, 10]


def test_subtree_paths_and_seeds_are_the_whole_trees(small):
    sub, members = subtree_tree(small.tree, 5)
    assert isinstance(sub, RootedTree)
    assert members.tolist() == [2, 3] and sub.prompts == ("c", "d")
    assert sub.linkage.tolist() == [[0.0, 1.0, 2.0, 2.0]]
    assert [sub.path(n) for n in (2, 0, 1)] == ["1", "10", "11"]
    assert [group_seed(7, sub, n) for n in (2, 0, 1)] == [group_seed(7, small.tree, n) for n in (5, 2, 3)]
    task, _ = task_plan(small, 5)
    assert task.evaluations_per_step.tolist() == [1, 1, 1, 2, 2]
    assert (task.steps, task.tau) == (5, 4.0)


@pytest.mark.parametrize("target", [0.3, 0.6])
def test_random_plans_partition_exactly(target):
    rng = np.random.default_rng(1)
    schedule = plan(build_tree(rng.normal(size=(120, 8))), 12, target_saving=target)
    for workers, balance in ((1, 1), (2, 4), (8, 2), (64, 4)):
        p = partition(schedule, workers, balance)
        assert p.added_evaluations == 0
        wanted = min(workers * balance, int(schedule.evaluations_per_step[-1]))
        assert schedule.evaluations_per_step[p.cut_step] >= wanted
        assert p.cut_step == 0 or schedule.evaluations_per_step[p.cut_step - 1] < wanted
        assert sorted(np.concatenate([p.members(t) for t in range(p.tasks)]).tolist()) == list(range(120))
        assert int(p.worker_evaluations.sum()) == int(p.task_evaluations.sum())
        best = partition(schedule, workers, balance, cut_step=best_cut(schedule, workers, balance))
        assert best.cut_step <= p.cut_step and best.added_evaluations == 0
        assert best.serial_evaluations + best.worker_evaluations.max() <= (
            p.serial_evaluations + p.worker_evaluations.max()
        )
        for t in range(p.tasks):
            task, members = task_plan(schedule, int(p.roots[t]))
            assert int(task.evaluations_per_step[p.cut_step :].sum()) == p.task_evaluations[t]
            for step in range(p.cut_step, schedule.steps):
                whole = {tuple(schedule.tree.members(n)) for n in schedule.groups(step).nodes.tolist()}
                for node in task.groups(step).nodes.tolist():
                    assert tuple(members[task.tree.members(node)]) in whole
