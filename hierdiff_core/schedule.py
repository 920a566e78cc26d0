"""Plans: which groups of prompts share a model evaluation at each sampling step, and budgets.

For K steps the threshold falls linearly from tau (step 0) to 0 (step K-1),
``thresholds(K, tau) = numpy.linspace(0, tau, K)[::-1]`` as in the published code. At step k
the active groups are the clusters of the tree cut at ``thr[k]`` with scipy's
``fcluster(Z, thr[k], criterion="distance")`` semantics: node n (leaf or merge) with effective
height h_n and parent height h_p (inf for the root) is active at step k iff
``h_n <= thr[k] < h_p``. Each active group costs one model evaluation per step (two with
classifier-free guidance: see :meth:`Plan.accounting`).

:class:`Plan` is the one owner of the group bookkeeping every host needs at a step (the active
groups, a representative row per group, the row -> group index: :meth:`Plan.groups`), and
:class:`Budget` the one owner of what a user asks for (tau, a target saving, or evaluations per
image), validated once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from numbers import Integral, Real
from typing import Any

import numpy as np

from .tree import PromptTree, merges_from_list, merges_to_list

PLAN_FORMAT = "hierdiff.plan"
PLAN_VERSION = 1
BUDGET_MODES = ("target_saving", "tau", "evaluations_per_image")


def _check_whole(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


MAX_STEPS = 10_000
"""Most sampling steps a plan takes: far beyond any sampler's use, and per-step arrays stay small."""


def _check_steps(steps: Any) -> int:
    steps = _check_whole(steps, "steps", 1)
    if steps > MAX_STEPS:
        raise ValueError(f"steps must be at most {MAX_STEPS:,}, got {steps:,}")
    return steps


def _check_probe(count: Any) -> int:
    return _check_whole(count, "probe evaluations", 0)


def _check_tau(tau: Any) -> float:
    if isinstance(tau, bool) or not isinstance(tau, Real) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    return float(tau)


class Budget(tuple):
    """What a user asks a plan for: ``Budget(mode, value)``, a validated ``(mode, value)`` pair.

    mode is one of :data:`BUDGET_MODES`: "tau" (the threshold at step 0, >= 0, used as given),
    "target_saving" (fraction of model evaluations saved, in [0, 1)) or "evaluations_per_image"
    (average model evaluations per image, in [1, K + probe] for K steps: :meth:`check`).
    Compares equal to the plain tuple ``(mode, value)``. ValueError (one line) on bad input.
    """

    __slots__ = ()

    def __new__(cls, mode: str, value: float) -> Budget:
        if mode not in BUDGET_MODES:
            raise ValueError(f"budget must be one of {', '.join(BUDGET_MODES)}, got {mode!r}")
        valid = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
        if mode == "tau":
            value = _check_tau(value)
        elif mode == "target_saving" and not (valid and 0.0 <= value < 1.0):
            raise ValueError(f"target saving must be in [0, 1), got {value!r}")
        elif mode == "evaluations_per_image" and not valid:
            raise ValueError(f"evaluations per image must be a finite number, got {value!r}")
        return super().__new__(cls, (str(mode), float(value)))

    @property
    def mode(self) -> str:
        return self[0]

    @property
    def value(self) -> float:
        return self[1]

    @classmethod
    def from_options(
        cls,
        tau: float | None = None,
        target_saving: float | None = None,
        evaluations_per_image: float | None = None,
    ) -> Budget:
        """The budget from exactly one of three optional values (the CLI's and the keywords' form)."""
        given = [(name, v) for name, v in (("tau", tau), ("target_saving", target_saving),
                                           ("evaluations_per_image", evaluations_per_image)) if v is not None]
        if len(given) != 1:
            which = "none" if not given else " and ".join(name for name, _ in given)
            raise ValueError(f"give exactly one of tau, target_saving, evaluations_per_image (got {which})")
        return cls(*given[0])

    def check(self, steps: int, probe_per_image: float = 0.0) -> Budget:
        """This budget, checked against a step count: evaluations per image can be at most K, plus what a
        probe choosing the tree spends per image before step 0 (the budget pays for it too)."""
        steps = _check_steps(steps)
        most = steps + probe_per_image
        if self.mode == "evaluations_per_image" and not 1.0 <= self.value <= most + 1e-9:
            raise ValueError(
                f"evaluations per image must be in [1, {most:g}] for {steps} steps, got {self.value!r}"
            )
        return self

    def describe(self) -> str:
        """'target saving 0.5' style text for messages."""
        return f"{self.mode.replace('_', ' ')} {self.value:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "value": self.value}


def thresholds(steps: int, tau: float) -> np.ndarray:
    """Per-step cut heights, shape (K,): ``numpy.linspace(0, tau, K)[::-1]`` (tau first, 0 last)."""
    return np.linspace(0.0, _check_tau(tau), _check_steps(steps))[::-1].copy()


def _count_at_or_above(levels_ascending: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """For each height h, how many levels are >= h."""
    return len(levels_ascending) - np.searchsorted(levels_ascending, heights, side="left")


def _model_evaluations(sorted_merge_heights: np.ndarray, n_prompts: int, thr: np.ndarray) -> int:
    """Total active groups over all steps; the cut at t has N - #{merges with height <= t} clusters."""
    merged = np.searchsorted(sorted_merge_heights, thr, side="right")
    return int(len(thr) * n_prompts - merged.sum())


@dataclass(frozen=True, eq=False)
class StepGroups:
    """The groups active at one step of a plan.

    nodes: (G,) node ids, ordered by their smallest member; representatives: (G,) each group's
    smallest member row (members hold identical latent rows, so any one stands for all);
    row_group: (N,) for each prompt row, its group's index into ``nodes``.
    """

    step: int
    nodes: np.ndarray
    representatives: np.ndarray
    row_group: np.ndarray

    def __post_init__(self) -> None:
        for array in (self.nodes, self.representatives, self.row_group):
            array.setflags(write=False)


@dataclass(frozen=True, eq=False)
class Plan:
    """A plan: the tree, the step count K and the starting threshold tau.

    Attributes
    ----------
    tree : PromptTree
    steps : int
        K >= 1 sampling steps.
    tau : float
        Threshold at step 0 (>= 0); 0 is ordinary independent sampling.
    budget : Budget or None
        What the user asked for: Budget("target_saving", 0.5), Budget("evaluations_per_image", 12.0),
        or Budget("tau", tau).
    probe_evaluations : int
        Model evaluations spent before step 0 to choose the tree (one per prompt when the tree is
        clustered on the model's first-step predictions); counted in :attr:`model_evaluations`.
    """

    tree: PromptTree
    steps: int
    tau: float
    budget: Budget | None = None
    probe_evaluations: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _check_steps(self.steps))
        object.__setattr__(self, "tau", _check_tau(self.tau))
        if self.budget is not None:
            object.__setattr__(self, "budget", Budget(*self.budget))
        object.__setattr__(self, "probe_evaluations", _check_probe(self.probe_evaluations))
        object.__setattr__(self, "_groups_cache", {})

    @cached_property
    def thresholds(self) -> np.ndarray:
        """(K,) threshold per step."""
        thr = thresholds(self.steps, self.tau)
        thr.setflags(write=False)
        return thr

    @cached_property
    def _spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(first_step, end_step) arrays over all 2N-1 nodes; end == first when never active."""
        tree = self.tree
        ascending = self.thresholds[::-1]
        parents = tree.node_parents
        parent_heights = np.where(parents >= 0, tree.node_heights[np.maximum(parents, 0)], np.inf)
        first = _count_at_or_above(ascending, parent_heights)
        end = _count_at_or_above(ascending, tree.node_heights)
        first.setflags(write=False)
        end.setflags(write=False)
        return first, end

    @property
    def first_steps(self) -> np.ndarray:
        """(2N-1,) first step at which each node is active."""
        return self._spans[0]

    @property
    def end_steps(self) -> np.ndarray:
        """(2N-1,) step at which each node stops being active (exclusive); == first when never."""
        return self._spans[1]

    def _check_step(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, Integral) or not 0 <= step < self.steps:
            raise ValueError(f"step must be an integer in 0..{self.steps - 1}, got {step!r}")
        return int(step)

    def active_groups(self, step: int) -> np.ndarray:
        """Node ids active at ``step``, ordered by their smallest member prompt; shape (G,)."""
        step = self._check_step(step)
        first, end = self._spans
        nodes = np.flatnonzero((first <= step) & (step < end))
        return nodes[np.argsort(self.tree.node_min_members[nodes], kind="stable")]

    def group_index(self, step: int) -> np.ndarray:
        """(N,) int: for each prompt, the index of its group in ``active_groups(step)``."""
        return self.groups(step).row_group

    def groups(self, step: int) -> StepGroups:
        """The groups active at ``step`` with their representative rows and the row -> group index.

        Every host (the engine, the ComfyUI guider, the diffusers pipelines, resumable state) reads
        its per-step group bookkeeping here. The last few steps asked for are kept.
        """
        step = self._check_step(step)
        cache: dict[int, StepGroups] = self._groups_cache  # type: ignore[attr-defined]
        if step not in cache:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            nodes = self.active_groups(step)
            tree = self.tree
            # Active groups partition the prompts into contiguous runs of the dendrogram leaf order.
            by_start = np.argsort(tree.node_starts[nodes])
            row_group = np.empty(tree.n_prompts, dtype=np.int64)
            row_group[tree.leaf_order] = np.repeat(by_start, tree.node_sizes[nodes][by_start])
            cache[step] = StepGroups(step, nodes, tree.node_min_members[nodes], row_group)
        return cache[step]

    def span(self, node: int) -> tuple[int, int]:
        """(first_step, end_step) during which ``node`` is active; end exclusive, equal when never."""
        node = int(node)
        if not 0 <= node < self.tree.n_nodes:
            raise ValueError(f"node {node} is out of range 0..{self.tree.n_nodes - 1}")
        return int(self._spans[0][node]), int(self._spans[1][node])

    @cached_property
    def active_nodes(self) -> np.ndarray:
        """Ids of the nodes active at some step, ascending."""
        first, end = self._spans
        return np.flatnonzero(end > first)

    @cached_property
    def active_parents(self) -> np.ndarray:
        """(2N-1,) nearest ancestor that is active at some step, -1 when none (tops of the forest)."""
        tree = self.tree
        first, end = self._spans
        is_active = (end > first).tolist()
        parents = tree.node_parents.tolist()
        nearest = [-1] * tree.n_nodes
        for node in range(tree.n_nodes - 2, -1, -1):  # parents have larger ids: top-down
            p = parents[node]
            nearest[node] = p if is_active[p] else nearest[p]
        out = np.asarray(nearest, dtype=np.int64)
        out.setflags(write=False)
        return out

    @cached_property
    def evaluations_per_step(self) -> np.ndarray:
        """(K,) int: number of active groups (model evaluations without guidance) per step."""
        first, end = self._spans
        live = end > first
        delta = np.bincount(first[live], minlength=self.steps + 1) - np.bincount(
            end[live], minlength=self.steps + 1
        )
        counts = np.cumsum(delta)[: self.steps].astype(np.int64)
        counts.setflags(write=False)
        return counts

    @property
    def model_evaluations(self) -> int:
        """Sum of :attr:`evaluations_per_step` plus :attr:`probe_evaluations` (no guidance doubling)."""
        return int(self.evaluations_per_step.sum()) + self.probe_evaluations

    @property
    def independent_evaluations(self) -> int:
        """K x N: what ordinary sampling of every prompt costs."""
        return self.steps * self.tree.n_prompts

    @property
    def saving(self) -> float:
        """Fraction of model evaluations saved: 1 - model / independent (the same with guidance)."""
        return 1.0 - self.model_evaluations / self.independent_evaluations

    @property
    def evaluations_per_image(self) -> float:
        """Average model evaluations per prompt: model_evaluations / N."""
        return self.model_evaluations / self.tree.n_prompts

    def accounting(self, guidance: bool = False) -> dict[str, Any]:
        """Evaluation counts; with classifier-free guidance each group costs a conditional and an
        unconditional row, so both counts double and the saving is unchanged."""
        factor = 2 if guidance else 1
        return {
            "guidance": bool(guidance),
            "model_evaluations": factor * self.model_evaluations,
            "independent_evaluations": factor * self.independent_evaluations,
            "saving": self.saving,
        }

    # ----- serialisation -----
    def to_dict(self) -> dict[str, Any]:
        """The plan JSON (format "hierdiff.plan", version 1) that the web UI draws."""
        tree = self.tree
        first, end = self._spans
        parents = self.active_parents
        nodes = [
            {
                "id": node,
                "parent": None if parents[node] < 0 else int(parents[node]),
                "size": int(tree.node_sizes[node]),
                "height": float(tree.node_heights[node]),
                "first_step": int(first[node]),
                "end_step": int(end[node]),
            }
            for node in self.active_nodes.tolist()
        ]
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "prompts": None if tree.prompts is None else list(tree.prompts),
            "n_prompts": tree.n_prompts,
            "steps": self.steps,
            "tau": self.tau,
            "budget": None if self.budget is None else self.budget.to_dict(),
            "linkage": {
                "method": tree.method,
                "metric": tree.metric,
                "exact": tree.exact,
                "merges": merges_to_list(tree.linkage),
            },
            "thresholds": self.thresholds.tolist(),
            "nodes": nodes,
            "evaluations_per_step": self.evaluations_per_step.tolist(),
            "probe_evaluations": self.probe_evaluations,
            "model_evaluations": self.model_evaluations,
            "independent_evaluations": self.independent_evaluations,
            "saving": self.saving,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Rebuild a schedule from :meth:`to_dict` output; ValueError when fields disagree."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a hierdiff plan: format is {found!r}, expected {PLAN_FORMAT!r}")
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"unsupported plan version {data.get('version')!r} (this reads {PLAN_VERSION})")
        try:
            link = data["linkage"]
            prompts = data.get("prompts")
            tree = PromptTree(
                linkage=merges_from_list(link["merges"]),
                n_prompts=int(data["n_prompts"]),
                method=link["method"],
                metric=link["metric"],
                prompts=None if prompts is None else tuple(prompts),
                exact=bool(link.get("exact", True)),
            )
            budget = data.get("budget")
            schedule = cls(
                tree=tree,
                steps=data["steps"],
                tau=data["tau"],
                budget=None if budget is None else Budget(budget["mode"], budget["value"]),
                probe_evaluations=data.get("probe_evaluations", 0),  # absent before the first-step tree
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"plan JSON is missing or has a malformed field: {exc}") from None
        recomputed = schedule.to_dict()
        for key, value in recomputed.items():
            if key in data and data[key] != value:
                raise ValueError(f"plan JSON field {key!r} disagrees with the plan recomputed from its tree")
        return schedule

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def copies_split_step(plan: Plan, copies: int) -> int | None:
    """The first step at which the copies of each prompt (a tree from :func:`~.tree.with_copies`) are
    apart, in 0..K-1 (their height is positive, and the last threshold is 0); None for one copy."""
    if copies == 1:
        return None
    return int(plan.first_steps[1])  # leaf 1, the second copy of prompt 0, like every copy


def plan(
    tree: PromptTree,
    steps: int,
    budget: Budget | None = None,
    *,
    tau: float | None = None,
    target_saving: float | None = None,
    evaluations_per_image: float | None = None,
    probe_evaluations: int = 0,
) -> Plan:
    """Plan K steps for a tree from exactly one budget: a :class:`Budget`, or one of the keywords.

    Parameters
    ----------
    tree : PromptTree
    steps : int
        K >= 1.
    budget : Budget, optional
        What to plan for; the keywords below are the same three modes spelt out.
    tau : float, optional
        Threshold at step 0 (>= 0), used as given.
    target_saving : float, optional
        In [0, 1): the smallest tau whose saving is at least this.
    evaluations_per_image : float, optional
        In [1, K]: the smallest tau whose model evaluations per prompt are at most this.
    probe_evaluations : int
        Evaluations already spent choosing the tree; the budgets count them.

    The saving is monotone non-decreasing in tau and piecewise constant; it changes only where
    some threshold ``thr[k] = tau * (K-1-k) / (K-1)`` reaches some merge height h, i.e. at
    ``tau = h * (K-1) / (K-1-k)``. The search runs over these breakpoints, then narrows to the
    exact smallest float64 tau (numpy's linspace rounding included). ValueError names the
    largest attainable saving when the target cannot be met.
    """
    if budget is None:
        budget = Budget.from_options(tau, target_saving, evaluations_per_image)
    elif any(v is not None for v in (tau, target_saving, evaluations_per_image)):
        raise ValueError("give a Budget or one of tau, target_saving, evaluations_per_image, not both")
    probe = _check_probe(probe_evaluations)
    budget = Budget(*budget).check(steps, probe / tree.n_prompts)
    mode, value = budget
    if mode == "tau":
        return Plan(tree, steps, value, budget=budget, probe_evaluations=probe)

    n = tree.n_prompts
    total = steps * n
    sorted_heights = np.sort(tree.heights)

    def evaluations(tau_: float) -> int:
        return _model_evaluations(sorted_heights, n, thresholds(steps, tau_)) + probe

    if mode == "target_saving":

        def meets(tau_: float) -> bool:
            return 1.0 - evaluations(tau_) / total >= value

    else:

        def meets(tau_: float) -> bool:
            return evaluations(tau_) / n <= value

    found = _smallest_tau(sorted_heights, steps, meets)
    if found is None:
        # tau -> inf: one group on every step but the last, whose threshold is always 0.
        fewest = (steps - 1) + n - int(np.searchsorted(sorted_heights, 0.0, side="right")) + probe
        raise ValueError(
            f"{budget.describe()} is not attainable "
            f"for {n} prompts in {steps} steps: "
            f"the maximum attainable saving is {1.0 - fewest / total:.6f} "
            f"({fewest / n:.4g} evaluations per image)"
        )
    return Plan(tree, steps, found, budget=budget, probe_evaluations=probe)


def _smallest_tau(sorted_heights: np.ndarray, steps: int, meets) -> float | None:
    """Smallest float64 tau with meets(tau), for a predicate monotone in tau; None if none."""
    if meets(0.0):
        return 0.0
    positive = np.unique(sorted_heights[sorted_heights > 0])
    if steps == 1 or len(positive) == 0:
        return None  # thresholds are all 0 (K = 1) or nothing ever merges above 0
    ratios = (steps - 1) / (steps - 1 - np.arange(steps - 1, dtype=np.float64))
    breakpoints = np.unique(np.multiply.outer(positive, ratios).ravel())
    beyond = 2.0 * breakpoints[-1]
    if not meets(beyond):
        return None
    lo_i, hi_i = -1, len(breakpoints)  # meets(breakpoints[hi_i]) (beyond at the end), not at lo_i
    while hi_i - lo_i > 1:
        mid = (lo_i + hi_i) // 2
        if meets(float(breakpoints[mid])):
            hi_i = mid
        else:
            lo_i = mid
    lo = 0.0 if lo_i < 0 else float(breakpoints[lo_i])
    hi = beyond if hi_i == len(breakpoints) else float(breakpoints[hi_i])
    # The float breakpoint sits within rounding of its formula: bisect over float64 bit patterns
    # (ordered like the values for non-negative floats) for the exact smallest tau in (lo, hi].
    lo_bits = int(np.float64(lo).view(np.int64))
    hi_bits = int(np.float64(hi).view(np.int64))
    while hi_bits - lo_bits > 1:
        mid_bits = (lo_bits + hi_bits) // 2
        if meets(float(np.int64(mid_bits).view(np.float64))):
            hi_bits = mid_bits
        else:
            lo_bits = mid_bits
    return float(np.int64(hi_bits).view(np.float64))
