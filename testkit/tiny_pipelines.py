# SPDX-License-Identifier: GPL-3.0-or-later
"""TEST MODELS: tiny, randomly initialised diffusers pipeline folders, one builder per family.

No pretrained weights can be downloaded where this project is developed and tested, so the diffusers
adapter's tests build these: each family's real classes (UNet2DConditionModel, SD3Transformer2DModel,
FluxTransformer2DModel, PixArtTransformer2DModel, AutoencoderKL, CLIP and T5 text encoders with their
tokenizers) at hidden sizes 8-32 with one or two layers, every parameter set explicitly from a seeded
generator, written with ``save_pretrained`` as a complete pipeline folder (``model_index.json`` and one
sub-folder per component), so tests load them with ``DiffusionPipeline.from_pretrained(folder,
local_files_only=True)`` exactly as real weights load. Images are 32 x 32 pixels over 8 x 8 latents
(a 4x VAE); their pictures are noise.

Tokenizers are built in code too: CLIP's as a character-level BPE (:func:`write_char_tokenizer`), T5's
as a character-level unigram model (:func:`write_char_t5_tokenizer`).
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from .tiny_kandinsky import build_tiny_decoder, write_char_tokenizer

SIZE = 32
"""Image height and width in pixels the tiny pipelines are built for (8 x 8 latents)."""
T5_WIDTH = 32
"""Width of the tiny T5 encoder's outputs (SD3's and Flux's joint-attention text width)."""

_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
"""Stable Diffusion's training noise schedule, as its published scheduler configs set it."""


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block on one torch thread, restoring the count after. The tiny models' kernels gain
    nothing from threads, and on a shared 2-core machine OpenMP workers spinning against other processes
    made each call up to 45x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def initialise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter of ``module`` a value drawn from ``seed`` and return the module.

    Matrices and kernels get N(0, 1/fan_in), which keeps activations of order one through the network;
    1-D weights (norm scales) get 1 + N(0, 0.1) and biases N(0, 0.1). Nothing stays at a zero
    initialisation (adaLN-zero gates, zero output convolutions), so every input reaches the output.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if parameter.ndim >= 2:
                parameter.copy_(noise / math.sqrt(math.prod(parameter.shape[1:])))
            elif name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)
    return module


def write_char_t5_tokenizer(folder: str | os.PathLike[str]) -> T5Tokenizer:
    """Write and return a character-level T5 (unigram) tokenizer for printable ASCII.

    Ids 0, 1, 2 are T5's pad, end-of-sequence and unknown tokens; every character comes in a
    word-initial ("▁c") and a word-inner form, as sentencepiece splits words.
    """
    folder = Path(folder)
    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [("\u2581" + c, -2.0) for c in chars] + [(c, -3.0) for c in chars]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)
    # Loaded back from the written files, as a pipeline loads it.
    return T5Tokenizer.from_pretrained(folder, local_files_only=True)


def _clip(vocab_size: int, hidden: int, projection: bool, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        projection_dim=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=2,
        num_hidden_layers=layers,  # two: SDXL and SD3 read the penultimate layer
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return initialise(model, seed)


def _t5(vocab_size: int, seed: int) -> T5EncoderModel:
    """One T5 encoder layer, ``T5_WIDTH`` wide (4 heads of 8), with T5's pad and end ids."""
    config = T5Config(
        vocab_size=vocab_size, d_model=T5_WIDTH, d_kv=8, d_ff=2 * T5_WIDTH, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return initialise(T5EncoderModel(config), seed)


def _vae(latent_channels: int = 4, seed: int = 0, **config) -> AutoencoderKL:
    levels = 3  # a 4x VAE: 8 x 8 latents for 32 px images
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=SIZE,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8,) * levels, layers_per_block=1, norm_num_groups=4, **config,
    )  # fmt: skip
    return initialise(vae, seed)


_UP_BLOCK = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}


def _unet(down_blocks: tuple[str, ...], channels: tuple[int, ...], seed: int, **config) -> torch.nn.Module:
    """A UNet over 4-channel 8 x 8 latents, one layer per block, its up blocks mirroring ``down_blocks``;
    ``config`` adds the family's own settings (cross-attention width, added embeddings)."""
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=down_blocks, up_block_types=tuple(_UP_BLOCK[b] for b in reversed(down_blocks)),
        block_out_channels=tuple(channels), **config,
    )  # fmt: skip
    return initialise(unet, seed)


def _tokenizer(folder: Path, name: str):
    return write_char_tokenizer(folder / name)


def build_tiny_sd(
    folder: str | os.PathLike[str], seed: int = 0, unet_channels: tuple[int, int] = (8, 16)
) -> Path:
    """Stable Diffusion 1.x: a cross-attention UNet over one CLIP text encoder (16 wide); PNDM as
    published. ``unet_channels`` widens the UNet (the benchmark makes it the dominant cost, as a real
    UNet is)."""
    folder = Path(folder)
    tokenizer = _tokenizer(folder, "tokenizer")
    down = ("CrossAttnDownBlock2D", "DownBlock2D")
    unet = _unet(down, unet_channels, seed + 3, cross_attention_dim=16, attention_head_dim=4)
    pipe = StableDiffusionPipeline(
        vae=_vae(seed=seed + 1),
        text_encoder=_clip(len(tokenizer), 16, projection=False, seed=seed + 2),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sdxl(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """SDXL: two CLIP encoders (16 + 16 wide tokens, pooled 16) and a UNet with the text-time embedding
    (pooled text plus six size numbers), Euler as published."""
    folder = Path(folder)
    tokenizer = _tokenizer(folder, "tokenizer")
    tokenizer_2 = _tokenizer(folder, "tokenizer_2")
    unet = _unet(
        ("DownBlock2D", "CrossAttnDownBlock2D"),
        (8, 16),
        seed + 4,
        cross_attention_dim=32,  # CLIP-L's and CLIP-G's tokens side by side
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=16 + 6 * 4,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(seed=seed + 1, scaling_factor=0.13025),
        text_encoder=_clip(len(tokenizer), 16, projection=False, seed=seed + 2),
        text_encoder_2=_clip(len(tokenizer_2), 16, projection=True, seed=seed + 3),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_BETAS, steps_offset=1, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sd3(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Stable Diffusion 3: an MMDiT over two CLIP encoders (8 + 8 wide, padded to the T5 width) and a T5
    encoder, attending jointly over text and image tokens; flow-match Euler with shift 3 as published."""
    folder = Path(folder)
    tokenizer = _tokenizer(folder, "tokenizer")
    tokenizer_2 = _tokenizer(folder, "tokenizer_2")
    tokenizer_3 = write_char_t5_tokenizer(folder / "tokenizer_3")
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 4,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=16,
        pooled_projection_dim=16,  # CLIP-L's and CLIP-G's pooled outputs side by side
        out_channels=4,
        pos_embed_max_size=8,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=initialise(transformer, seed + 1),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(seed=seed + 2, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_clip(len(tokenizer), 8, projection=True, seed=seed + 3),
        tokenizer=tokenizer,
        text_encoder_2=_clip(len(tokenizer_2), 8, projection=True, seed=seed + 4),
        tokenizer_2=tokenizer_2,
        text_encoder_3=_t5(len(tokenizer_3), seed + 5),
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_flux(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Flux.1 [dev]: a double/single-stream transformer with guidance embedding over a CLIP encoder
    (pooled, 16 wide) and a T5 encoder; 2 x 2 packed latents; flow-match Euler with dynamic shifting."""
    folder = Path(folder)
    tokenizer = _tokenizer(folder, "tokenizer")
    tokenizer_2 = write_char_t5_tokenizer(folder / "tokenizer_2")
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2 x 2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=16,
        max_image_seq_len=256,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=_vae(seed=seed + 1, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_clip(len(tokenizer), 16, projection=False, seed=seed + 2),
        tokenizer=tokenizer,
        text_encoder_2=_t5(len(tokenizer_2), seed + 3),
        tokenizer_2=tokenizer_2,
        transformer=initialise(transformer, seed + 4),
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_pixart_sigma(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """PixArt-Sigma: a DiT with cross-attention to T5 tokens (with their attention mask) and learned
    variance; DPM-Solver++ as published. Call it with ``use_resolution_binning=False`` (its bins
    are for the real sample sizes)."""
    folder = Path(folder)
    tokenizer = write_char_t5_tokenizer(folder / "tokenizer")
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        norm_num_groups=4,
        cross_attention_dim=16,
        sample_size=SIZE // 4,
        patch_size=2,
        caption_channels=T5_WIDTH,
        use_additional_conditions=False,
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5(len(tokenizer), seed + 1),
        vae=_vae(seed=seed + 2),
        transformer=initialise(transformer, seed + 3),
        # The pipeline drops the learned variance itself before the scheduler sees the prediction.
        scheduler=DPMSolverMultistepScheduler(**_BETAS, algorithm_type="dpmsolver++"),
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_kandinsky_decoder(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Kandinsky 2.2 decoder (unet/, movq/, scheduler/), DDPM as published: :func:`build_tiny_decoder`."""
    return build_tiny_decoder(folder, seed=seed)


BUILDERS: dict[str, Callable[..., Path]] = {
    "sd": build_tiny_sd,
    "sdxl": build_tiny_sdxl,
    "sd3": build_tiny_sd3,
    "flux": build_tiny_flux,
    "pixart-sigma": build_tiny_pixart_sigma,
    "kandinsky-2.2": build_tiny_kandinsky_decoder,
}
"""Family name (as :mod:`hierdiff_diffusers.families` names it) -> folder builder."""
