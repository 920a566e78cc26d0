# SPDX-License-Identifier: GPL-3.0-or-later
"""The hierarchical denoising engine: one model evaluation per active group, not per prompt.

A sampler keeps one latent row per prompt. Members of a group hold identical rows until the
group splits, so a model call needs only one representative row per active group, conditioned on
the group's mixed conditioning; the result is written back to every member. Everything the
sampler does between model calls stays element-wise on the N rows, which is why any sampler
(multistep history, ancestral noise, ...) keeps working unchanged.

This module never imports ComfyUI or diffusers: callers hand in an ``evaluate`` function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from .schedule import BranchSchedule
from .tree import PromptTree

ConditioningMix = Literal["mean", "medoid"]
CONDITIONING_MIXES: tuple[str, ...] = ("mean", "medoid")

Outputs = torch.Tensor | Sequence[torch.Tensor]


def step_for_sigma(sigmas: torch.Tensor, sigma: float) -> int:
    """Index k of the sampling step whose interval ``(sigmas[k+1], sigmas[k]]`` holds ``sigma``.

    sigmas: (K + 1,) descending noise levels of the whole schedule. Samplers that evaluate the
    model between steps (heun, dpm_2, ...) thus map each call to the step it belongs to. A small
    relative tolerance absorbs float round-off when ``sigma`` is one of the schedule's values.
    """
    levels = sigmas.detach().double().cpu().numpy()
    tolerance = 1e-5 * max(abs(float(sigma)), 1e-8)
    reached = int(np.count_nonzero(levels >= float(sigma) - tolerance))
    return min(max(reached - 1, 0), len(levels) - 2)


def group_seed(seed: int, tree: PromptTree, node: int) -> int:
    """Stable 63-bit seed for a group, from the run's seed and the group's path in the tree.

    A group's random numbers therefore never depend on batch chunking or on other groups.
    """
    return _stable_seed(int(seed), tree.path(node))


def _stable_seed(*parts: object) -> int:
    """A 63-bit seed from its parts' text, the same on every machine and Python run."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def group_mean(rows: torch.Tensor, members: Sequence[np.ndarray]) -> torch.Tensor:
    """Mean of ``rows`` over each group's members.

    rows: (N, ...); members: G index arrays into the N rows. Returns (G, ...). The mean of a
    group's rows equals the member-count-weighted mean of its children's means.
    """
    return torch.stack([_mean_rows(rows, m) for m in members])


def group_medoid(rows: torch.Tensor, members: Sequence[np.ndarray]) -> torch.Tensor:
    """For each group, the member row nearest (L2) to the group's mean. rows: (N, ...) -> (G, ...)."""
    picked = []
    for m in members:
        if len(m) == 1:
            picked.append(int(m[0]))
            continue
        block = rows[torch.as_tensor(m, device=rows.device)].flatten(1).float()
        distances = (block - block.mean(0, keepdim=True)).norm(dim=1)
        picked.append(int(m[int(torch.argmin(distances))]))
    return rows[torch.as_tensor(picked, device=rows.device)]


def _mean_rows(rows: torch.Tensor, member_rows: np.ndarray) -> torch.Tensor:
    if len(member_rows) == 1:
        return rows[int(member_rows[0])]
    index = torch.as_tensor(member_rows, device=rows.device)
    return rows.index_select(0, index).mean(0)


class GroupConditioner:
    """Mixes per-prompt conditioning rows into per-group rows, caching groups that are still active.

    One instance serves one sampling run. ``rows`` tensors are identified by ``id()``: callers pass
    the same tensor objects at every call (ComfyUI keeps its processed conditioning for the run).
    Only multi-member groups are cached, and a group leaves the cache when it is no longer active,
    so the cache never holds more rows than the conditioning itself.
    """

    def __init__(self, schedule: BranchSchedule, mix: ConditioningMix = "mean"):
        if mix not in CONDITIONING_MIXES:
            raise ValueError(f"conditioning mix must be one of {CONDITIONING_MIXES}, got {mix!r}")
        self.schedule = schedule
        self.mix = mix
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._cached_step = -1

    def rows_for(self, step: int, nodes: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
        """rows: (N, ...) per-prompt conditioning -> (len(nodes), ...) mixed per group."""
        if step != self._cached_step:
            active = set(int(n) for n in self.schedule.active_groups(step))
            self._cache = {key: v for key, v in self._cache.items() if key[1] in active}
            self._cached_step = step
        tree = self.schedule.tree
        out = []
        for node in nodes:
            node = int(node)
            members = tree.members(node)
            if len(members) == 1:
                out.append(rows[int(members[0])])
                continue
            key = (id(rows), node)
            if key not in self._cache:
                mixer = group_mean if self.mix == "mean" else group_medoid
                self._cache[key] = mixer(rows, [members])[0]
            out.append(self._cache[key])
        return torch.stack(out)


class GroupedEvaluator:
    """Evaluates a model once per active group and scatters the result to every member row.

    ``evaluate(x_g, *row_args_g, nodes)`` receives the representative rows (G', ...) of at most
    ``max_batch`` groups, the matching rows of each per-row argument, and the groups' node ids;
    it returns a tensor (G', ...) or a sequence of such tensors. ``before_batch`` runs before each
    model batch (ComfyUI wires its cancel check there).
    """

    def __init__(
        self,
        schedule: BranchSchedule,
        evaluate: Callable[..., Outputs],
        max_batch: int = 64,
        before_batch: Callable[[], None] | None = None,
    ):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.schedule = schedule
        self.evaluate = evaluate
        self.max_batch = int(max_batch)
        self.before_batch = before_batch
        self.evaluations = 0
        self._step_cache: dict[int, tuple[np.ndarray, torch.Tensor, torch.Tensor]] = {}

    def _groups(self, step: int, device: torch.device) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(nodes (G,), representative row of each group (G,), group index of each row (N,))."""
        if step not in self._step_cache:
            nodes = np.asarray(self.schedule.active_groups(step))
            tree = self.schedule.tree
            representatives = torch.as_tensor([int(tree.members(int(n))[0]) for n in nodes], dtype=torch.long)
            row_group = torch.as_tensor(np.asarray(self.schedule.group_index(step)), dtype=torch.long)
            self._step_cache = {step: (nodes, representatives, row_group)}
        nodes, representatives, row_group = self._step_cache[step]
        return nodes, representatives.to(device), row_group.to(device)

    def __call__(self, step: int, x: torch.Tensor, *row_args: torch.Tensor) -> Outputs:
        """x: (N, ...) latent rows; row_args: (N, ...) each. Returns ``evaluate``'s result with N rows."""
        if x.shape[0] != self.schedule.tree.n_prompts:
            raise ValueError(f"expected {self.schedule.tree.n_prompts} latent rows, got {x.shape[0]}")
        nodes, representatives, row_group = self._groups(step, x.device)
        chunks: list[Outputs] = []
        for start in range(0, len(nodes), self.max_batch):
            if self.before_batch is not None:
                self.before_batch()
            rows = representatives[start : start + self.max_batch]
            args = [a.index_select(0, rows.to(a.device)) if a.ndim > 0 else a for a in row_args]
            chunks.append(
                self.evaluate(x.index_select(0, rows), *args, nodes[start : start + self.max_batch])
            )
            self.evaluations += len(rows)
        if isinstance(chunks[0], torch.Tensor):
            return torch.cat(chunks).index_select(0, row_group)
        outputs = zip(*chunks, strict=True)
        return [torch.cat(parts).index_select(0, row_group.to(parts[0].device)) for parts in outputs]


class GroupNoise:
    """Per-step noise identical within a group and distinct across groups.

    ``make_source(seed, like)`` builds a noise source for one group, where ``like`` is one latent
    row (1, ...) and the source is called as ``source(sigma, sigma_next) -> (1, ...)``. Seeds come
    from :func:`group_seed`, so results never depend on batching. ``sigmas`` is the whole run's
    (K + 1,) schedule, which places each call in its step. With ``per_call`` (plain Gaussian
    sources) a fresh source is seeded for every (group, step, call within the step), so a run
    resumed at a later step draws exactly what an uninterrupted run would; without it each group
    keeps one source (a Brownian tree answers by noise level, not by call order).
    Called like a k-diffusion noise sampler: ``noise(sigma, sigma_next) -> (N, ...)``.
    """

    def __init__(
        self,
        schedule: BranchSchedule,
        sigmas: torch.Tensor,
        seed: int,
        like: torch.Tensor,
        make_source: Callable[[int, torch.Tensor], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
        per_call: bool,
    ):
        self.schedule = schedule
        self.sigmas = sigmas
        self.seed = int(seed)
        self.like = like[:1]
        self.make_source = make_source
        self.per_call = per_call
        self._sources: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
        self._step = -1
        self._call_in_step = 0

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        step = step_for_sigma(self.sigmas, float(sigma))
        self._call_in_step = self._call_in_step + 1 if step == self._step else 0
        self._step = step
        nodes = self.schedule.active_groups(step)
        tree = self.schedule.tree
        per_group = []
        if self.per_call:
            for node in nodes:
                seed = _stable_seed(group_seed(self.seed, tree, int(node)), step, self._call_in_step)
                per_group.append(self.make_source(seed, self.like)(sigma, sigma_next))
        else:
            active = set(int(n) for n in nodes)
            self._sources = {n: s for n, s in self._sources.items() if n in active}
            for node in nodes:
                node = int(node)
                if node not in self._sources:
                    self._sources[node] = self.make_source(group_seed(self.seed, tree, node), self.like)
                per_group.append(self._sources[node](sigma, sigma_next))
        row_group = torch.as_tensor(np.asarray(self.schedule.group_index(step)), dtype=torch.long)
        return torch.cat(per_group).index_select(0, row_group.to(per_group[0].device))


def root_noise(schedule: BranchSchedule, seed: int, like: torch.Tensor) -> torch.Tensor:
    """Starting noise with one independent draw per group active at the first step.

    like: (1, ...) one latent row (its shape and dtype). Returns (N, ...) on the CPU.
    """
    nodes = schedule.active_groups(0)
    draws = []
    for node in nodes:
        generator = torch.Generator(device="cpu").manual_seed(group_seed(seed, schedule.tree, int(node)))
        draws.append(torch.randn(like.shape, dtype=like.dtype, generator=generator, device="cpu"))
    row_group = torch.as_tensor(np.asarray(schedule.group_index(0)), dtype=torch.long)
    return torch.cat(draws).index_select(0, row_group)
