# SPDX-License-Identifier: GPL-3.0-or-later
"""Lumina 2, Z-Image, Qwen-Image, Flux.2 and HiDream on tiny files (testkit/tiny_llm_families.py).

The diffusion models load as UNETLoader loads a file; the text encoders load through ComfyUI's own
``load_clip`` (CLIPLoader, QuadrupleCLIPLoader for HiDream) and encode through ComfyUI's real tokenizers.
Flux.2's conditioning is built with its encoder's shapes: ComfyUI 0.3.75's Mistral tokenizer does not
build with the installed transformers (see the testkit).

Specification, for each family:
- prompts that encode to one token length: at tau = 0 each prompt's latent equals stock KSampler on that
  prompt alone with the same seed (relative 1e-4), through Prompt Set Cluster and Hierarchical KSampler;
- with a 50 % target saving the model sees exactly the latent rows the plan counts, and the node
  reports that number;
- prompts of different token lengths are refused, naming the family and why: by the sampler for Lumina 2
  / Z-Image, Qwen-Image and Flux.2, before the model runs; for HiDream when the set is built (its Llama
  states are an extra, padded to 128 tokens and longer beyond).
"""

from __future__ import annotations

import re
import sys

import pytest
import torch

from hierdiff_core.schedule import Plan
from hierdiff_core.tree import build_tree
from hierdiff_dev.expect import assert_close, counting, measured_rows, recording

SEED = 7
STEPS = 4
CFG = 4.0
PROMPTS = ["a red cat", "a blue dog", "a green owl"]
SET_WITH_SPLITS = ["a red cat", "a red dog", "a blue cat", "a blue dog", "a green owl", "a green fox"]
NEGATIVE = "blurry, low quality"
ENCODED = ["lumina2", "z_image", "qwen_image", "hidream"]
"""Families with tiny text encoders behind ComfyUI's tokenizers."""
FAMILIES = [*ENCODED, "flux2"]
TOKENIZERS = {"lumina2": "LuminaTokenizer", "z_image": "ZImageTokenizer", "qwen_image": "QwenImageTokenizer",
              "hidream": "HiDreamTokenizer"}  # fmt: skip
MODEL_TYPES = {
    "lumina2": "Lumina2",
    "z_image": "ZImage (Lumina2)",
    "qwen_image": "QwenImage",
    "flux2": "Flux2",
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny kernels gain nothing from threads; on a shared 2-core machine spinning OpenMP workers made
    # each encoder call hundreds of times slower (measured: 8 ms against 10 us for a 16-wide linear).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llm(comfy_host):
    """Stock ComfyUI (``nodes``), our node classes and conditioning module, the tiny testkit, and cached
    models, text encoders, encodings (stock CLIPTextEncode) and prompt trees (Prompt Set Cluster)."""
    import comfy.utils

    import nodes as comfy_nodes
    import testkit.tiny_llm_families as tiny

    comfy.utils.PROGRESS_BAR_ENABLED = False
    classes = comfy_host.node_classes
    package = sys.modules[classes["HierKSampler"].__module__].__name__.rsplit(".", 1)[0]
    cache: dict[tuple, object] = {}

    def cached(key: tuple, make):
        if key not in cache:
            cache[key] = make()
        return cache[key]

    class LLM:
        stock = comfy_nodes
        node_classes = classes
        conditioning = sys.modules[f"{package}.conditioning"]
        module = tiny

        @staticmethod
        def model(family: str):
            return cached(("model", family), lambda: tiny.load_diffusion_model(family))

        @staticmethod
        def clip(family: str):
            return cached(("clip", family), lambda: tiny.load_text_encoder(family))

        @staticmethod
        def encode(family: str, text: str) -> list:
            if family == "flux2":
                return cached(("text", family, text), lambda: tiny.flux2_conditioning(len(cache)))
            clip = LLM.clip(family)
            return cached(("text", family, text), lambda: comfy_nodes.CLIPTextEncode().encode(clip, text)[0])

        @staticmethod
        def prompt_tree(family: str, prompts: list[str]):
            if family == "flux2":  # no Flux.2 text encoder in this host: the set from built conditionings
                stacked = LLM.conditioning.stack_conditionings([LLM.encode(family, p) for p in prompts])
                tree = build_tree(LLM.conditioning.clustering_embeddings(stacked), prompts=prompts)
                return LLM.conditioning.PromptTreeSet(tree, tuple(prompts), stacked, "sentence")
            node = classes["HierPromptSetCluster"]
            return cached(
                ("tree", family, *prompts),
                lambda: node.execute(
                    [LLM.clip(family)], ["\n".join(prompts)], ["ward"], ["clip_pooled"]
                ).args[0],
            )

    return LLM


def hier_ksampler(llm, family, model, prompt_tree, *, budget="tau", value=0.0):
    return llm.node_classes["HierKSampler"].execute(
        model, prompt_tree, llm.encode(family, NEGATIVE), llm.module.empty_latent(family), SEED, STEPS, CFG,
        "euler", "simple", 1.0, budget, value, 64, "shared", "mean", "prompt_tree",
    )  # fmt: skip


def stock_sample(llm, family, positive) -> torch.Tensor:
    out = llm.stock.common_ksampler(
        llm.model(family), SEED, STEPS, CFG, "euler", "simple", positive, llm.encode(family, NEGATIVE),
        llm.module.empty_latent(family),
    )  # fmt: skip
    return out[0]["samples"]


@pytest.mark.parametrize("family", ENCODED)
def test_tiny_files_load_as_their_comfyui_families_and_the_prompts_share_a_length(llm, family):
    spec = llm.module.FAMILIES[family]
    model = llm.model(family)
    assert type(model.model.model_config) is spec.config_class
    assert model.model.diffusion_model.__class__.__module__.startswith("comfy.ldm.")
    assert type(llm.clip(family).tokenizer).__name__ == TOKENIZERS[family]
    lengths = {llm.encode(family, p)[0][0].shape[1] for p in SET_WITH_SPLITS}
    assert len(lengths) == 1, f"{family}: the test prompts should share one token length, got {lengths}"


@pytest.mark.parametrize("family", FAMILIES)
def test_tau_zero_equals_stock_sampling_per_prompt(llm, family):
    model, calls = recording(llm.model(family))
    samples = hier_ksampler(llm, family, model, llm.prompt_tree(family, PROMPTS)).args[0]["samples"]
    assert max(c["rows"] for c in calls if 0 in c["chunks"]) >= len(PROMPTS), "the prompts share model calls"
    for i, prompt in enumerate(PROMPTS):
        reference = stock_sample(llm, family, llm.encode(family, prompt))
        assert_close(samples[i : i + 1], reference, f"{family}, prompt {i} ({prompt!r})")


@pytest.mark.parametrize("family", FAMILIES)
def test_target_saving_evaluations_equal_the_plan(llm, family):
    model, counter = counting(llm.model(family))
    out = hier_ksampler(
        llm, family, model, llm.prompt_tree(family, SET_WITH_SPLITS), budget="target_saving", value=0.5
    )
    schedule = Plan.from_json(out.args[1])
    assert schedule.evaluations_per_step[0] < len(SET_WITH_SPLITS), "the first step should share"
    assert schedule.model_evaluations < len(SET_WITH_SPLITS) * STEPS
    assert counter["rows"] == 2 * schedule.model_evaluations  # positive and negative per group
    assert measured_rows(out) == (2 * schedule.model_evaluations, 2 * len(SET_WITH_SPLITS) * STEPS)


@pytest.mark.parametrize(
    ("family", "reason"),
    [
        ("lumina2", "masks padded text only in the text refiner"),
        ("z_image", "masks padded text only in the text refiner"),
        ("qwen_image", "does not use a text attention mask"),
        ("flux2", "pads its text to 512 tokens at the front"),
    ],
)
def test_prompts_of_different_token_lengths_are_refused_naming_the_family(llm, family, reason):
    prompts = ["a cat", "a red cat", "a cat"]
    if family == "flux2":
        per_prompt = [llm.module.flux2_conditioning(i, token_count=n) for i, n in enumerate((36, 40, 36))]
        stacked = llm.conditioning.stack_conditionings(per_prompt)
        tree = build_tree(llm.conditioning.clustering_embeddings(stacked), prompts=prompts)
        prompt_set = llm.conditioning.PromptTreeSet(tree, tuple(prompts), stacked, "sentence")
    else:
        prompt_set = llm.prompt_tree(family, prompts)
    lengths = prompt_set.conditioning[0][1]["hier_token_lengths"]
    assert lengths[0] == lengths[2] < lengths[1]
    model, calls = recording(llm.model(family))
    message = (
        rf"prompt_tree input: its prompts encode to different token counts \({lengths[0]} to {lengths[1]}\), "
        rf"and {re.escape(MODEL_TYPES[family])} models cannot pad them to one length without changing the "
        rf"images \([^)]*{reason}"
    )
    with pytest.raises(ValueError, match=message):
        hier_ksampler(llm, family, model, prompt_set)
    assert calls == []


def test_hidream_prompts_beyond_its_llama_padding_are_refused_when_the_set_is_built(llm):
    # HiDream's T5 tokens (the model's c_crossattn) are fixed at 128, its Llama states (an extra) padded to
    # 128 tokens and longer beyond; the model takes no text mask, so such a set cannot be stacked.
    long = " ".join(["a red fox sleeping under a tall tree in the snow"] * 14)
    short, longer = (llm.encode("hidream", text) for text in (PROMPTS[0], long))
    assert short[0][0].shape == longer[0][0].shape == (1, 128, llm.module.HIDREAM_WIDTH)
    assert short[0][1]["conditioning_llama3"].shape[2] == 128 < longer[0][1]["conditioning_llama3"].shape[2]
    with pytest.raises(ValueError, match=r"conditioning extra 'conditioning_llama3' has different shapes"):
        llm.prompt_tree("hidream", [PROMPTS[0], long])
