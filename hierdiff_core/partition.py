# SPDX-License-Identifier: GPL-3.0-or-later
"""Partitioning a plan for several workers without giving up any sharing.

A plan's groups only ever split as the steps go on, so the groups active at one step c (the **cut**)
partition the prompts, and every group active at a later step lies inside exactly one of them. The
run can therefore be cut in two:

* the **top part**, steps 0..c-1, runs once on one worker for all N prompts (as an ordinary run would);
* each group active at step c is the root of a **subtree task** that runs steps c..K-1 for that
  group's prompts alone, starting from the group's latent at the cut (one latent row: the members of
  a group hold identical rows) and, for stochastic schedulers, its noise generator's state.

Every evaluation of the plan is in exactly one of these parts, so the partition adds none: the top
part's evaluations plus the tasks' equal :attr:`~hierdiff_core.schedule.Plan.model_evaluations`.

:func:`partition` chooses the cut as the first step with at least ``balance x workers`` groups (or,
when the plan never has that many, the first step with as many groups as it ever has), so there are
enough tasks to balance, and assigns the tasks to workers longest first (LPT: each task, largest
planned evaluation count first, goes to the least loaded worker). :func:`best_cut` instead picks, among
the steps up to that one, the cut with the shortest critical path (top part + most loaded worker).
:func:`subtree_tree` gives a task's subtree as a tree of its own whose group paths (and so group
seeds) are those of the whole tree.

Pure numpy: no framework is imported here.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from .schedule import Plan
from .tree import PromptTree

GENERATOR_STATE_BYTES = 5056
"""Size of a CPU ``torch.Generator`` state (Mersenne twister): what a stochastic task's noise adds."""


@dataclass(frozen=True, eq=False)
class Partition:
    """A plan cut at one step into a top part and subtree tasks, and the tasks' assignment.

    Attributes
    ----------
    plan : the plan partitioned.
    workers : W >= 1 workers the tasks were assigned to.
    balance : k >= 1: the cut aimed at k x W tasks.
    cut_step : c in 0..K-1: the top part runs steps 0..c-1 (none when c = 0).
    roots : (T,) node ids of the tasks' subtrees: the groups active at ``cut_step``, ordered by their
        smallest prompt (as ``plan.groups(cut_step).nodes``).
    task_evaluations : (T,) planned evaluations of each task, steps c..K-1 (no guidance doubling).
    task_sizes : (T,) prompts per task.
    serial_evaluations : evaluations of the top part (steps before the cut) plus the plan's probe
        evaluations: what must run before any task can start.
    order : (T,) task indices in dispatch order, largest planned evaluation count first (ties: the
        task with the smaller smallest prompt first).
    assignment : (T,) worker index of each task (LPT over ``order``).
    worker_evaluations : (W,) planned evaluations assigned to each worker.
    """

    plan: Plan
    workers: int
    balance: int
    cut_step: int
    roots: np.ndarray
    task_evaluations: np.ndarray
    task_sizes: np.ndarray
    serial_evaluations: int
    order: np.ndarray
    assignment: np.ndarray
    worker_evaluations: np.ndarray

    def __post_init__(self) -> None:
        for array in (self.roots, self.task_evaluations, self.task_sizes, self.order, self.assignment,
                      self.worker_evaluations):  # fmt: skip
            array.setflags(write=False)

    @property
    def tasks(self) -> int:
        """T: number of subtree tasks."""
        return len(self.roots)

    @property
    def total_evaluations(self) -> int:
        """Top part plus every task: what the partitioned run evaluates."""
        return self.serial_evaluations + int(self.task_evaluations.sum())

    @property
    def added_evaluations(self) -> int:
        """Evaluations the partition adds to the plan's; 0 by construction (the top part runs once)."""
        return self.total_evaluations - self.plan.model_evaluations

    @property
    def serial_share(self) -> float:
        """Share of the plan's evaluations that run before the cut, on one worker."""
        return self.serial_evaluations / self.total_evaluations

    @property
    def task_imbalance(self) -> float:
        """Largest task's planned evaluations / the mean task's (1.0 = equal tasks)."""
        return float(self.task_evaluations.max() / self.task_evaluations.mean())

    @property
    def worker_imbalance(self) -> float:
        """Most loaded worker's planned evaluations / the mean worker load (1.0 = perfect balance)."""
        loads = self.worker_evaluations
        return float(loads.max() / loads.mean()) if loads.sum() else 1.0

    @property
    def speedup_bound(self) -> float:
        """Evaluations of a one-worker run over the critical path (serial part + the most loaded
        worker), assuming equal cost per evaluation: the speed-up the partition allows at most."""
        return self.total_evaluations / (self.serial_evaluations + int(self.worker_evaluations.max()))

    def members(self, task: int) -> np.ndarray:
        """Sorted prompt indices of task ``task``'s subtree, shape (task_sizes[task],)."""
        return self.plan.tree.members(int(self.roots[int(task)]))

    def trunk_bytes(self, latent_row_bytes: int, stochastic: bool = False) -> int:
        """Bytes of the cut handed to the tasks through the object store: one latent row per task (and
        one noise-generator state per task with a stochastic scheduler); 0 when the cut is step 0."""
        if self.cut_step == 0:
            return 0
        per_task = int(latent_row_bytes) + (GENERATOR_STATE_BYTES if stochastic else 0)
        return self.tasks * per_task

    def summary(self) -> dict:
        """The figures as plain numbers (JSON-ready)."""
        return {
            "workers": self.workers,
            "balance": self.balance,
            "cut_step": self.cut_step,
            "tasks": self.tasks,
            "serial_evaluations": self.serial_evaluations,
            "task_evaluations_max": int(self.task_evaluations.max()),
            "task_evaluations_mean": float(self.task_evaluations.mean()),
            "total_evaluations": self.total_evaluations,
            "plan_evaluations": self.plan.model_evaluations,
            "added_evaluations": self.added_evaluations,
            "serial_share": self.serial_share,
            "task_imbalance": self.task_imbalance,
            "worker_imbalance": self.worker_imbalance,
            "speedup_bound": self.speedup_bound,
        }


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def choose_cut(plan: Plan, tasks: int) -> int:
    """The first step with at least ``tasks`` active groups; when the plan never has that many, the first
    step with as many groups as it ever has (groups only split, so that is its last step's count)."""
    tasks = _check_count(tasks, "tasks")
    counts = plan.evaluations_per_step  # non-decreasing: groups only split
    wanted = min(tasks, int(counts[-1]))
    return int(np.argmax(counts >= wanted))


def best_cut(plan: Plan, workers: int, balance: int = 4) -> int:
    """The cut step, no later than :func:`choose_cut`'s for ``balance x workers`` tasks, with the shortest
    critical path: the top part plus the most loaded worker's tasks (longest first), counted in planned
    evaluations; the earliest of equals. A later cut gives more, smaller tasks but a longer serial top
    part, so with many workers an earlier cut with fewer, larger tasks can finish first."""
    workers = _check_count(workers, "workers")
    last = choose_cut(plan, _check_count(balance, "balance") * workers)
    serial = np.concatenate([[0], np.cumsum(plan.evaluations_per_step)])
    best, best_length = 0, None
    for step in range(last + 1):
        if best_length is not None and serial[step] >= best_length:
            break  # the top part alone is already longer
        roots, evaluations = task_evaluations(plan, step)
        tie = plan.tree.node_min_members[roots]
        length = int(serial[step]) + int(assign_longest_first(evaluations, workers, tie)[2].max())
        if best_length is None or length < best_length:
            best, best_length = step, length
    return best


def task_evaluations(plan: Plan, cut_step: int) -> tuple[np.ndarray, np.ndarray]:
    """(roots, evaluations): the (T,) groups active at ``cut_step`` (ordered by smallest prompt) and the
    (T,) evaluations planned in each one's subtree from ``cut_step`` to the last step."""
    roots = plan.groups(cut_step).nodes
    tree = plan.tree
    first, end = plan.first_steps, plan.end_steps
    later = np.flatnonzero(end > cut_step)  # every node active at some step >= cut_step
    steps = end[later] - np.maximum(first[later], cut_step)
    # Each root covers a contiguous run of the leaf order; a later node falls in its root's run.
    by_start = np.argsort(tree.node_starts[roots])
    starts = tree.node_starts[roots][by_start]
    owner = by_start[np.searchsorted(starts, tree.node_starts[later], side="right") - 1]
    evaluations = np.bincount(owner, weights=steps, minlength=len(roots)).astype(np.int64)
    return roots, evaluations


def assign_longest_first(evaluations: np.ndarray, workers: int, tie: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """LPT: tasks, largest first, each to the least loaded worker (the lowest index among equals).

    evaluations: (T,) task costs; tie: (T,) keys ordering equal costs (default: task index).
    Returns (order (T,), assignment (T,) worker per task, loads (W,)).
    """
    workers = _check_count(workers, "workers")
    evaluations = np.asarray(evaluations, dtype=np.int64)
    tie = np.arange(len(evaluations)) if tie is None else np.asarray(tie)
    order = np.lexsort((tie, -evaluations))
    assignment = np.empty(len(evaluations), dtype=np.int64)
    heap = [(0, w) for w in range(workers)]
    for task in order.tolist():
        load, worker = heapq.heappop(heap)
        assignment[task] = worker
        heapq.heappush(heap, (load + int(evaluations[task]), worker))
    loads = np.bincount(assignment, weights=evaluations, minlength=workers).astype(np.int64)
    return order.astype(np.int64), assignment, loads


def partition(plan: Plan, workers: int, balance: int = 4, cut_step: int | None = None) -> Partition:
    """Cut ``plan`` for ``workers`` workers (see the module docstring).

    Parameters
    ----------
    plan : the plan to run.
    workers : W >= 1.
    balance : k >= 1; the cut is the first step with at least k x W groups (fewer when the plan never
        has that many).
    cut_step : use this step as the cut instead (0..K-1).
    """
    workers = _check_count(workers, "workers")
    balance = _check_count(balance, "balance")
    if cut_step is None:
        cut_step = choose_cut(plan, balance * workers)
    elif isinstance(cut_step, bool) or not isinstance(cut_step, Integral) or not 0 <= cut_step < plan.steps:
        raise ValueError(f"cut step must be an integer in 0..{plan.steps - 1}, got {cut_step!r}")
    cut_step = int(cut_step)
    roots, evaluations = task_evaluations(plan, cut_step)
    serial = int(plan.evaluations_per_step[:cut_step].sum()) + plan.probe_evaluations
    tie = plan.tree.node_min_members[roots]
    order, assignment, loads = assign_longest_first(evaluations, workers, tie)
    return Partition(
        plan=plan,
        workers=workers,
        balance=balance,
        cut_step=cut_step,
        roots=np.asarray(roots, dtype=np.int64),
        task_evaluations=evaluations,
        task_sizes=plan.tree.node_sizes[roots].astype(np.int64),
        serial_evaluations=serial,
        order=order,
        assignment=assignment,
        worker_evaluations=loads,
    )


@dataclass(frozen=True, eq=False)
class RootedTree(PromptTree):
    """A subtree as a tree of its own, remembering where it hangs in the whole tree.

    ``path(node)`` is the path in the whole tree (``root_path`` + the path inside the subtree), so
    group seeds (:func:`~hierdiff_core.engine.group_seed`) and everything keyed by them are the whole
    tree's.
    """

    root_path: str = ""

    def path(self, node: int) -> str:
        return self.root_path + super().path(node)


def subtree_tree(tree: PromptTree, node: int) -> tuple[RootedTree, np.ndarray]:
    """The subtree under ``node`` as a :class:`RootedTree`, and its prompts' indices (M,) ascending in
    ``tree``.

    Leaves are renumbered in prompt order (local leaf i is prompt ``members[i]``) and merges keep their
    raw heights, so a plan with the same steps and tau groups the subtree's prompts exactly as the whole
    tree's plan does at every step from the first at which ``node`` is active.
    """
    node = int(node)
    n = tree.n_prompts
    members = tree.members(node)
    local = {int(m): i for i, m in enumerate(members.tolist())}
    merges, pending = [], [node]
    while pending:
        current = pending.pop()
        if current >= n:
            merges.append(current)
            pending.extend(tree.children(current))
    rows = []
    # Merge ids grow from children to parents: ascending ids list the subtree's merges bottom-up.
    for merge in sorted(merges):
        a, b, height, _ = tree.linkage[merge - n]
        rows.append([local[int(a)], local[int(b)], float(height), int(tree.node_sizes[merge])])
        local[merge] = len(members) + len(rows) - 1
    prompts = None if tree.prompts is None else tuple(tree.prompts[int(m)] for m in members)
    linkage = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    sub = RootedTree(linkage, len(members), tree.method, tree.metric, prompts, tree.exact,
                     root_path=tree.path(node))  # fmt: skip
    return sub, members


def task_plan(plan: Plan, node: int) -> tuple[Plan, np.ndarray]:
    """The plan of the subtree task rooted at ``node``: its :func:`subtree_tree`, the whole plan's steps
    and tau; and the task's prompt indices (M,) in the whole set."""
    sub, members = subtree_tree(plan.tree, node)
    return Plan(sub, plan.steps, plan.tau), members
