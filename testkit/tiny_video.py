# SPDX-License-Identifier: GPL-3.0-or-later
"""TEST MODELS: tiny Wan 2.1 / Wan 2.2 text-to-video files (diffusion model, umt5 text encoder, VAE).

Wan ships as separate files, and each tiny one is written in the layout of the real file and loaded
through the function ComfyUI's own loader node calls:

- diffusion model (UNETLoader -> ``comfy.sd.load_diffusion_model``): ComfyUI's ``WanModel`` with
  random weights, one block 128 wide (its detection gives one head per 128 channels) taking the real
  4096-wide umt5 tokens. ComfyUI's detection picks the family from the keys and shapes alone:
  ``wan2.1_t2v`` -> ``WAN21_T2V`` (16 latent channels, the ``Wan21`` format, which Wan 2.2 14B T2V
  shares), ``wan2.2_ti2v_5b`` -> ``WAN22_T2V`` (48 channels, the ``Wan22`` format);
- text encoder (CLIPLoader type "wan"): ComfyUI's umt5 ``T5`` in the real file layout and width
  (4096, what WanModel takes), but two blocks of one 8-wide head and an 8-wide feed-forward, with a
  256-piece vocabulary, behind ComfyUI's own ``WanT5Tokenizer``. Like a real umt5 file it carries its
  sentencepiece model as the ``spiece_model`` tensor. ComfyUI's text-encoder detection recognises
  umt5-xxl by its 24th block, so the loader builds the target that ``comfy.sd.load_clip`` builds for
  CLIPType.WAN (``comfy.text_encoders.wan.te()`` and ``WanT5Tokenizer``) itself, with the narrow
  widths from the file's metadata passed through ``model_options``, and loads the weights with
  ``CLIP.load_sd`` as load_clip does. (24 blocks would pass the detection, at 10x the encoding time.)
  The sentencepiece model is trained here on generated sentences: the real umt5 one is not available
  offline;
- VAE (VAELoader -> ``comfy.sd.VAE``): ComfyUI's 3-D causal Wan 2.1 VAE, 8 channels wide (the loader
  reads the width from the weights). Wan 2.2's 48-channel VAE has a fixed 160-channel width in
  ComfyUI, too heavy for a CPU test, so the tiny 5B model is tested up to its latents.

The files are generated once, deterministically, in ComfyUI's model folders. Their videos are noise.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass

import comfy.ldm.wan.vae
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.wan
import comfy.utils
import folder_paths
import torch

from .tiny_model import initialise_parameters, random_model

GENERATOR_VERSION = 1  # bump when the generated weights change, so that stale files are never reused
DEFAULT_SEED = 20250715
WAN_DIM = 128
"""The tiny network's width: ComfyUI's Wan detection sets one attention head per 128 channels."""
UMT5_WIDTH = 4096
"""umt5-xxl's width, which ComfyUI's WanModel takes as its text input and its T5 detection requires."""
UMT5_CONFIG = {"d_ff": 8, "d_kv": 8, "num_heads": 1, "num_layers": 2, "vocab_size": 256}
"""What the tiny text encoder changes in ComfyUI's umt5_config_xxl.json (its width, 4096, stays)."""
UMT5_MODEL_OPTIONS_KEY = "umt5xxl_model_config"
"""The ``model_options`` key through which ComfyUI's SDClipModel overrides its T5 config."""
VAE_DIM = 8
META_UMT5_CONFIG = "hierdiff.tiny_umt5.config"
TEXT_ENCODER_NAME = f"hierdiff-tiny-umt5-2layer-v{GENERATOR_VERSION}.safetensors"
VAE_NAME = f"hierdiff-tiny-wan21-vae-v{GENERATOR_VERSION}.safetensors"


@dataclass(frozen=True)
class WanVariant:
    """One Wan text-to-video model: the ComfyUI config class its file is detected as, and its latent."""

    name: str
    config_class: type
    latent_channels: int

    @property
    def file_name(self) -> str:
        return f"hierdiff-tiny-{self.name}-v{GENERATOR_VERSION}.safetensors"


VARIANTS: dict[str, WanVariant] = {
    "wan2.1_t2v": WanVariant("wan2.1_t2v", comfy.supported_models.WAN21_T2V, 16),
    "wan2.2_ti2v_5b": WanVariant("wan2.2_ti2v_5b", comfy.supported_models.WAN22_T2V, 48),
}


def _wan_config(channels: int) -> dict:
    """The unet_config ComfyUI's detection reports for the tiny weights (one block, 128 wide)."""
    return {
        "image_model": "wan2.1",
        "model_type": "t2v",
        "dim": WAN_DIM,
        "in_dim": channels,
        "out_dim": channels,
        "ffn_dim": 64,
        "num_layers": 1,
        "num_heads": WAN_DIM // 128,
        "patch_size": (1, 2, 2),
        "freq_dim": 256,
        "window_size": (-1, -1),
        "qk_norm": True,
        "cross_attn_norm": True,
        "eps": 1e-6,
    }


def _save(state_dict: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> str:
    """Write ``state_dict`` to ``path`` atomically (a temporary file in the same folder, renamed)."""
    import safetensors.torch

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(prefix=".partial-", suffix=".safetensors", dir=folder)
    os.close(descriptor)
    try:
        tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
        safetensors.torch.save_file(tensors, partial, metadata=metadata)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise
    return path


def _ensure(kind: str, name: str, write) -> str:
    path = os.path.join(folder_paths.get_folder_paths(kind)[0], name)
    if not os.path.isfile(path):
        write(path)
    return path


# --- diffusion model ---------------------------------------------------------------------------------


def build_wan_state_dict(variant: str, seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The tiny ``variant`` (a key of VARIANTS) as a diffusion-model file's state dict (float32)."""
    spec = VARIANTS[variant]
    model_config = spec.config_class(_wan_config(spec.latent_channels))
    network = random_model(model_config, torch.Generator().manual_seed(seed)).diffusion_model
    return {key: value.to(torch.float32) for key, value in network.state_dict().items()}


def ensure_wan_model(variant: str) -> str:
    """The path of the tiny ``variant`` in ComfyUI's ``diffusion_models`` folder, written if missing."""
    return _ensure(
        "diffusion_models", VARIANTS[variant].file_name, lambda p: _save(build_wan_state_dict(variant), p)
    )


def load_wan_model(variant: str) -> comfy.model_patcher.ModelPatcher:
    """The tiny ``variant``, loaded as UNETLoader loads a file; checks ComfyUI detected its family."""
    path = ensure_wan_model(variant)
    model = comfy.sd.load_diffusion_model(path)
    expected = VARIANTS[variant].config_class
    if type(model.model.model_config) is not expected:
        raise RuntimeError(f"{path}: detected as {type(model.model.model_config).__name__}, not {expected}")
    return model


# --- umt5 text encoder -------------------------------------------------------------------------------

_WORDS = (
    "a the of in on with and under over beside through at dawn dusk night morning golden hour "
    "tiger lion panther jaguar cheetah leopard wolf fox deer horse eagle owl whale dolphin "
    "runs walks leaps swims flies rests sleeps hunts climbs dives turns looks "
    "forest jungle river lake ocean mountain desert meadow city street snow rain fog storm "
    "camera slow motion close up wide shot tracking aerial cinematic blurry low quality watermark "
    "red green blue orange white black bright dark soft warm cold tall grass water sky"
).split()


def train_tokenizer(vocab_size: int = UMT5_CONFIG["vocab_size"]) -> bytes:
    """A sentencepiece model with umt5's special ids (pad 0, end 1, unknown 2, no start token), trained
    on sentences made from a fixed word list; returns its serialized proto."""
    import sentencepiece

    sentences = [
        " ".join(_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(4 + i % 9)) for i in range(2000)
    ]
    sentences += _WORDS
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, character_coverage=1.0,
        minloglevel=2, byte_fallback=False,
    )  # fmt: skip
    return model.getvalue()


def _umt5_model(config: dict) -> torch.nn.Module:
    """ComfyUI's Wan text encoder with ``config`` over umt5_config_xxl.json; its T5 transformer."""
    encoder = comfy.text_encoders.wan.te()(
        device="cpu", dtype=torch.float32, model_options={UMT5_MODEL_OPTIONS_KEY: config}
    )
    return encoder.umt5xxl.transformer


def build_umt5_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The tiny umt5's weights in the real file's layout, with its sentencepiece model (``spiece_model``)."""
    transformer = _umt5_model(dict(UMT5_CONFIG))
    initialise_parameters(transformer, torch.Generator().manual_seed(seed + 1))
    state_dict = {key: value.to(torch.float32) for key, value in transformer.state_dict().items()}
    state_dict["spiece_model"] = torch.frombuffer(bytearray(train_tokenizer()), dtype=torch.uint8)
    return state_dict


def ensure_text_encoder() -> str:
    """The path of the tiny umt5 in ComfyUI's ``text_encoders`` folder, written if missing."""
    metadata = {META_UMT5_CONFIG: json.dumps(UMT5_CONFIG, sort_keys=True)}
    return _ensure("text_encoders", TEXT_ENCODER_NAME, lambda p: _save(build_umt5_state_dict(), p, metadata))


def load_text_encoder(path: str | None = None) -> comfy.sd.CLIP:
    """The tiny umt5 as CLIPLoader (type "wan") loads a text encoder: ComfyUI's Wan target and tokenizer
    (its sentencepiece model from the file), the T5 config from the file's metadata."""
    path = path or ensure_text_encoder()
    state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    config = json.loads((metadata or {}).get(META_UMT5_CONFIG, "null"))
    if config is None:
        raise RuntimeError(f"{path} is not a hierdiff tiny umt5 file: no {META_UMT5_CONFIG!r} metadata")
    # load_clip's detection passes the file's weight dtype on as the T5's (dtype_t5): so does this.
    dtype = state_dict["shared.weight"].dtype
    target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.wan.WanT5Tokenizer, comfy.text_encoders.wan.te(dtype_t5=dtype)
    )
    clip = comfy.sd.CLIP(
        target,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        tokenizer_data={"spiece_model": state_dict.pop("spiece_model")},
        parameters=comfy.utils.calculate_parameters(state_dict),
        model_options={UMT5_MODEL_OPTIONS_KEY: config},
    )
    missing, unexpected = clip.load_sd(state_dict)
    if missing or unexpected:
        raise RuntimeError(f"{path}: text encoder weights missing {missing}, unexpected {unexpected}")
    return clip


# --- VAE ---------------------------------------------------------------------------------------------


def build_vae_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """ComfyUI's Wan 2.1 VAE at width VAE_DIM with random weights (the real file's layout)."""
    vae = comfy.ldm.wan.vae.WanVAE(
        dim=VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed + 2)
    initialise_parameters(vae, generator)
    with torch.no_grad():
        for name, parameter in vae.named_parameters():
            if name.endswith("gamma"):  # RMS norm scales, (C, 1, 1[, 1]): 1, like other norm weights
                parameter.fill_(1.0)
    return {key: value.to(torch.float32) for key, value in vae.state_dict().items()}


def ensure_vae() -> str:
    """The path of the tiny Wan 2.1 VAE in ComfyUI's ``vae`` folder, written if missing."""
    return _ensure("vae", VAE_NAME, lambda p: _save(build_vae_state_dict(), p))


def load_vae(path: str | None = None) -> comfy.sd.VAE:
    """The tiny Wan 2.1 VAE, loaded as VAELoader loads a file."""
    path = path or ensure_vae()
    state_dict, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    vae = comfy.sd.VAE(sd=state_dict, metadata=metadata)
    vae.throw_exception_if_invalid()
    return vae


def empty_video_latent(variant: str, frames: int = 5, size: int = 64) -> dict:
    """What ComfyUI's empty video latent nodes give for ``frames`` frames of size x size: batch 1,
    the variant's channels, (frames - 1) // r + 1 latent frames, size / s square (r, s: 4, 8 for Wan 2.1;
    4, 16 for Wan 2.2 5B)."""
    channels = VARIANTS[variant].latent_channels
    spatial = 16 if channels == 48 else 8
    return {"samples": torch.zeros(1, channels, (frames - 1) // 4 + 1, size // spatial, size // spatial)}
