# SPDX-License-Identifier: GPL-3.0-or-later
"""A tiny ControlNet for the testkit's tiny SD1.5 UNet (``tiny_model``), with random weights.

The network is ComfyUI's own ``comfy.cldm.cldm.ControlNet`` at the tiny UNet's widths (4 latent channels,
32 model channels, channel multipliers 1 and 2, one residual block per level, 64-wide tokens), so its
eight-times-down-sampled hint and its per-block residuals fit the tiny UNet exactly. Cross-attention sits
only at the 64-channel level and in the middle block, one head of 64 channels: a ControlNet file carries
no head count, and ComfyUI loads an unrecognised one with 64 channels per head.

Every parameter is explicitly initialised (see :func:`testkit.tiny_model.initialise_parameters`): the
"zero" convolutions that a trained ControlNet starts from are non-zero here, so the control changes what
the UNet predicts. The weights are saved as a plain safetensors state dict in the original ControlNet key
layout (``input_blocks.``, ``zero_convs.``, ``input_hint_block.``, ``middle_block_out.``), which
``comfy.controlnet.load_controlnet`` (the ControlNetLoader node) detects and loads as any real SD1.5
ControlNet file. Imports ComfyUI: prepare its arguments first (``hierdiff_dev.host.prepare_comfy_imports``).
"""

from __future__ import annotations

import os
import tempfile

import comfy.cldm.cldm
import comfy.controlnet
import comfy.ops
import folder_paths
import torch

from .tiny_model import CONTEXT_DIM, UNET_CONFIG, initialise_parameters

GENERATOR_VERSION = 1
TINY_CONTROLNET_NAME = f"hierdiff-tiny-controlnet-v{GENERATOR_VERSION}.safetensors"
DEFAULT_SEED = 20250202
HINT_CHANNELS = 3  # an RGB control image

CONTROLNET_CONFIG: dict = {
    "image_size": UNET_CONFIG["image_size"],
    "in_channels": UNET_CONFIG["in_channels"],
    "model_channels": UNET_CONFIG["model_channels"],
    "hint_channels": HINT_CHANNELS,
    "num_res_blocks": list(UNET_CONFIG["num_res_blocks"]),
    "channel_mult": list(UNET_CONFIG["channel_mult"]),
    "transformer_depth": [0, 1],
    "transformer_depth_middle": 1,
    "context_dim": CONTEXT_DIM,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "num_heads": -1,
    "num_head_channels": 64,
    "adm_in_channels": None,
}


def build_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The tiny ControlNet's weights (float32, deterministic in ``seed``), original ControlNet key layout."""
    generator = torch.Generator().manual_seed(seed)
    network = comfy.cldm.cldm.ControlNet(
        **CONTROLNET_CONFIG,
        dtype=torch.float32,
        device=torch.device("cpu"),
        operations=comfy.ops.disable_weight_init,
    )
    initialise_parameters(network, generator)
    return {key: value.detach().to(torch.float32).contiguous() for key, value in network.state_dict().items()}


def write_controlnet(path: str, seed: int = DEFAULT_SEED) -> str:
    """Write the tiny ControlNet to ``path`` atomically (a temporary file in the same folder, renamed)."""
    import safetensors.torch

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, partial_path = tempfile.mkstemp(prefix=".partial-", suffix=".safetensors", dir=folder)
    os.close(descriptor)
    try:
        safetensors.torch.save_file(build_state_dict(seed), partial_path)
        os.replace(partial_path, path)
    except BaseException:
        os.unlink(partial_path)
        raise
    return path


def ensure_tiny_controlnet(folder: str | None = None) -> str:
    """The path of the tiny ControlNet in ``folder`` (default: ComfyUI's first ``controlnet`` folder),
    written first if it is not there yet. ControlNetLoader lists it under :data:`TINY_CONTROLNET_NAME`."""
    folder = folder or folder_paths.get_folder_paths("controlnet")[0]
    path = os.path.join(folder, TINY_CONTROLNET_NAME)
    if not os.path.isfile(path):
        write_controlnet(path)
    return path


def load_tiny_controlnet(path: str | None = None) -> comfy.controlnet.ControlBase:
    """The tiny ControlNet, loaded as ControlNetLoader loads a file (``comfy.controlnet.load_controlnet``)."""
    control = comfy.controlnet.load_controlnet(path or ensure_tiny_controlnet())
    if control is None:
        raise RuntimeError(f"ComfyUI did not recognise {path} as a ControlNet")
    return control
