# SPDX-License-Identifier: GPL-3.0-or-later
"""Layouts: where each prompt's first-step prediction puts things, and sharing kept within a layout.

Sharing averages prompts in the early steps, and the early steps decide where things go: prompts that
place things differently and share those steps end up in one place (docs/fidelity.md, "Keeping layout").
These functions read a layout off the model's first-step predictions (what a first-step tree's probe
computes), group the prompts whose layouts agree, and keep a tree's sharing inside those groups.

A prediction's layout map is how far each pixel departs from the prediction's own per-channel mean
(the norm over channels), normalised to sum 1. A change of colour or background rescales or offsets
channels and leaves the map where it was; a move or a resize moves it.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from scipy.cluster.hierarchy import cophenet, fcluster, linkage
from scipy.spatial.distance import squareform

from .schedule import Plan
from .tree import PromptTree

LAYOUT_CUT = 0.25
"""Largest layout distance two prompts may have and still share steps. Measured on the shapes model's
development sets (tools/bench_layout.py): pairs differing in position alone lie at 0.26-0.54 (10th to 90th
percentile), pairs differing in colour, shape, size or background alone at 0.05-0.24."""


def layout_maps(predictions: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) first-step predictions -> (N, P) layout maps, P the spatial size; rows sum to 1."""
    x = np.asarray(predictions, dtype=np.float64)
    if x.ndim < 3 or len(x) == 0:
        raise ValueError(f"predictions must have shape (N, C, *spatial), got {x.shape}")
    spatial = tuple(range(2, x.ndim))
    departure = x - x.mean(axis=spatial, keepdims=True)
    maps = np.sqrt((departure**2).sum(axis=1)).reshape(len(x), -1)
    totals = maps.sum(axis=1, keepdims=True)
    flat = np.full_like(maps, 1.0 / maps.shape[1])  # a uniform prediction has no layout: spread evenly
    return np.where(totals > 0, maps / np.where(totals > 0, totals, 1.0), flat)


def layout_distances(predictions: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) predictions -> (N, N) layout distances in [0, 1]: half the L1 distance between
    two layout maps (0: the same places, 1: nothing in common)."""
    maps = layout_maps(predictions)
    return 0.5 * np.abs(maps[:, None, :] - maps[None, :, :]).sum(axis=-1)


def layout_groups(predictions: np.ndarray, cut: float | None = None) -> np.ndarray:
    """(N,) group labels 0..G-1, numbered by first member: complete linkage over layout distances cut
    at ``cut`` (None: :data:`LAYOUT_CUT`), so every two prompts of a group lie within ``cut`` of each
    other."""
    cut = LAYOUT_CUT if cut is None else cut
    if isinstance(cut, bool) or not (isinstance(cut, Real) and math.isfinite(cut) and cut >= 0):
        raise ValueError(f"layout cut must be a finite number >= 0, got {cut!r}")
    distances = layout_distances(predictions)
    n = len(distances)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    raw = fcluster(linkage(squareform(distances, checks=False), "complete"), cut, criterion="distance")
    _, first, labels = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # label by first member, so group 0 holds prompt 0
    return order[labels].astype(np.int64)


def within_groups(tree: PromptTree, groups: np.ndarray) -> tuple[PromptTree, float]:
    """The tree with every merge that joins two groups moved above all merges inside one.

    Returns ``(tree', ceiling)``: inside a group, ``tree'`` keeps the order and heights in which
    ``tree`` joins its prompts; groups join one another at heights above ``ceiling``, the highest merge
    inside a group (0 when none), so a plan whose tau is at most ``ceiling`` never shares across groups.
    ``groups``: (N,) labels, as :func:`layout_groups` returns.
    """
    labels = np.asarray(groups)
    n = tree.n_prompts
    if labels.shape != (n,):
        raise ValueError(f"groups must have shape ({n},) for {n} prompts, got {labels.shape}")
    if n == 1:
        return tree, 0.0
    effective = tree.linkage.copy()
    effective[:, 2] = tree.node_heights[n:]
    joined = squareform(cophenet(effective))  # (N, N): the height at which the tree joins i and j
    same = labels[:, None] == labels[None, :]
    ceiling = float(joined[same].max())
    top = 2.0 * ceiling + 1.0
    apart = np.where(same, joined, top + joined)  # across groups: above the ceiling, in the tree's order
    np.fill_diagonal(apart, 0.0)
    guarded = linkage(squareform(apart, checks=False), "single")
    return PromptTree(guarded, n, tree.method, tree.metric, tree.prompts, tree.exact), ceiling


def evaluations_within(tree: PromptTree, ceiling: float, steps: int) -> float:
    """Fewest model evaluations per image a plan of ``steps`` steps reaches sharing only merges at or
    below ``ceiling`` (tau = ceiling)."""
    return Plan(tree, steps, ceiling).evaluations_per_image


def steps_within(tree: PromptTree, ceiling: float, evaluations: float, steps: int) -> int:
    """The most steps, at most ``steps``, that reach ``evaluations`` per image sharing only merges at or
    below ``ceiling``; where none does, ``floor(evaluations)`` (at least 1), which shares nothing."""
    for candidate in range(steps, 0, -1):
        if candidate <= evaluations + 1e-9:
            return candidate  # fits unshared; fewer steps would only spend less
        if evaluations_within(tree, ceiling, candidate) <= evaluations + 1e-9:
            return candidate
    return 1
