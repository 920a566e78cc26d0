# SPDX-License-Identifier: GPL-3.0-or-later
"""ComfyUI's conditioning nodes on the positive prompts of a PROMPT_TREE.

Two thin adapters: "Prompt Tree Conditioning" gives the tree's conditioning as an ordinary CONDITIONING
(one entry, one row per prompt), so any stock conditioning node applies to every prompt at once
(ControlNetApplyAdvanced with its image and VAE, ConditioningSetArea, ConditioningSetTimestepRange,
ConditioningCombine with a shared extra conditioning, ...); "Prompt Tree Set Conditioning" puts the
result back into the tree. The hierarchical samplers then mix every per-prompt tensor per group, keep
one-row tensors shared, and ComfyUI applies areas, timestep ranges and ControlNets per entry as it does
for one prompt (docs/sampling.md, "Composing with other nodes").

Set refuses, with one line naming its conditioning input, what grouping cannot keep per prompt: entries
or tensors of another row count than the prompts' or one, conditioning made from another prompt set,
token counts changed on prompts of different lengths, and images or masks per prompt (ComfyUI hands
those to a model call by row position, and a grouped call holds one row per group).
"""

from __future__ import annotations

import dataclasses

import torch
from comfy_api.latest import io

from .conditioning import TOKEN_LENGTHS_KEY, PromptTreeSet, prompt_entry
from .prior import EMBEDDING_SPACE as PRIOR_SPACE
from .sockets import PROMPT_TREE

_INPUT = "conditioning input"
_FROM_THE_TREE = "make it from this prompt_tree with Prompt Tree Conditioning"


def tree_conditioning(prompt_set: PromptTreeSet) -> list:
    """The tree's CONDITIONING as a new list of entries (their extras copied, the tensors shared)."""
    return [[tokens, dict(extras)] for tokens, extras in prompt_set.conditioning]


def with_conditioning(prompt_set: PromptTreeSet, conditioning: list) -> PromptTreeSet:
    """``prompt_set`` with ``conditioning`` (made from its own by ComfyUI's conditioning nodes), checked.

    Every entry holds one row per prompt or one row shared by all; at least one holds the prompts' own
    rows with their token lengths. Raises ValueError naming the conditioning input otherwise, and for
    what grouping cannot keep per prompt (see the module docstring).
    """
    n = prompt_set.tree.n_prompts
    if not conditioning:
        raise ValueError(
            f"{_INPUT} is empty: connect the CONDITIONING of Prompt Tree Conditioning, after the "
            "conditioning nodes"
        )
    if prompt_set.embedding_space == PRIOR_SPACE and len(conditioning) != 1:
        raise ValueError(
            f"{_INPUT} has {len(conditioning)} entries, but this prompt_tree holds prior image embeddings, "
            "which ride on a single entry: apply ControlNet, area or timestep range without "
            "ConditioningCombine"
        )
    lengths = tuple(_tree_lengths(prompt_set))
    checked = []
    for index, (tokens, extras) in enumerate(conditioning, start=1):
        _check_rows(index, "tokens", tokens, n)
        _check_mask(index, extras.get("mask"))
        _check_control(index, extras.get("control"))
        for key, value in extras.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                _check_rows(index, repr(key), value, n)
        extras = _checked_token_lengths(index, tokens, extras, lengths, n)
        checked.append([tokens, extras])
    if not any(TOKEN_LENGTHS_KEY in extras and tokens.shape[0] == n for tokens, extras in checked):
        raise ValueError(
            f"{_INPUT} was not made from this prompt_tree: none of its entries holds the prompts' own rows; "
            f"{_FROM_THE_TREE}, then the conditioning nodes"
        )
    return dataclasses.replace(prompt_set, conditioning=checked)


def _tree_lengths(prompt_set: PromptTreeSet) -> list[int]:
    """Each prompt's own token count in the tree as Prompt Set Cluster made it."""
    tokens, extras = prompt_entry(prompt_set.conditioning)
    return [int(length) for length in extras.get(TOKEN_LENGTHS_KEY, (tokens.shape[1],) * tokens.shape[0])]


def _check_rows(index: int, what: str, tensor: torch.Tensor, n: int) -> None:
    rows = int(tensor.shape[0])
    if rows not in (1, n):
        raise ValueError(
            f"{_INPUT}: entry {index} has {what} of {rows} rows but prompt_tree has {n} prompts: every entry "
            "must hold one row per prompt (made from this prompt_tree by Prompt Tree Conditioning) or one "
            "row shared by every prompt"
        )


def _check_mask(index: int, mask: object) -> None:
    if isinstance(mask, torch.Tensor) and mask.ndim == 3 and mask.shape[0] > 1:
        raise ValueError(
            f"{_INPUT}: entry {index} has a mask of {mask.shape[0]} rows, but ComfyUI hands masks to a model "
            "call by row position and hierarchical sampling evaluates one row per group of prompts: give one "
            "mask (batch 1), shared by every prompt"
        )


def _check_control(index: int, control: object) -> None:
    """Every ControlNet (or T2I adapter) of the entry's chain has one image, shared by every prompt."""
    while control is not None:
        images = [getattr(control, "cond_hint_original", None), *getattr(control, "extra_concat_orig", [])]
        for image in images:
            if isinstance(image, torch.Tensor) and image.ndim > 0 and image.shape[0] > 1:
                raise ValueError(
                    f"{_INPUT}: entry {index} has a ControlNet image batch of {image.shape[0]}, but ComfyUI "
                    "hands control images to a model call by row position and hierarchical sampling "
                    "evaluates one row per group of prompts, so images per prompt cannot follow the "
                    "groups: give one control image (batch 1), shared by every prompt"
                )
        control = getattr(control, "previous_controlnet", None)


def _checked_token_lengths(
    index: int, tokens: torch.Tensor, extras: dict, lengths: tuple[int, ...], n: int
) -> dict:
    """The entry's extras with the prompts' token lengths right for its tokens (or a refusal)."""
    recorded = extras.get(TOKEN_LENGTHS_KEY)
    if TOKEN_LENGTHS_KEY not in extras and tokens.shape[0] != n:
        return extras  # a shared entry (ConditioningCombine's extra conditioning)
    uniform = len(set(lengths)) == 1
    recorded = None if recorded is None else tuple(int(length) for length in recorded)
    if recorded is not None and recorded != lengths and not (uniform and len(set(recorded)) == 1):
        raise ValueError(
            f"{_INPUT}: entry {index} holds the rows of another prompt set (other token lengths): "
            f"{_FROM_THE_TREE}"
        )
    if uniform:
        # Every row uses its whole length, whatever a node made of it (ConditioningConcat appends tokens).
        return {**extras, TOKEN_LENGTHS_KEY: (int(tokens.shape[1]),) * n}
    if recorded is None or tokens.shape[1] != max(lengths):
        raise ValueError(
            f"{_INPUT}: entry {index} has {tokens.shape[1]} tokens a row, but this prompt_tree's prompts "
            f"encode to {min(lengths)} to {max(lengths)} tokens each, which a node that changes the token "
            "count (ConditioningConcat) cannot keep apart: shorten the long prompts so that all encode to "
            "one length, or write the extra text into the prompts"
        )
    return extras


class HierPromptTreeConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierPromptTreeConditioning",
            display_name="Prompt Tree Conditioning",
            category="sampling/hierarchical",
            description="The prompt tree's conditioning, one row per prompt, for ComfyUI's conditioning "
            "nodes (Apply ControlNet, area, timestep range, combine); put the result back with Prompt Tree "
            "Set Conditioning.",
            inputs=[
                PROMPT_TREE.Input(
                    "prompt_tree", tooltip="The prompt set from Prompt Set Cluster (or another tree node)."
                ),
            ],
            outputs=[
                io.Conditioning.Output(
                    display_name="conditioning",
                    tooltip="Every prompt's conditioning in one CONDITIONING (one row per prompt): connect "
                    "it to conditioning nodes as the positive, then to Prompt Tree Set Conditioning.",
                ),
            ],
        )

    @classmethod
    def execute(cls, prompt_tree: PromptTreeSet) -> io.NodeOutput:
        return io.NodeOutput(tree_conditioning(prompt_tree))


class HierPromptTreeSetConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierPromptTreeSetConditioning",
            display_name="Prompt Tree Set Conditioning",
            category="sampling/hierarchical",
            description="The prompt tree with the conditioning made from its own (Prompt Tree "
            "Conditioning, then ControlNet, area, timestep range or combine nodes); the tree and prompts "
            "stay as they were.",
            inputs=[
                PROMPT_TREE.Input(
                    "prompt_tree",
                    tooltip="The prompt tree whose Prompt Tree Conditioning the conditioning was made from.",
                ),
                io.Conditioning.Input(
                    "conditioning",
                    tooltip="Made from this tree's Prompt Tree Conditioning by conditioning nodes: entries "
                    "of one row per prompt, or of one row shared by every prompt (ConditioningCombine); one "
                    "control image and one mask, shared by every prompt.",
                ),
            ],
            outputs=[
                PROMPT_TREE.Output(
                    display_name="prompt_tree",
                    tooltip="The same tree and prompts with this conditioning, for the hierarchical "
                    "samplers.",
                ),
            ],
        )

    @classmethod
    def execute(cls, prompt_tree: PromptTreeSet, conditioning: list) -> io.NodeOutput:
        return io.NodeOutput(with_conditioning(prompt_tree, conditioning))


NODES: list[type[io.ComfyNode]] = [HierPromptTreeConditioning, HierPromptTreeSetConditioning]
