# SPDX-License-Identifier: GPL-3.0-or-later
"""The harness itself: the pack and the testkit load on the real ComfyUI host, whole workflows run on
the tiny test model both in-process and through a real server, and the tiny model is what it claims."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hierdiff_dev import PACK_LINK_NAME, TESTKIT_LINK_NAME, TINY_LOADER
from hierdiff_dev.examples import TINY_VIDEO_LOADERS
from hierdiff_dev.workflows import basic_workflow

PROMPTS = ["a red cat on a sofa", "a blue dog on a beach"]
SIZE = 128  # pixels; the tiny VAE down-samples 8x, so latents are 4 x 16 x 16
STEPS = 8


def _assert_is_a_picture(pixels: np.ndarray) -> None:
    assert pixels.shape == (SIZE, SIZE, 3)
    assert np.isfinite(pixels).all()
    assert pixels.std() > 5, "an image of (almost) one colour: the model or the VAE computed nothing"


def _pixels(png: bytes | os.PathLike) -> np.ndarray:
    image = Image.open(io.BytesIO(png) if isinstance(png, bytes) else png)
    assert image.mode == "RGB"
    return np.asarray(image, dtype=np.float64)


def test_both_packs_load_in_process(comfy_host):
    assert comfy_host.loaded_modules.keys() == {PACK_LINK_NAME, TESTKIT_LINK_NAME}
    assert comfy_host.node_ids_of(TESTKIT_LINK_NAME) == {TINY_LOADER, *TINY_VIDEO_LOADERS.values()}
    loader = comfy_host.node_classes[TINY_LOADER].GET_SCHEMA()
    assert loader.display_name == "Tiny Test Model Loader (hierdiff testkit, random weights)"
    assert loader.category == "testing/hierdiff"
    assert [output.io_type for output in loader.outputs] == ["MODEL", "CLIP", "VAE"]


def test_server_lists_the_testkit_loader_and_imports_the_pack(comfy_server):
    info = comfy_server.object_info()
    loader = info[TINY_LOADER]
    assert loader["display_name"] == "Tiny Test Model Loader (hierdiff testkit, random weights)"
    assert loader["category"] == "testing/hierdiff"
    assert loader["output"] == ["MODEL", "CLIP", "VAE"]
    assert loader["python_module"] == f"custom_nodes.{TESTKIT_LINK_NAME}"
    assert comfy_server.import_failures() == []
    # ComfyUI's start-up report lists every custom node folder it imported, and flags failures.
    import_report = [line for line in comfy_server.log_text().splitlines() if "custom_nodes" in line]
    assert any(line.rstrip().endswith(f"custom_nodes/{PACK_LINK_NAME}") for line in import_report), (
        import_report
    )


def test_basic_workflow_runs_in_process(comfy_host):
    result = comfy_host.run(basic_workflow(PROMPTS, steps=STEPS, width=SIZE, height=SIZE))

    for i in range(len(PROMPTS)):
        (path,) = result.image_paths(f"save_{i}")
        _assert_is_a_picture(_pixels(path))
    assert not np.array_equal(
        _pixels(result.image_paths("save_0")[0]), _pixels(result.image_paths("save_1")[0])
    ), "two prompts gave the same picture: the text does not reach the UNet"
    # The executor reported per-step progress of each KSampler and each SaveImage's UI output.
    progress = [event for event in result.events("progress") if event["node"] == "sampler_0"]
    assert [event["value"] for event in progress] == list(range(1, STEPS + 1))
    assert {event["max"] for event in progress} == {STEPS}
    executed = {event["node"]: event["output"] for event in result.events("executed")}
    for i in range(len(PROMPTS)):
        assert executed[f"save_{i}"] == result.outputs[f"save_{i}"]


def test_basic_workflow_runs_on_the_server_like_in_process(comfy_server, comfy_host):
    workflow = basic_workflow(PROMPTS[:1], steps=STEPS, width=SIZE, height=SIZE)
    entry = comfy_server.run(workflow)

    (image,) = entry["outputs"]["save_0"]["images"]
    assert image["type"] == "output"
    served = _pixels(comfy_server.view(image))
    _assert_is_a_picture(served)
    # The same weights, seed and graph give the same picture in both hosts.
    (local_path,) = comfy_host.run(workflow).image_paths("save_0")
    assert np.abs(served - _pixels(local_path)).max() <= 1


def _sample(model, clip, seed: int) -> torch.Tensor:
    import nodes

    (positive,) = nodes.CLIPTextEncode().encode(clip, PROMPTS[0])
    (negative,) = nodes.CLIPTextEncode().encode(clip, "")
    latent = {"samples": torch.zeros(3, 4, 16, 16)}
    (out,) = nodes.common_ksampler(model, seed, STEPS, 7.0, "euler", "normal", positive, negative, latent)
    return out["samples"]


def test_tiny_model_samples_deterministically(tiny_model):
    model, clip, vae = tiny_model
    first = _sample(model, clip, seed=5)
    assert first.shape == (3, 4, 16, 16)
    assert torch.isfinite(first).all()
    assert first.std() > 0.1
    assert torch.equal(first, _sample(model, clip, seed=5))
    assert not torch.allclose(first, _sample(model, clip, seed=6))
    pixels = vae.decode(first)
    assert pixels.shape == (3, SIZE, SIZE, 3)
    assert torch.isfinite(pixels).all() and pixels.std() > 0.02


def test_tiny_model_is_sd15_behind_the_real_sd1_tokenizer(tiny_model):
    import comfy.latent_formats
    import comfy.supported_models

    model, clip, vae = tiny_model
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert isinstance(model.model.latent_format, comfy.latent_formats.SD15)
    assert vae.latent_channels == 4 and vae.downscale_ratio == 8
    # The real CLIP BPE vocabulary: start, "a", "red", "cat", end.
    tokens = clip.tokenize("a red cat")["l"][0]
    assert [token for token, _ in tokens[:5]] == [49406, 320, 736, 2368, 49407]
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize("a red cat"))
    assert conditioning[0][0].shape == (1, 77, model.model.model_config.unet_config["context_dim"])


def test_generated_checkpoint_loads_the_way_checkpoints_load(comfy_host, tiny_model):
    import comfy.model_detection
    import comfy.utils
    import folder_paths

    from testkit import tiny_model as tiny

    assert tiny.TINY_CHECKPOINT_NAME in folder_paths.get_filename_list("checkpoints")
    path = folder_paths.get_full_path_or_raise("checkpoints", tiny.TINY_CHECKPOINT_NAME)
    state_dict = comfy.utils.load_torch_file(path)
    prefixes = {key.split(".", 1)[0] for key in state_dict}
    assert prefixes == {"model", "cond_stage_model", "first_stage_model"}
    # ComfyUI's own detection reads the UNet's shape from the file.
    assert comfy.model_detection.detect_unet_config(state_dict, tiny.UNET_PREFIX) == tiny.UNET_CONFIG

    model, clip, vae = tiny_model
    loaded_unet = model.model.diffusion_model.state_dict()
    for key, tensor in state_dict.items():
        if key.startswith(tiny.UNET_PREFIX):
            assert torch.equal(loaded_unet[key.removeprefix(tiny.UNET_PREFIX)], tensor), key
    loaded_vae = vae.first_stage_model.state_dict()
    for key, tensor in state_dict.items():
        if key.startswith(tiny.VAE_PREFIX):
            assert torch.equal(loaded_vae[key.removeprefix(tiny.VAE_PREFIX)], tensor), key
    # Rebuilding from the same seed gives the same weights, bit for bit.
    rebuilt = tiny.build_state_dict()
    assert rebuilt.keys() == state_dict.keys()
    assert all(torch.equal(rebuilt[key], state_dict[key]) for key in state_dict)


def test_loader_node_takes_another_checkpoint_by_file_name(comfy_host):
    import folder_paths

    from testkit import tiny_model as tiny

    name = "hierdiff-tiny-other-seed.safetensors"
    tiny.write_checkpoint(os.path.join(folder_paths.get_folder_paths("checkpoints")[0], name), seed=7)
    default = comfy_host.run(basic_workflow(PROMPTS[:1], steps=2, width=SIZE, height=SIZE))
    other = comfy_host.run(basic_workflow(PROMPTS[:1], steps=2, width=SIZE, height=SIZE, checkpoint=name))
    assert not np.array_equal(
        _pixels(default.image_paths("save_0")[0]), _pixels(other.image_paths("save_0")[0])
    )


def test_checkpoint_is_never_half_written(comfy_host, tmp_path, monkeypatch):
    from testkit import tiny_model as tiny

    target = tmp_path / "tiny.safetensors"

    def fail(seed):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "build_state_dict", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny.write_checkpoint(str(target))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    tiny.write_checkpoint(str(target))
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]


def test_loader_rejects_a_checkpoint_without_the_tiny_metadata(comfy_host, tmp_path):
    import safetensors.torch

    from testkit import tiny_model as tiny

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, plain
    )
    with pytest.raises(tiny.TinyModelError, match="not a hierdiff tiny SD1.5 checkpoint"):
        tiny.load_checkpoint(str(plain))
