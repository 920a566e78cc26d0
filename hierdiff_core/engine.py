# SPDX-License-Identifier: GPL-3.0-or-later
"""The hierarchical denoising engine: one model evaluation per active group, not per prompt.

A sampler keeps one latent row per prompt. Members of a group hold identical rows until the
group splits, so a model call needs only one representative row per active group, conditioned on
the group's mixed conditioning; the result is written back to every member. Everything the
sampler does between model calls stays element-wise on the N rows, which is why any sampler
(multistep history, ancestral noise, ...) keeps working unchanged.

Randomness is per group, in one implementation for every host (:class:`GroupSources`): a group's
sources are seeded from the run's seed and the group's path in the tree, so members draw identical
noise, siblings distinct noise after a split, and nothing depends on batching.

This module never imports ComfyUI or diffusers: callers hand in an ``evaluate`` function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Generic, Literal, TypeVar

import numpy as np
import torch

from .schedule import Plan
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


def fresh_noise(tree: PromptTree, seed: int, rows: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(len(rows), ...) standard normal noise, one row per leaf in ``rows``, shaped like ``like``'s rows
    (1, ...) and on its device and dtype; each from its own generator, seeded by the run's seed and the
    leaf's path (apart from the leaf's group noise), so it never depends on which other rows are drawn."""
    generated = [
        torch.randn(
            tuple(like.shape[1:]),
            generator=torch.Generator().manual_seed(_stable_seed(int(seed), "fresh", tree.path(int(row)))),
        )
        for row in rows
    ]
    return torch.stack(generated).to(device=like.device, dtype=like.dtype)


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

    def __init__(self, plan: Plan, mix: ConditioningMix = "mean"):
        if mix not in CONDITIONING_MIXES:
            raise ValueError(f"conditioning mix must be one of {CONDITIONING_MIXES}, got {mix!r}")
        self.plan = plan
        self.mix = mix
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._cached_step = -1

    def rows_for(self, step: int, nodes: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
        """rows: (N, ...) per-prompt conditioning -> (len(nodes), ...) mixed per group."""
        if step != self._cached_step:
            active = set(self.plan.groups(step).nodes.tolist())
            self._cache = {key: v for key, v in self._cache.items() if key[1] in active}
            self._cached_step = step
        tree = self.plan.tree
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

    ``evaluate(step, x_g, *row_args_g, nodes)`` receives the step, the representative rows (G', ...)
    of at most ``max_batch`` groups, the matching rows of each per-row argument, and the groups' node
    ids; it returns a tensor (G', ...) or a sequence of such tensors. ``before_batch`` runs before each
    model batch (ComfyUI wires its cancel check there). ``row_dim`` is the dimension holding the rows
    in the inputs and outputs (1 for a diffusers guidance batch viewed as (halves, N, ...), so the
    N-row result is already in the pipeline's [unconditional, conditional] layout).
    """

    def __init__(
        self,
        plan: Plan,
        evaluate: Callable[..., Outputs],
        max_batch: int = 64,
        before_batch: Callable[[], None] | None = None,
        row_dim: int = 0,
    ):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.plan = plan
        self.evaluate = evaluate
        self.max_batch = int(max_batch)
        self.before_batch = before_batch
        self.row_dim = int(row_dim)
        self.evaluations = 0
        self._on_device: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    def _indices(self, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's representative rows (G,) and row -> group index (N,) as tensors on ``device``."""
        if self._on_device is None or self._on_device[:2] != (step, device):
            groups = self.plan.groups(step)
            representatives = torch.tensor(groups.representatives, dtype=torch.long, device=device)
            row_group = torch.tensor(groups.row_group, dtype=torch.long, device=device)
            self._on_device = (step, device, representatives, row_group)
        return self._on_device[2], self._on_device[3]

    def __call__(self, step: int, x: torch.Tensor, *row_args: torch.Tensor) -> Outputs:
        """x: (N, ...) latent rows; row_args: (N, ...) each (N along ``row_dim``). Returns ``evaluate``'s
        result with N rows."""
        dim = self.row_dim
        if x.shape[dim] != self.plan.tree.n_prompts:
            raise ValueError(f"expected {self.plan.tree.n_prompts} latent rows, got {x.shape[dim]}")
        nodes = self.plan.groups(step).nodes
        representatives, row_group = self._indices(step, x.device)
        chunks: list[Outputs] = []
        for start in range(0, len(nodes), self.max_batch):
            if self.before_batch is not None:
                self.before_batch()
            rows = representatives[start : start + self.max_batch]
            args = [a.index_select(dim, rows.to(a.device)) if a.ndim > dim else a for a in row_args]
            chunks.append(
                self.evaluate(step, x.index_select(dim, rows), *args, nodes[start : start + self.max_batch])
            )
            self.evaluations += len(rows)

        def merged(parts: Sequence[torch.Tensor]) -> torch.Tensor:
            # One batch needs no concatenation: the scatter below is the only N-row copy.
            return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim)

        if isinstance(chunks[0], torch.Tensor):
            return merged(chunks).index_select(dim, row_group)
        outputs = zip(*chunks, strict=True)
        return [merged(parts).index_select(dim, row_group.to(parts[0].device)) for parts in outputs]


def scatter_groups(plan: Plan, step: int, per_group: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-group rows (each (1, ...), ordered like ``plan.groups(step).nodes``) -> (N, ...) member rows."""
    row_group = torch.tensor(plan.groups(step).row_group, dtype=torch.long)
    return torch.cat(list(per_group)).index_select(0, row_group.to(per_group[0].device))


Source = TypeVar("Source")


class GroupSources(Generic[Source]):
    """Per-group random sources: the one implementation of hierarchical randomness.

    ``make_source(seed)`` builds one group's source (a torch.Generator, a k-diffusion noise sampler,
    ...). Seeds come from :func:`group_seed`, so a group's draws never depend on batching or on other
    groups. With ``per_call`` a fresh source is seeded for every (group, step, call within the step),
    so a run resumed at a later step draws exactly what an uninterrupted run would; without it each
    group keeps one source from the step it becomes active until it splits (a Brownian tree answers
    by noise level; a generator continues where it stopped), and :meth:`keep` records sources that
    advanced outside (generators copied per row).
    """

    def __init__(
        self,
        plan: Plan,
        seed: int,
        make_source: Callable[[int], Source],
        per_call: bool,
        kept: dict[int, Source] | None = None,
    ):
        self.plan = plan
        self.seed = int(seed)
        self.make_source = make_source
        self.per_call = per_call
        self.kept: dict[int, Source] = dict(kept or {})
        self._step = -1
        self._call_in_step = 0

    def for_step(self, step: int) -> list[Source]:
        """One source per group active at ``step``, ordered like ``plan.groups(step).nodes``."""
        self._call_in_step = self._call_in_step + 1 if step == self._step else 0
        self._step = step
        nodes = self.plan.groups(step).nodes.tolist()
        tree = self.plan.tree
        if self.per_call:
            return [
                self.make_source(_stable_seed(group_seed(self.seed, tree, node), step, self._call_in_step))
                for node in nodes
            ]
        kept = {}
        for node in nodes:
            fresh = node not in self.kept
            kept[node] = self.make_source(group_seed(self.seed, tree, node)) if fresh else self.kept[node]
        self.kept = kept
        return [kept[node] for node in nodes]

    def keep(self, step: int, sources: Sequence[Source]) -> None:
        """Record the sources of the groups active at ``step`` (ordered like their nodes)."""
        self.kept = dict(zip(self.plan.groups(step).nodes.tolist(), sources, strict=True))


class GroupNoise:
    """Per-step noise identical within a group and distinct across groups, for k-diffusion samplers.

    ``make_source(seed)`` builds one group's noise source, called as ``source(sigma, sigma_next) ->
    (1, ...)``; ``sigmas`` is the whole run's (K + 1,) schedule, which places each call in its step.
    Called like a k-diffusion noise sampler: ``noise(sigma, sigma_next) -> (N, ...)``. See
    :class:`GroupSources` for ``per_call``.
    """

    def __init__(
        self,
        plan: Plan,
        sigmas: torch.Tensor,
        seed: int,
        make_source: Callable[[int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
        per_call: bool,
    ):
        self.plan = plan
        self.sigmas = sigmas
        self.sources = GroupSources(plan, seed, make_source, per_call)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        step = step_for_sigma(self.sigmas, float(sigma))
        return scatter_groups(self.plan, step, [s(sigma, sigma_next) for s in self.sources.for_step(step)])


class GroupGenerators:
    """A torch.Generator per group, for schedulers that draw their own noise from per-row generators
    (diffusers' ``scheduler.step(..., generator=[one per row])``).

    :meth:`rows` hands out one generator per row, each a copy of its group's, so members draw
    identical noise; :meth:`advance` keeps the representatives' advanced states. :meth:`states` and
    the ``states`` argument make a run resumable bit for bit.
    """

    def __init__(self, plan: Plan, seed: int, states: dict[int, torch.Tensor] | None = None):
        self.plan = plan
        kept = {int(node): _generator_from_state(state) for node, state in (states or {}).items()}
        self.sources = GroupSources(plan, seed, _seeded_generator, per_call=False, kept=kept)

    def rows(self, step: int) -> list[torch.Generator]:
        """(N,) generators for the rows at ``step``."""
        per_group = [g.get_state() for g in self.sources.for_step(step)]
        return [_generator_from_state(per_group[g]) for g in self.plan.groups(step).row_group.tolist()]

    def advance(self, step: int, rows: Sequence[torch.Generator]) -> None:
        """Keep the states the rows' generators reached (a representative's stands for its group)."""
        self.sources.keep(step, [rows[r] for r in self.plan.groups(step).representatives.tolist()])

    def states(self) -> dict[int, torch.Tensor]:
        """{node: generator state} of the groups kept now."""
        return {node: g.get_state() for node, g in self.sources.kept.items()}


def _seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _generator_from_state(state: torch.Tensor) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.set_state(state)
    return generator


def root_noise(plan: Plan, seed: int, like: torch.Tensor) -> torch.Tensor:
    """Starting noise with one independent draw per group active at the first step.

    like: (1, ...) one latent row (its shape and dtype). Returns (N, ...) on the CPU.
    """
    generators = GroupSources(plan, seed, _seeded_generator, per_call=False).for_step(0)
    draws = [torch.randn(like.shape, dtype=like.dtype, generator=g, device="cpu") for g in generators]
    return scatter_groups(plan, 0, draws)
