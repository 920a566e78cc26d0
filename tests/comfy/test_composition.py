# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical sampling composed with ComfyUI's model patches and guidance nodes (real host, tiny model).

Specification:
- every model call on the run's N rows goes through the grouping, the sampler's own and the extra calls
  of guidance post-functions (PerturbedAttentionGuidance): they are evaluated once per active group, so
  members of a group stay identical until they split and the saving holds for the extra calls too;
- "measured" is what reaches the diffusion model: it equals an independent counter around the model's
  apply function in every case, the extra calls included;
- at tau = 0 the result equals stock KSampler per prompt with the same patched model, also when a step
  takes several model calls (more prompts than max_batch);
- LazyCache runs (EasyCache: test_step_cache.py; SelfAttentionGuidance and the other core patches:
  test_compat_matrix.py).
"""

from __future__ import annotations

import pytest
import torch

from hierdiff_core.schedule import Plan
from hierdiff_dev.expect import PROMPTS, SET_WITH_SPLITS, assert_close, counting, measured_rows

SEED = 7
STEPS = 6
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}


def patched(comfy, node_id: str, *inputs):
    """The MODEL output of one of ComfyUI's model-patch nodes applied to the tiny model."""
    return comfy.classes[node_id].execute(comfy.model, *inputs).args[0]


def prompt_tree(comfy, prompts: list[str]):
    node = comfy.classes["HierPromptSetCluster"]
    return node.execute([comfy.clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]).args[0]


def hier_ksampler(
    comfy, model, prompts: list[str], *, budget="tau", value=0.0, max_batch=64, cfg=7.0, negative=None
):
    node = comfy.classes["HierKSampler"]
    return node.execute(
        model, prompt_tree(comfy, prompts), negative or comfy.negative, LATENT, SEED, STEPS, cfg, "euler",
        "normal", 1.0, budget, value, max_batch, "shared", "mean", "prompt_tree",
    )  # fmt: skip


def stock_ksampler(comfy, model, prompt: str, cfg=7.0, negative=None) -> torch.Tensor:
    positive = comfy.stock.CLIPTextEncode().encode(comfy.clip, prompt)[0]
    out = comfy.stock.common_ksampler(
        model, SEED, STEPS, cfg, "euler", "normal", positive, negative or comfy.negative, LATENT
    )
    return out[0]["samples"]


@pytest.mark.parametrize("max_batch", [64, 2])
def test_perturbed_attention_guidance_at_tau_zero_equals_stock_per_prompt(comfy, max_batch):
    model = patched(comfy, "PerturbedAttentionGuidance", 3.0)
    counted, counter = counting(model)
    out = hier_ksampler(comfy, counted, PROMPTS, max_batch=max_batch)
    samples = out.args[0]["samples"]
    for i, prompt in enumerate(PROMPTS):
        assert_close(samples[i : i + 1], stock_ksampler(comfy, model, prompt), f"PAG, prompt {i}")
    # Conditional, unconditional and PAG's perturbed conditional row per prompt and step.
    assert counter["rows"] == 3 * len(PROMPTS) * STEPS
    assert measured_rows(out) == (counter["rows"], 3 * len(PROMPTS) * STEPS)


@pytest.mark.parametrize("max_batch", [64, 2])
def test_perturbed_attention_guidance_is_evaluated_per_group(comfy, max_batch):
    model, counter = counting(patched(comfy, "PerturbedAttentionGuidance", 3.0))
    out = hier_ksampler(comfy, model, SET_WITH_SPLITS, budget="target_saving", value=0.5, max_batch=max_batch)
    plan = Plan.from_json(out.args[1])
    assert plan.saving >= 0.5
    # PAG's extra call shares like the sampler's own: three rows per group and step, the plan's saving.
    assert counter["rows"] == 3 * plan.model_evaluations
    assert measured_rows(out) == (counter["rows"], 3 * STEPS * len(SET_WITH_SPLITS))


def test_duplicates_under_perturbed_attention_guidance_stay_one_image(comfy):
    model, counter = counting(patched(comfy, "PerturbedAttentionGuidance", 3.0))
    out = hier_ksampler(comfy, model, ["a red cat on a sofa"] * 3 + ["a blue dog in the snow"], max_batch=1)
    samples = out.args[0]["samples"]
    assert torch.equal(samples[0], samples[1]) and torch.equal(samples[0], samples[2])
    assert counter["rows"] == 3 * 2 * STEPS  # two distinct prompts, three rows each per step


def test_lazy_cache_runs_and_measured_equals_the_model_counter(comfy):
    model, counter = counting(patched(comfy, "LazyCache", 0.2, 0.15, 0.95, False))
    out = hier_ksampler(comfy, model, SET_WITH_SPLITS, budget="target_saving", value=0.5, max_batch=2)
    assert torch.isfinite(out.args[0]["samples"]).all()
    assert 0 < counter["rows"] <= 2 * Plan.from_json(out.args[1]).model_evaluations
    assert measured_rows(out)[0] == counter["rows"]


def timestep_ranged_negative(comfy) -> list:
    """The negative only for the first half of the steps: ComfyUI skips it (no rows) afterwards."""
    return comfy.stock.ConditioningSetTimestepRange().set_range(comfy.negative, 0.0, 0.5)[0]


def area_negative(comfy) -> list:
    """The negative plus a second negative on the left half: two unconditional entries, evaluated apart."""
    left = comfy.stock.CLIPTextEncode().encode(comfy.clip, "grainy")[0]
    left = comfy.stock.ConditioningSetArea().append(left, 32, 64, 0, 0, 1.0)[0]
    return comfy.stock.ConditioningCombine().combine(comfy.negative, left)[0]


@pytest.mark.parametrize("negative", [timestep_ranged_negative, area_negative])
def test_measured_counts_the_rows_the_model_really_sees(comfy, negative):
    """Timestep ranges send fewer rows than one per cond list and areas more: measured follows the model."""
    negative = negative(comfy)
    model, counter = counting(comfy.model)
    out = hier_ksampler(comfy, model, PROMPTS, negative=negative, max_batch=2)
    samples = out.args[0]["samples"]
    for i, prompt in enumerate(PROMPTS):
        reference = stock_ksampler(comfy, comfy.model, prompt, negative=negative)
        assert_close(samples[i : i + 1], reference, f"prompt {i}")
    assert counter["rows"] != 2 * len(PROMPTS) * STEPS  # not the plain cond + uncond count
    assert measured_rows(out) == (counter["rows"], counter["rows"])  # tau = 0: nothing shared

    counter.reset()
    out = hier_ksampler(comfy, model, SET_WITH_SPLITS, negative=negative, budget="target_saving", value=0.5)
    through = counter["rows"]
    assert Plan.from_json(out.args[1]).saving >= 0.5
    counter.reset()
    for prompt in SET_WITH_SPLITS:  # what ordinary sampling sends through the model, counted
        stock_ksampler(comfy, model, prompt, negative=negative)
    assert measured_rows(out) == (through, counter["rows"])


def test_socket_values_tell_comfyui_s_ram_cache_what_they_hold(comfy):
    """ComfyUI's RAM-pressure cache sizes an output by its tensors (get_ram_usage on 0.3.75): an N-row
    PROMPT_TREE or HIER_LATENT must not count as tiny."""
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    tokens, extras = tree.conditioning[0]
    pooled = extras["pooled_output"]
    assert tree.get_ram_usage() == sum(t.numel() * t.element_size() for t in (tokens, pooled))
    trunk = comfy.classes["HierSharedTrunkSampler"].execute(
        comfy.model, tree, comfy.negative, LATENT, SEED, STEPS, 7.0, "euler", "normal", 1.0, "tau", 0.0, 2,
        64, "shared", "mean",
    ).args[0]  # fmt: skip
    held = sum(t.numel() * t.element_size() for t in (trunk.samples, trunk.sigmas))
    assert trunk.samples.shape[0] == len(SET_WITH_SPLITS)
    assert trunk.get_ram_usage() == held + tree.get_ram_usage()


def test_the_prepare_sampling_wrapper_forwards_options_of_newer_hosts(comfy):
    """Newer ComfyUI passes force_full_load and force_offload to every PREPARE_SAMPLING wrapper: they go
    through unchanged, and ComfyUI sizes memory for at most max_batch rows."""
    guider = comfy.classes["HierGuider"].execute(
        comfy.model, prompt_tree(comfy, SET_WITH_SPLITS), comfy.negative, 7.0, "tau", 0.0, 4, "shared", "mean"
    ).args[0]
    calls = []

    def executor(model, noise_shape, conds, **options):
        calls.append((noise_shape, options))

    guider._prepare_for_batch(executor, "model", [6, 4, 8, 8], [], model_options={"x": 1})
    guider._prepare_for_batch(
        executor, "model", [6, 4, 8, 8], [], model_options={}, force_full_load=True, force_offload=False
    )
    assert calls == [
        ([4, 4, 8, 8], {"model_options": {"x": 1}}),
        ([4, 4, 8, 8], {"model_options": {}, "force_full_load": True, "force_offload": False}),
    ]
