# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical sampling of video variation sets on ComfyUI's Wan text-to-video models (testkit).

The tiny Wan files (testkit/tiny_video.py) load through the functions ComfyUI's UNETLoader, CLIPLoader
and VAELoader call; the prompts are encoded by ComfyUI's umt5 encoder behind its own Wan tokenizer.

Specification:
- a video latent is (batch, channels, frames, height, width); the samplers take one of batch 1 and give
  one video latent per prompt, for Wan 2.1 T2V (16 channels, ``Wan21`` format, which Wan 2.2 14B T2V
  shares) and Wan 2.2 TI2V 5B (48 channels, ``Wan22`` format);
- at tau = 0 each prompt's video latent equals stock KSampler on that prompt alone with the same seed
  (relative 1e-4); with a budget the model sees exactly the rows the plan counts;
- Shared Trunk + Branch Sampler equal Hierarchical KSampler; Hierarchical Guider with
  SamplerCustomAdvanced equals it too;
- the starting noise and the empty latent reach the sampler as one row viewed N times (no copies);
- Wan models that condition on more than the text (image-to-video, camera, ...) are refused by type.
"""

from __future__ import annotations

import sys

import pytest
import torch

from hierdiff_core.schedule import Plan
from hierdiff_dev.expect import assert_close, counting

SEED = 5
STEPS = 4
PROMPTS = [
    "a tiger runs through tall grass at dawn",
    "a lion rests in tall grass at dusk",
    "a whale swims in the ocean at night",
]
SET_WITH_SPLITS = [
    "a tiger runs through tall grass at dawn",
    "a lion runs through tall grass at dawn",
    "a leopard walks through the jungle",
    "a whale dives in the ocean at night",
    "a dolphin swims in the ocean at night",
    "an eagle flies over the mountain",
]
NEGATIVE = "blurry, low quality, watermark"
VARIANTS = ["wan2.1_t2v", "wan2.2_ti2v_5b"]


@pytest.fixture(scope="module")
def video(comfy_host):
    """Stock ComfyUI (its ``nodes`` module), our node classes, the tiny umt5 CLIP, and cached models,
    encodings (stock CLIPTextEncode) and prompt trees (Prompt Set Cluster): encoding 512 umt5 tokens
    is much of a tiny run's time."""
    import comfy.utils

    import nodes as comfy_nodes
    import testkit.tiny_video as tiny

    comfy.utils.PROGRESS_BAR_ENABLED = False
    clip = tiny.load_text_encoder()
    cache: dict[tuple, object] = {}

    def cached(key: tuple, make):
        if key not in cache:
            cache[key] = make()
        return cache[key]

    class Video:
        stock = comfy_nodes
        classes = comfy_host.node_classes
        module = tiny
        text_encoder = clip

        @staticmethod
        def model(variant: str):
            return cached(("model", variant), lambda: tiny.load_wan_model(variant))

        @staticmethod
        def encode(text: str) -> list:
            return cached(("text", text), lambda: comfy_nodes.CLIPTextEncode().encode(clip, text)[0])

        @staticmethod
        def prompt_tree(prompts: list[str]):
            node = comfy_host.node_classes["HierPromptSetCluster"]
            return cached(
                ("tree", *prompts),
                lambda: node.execute([clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]).args[0],
            )

    Video.negative = Video.encode(NEGATIVE)
    return Video


def hier_ksampler(video, model, prompt_tree, latent, *, cfg=5.0, budget="tau", value=0.0):
    return video.classes["HierKSampler"].execute(
        model, prompt_tree, video.negative, latent, SEED, STEPS, cfg, "euler", "simple", 1.0,
        budget, value, 64, "shared", "mean", "prompt_tree",
    )  # fmt: skip


def stock_sample(video, model, positive, latent, *, cfg=5.0) -> torch.Tensor:
    out = video.stock.common_ksampler(
        model, SEED, STEPS, cfg, "euler", "simple", positive, video.negative, latent
    )
    return out[0]["samples"]


def test_tiny_wan_files_load_as_their_comfyui_families(video):
    import comfy.latent_formats
    import comfy.text_encoders.wan

    formats = {"wan2.1_t2v": comfy.latent_formats.Wan21, "wan2.2_ti2v_5b": comfy.latent_formats.Wan22}
    for variant in VARIANTS:
        model = video.model(variant)
        assert type(model.model.model_config) is video.module.VARIANTS[variant].config_class
        assert type(model.get_model_object("latent_format")) is formats[variant]
    assert isinstance(video.text_encoder.tokenizer, comfy.text_encoders.wan.WanT5Tokenizer)
    tokens, extras = video.encode(PROMPTS[0])[0]
    assert tokens.shape == (1, 512, video.module.UMT5_WIDTH)  # umt5 pads every prompt to 512 tokens
    assert extras.get("pooled_output") is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_tau_zero_gives_each_prompt_stock_ksamplers_video(video, variant):
    model = video.model(variant)
    latent = video.module.empty_video_latent(variant, frames=5, size=64)
    samples = hier_ksampler(video, model, video.prompt_tree(PROMPTS), latent).args[0]["samples"]
    assert samples.shape == (len(PROMPTS), *latent["samples"].shape[1:])
    assert samples.ndim == 5
    for i, text in enumerate(PROMPTS):
        reference = stock_sample(video, model, video.encode(text), latent)
        assert_close(samples[i : i + 1], reference, f"{variant}, prompt {i}")


def test_wan22_5b_start_frame_in_the_latent_stays_exact(video):
    # What Wan22ImageToVideoLatent gives for a start image: its latent frame in the (shared) latent and a
    # noise mask that keeps it. The frame is one row for every prompt, so hierarchical sampling carries it.
    variant = "wan2.2_ti2v_5b"
    model = video.model(variant)
    samples = video.module.empty_video_latent(variant)["samples"].clone()
    samples[:, :, :1] = torch.randn(samples[:, :, :1].shape, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(1, 1, *samples.shape[2:])
    mask[:, :, :1] = 0.0
    latent = {"samples": samples, "noise_mask": mask}
    out = hier_ksampler(video, model, video.prompt_tree(PROMPTS), latent).args[0]["samples"]
    for i, text in enumerate(PROMPTS):
        reference = stock_sample(video, model, video.encode(text), latent)
        assert_close(out[i : i + 1], reference, f"start frame, prompt {i}")
    torch.testing.assert_close(out[:, :, :1], samples[:, :, :1].expand(len(PROMPTS), -1, -1, -1, -1))


def test_an_image_sized_empty_latent_gets_its_frame_axis_as_in_stock_ksampler(video):
    # EmptyLatentImage on a video model: stock KSampler adds the frame axis; so do the samplers.
    model = video.model("wan2.1_t2v")
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    samples = hier_ksampler(video, model, video.prompt_tree(PROMPTS), latent).args[0]["samples"]
    assert samples.shape == (len(PROMPTS), 16, 1, 8, 8)
    assert_close(samples[:1], stock_sample(video, model, video.encode(PROMPTS[0]), latent), "4-D latent")


def budgeted_run(video, variant: str) -> dict:
    """HierKSampler over SET_WITH_SPLITS at a 50 % target saving on a model that counts the rows reaching
    the network and records the noise and latent handed to the sampler."""
    import comfy.patcher_extension

    seen: dict = {}

    def outer(executor, noise, latent_image, *args, **kwargs):
        seen["noise"], seen["latent"] = noise, latent_image
        return executor(noise, latent_image, *args, **kwargs)

    model, counter = counting(video.model(variant))
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "video-test", outer)
    latent = video.module.empty_video_latent(variant)
    out = hier_ksampler(
        video, model, video.prompt_tree(SET_WITH_SPLITS), latent, budget="target_saving", value=0.5
    )
    return {
        "latent": latent, "samples": out.args[0]["samples"], "plan": Plan.from_json(out.args[1]),
        "counter": counter, "seen": seen, "ui": out.ui,
    }  # fmt: skip


@pytest.fixture(scope="module")
def wan21_run(video) -> dict:
    return budgeted_run(video, "wan2.1_t2v")


def assert_counts_equal_the_plan(run: dict) -> None:
    schedule, counter, latent = run["plan"], run["counter"], run["latent"]
    assert schedule.evaluations_per_step[0] < len(SET_WITH_SPLITS), "the first step should share"
    assert counter["rows"] == 2 * schedule.model_evaluations  # conditional and unconditional rows
    assert counter["shapes"] == {tuple(latent["samples"].shape[1:])}  # 5-D rows reach the network
    assert run["samples"].shape == (len(SET_WITH_SPLITS), *latent["samples"].shape[1:])


def test_wan21_evaluations_measured_equal_the_plan(wan21_run):
    assert_counts_equal_the_plan(wan21_run)


def test_wan22_5b_evaluations_measured_equal_the_plan(video):
    assert_counts_equal_the_plan(budgeted_run(video, "wan2.2_ti2v_5b"))


def test_trunk_and_branch_equal_the_all_in_one_sampler(video, wan21_run):
    model = video.model("wan2.1_t2v")
    trunk = video.classes["HierSharedTrunkSampler"].execute(
        model, video.prompt_tree(SET_WITH_SPLITS), video.negative, wan21_run["latent"], SEED, STEPS, 5.0,
        "euler", "simple", 1.0, "target_saving", 0.5, STEPS // 2, 64, "shared", "mean", "prompt_tree",
    ).args[0]  # fmt: skip
    assert trunk.samples.shape == wan21_run["samples"].shape and trunk.step == STEPS // 2
    branch = video.classes["HierBranchSampler"].execute(model, trunk, video.negative, 5.0, "euler", STEPS)
    assert_close(branch.args[0]["samples"], wan21_run["samples"], "trunk + branch")


def test_guider_with_sampler_custom_advanced_equals_the_all_in_one_sampler(video, wan21_run):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

    model = video.model("wan2.1_t2v")
    guider = video.classes["HierGuider"].execute(
        model, video.prompt_tree(SET_WITH_SPLITS), video.negative, 5.0, "target_saving", 0.5, 64, "shared",
        "mean", "prompt_tree",
    ).args[0]  # fmt: skip
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS).cpu()
    out = SamplerCustomAdvanced.execute(
        Noise_RandomNoise(SEED), guider, comfy.samplers.sampler_object("euler"), sigmas, wan21_run["latent"]
    )
    assert_close(out.args[0]["samples"], wan21_run["samples"], "guider")


def test_noise_and_latent_reach_the_sampler_as_one_row_viewed_per_prompt(wan21_run):
    n, shape = len(SET_WITH_SPLITS), tuple(wan21_run["latent"]["samples"].shape[1:])
    for name in ("noise", "latent"):
        rows = wan21_run["seen"][name]
        assert rows.shape == (n, *shape), name
        assert rows.stride(0) == 0, f"{name}: its {n} rows should be views of one"
        assert rows.untyped_storage().nbytes() == rows[0].numel() * rows.element_size(), name


def _wan_model_of(config_name: str, channels_in: int, model_type: str, **extra):
    """A tiny Wan network of ComfyUI's ``config_name`` class (not written to a file: only its type is
    checked before sampling)."""
    import comfy.model_patcher
    import comfy.supported_models

    config_class = getattr(comfy.supported_models, config_name)
    config = {
        "image_model": "wan2.1", "model_type": model_type, "dim": 128, "in_dim": channels_in, "out_dim": 16,
        "ffn_dim": 64, "num_layers": 1, "num_heads": 1, "patch_size": (1, 2, 2), "freq_dim": 256,
        "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, **extra,
    }  # fmt: skip
    model_config = config_class(config)
    model_config.set_inference_dtype(torch.float32, None)
    return comfy.model_patcher.ModelPatcher(
        model_config.get_model({}, device=torch.device("cpu")), torch.device("cpu"), torch.device("cpu")
    )


@pytest.mark.parametrize(
    ("config_name", "channels_in", "model_type"),
    [("WAN21_I2V", 36, "i2v"), ("WAN21_FunControl2V", 48, "i2v"), ("WAN22_Camera", 36, "camera_2.2")],
)
def test_wan_models_conditioned_on_more_than_text_are_refused_by_type(
    video, config_name, channels_in, model_type
):
    model = _wan_model_of(config_name, channels_in, model_type)
    latent = video.module.empty_video_latent("wan2.1_t2v")
    prompt_tree = video.prompt_tree(PROMPTS)
    with pytest.raises(
        ValueError, match=rf"^model: {config_name} \(WAN21\w*\) models take a per-prompt image"
    ):
        hier_ksampler(video, model, prompt_tree, latent)
    with pytest.raises(ValueError, match=rf"^model: {config_name} "):
        video.classes["HierGuider"].execute(
            model, prompt_tree, video.negative, 5.0, "tau", 0.0, 64, "shared", "mean", "prompt_tree"
        )


def test_a_video_latent_on_an_image_model_is_refused_by_layout(video):
    import testkit.tiny_families as families
    from hierdiff_core.tree import build_tree

    conditioning = sys.modules[video.classes["HierKSampler"].__module__.rsplit(".", 1)[0] + ".conditioning"]
    per_prompt = [families.conditioning("sdxl", seed) for seed in range(2)]
    stacked = conditioning.stack_conditionings(per_prompt)
    tree = build_tree(conditioning.clustering_embeddings(stacked), prompts=PROMPTS[:2])
    prompt_tree = conditioning.PromptTreeSet(tree, tuple(PROMPTS[:2]), stacked, "clip_pooled")
    latent = {"samples": torch.zeros(1, 4, 2, 8, 8)}
    with pytest.raises(
        ValueError, match=r"latent_image has 5 dimensions but this MODEL \(SDXL\) takes an image"
    ):
        video.classes["HierKSampler"].execute(
            families.build_model("sdxl"), prompt_tree, families.conditioning("sdxl", 9), latent, SEED, STEPS,
            5.0, "euler", "simple", 1.0, "tau", 0.0, 64, "shared", "mean", "prompt_tree",
        )  # fmt: skip
