# SPDX-License-Identifier: GPL-3.0-or-later
"""A tiny SD1.5-architecture model (UNet, CLIP text encoder, VAE) with random weights, for tests and the demo.

No pretrained weights can be downloaded where this project is developed, so the tests need a model that
is built here. The model has the real SD1.5 structure (ComfyUI's ``SD15`` model config and UNet, its
SD1 CLIP text model behind the real SD1 tokenizer, its KL autoencoder) with tiny widths, so that every
code path ComfyUI takes for SD1.5 runs, in seconds on a CPU. Its pictures are noise.

The weights are written once, deterministically, as a single safetensors checkpoint in the standard SD
key layout (``model.diffusion_model.``, ``cond_stage_model.``, ``first_stage_model.``). ComfyUI's model
detection only recognises full-size SD1.5 widths, so the loader reads the UNet shape with ComfyUI's own
``detect_unet_config``, picks the ``SD15`` model config explicitly, and takes the text-encoder and VAE
widths from the checkpoint's metadata; the weights then go through ComfyUI's normal state-dict loading.
Any checkpoint with this layout and metadata loads the same way (for example a small trained model).
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile

import comfy.ldm.models.autoencoder
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import folder_paths
import torch

# Bump when the generated weights change, so that stale cached files are never reused.
GENERATOR_VERSION = 1
TINY_CHECKPOINT_NAME = f"hierdiff-tiny-test-v{GENERATOR_VERSION}.safetensors"
DEFAULT_SEED = 20250101

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model."
VAE_PREFIX = "first_stage_model."

# Safetensors metadata keys carrying what ComfyUI cannot infer from tiny shapes.
META_FORMAT = "hierdiff.tiny_sd15.format"
META_TEXT_CONFIG = "hierdiff.tiny_sd15.text_config"
META_VAE_CONFIG = "hierdiff.tiny_sd15.vae_config"
META_SEED = "hierdiff.tiny_sd15.seed"
FORMAT_VALUE = "1"

CONTEXT_DIM = 64

# The UNet config exactly as ComfyUI's detect_unet_config reports it for these weights (a test checks).
UNET_CONFIG: dict = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "channel_mult": [1, 2],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": CONTEXT_DIM,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

# A CLIP text transformer in the Hugging Face config format ComfyUI's CLIPTextModel reads. The vocabulary
# and the 77 positions are those of the real SD1 tokenizer; the hidden size feeds the UNet's cross-attention.
TEXT_CONFIG: dict = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_act": "quick_gelu",
    "hidden_size": CONTEXT_DIM,
    "intermediate_size": 2 * CONTEXT_DIM,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": CONTEXT_DIM,
    "layer_norm_eps": 1e-05,
    "bos_token_id": 0,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}

# A KL autoencoder with four resolution levels: 8x down-sampling and 4 latent channels, like SD1.5's.
# Channel counts stay multiples of 32 because ComfyUI's VAE blocks use GroupNorm with 32 groups.
VAE_CONFIG: dict = {
    "embed_dim": 4,
    "ddconfig": {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}


class TinyModelError(RuntimeError):
    """A checkpoint that is not a tiny SD1.5 checkpoint of this layout."""


def initialise_parameters(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter of ``module`` a deterministic value.

    ComfyUI's ops skip PyTorch's initialisation (real weights always get loaded), so freshly built
    modules hold uninitialised memory. Weight matrices and kernels get N(0, 1/fan_in), which keeps
    activations of order one through the network; 1-D weights (the norms' scales) get 1, biases 0.
    Scalars (CLIP's logit scale) keep their constructor value.
    """
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim >= 2:
                fan_in = math.prod(parameter.shape[1:])
                values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.copy_(values / math.sqrt(fan_in))
            elif parameter.ndim == 1 and name.endswith("weight"):
                parameter.fill_(1.0)
            elif parameter.ndim == 1:
                parameter.zero_()


def random_model(model_config, generator: torch.Generator):
    """ComfyUI's model (``comfy.model_base``) of ``model_config`` in float32 on the CPU, its diffusion
    network's parameters drawn from ``generator`` (:func:`initialise_parameters`)."""
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    initialise_parameters(model.diffusion_model, generator)
    return model


def _prefixed(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        prefix + key: tensor.detach().to(torch.float32).contiguous() for key, tensor in state_dict.items()
    }


def build_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """Build the tiny model's weights as one checkpoint-style state dict (float32, deterministic in seed)."""
    generator = torch.Generator().manual_seed(seed)

    model_config = comfy.supported_models.SD15(dict(UNET_CONFIG))
    unet = random_model(model_config, generator).diffusion_model

    text_model = comfy.sd1_clip.SDClipModel(
        device="cpu",
        dtype=torch.float32,
        textmodel_json_config=dict(TEXT_CONFIG),
        return_projected_pooled=False,
    )
    initialise_parameters(text_model, generator)
    # Like SD1.5 checkpoints, the file carries the text transformer only (no logit scale, no projection).
    text_weights = {
        key: value
        for key, value in text_model.state_dict().items()
        if key.startswith("transformer.text_model.")
    }

    vae = comfy.ldm.models.autoencoder.AutoencoderKL(**json.loads(json.dumps(VAE_CONFIG)))
    initialise_parameters(vae, generator)

    return {
        **_prefixed(UNET_PREFIX, unet.state_dict()),
        **_prefixed(CLIP_PREFIX, text_weights),
        **_prefixed(VAE_PREFIX, vae.state_dict()),
    }


def checkpoint_metadata(seed: int = DEFAULT_SEED) -> dict[str, str]:
    """The safetensors metadata the loader needs besides the weights."""
    return {
        META_FORMAT: FORMAT_VALUE,
        META_TEXT_CONFIG: json.dumps(TEXT_CONFIG, sort_keys=True),
        META_VAE_CONFIG: json.dumps(VAE_CONFIG, sort_keys=True),
        META_SEED: str(seed),
    }


def write_checkpoint(path: str, seed: int = DEFAULT_SEED) -> str:
    """Write the tiny checkpoint to ``path`` atomically (a temporary file in the same folder, renamed)."""
    import safetensors.torch

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, partial_path = tempfile.mkstemp(prefix=".partial-", suffix=".safetensors", dir=folder)
    os.close(descriptor)
    try:
        safetensors.torch.save_file(build_state_dict(seed), partial_path, metadata=checkpoint_metadata(seed))
        os.replace(partial_path, path)
    except BaseException:
        os.unlink(partial_path)
        raise
    return path


def default_checkpoint_path() -> str:
    """Where the generated checkpoint lives: ComfyUI's first ``checkpoints`` folder."""
    return os.path.join(folder_paths.get_folder_paths("checkpoints")[0], TINY_CHECKPOINT_NAME)


def ensure_tiny_checkpoint() -> str:
    """Return the path of the generated tiny checkpoint, writing it first if it is not there yet."""
    path = default_checkpoint_path()
    if not os.path.isfile(path):
        write_checkpoint(path)
    return path


def _required_metadata(path: str, metadata: dict[str, str] | None, key: str) -> dict:
    if not metadata or key not in metadata:
        raise TinyModelError(
            f"{path} is not a hierdiff tiny SD1.5 checkpoint: its safetensors metadata lacks {key!r}"
        )
    return json.loads(metadata[key])


def load_checkpoint(path: str) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """Load a tiny SD1.5 checkpoint as ComfyUI's CheckpointLoaderSimple would load a full-size one.

    Returns ``(model, clip, vae)``: a ModelPatcher around an SD1.5 ``BaseModel``, a ``comfy.sd.CLIP``
    with the SD1 tokenizer, and a ``comfy.sd.VAE``.
    """
    state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    if metadata is None or metadata.get(META_FORMAT) != FORMAT_VALUE:
        raise TinyModelError(f"{path} is not a hierdiff tiny SD1.5 checkpoint (metadata {META_FORMAT!r})")
    text_config = _required_metadata(path, metadata, META_TEXT_CONFIG)
    vae_config = _required_metadata(path, metadata, META_VAE_CONFIG)

    unet_config = comfy.model_detection.detect_unet_config(state_dict, UNET_PREFIX, metadata=metadata)
    if unet_config is None:
        raise TinyModelError(f"{path} holds no SD1.5 UNet under {UNET_PREFIX!r}")
    model_config = comfy.supported_models.SD15(unet_config)

    load_device = comfy.model_management.get_torch_device()
    parameters = comfy.utils.calculate_parameters(state_dict, UNET_PREFIX)
    unet_dtype = comfy.model_management.unet_dtype(
        model_params=parameters, supported_dtypes=model_config.supported_inference_dtypes
    )
    manual_cast_dtype = comfy.model_management.unet_manual_cast(
        unet_dtype, load_device, model_config.supported_inference_dtypes
    )
    model_config.set_inference_dtype(unet_dtype, manual_cast_dtype)

    vae_weights = comfy.utils.state_dict_prefix_replace(state_dict, {VAE_PREFIX: ""}, filter_keys=True)
    vae = comfy.sd.VAE(sd=vae_weights, config={"params": vae_config}, metadata=metadata)

    clip_weights = model_config.process_clip_state_dict(state_dict)
    clip_target = comfy.supported_models_base.ClipTarget(
        functools.partial(
            comfy.sd1_clip.SD1Tokenizer,
            tokenizer=functools.partial(
                comfy.sd1_clip.SDTokenizer, embedding_size=text_config["hidden_size"]
            ),
        ),
        comfy.sd1_clip.SD1ClipModel,
    )
    clip_target.params = {
        "clip_model": comfy.sd1_clip.SDClipModel,
        "textmodel_json_config": text_config,
        "return_projected_pooled": False,
    }
    clip = comfy.sd.CLIP(
        clip_target,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        tokenizer_data=clip_weights,
        parameters=comfy.utils.calculate_parameters(clip_weights),
    )
    missing, _ = clip.load_sd(clip_weights, full_model=True)
    # SD1.5 checkpoints carry neither CLIP's logit scale nor its projection; ComfyUI ignores both too.
    missing = [
        key for key in missing if not key.endswith((".logit_scale", ".transformer.text_projection.weight"))
    ]
    if missing:
        raise TinyModelError(f"{path}: text encoder weights missing: {missing}")

    initial_device = comfy.model_management.unet_inital_load_device(parameters, unet_dtype)
    model = model_config.get_model(state_dict, UNET_PREFIX, device=initial_device)
    model.load_model_weights(state_dict, UNET_PREFIX)
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device()
    )
    return patcher, clip, vae


def cpu_patcher(model) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher for ``model`` (a ``comfy.model_base`` model) with ComfyUI's load and offload devices."""
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def float32_patcher(model_config, state_dict: dict) -> comfy.model_patcher.ModelPatcher:
    """The diffusion model of ``model_config`` with ``state_dict``'s weights (no prefix), in float32, as
    ``comfy.sd.load_diffusion_model`` builds one once it has the config."""
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(state_dict, "", device=torch.device("cpu"))
    model.load_model_weights(state_dict, "")
    return cpu_patcher(model)


def load_tiny_model(
    checkpoint: str | None = None,
) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """Load the tiny test model: the generated random one, or ``checkpoint`` (a path or a file name in
    ComfyUI's ``checkpoints`` folders) with the same layout. Returns ``(model, clip, vae)``."""
    if not checkpoint:
        return load_checkpoint(ensure_tiny_checkpoint())
    if os.path.isfile(checkpoint):
        return load_checkpoint(checkpoint)
    return load_checkpoint(folder_paths.get_full_path_or_raise("checkpoints", checkpoint))
