# SPDX-License-Identifier: GPL-3.0-or-later
"""TEST MODELS: tiny SDXL, Stable unCLIP (SD2.1), SD3 and Flux diffusion models with random weights.

Each is ComfyUI's own model class (``comfy.supported_models`` config -> ``comfy.model_base`` model ->
its real network: the SDXL/unCLIP UNet with an adm ``y`` input, SD3's MMDiT, Flux's double/single
stream transformer) at a few tens of thousands of parameters, wrapped in a ``ModelPatcher`` exactly
as a loaded checkpoint is, so ComfyUI's sampling path for each family runs in seconds on a CPU.
There are no text encoders: what hierarchical sampling handles is the CONDITIONING a family's encoder
produces, so :func:`conditioning` builds it directly with the family's shapes and extras (token
tensor, ``pooled_output``, SDXL's size extras, Flux's ``guidance``) from a seeded generator.
Their pictures are noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import torch

from .tiny_model import cpu_patcher, random_model

CONTEXT_DIM = 64
"""Width of every family's token conditioning (SDXL: CLIP-L+G; SD3: CLIP+T5; Flux: T5)."""
POOLED_DIM = 32
"""Width of the pooled text output (SDXL/SD3: CLIP pooled; Flux: CLIP-L pooled)."""
UNCLIP_EMBEDDING_DIM = 16
"""Width of the tiny unCLIP model's image embedding (the tiny Kandinsky prior's default width)."""
SDXL_SIZE_EMBEDDINGS = 6 * 256
"""SDXL's adm appends six 256-wide embeddings (height, width, crop_h, crop_w, target size)."""


class TinySD21UnclipL(comfy.supported_models.SD21UnclipL):
    """Stable unCLIP (SD2.1) whose noise augmentor takes UNCLIP_EMBEDDING_DIM-wide image embeddings
    (the real one's ``noise_aug_config`` sets 768)."""

    noise_aug_config = {
        "noise_schedule_config": {"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"},
        "timestep_dim": UNCLIP_EMBEDDING_DIM,
    }


def _unet_config(adm_in_channels: int, **overrides) -> dict:
    """A two-level SD-family UNet config with 64-channel heads (SDXL/SD2's default head width)."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": adm_in_channels,
        "num_classes": "sequential",
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 64,
        "num_res_blocks": [1, 1],
        "channel_mult": [1, 2],
        "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1, 1],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": True,
        "context_dim": CONTEXT_DIM,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
        **overrides,
    }


@dataclass(frozen=True)
class Family:
    """One model family: its ComfyUI config class, a tiny network config, its latent channels, and the
    extras its text encoder puts in every CONDITIONING entry besides ``pooled_output``."""

    name: str
    config_class: type
    unet_config: dict
    latent_channels: int
    token_count: int
    extras: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "sdxl": Family(
        "sdxl",
        comfy.supported_models.SDXL,
        # SDXL's first level has no transformer; the adm input is pooled CLIP-G + six size embeddings.
        _unet_config(
            POOLED_DIM + SDXL_SIZE_EMBEDDINGS,
            transformer_depth=[0, 1],
            transformer_depth_output=[0, 0, 1, 1],
        ),
        4,
        77,
        # What CLIPTextEncodeSDXL attaches.
        {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024,
         "target_height": 1024},  # fmt: skip
    ),
    "sd21_unclip": Family(
        "sd21_unclip",
        TinySD21UnclipL,
        # The adm input is the noise-augmented image embedding followed by its noise-level embedding.
        _unet_config(2 * UNCLIP_EMBEDDING_DIM),
        4,
        77,
    ),
    "sd3": Family(
        "sd3",
        comfy.supported_models.SD3,
        {
            # MMDiT's hidden width is 64 x depth: depth 1 is one 64-wide head.
            "in_channels": 16,
            "out_channels": 16,
            "patch_size": 2,
            "depth": 1,
            "input_size": None,
            "adm_in_channels": POOLED_DIM,
            "context_embedder_config": {
                "target": "torch.nn.Linear",
                "params": {"in_features": CONTEXT_DIM, "out_features": 64},
            },
            "num_patches": 64,
            "pos_embed_max_size": 8,
            "pos_embed_scaling_factor": None,
            "x_block_self_attn_layers": [],
        },
        16,
        154,  # CLIP-L/G's 77 tokens followed by T5's 77
    ),
    "flux": Family(
        "flux",
        comfy.supported_models.Flux,
        {
            "image_model": "flux",
            "in_channels": 16,
            "out_channels": 16,
            "vec_in_dim": POOLED_DIM,
            "context_in_dim": CONTEXT_DIM,
            "hidden_size": 64,
            "mlp_ratio": 2.0,
            "num_heads": 2,
            "depth": 1,
            "depth_single_blocks": 1,
            "axes_dim": [8, 12, 12],  # sums to the head width, 64 / 2
            "theta": 10000,
            "patch_size": 2,
            "qkv_bias": True,
            "guidance_embed": True,
        },
        16,
        256,  # Flux's T5 tokenizer pads to 256 tokens
        {"guidance": 3.5},  # what FluxGuidance sets
    ),
}


def build_model(family: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """The tiny ``family`` model (a key of FAMILIES) in float32 with weights drawn from ``seed``."""
    spec = FAMILIES[family]
    model_config = spec.config_class(dict(spec.unet_config))
    generator = torch.Generator().manual_seed(seed)
    model = random_model(model_config, generator)
    with torch.no_grad():
        # RMSNorm scales (SD3/Flux query-key norms) are 1-D "scale" parameters: 1, like norm weights.
        for name, parameter in model.diffusion_model.named_parameters():
            if parameter.ndim == 1 and name.endswith("scale"):
                parameter.fill_(1.0)
        # Buffers a checkpoint carries (SD3's fixed position table) are allocated empty by ComfyUI:
        # uninitialised memory, now and then NaN. Draw them too.
        for buffer in model.diffusion_model.buffers():
            if buffer.is_floating_point():
                buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=torch.float32))
    return cpu_patcher(model)


def conditioning(family: str, seed: int, token_count: int | None = None, **extras) -> list:
    """One prompt's CONDITIONING for ``family``, as its text encoder node returns it:
    ``[[tokens (1, T, CONTEXT_DIM), {"pooled_output": (1, POOLED_DIM), family extras..., extras...}]]``
    with values drawn from ``seed``; T is the family's usual token count unless ``token_count``."""
    spec = FAMILIES[family]
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, token_count or spec.token_count, CONTEXT_DIM, generator=generator)
    pooled = torch.randn(1, POOLED_DIM, generator=generator)
    return [[tokens, {"pooled_output": pooled, **spec.extras, **extras}]]


def empty_latent(family: str, size: int = 8) -> dict:
    """An empty LATENT of batch 1 with the family's channel count, ``size`` x ``size``."""
    return {"samples": torch.zeros(1, FAMILIES[family].latent_channels, size, size)}
