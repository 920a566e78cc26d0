# SPDX-License-Identifier: GPL-3.0-or-later
"""ComfyUI's EasyCache feeding the hierarchical samplers: a step cache that follows the tree.

Specification:
- a MODEL patched by EasyCache runs under every hierarchical sampler (it used to crash as soon as the
  batch changed); the sampler applies EasyCache's rule, with its settings, to the groups of each call;
- on a single prompt (and on duplicates of one prompt, one group) the result is stock KSampler with the
  same EasyCache: the same calls skipped, the same picture;
- the rows the network really evaluates are the plan's minus those of the skipped calls: the measured
  line equals an independent counter inside the network, and says how many rows the cache answered;
- sharing and caching multiply: at target saving 0.5 the network sees fewer rows than with either alone;
- members of a group stay one image until they split, also across skipped calls (the cache of a group
  that has just split is its parent's);
- several model calls per step (more groups than max_batch) skip or compute together.
"""

from __future__ import annotations

import logging

import comfy.sample as comfy_sample
import comfy.samplers as comfy_samplers
import pytest
import torch

from hierdiff_core.schedule import Plan
from hierdiff_dev.expect import SET_WITH_SPLITS, assert_close, measured_rows, network_counting

SEED = 3
STEPS = 12
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}
EASYCACHE = (0.2, 0.15, 0.95, False)  # reuse_threshold, start_percent, end_percent, verbose (defaults)


@pytest.fixture
def cached(comfy):
    """The tiny model behind ComfyUI's EasyCache node (its defaults), and a network row counter."""
    model = comfy.classes["EasyCache"].execute(comfy.model, *EASYCACHE).args[0]
    model, counter, handle = network_counting(model)
    yield model, counter
    handle.remove()


def prompt_tree(comfy, prompts: list[str]):
    node = comfy.classes["HierPromptSetCluster"]
    return node.execute([comfy.clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]).args[0]


def hier_ksampler(comfy, model, prompts, *, budget="tau", value=0.0, max_batch=64, sampler="euler"):
    node = comfy.classes["HierKSampler"]
    return node.execute(
        model, prompt_tree(comfy, prompts), comfy.negative, LATENT, SEED, STEPS, 7.0, sampler, "normal", 1.0,
        budget, value, max_batch, "shared", "mean", "prompt_tree",
    )  # fmt: skip


def stock_ksampler(comfy, model, prompt: str, sampler="euler") -> torch.Tensor:
    positive = comfy.stock.CLIPTextEncode().encode(comfy.clip, prompt)[0]
    out = comfy.stock.common_ksampler(
        model, SEED, STEPS, 7.0, sampler, "normal", positive, comfy.negative, LATENT
    )
    return out[0]["samples"]


def answered_rows(out) -> int:
    """Rows the step cache answered, from a sampler node's measured line (0 when it says none)."""
    line = out.ui["hierdiff_measured"][0]
    if "answered by the step cache" not in line:
        return 0
    return int(line.split("(")[1].split(" more answered")[0].replace(",", ""))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_one_prompt_equals_stock_ksampler_with_the_same_easycache(comfy, cached, sampler):
    model, counter = cached
    reference = stock_ksampler(comfy, model, SET_WITH_SPLITS[0], sampler)
    stock_rows = counter["rows"]
    counter["rows"] = 0
    out = hier_ksampler(comfy, model, SET_WITH_SPLITS[:1], sampler=sampler)
    assert_close(out.args[0]["samples"], reference, "one prompt under EasyCache")
    assert counter["rows"] == stock_rows
    assert stock_rows < 2 * STEPS, "the settings must make EasyCache skip calls, or this proves nothing"
    assert measured_rows(out) == (counter["rows"], 2 * STEPS)
    assert answered_rows(out) == 2 * STEPS - counter["rows"]


def test_duplicates_of_one_prompt_are_one_group_and_stock_ksamplers_picture(comfy, cached):
    model, counter = cached
    reference = stock_ksampler(comfy, model, SET_WITH_SPLITS[2])
    stock_rows = counter["rows"]
    counter["rows"] = 0
    out = hier_ksampler(comfy, model, [SET_WITH_SPLITS[2]] * 3, max_batch=1)
    for row in range(3):
        assert_close(out.args[0]["samples"][row : row + 1], reference, f"duplicate {row}")
    assert counter["rows"] == stock_rows


def batch_conditioning(comfy, prompts: list[str]) -> list:
    """One conditioning whose tensors hold one row per prompt (stock ComfyUI samples a latent batch
    against it row by row)."""
    encoded = [comfy.stock.CLIPTextEncode().encode(comfy.clip, p)[0][0] for p in prompts]
    tokens = torch.cat([e[0] for e in encoded])
    pooled = torch.cat([e[1]["pooled_output"] for e in encoded])
    return [[tokens, {"pooled_output": pooled}]]


def guider_run(comfy, model, prompts, latent, *, budget="tau", value=0.0, max_batch=64, callback=None):
    """A Hierarchical Guider sampled directly (euler, normal): its result and the guider."""
    node = comfy.classes["HierGuider"]
    guider = node.execute(
        model, prompt_tree(comfy, prompts), comfy.negative, 7.0, budget, value, max_batch, "shared", "mean",
        "prompt_tree",
    ).args[0]  # fmt: skip
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    noise = comfy_sample.prepare_noise(latent, SEED)
    sampler = comfy_samplers.sampler_object("euler")
    return guider.sample(noise, latent, sampler, sigmas, callback=callback, seed=SEED), guider


@pytest.mark.parametrize("max_batch", [64, 2])
def test_at_tau_zero_the_rule_sees_every_group_as_easycache_sees_a_batch(comfy, cached, max_batch):
    # Stock EasyCache decides for a whole batch from all its rows; hierdiff decides for a whole step from
    # all its groups, however many model calls the step takes.
    model, counter = cached
    prompts = SET_WITH_SPLITS[:4]
    latent = torch.zeros(len(prompts), 4, 8, 8)
    reference = comfy.stock.common_ksampler(
        model, SEED, STEPS, 7.0, "euler", "normal", batch_conditioning(comfy, prompts), comfy.negative,
        {"samples": latent},
    )[0]["samples"]  # fmt: skip
    stock_rows = counter["rows"]
    counter["rows"] = 0
    samples, guider = guider_run(comfy, model, prompts, latent, max_batch=max_batch)
    assert_close(samples, reference, f"a batch of prompts, max_batch {max_batch}")
    assert counter["rows"] == stock_rows < 2 * STEPS * len(prompts)
    count = guider.count
    assert (count.hierarchical, count.independent) == (counter["rows"], 2 * STEPS * len(prompts))


def test_sharing_and_caching_multiply(comfy, cached):
    model, counter = cached
    out = hier_ksampler(comfy, model, SET_WITH_SPLITS, budget="target_saving", value=0.5)
    plan = Plan.from_json(out.args[1])
    assert plan.saving >= 0.5
    cached_rows = counter["rows"]
    # The network computes the plan's rows less those of the calls the cache answered.
    assert 0 < answered_rows(out) and cached_rows + answered_rows(out) == 2 * plan.model_evaluations
    assert measured_rows(out) == (cached_rows, 2 * STEPS * len(SET_WITH_SPLITS))
    counter["rows"] = 0
    for prompt in SET_WITH_SPLITS:
        stock_ksampler(comfy, model, prompt)
    assert cached_rows < counter["rows"], "fewer rows than stock sampling with the same cache"


def test_group_members_stay_one_image_across_answered_calls(comfy, cached):
    model, _ = cached
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    _, guider = guider_run(
        comfy, model, SET_WITH_SPLITS, LATENT["samples"], budget="target_saving", value=0.5, max_batch=2,
        callback=lambda i, x0, x, total: seen.append((x0, x)),
    )  # fmt: skip
    assert guider.count.cached > 0 and len(seen) == STEPS
    for step, (denoised, x) in enumerate(seen):
        groups = guider.plan.groups(step)
        for rows in (denoised, x):
            assert torch.equal(rows, rows[groups.representatives[groups.row_group]]), f"step {step}"


def test_a_trunk_and_its_branch_each_cache_their_own_steps(comfy, cached):
    model, counter = cached
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    trunk = comfy.classes["HierSharedTrunkSampler"].execute(
        model, tree, comfy.negative, LATENT, SEED, STEPS, 7.0, "euler", "normal", 1.0, "target_saving", 0.5,
        STEPS // 2, 64, "shared", "mean", "prompt_tree",
    )  # fmt: skip
    node = comfy.classes["HierBranchSampler"]
    branch = node.execute(model, trunk.args[0], comfy.negative, 7.0, "euler", STEPS)
    assert torch.isfinite(branch.args[0]["samples"]).all()
    assert counter["rows"] == measured_rows(trunk)[0] + measured_rows(branch)[0]
    assert answered_rows(trunk) + answered_rows(branch) > 0


def test_lazycache_keeps_its_state_through_every_split(comfy, caplog):
    # LazyCache works on whole prompt rows, which never change under hierdiff: it never resets.
    model = comfy.classes["LazyCache"].execute(comfy.model, *EASYCACHE).args[0]
    with caplog.at_level(logging.INFO):
        hier_ksampler(comfy, model, SET_WITH_SPLITS, budget="target_saving", value=0.5, max_batch=2)
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "resetting state" in m]
    skipped = [m for m in messages if m.startswith("LazyCache - skipped")]
    assert skipped and not skipped[-1].startswith("LazyCache - skipped 0/")
