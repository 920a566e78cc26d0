# SPDX-License-Identifier: GPL-3.0-or-later
"""The one bridge between ComfyUI's sampling and the hierarchical engine.

:class:`HierarchicalGuider` is a ``comfy.samplers.CFGGuider``: ComfyUI's samplers, schedulers, CFG,
model patches and hooks all run unchanged on one latent row per prompt. The guider only wraps
ComfyUI's conditioned-batch computation (a ``CALC_COND_BATCH`` wrapper) so that every model call on
the N rows, the sampler's own and those of guidance functions such as PAG's, evaluates the model once
per active group through :class:`hierdiff_core.engine.GroupedEvaluator`, and gives stochastic samplers
noise that is shared inside a group. Every sampler node and the GUIDER node use this class: there is
one engine.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import comfy.conds
import comfy.k_diffusion.sampling as k_sampling
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.samplers
import numpy as np
import torch

from hierdiff_core.engine import (
    GroupConditioner,
    GroupedEvaluator,
    GroupNoise,
    fresh_noise,
    root_noise,
    step_for_sigma,
)
from hierdiff_core.schedule import Plan, copies_split_step
from hierdiff_core.schedule import plan as make_plan
from hierdiff_core.step_cache import GroupStepCache
from hierdiff_core.tree import PromptTree, build_tree

from .attention_guidance import GroupedAttentionMaps
from .checks import check_composable, check_images_per_prompt, check_sigmas
from .conditioning import PromptTreeSet, group_model_conds, text_padding, token_length_parts, with_copies
from .prior import EMBEDDING_SPACE as PRIOR_SPACE
from .prior import unclip_adm_rows
from .step_cache import CachedDiffusionModel, log_cache, without_easycache

NOISE_MODES = ("shared", "per_root")
TREE_SOURCES = ("prompt_tree", "first_step")


def probe_rows(tree_from: str, n_prompts: int) -> int:
    """Model evaluations a run spends choosing its tree before step 0: a first-step tree evaluates each
    of the ``n_prompts`` prompts once (before any copies), and a single prompt needs no tree."""
    return n_prompts if tree_from == "first_step" and n_prompts > 1 else 0


def probe_per_image(tree_from: str, n_prompts: int, copies: int) -> float:
    """What choosing the tree costs each image, in model evaluations: :func:`probe_rows` spread over the
    ``n_prompts * copies`` images (the budget pays for it)."""
    return probe_rows(tree_from, n_prompts) / (n_prompts * copies)


# Samplers whose default noise is a Brownian tree: a group's tree answers by noise level, so it is
# kept for the group's whole life; the others draw plain Gaussian noise per call.
_BROWNIAN_SAMPLER_FUNCTIONS = {
    getattr(k_sampling, f"sample_{name}")
    for name in (
        "dpmpp_sde",
        "dpmpp_sde_gpu",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_gpu",
        "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde_heun_gpu",
        "dpmpp_3m_sde",
        "dpmpp_3m_sde_gpu",
    )
}


@dataclass
class EvaluationCount:
    """Model evaluations of one run, in latent rows through the network: ``hierarchical`` counts every
    row that reached the diffusion model; ``independent`` what ordinary sampling of every prompt would
    have sent through it for the same calls."""

    hierarchical: int = 0
    independent: int = 0
    guided: bool = False
    cached: int = 0  # rows the step cache answered instead of the network (EasyCache)

    @property
    def saving(self) -> float:
        return 1.0 - self.hierarchical / self.independent if self.independent else 0.0


def measured_line(count: EvaluationCount) -> str:
    """What the model really evaluated, in latent rows (sampler calls per step and guidance included)."""
    guidance = ", conditional and unconditional" if count.guided else ""
    cached = f" ({count.cached:,} more answered by the step cache)" if count.cached else ""
    return (
        f"measured: {count.hierarchical:,} latent rows through the model{cached} instead of "
        f"{count.independent:,}{guidance}, {100 * count.saving:.1f} % saved"
    )


class HierarchicalGuider(comfy.samplers.CFGGuider):
    """CFG guider sampling one latent row per prompt with one model evaluation per active group.

    ``plan`` fixes the plan; when it is None the plan is made at sampling time from
    ``plan_fn(prompt_set, steps, probe_evaluations)`` (the step count comes with the sigmas, and with
    ``tree_from="first_step"`` the tree comes from :func:`first_step_tree` on the noise being sampled).
    ``sigmas`` is the whole schedule a trunk/branch run is part of; None means the sigmas given to
    :meth:`sample`. ``copies`` > 1 samples that many images per prompt (see :meth:`_copies_apart`).
    ``probe``: what a first-step probe run beforehand cost, when it chose ``prompt_set``'s tree (the plan
    and the measured count include it).
    """

    def __init__(
        self,
        model_patcher,
        prompt_set: PromptTreeSet,
        negative: list,
        cfg: float,
        *,
        plan: Plan | None = None,
        plan_fn=None,
        sigmas: torch.Tensor | None = None,
        max_batch: int = 64,
        noise_mode: str = "shared",
        mix: str = "mean",
        tree_from: str = "prompt_tree",
        copies: int = 1,
        probe: EvaluationCount | None = None,
    ):
        model_patcher, self.easycache = without_easycache(model_patcher)
        super().__init__(model_patcher)
        if plan is None and plan_fn is None:
            raise ValueError("HierarchicalGuider needs a plan or a plan_fn")
        if tree_from not in TREE_SOURCES:
            raise ValueError(f"tree_from must be one of {TREE_SOURCES}, got {tree_from!r}")
        if tree_from == "first_step" and plan_fn is None:
            raise ValueError("a first-step tree is chosen while sampling: give a plan_fn, not a plan")
        if probe is not None and (plan_fn is None or tree_from != "prompt_tree"):
            raise ValueError("a tree chosen by an earlier probe needs a plan_fn and tree_from='prompt_tree'")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.copies = check_images_per_prompt(copies)
        # Planned at sampling time, the set gets its copies then, from the set as given (a guider may
        # sample more than once); a given plan comes with its set, copies included.
        self.source_set = prompt_set
        self.prompt_set = prompt_set
        self.plan = plan
        self.plan_fn = plan_fn
        self.full_sigmas = sigmas
        self.max_batch = int(max_batch)
        self.noise_mode = noise_mode
        self.mix = mix
        self.tree_from = tree_from
        self.probe = probe
        self.negative = negative
        self.count = EvaluationCount()
        self._context = None
        self._cache: GroupStepCache | None = None
        self._cached_model: CachedDiffusionModel | None = None
        self._attention: GroupedAttentionMaps | None = None
        self.set_conds(prompt_set.conditioning, negative)
        self.set_cfg(cfg)

    @property
    def n_prompts(self) -> int:
        return self.prompt_set.tree.n_prompts

    def sample(
        self,
        noise,
        latent_image,
        sampler,
        sigmas,
        denoise_mask=None,
        callback=None,
        disable_pbar=False,
        seed=None,
    ):
        full_sigmas = (self.full_sigmas if self.full_sigmas is not None else sigmas).cpu()
        check_sigmas(full_sigmas)  # no step, no plan: say so before anything runs
        check_composable(self.model_options)
        seed = 0 if seed is None else int(seed)
        probe = self._plan_run(noise, latent_image, full_sigmas, denoise_mask, seed)
        # What ordinary sampling would cost counts no probe; what this run costs does.
        self.count = EvaluationCount(hierarchical=0 if probe is None else probe.hierarchical)
        noise, latent_image, denoise_mask = self._one_row_per_prompt(noise, latent_image, denoise_mask, seed)
        like = torch.zeros_like(noise[:1], device=self.model_patcher.load_device)
        sampler = _with_group_noise(sampler, self.plan, full_sigmas, seed, like)
        original_options = self.model_options
        self.model_options = self._grouped_model_options(full_sigmas, seed)
        try:
            split = self._copies_split(full_sigmas, sigmas)
            if split is None:
                return super().sample(
                    noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed
                )
            if split == 0:  # apart from the first step: every copy but the first starts from fresh noise
                if torch.count_nonzero(noise) > 0:
                    noise = self._copies_apart(noise.clone(), lambda fresh, _index: fresh, seed)
                return super().sample(
                    noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed
                )
            last: dict[str, torch.Tensor] = {}

            def keep_denoised(step, x0, x, total):
                last["x0"] = x0
                if callback is not None:
                    callback(step, x0, x, total)

            head = super().sample(
                noise, latent_image, sampler, sigmas[: split + 1], denoise_mask, keep_denoised, disable_pbar,
                seed,
            )  # fmt: skip
            head = self._renoised(head, last["x0"], sigmas[split], seed)
            if split == len(sigmas) - 1:
                return head  # a trunk ending where the copies part: its branch goes on from here

            def later(step, x0, x, total):
                if callback is not None:
                    callback(step + split, x0, x, len(sigmas) - 1)

            noise = torch.zeros_like(noise)  # the head's latents carry their noise
            tail = sigmas[split:]
            return super().sample(noise, head, sampler, tail, denoise_mask, later, disable_pbar, seed)
        finally:
            self.model_options = original_options
            self._context = None
            log_cache(self._cache)

    def _copies_split(self, full_sigmas: torch.Tensor, sigmas: torch.Tensor) -> int | None:
        """Where, in this run's ``sigmas``, the copies of each prompt part (an index into them), or None
        when they part outside it (a trunk before it already parted them) or there is one copy."""
        split = copies_split_step(self.plan, self.copies)
        if split is None:
            return None
        start = step_for_sigma(full_sigmas, float(sigmas[0]))
        if split == 0 and start == 0:
            return 0
        return split - start if start < split <= start + len(sigmas) - 1 else None

    def _copies_apart(self, rows: torch.Tensor, new_rows, seed: int) -> torch.Tensor:
        """``rows`` (N x copies, ...) with each copy but the first of every prompt replaced by
        ``new_rows(fresh, index)``: ``fresh`` the copies' own noise (engine.fresh_noise) and ``index``
        their row numbers."""
        index = np.flatnonzero(np.arange(self.n_prompts) % self.copies != 0)
        fresh = fresh_noise(self.plan.tree, seed, index, rows[:1])
        index = torch.as_tensor(index, device=rows.device)
        rows[index] = new_rows(fresh, index).to(rows)
        return rows

    def _renoised(self, head: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, seed: int):
        """The latents where the copies part: each copy but the first restarts from the shared prediction
        of the clean latent at the last step (``denoised``), noised to ``sigma`` with its own fresh noise,
        so copies are as far apart as independent samples at that noise level and alike below it.
        ``head`` and the result are what ComfyUI's sampling returns (its noise scaling undone)."""
        model_sampling = self.model_patcher.get_model_object("model_sampling")
        sigma = sigma.reshape(1).to(head.device)
        denoised = denoised.to(head)

        def restarted(fresh: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            noisy = model_sampling.noise_scaling(sigma, fresh.to(head), denoised.index_select(0, index))
            return model_sampling.inverse_noise_scaling(sigma, noisy)

        return self._copies_apart(head.clone(), restarted, seed)

    def _plan_run(
        self, noise, latent_image, full_sigmas: torch.Tensor, denoise_mask, seed: int
    ) -> EvaluationCount | None:
        """Plan for the run's step count (choosing a first-step tree first, when asked); returns what
        the first-step probe cost, None when there was none."""
        if self.plan_fn is None:
            return None
        probe = self.probe
        prompt_set = self.source_set
        rows = probe_rows("first_step" if probe is not None else self.tree_from, prompt_set.tree.n_prompts)
        if rows and probe is None:
            prompt_set, probe = first_step_tree(
                self.model_patcher, prompt_set, self.negative, self.cfg, noise, latent_image,
                full_sigmas, self.max_batch, denoise_mask, seed,
            )  # fmt: skip
        self.prompt_set = with_copies(prompt_set, self.copies)
        if self.copies > 1:
            self.set_conds(self.prompt_set.conditioning, self.negative)
        self.plan = self.plan_fn(self.prompt_set, len(full_sigmas) - 1, rows)
        return probe

    def _one_row_per_prompt(self, noise, latent_image, denoise_mask, seed: int):
        """Noise, latent and mask with N rows (views where one row is shared)."""
        n = self.n_prompts
        latent_image = _rows(latent_image, n, "latent")
        # Disabled noise (all zeros: DisableNoise, a branch continuing a trunk) stays disabled.
        if self.noise_mode == "per_root" and torch.count_nonzero(noise) > 0:
            noise = root_noise(self.plan, seed, noise[:1])
        noise = _rows(noise, n, "noise")
        if denoise_mask is not None:
            denoise_mask = _rows(denoise_mask, n, "noise mask")
        return noise, latent_image, denoise_mask

    def _grouped_model_options(self, full_sigmas: torch.Tensor, seed: int) -> dict:
        """A copy of the model options whose conditioned-batch computation evaluates each active group
        once (through the engine) and counts what it evaluates."""
        plan, n = self.plan, self.n_prompts
        cancel_check = comfy.model_management.throw_exception_if_processing_interrupted
        evaluator = GroupedEvaluator(plan, self._evaluate, self.max_batch, cancel_check)
        conditioner = GroupConditioner(plan, self.mix)
        row_conds = self._per_row_model_conds(seed)
        options = comfy.model_patcher.create_model_options_clone(self.model_options)
        model_sampling = self.model_patcher.get_model_object("model_sampling")
        cache = None if self.easycache is None else self.easycache.cache(model_sampling, plan.tree)
        self._cache = cache
        self._attention = GroupedAttentionMaps.find(options)

        def group_rows(executor, model, conds, x, timestep, model_options):
            # Every call on this run's N rows is grouped: the sampler's [positive, negative] and the
            # extra calls of guidance functions (PAG's [positive], ...), so they share and are counted
            # alike. A call on other rows (a context window's slice) is not this plan's: passed on.
            seen = self.count.hierarchical + self.count.cached
            if x.ndim == 0 or x.shape[0] != n:
                out = executor(model, conds, x, timestep, model_options)
                self.count.independent += self.count.hierarchical + self.count.cached - seen
                return out
            step = step_for_sigma(full_sigmas, float(timestep.flatten()[0]))
            groups = plan.groups(step)
            positive = {entry.get("uuid") for entry in self.conds.get("positive") or []} - {None}
            conds = [_with_model_conds(c, row_conds) if _is_positive(c, positive) else c for c in conds]
            self._context = (conds, model, model_options, conditioner, executor)
            self.count.guided |= len(conds) > 1 and conds[1] is not None
            if cache is not None:
                inputs = _model_inputs(model, x, timestep, groups.representatives)
                cache.begin(float(timestep.flatten()[0]), groups.nodes, inputs)
            if self._attention is not None:
                self._attention.begin_step()
            try:
                out = evaluator(step, x, timestep)
            finally:
                if cache is not None:
                    cache.end()
            if self._attention is not None:
                self._attention.end_step(groups.nodes, groups.row_group)
            # Every group sends the same rows (its cond entries, areas, those in their timestep range),
            # so one row per prompt would have sent n / groups times as many.
            sent = self.count.hierarchical + self.count.cached - seen
            self.count.independent += sent * n // len(groups.nodes)
            return out

        def count_rows(executor, x, *args, **kwargs):
            self.count.hierarchical += int(x.shape[0])  # what reaches the network, whoever calls it
            return executor(x, *args, **kwargs)

        def answered_by_cache(rows: int) -> None:
            # counted on their way to the network, which the cache then spared them
            self.count.hierarchical -= rows
            self.count.cached += rows

        wrappers = [
            (comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, group_rows),
            (comfy.patcher_extension.WrappersMP.APPLY_MODEL, count_rows),
            (comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, self._prepare_for_batch),
        ]
        self._cached_model = None
        if cache is not None:
            channels = self.model_patcher.model.latent_format.latent_channels
            self._cached_model = CachedDiffusionModel(cache, channels, answered_by_cache)
            wrappers.append((comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, self._cached_model))
        for wrapper_type, wrapper in wrappers:
            comfy.patcher_extension.add_wrapper_with_key(
                wrapper_type, "hierdiff", wrapper, options, is_model_options=True
            )
        return options

    def _evaluate(
        self, step: int, x: torch.Tensor, sigma: torch.Tensor, nodes: np.ndarray
    ) -> list[torch.Tensor]:
        conditioner = self._context[3]
        padding = text_padding(self._context[1])
        parts = token_length_parts(self.prompt_set.conditioning, conditioner.plan.tree, nodes, padding)
        if len(parts) == 1:
            return self._evaluate_groups(step, x, sigma, nodes)
        # Groups of different token lengths cannot share one tokens tensor: one call per length.
        outputs = [self._evaluate_groups(step, *_rows_at(p, x, sigma), nodes[p]) for p in parts]
        order = torch.as_tensor(np.argsort(np.concatenate(parts)))
        return [torch.cat(c).index_select(0, order.to(c[0].device)) for c in zip(*outputs, strict=True)]

    def _evaluate_groups(
        self, step: int, x: torch.Tensor, sigma: torch.Tensor, nodes: np.ndarray
    ) -> list[torch.Tensor]:
        conds, model, model_options, conditioner, executor = self._context
        padding = text_padding(model, tuple(x.shape))  # a text mask spans the call's image tokens too
        grouped = [group_model_conds(c, conditioner, step, nodes, self.n_prompts, padding) for c in conds]

        def call() -> list[torch.Tensor]:
            if self._attention is None:
                return executor(model, grouped, x, sigma, model_options)
            return self._attention.record(nodes, lambda: executor(model, grouped, x, sigma, model_options))

        if self._cached_model is None:
            return call()
        self._cached_model.nodes = nodes
        try:
            return call()
        finally:
            self._cached_model.nodes = None

    def _per_row_model_conds(self, seed: int) -> dict[str, comfy.conds.CONDRegular]:
        """Per-prompt model inputs that ComfyUI cannot batch itself: unCLIP's ``y`` sums all the image
        embeddings of a conditioning into one vector, so prior-space trees bring one row per prompt."""
        if self.prompt_set.embedding_space != PRIOR_SPACE:
            return {}
        return {"y": comfy.conds.CONDRegular(unclip_adm_rows(self.prompt_set, self.model_patcher, seed))}

    def _prepare_for_batch(self, executor, model, noise_shape, conds, model_options=None, **options):
        # ComfyUI sizes memory from the latent batch; the model only ever sees max_batch groups. Newer
        # hosts pass more keyword options (force_full_load, force_offload): they go through unchanged.
        shape = [min(int(noise_shape[0]), self.max_batch), *noise_shape[1:]]
        return executor(model, shape, conds, model_options=model_options, **options)


def first_step_predictions(
    model_patcher,
    prompt_set: PromptTreeSet,
    negative: list,
    cfg: float,
    noise: torch.Tensor,
    latent_image: torch.Tensor,
    sigmas: torch.Tensor,
    max_batch: int,
    denoise_mask: torch.Tensor | None,
    seed: int,
) -> tuple[torch.Tensor, EvaluationCount]:
    """Every prompt's predicted clean latent after the first step, (N, C, [T,] H, W), and what it cost.

    Each prompt is evaluated once at ``sigmas[0]`` from the run's own starting noise (its first row),
    with guidance as configured: what the model itself draws for it early on.
    """
    probe = HierarchicalGuider(
        model_patcher,
        prompt_set,
        negative,
        cfg,
        plan=make_plan(prompt_set.tree, 1, tau=0.0),
        sigmas=sigmas[:2],
        max_batch=max_batch,
    )
    predictions: dict[str, torch.Tensor] = {}

    def keep_prediction(step: int, denoised: torch.Tensor, _x, _total) -> None:
        predictions["x0"] = denoised

    probe.sample(
        noise[:1],
        latent_image,
        comfy.samplers.sampler_object("euler"),  # exactly one model call per row, at sigmas[0]
        sigmas[:2],
        denoise_mask=denoise_mask,
        callback=keep_prediction,
        disable_pbar=True,
        seed=seed,
    )
    return predictions["x0"].float().cpu(), probe.count


def first_step_tree(
    model_patcher,
    prompt_set: PromptTreeSet,
    negative: list,
    cfg: float,
    noise: torch.Tensor,
    latent_image: torch.Tensor,
    sigmas: torch.Tensor,
    max_batch: int,
    denoise_mask: torch.Tensor | None,
    seed: int,
) -> tuple[PromptTreeSet, EvaluationCount]:
    """The prompt set re-clustered on the model's first-step predictions, and what that cost.

    The predictions (:func:`first_step_predictions`) are clustered with Ward linkage over Euclidean
    distances: prompts whose predictions agree there are what the model itself draws alike early on,
    whatever their texts' embeddings say.
    """
    x0, count = first_step_predictions(
        model_patcher, prompt_set, negative, cfg, noise, latent_image, sigmas, max_batch, denoise_mask, seed
    )
    # Only the tree changes: embedding_space still says what the conditioning carries (prior-space sets
    # bring per-prompt unCLIP rows).
    return dataclasses.replace(prompt_set, tree=predicted_tree(prompt_set, x0)), count


def predicted_tree(prompt_set: PromptTreeSet, x0: torch.Tensor) -> PromptTree:
    """Ward linkage over Euclidean distances between the prompts' first-step predictions (N, ...)."""
    flat = x0.reshape(prompt_set.tree.n_prompts, -1).numpy()
    return build_tree(flat, "ward", "euclidean", prompt_set.prompts)


def _model_inputs(model, x: torch.Tensor, timestep: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """The network's latent input of each group (G, C, ...), from its representative row of ``x`` (``rows``,
    (G,)), as ComfyUI's ``apply_model`` scales and casts it: what the step cache compares between calls."""
    index = torch.as_tensor(rows, device=x.device)
    sigma = timestep.index_select(0, index.to(timestep.device)) if timestep.ndim else timestep
    inputs = model.model_sampling.calculate_input(sigma, x.index_select(0, index))
    return inputs.to(model.manual_cast_dtype or model.get_dtype())


def _rows_at(positions: np.ndarray, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The rows at ``positions`` of each per-row tensor; 0-d tensors pass unchanged."""
    index = torch.as_tensor(positions)
    return [t.index_select(0, index.to(t.device)) if t.ndim > 0 else t for t in tensors]


def _is_positive(conds: list[dict] | None, positive: set) -> bool:
    """Whether a cond list of a model call is the run's positive (ComfyUI gives every entry a uuid that
    its processing keeps)."""
    return bool(conds) and all(entry.get("uuid") in positive for entry in conds)


def _with_model_conds(conds: list[dict] | None, model_conds: dict) -> list[dict] | None:
    if conds is None or not model_conds:
        return conds
    return [{**entry, "model_conds": {**entry["model_conds"], **model_conds}} for entry in conds]


def _rows(tensor: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """One latent row per prompt: a batch of one is shared by every prompt (as a view, no copy)."""
    if tensor.shape[0] == n:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(n, *tensor.shape[1:])
    raise ValueError(f"{name} has batch size {tensor.shape[0]}; expected 1 (shared) or {n} (one per prompt)")


def _with_group_noise(sampler, plan: Plan, sigmas: torch.Tensor, seed: int, like: torch.Tensor):
    """The same sampler, drawing its per-step noise per group (see GroupNoise); like: (1, ...) one latent
    row. Samplers without a noise_sampler pass through."""
    if not isinstance(sampler, comfy.samplers.KSAMPLER):
        return sampler
    parameters = inspect.signature(sampler.sampler_function).parameters
    if "noise_sampler" not in parameters:
        return sampler
    if sampler.sampler_function in _BROWNIAN_SAMPLER_FUNCTIONS:
        sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()

        def make_source(group_seed: int):
            return k_sampling.BrownianTreeNoiseSampler(like, sigma_min, sigma_max, seed=group_seed, cpu=True)

        per_call = False
    else:

        def make_source(group_seed: int):
            return k_sampling.default_noise_sampler(like, seed=group_seed)

        per_call = True
    noise = GroupNoise(plan, sigmas, seed, make_source, per_call=per_call)
    return comfy.samplers.KSAMPLER(
        sampler.sampler_function, {**sampler.extra_options, "noise_sampler": noise}, sampler.inpaint_options
    )
