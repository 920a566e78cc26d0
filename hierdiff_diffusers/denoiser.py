# SPDX-License-Identifier: GPL-3.0-or-later
"""The grouped denoiser: hierarchical sampling inside any supported diffusers pipeline's own loop.

:func:`grouped` swaps a pipeline's ``unet``/``transformer`` for a :class:`GroupedDenoiser` for the
duration of a ``with`` block; the pipeline's ``__call__`` then runs its own loop, scheduler,
classifier-free guidance and decoding unchanged on N latent rows, one per prompt, the way the ComfyUI
guider lets ComfyUI's samplers run unchanged. At each model call the grouped denoiser

1. places the call in the plan: the timestep is found in the scheduler's timesteps (the first match
   at or after the previous call's position, so schedulers that repeat a timestep, like Heun's
   second-order calls, move on, and a second call at the same timestep, like Flux's true CFG or SD3's
   skip-layer guidance, stays), and position j of P timesteps belongs to step ``j * K // P``;
2. views the batch as (halves, N, ...): one half without guidance, [unconditional, conditional]
   with it, each in prompt order, as every supported pipeline lays it out;
3. evaluates one representative row per active group through the engine's
   :class:`~hierdiff_core.engine.GroupedEvaluator`, in batches of at most ``max_batch`` groups (both
   halves of a group in the same batch, laid out like the pipeline's), each group conditioned on
   its members' mixed conditioning (:mod:`hierdiff_diffusers.families`);
4. scatters the result to every member row, straight into the pipeline's (halves x N) layout.

Noise. Stochastic schedulers (DDPM, Euler ancestral, SDE variants) draw from the ``generator`` list
the pipeline was given, one generator per row (diffusers' ``randn_tensor`` draws row i from
``generator[i]``). Pipelines that call ``scheduler.step`` without it (SD3's and Flux's) would leave a
stochastic scheduler drawing from torch's global generator, different for every row; inside the
block their scheduler's ``step`` is given the list too. :attr:`GroupedRun.generator` is that list,
kept by the engine's
:class:`~hierdiff_core.engine.GroupGenerators`: at the first call of each step its entries are
replaced by copies of their group's generator, so members draw identical noise, and a group created
by a split starts its own generator (seeded from the run's seed and its path in the tree). The
pipeline's starting latents, drawn from the same list before the first step, are therefore also
identical within a group. Nothing depends on ``max_batch``.

Memory. The N latent rows and the pipeline's conditioning are held once, by the pipeline; the
adapter adds per call the gather of one row per group, the mixed conditioning of multi-member groups
(cached while they stay active), and the one N-row scatter of the result.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hierdiff_core.engine import GroupConditioner, GroupedEvaluator, GroupGenerators
from hierdiff_core.schedule import Plan

from .families import Family, family_of

UNSUPPORTED_SCHEDULERS = {
    "DPMSolverSDEScheduler": "it draws its noise from one Brownian tree over the whole batch, not from "
    "the per-row generators, so members of a group would receive different noise",
}
"""Schedulers the grouped denoiser refuses, with why."""

_TIMESTEP = "timestep"


class RowGenerators:
    """The pipeline's per-row ``generator`` list, kept group-consistent by :class:`GroupGenerators`.

    ``rows`` is the list object handed to the pipeline; its entries are replaced in place when a step
    starts, which the pipeline's scheduler sees because it holds the same list.
    """

    def __init__(self, plan: Plan, seed: int, states: dict[int, torch.Tensor] | None, first_step: int):
        self.noise = GroupGenerators(plan, seed, states)
        self.step = first_step
        self.rows: list[torch.Generator] = self.noise.rows(first_step)

    def enter(self, step: int) -> None:
        """Called at the first model call of ``step``: keep what the last step drew, hand out this one's."""
        if step != self.step:
            self.noise.advance(self.step, self.rows)
            self.rows[:] = self.noise.rows(step)
            self.step = step

    def states(self) -> dict[int, torch.Tensor]:
        """{node: generator state} after everything drawn so far (resumable bit for bit)."""
        self.noise.advance(self.step, self.rows)
        return self.noise.states()


@dataclass
class _RowArgument:
    """A per-row conditioning tensor seen at a call, viewed as (halves, N, ...) once."""

    tensor: torch.Tensor  # kept so its id() stays unique while the views are cached
    halves: list[torch.Tensor]
    mix: str
    conditioner: GroupConditioner
    last_step: int = -1


@dataclass
class _Call:
    """The pipeline's arguments of the model call being evaluated."""

    halves: int
    arguments: dict[str, Any]  # everything but the latents, the timestep and the per-row tensors
    rows: dict[str, _RowArgument]  # per-row tensors by path ("added_cond_kwargs.text_embeds")
    timestep: Callable[[int], Any]  # batch size -> the timestep argument for that batch
    wrap: Callable[[torch.Tensor], Any] = field(default=lambda out: (out,))


class GroupedDenoiser(torch.nn.Module):
    """Stands in for a pipeline's denoiser (see the module docstring); looks like the real module.

    The real module is its child ``inner`` (so ``.to()``, ``.parameters()`` and hook removal reach it);
    every attribute the wrapper does not define (``config``, ``add_embedding``, ``cache_context``,
    ...) is the real module's. Counters: ``evaluator.evaluations`` (group rows, as the plan counts)
    and ``denoiser_rows`` (rows through the real module, both halves with guidance).
    """

    def __init__(
        self,
        real: torch.nn.Module,
        family: Family,
        plan: Plan,
        scheduler: Any,
        pipeline_name: str,
        noise: RowGenerators | None = None,
        max_batch: int = 64,
        first_step: int = 0,
        mix: str = "mean",
        on_step: Callable[[int, int], None] | None = None,
    ):
        super().__init__()
        self.inner = real
        self.family = family
        self.plan = plan
        self.scheduler = scheduler
        self.pipeline_name = pipeline_name
        self.noise = noise
        self.mix = mix
        self.first_step = int(first_step)
        self.on_step = on_step
        self.evaluator = GroupedEvaluator(plan, self._evaluate, max_batch=max_batch, row_dim=1)
        self.denoiser_rows = 0
        self.step = -1  # the step of the latest call
        self._signature = inspect.signature(type(real).forward)
        self._timesteps: np.ndarray | None = None
        self._position = -1
        self._arguments: dict[int, _RowArgument] = {}
        self._call: _Call | None = None

    # ----- looking like the real module -----
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "inner" not in modules:
                raise
            return getattr(modules["inner"], name)

    @property
    def config(self) -> Any:
        return self.inner.config

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def device(self) -> torch.device:
        return self.inner.device

    # ----- the call -----
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The real module's signature; the batch holds N rows, or 2N with guidance (halves)."""
        arguments = self._bind(args, kwargs)
        sample = arguments.pop(self.family.sample)
        n = self.plan.tree.n_prompts
        batch = int(sample.shape[0])
        halves = batch // n
        if batch % n or halves not in (1, 2):
            raise ValueError(
                f"{self.pipeline_name}'s {self.family.denoiser} got {batch} latent rows for {n} prompts: "
                f"hierdiff needs one row per prompt (num_images_per_prompt=1), two with guidance"
            )
        value, timestep = self._timestep(arguments.pop(_TIMESTEP), batch)
        step = self._locate(value)
        rows = self._row_arguments(arguments, batch, halves, step)
        self._call = _Call(halves, arguments, rows, timestep)
        try:
            out = self.evaluator(step, sample.unflatten(0, (halves, n)))
            return self._call.wrap(out.flatten(0, 1))
        finally:
            self._call = None

    def _bind(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name (the real forward's), keyword-only extras merged in."""
        bound = self._signature.bind(None, *args, **kwargs)  # None stands in for self
        arguments: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = self._signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise ValueError(f"{self.pipeline_name}: unexpected positional arguments {name}")
            else:
                arguments[name] = value
        return arguments

    def _timestep(self, timestep: Any, batch: int) -> tuple[float, Callable[[int], Any]]:
        """The call's timestep as a number on the scheduler's scale, and a maker of the argument for a
        batch of given size (a timestep per row is expanded, as the pipeline expands it)."""
        if not isinstance(timestep, torch.Tensor):
            return float(timestep) * self.family.timestep_scale, lambda size: timestep
        flat = timestep.reshape(-1)
        if flat.numel() > 1:
            if flat.numel() != batch or not bool((flat == flat[0]).all()):
                raise ValueError(
                    f"{self.pipeline_name}'s {self.family.denoiser} got per-row timesteps: hierdiff "
                    "needs every row at the same timestep"
                )
            first = flat[:1]
            return float(first) * self.family.timestep_scale, lambda size: first.expand(size)
        return float(flat[0]) * self.family.timestep_scale, lambda size: timestep

    def _locate(self, value: float) -> int:
        """The plan step of a call at scheduler timestep ``value`` (see the module docstring)."""
        if self._timesteps is None:
            self._timesteps = self._schedule()
        timesteps = self._timesteps
        # Candidates in order of preference: the next position, the same one again, then later ones.
        start = max(self._position, 0)
        order = [self._position + 1, *range(start, len(timesteps))]
        order = [p for p in dict.fromkeys(order) if 0 <= p < len(timesteps)]
        distances = [abs(timesteps[p] - value) for p in order]
        best = order[int(np.argmin(distances))]  # argmin keeps the first, most preferred, of ties
        # Loose enough for a timestep passed in half precision (Flux divides it by 1000 first).
        if abs(timesteps[best] - value) > 1e-2 * max(abs(value), 1.0):
            raise ValueError(
                f"{self.pipeline_name} called its {self.family.denoiser} at timestep {value:g}, which is not "
                f"among its scheduler's timesteps from position {start} on: hierdiff cannot place the call"
            )
        self._position = best
        if self.first_step:
            step = self.first_step + best
        else:
            step = best * self.plan.steps // len(timesteps)
        if step != self.step:
            self._enter(step)
        return step

    def _schedule(self) -> np.ndarray:
        """The scheduler's timesteps, checked against the plan's steps (read at the first call, after
        the pipeline's ``set_timesteps``)."""
        timesteps = self.scheduler.timesteps.detach().double().cpu().numpy()
        steps = self.plan.steps
        running = getattr(self.scheduler, "num_inference_steps", None)
        remaining = steps - self.first_step
        fits = len(timesteps) == remaining if self.first_step else len(timesteps) >= steps
        if not fits or (running is not None and int(running) != steps):
            raise ValueError(
                f"{self.pipeline_name}'s scheduler {type(self.scheduler).__name__} runs "
                f"{running if running is not None else len(timesteps)} steps ({len(timesteps)} timesteps) "
                f"but the plan has {steps} steps"
                + (f" from step {self.first_step}" if self.first_step else "")
                + ": call the pipeline with num_inference_steps equal to the plan's steps"
            )
        return timesteps

    def _enter(self, step: int) -> None:
        """A new step starts: hand out its generators and forget conditioning no longer passed."""
        if self.noise is not None:
            self.noise.enter(step)
        previous = self.step
        if previous >= 0:
            self.finished(previous)
        self._arguments = {k: v for k, v in self._arguments.items() if v.last_step >= previous}
        self.step = step

    def finished(self, step: int) -> None:
        """Report ``step`` done (its last model call is over) to ``on_step(step, groups active)``."""
        if self.on_step is not None:
            self.on_step(step, int(self.plan.evaluations_per_step[step]))

    def _row_arguments(
        self, arguments: dict[str, Any], batch: int, halves: int, step: int
    ) -> dict[str, _RowArgument]:
        """Pull the per-row tensors out of ``arguments`` (in place); refuse unknown tensors."""
        rows: dict[str, _RowArgument] = {}
        for name, value in list(arguments.items()):
            nested = any(path.startswith(name + ".") for path in self.family.rows)
            if isinstance(value, dict) and nested:
                kept = {}
                for key, item in value.items():
                    path = f"{name}.{key}"
                    if self._is_row(path, item):
                        rows[path] = self._argument(path, item, batch, halves, step)
                    else:
                        kept[key] = item
                arguments[name] = kept
            elif self._is_row(name, value):
                rows[name] = self._argument(name, value, batch, halves, step)
                del arguments[name]
        return rows

    def _is_row(self, path: str, value: Any) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        if path in self.family.rows:
            return True
        if path in self.family.shared:
            return False
        raise ValueError(
            f"{self.pipeline_name}'s {self.family.denoiser} was called with {path}, a tensor hierdiff does "
            "not know how to share between the prompts of a group"
        )

    def _argument(self, path: str, tensor: torch.Tensor, batch: int, halves: int, step: int) -> _RowArgument:
        if tensor.shape[0] != batch:
            raise ValueError(
                f"{self.pipeline_name}'s {self.family.denoiser} got {path} with {tensor.shape[0]} rows for "
                f"a batch of {batch}"
            )
        entry = self._arguments.get(id(tensor))
        if entry is None or entry.tensor is not tensor:
            views = list(tensor.unflatten(0, (halves, self.plan.tree.n_prompts)))
            mix = self.family.rows[path]
            if mix == "same":
                for view in views:
                    if not torch.equal(view, view[:1].expand_as(view)):
                        raise ValueError(
                            f"{self.pipeline_name}: the denoiser argument {path} differs between prompts; "
                            "prompts that share a model evaluation need it equal"
                        )
            entry = _RowArgument(tensor, views, mix, GroupConditioner(self.plan, self.mix))
            self._arguments[id(tensor)] = entry
        entry.last_step = step
        return entry

    def _mixed(self, entry: _RowArgument, step: int, nodes: np.ndarray) -> torch.Tensor:
        """(halves * G', ...) the groups' rows of one argument, halves stacked as the batch is."""
        tree = self.plan.tree
        parts = []
        for rows in entry.halves:
            if entry.mix == "mean":
                parts.append(entry.conditioner.rows_for(step, nodes, rows))
            elif entry.mix == "same":
                index = torch.as_tensor(tree.node_min_members[nodes], device=rows.device)
                parts.append(rows.index_select(0, index))
            else:  # union of 0/1 attention masks
                masks = []
                for node in nodes:
                    members = torch.as_tensor(tree.members(int(node)), device=rows.device)
                    masks.append(rows.index_select(0, members).amax(0))
                parts.append(torch.stack(masks))
        return torch.cat(parts)

    def _evaluate(self, step: int, x_g: torch.Tensor, nodes: np.ndarray) -> torch.Tensor:
        """The engine's ``evaluate``: x_g (halves, G', ...) representative rows -> (halves, G', ...)."""
        call = self._call
        size = x_g.shape[0] * x_g.shape[1]
        kwargs = {name: dict(v) if isinstance(v, dict) else v for name, v in call.arguments.items()}
        kwargs[self.family.sample] = x_g.flatten(0, 1)
        kwargs[_TIMESTEP] = call.timestep(size)
        for path, entry in call.rows.items():
            name, _, key = path.partition(".")
            if key:
                kwargs[name][key] = self._mixed(entry, step, nodes)
            else:
                kwargs[name] = self._mixed(entry, step, nodes)
        out = self.inner(**kwargs)
        self.denoiser_rows += size
        if isinstance(out, tuple):
            prediction = out[0]
            call.wrap = lambda merged: (merged,)
        else:  # a diffusers output dataclass: rebuilt around the merged prediction
            field_name = next(iter(out.keys()))
            prediction = out[field_name]
            call.wrap = lambda merged: type(out)(**{field_name: merged})
        return prediction.unflatten(0, (x_g.shape[0], x_g.shape[1]))


@dataclass
class GroupedRun:
    """What a :func:`grouped` block hands back: pass ``generator`` to the pipeline call.

    Attributes
    ----------
    denoiser : the :class:`GroupedDenoiser` installed in the pipeline.
    generator : (N,) the per-row generators for the pipeline's ``generator=`` argument.
    """

    denoiser: GroupedDenoiser
    noise: RowGenerators

    @property
    def generator(self) -> list[torch.Generator]:
        return self.noise.rows

    @property
    def evaluations(self) -> int:
        """Group evaluations so far, as :attr:`Plan.model_evaluations` counts them (no guidance doubling;
        schedulers calling the model twice per step count twice)."""
        return self.denoiser.evaluator.evaluations

    @property
    def denoiser_rows(self) -> int:
        """Latent rows that went through the real denoiser (both halves with guidance)."""
        return self.denoiser.denoiser_rows

    @property
    def step(self) -> int:
        """The step of the latest model call (-1 before the first)."""
        return self.denoiser.step

    def generator_states(self) -> dict[int, torch.Tensor]:
        """{node: generator state} after everything drawn so far, for resuming."""
        return self.noise.states()


def check_scheduler(pipe: Any) -> None:
    """ValueError naming the scheduler when the grouped denoiser cannot give it per-group noise."""
    name = type(pipe.scheduler).__name__
    if name in UNSUPPORTED_SCHEDULERS:
        raise ValueError(f"hierdiff cannot sample with {name}: {UNSUPPORTED_SCHEDULERS[name]}")


def _give_generator(scheduler: Any, rows: list[torch.Generator]) -> bool:
    """Make ``scheduler.step`` use the per-row generators when a pipeline calls it without one (an
    instance attribute, removed after the block); True when patched."""
    step = scheduler.step
    if "generator" not in inspect.signature(step).parameters or "step" in vars(scheduler):
        return False

    @functools.wraps(step)
    def step_with_generator(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("generator") is None:
            kwargs["generator"] = rows
        return step(*args, **kwargs)

    scheduler.step = step_with_generator
    return True


@contextmanager
def grouped(
    pipe: Any,
    plan: Plan,
    *,
    seed: int,
    max_batch: int = 64,
    generator_states: dict[int, torch.Tensor] | None = None,
    first_step: int = 0,
    mix: str = "mean",
    on_step: Callable[[int, int], None] | None = None,
) -> Iterator[GroupedRun]:
    """Install a :class:`GroupedDenoiser` in ``pipe`` for the block; the real denoiser is back after it,
    also when the block raises.

    Parameters
    ----------
    pipe : a supported diffusers pipeline (:func:`~hierdiff_diffusers.families.family_of`).
    plan : the plan for the N prompts; call the pipeline with N prompt rows in the tree's prompt order,
        ``num_inference_steps=plan.steps`` and ``generator=run.generator``.
    seed : the run's seed; group generators come from it and each group's path in the tree.
    max_batch : most groups in one denoiser batch (each group is two rows with guidance).
    generator_states, first_step : continue a run whose steps before ``first_step`` are done (the
        scheduler must then run only the remaining ``plan.steps - first_step`` timesteps).
    mix : how groups' "mean" conditioning is mixed ("mean" or "medoid", the engine's mixes).
    on_step : ``on_step(step, groups)`` after each step's last model call (when the next step starts,
        and for the last step when the block ends without error), with the step's active groups.
    """
    family = family_of(pipe)
    check_scheduler(pipe)
    name = family.denoiser
    real = vars(pipe).get(name)
    if not isinstance(real, torch.nn.Module):
        raise ValueError(f"{type(pipe).__name__} has no {name} module to stand in for")
    if isinstance(real, GroupedDenoiser):
        raise ValueError(f"{type(pipe).__name__}'s {name} is already grouped")
    noise = RowGenerators(plan, seed, generator_states, first_step)
    denoiser = GroupedDenoiser(
        real, family, plan, pipe.scheduler, type(pipe).__name__, noise, max_batch, first_step, mix, on_step
    )
    # Straight into the instance dict: DiffusionPipeline.__setattr__ would rewrite the pipeline's
    # config to name the wrapper's class.
    vars(pipe)[name] = denoiser
    scheduler = pipe.scheduler
    patched = _give_generator(scheduler, noise.rows)
    try:
        yield GroupedRun(denoiser, noise)
        if denoiser.step >= 0:
            denoiser.finished(denoiser.step)
    finally:
        vars(pipe)[name] = real
        if patched:
            del scheduler.step
        if getattr(pipe, "_all_hooks", None):
            # Model offloading re-hooks every component at the end of a call, the wrapper included;
            # hook the real module again.
            pipe.enable_model_cpu_offload(device=getattr(pipe, "_offload_device", None))


@contextmanager
def timesteps_from(scheduler: Any, first: int) -> Iterator[None]:
    """While open, the scheduler's ``set_timesteps`` keeps only the timesteps from step ``first`` on, so a
    pipeline called with the run's step count continues a run from step ``first`` (resuming, or a subtree
    after the cut of a distributed run). ValueError for a scheduler given custom timesteps."""
    if first == 0:
        yield
        return
    if getattr(scheduler, "custom_timesteps", False):
        raise ValueError(
            f"continuing a run from step {first} needs the scheduler's own timesteps, not custom ones"
        )
    full = type(scheduler).set_timesteps

    def set_timesteps(*args: Any, **kwargs: Any) -> None:
        full(scheduler, *args, **kwargs)
        scheduler.timesteps = scheduler.timesteps[first:]

    scheduler.set_timesteps = set_timesteps
    try:
        yield
    finally:
        del scheduler.set_timesteps
