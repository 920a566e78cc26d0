# SPDX-License-Identifier: GPL-3.0-or-later
"""Several images per prompt (``images_per_prompt``, V) on the real host.

Specification:
- V = 1 (the default, and what saved workflows without the input get) is today's sampling, bit for bit;
- the output holds V images per prompt, prompt after prompt; a prompt's copies share its steps until
  the budget parts them (at tau = 0 from the start), then every copy but the first goes on from fresh
  noise: the V images differ far beyond numerical noise, for deterministic and stochastic samplers;
- at tau = 0 the first copy of each prompt is stock KSampler's image for that prompt alone;
- copies are one group (identical rows) until they part, and the model sees exactly the plan's
  evaluations (an independent counter), which the measured line reports;
- a trunk stopped where the copies part, continued by a Branch Sampler, equals the all-in-one node;
- on the trained shapes model the copies are accepted by the checker at the rate of independent
  sampling.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hierdiff_core.schedule import Plan, copies_split_step
from hierdiff_dev.expect import assert_close, counting

PROMPTS = ["a red cat on a sofa", "a blue dog in the snow", "a green tree in a field"]
SEED = 7
STEPS = 8
COPIES = 4
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}


@pytest.fixture(scope="module")
def comfy(comfy):
    """The shared host fixture plus the prompt tree of the three prompts."""
    node = comfy.classes["HierPromptSetCluster"]
    tree = node.execute([comfy.clip], ["\n".join(PROMPTS)], ["ward"], ["clip_pooled"]).args[0]
    return SimpleNamespace(**vars(comfy), tree=tree)


def sampler_inputs(sampler: str, budget: str, value: float) -> tuple:
    return (SEED, STEPS, 7.0, sampler, "normal", 1.0, budget, value)


def hier_ksampler(comfy, *extra, model=None, sampler="euler", budget="tau", value=0.0):
    """Hierarchical KSampler on the three prompts; ``extra``: (tree_from, images_per_prompt) or fewer."""
    node = comfy.classes["HierKSampler"]
    return node.execute(
        model or comfy.model, comfy.tree, comfy.negative, LATENT, *sampler_inputs(sampler, budget, value),
        64, "shared", "mean", *extra,
    )  # fmt: skip


def stock_ksampler(comfy, prompt: str) -> torch.Tensor:
    positive = comfy.stock.CLIPTextEncode().encode(comfy.clip, prompt)[0]
    out = comfy.stock.common_ksampler(
        comfy.model, SEED, STEPS, 7.0, "euler", "normal", positive, comfy.negative, LATENT
    )
    return out[0]["samples"]


def assert_copies_differ(samples: torch.Tensor) -> None:
    """Every two images of a prompt differ on average by more than 1e-3 of the latents' magnitude: ten
    times what the exactness tests allow for float round-off at its largest, a hundred times and more
    what is measured (about 2e-6)."""
    scale = samples.abs().max().item()
    for prompt in range(len(PROMPTS)):
        rows = samples[prompt * COPIES : (prompt + 1) * COPIES]
        for a in range(COPIES):
            for b in range(a + 1, COPIES):
                difference = (rows[a] - rows[b]).abs().mean().item()
                assert difference > 1e-3 * scale, f"prompt {prompt}, copies {a} and {b}: {difference}"


def test_one_image_per_prompt_is_todays_sampling_bit_for_bit(comfy):
    default = hier_ksampler(comfy, budget="target_saving", value=0.5)
    one = hier_ksampler(comfy, "prompt_tree", 1, budget="target_saving", value=0.5)
    assert torch.equal(default.args[0]["samples"], one.args[0]["samples"])
    assert default.args[1] == one.args[1]


def test_at_tau_zero_copies_are_independent_and_the_first_is_stock_ksampler(comfy):
    model, counter = counting(comfy.model)
    out = hier_ksampler(comfy, "prompt_tree", COPIES, model=model)
    samples = out.args[0]["samples"]
    assert samples.shape == (len(PROMPTS) * COPIES, 4, 8, 8)
    for i, prompt in enumerate(PROMPTS):
        assert_close(samples[i * COPIES : i * COPIES + 1], stock_ksampler(comfy, prompt), f"prompt {i}")
    assert_copies_differ(samples)
    assert counter["rows"] == 2 * STEPS * len(PROMPTS) * COPIES


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_copies_share_their_prompts_steps_then_differ_and_the_model_sees_the_plan(comfy, sampler):
    model, counter = counting(comfy.model)
    out = hier_ksampler(
        comfy, "prompt_tree", COPIES, model=model, sampler=sampler, budget="target_saving", value=0.5
    )
    plan = Plan.from_json(out.args[1])
    split = copies_split_step(plan, COPIES)
    assert 0 < split < STEPS and plan.saving >= 0.5
    # Until they part, a prompt's copies are one group; from then on, each copy is its own.
    for step in range(STEPS):
        groups = plan.groups(step).row_group.reshape(len(PROMPTS), COPIES)
        assert (len(np.unique(groups[0])) == 1) == (step < split), step
    assert_copies_differ(out.args[0]["samples"])
    assert counter["rows"] == 2 * plan.model_evaluations
    assert out.ui["hierdiff_measured"][0].startswith(
        f"measured: {counter['rows']} latent rows through the model instead of {2 * STEPS * 12},"
    )


def test_a_trunk_stopped_where_copies_part_then_a_branch_equals_the_all_in_one_node(comfy):
    whole = hier_ksampler(comfy, "prompt_tree", COPIES, budget="target_saving", value=0.5)
    split = copies_split_step(Plan.from_json(whole.args[1]), COPIES)
    trunk = comfy.classes["HierSharedTrunkSampler"].execute(
        comfy.model, comfy.tree, comfy.negative, LATENT, *sampler_inputs("euler", "target_saving", 0.5),
        split, 64, "shared", "mean", "prompt_tree", COPIES,
    ).args[0]  # fmt: skip
    before = comfy.classes["HierSharedTrunkSampler"].execute(
        comfy.model, comfy.tree, comfy.negative, LATENT, *sampler_inputs("euler", "target_saving", 0.5),
        split - 1, 64, "shared", "mean", "prompt_tree", COPIES,
    ).args[0]  # fmt: skip
    rows = before.samples.reshape(len(PROMPTS), COPIES, -1)
    assert all(torch.equal(rows[p, 0], rows[p, c]) for p in range(len(PROMPTS)) for c in range(COPIES))
    node = comfy.classes["HierBranchSampler"]
    branch = node.execute(comfy.model, trunk, comfy.negative, 7.0, "euler", STEPS)
    assert_close(branch.args[0]["samples"], whole.args[0]["samples"], "trunk + branch")


def test_the_guider_gives_copies_to_sampler_custom_advanced(comfy):
    import comfy_extras.nodes_custom_sampler as custom

    guider = comfy.classes["HierGuider"].execute(
        comfy.model, comfy.tree, comfy.negative, 7.0, "tau", 0.0, 64, "shared", "mean", "prompt_tree", COPIES
    ).args[0]
    noise = custom.RandomNoise.execute(SEED).args[0]
    sigmas = custom.BasicScheduler.execute(comfy.model, "normal", STEPS, 1.0).args[0]
    sampler = custom.KSamplerSelect.execute("euler").args[0]
    samples = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, LATENT).args[0]["samples"]
    for i, prompt in enumerate(PROMPTS):
        assert_close(samples[i * COPIES : i * COPIES + 1], stock_ksampler(comfy, prompt), f"prompt {i}")
    assert_copies_differ(samples)


@pytest.mark.slow
def test_copies_on_the_trained_model_are_accepted_like_independent_samples(comfy_host):
    from hierdiff_lab import comfy_generation, train
    from testkit.tiny_model import load_tiny_model

    model, clip, vae = load_tiny_model(str(comfy_generation.TRAINED_CHECKPOINT))
    prompts = train.evaluation_captions(seed=1, count=12)
    settings = comfy_generation.SamplingSettings()
    independent = []
    for seed in range(COPIES):
        seeded = comfy_generation.SamplingSettings(seed=seed)
        independent.append(comfy_generation.independent_batch(model, clip, vae, prompts, seeded).images)
    independent_rate = train.acceptance(np.concatenate(independent), prompts * COPIES)["all"]
    generation = comfy_generation.hierarchical(
        comfy_host.node_classes, model, clip, vae, prompts, settings, "target_saving", 0.5,
        images_per_prompt=COPIES,
    )  # fmt: skip
    copies_rate = train.acceptance(generation.images, [p for p in prompts for _ in range(COPIES)])["all"]
    images = generation.images.astype(np.float64).reshape(len(prompts), COPIES, -1)
    apart = [np.abs(images[p, a] - images[p, b]).mean() for p in range(len(prompts)) for a in range(COPIES)
             for b in range(a + 1, COPIES)]  # fmt: skip
    split = copies_split_step(Plan.from_dict(generation.plan), COPIES)
    rates = f"independent {independent_rate:.3f}, copies {copies_rate:.3f}"
    print(f"attribute acceptance ('all'): {rates}; copies part at step {split} of 20 and differ by "
          f"{min(apart):.2f} to {max(apart):.2f} grey levels")  # fmt: skip
    assert copies_rate >= independent_rate - 0.1
    # Parting late (at 50 % saving the copies share most steps) leaves copies alike, never identical.
    assert min(apart) > 0.1
