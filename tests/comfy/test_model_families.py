# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical sampling on ComfyUI's other model families, with tiny random models (testkit).

Specification, per family: at tau = 0 HierKSampler gives every prompt exactly what stock ComfyUI
sampling gives that prompt alone (same seed, relative 1e-4), and with a budget the model sees one
row per active group whose pooled/adm input ``y`` is the group's mix:
- SDXL: pooled output + size extras -> adm ``y``; a group's ``y`` is SDXL's adm of its mean pooled output;
- Stable unCLIP (SD2.1) through the prior path: HierPriorEmbed -> PROMPT_TREE (prior space) ->
  HierKSampler equals stock sampling conditioned through ComfyUI's unCLIPConditioning node; a group's
  ``y`` is unCLIP's adm of its members' mean image embedding;
- SD3 (MMDiT, pooled ``y`` + joint attention) and Flux (``guidance`` in the conditioning); prompts of
  different token lengths are exact on Flux (zero padding hidden by its text attention mask, with and
  without reference latents) and SDXL (padding by repetition, neutral for UNet cross-attention), and
  refused by model type on SD3;
- a tree whose token width does not fit the model is refused on every family.
"""

from __future__ import annotations

import sys

import pytest
import torch

from hierdiff_core.engine import group_mean
from hierdiff_core.tree import build_tree
from hierdiff_dev.expect import assert_close, recording

SEED = 11
STEPS = 4
N_PROMPTS = 3
PROMPTS = [f"prompt {i}" for i in range(N_PROMPTS)]
SET_WITH_SPLITS = [f"prompt {i}" for i in range(6)]
COND = 0  # comfy.samplers' marker of a conditional (positive) chunk in cond_or_uncond


@pytest.fixture(scope="module")
def comfy(comfy_host):
    """Stock ComfyUI (its ``nodes`` module), our pack's node classes and modules, the testkit families."""
    import comfy.utils

    import nodes as comfy_nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    import testkit.tiny_families as families

    classes = comfy_host.node_classes
    sampler_module = sys.modules[classes["HierKSampler"].__module__]
    package = sampler_module.__name__.rsplit(".", 1)[0]

    class Comfy:
        stock = comfy_nodes
        node_classes = classes
        conditioning = sys.modules[f"{package}.conditioning"]
        samplers = sampler_module
        tiny = families

    return Comfy


def text_prompt_set(comfy, family: str, conditionings: list[list], prompts: list[str]):
    """A PROMPT_TREE over per-prompt CONDITIONINGs, clustered on their pooled outputs."""
    stacked = comfy.conditioning.stack_conditionings(conditionings)
    embeddings = comfy.conditioning.clustering_embeddings(stacked)
    tree = build_tree(embeddings, prompts=prompts)
    return comfy.conditioning.PromptTreeSet(tree, tuple(prompts), stacked, "clip_pooled")


def hier_ksampler(
    comfy, model, prompt_set, negative, latent, *, cfg, budget="tau", value=0.0, steps=STEPS,
    tree_from="prompt_tree",
):  # fmt: skip
    return comfy.node_classes["HierKSampler"].execute(
        model, prompt_set, negative, latent, SEED, steps, cfg, "euler", "normal", 1.0,
        budget, value, 64, "shared", "mean", tree_from,
    )  # fmt: skip


def stock_sample(comfy, model, positive, negative, latent, *, cfg, steps=STEPS) -> torch.Tensor:
    out = comfy.stock.common_ksampler(model, SEED, steps, cfg, "euler", "normal", positive, negative, latent)
    return out[0]["samples"]


SHARING_STEPS = 6


def run_sharing_half(comfy, model, prompt_set, family: str, calls: list[dict]):
    """HierKSampler over SET_WITH_SPLITS at a 50 % target saving (cfg 5, SHARING_STEPS steps) on a
    ``recording`` model; checks that the first step shares and the rows are the plan's; returns the plan."""
    from hierdiff_core.schedule import Plan

    out = hier_ksampler(
        comfy,
        model,
        prompt_set,
        comfy.tiny.conditioning(family, 100),
        comfy.tiny.empty_latent(family),
        cfg=5.0,
        budget="target_saving",
        value=0.5,
        steps=SHARING_STEPS,
    )
    schedule = Plan.from_json(out.args[1])
    assert schedule.evaluations_per_step[0] < len(SET_WITH_SPLITS), "the first step should share"
    assert sum(call["rows"] for call in calls) == 2 * schedule.model_evaluations
    return schedule


def positive_rows(call: dict, key: str) -> torch.Tensor:
    """The rows of model input ``key`` that belong to the call's conditional chunk."""
    size = call["rows"] // len(call["chunks"])
    start = call["chunks"].index(COND) * size
    return call["c"][key][start : start + size]


def assert_tau_zero_equals_stock(
    comfy, family: str, *, cfg: float, token_counts: tuple[int | None, ...] = (None,) * N_PROMPTS, **extras
) -> None:
    model = comfy.tiny.build_model(family)
    per_prompt = [
        comfy.tiny.conditioning(family, seed, token_count=count, **extras)
        for seed, count in enumerate(token_counts)
    ]
    negative = comfy.tiny.conditioning(family, 100, **extras)
    latent = comfy.tiny.empty_latent(family)
    prompt_set = text_prompt_set(comfy, family, per_prompt, PROMPTS)
    samples = hier_ksampler(comfy, model, prompt_set, negative, latent, cfg=cfg).args[0]["samples"]
    assert samples.shape == (N_PROMPTS, *latent["samples"].shape[1:])
    for i, positive in enumerate(per_prompt):
        reference = stock_sample(comfy, model, positive, negative, latent, cfg=cfg)
        assert_close(samples[i : i + 1], reference, f"{family}, prompt {i}")


# --- SDXL: pooled output and size extras -> adm y ------------------------------------------------


def test_sdxl_tau_zero_equals_stock_sampling_per_prompt(comfy):
    assert_tau_zero_equals_stock(comfy, "sdxl", cfg=5.0)


def test_sdxl_groups_evaluate_the_adm_of_their_mean_pooled_output(comfy):
    family = "sdxl"
    per_prompt = [comfy.tiny.conditioning(family, seed) for seed in range(len(SET_WITH_SPLITS))]
    prompt_set = text_prompt_set(comfy, family, per_prompt, SET_WITH_SPLITS)
    model, calls = recording(comfy.tiny.build_model(family))
    schedule = run_sharing_half(comfy, model, prompt_set, family, calls)
    assert len(calls) == SHARING_STEPS  # euler: one model call per step, every group in one batch
    pooled = prompt_set.conditioning[0][1]["pooled_output"]
    size_extras = comfy.tiny.FAMILIES[family].extras
    for step, call in enumerate(calls):
        members = [schedule.tree.members(node) for node in schedule.active_groups(step)]
        expected = model.model.encode_adm(pooled_output=group_mean(pooled, members), **size_extras)
        assert call["rows"] == 2 * len(members)
        torch.testing.assert_close(positive_rows(call, "y"), expected, rtol=1e-5, atol=1e-6)


def test_sdxl_prompts_of_different_token_lengths_stay_exact(comfy):
    # A prompt over 77 tokens encodes to 154; the others are padded by repetition, which a UNet's
    # cross-attention does not notice.
    assert_tau_zero_equals_stock(comfy, "sdxl", cfg=5.0, token_counts=(77, 154, 77))


# --- Stable unCLIP (SD2.1) through the prior path ---------------------------------------------------

UNCLIP_STRENGTH = 0.8
UNCLIP_NOISE_AUGMENTATION = 0.1


@pytest.fixture(scope="module")
def unclip(comfy, tmp_path_factory):
    """The tiny unCLIP model, a base conditioning, and HierPriorEmbed's PROMPT_TREE over SET_WITH_SPLITS
    from a tiny Kandinsky prior whose image embeddings are as wide as the model's unCLIP input."""
    from hierdiff_diffusers.prior import load_prior
    from testkit.tiny_kandinsky import build_tiny_prior  # imports diffusers: only when needed

    folder = build_tiny_prior(
        tmp_path_factory.mktemp("prior") / "tiny-prior", seed=0, embedding_dim=comfy.tiny.UNCLIP_EMBEDDING_DIM
    )
    base = comfy.tiny.conditioning("sd21_unclip", 0)
    embed = comfy.node_classes["HierPriorEmbed"]
    prompt_set = embed.execute(
        [load_prior(folder)], [base], ["\n".join(SET_WITH_SPLITS)], [3], [4.0], [3],
        [UNCLIP_STRENGTH], [UNCLIP_NOISE_AUGMENTATION], ["ward"],
    ).args[0]  # fmt: skip
    return comfy.tiny.build_model("sd21_unclip"), base, prompt_set


def vision_output(image_embeds: torch.Tensor):
    """A CLIP_VISION_OUTPUT (ComfyUI's own class) carrying ``image_embeds`` (1, D)."""
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    output["image_embeds"] = image_embeds
    return output


def test_unclip_prior_tree_at_tau_zero_equals_stock_unclip_conditioning_per_prompt(comfy, unclip):
    model, base, prompt_set = unclip
    assert prompt_set.embedding_space == "prior_image"
    negative = comfy.tiny.conditioning("sd21_unclip", 100)
    latent = comfy.tiny.empty_latent("sd21_unclip")
    samples = hier_ksampler(comfy, model, prompt_set, negative, latent, cfg=5.0).args[0]["samples"]
    image_embeds = prompt_set.conditioning[0][1]["hier_prior_image_embeds"]
    assert image_embeds.shape == (len(SET_WITH_SPLITS), comfy.tiny.UNCLIP_EMBEDDING_DIM)
    for i in range(len(SET_WITH_SPLITS)):
        positive = comfy.stock.unCLIPConditioning().apply_adm(
            base, vision_output(image_embeds[i : i + 1]), UNCLIP_STRENGTH, UNCLIP_NOISE_AUGMENTATION
        )[0]
        reference = stock_sample(comfy, model, positive, negative, latent, cfg=5.0)
        assert_close(samples[i : i + 1], reference, f"unCLIP, prompt {i}")


def assert_first_step_tree_is_exact_at_tau_zero(comfy, model, prompt_set, negative, latent, cfg) -> None:
    """The first-step tree changes the grouping only: at tau = 0 the pictures are ordinary sampling's, and
    the plan counts one probe evaluation per prompt."""
    from hierdiff_core.schedule import Plan

    plain = hier_ksampler(comfy, model, prompt_set, negative, latent, cfg=cfg).args[0]["samples"]
    probed = hier_ksampler(comfy, model, prompt_set, negative, latent, cfg=cfg, tree_from="first_step")
    assert_close(probed.args[0]["samples"], plain, "first-step tree at tau 0")
    schedule = Plan.from_json(probed.args[1])
    assert schedule.probe_evaluations == prompt_set.tree.n_prompts
    assert schedule.tree.metric == "euclidean"


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_first_step_tree_on_each_text_family(comfy, family):
    per_prompt = [comfy.tiny.conditioning(family, seed) for seed in range(N_PROMPTS)]
    prompt_set = text_prompt_set(comfy, family, per_prompt, PROMPTS)
    model, latent = comfy.tiny.build_model(family), comfy.tiny.empty_latent(family)
    negative = comfy.tiny.conditioning(family, 100)
    assert_first_step_tree_is_exact_at_tau_zero(comfy, model, prompt_set, negative, latent, cfg=3.0)


def test_first_step_tree_on_a_prior_space_set_keeps_its_per_prompt_unclip_rows(comfy, unclip):
    model, _base, prompt_set = unclip
    negative = comfy.tiny.conditioning("sd21_unclip", 100)
    latent = comfy.tiny.empty_latent("sd21_unclip")
    assert_first_step_tree_is_exact_at_tau_zero(comfy, model, prompt_set, negative, latent, cfg=5.0)


def test_unclip_groups_evaluate_the_adm_of_their_mean_image_embedding(comfy, unclip):
    from comfy.model_base import unclip_adm

    model, _, prompt_set = unclip
    model, calls = recording(model)
    schedule = run_sharing_half(comfy, model, prompt_set, "sd21_unclip", calls)
    image_embeds = prompt_set.conditioning[0][1]["hier_prior_image_embeds"]
    augmentor = model.model.noise_augmentor
    for step, call in enumerate(calls):
        members = [schedule.tree.members(node) for node in schedule.active_groups(step)]
        # ComfyUI's unCLIP adm of each group's mean image embedding, as unCLIPConditioning would give
        # it (the augmentation noise comes from the seed, the same for every row, so y is affine in it).
        expected = torch.cat(
            [
                unclip_adm(
                    [
                        {
                            "clip_vision_output": vision_output(mean[None]),
                            "strength": UNCLIP_STRENGTH,
                            "noise_augmentation": UNCLIP_NOISE_AUGMENTATION,
                        }
                    ],
                    "cpu",
                    augmentor,
                    seed=SEED - 10,
                )
                for mean in group_mean(image_embeds, members)
            ]
        )
        torch.testing.assert_close(positive_rows(call, "y"), expected, rtol=1e-5, atol=1e-5)


# --- SD3 and Flux ------------------------------------------------------------------------------------


def test_sd3_tau_zero_equals_stock_sampling_per_prompt(comfy):
    assert_tau_zero_equals_stock(comfy, "sd3", cfg=4.0)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_flux_tau_zero_equals_stock_sampling_per_prompt(comfy, cfg):
    assert_tau_zero_equals_stock(comfy, "flux", cfg=cfg, guidance=2.0)


def test_flux_guidance_in_the_conditioning_reaches_the_model(comfy):
    family = "flux"
    per_prompt = [comfy.tiny.conditioning(family, seed, guidance=2.0) for seed in range(N_PROMPTS)]
    prompt_set = text_prompt_set(comfy, family, per_prompt, PROMPTS)
    assert prompt_set.conditioning[0][1]["guidance"] == 2.0
    model, calls = recording(comfy.tiny.build_model(family))
    latent = comfy.tiny.empty_latent(family)
    hier_ksampler(comfy, model, prompt_set, per_prompt[0], latent, cfg=1.0, budget="tau", value=5.0)
    assert calls and all(torch.equal(c["c"]["guidance"], torch.full((c["rows"],), 2.0)) for c in calls)
    assert calls[0]["rows"] == 1, "a large tau shares the first step"
    mixed = [comfy.tiny.conditioning(family, i, guidance=g) for i, g in enumerate((2.0, 3.0))]
    with pytest.raises(ValueError, match="conditioning extra 'guidance' differs between prompts"):
        comfy.conditioning.stack_conditionings(mixed)


@pytest.mark.parametrize("reference", [None, (5, 6)])
def test_flux_prompts_of_different_token_lengths_are_exact_with_the_text_mask(comfy, reference):
    # Flux's T5 pads to 256 tokens, so only long prompts differ (256, 512, 300 here). Its text tokens carry
    # no position and its transformer takes an attention mask in every block: each call's groups are
    # zero-padded to its longest and the padding hidden, over text, image and reference (Kontext) tokens.
    extras = {"guidance": 2.0}
    if reference is not None:
        generator = torch.Generator().manual_seed(5)
        extras["reference_latents"] = [torch.randn(1, 16, *reference, generator=generator)]
    assert comfy.conditioning.text_padding(comfy.tiny.build_model("flux")).mode == "mask"
    model, calls = recording(comfy.tiny.build_model("flux"))
    per_prompt = [
        comfy.tiny.conditioning("flux", seed, token_count=count, **extras)
        for seed, count in enumerate((256, 512, 300))
    ]
    negative = comfy.tiny.conditioning("flux", 100, **extras)
    latent = comfy.tiny.empty_latent("flux")
    prompt_set = text_prompt_set(comfy, "flux", per_prompt, PROMPTS)
    samples = hier_ksampler(comfy, model, prompt_set, negative, latent, cfg=3.0).args[0]["samples"]
    image_tokens = (8 // 2) * (8 // 2) + (0 if reference is None else 3 * 3)
    positive = [c for c in calls if c["chunks"] == [COND]]
    assert len(positive) == STEPS, "every prompt in one call per step"
    assert all(c["c"]["attention_mask"].shape == (N_PROMPTS, 1, 1, 512 + image_tokens) for c in positive)
    for i, conditioning in enumerate(per_prompt):
        reference_sample = stock_sample(
            comfy, comfy.tiny.build_model("flux"), conditioning, negative, latent, cfg=3.0
        )
        assert_close(samples[i : i + 1], reference_sample, f"flux, prompt {i}, reference {reference}")


@pytest.mark.parametrize(("family", "model_type", "token_counts"), [("sd3", "SD3", (154, 231))])
def test_joint_attention_models_refuse_prompts_of_different_token_lengths_by_name(
    comfy, family, model_type, token_counts
):
    # Repeating text tokens changes SD3's joint attention (text and image tokens in one softmax), and its
    # MMDiT takes no text mask, so a padded prompt would not give what it gives alone: refused before
    # sampling.
    per_prompt = [comfy.tiny.conditioning(family, i, token_count=t) for i, t in enumerate(token_counts)]
    prompt_set = text_prompt_set(comfy, family, per_prompt, PROMPTS[: len(token_counts)])
    assert prompt_set.conditioning[0][1]["hier_token_lengths"] == token_counts
    model, calls = recording(comfy.tiny.build_model(family))
    message = (
        rf"prompt_tree input: its prompts encode to different token counts \({min(token_counts)} to "
        rf"{max(token_counts)}\), and {model_type} models cannot pad them"
    )
    with pytest.raises(ValueError, match=message):
        hier_ksampler(comfy, model, prompt_set, per_prompt[0], comfy.tiny.empty_latent(family), cfg=1.0)
    assert calls == []


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_a_tree_from_another_text_encoder_is_refused_by_context_dimension(comfy, family):
    narrow = [[[c[0][0][..., :48], c[0][1]]] for c in (comfy.tiny.conditioning(family, i) for i in range(2))]
    prompt_set = text_prompt_set(comfy, family, narrow, PROMPTS[:2])
    model, latent = comfy.tiny.build_model(family), comfy.tiny.empty_latent(family)
    expected = comfy.tiny.CONTEXT_DIM
    with pytest.raises(ValueError, match=f"context dimension 48 but the MODEL expects {expected}"):
        hier_ksampler(comfy, model, prompt_set, narrow[0], latent, cfg=1.0)


# --- families refused by type ------------------------------------------------------------------------

UNSUPPORTED = {
    "LTXV": {
        "image_model": "ltxv", "num_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
        "cross_attention_dim": 32, "caption_channels": 16,
    },
    "HunyuanVideo15": {
        "image_model": "hunyuan_video", "in_channels": 65, "out_channels": 32, "patch_size": [1, 1, 1],
        "vec_in_dim": None, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 16,
        "hidden_size": 128, "mlp_ratio": 1.0, "num_heads": 1, "depth": 1, "depth_single_blocks": 1,
        "theta": 256, "qkv_bias": True, "byt5": True, "guidance_embed": False,
        "use_cond_type_embedding": True, "vision_in_dim": 1152,
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("config_class", "why"),
    [
        ("LTXV", "read the T5 encoder's integer attention mask"),
        ("HunyuanVideo15", "condition on per-prompt inputs besides the text tokens"),
    ],
)
def test_ltxv_and_hunyuan_video_are_refused_by_type_before_sampling(comfy, config_class, why):
    from comfy import supported_models
    from comfy.model_patcher import ModelPatcher

    # ComfyUI's own model classes at a few thousand parameters: the refusal comes before they run.
    model_config = getattr(supported_models, config_class)(dict(UNSUPPORTED[config_class]))
    model_config.set_inference_dtype(torch.float32, None)
    model = ModelPatcher(model_config.get_model({}), torch.device("cpu"), torch.device("cpu"))
    model, calls = recording(model)
    per_prompt = [comfy.tiny.conditioning("flux", seed) for seed in range(N_PROMPTS)]
    prompt_set = text_prompt_set(comfy, "flux", per_prompt, PROMPTS)
    latent = {"samples": torch.zeros(1, model.get_model_object("latent_format").latent_channels, 1, 4, 4)}
    message = rf"model: {config_class} \({type(model.model).__name__}\) models {why}"
    with pytest.raises(ValueError, match=message):
        hier_ksampler(comfy, model, prompt_set, per_prompt[0], latent, cfg=1.0)
    assert calls == []
