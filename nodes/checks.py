# SPDX-License-Identifier: GPL-3.0-or-later
"""What the sampler nodes are given, checked in one place before any sampling.

Every node that samples a MODEL with conditioning made elsewhere (Hierarchical KSampler, Shared Trunk
Sampler, Branch Sampler, Hierarchical Guider) calls these checks. Each refuses with one line (a
ValueError) that names the input and says what to connect or set instead.

A conditioning fits a MODEL when what ComfyUI's model class reads from it fits the network: the width
of its tokens (the cross-attention or context-embedder input), and, for a model with a vector input
(``y``: SDXL's adm, SD3's pooled input, Flux's ``vec_in_dim``), the pooled output its ``encode_adm``
turns into that vector. A model that reads only the tokens (SD1.5) cannot tell conditioning of
another family of the same token width apart, and neither can these checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import comfy.model_base
import comfy.sample
import torch

from hierdiff_core.schedule import BUDGET_MODES, Budget

from .attention_guidance import SAG_PREFIX, GroupedAttentionMaps
from .conditioning import PromptTreeSet, check_token_lengths
from .prior import check_tree_matches_model


@dataclass(frozen=True)
class Source:
    """Where a conditioning came from: the input a message names, and what to connect instead."""

    name: str
    remedy: str


PROMPT_TREE_INPUT = Source("prompt_tree", "build the tree with this checkpoint's CLIP")
NEGATIVE_INPUT = Source("negative", "encode the negative with this checkpoint's CLIP")
TRUNK_INPUT = Source(
    "hier_latent",
    "a Branch Sampler continues with its trunk's prompt_tree conditioning, so connect a model that takes "
    "the trunk's text encoder (the trunk's checkpoint, with a LoRA or other patches), not one with its "
    "own text encoder such as an SDXL refiner",
)


def context_dim(unet_config: dict) -> int | None:
    """Token width a model takes: a UNet's context_dim, Flux's context_in_dim, SD3's embedder input."""
    embedder = (unet_config.get("context_embedder_config") or {}).get("params", {})
    return unet_config.get("context_dim") or unet_config.get("context_in_dim") or embedder.get("in_features")


def pooled_width(model) -> int | None:
    """Width of the pooled output a MODEL's vector input ``y`` is made from; None when it reads none.

    Asks the model's own ``encode_adm`` (what ComfyUI calls on every conditioning before sampling)
    with pooled outputs of widths 1 and 2: when ``y`` grows with the pooled output, the rest of ``y``
    (SDXL's size embeddings) is fixed, and the pooled output must fill what the network takes.
    """
    base = model.model
    config = base.model_config.unet_config
    vector = config.get("adm_in_channels") or config.get("vec_in_dim")
    if not vector:
        return None
    widths = [_adm_width(base, width) for width in (1, 2)]
    if None in widths or widths[1] - widths[0] != 1:
        return None  # y does not come from the pooled output (Stable unCLIP: the image embedding)
    return int(vector) - (widths[0] - 1)


def _adm_width(base, pooled: int) -> int | None:
    # The keyword arguments ComfyUI's encode_model_conds gives every model class, on the CPU.
    latent_format = base.latent_format  # (1, C, 8, 8) for an image model, (1, C, 8, 8, 8) for a video one
    noise = torch.zeros(1, latent_format.latent_channels, *[8] * latent_format.latent_dimensions)
    y = base.encode_adm(
        pooled_output=torch.zeros(1, pooled), device=torch.device("cpu"), noise=noise, width=64, height=64,
        prompt_type="positive", seed=0,
    )  # fmt: skip
    return None if y is None else int(y.shape[-1])


def check_conditioning(model, conditioning: list, source: Source) -> None:
    """Refuse a CONDITIONING (every entry) whose token width or pooled output the MODEL cannot take."""
    tokens_wide = context_dim(model.model.model_config.unet_config)
    pooled_wide = pooled_width(model)
    kind = type(model.model).__name__
    for tokens, extras in conditioning:
        if tokens is not None and tokens_wide is not None and tokens.shape[-1] != tokens_wide:
            raise ValueError(
                f"{source.name} conditioning has context dimension {tokens.shape[-1]} but the MODEL expects "
                f"{tokens_wide}: {source.remedy}"
            )
        # SDXL reads a CLIP vision embedding instead of the pooled output when one is attached.
        if pooled_wide is None or "unclip_conditioning" in extras:
            continue
        pooled = extras.get("pooled_output")
        if not isinstance(pooled, torch.Tensor):
            raise ValueError(
                f"{source.name} conditioning has no pooled output, which the MODEL ({kind}) needs: "
                f"{source.remedy}"
            )
        if pooled.shape[-1] != pooled_wide:
            raise ValueError(
                f"{source.name} conditioning has a {pooled.shape[-1]}-wide pooled output but the MODEL "
                f"({kind}) expects one {pooled_wide} wide: {source.remedy}"
            )


def check_prompt_tree(model, prompt_set: PromptTreeSet | None, source: Source = PROMPT_TREE_INPUT) -> None:
    """Refuse an empty prompt set, or one whose conditioning does not fit the MODEL."""
    if prompt_set is None or prompt_set.tree.n_prompts < 1:
        raise ValueError(f"{source.name} input is empty")
    try:
        check_tree_matches_model(prompt_set, model)
        check_token_lengths(prompt_set, model)
    except ValueError as error:
        if source is PROMPT_TREE_INPUT:
            raise
        # Their messages name prompt_tree: say which input carried it here.
        raise ValueError(f"{source.name} (the trunk's prompt_tree): {error}") from error
    check_conditioning(model, prompt_set.conditioning, source)


def check_model_inputs(
    model, prompt_set: PromptTreeSet, negative: list, cfg: float, source: Source = PROMPT_TREE_INPUT
) -> None:
    """The checks every sampler node makes on its MODEL's conditioning and guidance."""
    check_model_family(model)
    check_prompt_tree(model, prompt_set, source)
    check_conditioning(model, negative, NEGATIVE_INPUT)
    check_cfg(cfg)


def check_latent_image(model, latent: dict) -> torch.Tensor:
    """The latent_image of a planning node (batch 1: (1, C, H, W), or (1, C, T, H, W) for a video model),
    fitted to the MODEL as stock KSampler fits it."""
    samples = latent["samples"]
    if samples.shape[0] != 1:
        raise ValueError(
            f"latent_image has batch size {samples.shape[0]}; give one latent (batch 1): "
            "it sets the size, and the prompt set sets the batch"
        )
    # An empty latent of another channel count is made to fit, as stock KSampler does (and an image
    # latent given to a video model gets its frame axis).
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    check_latent_dimensions(model, samples, "latent_image")
    check_latent_channels(
        model, samples, "latent_image",
        "connect a latent made for this model (its empty latent, or VAE Encode with this checkpoint's VAE)",
    )  # fmt: skip
    return samples


def check_latent_dimensions(model, samples: torch.Tensor, name: str) -> None:
    """Refuse a latent whose layout is not the MODEL's: (B, C, H, W) for image models, (B, C, T, H, W)
    for video models (Wan, ...), as its latent format says."""
    spatial = model.get_model_object("latent_format").latent_dimensions
    if samples.ndim != 2 + spatial:
        kinds = {2: "an image latent (batch, channels, height, width)",
                 3: "a video latent (batch, channels, frames, height, width)"}  # fmt: skip
        wanted = kinds.get(spatial, f"a latent of {2 + spatial} dimensions")
        raise ValueError(
            f"{name} has {samples.ndim} dimensions but this MODEL ({type(model.model).__name__}) takes "
            f"{wanted}: connect the empty latent node made for this model"
        )


# Model configs of ComfyUI's Wan family that hierarchical sampling supports: text-to-video, whose only
# per-prompt input is the text. The others condition every prompt on an image, a control video, camera
# poses, audio or reference frames that Prompt Set Cluster does not carry, so they would sample a
# different video than stock sampling gives (ComfyUI fills what is missing with zeros).
WAN_TEXT_TO_VIDEO = ("WAN21_T2V", "WAN22_T2V")

# Model classes (comfy.model_base, subclasses included) whose conditioning carries per-prompt inputs that
# a group of prompts cannot be given, and why (ComfyUI 0.3.75; docs/sampling.md, "Model families").
UNCARRIED_CONDITIONING = {
    "LTXV": "read the T5 encoder's integer attention mask over their 128 padded text tokens in every "
    "cross-attention, and a group of prompts has no such mask (a mean of integer masks is undefined, and "
    "a fractional one LTXV would add to its attention scores as it is, unmasking the padding)",
    "HunyuanVideo": "condition on per-prompt inputs besides the text tokens that a group cannot mix: the "
    "byT5 glyph tokens of quoted text (HunyuanVideo 1.5: only prompts that quote text have them, each of "
    "its own length), the Llama encoder's integer attention mask (HunyuanVideo), and an image in the "
    "image-to-video variants",
}


def check_model_family(model) -> None:
    """Refuse model types whose conditioning hierarchical sampling cannot carry, naming the type."""
    base = model.model
    config = type(base.model_config).__name__
    for name, why in UNCARRIED_CONDITIONING.items():
        if isinstance(base, getattr(comfy.model_base, name)):
            raise ValueError(
                f"model: {config} ({type(base).__name__}) models {why}: hierarchical sampling does not "
                "support this family; use one it supports (docs/sampling.md, Model families)"
            )
    if isinstance(base, comfy.model_base.WAN21) and config not in WAN_TEXT_TO_VIDEO:
        raise ValueError(
            f"model: {config} ({type(base).__name__}) models take a per-prompt image, video, camera or audio "
            "input besides the text, which hierarchical sampling does not carry: use a text-to-video model "
            f"({' or '.join(WAN_TEXT_TO_VIDEO)}, e.g. Wan 2.1 T2V, Wan 2.2 T2V 14B or TI2V 5B)"
        )


def check_latent_channels(model, samples: torch.Tensor, name: str, remedy: str) -> None:
    """Refuse latents whose channel count is not the MODEL's latent format's."""
    channels = model.get_model_object("latent_format").latent_channels
    if samples.shape[1] != channels:
        raise ValueError(
            f"{name} has {samples.shape[1]} latent channels but this MODEL uses {channels}: {remedy}"
        )


def _finite(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_cfg(cfg: float) -> float:
    """cfg as a float; refuses NaN and infinities (they would turn every image into NaN)."""
    if not _finite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg!r}: set cfg to a number such as 7")
    return float(cfg)


def check_denoise(denoise: float) -> float:
    """denoise as a float in (0, 1]; at 0 there is no step to sample, so nothing to plan."""
    if not _finite(denoise) or not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be a number in [0, 1], got {denoise!r}")
    if denoise == 0:
        raise ValueError(
            "denoise is 0, which leaves no step to sample: set denoise above 0, or connect the latent on "
            "directly (a stock KSampler returns it unchanged at denoise 0)"
        )
    return float(denoise)


def check_sigmas(sigmas: torch.Tensor) -> None:
    """Refuse a schedule without a step (what a scheduler gives at denoise 0)."""
    if sigmas.shape[-1] < 2:
        raise ValueError(
            "sigmas input holds no step to sample (a scheduler at denoise 0 gives none): "
            "set the scheduler's denoise above 0"
        )


def check_composable(model_options: dict) -> None:
    """Refuse the model patches that cannot follow a batch whose rows change as groups split, naming the
    node and what to use instead (docs/sampling.md, "Composing with other nodes")."""
    # EasyCache and SelfAttentionGuidance are not refused: the sampler runs EasyCache's rule on groups
    # (nodes/step_cache.py) and hands SAG one attention map per row (nodes/attention_guidance.py).
    for function in model_options.get("sampler_post_cfg_function", []):
        name = getattr(function, "__qualname__", "")
        if name.startswith(SAG_PREFIX) and GroupedAttentionMaps.find(model_options) is None:
            raise ValueError(
                "SelfAttentionGuidance: this ComfyUI's version of it keeps its attention map where the "
                "hierarchical sampler cannot hand it one map per prompt row, so each row would be blurred "
                "with another group's map. Remove it, or use PerturbedAttentionGuidance"
            )
        if name.startswith("TemporalScoreRescaling."):
            raise ValueError(
                "TemporalScoreRescaling works on one latent row at a time: it tests the step's sigma, one "
                "per row, as a single number (stock KSampler with a batch of two fails the same way), and a "
                "hierarchical sampler runs the whole set as one batch. Remove it from the MODEL"
            )


def check_images_per_prompt(copies: object) -> int:
    """images_per_prompt as a whole number >= 1."""
    # numbers.Real, not int: numpy integers (a script's batch arithmetic) were accepted before this check.
    whole = isinstance(copies, Real) and not isinstance(copies, bool) and int(copies) == copies
    if not whole or copies < 1:
        raise ValueError(f"images_per_prompt must be a whole number >= 1, got {copies!r}")
    return int(copies)


def check_budget(mode: str, value: float) -> Budget:
    """The Budget of a node's budget and budget_value inputs; a bad value is refused naming budget_value."""
    if mode not in BUDGET_MODES:
        return Budget(mode, value)  # refuses naming budget
    try:
        return Budget(mode, value)
    except ValueError as error:
        raise ValueError(f"budget_value: {error}") from error


def check_budget_steps(budget: Budget, steps: int, probe_per_image: float = 0.0) -> Budget:
    """The budget checked against the run's step count (evaluations per image are at most the steps,
    plus what a probe choosing the tree spends per image)."""
    try:
        return budget.check(steps, probe_per_image)
    except ValueError as error:
        if budget.mode != "evaluations_per_image":
            raise
        raise ValueError(f"budget_value: {error}") from error


def end_step(end_at_step: int, steps: int, start: int) -> int:
    """The step a trunk or branch stops at: end_at_step, at most the run's last step."""
    if start >= steps:
        raise ValueError(
            f"hier_latent is already sampled through all {steps} of its steps, so this Branch Sampler has "
            f"nothing left to do: set end_at_step below {steps} on the Shared Trunk Sampler (or Branch "
            "Sampler) before it, or use a Hierarchical KSampler when no branch should follow"
        )
    end = min(int(end_at_step), steps)
    if end <= start:
        raise ValueError(f"end_at_step ({end_at_step}) must come after the starting step ({start})")
    return end
