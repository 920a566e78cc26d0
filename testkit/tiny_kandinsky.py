# SPDX-License-Identifier: GPL-3.0-or-later
"""TEST MODELS: tiny, randomly initialised Kandinsky 2.2 prior and decoder folders.

No pretrained weights can be downloaded where this project is developed and tested, so tests and
demos build these: the real architectures (``PriorTransformer``, CLIP text and vision encoders with
projection, ``UNet2DConditionModel`` with image-embedding conditioning, ``VQModel`` "movq") at a
few thousand parameters each, with seeded random weights, written with ``save_pretrained`` in
exactly the layouts of ``kandinsky-community/kandinsky-2-2-prior`` and ``-decoder``, so they load
through the same code path as real weights. Their pictures are noise.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch
from diffusers import (
    DDPMScheduler,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    PriorTransformer,
    UnCLIPScheduler,
    UNet2DConditionModel,
    VQModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_TOKENIZER_MAX_LENGTH = 77


def write_char_tokenizer(folder: str | os.PathLike[str]) -> CLIPTokenizer:
    """Write and return a character-level CLIP BPE tokenizer (no merges) for printable ASCII.

    Every word becomes its characters, the last one marked end-of-word (``</w>``), as CLIP's BPE
    does before merging; a few hundred ids instead of CLIP's 49,408 keeps the text encoder tiny.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [c for c in string.printable if not c.isspace()]
    tokens = [_BOS, _EOS, *chars, *(c + "</w>" for c in chars)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    # Loading from the written files (rather than constructing) works with transformers 4.x and 5.x.
    tokenizer = CLIPTokenizer.from_pretrained(
        folder, local_files_only=True, unk_token=_EOS, pad_token=_EOS, model_max_length=_TOKENIZER_MAX_LENGTH
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_prior(
    folder: str | os.PathLike[str], seed: int = 0, embedding_dim: int = 16, image_encoder: bool = True
) -> Path:
    """Write a tiny Kandinsky 2.2 prior pipeline folder (prior/, text_encoder/, tokenizer/, scheduler/,
    image_encoder/ and image_processor/ when ``image_encoder``) with weights drawn from ``seed``."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(folder / "tokenizer")
    eos = tokenizer.convert_tokens_to_ids(_EOS)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=embedding_dim,
            projection_dim=embedding_dim,
            intermediate_size=2 * embedding_dim,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=_TOKENIZER_MAX_LENGTH,
            bos_token_id=tokenizer.convert_tokens_to_ids(_BOS),
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        embedding_dim=embedding_dim,
        num_embeddings=_TOKENIZER_MAX_LENGTH,
    )
    # The de-normalisation statistics start at zero (they are loaded from real weights); a
    # zero std would map every sample to the mean.
    with torch.no_grad():
        prior.clip_std.uniform_(0.5, 1.5)
        prior.clip_mean.normal_(0.0, 0.1)
    # Kandinsky 2.2's prior scheduler settings.
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    vision = processor = None
    if image_encoder:
        vision = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=embedding_dim,
                projection_dim=embedding_dim,
                intermediate_size=2 * embedding_dim,
                num_attention_heads=2,
                num_hidden_layers=1,
                image_size=32,
                patch_size=16,
            )
        )
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipeline = KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=vision,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        image_processor=processor,
    )
    pipeline.save_pretrained(folder)
    return folder


def build_tiny_decoder(folder: str | os.PathLike[str], seed: int = 0, embedding_dim: int = 16) -> Path:
    """Write a tiny Kandinsky 2.2 decoder pipeline folder (unet/, movq/, scheduler/): a UNet
    conditioned on (N, ``embedding_dim``) image embeddings, predicting noise and variance (8
    channels over 4 latent channels) like the real decoder, and a 2x movq (32 px images from 16 x 16
    latents)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=8,
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        encoder_hid_dim=embedding_dim,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=16,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )
    movq = VQModel(
        block_out_channels=(32, 32),  # spatial norm groups by 32
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    # The decoder scheduler settings published with kandinsky-2-2-decoder.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        variance_type="learned_range",
    )
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(folder)
    return folder
