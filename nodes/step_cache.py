# SPDX-License-Identifier: GPL-3.0-or-later
"""ComfyUI's EasyCache under hierarchical sampling: its settings, hierdiff's tree-aware cache.

EasyCache keeps one cached output difference per batch row and conditioning; a hierarchical call holds
one row per active group, and the groups change at every split, so its cache would neither fit nor mean
the right rows. When a MODEL patched by EasyCache feeds a hierarchical sampler, the sampler samples a
clone of it without EasyCache's own wrappers and applies the same rule with the same settings through
:class:`hierdiff_core.step_cache.GroupStepCache`, whose state follows the tree (docs/sampling.md,
"Step caching").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import comfy.patcher_extension
import numpy as np
import torch

from hierdiff_core.step_cache import GroupStepCache
from hierdiff_core.tree import PromptTree

EASYCACHE_KEY = "easycache"  # where ComfyUI's EasyCache and LazyCache keep their holder and wrappers
EASYCACHE_WRAPPERS = (
    comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
    comfy.patcher_extension.WrappersMP.CALC_COND_BATCH,
    comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
)


@dataclass(frozen=True)
class EasyCacheSettings:
    """What a user set on ComfyUI's EasyCache node."""

    reuse_threshold: float
    start_percent: float
    end_percent: float
    subsample: int

    def cache(self, model_sampling, tree: PromptTree) -> GroupStepCache:
        """A fresh tree-aware cache with these settings, for one sampling run over ``tree``."""
        return GroupStepCache(
            tree,
            self.reuse_threshold,
            start_sigma=float(model_sampling.percent_to_sigma(self.start_percent)),
            end_sigma=float(model_sampling.percent_to_sigma(self.end_percent)),
            subsample=self.subsample,
        )


def without_easycache(model_patcher):
    """(``model_patcher``, None), or, when ComfyUI's EasyCache (not LazyCache, which works on whole
    prompt rows) patches it, (a clone without EasyCache's wrappers and holder, its settings)."""
    holder = model_patcher.model_options.get("transformer_options", {}).get(EASYCACHE_KEY)
    if type(holder).__name__ != "EasyCacheHolder":
        return model_patcher, None
    settings = EasyCacheSettings(
        holder.reuse_threshold, holder.start_percent, holder.end_percent, holder.subsample_factor
    )
    clone = model_patcher.clone()
    for wrapper_type in EASYCACHE_WRAPPERS:
        clone.remove_wrappers_with_key(wrapper_type, EASYCACHE_KEY)
    del clone.model_options["transformer_options"][EASYCACHE_KEY]
    return clone, settings


class CachedDiffusionModel:
    """A ``DIFFUSION_MODEL`` wrapper answering the sub-calls of a skipped call from ``cache``.

    The guider sets :attr:`nodes` to the groups of each grouped call (None outside them: other callers
    pass through). ``channels`` is the latent's channel count (inputs may carry concatenated channels
    after it); ``answered(rows)`` is told how many rows the cache answered instead of the network.
    """

    def __init__(self, cache: GroupStepCache, channels: int, answered: Callable[[int], None]):
        self.cache = cache
        self.channels = int(channels)
        self.answered = answered
        self.nodes: np.ndarray | None = None

    def __call__(self, executor, *args, **kwargs):
        nodes = self.nodes
        x = args[0][:, : self.channels]
        uuids = _transformer_options(args, kwargs).get("uuids") or []
        if nodes is None or not uuids or x.shape[0] != len(uuids) * len(nodes):
            return executor(*args, **kwargs)
        parts = [slice(i * len(nodes), (i + 1) * len(nodes)) for i in range(len(uuids))]
        if self.cache.skipping:
            answers = [
                self.cache.answer(uuid, nodes, x[part]) for uuid, part in zip(uuids, parts, strict=True)
            ]
            if all(answer is not None for answer in answers):
                self.answered(x.shape[0])
                return torch.cat(answers)
        out = executor(*args, **kwargs)
        if out.shape == x.shape:  # a model answering in another shape (Cosmos video) is never cached
            for uuid, part in zip(uuids, parts, strict=True):
                self.cache.record(uuid, nodes, x[part], out[part])
        return out


def log_cache(cache: GroupStepCache | None) -> None:
    if cache is not None:
        logging.info(
            "hierdiff: EasyCache, tree-aware - threshold %s: %d of %d model calls answered from the cache",
            cache.reuse_threshold, cache.skipped, cache.calls,
        )  # fmt: skip


def _transformer_options(args: tuple, kwargs: dict) -> dict:
    """The transformer options of a diffusion model's forward: its last positional argument in most
    families, a keyword in others (the same places EasyCache reads them from)."""
    if args and isinstance(args[-1], dict):
        return args[-1]
    if isinstance(kwargs.get("transformer_options"), dict):
        return kwargs["transformer_options"]
    if len(args) > 1 and isinstance(args[-2], dict):
        return args[-2]
    return {}
