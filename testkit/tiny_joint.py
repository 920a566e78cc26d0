# SPDX-License-Identifier: GPL-3.0-or-later
"""TEST MODELS: a tiny joint-attention image model whose prompts differ in token length (Chroma); the
families that refuse such prompts (Lumina 2 / Z-Image, Qwen-Image, Flux.2, HiDream) are in
``tiny_llm_families.py``.

Chroma ships as separate files, and each tiny one is written in the layout of the real file and loaded
through the functions ComfyUI's loaders call:

- diffusion model (UNETLoader): ComfyUI's ``Chroma`` transformer (one double and one single block, 64
  wide, two heads) with random weights. ComfyUI's detection (``comfy.model_detection``) recognises the
  file as Chroma from its keys, but fixes the widths of the real model (3072 wide, a 5120-wide
  modulation approximator): the file's metadata carries the tiny widths, and the loader finds the model
  config through ComfyUI's own matching (``model_config_from_unet_config``) from them, builds the model
  (``get_model``) and loads the weights with ``load_model_weights``, as ``load_diffusion_model`` does;
- text encoder (CLIPLoader type "chroma"): ComfyUI's T5-XXL encoder class (``pixart_te``, Chroma's
  target) with two 64-wide blocks and the real 32,128-piece vocabulary, behind ComfyUI's own
  ``PixArtTokenizer`` (the T5 tokenizer bundled in ComfyUI, ``comfy/text_encoders/t5_tokenizer``): it
  does not pad, so every prompt keeps its own token count, as with the real encoder. The tiny widths
  reach ComfyUI's T5 through ``model_options`` (``t5xxl_model_config``), read from the file's metadata.

The files are generated once, deterministically, in ComfyUI's model folders. Their pictures are noise.
"""

from __future__ import annotations

import json

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.pixart_t5
import comfy.utils
import folder_paths
import torch

from .tiny_model import float32_patcher, initialise_parameters, random_model
from .tiny_video import _ensure, _save

GENERATOR_VERSION = 1  # bump when the generated weights change, so that stale files are never reused
DEFAULT_SEED = 20251201
T5_WIDTH = 64
"""The tiny T5's width: the token width Chroma's ``txt_in`` takes."""
T5_CONFIG = {"d_model": T5_WIDTH, "d_ff": 32, "d_kv": 16, "num_heads": 4, "num_layers": 2}
"""What the tiny text encoder changes in ComfyUI's t5_config_xxl.json (its vocabulary, 32,128, stays)."""
T5_MODEL_OPTIONS_KEY = "t5xxl_model_config"
"""The ``model_options`` key through which ComfyUI's SDClipModel overrides its T5 config."""
CHROMA_CONFIG = {
    "image_model": "chroma",
    "in_channels": 64,  # 16 latent channels in 2 x 2 patches
    "out_channels": 64,
    "context_in_dim": T5_WIDTH,
    "hidden_size": 64,
    "mlp_ratio": 2.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [8, 12, 12],  # sums to the head width, 64 / 2
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "in_dim": 64,  # the approximator's input: timestep (16), guidance (16), modulation index (32)
    "out_dim": 64,  # the hidden size
    "hidden_dim": 32,
    "n_layers": 2,
}
"""The tiny Chroma's unet_config (what the file's metadata carries)."""
META_CHROMA_CONFIG = "hierdiff.tiny_chroma.config"
META_T5_CONFIG = "hierdiff.tiny_t5.config"
CHROMA_NAME = f"hierdiff-tiny-chroma-v{GENERATOR_VERSION}.safetensors"
T5_NAME = f"hierdiff-tiny-t5-chroma-v{GENERATOR_VERSION}.safetensors"


# --- Chroma diffusion model --------------------------------------------------------------------------


def _chroma_config_class(unet_config: dict, state_dict: dict[str, torch.Tensor]):
    """ComfyUI's model config for ``unet_config``, found by its own matching (``supported_models``)."""
    model_config = comfy.model_detection.model_config_from_unet_config(dict(unet_config), state_dict)
    if model_config is None:
        raise RuntimeError(f"ComfyUI has no model config matching {unet_config}")
    return model_config


def _fill_norm_scales(network: torch.nn.Module) -> None:
    with torch.no_grad():
        # RMSNorm scales (query-key norms, the approximator's norms) are 1-D "scale" parameters: 1.
        for name, parameter in network.named_parameters():
            if parameter.ndim == 1 and name.endswith("scale"):
                parameter.fill_(1.0)


def build_chroma_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The tiny Chroma as a diffusion-model file's state dict (float32)."""
    model_config = _chroma_config_class(CHROMA_CONFIG, {})
    network = random_model(model_config, torch.Generator().manual_seed(seed)).diffusion_model
    _fill_norm_scales(network)
    return {key: value.to(torch.float32) for key, value in network.state_dict().items()}


def ensure_chroma_model() -> str:
    """The path of the tiny Chroma in ComfyUI's ``diffusion_models`` folder, written if missing."""
    metadata = {META_CHROMA_CONFIG: json.dumps(CHROMA_CONFIG, sort_keys=True)}
    return _ensure("diffusion_models", CHROMA_NAME, lambda p: _save(build_chroma_state_dict(), p, metadata))


def load_chroma_model(path: str | None = None) -> comfy.model_patcher.ModelPatcher:
    """The tiny Chroma, loaded as ``comfy.sd.load_diffusion_model`` loads a file, with the widths from the
    file's metadata; checks that ComfyUI's detection recognises the weights as Chroma."""
    path = path or ensure_chroma_model()
    state_dict, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    config = json.loads((metadata or {}).get(META_CHROMA_CONFIG, "null"))
    if config is None:
        raise RuntimeError(f"{path} is not a hierdiff tiny Chroma file: no {META_CHROMA_CONFIG!r} metadata")
    detected = comfy.model_detection.detect_unet_config(state_dict, "")
    if (detected or {}).get("image_model") != "chroma":
        raise RuntimeError(f"{path}: ComfyUI's detection does not recognise Chroma weights ({detected})")
    model_config = _chroma_config_class(config, state_dict)
    return float32_patcher(model_config, state_dict)


# --- T5 text encoder (Chroma's) ----------------------------------------------------------------------


def _t5_encoder(dtype: torch.dtype = torch.float32):
    """ComfyUI's Chroma text encoder class (``pixart_te``); its config comes through ``model_options``."""
    return comfy.text_encoders.pixart_t5.pixart_te(dtype_t5=dtype)


def build_t5_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The tiny T5's weights in the real file's layout."""
    encoder = _t5_encoder()(
        device="cpu", dtype=torch.float32, model_options={T5_MODEL_OPTIONS_KEY: dict(T5_CONFIG)}
    )
    transformer = encoder.t5xxl.transformer
    initialise_parameters(transformer, torch.Generator().manual_seed(seed + 1))
    return {key: value.to(torch.float32) for key, value in transformer.state_dict().items()}


def ensure_text_encoder() -> str:
    """The path of the tiny T5 in ComfyUI's ``text_encoders`` folder, written if missing."""
    metadata = {META_T5_CONFIG: json.dumps(T5_CONFIG, sort_keys=True)}
    return _ensure("text_encoders", T5_NAME, lambda p: _save(build_t5_state_dict(), p, metadata))


def load_text_encoder(path: str | None = None) -> comfy.sd.CLIP:
    """The tiny T5 as CLIPLoader (type "chroma") loads a text encoder: ComfyUI's Chroma target
    (``PixArtTokenizer``, ``pixart_te``), the T5 config from the file's metadata."""
    path = path or ensure_text_encoder()
    state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    config = json.loads((metadata or {}).get(META_T5_CONFIG, "null"))
    if config is None:
        raise RuntimeError(f"{path} is not a hierdiff tiny T5 file: no {META_T5_CONFIG!r} metadata")
    dtype = state_dict["shared.weight"].dtype
    target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.pixart_t5.PixArtTokenizer, _t5_encoder(dtype)
    )
    clip = comfy.sd.CLIP(
        target,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        parameters=comfy.utils.calculate_parameters(state_dict),
        model_options={T5_MODEL_OPTIONS_KEY: config},
    )
    missing, unexpected = clip.load_sd(state_dict)
    if missing or unexpected:
        raise RuntimeError(f"{path}: text encoder weights missing {missing}, unexpected {unexpected}")
    return clip


def empty_latent(size: int = 8) -> dict:
    """What EmptySD3LatentImage gives (Chroma's latent: Flux's 16 channels) for an 8 x ``size`` image."""
    return {"samples": torch.zeros(1, 16, size, size)}
