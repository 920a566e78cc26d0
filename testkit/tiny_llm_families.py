# SPDX-License-Identifier: GPL-3.0-or-later
"""TEST MODELS: tiny Lumina 2, Z-Image, Qwen-Image, Flux.2 and HiDream files (diffusion model and text
encoders), loaded as ComfyUI's loaders load the real files.

Each diffusion model is ComfyUI's own network for the family (``NextDiT``, ``QwenImageTransformer2DModel``,
Flux.2's ``Flux``, ``HiDreamImageTransformer2DModel``) at a few tens of thousands of parameters with
random weights, written in the real file's layout. ComfyUI's detection (``comfy.model_detection``)
recognises each file's family from its keys but fixes the real widths, so, as for the tiny Chroma
(``tiny_joint.py``), the file's metadata carries the tiny ``unet_config`` and the loader finds the model
config through ComfyUI's own matching (``model_config_from_unet_config``), builds the model and loads the
weights as ``comfy.sd.load_diffusion_model`` does. ComfyUI tells Z-Image from Lumina 2 by its width
alone (3840), so a tiny Z-Image's metadata also names its config class, a subclass of the one matched.

The text encoders are ComfyUI's own classes at tiny widths behind ComfyUI's real tokenizers, loaded with
``comfy.sd.load_clip`` (CLIPLoader, QuadrupleCLIPLoader), which detects each file's encoder from its
keys; the tiny widths reach the encoder through ``model_options`` (``<name>_model_config``), read from
the files' metadata:

- Lumina 2: Gemma 2 (3 blocks, 32 wide) behind ComfyUI's ``LuminaTokenizer``, whose sentencepiece model
  comes from the text-encoder file (``spiece_model``, as in the real file): trained here, 256 pieces with
  Gemma's special ids, on generated sentences;
- Z-Image: Qwen3-4B's class (3 blocks, 32 wide, the real 151,936-token vocabulary) behind ComfyUI's
  bundled Qwen tokenizer (``ZImageTokenizer``);
- Qwen-Image: Qwen2.5-VL-7B's class (3 blocks, 32 wide, four key-value heads, which ComfyUI's detection
  reads as the 7B model) behind the bundled ``QwenImageTokenizer``. Its vision tower (fixed at 1280
  wide in ComfyUI) is not in the file: text prompts never run it, and ComfyUI allocates it unwritten;
- HiDream: four files, CLIP-L (12 blocks), CLIP-G (32 blocks, as ComfyUI tells CLIP-G by its 31st),
  T5-XXL (24 blocks, as ComfyUI tells T5-XXL by its 24th) and Llama 3.1 (3 blocks), all 16 wide, behind
  ComfyUI's ``HiDreamTokenizer`` (bundled CLIP, T5 and Llama tokenizers).

Flux.2 has no text encoder here: ComfyUI 0.3.75 builds its Mistral tokenizer with
``MistralConverter(vocab=..., additional_special_tokens=...)``, which the ``transformers`` its
requirements install (5.x) no longer accepts (it takes a ``tekken.json`` path), so no Flux.2 text
encoder loads in this host at all; :func:`flux2_conditioning` builds what the encoder would give.

The files are generated once per process, deterministically, in ComfyUI's model folders. Their
pictures are noise.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.utils
import folder_paths
import torch

from .tiny_joint import _fill_norm_scales
from .tiny_model import float32_patcher, initialise_parameters, random_model
from .tiny_video import _ensure, _save

GENERATOR_VERSION = 1  # bump when the generated weights change, so that stale files are never reused
DEFAULT_SEED = 20251202
META_CONFIG = "hierdiff.tiny_dit.config"
META_CLASS = "hierdiff.tiny_dit.config_class"
META_TEXT_CONFIG = "hierdiff.tiny_text_encoder.config"
TEXT_WIDTH = 32
"""The width of the tiny LLM text encoders' states: the token width the tiny diffusion models take."""
HIDREAM_WIDTH = 16
"""The width of HiDream's four tiny encoders (so its pooled output is 16 + 16 wide)."""
FLUX2_TEXT_WIDTH = 3 * TEXT_WIDTH
"""Flux.2's token width: ComfyUI's Flux.2 encoder stacks three layers' states of its Mistral."""

# Three blocks: ComfyUI's encoders read the states of the second-to-last one (layer_idx -2).
_LLM = {"hidden_size": TEXT_WIDTH, "intermediate_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 1, "num_key_value_heads": 1}  # fmt: skip


@dataclass(frozen=True)
class TextEncoder:
    """One text-encoder file: its ``model_options`` key (``<name>_model_config``), the config it
    changes, and a builder of its weights (``build(config, seed) -> state dict``)."""

    name: str
    options_key: str
    config: dict
    build: object

    @property
    def file_name(self) -> str:
        return f"hierdiff-tiny-te-{self.name}-v{GENERATOR_VERSION}.safetensors"


@dataclass(frozen=True)
class Family:
    """A tiny family: the ComfyUI config class, the detected ``image_model``, a tiny unet_config, its
    latent channels, the CLIPLoader type and text-encoder files (none for Flux.2)."""

    name: str
    config_class: type
    image_model: str
    unet_config: dict
    latent_channels: int
    clip_type: str | None = None
    text_encoders: tuple[TextEncoder, ...] = field(default=())

    @property
    def file_name(self) -> str:
        return f"hierdiff-tiny-{self.name}-v{GENERATOR_VERSION}.safetensors"


# --- text encoders -----------------------------------------------------------------------------------


def _sd_clip_weights(make, options_key: str, config: dict, seed: int, prefix: str) -> dict[str, torch.Tensor]:
    """The weights of ComfyUI encoder ``make(model_options)`` at ``config``, under the file's ``prefix``
    stripped (the keys the real file holds)."""
    encoder = make({options_key: dict(config)})
    initialise_parameters(encoder, torch.Generator().manual_seed(seed))
    state = encoder.state_dict()
    return {
        k[len(prefix) :]: v.to(torch.float32).contiguous() for k, v in state.items() if k.startswith(prefix)
    }


def _gemma(config: dict, seed: int) -> dict[str, torch.Tensor]:
    import comfy.text_encoders.lumina2

    te = comfy.text_encoders.lumina2.te(dtype_llama=torch.float32)
    state = _sd_clip_weights(
        lambda o: te(device="cpu", dtype=torch.float32, model_options=o),
        "gemma2_2b_model_config", config, seed, "gemma2_2b.transformer.",
    )  # fmt: skip
    state["spiece_model"] = torch.frombuffer(bytearray(train_gemma_tokenizer()), dtype=torch.uint8)
    return state


def _qwen3(config: dict, seed: int) -> dict[str, torch.Tensor]:
    import comfy.text_encoders.z_image

    te = comfy.text_encoders.z_image.te(dtype_llama=torch.float32)
    return _sd_clip_weights(
        lambda o: te(device="cpu", dtype=torch.float32, model_options=o),
        "qwen3_4b_model_config", config, seed, "qwen3_4b.transformer.",
    )  # fmt: skip


def _qwen25_vl(config: dict, seed: int) -> dict[str, torch.Tensor]:
    import comfy.text_encoders.qwen_image

    te = comfy.text_encoders.qwen_image.te(dtype_llama=torch.float32)
    encoder = te(device="cpu", dtype=torch.float32, model_options={"qwen25_7b_model_config": dict(config)})
    language = encoder.qwen25_7b.transformer.model  # the vision tower stays out of the file
    initialise_parameters(language, torch.Generator().manual_seed(seed))
    return {f"model.{k}": v.to(torch.float32).contiguous() for k, v in language.state_dict().items()}


def _hidream_part(part: str):
    def build(config: dict, seed: int) -> dict[str, torch.Tensor]:
        import comfy.text_encoders.hidream

        flags = {name: name == part for name in ("clip_l", "clip_g", "t5", "llama")}
        te = comfy.text_encoders.hidream.hidream_clip(
            dtype_t5=torch.float32, dtype_llama=torch.float32, **flags
        )
        key = {"clip_l": "clip_l", "clip_g": "clip_g", "t5": "t5xxl", "llama": "llama"}[part]
        return _sd_clip_weights(
            lambda o: te(device="cpu", dtype=torch.float32, model_options=o),
            f"{key}_model_config", config, seed, f"{key}.transformer.",
        )  # fmt: skip

    return build


# ComfyUI's load_clip sets both CLIPs' configs from one "model_config" option (adding the position
# count it reads from each file), so the two share their widths; CLIP-L keeps its 12 blocks, CLIP-G its 32.
_CLIP = {
    "hidden_size": HIDREAM_WIDTH,
    "intermediate_size": 16,
    "num_attention_heads": 2,
    "projection_dim": HIDREAM_WIDTH,
}
HIDREAM_TEXT_ENCODERS = (
    TextEncoder("hidream-clip-l", "model_config", _CLIP, _hidream_part("clip_l")),
    TextEncoder("hidream-clip-g", "model_config", _CLIP, _hidream_part("clip_g")),
    TextEncoder(
        "hidream-t5xxl", "t5xxl_model_config",
        {"d_model": HIDREAM_WIDTH, "d_ff": 16, "d_kv": 8, "num_heads": 2, "num_layers": 24},
        _hidream_part("t5"),
    ),
    TextEncoder(
        "hidream-llama", "llama_model_config", {**_LLM, "hidden_size": HIDREAM_WIDTH}, _hidream_part("llama")
    ),
)  # fmt: skip


# Words the trained Gemma tokenizer knows whole (the test prompts are made of them).
_WORDS = (
    "a an the of in on with and under over at by red blue green white black old small big tall bright "
    "dark cat dog fox owl lion bear deer horse bird fish tree house boat lake river sea hill road city "
    "forest field garden snow rain sun moon night morning sky stone wood glass painting photo sleeping "
    "running sitting flying swimming standing blurry low quality"
).split()


def train_gemma_tokenizer(vocab_size: int = 256) -> bytes:
    """A sentencepiece model with Gemma's special ids (pad 0, end 1, start 2, unknown 3), trained on
    sentences made from a fixed word list; returns its serialized proto."""
    import sentencepiece

    sentences = [
        " ".join(_WORDS[(i * 5 + j * 11) % len(_WORDS)] for j in range(3 + i % 7)) for i in range(3000)
    ]
    sentences += _WORDS * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, num_threads=1, character_coverage=1.0, minloglevel=2,
        byte_fallback=False,
    )  # fmt: skip
    return model.getvalue()


# --- families ----------------------------------------------------------------------------------------

_LUMINA2 = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 16,
    "dim": 64,
    "cap_feat_dim": TEXT_WIDTH,
    "n_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "axes_dims": [8, 12, 12],
    "axes_lens": [300, 64, 64],
    "n_refiner_layers": 1,
    "qk_norm": True,
}

FAMILIES: dict[str, Family] = {
    "lumina2": Family(
        "lumina2", comfy.supported_models.Lumina2, "lumina2", _LUMINA2, 16, "lumina2",
        (TextEncoder("gemma2", "gemma2_2b_model_config", {**_LLM, "vocab_size": 256}, _gemma),),
    ),
    "z_image": Family(
        "z_image", comfy.supported_models.ZImage, "lumina2",
        # Z-Image is a Lumina 2 NextDiT with these settings on (ComfyUI sets them for its 3840 width); its
        # modulation takes a 256-wide time embedding, so the network is at least 256 wide.
        {**_LUMINA2, "dim": 256, "axes_dims": [32, 48, 48], "pad_tokens_multiple": 32,
         "z_image_modulation": True, "time_scale": 1000.0},
        16, "lumina2", (TextEncoder("qwen3", "qwen3_4b_model_config", dict(_LLM), _qwen3),),
    ),
    "qwen_image": Family(
        "qwen_image", comfy.supported_models.QwenImage, "qwen_image",
        {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1,
         "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": TEXT_WIDTH,
         "axes_dims_rope": [8, 12, 12]},
        16, "qwen_image",
        # Four key-value heads of 128: ComfyUI's detection tells Qwen2.5-VL-7B by its 512-wide key bias.
        (TextEncoder("qwen25vl", "qwen25_7b_model_config",
                     {**_LLM, "num_attention_heads": 4, "num_key_value_heads": 4}, _qwen25_vl),),
    ),
    "flux2": Family(
        "flux2", comfy.supported_models.Flux2, "flux2",
        {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
         "context_in_dim": FLUX2_TEXT_WIDTH, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
         "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 8, 8, 8], "theta": 2000, "patch_size": 1,
         "qkv_bias": False, "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
         "default_ref_method": "index", "ref_index_scale": 10.0, "guidance_embed": True},
        128,
    ),
    "hidream": Family(
        "hidream", comfy.supported_models.HiDream, "hidream",
        {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 1,
         "num_single_layers": 1, "attention_head_dim": 32, "num_attention_heads": 2,
         "caption_channels": [HIDREAM_WIDTH, HIDREAM_WIDTH], "text_emb_dim": 2 * HIDREAM_WIDTH,
         "num_routed_experts": 2, "num_activated_experts": 1, "axes_dims_rope": [8, 12, 12],
         "max_resolution": [32, 32],
         # The Llama states each block reads (of 3: the 2nd and 3rd blocks' inputs and the final output).
         "llama_layers": [0, 2]},
        16, "hidream", HIDREAM_TEXT_ENCODERS,
    ),
}  # fmt: skip


# --- diffusion models --------------------------------------------------------------------------------


def build_diffusion_state_dict(family: str, seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The tiny ``family`` (a key of FAMILIES) as a diffusion-model file's state dict (float32)."""
    spec = FAMILIES[family]
    model_config = spec.config_class(dict(spec.unet_config))
    network = random_model(model_config, torch.Generator().manual_seed(seed)).diffusion_model
    _fill_norm_scales(network)
    return {key: value.to(torch.float32).contiguous() for key, value in network.state_dict().items()}


def ensure_diffusion_model(family: str) -> str:
    """The path of the tiny ``family`` in ComfyUI's ``diffusion_models`` folder, written if missing."""
    spec = FAMILIES[family]
    metadata = {
        META_CONFIG: json.dumps(spec.unet_config, sort_keys=True),
        META_CLASS: spec.config_class.__name__,
    }
    return _ensure(
        "diffusion_models", spec.file_name, lambda p: _save(build_diffusion_state_dict(family), p, metadata)
    )


def load_diffusion_model(family: str) -> comfy.model_patcher.ModelPatcher:
    """The tiny ``family``, loaded as ``comfy.sd.load_diffusion_model`` loads a file, with the widths
    from the file's metadata; checks that ComfyUI's detection recognises the weights' family."""
    path = ensure_diffusion_model(family)
    state_dict, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    config = json.loads((metadata or {}).get(META_CONFIG, "null"))
    if config is None:
        raise RuntimeError(f"{path} is not a hierdiff tiny model file: no {META_CONFIG!r} metadata")
    detected = comfy.model_detection.detect_unet_config(state_dict, "")
    expected = FAMILIES[family].image_model
    if (detected or {}).get("image_model") != expected:
        raise RuntimeError(f"{path}: ComfyUI's detection does not recognise {expected} weights ({detected})")
    model_config = comfy.model_detection.model_config_from_unet_config(dict(config), state_dict)
    if model_config is None:
        raise RuntimeError(f"ComfyUI has no model config matching {config}")
    named = getattr(comfy.supported_models, metadata.get(META_CLASS, ""), None)
    if named is not None and named is not type(model_config):
        # Z-Image: ComfyUI matches its config by the real width; the file names the subclass it is.
        if not issubclass(named, type(model_config)):
            raise RuntimeError(f"{path}: {named.__name__} is not a kind of {type(model_config).__name__}")
        model_config = named(dict(config))
    return float32_patcher(model_config, state_dict)


# --- text encoders, loaded ---------------------------------------------------------------------------


def ensure_text_encoder(encoder: TextEncoder) -> str:
    """The path of a tiny text encoder in ComfyUI's ``text_encoders`` folder, written if missing."""
    metadata = {META_TEXT_CONFIG: json.dumps({encoder.options_key: encoder.config}, sort_keys=True)}
    return _ensure(
        "text_encoders",
        encoder.file_name,
        lambda p: _save(encoder.build(encoder.config, DEFAULT_SEED + 1), p, metadata),
    )


def load_text_encoder(family: str) -> comfy.sd.CLIP:
    """The family's tiny text encoder(s) as CLIPLoader (QuadrupleCLIPLoader for HiDream) loads them:
    ``comfy.sd.load_clip`` with the family's CLIP type, the tiny configs from the files' metadata."""
    spec = FAMILIES[family]
    if not spec.text_encoders:
        raise ValueError(f"{family} has no tiny text encoder (see the module's docstring)")
    paths = [ensure_text_encoder(encoder) for encoder in spec.text_encoders]
    model_options: dict = {}
    for path in paths:
        _, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
        model_options.update(json.loads((metadata or {}).get(META_TEXT_CONFIG, "{}")))
    clip_type = getattr(comfy.sd.CLIPType, spec.clip_type.upper())
    return comfy.sd.load_clip(
        paths,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        clip_type=clip_type,
        model_options=model_options,
    )


# --- latents and Flux.2 conditioning -----------------------------------------------------------------


def empty_latent(family: str, size: int = 8) -> dict:
    """An empty LATENT of batch 1 with the family's channels, ``size`` x ``size`` (what the family's
    empty latent node gives; ComfyUI adds Qwen-Image's frame axis when sampling)."""
    return {"samples": torch.zeros(1, FAMILIES[family].latent_channels, size, size)}


def flux2_conditioning(seed: int, token_count: int = 40, guidance: float = 4.0) -> list:
    """One prompt's Flux.2 CONDITIONING as ComfyUI's Flux.2 encoder and FluxGuidance give it:
    ``[[tokens (1, token_count, FLUX2_TEXT_WIDTH), {"pooled_output": None, "guidance": guidance}]]``, values
    drawn from ``seed`` (the model pads the tokens to 512 at the front itself; the encoder pools nothing)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, token_count, FLUX2_TEXT_WIDTH, generator=generator)
    return [[tokens, {"pooled_output": None, "guidance": guidance}]]
