# SPDX-License-Identifier: GPL-3.0-or-later
"""Prompts of different token lengths on joint-attention image models (testkit/tiny_joint.py).

The tiny Chroma files load through the functions ComfyUI's UNETLoader and CLIPLoader call; prompts are
encoded by ComfyUI's T5 encoder class behind its own (bundled) T5 tokenizer, which does not pad, so
every prompt has its own token count.

Specification:
- Chroma (a model that takes a text attention mask in every attention layer, text tokens without
  positions): the groups of a model call are zero-padded to the call's longest and the mask hides the
  padding; at tau = 0 each prompt's latent equals stock KSampler on that prompt alone (relative 1e-4),
  all prompts in one model call; the Hierarchical Guider with SamplerCustomAdvanced gives the same;
- a group's conditioning is, at each token position, the mean of the members whose own tokens reach it,
  as long as its longest member; with a 50 % target saving the model sees exactly the rows the plan
  counts, in one call per step;
- the families whose ComfyUI model cannot hide padded text (Lumina 2, Z-Image, Qwen-Image, Flux.2,
  HiDream) are tested in test_llm_families.py.
"""

from __future__ import annotations

import sys

import pytest
import torch

from hierdiff_core.schedule import Plan
from hierdiff_dev.expect import assert_close, recording

SEED = 3
STEPS = 4
CFG = 4.0
PROMPTS = [
    "a cat",
    "a red fox sleeping under a tall pine tree in the snow at dawn",
    "an old stone lighthouse on a cliff",
]
SET_WITH_SPLITS = [
    "a cat",
    "a small cat",
    "a red fox sleeping under a tall pine tree in the snow at dawn",
    "a red fox sleeping under a pine tree",
    "an old stone lighthouse on a cliff above a stormy sea at night",
    "an old lighthouse",
]
NEGATIVE = "blurry, low quality"


@pytest.fixture(scope="module")
def joint(comfy_host):
    """Stock ComfyUI (its ``nodes`` module), our node classes and conditioning module, the tiny Chroma
    and its T5, and cached encodings (stock CLIPTextEncode) and prompt trees (Prompt Set Cluster)."""
    import comfy.utils

    import nodes as comfy_nodes
    import testkit.tiny_joint as tiny

    comfy.utils.PROGRESS_BAR_ENABLED = False
    classes = comfy_host.node_classes
    package = sys.modules[classes["HierKSampler"].__module__].__name__.rsplit(".", 1)[0]
    clip = tiny.load_text_encoder()
    cache: dict[tuple, object] = {}

    def cached(key: tuple, make):
        if key not in cache:
            cache[key] = make()
        return cache[key]

    class Joint:
        stock = comfy_nodes
        node_classes = classes
        conditioning = sys.modules[f"{package}.conditioning"]
        module = tiny
        text_encoder = clip
        model = tiny.load_chroma_model()

        @staticmethod
        def encode(text: str) -> list:
            return cached(("text", text), lambda: comfy_nodes.CLIPTextEncode().encode(clip, text)[0])

        @staticmethod
        def prompt_tree(prompts: list[str]):
            node = classes["HierPromptSetCluster"]
            return cached(
                ("tree", *prompts),
                lambda: node.execute([clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]).args[0],
            )

    Joint.negative = Joint.encode(NEGATIVE)
    return Joint


def hier_ksampler(joint, model, prompt_tree, *, budget="tau", value=0.0, max_batch=64, latent=None):
    return joint.node_classes["HierKSampler"].execute(
        model, prompt_tree, joint.negative, latent or joint.module.empty_latent(), SEED, STEPS, CFG,
        "euler", "simple", 1.0, budget, value, max_batch, "shared", "mean", "prompt_tree",
    )  # fmt: skip


def stock_sample(joint, model, positive, latent=None) -> torch.Tensor:
    out = joint.stock.common_ksampler(
        model,
        SEED,
        STEPS,
        CFG,
        "euler",
        "simple",
        positive,
        joint.negative,
        latent or joint.module.empty_latent(),
    )
    return out[0]["samples"]


def test_tiny_chroma_files_load_as_chroma_and_prompts_keep_their_token_counts(joint):
    import comfy.model_base
    import comfy.supported_models
    import comfy.text_encoders.pixart_t5

    assert type(joint.model.model) is comfy.model_base.Chroma
    assert type(joint.model.model.model_config) is comfy.supported_models.Chroma
    assert isinstance(joint.text_encoder.tokenizer, comfy.text_encoders.pixart_t5.PixArtTokenizer)
    lengths = [joint.encode(p)[0][0].shape[1] for p in PROMPTS]
    assert len(set(lengths)) == len(PROMPTS), f"the prompts should differ in token count: {lengths}"
    tree = joint.prompt_tree(PROMPTS)
    assert tree.conditioning[0][1]["hier_token_lengths"] == tuple(lengths)
    assert joint.conditioning.text_padding(joint.model).mode == "mask"


@pytest.mark.parametrize("max_batch", [64, 2])
def test_chroma_mixed_lengths_at_tau_zero_equal_stock_per_prompt(joint, max_batch):
    model, calls = recording(joint.model)
    samples = hier_ksampler(joint, model, joint.prompt_tree(PROMPTS), max_batch=max_batch).args[0]["samples"]
    longest = max(joint.encode(p)[0][0].shape[1] for p in PROMPTS)
    positive = [c for c in calls if c["chunks"] == [0]]
    # The positive rows of a call are padded to one length, the padding hidden by the mask (a call whose
    # rows need no padding has none); the negative goes as in stock sampling.
    assert any("attention_mask" in c["c"] for c in positive)
    if max_batch == 64:
        assert len(positive) == STEPS, "every prompt in one call per step"
        assert all(c["c"]["c_crossattn"].shape[1] == longest and "attention_mask" in c["c"] for c in positive)
    for i, prompt in enumerate(PROMPTS):
        reference = stock_sample(joint, joint.model, joint.encode(prompt))
        assert_close(samples[i : i + 1], reference, f"Chroma, prompt {i} ({prompt!r}), max_batch {max_batch}")


def test_chroma_guider_with_mixed_lengths_equals_hierarchical_ksampler(joint):
    tree = joint.prompt_tree(PROMPTS)
    expected = hier_ksampler(joint, joint.model, tree).args[0]["samples"]
    guider = (
        joint.node_classes["HierGuider"]
        .execute(joint.model, tree, joint.negative, CFG, "tau", 0.0, 64, "shared", "mean")
        .args[0]
    )
    sigmas = joint.node_classes["BasicScheduler"].execute(joint.model, "simple", STEPS, 1.0).args[0]
    noise = joint.node_classes["RandomNoise"].execute(SEED).args[0]
    sampler = joint.node_classes["KSamplerSelect"].execute("euler").args[0]
    out = (
        joint.node_classes["SamplerCustomAdvanced"]
        .execute(noise, guider, sampler, sigmas, joint.module.empty_latent())
        .args[0]["samples"]
    )
    assert_close(out, expected, "Chroma, Hierarchical Guider against Hierarchical KSampler")


def test_chroma_groups_mix_each_position_over_the_members_that_have_it(joint):
    tree = joint.prompt_tree(SET_WITH_SPLITS)
    model, calls = recording(joint.model)
    out = hier_ksampler(joint, model, tree, budget="target_saving", value=0.5)
    schedule = Plan.from_json(out.args[1])
    assert schedule.evaluations_per_step[0] < len(SET_WITH_SPLITS), "the first step should share"
    assert sum(c["rows"] for c in calls) == 2 * schedule.model_evaluations
    tokens, extras = tree.conditioning[0]
    lengths = torch.as_tensor(extras["hier_token_lengths"])
    positive = [c for c in calls if c["chunks"] == [0]]
    assert len(positive) == STEPS  # every step's groups in one call, padded to one length
    image_tokens = (8 // 2) * (8 // 2)
    mixed_groups = 0
    for step, call in enumerate(positive):
        groups = [schedule.tree.members(node) for node in schedule.active_groups(step)]
        own = [int(lengths[m].max()) for m in groups]
        rows, mask = call["c"]["c_crossattn"], call["c"].get("attention_mask")
        assert rows.shape[:2] == (len(groups), max(own))
        if len(set(own)) > 1:
            assert mask.shape == (len(groups), 1, 1, max(own) + image_tokens)
        for row, members, length in zip(rows, groups, own, strict=True):
            present = torch.arange(length)[None, :] < lengths[members][:, None]
            expected = (tokens[members][:, :length] * present[..., None]).sum(0) / present.sum(0)[:, None]
            torch.testing.assert_close(row[:length], expected, rtol=1e-5, atol=1e-6)
            assert not row[length:].any()
            mixed_groups += len(set(lengths[members].tolist())) > 1
        if mask is not None:
            hidden = mask[:, 0, 0, : max(own)] < 0
            assert torch.equal(hidden, torch.arange(max(own))[None, :] >= torch.as_tensor(own)[:, None])
            assert not mask[:, 0, 0, max(own) :].any(), "image tokens are never hidden"
    assert mixed_groups, "some group should mix prompts of different lengths"


def test_chroma_target_saving_counts_equal_the_plan(joint):
    counted = joint.model.clone()
    counter = {"rows": 0}

    def wrapper(apply_model, args):
        counter["rows"] += args["input"].shape[0]
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted.set_model_unet_function_wrapper(wrapper)
    out = hier_ksampler(joint, counted, joint.prompt_tree(SET_WITH_SPLITS), budget="target_saving", value=0.5)
    schedule = Plan.from_json(out.args[1])
    assert counter["rows"] == 2 * schedule.model_evaluations  # positive and negative per group
    assert schedule.model_evaluations < len(SET_WITH_SPLITS) * STEPS
    line = out.ui["hierdiff_measured"][0]
    assert f"measured: {2 * schedule.model_evaluations} latent rows" in line


def test_chroma_hides_zero_padding_only_with_the_mask(joint):
    # The model alone: a prompt's tokens, then the same tokens followed by zero tokens, with and without
    # the text attention mask the samplers add. The mask makes the padding invisible; without it the
    # padding changes the prediction, which is why unmasked families are refused.
    network = joint.model.model.diffusion_model
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 8, 8, generator=generator)
    timestep, guidance = torch.tensor([0.7, 0.7]), torch.tensor([0.0, 0.0])
    tokens = joint.encode(PROMPTS[1])[0][0].expand(2, -1, -1)
    padded = torch.nn.functional.pad(tokens, (0, 0, 0, 7))
    hidden = torch.arange(padded.shape[1])[None, :] >= torch.tensor([[tokens.shape[1]], [padded.shape[1]]])
    mask = joint.conditioning.joint_attention_mask(hidden, (8 // 2) * (8 // 2), torch.float32)
    with torch.no_grad():
        alone = network(x, timestep, tokens, guidance)
        masked = network(x, timestep, padded, guidance, attention_mask=mask)
    assert_close(masked[:1], alone[:1], "Chroma, zero padding hidden by the mask")
    assert (masked[1:] - alone[1:]).abs().max() > 1e-2 * alone.abs().max(), "unmasked padding should show"


def test_chroma_medoid_groups_take_a_member_at_its_own_length(joint):
    tree = joint.prompt_tree(SET_WITH_SPLITS)
    model, calls = recording(joint.model)
    out = joint.node_classes["HierKSampler"].execute(
        model, tree, joint.negative, joint.module.empty_latent(), SEED, STEPS, CFG, "euler", "simple", 1.0,
        "target_saving", 0.5, 64, "shared", "medoid", "prompt_tree",
    )  # fmt: skip
    schedule = Plan.from_json(out.args[1])
    tokens, extras = tree.conditioning[0]
    lengths = extras["hier_token_lengths"]
    for step, call in enumerate(c for c in calls if c["chunks"] == [0]):
        groups = [schedule.tree.members(node) for node in schedule.active_groups(step)]
        mask = call["c"].get("attention_mask")
        for g, (row, members) in enumerate(zip(call["c"]["c_crossattn"], groups, strict=True)):
            chosen = [m for m in members if torch.equal(row[: lengths[m]], tokens[m, : lengths[m]])]
            assert chosen, f"step {step}: a medoid group's row is one of its members' own tokens"
            own = lengths[chosen[0]]
            assert not row[own:].any()
            if mask is not None:
                assert torch.equal(mask[g, 0, 0, : row.shape[0]] < 0, torch.arange(row.shape[0]) >= own)
