# SPDX-License-Identifier: GPL-3.0-or-later
"""Prompt Set Cluster's encoding, and how prompts of different token lengths are stored and mixed.

Specification:
- each distinct prompt is encoded once (duplicates reuse its rows), and the text encoder runs over the
  token rows of many prompts per call;
- every prompt's rows (tokens and pooled output) are bit for bit what CLIPTextEncode gives for it alone:
  distinct, duplicated, multi-chunk, weighted and empty prompts, on the tiny SD1.5 CLIP and on tiny
  random text encoders of SDXL (CLIP-L + CLIP-G), SD3 (CLIP-L + CLIP-G; T5) and Flux (CLIP-L + T5);
- nothing is padded when stored: a row keeps its own length (the tensor is as long as the longest
  prompt, shorter rows zero-filled after their tokens);
- at tau = 0 the model sees every prompt at its own token length, one call per length, and the images
  equal stock KSampler's for each prompt alone (relative 1e-4);
- a group is padded only to the least common multiple of its own members' lengths: its row is the mean
  (or the medoid) of the members' tokens repeated to that length;
- the node reports progress over the distinct prompts while encoding and honours Cancel.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from hierdiff_dev.expect import assert_close, recording

WORDS = ("red", "blue", "green", "cat", "dog", "tree", "house", "river", "sky", "stone", "light", "night")
SEED = 7
STEPS = 4
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}
COND = 0  # comfy.samplers' marker of a conditional (positive) chunk in cond_or_uncond


def chunked(chunks: int, variant: int = 0) -> str:
    """A prompt of single-token words that the CLIP tokenizer splits into ``chunks`` chunks of 77 tokens."""
    count = 75 * (chunks - 1) + 10 + variant
    return " ".join(WORDS[(i + variant) % len(WORDS)] for i in range(count))


@pytest.fixture(scope="module")
def comfy(comfy_host, tiny_model):
    """Stock ComfyUI (its ``nodes`` module), the pack's node classes and modules, the tiny SD1.5 model."""
    import comfy.utils

    import nodes as comfy_nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    classes = comfy_host.node_classes
    cluster = sys.modules[classes["HierPromptSetCluster"].__module__]
    package = cluster.__name__.rsplit(".", 1)[0]

    class Comfy:
        stock = comfy_nodes
        node_classes = classes
        conditioning = sys.modules[f"{package}.conditioning"]

    Comfy.cluster = cluster
    Comfy.model, Comfy.clip, _ = tiny_model
    Comfy.negative = comfy_nodes.CLIPTextEncode().encode(Comfy.clip, "blurry")[0]
    return Comfy


def prompt_set(comfy, prompts: list[str], clip=None):
    node = comfy.node_classes["HierPromptSetCluster"]
    return node.execute([clip or comfy.clip], prompts, ["ward"], ["clip_pooled"]).args[0]


def alone(comfy, prompt: str, clip=None) -> list:
    """CLIPTextEncode's CONDITIONING for ``prompt`` alone."""
    return comfy.stock.CLIPTextEncode().encode(clip or comfy.clip, prompt)[0]


class EncoderCalls:
    """Counts the calls of a text encoder module and the token rows they carry (a forward hook)."""

    def __init__(self, encoder: torch.nn.Module):
        self.calls = 0
        self.rows = 0
        self._handle = encoder.register_forward_hook(self._count)

    def _count(self, _module, args, _output) -> None:
        self.calls += 1
        self.rows += len(args[0])

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def encoder_calls(comfy):
    calls = EncoderCalls(comfy.clip.cond_stage_model.clip_l)
    yield calls
    calls.remove()


# --- encoding once, in batches -------------------------------------------------------------------------


def test_duplicates_are_encoded_once(comfy, encoder_calls):
    prompts = ["a red cat on a sofa"] * 5 + ["a blue dog"] * 3 + ["a green tree"]
    tokens = prompt_set(comfy, prompts).conditioning[0][0]
    assert encoder_calls.rows == 3  # one 77-token row per distinct prompt
    assert encoder_calls.calls == 1
    assert tokens.shape[0] == len(prompts)
    for i in range(1, 5):
        assert torch.equal(tokens[i], tokens[0])


def test_five_thousand_copies_cost_one_encoding(comfy, encoder_calls):
    prompt_set(comfy, ["a red cat on a sofa"] * 5000)
    assert (encoder_calls.calls, encoder_calls.rows) == (1, 1)


def test_the_encoder_runs_once_per_round_of_prompts(comfy, encoder_calls, monkeypatch):
    monkeypatch.setattr(comfy.cluster, "PROMPTS_PER_ROUND", 16)
    prompt_set(comfy, [f"a red cat number {i}" for i in range(40)])
    assert (encoder_calls.calls, encoder_calls.rows) == (3, 40)  # rounds of 16, 16 and 8 prompts


def test_a_call_holds_at_most_tokens_per_call(comfy, encoder_calls, monkeypatch):
    monkeypatch.setattr(comfy.cluster, "TOKENS_PER_CALL", 5 * 77)
    prompt_set(comfy, [f"a red cat number {i}" for i in range(12)])
    assert (encoder_calls.calls, encoder_calls.rows) == (3, 12)  # 5, 5 and 2 rows of 77 tokens


# --- exactness -----------------------------------------------------------------------------------------

MIXED_PROMPTS = [
    "a red cat on a sofa",
    "a (red:1.3) cat on a [blue] sofa",
    chunked(2),
    "a red cat on a sofa",  # a duplicate
    "",
    chunked(3, 1),
    chunked(2, 2) + " (green:0.7) tree",
    "A RED CAT ON A SOFA",  # another text, the same tokens as the first
]


def test_rows_equal_clip_text_encode_of_each_prompt_alone(comfy):
    tokens, extras = prompt_set(comfy, MIXED_PROMPTS).conditioning[0]
    lengths = extras["hier_token_lengths"]
    assert lengths == (77, 77, 154, 77, 77, 231, 154, 77)
    assert tokens.shape[:2] == (len(MIXED_PROMPTS), 231)  # as long as the longest prompt, no longer
    for i, prompt in enumerate(MIXED_PROMPTS):
        reference = alone(comfy, prompt)
        assert torch.equal(tokens[i : i + 1, : lengths[i]], reference[0][0]), prompt
        assert torch.equal(extras["pooled_output"][i : i + 1], reference[0][1]["pooled_output"]), prompt
        assert not tokens[i, lengths[i] :].any(), "a shorter row is zero after its own tokens"


def tiny_text_encoder(family: str):
    """A ComfyUI CLIP with ``family``'s real tokenizer and text-encoder classes at tiny widths, random
    weights: SDXL (CLIP-L + CLIP-G, pooled from G, projected), SD3 without T5 (CLIP-L + CLIP-G, both
    pooled outputs), SD3 with T5 only, Flux (CLIP-L pooled + T5 tokens)."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd3_clip

    from testkit.tiny_model import initialise_parameters

    targets = {
        "sdxl": (comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel),
        "sd3": (comfy.text_encoders.sd3_clip.SD3Tokenizer, comfy.text_encoders.sd3_clip.sd3_clip(t5=False)),
        "sd3_t5": (
            comfy.text_encoders.sd3_clip.SD3Tokenizer,
            comfy.text_encoders.sd3_clip.sd3_clip(clip_l=False, clip_g=False),
        ),
        "flux": (comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip()),
    }
    clip_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 3,  # SDXL and SD3 read the penultimate layer
        "projection_dim": 32,
    }
    t5_config = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2}
    options = {
        "clip_l_model_config": clip_config,
        "clip_g_model_config": clip_config,
        "t5xxl_model_config": t5_config,
    }
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(*targets[family]), model_options=options)
    initialise_parameters(clip.cond_stage_model, torch.Generator().manual_seed(0))
    return clip


@pytest.mark.parametrize("family", ["sdxl", "sd3", "sd3_t5", "flux"])
def test_every_family_encodes_each_prompt_exactly_as_alone(comfy, family):
    clip = tiny_text_encoder(family)
    per_prompt = comfy.cluster.encode_distinct(clip, MIXED_PROMPTS)
    assert per_prompt[0] is per_prompt[3], "a duplicate shares its prompt's conditioning"
    for prompt, conditioning in zip(MIXED_PROMPTS, per_prompt, strict=True):
        ((reference_tokens, reference_extras),) = alone(comfy, prompt, clip)
        ((tokens, extras),) = conditioning
        assert torch.equal(tokens, reference_tokens), prompt
        assert extras.keys() == reference_extras.keys()
        for key, value in reference_extras.items():
            same = (
                torch.equal(extras[key], value) if isinstance(value, torch.Tensor) else extras[key] == value
            )
            assert same, f"{family}: {key} of {prompt!r}"


# --- padding -------------------------------------------------------------------------------------------

# Distinct first chunks: a prompt's pooled output is its first chunk's, and prompts of equal pooled
# outputs are one group even at tau = 0.
CHUNK_SET = [chunked(1), chunked(2), chunked(3, 2), chunked(1, 1), chunked(2, 1), "a (red:1.3) cat"]


def hier_ksampler(comfy, tree, *, model=None, cfg=7.0, budget="tau", value=0.0, mix="mean"):
    return comfy.node_classes["HierKSampler"].execute(
        model or comfy.model, tree, comfy.negative, LATENT, SEED, STEPS, cfg, "euler", "normal", 1.0,
        budget, value, 64, "shared", mix, "prompt_tree",
    )  # fmt: skip


def test_at_tau_zero_the_model_sees_every_prompt_at_its_own_length(comfy):
    tree = prompt_set(comfy, CHUNK_SET)
    model, calls = recording(comfy.model)
    hier_ksampler(comfy, tree, model=model, cfg=1.0)  # cfg 1: conditional rows only
    references = [alone(comfy, p)[0][0][0] for p in CHUNK_SET]
    assert len(calls) == 3 * STEPS, "euler: one call per token length and step"
    seen = []
    for call in calls:
        for row in call["c"]["c_crossattn"]:
            matches = [i for i, r in enumerate(references) if r.shape == row.shape and torch.equal(r, row)]
            assert matches, f"a row of {row.shape[0]} tokens is no prompt's own encoding"
            seen += matches
    assert sorted(seen) == sorted(list(range(len(CHUNK_SET))) * STEPS)


def expected_group_row(references: list[torch.Tensor], members, mix: str) -> torch.Tensor:
    """A group's conditioning by definition: its members' tokens repeated to the lcm of their lengths,
    averaged (mean), or the member nearest to that average (medoid)."""
    length = math.lcm(*(references[m].shape[0] for m in members))
    repeated = torch.stack([references[m].repeat(length // references[m].shape[0], 1) for m in members])
    mean = repeated.mean(0)
    if mix == "mean":
        return mean
    return repeated[int(torch.argmin((repeated - mean).flatten(1).norm(dim=1)))]


@pytest.mark.parametrize("mix", ["mean", "medoid"])
def test_a_group_is_padded_to_the_lcm_of_its_own_members_only(comfy, mix):
    from hierdiff_core.schedule import Plan

    tree = prompt_set(comfy, CHUNK_SET)
    model, calls = recording(comfy.model)
    out = hier_ksampler(comfy, tree, model=model, cfg=1.0, budget="tau", value=3.0, mix=mix)
    schedule = Plan.from_json(out.args[1])
    references = [alone(comfy, p)[0][0][0] for p in CHUNK_SET]
    assert len(schedule.active_groups(0)) < len(CHUNK_SET), "the first step should share"
    expected_calls = []
    mixed_lengths = 0
    for step in range(STEPS):
        by_length: dict[int, list[torch.Tensor]] = {}
        for node in schedule.active_groups(step):
            members = schedule.tree.members(int(node))
            mixed_lengths += len({references[m].shape[0] for m in members}) > 1
            row = expected_group_row(references, members, mix)
            by_length.setdefault(row.shape[0], []).append(row)
        expected_calls += [torch.stack(rows) for rows in by_length.values()]
    assert mixed_lengths, "some group should mix prompts of different lengths"
    assert [c["c"]["c_crossattn"].shape for c in calls] == [e.shape for e in expected_calls]
    for call, expected in zip(calls, expected_calls, strict=True):
        torch.testing.assert_close(call["c"]["c_crossattn"], expected, rtol=1e-5, atol=1e-6)


def test_tau_zero_equals_stock_ksampler_for_prompts_of_different_chunk_counts(comfy):
    samples = hier_ksampler(comfy, prompt_set(comfy, CHUNK_SET)).args[0]["samples"]
    for i, prompt in enumerate(CHUNK_SET):
        reference = comfy.stock.common_ksampler(
            comfy.model, SEED, STEPS, 7.0, "euler", "normal", alone(comfy, prompt), comfy.negative, LATENT
        )[0]["samples"]
        assert_close(samples[i : i + 1], reference, f"prompt of {len(prompt.split())} words")


# --- progress and Cancel --------------------------------------------------------------------------------


def test_progress_counts_distinct_prompts_encoded(comfy, monkeypatch):
    from comfy import utils as comfy_utils

    updates = []
    monkeypatch.setattr(
        comfy_utils, "PROGRESS_BAR_HOOK", lambda value, total, *_, **__: updates.append((value, total))
    )
    monkeypatch.setattr(comfy.cluster, "PROMPTS_PER_ROUND", 8)
    distinct = [f"a red cat number {i}" for i in range(21)]
    prompt_set(comfy, distinct + distinct[:5])  # duplicates are no extra work
    assert updates == [(8, 21), (16, 21), (21, 21)]


def test_cancel_stops_encoding_before_the_next_encoder_call(comfy, monkeypatch):
    import comfy.model_management as mm

    monkeypatch.setattr(comfy.cluster, "PROMPTS_PER_ROUND", 4)

    encoder = comfy.clip.cond_stage_model.clip_l
    calls = []

    def cancel(_module, _args, _output) -> None:
        calls.append(1)
        mm.interrupt_current_processing(True)

    handle = encoder.register_forward_hook(cancel)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            prompt_set(comfy, [f"a red cat number {i}" for i in range(12)])
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)
    assert len(calls) == 1
    # The encoder is itself again: a later encoding is ComfyUI's alone.
    assert torch.equal(prompt_set(comfy, ["a blue dog"]).conditioning[0][0], alone(comfy, "a blue dog")[0][0])
