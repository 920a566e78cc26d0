# SPDX-License-Identifier: GPL-3.0-or-later
"""ComfyUI CONDITIONING <-> the per-row tensors the engine mixes.

A prompt set travels between our nodes as a :class:`PromptTreeSet`: the tree, the prompt texts and
one CONDITIONING entry whose tensors hold one row per prompt (ComfyUI batches conditioning per
latent row natively). During sampling, :func:`group_model_conds` turns ComfyUI's processed
conditioning (``model_conds``: cross-attention tokens, SDXL's ``y``, unCLIP's adm, ...) into one
row per active group, with the engine's :class:`~hierdiff_core.engine.GroupConditioner`.

Prompts may encode to different token counts (CLIP encodes 77 tokens per chunk of a long prompt; LLM
and T5 encoders without padding give every prompt its own count). The set stores each row at its own
length (shorter rows zero-filled up to the longest, lengths in ``TOKEN_LENGTHS_KEY``), and how a
model call takes rows of different lengths depends on the model (:func:`text_padding`):

- UNets ("repeat"): a group's members are repeated to the least common multiple of their lengths
  (which cross-attention does not notice) and averaged token by token; a prompt alone is never
  padded; one model call takes groups of one token length (:func:`token_length_parts` splits a batch);
- joint-attention models that take a text attention mask ("mask", Chroma, Flux): a group's conditioning is
  the mean, at each token position, of the members that have that position (as long as its longest
  member); the groups of one call are zero-padded to the call's longest and a text attention mask
  (``attention_mask``, additive) hides the padding from every attention layer, so one call takes
  them all;
- other joint-attention models are refused by :func:`check_token_lengths`, naming the family.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from dataclasses import dataclass

import comfy.conds
import comfy.model_base
import numpy as np
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from hierdiff_core.engine import GroupConditioner
from hierdiff_core.tree import PromptTree
from hierdiff_core.tree import with_copies as copy_tree

TOKEN_LENGTHS_KEY = "hier_token_lengths"
"""Conditioning extra set by :func:`stack_conditionings`: each prompt's own token count (its row's
first tokens; the rest of a shorter row is filler that mixing never reads)."""
TEXT_MASK_EXTRA = "attention_mask"
"""Conditioning extra some text encoders add (LLM encoders of Lumina 2, Z-Image, Flux.2): (1, T) over the
prompt's T tokens, 1 at a token and 0 at padding."""


def held_tensors(value: object) -> list[torch.Tensor]:
    """Every tensor inside ``value`` (lists, tuples, dicts and dataclass fields, walked)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, field.name) for field in dataclasses.fields(value)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in held_tensors(item)]
    return []


class CacheSized:
    """Tells ComfyUI's RAM-pressure cache what a socket value holds: without it an N-row value counts
    as tiny and is evicted last (0.3.75 calls ``get_ram_usage``, newer hosts ``_comfy_cache_tensors``)."""

    def _comfy_cache_tensors(self) -> list[torch.Tensor]:
        return held_tensors(self)

    def get_ram_usage(self) -> int:
        """Bytes of the value's tensors held in CPU memory."""
        tensors = {id(t): t for t in self._comfy_cache_tensors() if t.device.type == "cpu"}
        return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass(frozen=True)
class PromptTreeSet(CacheSized):
    """The PROMPT_TREE socket value.

    tree: hierarchy over the N prompts; prompts: the N texts; conditioning: a ComfyUI CONDITIONING
    list whose prompt entry (:func:`prompt_entry`) is ``[tensor (N, T, C), {extras, tensors with N
    rows}]``, where row i's tokens are its first ``extras[TOKEN_LENGTHS_KEY][i]`` (all T when the key is
    absent); embedding_space: what the tree was clustered in ("clip_pooled", "sentence", "prior_image").
    Prompt Set Cluster makes a single entry; Prompt Tree Set Conditioning (``nodes/tree_conditioning``)
    may add entries of N rows or of one row shared by every prompt (ConditioningCombine).
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
        n = len(self.prompts)
        rows = [int(entry[0].shape[0]) for entry in self.conditioning]
        if not rows or prompt_entry(self.conditioning)[0].shape[0] != n or any(r not in (1, n) for r in rows):
            raise ValueError(f"conditioning must hold {n} rows (entries of {n} or 1 rows), got {rows}")

    @property
    def context_dim(self) -> int:
        return int(prompt_entry(self.conditioning)[0].shape[-1])


def prompt_entry(conditioning: list) -> list:
    """The CONDITIONING entry holding the prompts' own rows: the first that records their token lengths
    (``TOKEN_LENGTHS_KEY``, which ComfyUI's conditioning nodes copy along), else the first entry."""
    return next((entry for entry in conditioning if TOKEN_LENGTHS_KEY in entry[1]), conditioning[0])


def _repeat_tokens(tensor: torch.Tensor, length: int) -> torch.Tensor:
    # Repeating a token sequence leaves cross-attention unchanged; ComfyUI pads the same way.
    return tensor.repeat(*([1] * (tensor.ndim - 2)), length // tensor.shape[-2], 1)


def stack_conditionings(per_prompt: list[list]) -> list:
    """Stack N single-prompt CONDITIONINGs into one CONDITIONING of N-row entries, entry by entry.

    Each prompt's CONDITIONING is [[ (1, T_i, C), extras ], ...] with the same number of entries K: one
    for a plain encoding, one per keyframe for a CLIP with scheduled hooks (SetClipHooks with
    schedule_clip; each entry's ``clip_start_percent``/``clip_end_percent`` say when it applies, the same
    for every prompt encoded by that CLIP). Entry k of the result stacks entry k of every prompt (see
    :func:`stack_entries`), so a group mixes each keyframe's conditioning and ComfyUI applies it in its
    own range of steps, as for one prompt.
    """
    counts = sorted({len(conditioning) for conditioning in per_prompt})
    if len(counts) > 1 or counts[0] == 0:
        raise ValueError(
            f"the prompts encode to different numbers of conditioning entries ({counts[0]} to {counts[-1]}); "
            "hierarchical sampling needs the same for every prompt (one CLIP, no combined conditioning)"
        )
    return [stack_entries([conditioning[k] for conditioning in per_prompt]) for k in range(counts[0])]


def stack_entries(entries: list[list]) -> list:
    """Stack N single-row CONDITIONING entries ([ (1, T_i, C), extras ]) into one N-row entry.

    Nothing is padded: a row shorter than the longest keeps its tokens first and zeros after them,
    and ``extras[TOKEN_LENGTHS_KEY]`` records every T_i (mixing reads only a row's own tokens, see
    :func:`group_model_conds`). Tensor extras (pooled output, ...) are concatenated, the encoder's own
    token mask (``TEXT_MASK_EXTRA``) zero-filled like the tokens; other extras must agree across prompts.
    Prompts that share a CONDITIONING object share its values.
    """
    tensors = [e[0] for e in entries]
    lengths = tuple(int(t.shape[1]) for t in tensors)
    longest = max(lengths)
    stacked = torch.cat(
        [
            t if t.shape[1] == longest else torch.nn.functional.pad(t, (0, 0, 0, longest - t.shape[1]))
            for t in tensors
        ]
    )
    extras: dict = {}
    for key, first in entries[0][1].items():
        values = [e[1].get(key) for e in entries]
        if isinstance(first, torch.Tensor) and first.ndim > 0 and first.shape[0] == 1:
            if any(v is None for v in values):
                raise ValueError(f"conditioning extra {key!r} is missing for some prompts")
            if key == TEXT_MASK_EXTRA and all(
                tuple(v.shape) == (1, n) for v, n in zip(values, lengths, strict=True)
            ):
                # The encoder's mask over each prompt's own tokens (Gemma, Qwen3, Mistral): padded like the
                # tokens, its zeros marking the padding, so that the sampler can tell the family to refuse.
                extras[key] = torch.cat(
                    [torch.nn.functional.pad(v, (0, longest - v.shape[1])) for v in values]
                )
                continue
            shapes = sorted({tuple(v.shape) for v in values})
            if len(shapes) > 1:
                # HiDream's Llama states (conditioning_llama3), padded to 128 tokens, longer beyond.
                raise ValueError(
                    f"conditioning extra {key!r} has different shapes for different prompts ({shapes[0]} to "
                    f"{shapes[-1]}): the text encoder gave the prompts different token counts there, which "
                    "hierarchical sampling cannot pad; shorten the long prompts so that all encode alike"
                )
            extras[key] = torch.cat(values)
        elif all(_same(first, v) for v in values):
            extras[key] = first
        else:
            raise ValueError(f"conditioning extra {key!r} differs between prompts and cannot be batched")
    extras[TOKEN_LENGTHS_KEY] = lengths
    return [stacked, extras]


# ComfyUI model classes (comfy.model_base) whose diffusion model hides text tokens named by an additive
# ``attention_mask`` in every attention layer, and whose text tokens carry no position (Chroma's and Flux's
# text ids are all zero), so zero tokens hidden by the mask leave a prompt's result as it is alone. Flux
# (dev, schnell, Fill, Kontext) also appends reference latents' tokens after the image's.
MASKED_TEXT_MODELS = ("Chroma", "Flux")
REFERENCE_TOKEN_MODELS = ("Flux",)

TEXT_MASK_MODEL_COND = "attention_mask"
"""The model input (a keyword of the diffusion model's forward) that carries the text attention mask."""

# Why a family's model cannot take prompts of different token lengths in one call (ComfyUI 0.3.75), by
# comfy.model_base class; see docs/sampling.md, "Model families".
_UNMASKABLE = {
    "Lumina2": "its NextDiT masks padded text only in the text refiner, not in the joint layers, and the "
    "image tokens' positions follow the text length",
    "QwenImage": "the model does not use a text attention mask",
    "Flux2": "ComfyUI pads its text to 512 tokens at the front, unmasked, and text tokens have positions",
    "HiDream": "the model takes no text attention mask",
    "SD3": "its MMDiT attends jointly over text and image tokens and takes no text attention mask",
}


@dataclass(frozen=True)
class TextPadding:
    """How one model call takes groups whose conditionings differ in token length.

    mode: "repeat" (UNet cross-attention: tokens repeated to a common length), "mask" (joint attention
    with a text attention mask: zero tokens hidden by the mask) or "refuse"; image_tokens: for "mask",
    how many image tokens follow the text in the model's joint sequence (the mask covers both);
    reference_patch: for a model that appends reference latents' tokens (``ref_latents``, Flux Kontext)
    after the image's, its patch size (each reference of H x W adds ceil(H / p) * ceil(W / p) tokens),
    else 0.
    """

    mode: str
    image_tokens: int = 0
    reference_patch: int = 0

    def reference_tokens(self, model_conds: dict) -> int:
        """How many reference-latent tokens the model appends to the image's for these model conds."""
        references = model_conds.get("ref_latents")
        if not self.reference_patch or references is None:
            return 0
        p = self.reference_patch
        return sum(math.ceil(r.shape[-2] / p) * math.ceil(r.shape[-1] / p) for r in references.cond)


def text_padding(model, latent_shape: tuple[int, ...] | None = None) -> TextPadding:
    """The :class:`TextPadding` of ``model`` (a ModelPatcher or a ``comfy.model_base`` model) for a latent
    of ``latent_shape`` ((B, C, H, W); needed for "mask", whose mask spans the image tokens too)."""
    base = getattr(model, "model", model)
    if isinstance(base.diffusion_model, UNetModel):
        return TextPadding("repeat")
    name = type(base).__name__
    if name in MASKED_TEXT_MODELS and isinstance(base, comfy.model_base.Flux):
        patch = int(base.diffusion_model.patch_size)
        references = patch if name in REFERENCE_TOKEN_MODELS else 0
        if latent_shape is None:
            return TextPadding("mask", reference_patch=references)
        height, width = latent_shape[-2:]
        return TextPadding("mask", math.ceil(height / patch) * math.ceil(width / patch), references)
    return TextPadding("refuse")


def check_token_lengths(prompt_set: PromptTreeSet, model) -> None:
    """Refuse prompts of different token lengths on a MODEL that cannot take them in one call unchanged.

    Repeating a token sequence leaves a UNet's cross-attention unchanged, and a text attention mask hides
    zero padding from a joint-attention model that takes one (Chroma, Flux). Transformers that attend
    jointly over text and image tokens without such a mask (SD3's MMDiT, Lumina 2 / Z-Image, Qwen-Image,
    Flux.2, HiDream, ...) weigh padding or repeated tokens, so a padded prompt would no longer give what
    it gives alone. Raises ValueError naming the model type and why.
    """
    lengths = prompt_entry(prompt_set.conditioning)[1].get(TOKEN_LENGTHS_KEY, ())
    if len(set(lengths)) > 1 and text_padding(model).mode == "refuse":
        base = type(model.model).__name__
        config = type(model.model.model_config).__name__
        name = base if config == base else f"{config} ({base})"
        reason = _UNMASKABLE.get(base, "its text tokens are neither repeated nor masked for this family")
        raise ValueError(
            f"prompt_tree input: its prompts encode to different token counts ({min(lengths)} to "
            f"{max(lengths)}), and {name} models cannot pad them to one length without changing the images "
            f"({reason}): shorten the long prompts so that all encode to the same length"
        )


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a is b or a == b


def clustering_embeddings(conditioning: list) -> np.ndarray:
    """(N, D) vectors to cluster on: the pooled output when the encoder gives one, else the mean of each
    row's own tokens."""
    tensor, extras = conditioning[0]
    pooled = extras.get("pooled_output")
    if isinstance(pooled, torch.Tensor):
        vectors = pooled
    else:
        lengths = extras.get(TOKEN_LENGTHS_KEY) or (tensor.shape[1],) * tensor.shape[0]
        vectors = torch.stack([row[:length].mean(dim=0) for row, length in zip(tensor, lengths, strict=True)])
    return vectors.float().cpu().numpy().astype(np.float64)


def token_lengths(conditioning: list) -> np.ndarray | None:
    """(N,) each prompt's own token count, or None when every row uses the tensor's whole length."""
    tensor, extras = prompt_entry(conditioning)
    lengths = extras.get(TOKEN_LENGTHS_KEY)
    if lengths is None or all(length == tensor.shape[1] for length in lengths):
        return None
    return np.asarray(lengths, dtype=np.int64)


def group_token_length(lengths: np.ndarray, members: np.ndarray, mode: str = "repeat") -> int:
    """The token length of a group's mixed conditioning (one member: its own length, unpadded): with
    ``mode`` "repeat" the least common multiple of its members' lengths, with "mask" the longest."""
    own = np.unique(lengths[members]).tolist()
    return max(own) if mode == "mask" else math.lcm(*own)


def token_length_parts(
    conditioning: list, tree: PromptTree, nodes: np.ndarray, padding: TextPadding | None = None
) -> list[np.ndarray]:
    """Positions in ``nodes`` split into parts whose groups share one token length (see
    :func:`group_token_length`), in order of first appearance; one part holding every position when the
    set's prompts all have one length, or when ``padding`` masks (a call pads its groups to one length).
    A model call takes one part: its tokens form one tensor."""
    lengths = token_lengths(conditioning)
    if lengths is None or (padding is not None and padding.mode == "mask"):
        return [np.arange(len(nodes))]
    parts: dict[int, list[int]] = {}
    for position, node in enumerate(nodes):
        parts.setdefault(group_token_length(lengths, tree.members(int(node))), []).append(position)
    return [np.asarray(positions, dtype=np.int64) for positions in parts.values()]


def group_model_conds(
    conds: list[dict] | None,
    conditioner: GroupConditioner,
    step: int,
    nodes: np.ndarray,
    n_rows: int,
    padding: TextPadding | None = None,
) -> list[dict] | None:
    """Processed ComfyUI conds (N rows each) -> the same conds with one row per group in ``nodes``.

    Per-row tensors (batch size N) are mixed per group; batch-1 tensors such as a shared negative
    prompt stay as they are (ComfyUI repeats them to the batch), as do constants. The tokens of an entry
    whose prompts have different token counts are mixed over each member's own tokens, as ``padding``
    (:func:`text_padding`; None: "repeat") says: "repeat" repeats them to the group's length
    (:func:`group_token_length`), and the groups in ``nodes`` must share that length
    (:func:`token_length_parts`); "mask" pads each group's mix with zeros to the longest group in
    ``nodes`` and adds the text attention mask (``TEXT_MASK_MODEL_COND``) hiding that padding.
    """
    if conds is None:
        return None
    padding = padding or TextPadding("repeat")
    grouped = []
    for entry in conds:
        lengths = entry.get(TOKEN_LENGTHS_KEY)
        lengths = (
            np.asarray(lengths, dtype=np.int64) if lengths is not None and len(lengths) == n_rows else None
        )
        entry = entry.copy()
        model_conds = {}
        for key, value in entry["model_conds"].items():
            if not _holds_own_tokens(key, value, n_rows, lengths, padding):
                model_conds[key] = _group_model_cond(value, conditioner, step, nodes, n_rows)
                continue
            rows, hidden = _group_tokens(value.cond, conditioner, step, nodes, lengths, padding.mode)
            model_conds[key] = value._copy_with(rows)
            if hidden is not None:
                if TEXT_MASK_MODEL_COND in entry["model_conds"]:
                    raise ValueError(
                        "prompt_tree conditioning carries an attention mask of its own (regional prompting), "
                        "which cannot be combined with prompts of different token lengths"
                    )
                keys = padding.image_tokens + padding.reference_tokens(entry["model_conds"])
                mask = joint_attention_mask(hidden, keys, rows.dtype)
                model_conds[TEXT_MASK_MODEL_COND] = comfy.conds.CONDRegular(mask)
        entry["model_conds"] = model_conds
        grouped.append(entry)
    return grouped


def _holds_own_tokens(key: str, value, n_rows: int, lengths: np.ndarray | None, padding: TextPadding) -> bool:
    """Whether a model cond is the prompts' token tensor stored at their own lengths (the cross-attention
    tokens of a UNet; a joint-attention model's ``c_crossattn``)."""
    if lengths is None or not isinstance(value, comfy.conds.CONDRegular):
        return False
    tensor = value.cond
    if not (
        isinstance(tensor, torch.Tensor)
        and tensor.ndim == 3
        and tensor.shape[:2] == (n_rows, int(lengths.max()))
        and np.any(lengths != tensor.shape[1])
    ):
        return False
    if padding.mode == "mask":
        return key == "c_crossattn"
    return isinstance(value, comfy.conds.CONDCrossAttn)


def joint_attention_mask(hidden: torch.Tensor, image_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """hidden: (G, L) True at padded text tokens -> (G, 1, 1, L + image_tokens) additive mask over the
    joint sequence (text first, then image), the largest negative float at the padding, 0 elsewhere;
    it broadcasts over heads and queries."""
    keys = torch.nn.functional.pad(hidden, (0, image_tokens), value=False)
    mask = torch.zeros(keys.shape, dtype=torch.float32, device=hidden.device)
    mask = mask.masked_fill(keys, -torch.finfo(torch.float32).max)
    return mask[:, None, None, :].to(dtype if dtype.is_floating_point else torch.float32)


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


# Mixed rows of groups whose members differ in length, per sampling run (its GroupConditioner), kept
# while the group is active like the conditioner's own cache: (id(tokens), node, mode) -> (length, C).
_MIXED_LENGTH_ROWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _group_tokens(
    tokens: torch.Tensor,
    conditioner: GroupConditioner,
    step: int,
    nodes: np.ndarray,
    lengths: np.ndarray,
    mode: str = "repeat",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """tokens: (N, T, C), row i's own tokens first -> (rows (len(nodes), L, C) mixed per group, hidden).

    "repeat": L is the groups' shared length (:func:`group_token_length`), hidden is None. "mask": each
    group's mix has its own length (its longest member's; the medoid's own), zero-padded to L, the longest
    in ``nodes``; hidden (len(nodes), L) is True at the padding, or None when there is none.
    """
    tree = conditioner.plan.tree
    members = [tree.members(int(node)) for node in nodes]
    group_lengths = [group_token_length(lengths, m, mode) for m in members]
    if mode != "mask" and len(set(group_lengths)) != 1:
        raise ValueError(f"groups of token lengths {sorted(set(group_lengths))} cannot share one model call")
    # Groups of one length are what the conditioner mixes (and caches) on the stored rows: their first
    # `length` tokens are exactly the mix of the members' own tokens (and zeros after them).
    alike = [i for i, m in enumerate(members) if len(np.unique(lengths[m])) == 1]
    rows: list[torch.Tensor | None] = [None] * len(nodes)
    if alike:
        mixed = conditioner.rows_for(step, nodes[alike], tokens)
        for i, row in zip(alike, mixed, strict=True):
            rows[i] = row[: group_lengths[i]]
    cache = _MIXED_LENGTH_ROWS.setdefault(conditioner, {})
    active = set(conditioner.plan.groups(step).nodes.tolist())
    for key in [key for key in cache if key[1] not in active]:
        del cache[key]
    for i, node in enumerate(nodes):
        if rows[i] is None:
            key = (id(tokens), int(node), mode)
            if key not in cache:
                if mode == "mask":
                    cache[key] = _mix_positions(tokens, members[i], lengths, conditioner.mix)
                else:
                    cache[key] = _mix_lengths(tokens, members[i], lengths, group_lengths[i], conditioner.mix)
            rows[i] = cache[key]
    if mode != "mask":
        return torch.stack(rows), None
    own = [int(row.shape[0]) for row in rows]
    length = max(own)
    if min(own) == length:
        return torch.stack(rows), None
    padded = torch.stack([torch.nn.functional.pad(row, (0, 0, 0, length - row.shape[0])) for row in rows])
    positions = torch.arange(length, device=tokens.device)
    hidden = positions[None, :] >= torch.as_tensor(own, device=tokens.device)[:, None]
    return padded, hidden


def _mix_positions(tokens: torch.Tensor, members: np.ndarray, lengths: np.ndarray, mix: str) -> torch.Tensor:
    """A group's conditioning for a model that masks text: (L, C) with L its longest member's length,
    position p the mean of the members whose own tokens reach p (what every member padded with hidden
    tokens would give, the hidden tokens left out of the mean); or with ``mix="medoid"`` the member (its
    own tokens, of its own length) nearest that mean, a position it lacks counted as a zero token."""
    length = int(lengths[members].max())
    index = torch.as_tensor(members, device=tokens.device)
    rows = tokens.index_select(0, index)[:, :length]
    own = torch.as_tensor(lengths[members], device=tokens.device)
    present = torch.arange(length, device=tokens.device)[None, :] < own[:, None]  # (m, L)
    weights = present.to(rows.dtype)[..., None]
    mean = (rows * weights).sum(0) / weights.sum(0)
    if mix == "mean":
        return mean
    distances = ((rows * weights - mean[None]).float().square()).flatten(1).sum(1)
    best = int(torch.argmin(distances))
    return rows[best, : int(own[best])]


def _mix_lengths(
    tokens: torch.Tensor, members: np.ndarray, lengths: np.ndarray, length: int, mix: str
) -> torch.Tensor:
    """(length, C): the mean of the members' own tokens, each repeated to ``length``, or with
    ``mix="medoid"`` the member nearest (L2, over the repeated tokens) to that mean, repeated.

    Computed per token length t, without building the repeated rows: the members of length t sum to a
    (t, C) block that the mean repeats length / t times.
    """
    classes = [(int(t), members[lengths[members] == t]) for t in np.unique(lengths[members])]
    blocks = [tokens.index_select(0, torch.as_tensor(m, device=tokens.device))[:, :t] for t, m in classes]
    mean = sum(_repeat_tokens(block.sum(0), length) for (t, _), block in zip(classes, blocks, strict=True))
    mean = mean / len(members)
    if mix == "mean":
        return mean
    # |repeat(r) - mean|^2 = k |r|^2 - 2 <r, S> + |mean|^2, with k = length / t repeats of r and S the sum
    # of the mean's k consecutive t-token blocks.
    best, best_distance = None, math.inf
    for (t, _), block in zip(classes, blocks, strict=True):
        flat = block.flatten(1).float()
        folded = mean.float().reshape(length // t, -1).sum(0)
        distances = (length // t) * flat.square().sum(1) - 2 * flat @ folded
        i = int(torch.argmin(distances))
        if float(distances[i]) < best_distance:
            best, best_distance = block[i], float(distances[i])
    return _repeat_tokens(best[None], length)[0]


def with_copies(prompt_set: PromptTreeSet, copies: int) -> PromptTreeSet:
    """The prompt set with ``copies`` copies of each prompt (variations), row ``i * copies + v`` being copy
    v of prompt i: the tree from :func:`hierdiff_core.tree.with_copies` and every per-prompt row of the
    conditioning (tensors with N rows, the token lengths) repeated; ``copies == 1`` returns it unchanged."""
    if copies == 1:
        return prompt_set
    tree = copy_tree(prompt_set.tree, copies)
    n = prompt_set.tree.n_prompts

    def repeated(value):
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n:
            return value.repeat_interleave(copies, dim=0)
        return value

    conditioning = []
    for tensor, extras in prompt_set.conditioning:
        extras = {key: repeated(value) for key, value in extras.items()}
        if extras.get(TOKEN_LENGTHS_KEY) is not None:
            extras[TOKEN_LENGTHS_KEY] = tuple(t for t in extras[TOKEN_LENGTHS_KEY] for _ in range(copies))
        conditioning.append([repeated(tensor), extras])
    prompts = tuple(p for p in prompt_set.prompts for _ in range(copies))
    return dataclasses.replace(prompt_set, tree=tree, prompts=prompts, conditioning=conditioning)
