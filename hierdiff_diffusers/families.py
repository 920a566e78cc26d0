# SPDX-License-Identifier: GPL-3.0-or-later
"""What the grouped denoiser needs to know about each diffusers pipeline family, one small entry each.

A :class:`Family` says which pipeline attribute holds the denoiser, how its latent and timestep
arguments are named, which of its other arguments carry one row per prompt and how a group's rows are
mixed into one (``"mean"`` of the members' rows, the ``"union"`` of attention masks, or ``"same"``:
equal for every prompt, checked, then passed through), which tensors are shared by every row, and how
the pipeline's own text encoders turn prompts into the per-prompt conditioning plus the vectors the
prompt tree is built on. Every supported pipeline batches classifier-free guidance as
``[unconditional rows, conditional rows]``, each half in prompt order; the adapter
(:mod:`hierdiff_diffusers.denoiser`) is one implementation for all of them.

This module imports torch but not diffusers: it reads pipelines by duck typing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

Mix = Literal["mean", "union", "same"]
MIXES: tuple[str, ...] = ("mean", "union", "same")


class UnsupportedPipelineError(ValueError):
    """A pipeline (or a pipeline folder's class) whose denoiser hierdiff does not know; one line."""


class Encoded(NamedTuple):
    """A family's encoding of N prompts.

    call_kwargs: the pipeline keyword arguments carrying the per-prompt conditioning (each tensor with
    N rows in prompt order), passed instead of ``prompt``; vectors: (N, D) what the prompt tree is
    built on.
    """

    call_kwargs: dict[str, torch.Tensor]
    vectors: torch.Tensor


Encoder = Callable[[Any, list[str], dict[str, Any]], Encoded]
"""``encode(pipe, prompts, pipeline_kwargs) -> Encoded`` for one chunk of prompts."""


@dataclass(frozen=True)
class Family:
    """One pipeline family's denoiser signature and text encoding.

    Attributes
    ----------
    name : short name ("sd", "sdxl", ...), as the docs and the tiny test pipelines use it.
    pipelines : diffusers pipeline class names of the family (a subclass of one is recognised too).
    denoiser : the pipeline attribute holding the denoiser ("unet" or "transformer").
    sample : the denoiser's latent argument; its rows are the batch.
    rows : per-row conditioning arguments ("added_cond_kwargs.text_embeds" names a dict entry) ->
        how a group's member rows are mixed.
    shared : tensor arguments without prompt rows (positional ids), passed unchanged.
    timestep_scale : the pipeline passes ``scheduler timestep / timestep_scale`` (Flux: 1000).
    joint_attention : the denoiser attends jointly over text and image tokens, so a prompt the text
        encoders would truncate is refused instead (:func:`check_prompt_lengths`).
    encode : the pipeline's own text encoding of a chunk of prompts; None when the family is
        conditioned on something else, passed by the caller in the keyword argument ``given``
        (Kandinsky's ``image_embeds``), on which the tree is then built.
    given : see ``encode``.
    tokenizers : (pipeline attribute, limit) pairs checked by :func:`check_prompt_lengths`; a limit of
        None reads the tokenizer's ``model_max_length``, a string names the pipeline keyword
        argument holding it (with the ``__call__`` default when absent).
    """

    name: str
    pipelines: tuple[str, ...]
    denoiser: str
    sample: str
    rows: Mapping[str, Mix]
    shared: frozenset[str] = field(default_factory=frozenset)
    timestep_scale: float = 1.0
    joint_attention: bool = False
    encode: Encoder | None = None
    given: str | None = None
    tokenizers: tuple[tuple[str, str | None], ...] = ()

    def __post_init__(self) -> None:
        bad = {name: mix for name, mix in self.rows.items() if mix not in MIXES}
        if bad:
            raise ValueError(f"family {self.name}: unknown mixes {bad}; choose from {MIXES}")


def _device(pipe: Any) -> torch.device:
    return pipe._execution_device


def _lora_scale(kwargs: dict[str, Any], key: str) -> float | None:
    return (kwargs.get(key) or {}).get("scale")


def _first_eos_state(pipe: Any, prompts: list[str], states: torch.Tensor) -> torch.Tensor:
    """The end-of-text token's state per prompt: what CLIP's pooler returns, from the token states
    the pipeline already computed. states: (N, L, D) -> (N, D)."""
    tokenizer = pipe.tokenizer
    length = tokenizer.model_max_length
    tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    ids = tokens.input_ids
    eos = (ids == tokenizer.eos_token_id).int().argmax(-1)
    return states[torch.arange(len(prompts)), eos.to(states.device)]


def _encode_sd(pipe: Any, prompts: list[str], kwargs: dict[str, Any]) -> Encoded:
    embeds, _ = pipe.encode_prompt(
        prompts,
        _device(pipe),
        1,
        False,
        lora_scale=_lora_scale(kwargs, "cross_attention_kwargs"),
        clip_skip=kwargs.get("clip_skip"),
    )
    # SD's pipeline exposes no pooled output; the end-of-text state is CLIP's pooled vector.
    return Encoded({"prompt_embeds": embeds}, _first_eos_state(pipe, prompts, embeds))


def _encode_sdxl(pipe: Any, prompts: list[str], kwargs: dict[str, Any]) -> Encoded:
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts,
        device=_device(pipe),
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        lora_scale=_lora_scale(kwargs, "cross_attention_kwargs"),
        clip_skip=kwargs.get("clip_skip"),
    )
    return Encoded({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}, pooled)


def _encode_sd3(pipe: Any, prompts: list[str], kwargs: dict[str, Any]) -> Encoded:
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts,
        None,
        None,
        device=_device(pipe),
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        clip_skip=kwargs.get("clip_skip"),
        max_sequence_length=_call_default(pipe, kwargs, "max_sequence_length"),
        lora_scale=_lora_scale(kwargs, "joint_attention_kwargs"),
    )
    return Encoded({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}, pooled)


def _encode_flux(pipe: Any, prompts: list[str], kwargs: dict[str, Any]) -> Encoded:
    embeds, pooled, _ = pipe.encode_prompt(
        prompts,
        None,
        device=_device(pipe),
        num_images_per_prompt=1,
        max_sequence_length=_call_default(pipe, kwargs, "max_sequence_length"),
        lora_scale=_lora_scale(kwargs, "joint_attention_kwargs"),
    )
    return Encoded({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}, pooled)


def _encode_pixart(pipe: Any, prompts: list[str], kwargs: dict[str, Any]) -> Encoded:
    embeds, mask, _, _ = pipe.encode_prompt(
        prompts,
        do_classifier_free_guidance=False,
        device=_device(pipe),
        clean_caption=_call_default(pipe, kwargs, "clean_caption"),
        max_sequence_length=_call_default(pipe, kwargs, "max_sequence_length"),
    )
    # T5 has no pooled output: the mean over each prompt's own (unmasked) tokens.
    weights = mask.to(embeds.dtype).unsqueeze(-1)
    vectors = (embeds * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return Encoded({"prompt_embeds": embeds, "prompt_attention_mask": mask}, vectors)


def _call_default(pipe: Any, kwargs: dict[str, Any], name: str) -> Any:
    """The pipeline call's value for ``name``: the caller's, else the ``__call__`` default (``pipe``
    is a pipeline or its class)."""
    if name in kwargs:
        return kwargs[name]
    cls = pipe if isinstance(pipe, type) else type(pipe)
    return inspect.signature(cls.__call__).parameters[name].default


_SAMPLE = {"unet": "sample", "transformer": "hidden_states"}
"""The latent argument's name for each kind of denoiser."""


def _added(**mixes: Mix) -> dict[str, Mix]:
    """Rows passed inside the denoiser's ``added_cond_kwargs`` dict, by their key there."""
    return {f"added_cond_kwargs.{key}": mix for key, mix in mixes.items()}


def _family(name: str, pipeline: str, denoiser: str, rows: Mapping[str, Mix], **options: Any) -> Family:
    """A family of one pipeline class whose ``denoiser`` ("unet" or "transformer") takes diffusers'
    usual latent argument."""
    return Family(name, (pipeline,), denoiser, _SAMPLE[denoiser], rows, **options)


_TEXT = {"encoder_hidden_states": "mean"}
"""The per-token text conditioning every text-conditioned family passes."""
_POOLED = {**_TEXT, "pooled_projections": "mean"}
"""SD3's and Flux's: the token states and the pooled text vector."""

FAMILIES: tuple[Family, ...] = (
    _family("sd", "StableDiffusionPipeline", "unet", {**_TEXT, "timestep_cond": "same"}, encode=_encode_sd),
    _family(
        "sdxl", "StableDiffusionXLPipeline", "unet",
        {**_TEXT, "timestep_cond": "same", **_added(text_embeds="mean", time_ids="same")},
        encode=_encode_sdxl,
    ),
    _family(
        "sd3", "StableDiffusion3Pipeline", "transformer",
        _POOLED,
        joint_attention=True,
        encode=_encode_sd3,
        tokenizers=(("tokenizer", None), ("tokenizer_2", None), ("tokenizer_3", "max_sequence_length")),
    ),
    _family(
        "flux", "FluxPipeline", "transformer",
        {**_POOLED, "guidance": "same"},
        shared=frozenset({"txt_ids", "img_ids"}),
        timestep_scale=1000.0,
        joint_attention=True,
        encode=_encode_flux,
        tokenizers=(("tokenizer", None), ("tokenizer_2", "max_sequence_length")),
    ),
    # A group attends to every token position any member attends to (the union of the masks); past a
    # shorter member's prompt the mean holds that member's own T5 state of its padding.
    _family(
        "pixart-sigma", "PixArtSigmaPipeline", "transformer",
        {**_TEXT, "encoder_attention_mask": "union", **_added(resolution="same", aspect_ratio="same")},
        encode=_encode_pixart,
    ),
    # Kandinsky's decoder is conditioned on its prior's image embeddings, passed by the caller.
    _family("kandinsky-2.2", "KandinskyV22Pipeline", "unet", _added(image_embeds="mean"),
            given="image_embeds"),
)
"""Every supported family. Any other pipeline is refused by :func:`family_of`."""

PER_PROMPT_ARGUMENTS = frozenset(
    {
        "negative_prompt",
        "negative_prompt_2",
        "negative_prompt_3",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
        "negative_prompt_attention_mask",
        "image_embeds",
        "negative_image_embeds",
    }
)
"""Pipeline keyword arguments that may hold one entry per prompt (a list or a tensor with N rows); a
run over some of the prompts takes their entries."""

_BY_PIPELINE = {name: family for family in FAMILIES for name in family.pipelines}


def supported_pipelines() -> list[str]:
    """Class names of every supported pipeline."""
    return sorted(_BY_PIPELINE)


def family_for_class(class_name: str) -> Family:
    """The family of a pipeline class name (a folder's ``model_index.json`` ``_class_name``)."""
    if class_name not in _BY_PIPELINE:
        raise UnsupportedPipelineError(
            f"hierdiff does not know the denoiser of {class_name}: supported pipelines are "
            f"{', '.join(supported_pipelines())}"
        )
    return _BY_PIPELINE[class_name]


def family_of(pipe: Any) -> Family:
    """The family of a pipeline object: its own class, else the nearest supported base class."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in _BY_PIPELINE:
            return _BY_PIPELINE[cls.__name__]
    return family_for_class(type(pipe).__name__)


def check_prompt_lengths(pipe: Any, family: Family, prompts: list[str], kwargs: dict[str, Any]) -> None:
    """Refuse (one line naming the prompt) a prompt longer than a text encoder's limit on a
    joint-attention family: :func:`check_token_counts` with the pipeline's own tokenizers."""
    tokenizers = {attribute: getattr(pipe, attribute, None) for attribute, _ in family.tokenizers}
    check_token_counts(type(pipe), family, tokenizers, prompts, kwargs)


def check_token_counts(
    pipeline_class: type,
    family: Family,
    tokenizers: Mapping[str, Any],
    prompts: list[str],
    kwargs: dict[str, Any],
) -> None:
    """Refuse (one line naming the prompt) a prompt longer than a text encoder's limit on a
    joint-attention family, given the tokenizers by pipeline attribute (None: an optional encoder left
    out, as SD3 without T5); a command checks this before loading any weights.

    diffusers truncates such a prompt silently. A UNet's cross-attention reads a fixed 77-token window
    either way, but SD3's and Flux's transformers attend jointly over text and image tokens: keeping
    the whole prompt would need more tokens than the others get, and padding the others to match is
    not neutral there, so the prompt is refused rather than cut.
    """
    if not family.joint_attention:
        return
    for attribute, limit_from in family.tokenizers:
        tokenizer = tokenizers.get(attribute)
        if tokenizer is None:
            continue
        limit = (
            tokenizer.model_max_length
            if limit_from is None
            else _call_default(pipeline_class, kwargs, limit_from)
        )
        for index, prompt in enumerate(prompts):
            count = len(tokenizer(prompt, truncation=False).input_ids)
            if count > limit:
                shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                raise ValueError(
                    f"prompt {index} {shown!r} is {count} tokens for {pipeline_class.__name__}'s "
                    f"{attribute} (limit {limit}): joint attention can neither truncate it nor pad the "
                    f"other prompts to its length neutrally; shorten it"
                )
