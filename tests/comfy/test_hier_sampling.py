# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical sampling on the real ComfyUI host with the tiny test model.

Specification: at tau = 0 every prompt's latent is what stock KSampler gives for that prompt alone
with the same seed; identical prompts cost one evaluation per step together; the model sees exactly
the plan's evaluations; trunk + branch equals the all-in-one node; chunking never changes results.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from hierdiff_dev.expect import PROMPTS, SET_WITH_SPLITS, assert_close, counting

SEED = 7
STEPS = 4
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}
STOCHASTIC_MARKERS = ("ancestral", "sde", "ddpm", "lcm", "seeds", "sa_solver")
# dpm_adaptive's step-size controller measures its error over the whole batch, so even stock ComfyUI
# gives a prompt different results alone and inside a batch: there is no per-prompt reference.
BATCH_COUPLED = ("dpm_adaptive",)


def prompt_tree(comfy, prompts: list[str], linkage: str = "ward"):
    node = comfy.classes["HierPromptSetCluster"]
    return node.execute([comfy.clip], ["\n".join(prompts)], [linkage], ["clip_pooled"]).args[0]


def hier_ksampler(
    comfy,
    tree,
    *,
    model=None,
    sampler="euler",
    scheduler="normal",
    cfg=7.0,
    budget="tau",
    value=0.0,
    max_batch=64,
    noise_mode="shared",
    steps=STEPS,
    denoise=1.0,
    mix="mean",
    tree_from="prompt_tree",
):
    node = comfy.classes["HierKSampler"]
    return node.execute(
        model or comfy.model,
        tree,
        comfy.negative,
        LATENT,
        SEED,
        steps,
        cfg,
        sampler,
        scheduler,
        denoise,
        budget,
        value,
        max_batch,
        noise_mode,
        mix,
        tree_from,
    )


def shared_trunk(comfy, tree, end_at_step: int, *, sampler="euler", steps=STEPS, budget="tau", value=0.0):
    """The HIER_LATENT of a Shared Trunk Sampler run stopped at ``end_at_step``."""
    node = comfy.classes["HierSharedTrunkSampler"]
    out = node.execute(
        comfy.model,
        tree,
        comfy.negative,
        LATENT,
        SEED,
        steps,
        7.0,
        sampler,
        "normal",
        1.0,
        budget,
        value,
        end_at_step,
        64,
        "shared",
        "mean",
    )
    return out.args[0]


def stock_ksampler(
    comfy, prompt: str, *, model=None, sampler="euler", scheduler="normal", cfg=7.0, steps=STEPS
):
    positive = comfy.stock.CLIPTextEncode().encode(comfy.clip, prompt)[0]
    out = comfy.stock.common_ksampler(
        model or comfy.model, SEED, steps, cfg, sampler, scheduler, positive, comfy.negative, LATENT
    )
    return out[0]["samples"]


def deterministic_samplers() -> list[str]:
    import comfy.samplers

    return [
        s
        for s in comfy.samplers.KSampler.SAMPLERS
        if not any(m in s for m in STOCHASTIC_MARKERS) and s not in BATCH_COUPLED
    ]


def sampler_scheduler_pairs() -> list[tuple[str, str]]:
    """Every deterministic sampler (with karras), and every scheduler with three sampler families."""
    import comfy.samplers

    pairs = [(sampler, "karras") for sampler in deterministic_samplers()]
    for scheduler in comfy.samplers.KSampler.SCHEDULERS:
        if scheduler != "karras":
            pairs += [(sampler, scheduler) for sampler in ("euler", "dpmpp_2m", "uni_pc")]
    return pairs


@pytest.mark.parametrize(("sampler", "scheduler"), sampler_scheduler_pairs())
def test_tau_zero_equals_stock_ksampler_per_prompt(comfy, sampler, scheduler):
    tree = prompt_tree(comfy, PROMPTS)
    samples = hier_ksampler(comfy, tree, sampler=sampler, scheduler=scheduler).args[0]["samples"]
    assert samples.shape == (len(PROMPTS), 4, 8, 8)
    for i, prompt in enumerate(PROMPTS):
        reference = stock_ksampler(comfy, prompt, sampler=sampler, scheduler=scheduler)
        assert_close(samples[i : i + 1], reference, f"{sampler}/{scheduler}, prompt {i}")


def test_identical_prompts_give_identical_latents_with_one_evaluation_per_step(comfy):
    tree = prompt_tree(comfy, ["a red cat on a sofa"] * 4)
    model, counter = counting(comfy.model)
    out = hier_ksampler(comfy, tree, model=model, budget="tau", value=0.0)
    samples = out.args[0]["samples"]
    for i in range(1, 4):
        assert torch.equal(samples[0], samples[i])
    assert counter["rows"] == 2 * STEPS  # one conditional and one unconditional row per step
    reference = stock_ksampler(comfy, "a red cat on a sofa")
    assert_close(samples[:1], reference, "shared prompt")


@pytest.mark.parametrize("cfg", [1.0, 7.0])
def test_model_sees_exactly_the_planned_evaluations(comfy, cfg):
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    model, counter = counting(comfy.model)
    steps = 10
    out = hier_ksampler(comfy, tree, model=model, cfg=cfg, budget="target_saving", value=0.4, steps=steps)
    from hierdiff_core.schedule import Plan

    schedule = Plan.from_json(out.args[1])
    assert len(set(schedule.evaluations_per_step.tolist())) >= 3, "the set should split several times"
    guidance = 2 if cfg != 1.0 else 1
    assert counter["rows"] == guidance * schedule.model_evaluations
    assert schedule.saving >= 0.4
    summary = out.ui["hierdiff_summary"][0]
    n = len(SET_WITH_SPLITS)
    assert f" {schedule.model_evaluations} model evaluations instead of {steps} x {n} " in summary
    measured = out.ui["hierdiff_measured"][0]
    assert f" {guidance * schedule.model_evaluations} latent rows through the model instead of " in measured
    assert f" {guidance * steps * len(SET_WITH_SPLITS)}," in measured


@pytest.mark.parametrize("cfg", [1.0, 7.0])
def test_first_step_tree_costs_one_evaluation_per_prompt_counted_in_the_plan(comfy, cfg):
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    model, counter = counting(comfy.model)
    steps, n = 10, len(SET_WITH_SPLITS)
    out = hier_ksampler(
        comfy, tree, model=model, cfg=cfg, budget="target_saving", value=0.4, steps=steps,
        tree_from="first_step",
    )
    from hierdiff_core.schedule import Plan

    schedule = Plan.from_json(out.args[1])
    assert schedule.probe_evaluations == n
    assert schedule.model_evaluations == int(schedule.evaluations_per_step.sum()) + n
    assert (schedule.tree.method, schedule.tree.metric) == ("ward", "euclidean")
    guidance = 2 if cfg != 1.0 else 1
    assert counter["rows"] == guidance * schedule.model_evaluations
    assert schedule.saving >= 0.4  # the probe is paid for inside the budget
    measured = out.ui["hierdiff_measured"][0]
    assert f" {guidance * schedule.model_evaluations} latent rows through the model instead of " in measured
    assert f" {guidance * steps * n}," in measured


def test_first_step_tree_at_tau_zero_is_ordinary_sampling(comfy):
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    reference = hier_ksampler(comfy, tree).args[0]["samples"]
    out = hier_ksampler(comfy, tree, tree_from="first_step")
    assert_close(out.args[0]["samples"], reference, "first-step tree at tau 0")


def test_unknown_tree_source_is_rejected_naming_tree_from(comfy):
    with pytest.raises(ValueError, match="tree_from"):
        hier_ksampler(comfy, prompt_tree(comfy, SET_WITH_SPLITS), tree_from="sentence")


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim"])
def test_trunk_then_branch_equals_the_all_in_one_node(comfy, sampler):
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    steps = 8
    whole = hier_ksampler(comfy, tree, sampler=sampler, budget="target_saving", value=0.5, steps=steps).args[
        0
    ]
    trunk = shared_trunk(comfy, tree, 3, sampler=sampler, steps=steps, budget="target_saving", value=0.5)
    assert trunk.step == 3
    branch = comfy.classes["HierBranchSampler"]
    middle = branch.execute(comfy.model, trunk, comfy.negative, 7.0, sampler, 6).args[1]
    final = branch.execute(comfy.model, middle, comfy.negative, 7.0, sampler, 10000).args[0]
    assert_close(final["samples"], whole["samples"], "trunk + branches against the all-in-one run")


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"])
def test_results_do_not_depend_on_max_batch(comfy, sampler):
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    one = hier_ksampler(comfy, tree, sampler=sampler, budget="target_saving", value=0.5, max_batch=1)
    all_ = hier_ksampler(comfy, tree, sampler=sampler, budget="target_saving", value=0.5, max_batch=64)
    assert_close(one.args[0]["samples"], all_.args[0]["samples"], "max_batch 1 against 64")


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde"])
def test_stochastic_noise_is_shared_within_a_group_and_distinct_after_a_split(comfy, sampler):
    same = hier_ksampler(comfy, prompt_tree(comfy, ["a red cat on a sofa"] * 3), sampler=sampler, value=1.0)
    rows = same.args[0]["samples"]
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2])
    # tau = 0: every prompt is its own group from the first step, so each draws its own noise.
    split = hier_ksampler(comfy, prompt_tree(comfy, PROMPTS), sampler=sampler, value=0.0).args[0]["samples"]
    deterministic = hier_ksampler(comfy, prompt_tree(comfy, PROMPTS), sampler="euler").args[0]["samples"]
    assert not torch.allclose(split, deterministic)


def test_per_root_noise_gives_each_root_group_its_own_start(comfy):
    tree = prompt_tree(comfy, PROMPTS)
    shared = hier_ksampler(comfy, tree, noise_mode="shared").args[0]["samples"]
    per_root = hier_ksampler(comfy, tree, noise_mode="per_root").args[0]["samples"]
    assert not torch.allclose(shared, per_root)
    again = hier_ksampler(comfy, tree, noise_mode="per_root").args[0]["samples"]
    assert torch.equal(per_root, again)


@pytest.mark.parametrize("tree_from", ["prompt_tree", "first_step"])
def test_guider_with_sampler_custom_advanced_equals_hierarchical_ksampler(comfy, tree_from):
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    classes = comfy.classes
    node = classes["HierGuider"]
    guider = node.execute(
        comfy.model, tree, comfy.negative, 7.0, "target_saving", 0.3, 64, "shared", "mean", tree_from
    ).args[0]
    sampler = classes["KSamplerSelect"].execute("euler").args[0]
    sigmas = classes["BasicScheduler"].execute(comfy.model, "normal", STEPS, 1.0).args[0]
    noise = classes["RandomNoise"].execute(SEED).args[0]
    custom = classes["SamplerCustomAdvanced"].execute(noise, guider, sampler, sigmas, LATENT).args[0]
    ksampler = hier_ksampler(comfy, tree, budget="target_saving", value=0.3, tree_from=tree_from).args[0]
    assert custom["samples"].shape == ksampler["samples"].shape
    assert_close(custom["samples"], ksampler["samples"], "guider against HierKSampler")
    assert guider.plan.probe_evaluations == (len(SET_WITH_SPLITS) if tree_from == "first_step" else 0)


def test_model_patches_from_upstream_are_honoured(comfy):
    patched = comfy.model.clone()
    key = next(k for k in patched.model_state_dict() if k.endswith("out.2.weight"))
    weight = patched.model_state_dict()[key]
    patched.add_patches({key: (torch.full_like(weight, 0.05),)}, strength_patch=1.0)
    tree = prompt_tree(comfy, PROMPTS)
    hier = hier_ksampler(comfy, tree, model=patched).args[0]["samples"]
    plain = hier_ksampler(comfy, tree).args[0]["samples"]
    assert not torch.allclose(hier, plain)
    for i, prompt in enumerate(PROMPTS):
        reference = stock_ksampler(comfy, prompt, model=patched)
        assert_close(hier[i : i + 1], reference, f"patched model, prompt {i}")


def test_medoid_mix_conditions_groups_on_a_member(comfy):
    from hierdiff_core.engine import group_medoid

    rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    assert torch.equal(group_medoid(rows, [np.array([0, 1, 2])]), torch.tensor([[1.0, 0.0]]))
    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    mean = hier_ksampler(comfy, tree, budget="target_saving", value=0.6, mix="mean").args[0]["samples"]
    medoid = hier_ksampler(comfy, tree, budget="target_saving", value=0.6, mix="medoid").args[0]["samples"]
    assert not torch.allclose(mean, medoid)


def test_every_sampler_node_reports_the_plan_and_progress(comfy_host):
    from hierdiff_dev.workflows import decoded_and_saved, hier_sampling_inputs, prompt_tree_workflow

    sampler = {
        "class_type": "HierKSampler",
        "inputs": {
            "model": ["loader", 0],
            "prompt_tree": ["cluster", 0],
            "negative": ["negative", 0],
            "latent_image": ["latent", 0],
            **hier_sampling_inputs(6, seed=1, cfg=5.0, scheduler="karras", max_batch=4),
        },
    }
    prompt = decoded_and_saved({**prompt_tree_workflow(SET_WITH_SPLITS), "sampler": sampler}, ["sampler", 0])
    result = comfy_host.run(prompt)
    assert len(result.image_paths("save")) == len(SET_WITH_SPLITS)
    summary = result.outputs["sampler"]["hierdiff_summary"][0]
    assert summary.startswith(f"{len(SET_WITH_SPLITS)} images, ")
    assert "hierdiff_plan" in result.outputs["sampler"]
    assert "hierdiff_tree" in result.outputs["cluster"]
    from hierdiff_core.schedule import Plan

    # One event per step, counting the plan's model evaluations done out of all of them.
    per_step = Plan.from_json(result.outputs["sampler"]["hierdiff_plan"][0]).evaluations_per_step
    progress = [(e["value"], e["max"]) for e in result.events("progress") if e.get("node") == "sampler"]
    assert progress == [(int(done), int(per_step.sum())) for done in np.cumsum(per_step)]


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error naming the input
# ---------------------------------------------------------------------------------------------


def test_conditioning_from_another_model_is_rejected_naming_prompt_tree(comfy):
    import dataclasses

    good = prompt_tree(comfy, PROMPTS)
    prompt_set = dataclasses.replace(good, conditioning=[[torch.zeros(3, 77, 32), {}]])
    with pytest.raises(ValueError, match=r"prompt_tree conditioning has context dimension 32 but the MODEL"):
        hier_ksampler(comfy, prompt_set)


def test_latent_batch_above_one_is_rejected_naming_latent_image(comfy):
    tree = prompt_tree(comfy, PROMPTS)
    node = comfy.classes["HierKSampler"]
    with pytest.raises(ValueError, match=r"latent_image has batch size 2"):
        node.execute(
            comfy.model,
            tree,
            comfy.negative,
            {"samples": torch.zeros(2, 4, 8, 8)},
            SEED,
            STEPS,
            7.0,
            "euler",
            "normal",
            1.0,
            "tau",
            0.0,
            64,
            "shared",
            "mean",
        )


def test_empty_prompt_list_is_rejected_naming_prompts(comfy):
    node = comfy.classes["HierPromptSetCluster"]
    with pytest.raises(ValueError, match=r"prompts input is empty"):
        node.execute([comfy.clip], ["\n  \n"], ["ward"], ["clip_pooled"])


def test_branch_ending_before_the_trunk_is_rejected_naming_end_at_step(comfy):
    tree = prompt_tree(comfy, PROMPTS)
    trunk = shared_trunk(comfy, tree, 3)
    with pytest.raises(ValueError, match=r"end_at_step \(2\) must come after the starting step \(3\)"):
        comfy.classes["HierBranchSampler"].execute(comfy.model, trunk, comfy.negative, 7.0, "euler", 2)


def test_max_batch_below_one_is_rejected(comfy):
    tree = prompt_tree(comfy, PROMPTS)
    with pytest.raises(ValueError, match=r"max_batch must be at least 1, got 0"):
        hier_ksampler(comfy, tree, max_batch=0)


def test_hier_latent_of_another_latent_size_is_rejected_naming_hier_latent(comfy):
    import dataclasses

    tree = prompt_tree(comfy, PROMPTS)
    trunk = shared_trunk(comfy, tree, 2)
    other = dataclasses.replace(trunk, samples=torch.zeros(3, 16, 8, 8))
    with pytest.raises(ValueError, match=r"hier_latent has 16 latent channels but this MODEL uses 4"):
        comfy.classes["HierBranchSampler"].execute(comfy.model, other, comfy.negative, 7.0, "euler", 10000)


def test_unreachable_target_saving_names_the_maximum(comfy):
    tree = prompt_tree(comfy, PROMPTS)
    with pytest.raises(ValueError, match=r"saving"):
        hier_ksampler(comfy, tree, budget="target_saving", value=0.99)


def test_cancel_stops_within_one_model_call(comfy):
    import comfy.model_management as mm

    tree = prompt_tree(comfy, SET_WITH_SPLITS)
    model = comfy.model.clone()
    counter = {"calls": 0}
    calls_before_cancel = 3

    def cancelling(apply_model, args):
        counter["calls"] += 1
        if counter["calls"] == calls_before_cancel:
            mm.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(cancelling)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            hier_ksampler(comfy, tree, model=model, max_batch=1, steps=8)
    finally:
        mm.interrupt_current_processing(False)
    assert counter["calls"] == calls_before_cancel


def test_sampler_signatures_the_guider_relies_on():
    """The guider hands per-group noise to every k-diffusion sampler that takes a noise_sampler."""
    import comfy.k_diffusion.sampling as k_sampling
    import comfy.samplers

    for name in comfy.samplers.KSAMPLER_NAMES:
        function = getattr(k_sampling, f"sample_{name}", None)
        if function is not None and any(m in name for m in STOCHASTIC_MARKERS):
            assert "noise_sampler" in inspect.signature(function).parameters, name


def test_prompts_from_a_list_of_strings_and_the_sentence_encoder(comfy):
    node = comfy.classes["HierPromptSetCluster"]
    # One prompt per list item, whatever it holds (captions stay paired with their images).
    texts_in = ["a red cat on a sofa", "a blue dog\na green tree", ""]
    out = node.execute([comfy.clip], texts_in, ["average"], ["sentence"])
    prompt_set, texts = out.args
    assert texts == texts_in
    assert prompt_set.embedding_space == "sentence" and prompt_set.tree.method == "average"
    assert prompt_set.conditioning[0][0].shape[0] == 3
    # the rows are each prompt's own CLIP encoding, exactly as CLIPTextEncode gives it alone
    alone = comfy.stock.CLIPTextEncode().encode(comfy.clip, "a blue dog\na green tree")[0][0][0]
    assert torch.equal(prompt_set.conditioning[0][0][1:2], alone)


def test_progress_carries_a_latent_preview_of_the_set(comfy, monkeypatch):
    import latent_preview
    from comfy import utils as comfy_utils
    from comfy.cli_args import LatentPreviewMethod

    tree = prompt_tree(comfy, SET_WITH_SPLITS)  # before the hook: the cluster node reports its own progress
    monkeypatch.setattr(latent_preview.args, "preview_method", LatentPreviewMethod.Latent2RGB)
    monkeypatch.setattr(comfy_utils, "PROGRESS_BAR_ENABLED", True)
    updates = []
    monkeypatch.setattr(
        comfy_utils,
        "PROGRESS_BAR_HOOK",
        lambda value, total, preview, **_: updates.append((value, total, preview)),
    )
    out = hier_ksampler(comfy, tree, steps=10, budget="target_saving", value=0.5)
    from hierdiff_core.schedule import Plan

    # The bar advances by model evaluations (groups per step), not by steps: shared steps cost less.
    per_step = Plan.from_json(out.args[1]).evaluations_per_step
    assert len(set(per_step.tolist())) > 1
    total = int(per_step.sum())
    assert [(value, total_) for value, total_, _ in updates] == [(int(v), total) for v in np.cumsum(per_step)]
    for _, _, preview in updates:
        image_format, image, _ = preview
        assert image_format == "JPEG" and image.size == (8, 8)  # one latent pixel per preview pixel
