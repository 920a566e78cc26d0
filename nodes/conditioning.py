# SPDX-License-Identifier: GPL-3.0-or-later
"""ComfyUI CONDITIONING <-> the per-row tensors the engine mixes.

A prompt set travels between our nodes as a :class:`PromptTreeSet`: the tree, the prompt texts and
one CONDITIONING entry whose tensors hold one row per prompt (ComfyUI batches conditioning per
latent row natively). During sampling, :func:`group_model_conds` turns ComfyUI's processed
conditioning (``model_conds``: cross-attention tokens, SDXL's ``y``, unCLIP's adm, ...) into one
row per active group, with the engine's :class:`~hierdiff_core.engine.GroupConditioner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import comfy.conds
import numpy as np
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from hierdiff_core.engine import GroupConditioner
from hierdiff_core.tree import PromptTree

TOKEN_LENGTHS_KEY = "hier_token_lengths"
"""Conditioning extra set by :func:`stack_conditionings`: each prompt's token count before padding."""


@dataclass(frozen=True)
class PromptTreeSet:
    """The PROMPT_TREE socket value.

    tree: hierarchy over the N prompts; prompts: the N texts; conditioning: a ComfyUI CONDITIONING
    list with a single entry ``[tensor (N, T, C), {extras, tensors with N rows}]``;
    embedding_space: what the tree was clustered in ("clip_pooled", "sentence", "prior_image").
    """

    tree: PromptTree
    prompts: tuple[str, ...]
    conditioning: list
    embedding_space: str

    def __post_init__(self) -> None:
        if self.tree.n_prompts != len(self.prompts):
            raise ValueError(
                f"tree has {self.tree.n_prompts} prompts but {len(self.prompts)} texts were given"
            )
        rows = self.conditioning[0][0].shape[0]
        if len(self.conditioning) != 1 or rows != len(self.prompts):
            raise ValueError(f"conditioning must be one entry with {len(self.prompts)} rows, got {rows}")

    @property
    def context_dim(self) -> int:
        return int(self.conditioning[0][0].shape[-1])


def _repeat_tokens(tensor: torch.Tensor, length: int) -> torch.Tensor:
    # Repeating the token sequence leaves cross-attention unchanged; ComfyUI pads the same way.
    return tensor.repeat(1, length // tensor.shape[1], 1)


def stack_conditionings(per_prompt: list[list]) -> list:
    """Stack N single-prompt CONDITIONINGs ([[ (1, T_i, C), extras ]]) into one N-row entry.

    Token sequences of different lengths are padded by repetition to their least common multiple,
    as ComfyUI concatenates conditioning; tensor extras (pooled output, ...) are concatenated;
    other extras must agree across prompts.
    """
    for i, conditioning in enumerate(per_prompt):
        if len(conditioning) != 1:
            raise ValueError(
                f"prompt {i + 1} encodes to {len(conditioning)} conditioning entries; "
                "hierarchical sampling needs exactly one per prompt (no scheduled or combined conditioning)"
            )
    tensors = [c[0][0] for c in per_prompt]
    length = math.lcm(*(t.shape[1] for t in tensors))
    stacked = torch.cat([_repeat_tokens(t, length) for t in tensors])
    extras: dict = {}
    for key, first in per_prompt[0][0][1].items():
        values = [c[0][1].get(key) for c in per_prompt]
        if isinstance(first, torch.Tensor) and first.ndim > 0 and first.shape[0] == 1:
            if any(v is None for v in values):
                raise ValueError(f"conditioning extra {key!r} is missing for some prompts")
            extras[key] = torch.cat(values)
        elif all(_same(first, v) for v in values):
            extras[key] = first
        else:
            raise ValueError(f"conditioning extra {key!r} differs between prompts and cannot be batched")
    extras[TOKEN_LENGTHS_KEY] = tuple(int(t.shape[1]) for t in tensors)
    return [[stacked, extras]]


def check_token_lengths(prompt_set: PromptTreeSet, model) -> None:
    """Refuse prompts padded to a common token length on a MODEL for which padding is not neutral.

    Repeating a token sequence leaves a UNet's cross-attention unchanged, but transformers that attend
    jointly over text and image tokens (SD3's MMDiT, Flux, ...) weigh repeated text tokens more, so a
    padded prompt would no longer give what it gives alone. Raises ValueError naming the model type.
    """
    lengths = prompt_set.conditioning[0][1].get(TOKEN_LENGTHS_KEY, ())
    if len(set(lengths)) > 1 and not isinstance(model.model.diffusion_model, UNetModel):
        raise ValueError(
            f"prompt_tree input: its prompts encode to different token counts ({min(lengths)} to "
            f"{max(lengths)}), and {type(model.model).__name__} models cannot pad them to one length without "
            "changing the images: shorten the long prompts so that all encode to the same length"
        )


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a is b or a == b


def clustering_embeddings(conditioning: list) -> np.ndarray:
    """(N, D) vectors to cluster on: the pooled output when the encoder gives one, else the token mean."""
    tensor, extras = conditioning[0]
    pooled = extras.get("pooled_output")
    vectors = pooled if isinstance(pooled, torch.Tensor) else tensor.mean(dim=1)
    return vectors.float().cpu().numpy().astype(np.float64)


def group_model_conds(
    conds: list[dict] | None, conditioner: GroupConditioner, step: int, nodes: np.ndarray, n_rows: int
) -> list[dict] | None:
    """Processed ComfyUI conds (N rows each) -> the same conds with one row per group in ``nodes``.

    Per-row tensors (batch size N) are mixed per group; batch-1 tensors such as a shared negative
    prompt stay as they are (ComfyUI repeats them to the batch), as do constants.
    """
    if conds is None:
        return None
    grouped = []
    for entry in conds:
        entry = entry.copy()
        entry["model_conds"] = {
            key: _group_model_cond(value, conditioner, step, nodes, n_rows)
            for key, value in entry["model_conds"].items()
        }
        grouped.append(entry)
    return grouped


def _group_model_cond(value, conditioner: GroupConditioner, step: int, nodes: np.ndarray, n_rows: int):
    if isinstance(value, comfy.conds.CONDList):
        return value._copy_with([_group_rows(t, conditioner, step, nodes, n_rows) for t in value.cond])
    if isinstance(value, comfy.conds.CONDRegular) and isinstance(value.cond, torch.Tensor):
        return value._copy_with(_group_rows(value.cond, conditioner, step, nodes, n_rows))
    return value


def _group_rows(
    tensor: torch.Tensor, conditioner: GroupConditioner, step: int, nodes: np.ndarray, n_rows: int
):
    if n_rows > 1 and tensor.ndim > 0 and tensor.shape[0] == n_rows:
        return conditioner.rows_for(step, nodes, tensor)
    return tensor
