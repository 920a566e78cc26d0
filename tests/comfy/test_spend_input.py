# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical KSampler's ``spend`` input: where a budget of model evaluations goes.

Specification:
- ``sharing`` (the default, and what a workflow saved before the input existed gets) is the published
  method: every step is run and sharing alone meets the budget;
- ``steps_then_sharing`` with a budget of at least the sampler's measured minimum step count runs that
  many steps and shares nothing: each picture is stock KSampler's at the reduced step count;
- below the minimum it runs the minimum's steps, shared down to the budget: the picture equals the node
  at that step count with an evaluations-per-image budget, and the network computes exactly the budget;
- a first-step tree's probe (one evaluation per prompt) is paid from the budget, spread over every
  image: none for a single prompt, half an evaluation per image with two images per prompt;
- a tau budget (a threshold, not compute) is refused naming budget (the live preview planning the same
  steps is specified in test_plan_route.py);
- ``sharing_within_layout`` probes every prompt's first step (paid from the budget, once per prompt
  whatever the copies), never shares between prompts whose layouts differ, and where that cannot reach
  the budget cuts steps: with every prompt its own layout each picture is stock KSampler's at the steps
  left, with a single layout it is the first-step tree at the steps it chose, and it never cuts below
  the sampler's minimum (there layouts share, as the budget needs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hierdiff_core import layout as layout_module
from hierdiff_core.schedule import Plan
from hierdiff_core.spend import MINIMUM_STEPS, minimum_steps
from hierdiff_dev.expect import assert_close, counting

PROMPTS = ["a red circle", "a red square", "a blue circle", "a blue square", "a green triangle"]
FULL_STEPS = 20
SEED = 11
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}


def run(comfy, tree, *, steps=FULL_STEPS, sampler="euler", budget="tau", value=0.0, spend=None, model=None,
        **optional):
    """(latents, plan) of Hierarchical KSampler; ``spend`` None leaves the optional input out."""
    node = comfy.classes["HierKSampler"]
    extra = optional if spend is None else {**optional, "spend": spend}
    out = node.execute(
        model or comfy.model, tree, comfy.negative, LATENT, SEED, steps, 4.0, sampler, "normal", 1.0,
        budget, value, 64, "shared", "mean", **extra,
    )  # fmt: skip
    return out.args[0]["samples"], json.loads(out.args[1])


def cluster(comfy, prompts: list[str]):
    node = comfy.classes["HierPromptSetCluster"]
    return node.execute([comfy.clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]).args[0]


@pytest.fixture(scope="module")
def tree(comfy):
    return cluster(comfy, PROMPTS)


def stock_ksampler(comfy, prompt: str, sampler: str, steps: int) -> torch.Tensor:
    """ComfyUI's own KSampler for one prompt, with the seed's batch-of-one noise."""
    positive = comfy.stock.CLIPTextEncode().encode(comfy.clip, prompt)[0]
    out = comfy.stock.common_ksampler(
        comfy.model, SEED, steps, 4.0, sampler, "normal", positive, comfy.negative, LATENT
    )
    return out[0]["samples"]


def test_every_measured_sampler_has_a_minimum_below_the_usual_step_count() -> None:
    assert set(MINIMUM_STEPS) >= {"euler", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde"}
    assert all(1 <= m < FULL_STEPS for m in MINIMUM_STEPS.values())


def test_sharing_is_the_default_and_the_published_method(comfy, tree) -> None:
    default, default_plan = run(comfy, tree, budget="target_saving", value=0.5)
    sharing, sharing_plan = run(comfy, tree, budget="target_saving", value=0.5, spend="sharing")
    assert torch.equal(default, sharing)
    assert default_plan == sharing_plan
    assert default_plan["steps"] == FULL_STEPS


def above_minimum(sampler: str) -> tuple[int, float]:
    """(evaluations per image, target saving) one evaluation above the sampler's minimum."""
    evaluations = minimum_steps(sampler) + 1
    return evaluations, 1 - evaluations / FULL_STEPS


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_a_budget_above_the_minimum_is_spent_on_steps_alone(comfy, tree, sampler) -> None:
    evaluations, saving = above_minimum(sampler)
    model, counter = counting(comfy.model)
    samples, spent_plan = run(comfy, tree, sampler=sampler, budget="target_saving", value=saving,
                              spend="steps_then_sharing", model=model)  # fmt: skip
    unshared, unshared_plan = run(comfy, tree, steps=evaluations, sampler=sampler)
    assert torch.equal(samples, unshared)
    assert spent_plan == unshared_plan
    assert spent_plan["steps"] == evaluations
    assert counter["rows"] == 2 * evaluations * len(PROMPTS)  # guidance: conditional + unconditional


def test_steps_alone_give_stock_ksamplers_pictures_at_that_step_count(comfy, tree) -> None:
    evaluations, saving = above_minimum("euler")
    samples, _ = run(comfy, tree, budget="target_saving", value=saving, spend="steps_then_sharing")
    for row, prompt in enumerate(PROMPTS):
        expected = stock_ksampler(comfy, prompt, "euler", evaluations)
        assert_close(samples[row : row + 1], expected, f"{prompt!r} at {evaluations} steps")


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde"])
def test_a_budget_below_the_minimum_shares_at_the_minimum(comfy, tree, sampler) -> None:
    minimum = minimum_steps(sampler)
    evaluations = minimum - 1.5
    model, counter = counting(comfy.model)
    samples, spent_plan = run(comfy, tree, sampler=sampler, budget="evaluations_per_image", value=evaluations,
                              spend="steps_then_sharing", model=model)  # fmt: skip
    direct, direct_plan = run(
        comfy, tree, steps=minimum, sampler=sampler, budget="evaluations_per_image", value=evaluations
    )
    assert torch.equal(samples, direct)
    assert spent_plan == direct_plan
    assert spent_plan["steps"] == minimum
    assert counter["rows"] == 2 * spent_plan["model_evaluations"]
    assert spent_plan["model_evaluations"] <= evaluations * len(PROMPTS)


def test_a_tau_budget_cannot_be_spent(comfy, tree) -> None:
    with pytest.raises(ValueError, match="^budget: .*target_saving or evaluations_per_image"):
        run(comfy, tree, budget="tau", value=0.5, spend="steps_then_sharing")


@pytest.mark.parametrize(
    ("prompts", "copies", "evaluations", "steps", "probe"),
    [
        (PROMPTS, 1, 5.0, 4, len(PROMPTS)),  # one evaluation per image for the probe: 4 steps left
        (PROMPTS, 2, 5.5, 5, len(PROMPTS)),  # half an evaluation per image: 5 steps fit
        (PROMPTS[:1], 1, 5.0, 5, 0),  # a single prompt needs no tree, so no probe
    ],
)
def test_a_first_step_trees_probe_is_paid_from_the_budget(comfy, prompts, copies, evaluations, steps, probe):
    model, counter = counting(comfy.model)
    _, spent_plan = run(
        comfy, cluster(comfy, prompts), budget="evaluations_per_image", value=evaluations,
        spend="steps_then_sharing", model=model, tree_from="first_step", images_per_prompt=copies,
    )  # fmt: skip
    images = len(prompts) * copies
    assert spent_plan["steps"] == steps
    assert spent_plan["probe_evaluations"] == probe
    assert spent_plan["model_evaluations"] == steps * images + probe  # nothing shared: it fits
    assert counter["rows"] == 2 * spent_plan["model_evaluations"]


# sharing_within_layout: a first-step probe, sharing kept among prompts whose layouts agree.


def stock_first_step(host, prompts: list[str]) -> np.ndarray:
    """(N, C, H, W) each prompt's first-step prediction from the seed's batch-of-one noise, by stock
    ComfyUI sampling (one euler step with a callback), independent of the node's probe."""
    import comfy.sample
    import comfy.samplers

    model_sampling = host.model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "normal", FULL_STEPS)
    noise = comfy.sample.prepare_noise(LATENT["samples"], SEED)
    found = []
    for prompt in prompts:
        positive = host.stock.CLIPTextEncode().encode(host.clip, prompt)[0]
        comfy.sample.sample(
            host.model, noise, 1, 4.0, "euler", "normal", positive, host.negative, LATENT["samples"],
            callback=lambda step, x0, x, total: found.append(x0.detach().clone()), disable_pbar=True,
            seed=SEED, sigmas=sigmas[:2],
        )  # fmt: skip
    return torch.cat(found).float().numpy()


@pytest.fixture
def layout_cut(monkeypatch):
    """Sets hierdiff_core.layout.LAYOUT_CUT for one test."""
    return lambda cut: monkeypatch.setattr(layout_module, "LAYOUT_CUT", cut)


def test_within_layout_never_shares_across_layouts(comfy, tree, layout_cut) -> None:
    predictions = stock_first_step(comfy, PROMPTS)
    distances = layout_module.layout_distances(predictions)
    # The tiny model's layouts differ less than the trained ones: cut at the median to have groups.
    layout_cut(float(np.median(distances[np.triu_indices(len(PROMPTS), 1)])))
    groups = layout_module.layout_groups(predictions)
    model, counter = counting(comfy.model)
    _, spent_plan = run(comfy, tree, budget="evaluations_per_image", value=5.8, spend="sharing_within_layout",
                        model=model)  # fmt: skip
    plan = Plan.from_dict(spent_plan)
    shared = 0
    for step in range(plan.steps):
        for node in plan.groups(step).nodes:
            members = plan.tree.members(node)
            assert len(set(groups[members].tolist())) == 1, f"step {step} shares {members} across layouts"
            shared += len(members) > 1
    assert len(set(groups.tolist())) > 1 and shared > 0  # the tiny model has layouts to keep and shares
    assert spent_plan["probe_evaluations"] == len(PROMPTS)
    assert spent_plan["steps"] == 5  # 4.8 evaluations per image after the probe: 5 steps, a little shared
    assert spent_plan["model_evaluations"] <= 5.8 * len(PROMPTS)
    assert counter["rows"] == 2 * spent_plan["model_evaluations"]


def test_within_layout_with_every_prompt_its_own_layout_cuts_steps(comfy, tree, layout_cut) -> None:
    layout_cut(0.0)
    samples, spent_plan = run(comfy, tree, budget="evaluations_per_image", value=5.0,
                              spend="sharing_within_layout")  # fmt: skip
    assert spent_plan["steps"] == 4  # one evaluation per image went to the probe
    assert spent_plan["model_evaluations"] == 4 * len(PROMPTS) + len(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        expected = stock_ksampler(comfy, prompt, "euler", 4)
        assert_close(samples[row : row + 1], expected, f"{prompt!r} at 4 steps")


def test_within_one_layout_it_is_the_first_step_tree_at_the_steps_it_chose(comfy, tree, layout_cut) -> None:
    layout_cut(1.0)
    samples, spent_plan = run(comfy, tree, budget="evaluations_per_image", value=5.0,
                              spend="sharing_within_layout")  # fmt: skip
    steps = spent_plan["steps"]
    assert 5 < steps <= FULL_STEPS
    direct, direct_plan = run(comfy, tree, steps=steps, budget="evaluations_per_image", value=5.0,
                              tree_from="first_step")  # fmt: skip
    assert torch.equal(samples, direct)
    assert spent_plan["tau"] == direct_plan["tau"]
    assert spent_plan["model_evaluations"] == direct_plan["model_evaluations"] <= 5 * len(PROMPTS)


def test_within_layout_keeps_the_samplers_minimum_where_layouts_would_cut_below_it(
    comfy, tree, layout_cut
) -> None:
    layout_cut(0.0)
    model, counter = counting(comfy.model)
    _, spent_plan = run(comfy, tree, sampler="dpmpp_2m", budget="evaluations_per_image", value=5.0,
                        spend="sharing_within_layout", model=model)  # fmt: skip
    assert spent_plan["steps"] == minimum_steps("dpmpp_2m")
    assert spent_plan["tau"] > 0  # prompts of different layouts share, as the budget needs
    assert spent_plan["model_evaluations"] <= 5 * len(PROMPTS)
    assert counter["rows"] == 2 * spent_plan["model_evaluations"]


def test_within_layout_pays_one_probe_per_prompt_whatever_the_copies(comfy, tree, layout_cut) -> None:
    layout_cut(0.0)
    _, spent_plan = run(comfy, tree, budget="evaluations_per_image", value=5.5, spend="sharing_within_layout",
                        images_per_prompt=2)  # fmt: skip
    assert spent_plan["probe_evaluations"] == len(PROMPTS)
    assert spent_plan["steps"] == 5  # half an evaluation per image for the probe
    assert spent_plan["model_evaluations"] == 5 * 2 * len(PROMPTS) + len(PROMPTS)


def test_within_layout_needs_a_budget_in_compute(comfy, tree) -> None:
    with pytest.raises(ValueError, match="^budget: .*target_saving or evaluations_per_image"):
        run(comfy, tree, budget="tau", value=0.5, spend="sharing_within_layout")
