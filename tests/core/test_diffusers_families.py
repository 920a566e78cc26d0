# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical sampling inside diffusers pipelines' own loops (hierdiff_diffusers.denoiser), on tiny
random pipelines of every supported family saved and loaded back as real folders load.

Exactness: at tau = 0 each prompt's latents equal the plain pipeline's for that prompt alone with
``generator=torch.Generator().manual_seed(group_seed(seed, tree, i))``. The bound is 1e-4 of the
latents' largest magnitude: the two runs put different batches through the same matrix products (2N
rows against 2, N prompts through the text encoder against one), which changes float32 round-off
(measured on this CPU: 2e-5 of the magnitude for SDXL with DDIM, at most 7e-6 for every other case);
an error in grouping, conditioning or noise is of the order of the magnitude itself.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    UniPCMultistepScheduler,
)

from hierdiff_core.engine import GroupedEvaluator, group_seed
from hierdiff_core.schedule import Budget, plan
from hierdiff_core.tree import build_tree
from hierdiff_diffusers import hierarchical, hierarchical_chunks
from hierdiff_diffusers.denoiser import GroupedDenoiser, grouped
from hierdiff_diffusers.families import UnsupportedPipelineError, family_of
from hierdiff_diffusers.pipelines import (
    PipelineFolderError,
    detect_family,
    encode_prompts,
    load_pipeline,
    split_tree,
    subtree,
)
from testkit.tiny_pipelines import BUILDERS, SIZE

PROMPTS = ["a red car", "a cat on a mat", "a blue car", "a cat"]
STEPS = 3
SEED = 11
COMMON = {"height": SIZE, "width": SIZE, "num_inference_steps": STEPS, "output_type": "latent"}
EXTRA = {"pixart-sigma": {"use_resolution_binning": False}}
RELATIVE = 1e-4

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "flow-euler": (FlowMatchEulerDiscreteScheduler, {}),
    # Stochastic: noise drawn from the per-row generators at every step.
    "ddpm": (DDPMScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "flow-euler-sde": (FlowMatchEulerDiscreteScheduler, {"stochastic_sampling": True}),
}
STOCHASTIC = {"ddpm", "euler-ancestral", "dpmpp-sde", "flow-euler-sde"}

MATRIX = [
    ("sd", "pndm"),  # its own published scheduler: one more call than steps
    ("sd", "ddim"),
    ("sd", "euler"),
    ("sd", "dpmpp-2m"),
    ("sd", "unipc"),
    ("sd", "heun"),
    ("sd", "ddpm"),
    ("sd", "euler-ancestral"),
    ("sd", "dpmpp-sde"),
    ("sdxl", "ddim"),
    ("sdxl", "euler"),
    ("sdxl", "dpmpp-2m"),
    ("sdxl", "euler-ancestral"),
    ("sd3", "flow-euler"),
    ("flux", "flow-euler"),
    ("pixart-sigma", "dpmpp-2m"),
    ("pixart-sigma", "ddim"),
    ("pixart-sigma", "euler"),
    ("kandinsky-2.2", "ddpm"),
    ("kandinsky-2.2", "ddim"),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    built = {}

    def folder(family: str):
        if family not in built:
            built[family] = BUILDERS[family](root / family)
        return built[family]

    return folder


@pytest.fixture(scope="module")
def load(folders):
    loaded = {}

    def get(family: str, scheduler: str | None = None):
        if family not in loaded:
            pipe = DiffusionPipeline.from_pretrained(folders(family), local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            loaded[family] = pipe
        pipe = loaded[family]
        if scheduler is None or scheduler == "pndm":
            return pipe
        cls, overrides = SCHEDULERS[scheduler]
        config = dict(pipe.scheduler.config)
        if cls is not DDPMScheduler:  # Kandinsky's DDPM learns its variance; other schedulers do not
            config.pop("variance_type", None)
        # A second pipeline object over the same modules: the cached one keeps its scheduler.
        return type(pipe)(**{**pipe.components, "scheduler": cls.from_config(config, **overrides)})

    return get


def embeds_for(n: int) -> dict[str, torch.Tensor]:
    """Kandinsky's decoder inputs: (n, 16) image embeddings with two near-duplicate pairs, and the
    zero negative."""
    base = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    jitter = 0.05 * torch.randn(n, 16, generator=torch.Generator().manual_seed(6))
    return {"image_embeds": base[torch.arange(n) % 2] + jitter, "negative_image_embeds": torch.zeros(n, 16)}


def inputs(family: str, n: int = len(PROMPTS)) -> tuple[list[str] | None, dict]:
    """(prompts, pipeline keyword arguments) for a hierarchical run of ``family`` on n prompts."""
    kwargs = {**COMMON, **EXTRA.get(family, {})}
    if family == "kandinsky-2.2":
        return None, {**kwargs, **embeds_for(n)}
    return PROMPTS[:n], kwargs


def plain_latents(pipe, family: str, index: int, seed: int, kwargs: dict) -> torch.Tensor:
    """The plain pipeline on prompt ``index`` alone with the generator seeded ``seed``."""
    single = dict(kwargs)
    if family == "kandinsky-2.2":
        single["image_embeds"] = kwargs["image_embeds"][index : index + 1]
        single["negative_image_embeds"] = kwargs["negative_image_embeds"][index : index + 1]
    else:
        single["prompt"] = PROMPTS[index]
    return pipe(**single, generator=torch.Generator().manual_seed(seed)).images[0]


def assert_same_image(hier: torch.Tensor, plain: torch.Tensor) -> None:
    torch.testing.assert_close(hier, plain, rtol=0, atol=RELATIVE * float(plain.abs().max()))


class RowCounter:
    """Counts the latent rows (and calls) going through a module, from outside it."""

    def __init__(self, module: torch.nn.Module, argument: str):
        self.rows = 0
        self.calls = 0
        self.batches: list[dict] = []

        def count(_module, args, kwargs):
            sample = kwargs[argument] if argument in kwargs else args[0]
            self.rows += int(sample.shape[0])
            self.calls += 1
            self.batches.append(kwargs)

        self.handle = module.register_forward_pre_hook(count, with_kwargs=True)

    def __enter__(self) -> RowCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def real_denoiser(pipe) -> tuple[torch.nn.Module, str]:
    family = family_of(pipe)
    return getattr(pipe, family.denoiser), family.sample


@pytest.mark.parametrize(("family", "scheduler"), MATRIX, ids=[f"{f}-{s}" for f, s in MATRIX])
def test_tau_zero_equals_the_plain_pipeline_on_each_prompt_alone(load, family, scheduler):
    pipe = load(family, scheduler)
    prompts, kwargs = inputs(family)
    out = hierarchical(pipe, prompts, Budget("tau", 0.0), seed=SEED, **kwargs)
    n = out.plan.tree.n_prompts
    assert out.seeds == [group_seed(SEED, out.plan.tree, i) for i in range(n)]
    for i in range(n):
        assert_same_image(out.images[i], plain_latents(pipe, family, i, out.seeds[i], kwargs))
    if scheduler in STOCHASTIC:  # the noise really is per prompt: another seed changes every image
        other = hierarchical(pipe, prompts, Budget("tau", 0.0), seed=SEED + 1, **kwargs).images
        assert all(not torch.allclose(other[i], out.images[i]) for i in range(n))


@pytest.mark.parametrize(
    ("family", "guidance"),
    [
        ("sd", 7.5),
        ("sd", 1.0),
        ("sdxl", 5.0),
        ("sd3", 1.0),
        ("flux", 3.5),
        ("pixart-sigma", 4.5),
        ("kandinsky-2.2", 4.0),
        ("kandinsky-2.2", 1.0),
    ],  # fmt: skip
)
def test_real_denoiser_sees_the_planned_number_of_rows(load, family, guidance):
    pipe = load(family, "ddim" if family in ("sd", "pixart-sigma") else None)
    prompts, kwargs = inputs(family)
    kwargs["guidance_scale"] = guidance
    # Flux is guidance-distilled: its guidance is an input, never a second batch half.
    halves = 2 if guidance > 1 and family != "flux" else 1
    module, argument = real_denoiser(pipe)
    for budget in (Budget("tau", 0.0), Budget("target_saving", 0.5)):
        with RowCounter(module, argument) as counter:
            out = hierarchical(pipe, prompts, budget, seed=SEED, **kwargs)
        schedule = out.plan
        assert counter.calls == STEPS  # fewer groups than max_batch: one batch per step
        assert counter.rows == halves * schedule.model_evaluations == out.denoiser_rows
        assert out.evaluations == schedule.model_evaluations
        if budget.mode == "tau":
            assert counter.rows == halves * STEPS * len(PROMPTS)
        else:
            assert schedule.saving >= 0.5 and counter.rows < halves * STEPS * len(PROMPTS)
        assert counter.rows == halves * schedule.accounting(guidance=False)["model_evaluations"]


def test_a_second_order_scheduler_maps_each_call_to_its_step(load):
    pipe = load("sd", "heun")
    prompts, kwargs = inputs("sd")
    module, argument = real_denoiser(pipe)
    with RowCounter(module, argument) as counter:
        out = hierarchical(pipe, prompts, Budget("target_saving", 0.5), seed=SEED, **kwargs)
    # Heun evaluates twice per step but once in the last: 2K - 1 calls; call j belongs to step j // 2.
    calls = 2 * STEPS - 1
    per_step = out.plan.evaluations_per_step
    assert counter.calls == calls
    assert counter.rows == 2 * sum(int(per_step[j // 2]) for j in range(calls))
    assert [b["sample"].shape[0] // 2 for b in counter.batches] == [
        int(per_step[j // 2]) for j in range(calls)
    ]


def test_groups_are_conditioned_on_their_members_mixed_rows(load):
    pipe = load("pixart-sigma")
    prompts, kwargs = inputs("pixart-sigma")
    encoded = encode_prompts(pipe, prompts, kwargs)
    embeds, masks = encoded.call_kwargs["prompt_embeds"], encoded.call_kwargs["prompt_attention_mask"]
    assert masks.sum(1).unique().numel() > 1  # the prompts really have different token counts
    module, argument = real_denoiser(pipe)
    with RowCounter(module, argument) as counter:
        out = hierarchical(pipe, prompts, Budget("target_saving", 0.5), seed=SEED, **kwargs)
    tree = out.plan.tree
    for step, batch in enumerate(counter.batches):
        nodes = out.plan.active_groups(step)
        g = len(nodes)
        cond, cond_masks = batch["encoder_hidden_states"][g:], batch["encoder_attention_mask"][g:]
        for node, row, mask in zip(nodes, cond, cond_masks, strict=True):
            members = tree.members(int(node))
            torch.testing.assert_close(row, embeds[members].mean(0), rtol=0, atol=1e-6)
            assert torch.equal(mask, masks[members].amax(0))
    assert any(len(out.plan.active_groups(s)) < len(PROMPTS) for s in range(STEPS))


def test_sdxl_text_embeds_are_mixed_and_size_ids_passed_per_group(load):
    pipe = load("sdxl")
    prompts, kwargs = inputs("sdxl")
    encoded = encode_prompts(pipe, prompts, kwargs)
    pooled = encoded.call_kwargs["pooled_prompt_embeds"]
    module, argument = real_denoiser(pipe)
    with RowCounter(module, argument) as counter:
        out = hierarchical(pipe, prompts, Budget("tau", 1e9), seed=SEED, **kwargs)
    first = counter.batches[0]["added_cond_kwargs"]
    assert first["text_embeds"].shape[0] == 2  # one group, [unconditional, conditional]
    torch.testing.assert_close(first["text_embeds"][1], pooled.mean(0), rtol=0, atol=1e-6)
    assert first["time_ids"].tolist() == [[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2
    assert out.plan.evaluations_per_step.tolist() == [1] * (STEPS - 1) + [len(PROMPTS)]


@pytest.mark.parametrize("scheduler", ["ddpm", "euler-ancestral"])
def test_stochastic_noise_is_shared_within_groups_and_independent_of_max_batch(load, scheduler):
    pipe = load("sd", scheduler)
    prompts, kwargs = inputs("sd")
    schedule_budget = Budget("target_saving", 0.5)
    seen = []

    def watch(_pipe, index, _t, tensors):
        seen.append(tensors["latents"].clone())
        return {}

    out = hierarchical(
        pipe, prompts, schedule_budget, seed=SEED, max_batch=64, callback_on_step_end=watch, **kwargs
    )
    tree = out.plan.tree
    assert len(seen) == STEPS
    for step, latents in enumerate(seen):
        for node in out.plan.active_groups(step):
            members = tree.members(int(node))
            assert bool((latents[members] == latents[members[0]]).all())
    final = out.images
    one_by_one = hierarchical(pipe, prompts, schedule_budget, seed=SEED, max_batch=1, **kwargs).images
    torch.testing.assert_close(one_by_one, final, rtol=0, atol=RELATIVE * float(final.abs().max()))


@pytest.mark.parametrize(
    ("scheduler", "distinct"), [("ddpm", True), ("euler-ancestral", True), ("ddim", False)]
)
def test_after_a_split_the_halves_draw_their_own_noise(load, scheduler, distinct):
    # The same prompt twice, placed apart in the tree: after their split only noise can tell them apart.
    pipe = load("sd", scheduler)
    tree = build_tree(np.array([[1.0, 0.0], [0.0, 1.0]]), prompts=["a cat", "a cat"])
    height = float(tree.heights[0])
    out = hierarchical(pipe, ["a cat", "a cat"], Budget("tau", 1.5 * height), seed=SEED, tree=tree, **COMMON)
    assert out.plan.evaluations_per_step.tolist() == [1, 2, 2]  # shared at step 0, split from step 1
    assert torch.equal(out.images[0], out.images[1]) is not distinct


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_stochastic_flow_matching_gets_the_group_generators_where_the_pipeline_passes_none(load, family):
    # SD3's and Flux's pipelines call scheduler.step without their generator: the plain pipeline's noise
    # comes from torch's global generator, so there is no plain run to equal; hierdiff's is the seed's.
    pipe = load(family, "flow-euler-sde")
    prompts, kwargs = inputs(family)
    torch.manual_seed(0)
    first = hierarchical(pipe, prompts, Budget("target_saving", 0.5), seed=SEED, **kwargs).images
    torch.manual_seed(1)
    again = hierarchical(pipe, prompts, Budget("target_saving", 0.5), seed=SEED, max_batch=1, **kwargs).images
    torch.testing.assert_close(again, first, rtol=0, atol=RELATIVE * float(first.abs().max()))
    other = hierarchical(pipe, prompts, Budget("target_saving", 0.5), seed=SEED + 1, **kwargs).images
    assert not torch.allclose(other, first)
    assert "step" not in vars(pipe.scheduler)  # the scheduler is itself again


def test_flux_true_cfg_calls_twice_per_step_at_the_same_timestep(load):
    pipe = load("flux")
    prompts, kwargs = inputs("flux")
    kwargs.update(true_cfg_scale=2.0, negative_prompt=["blurry"] * len(prompts))
    module, argument = real_denoiser(pipe)
    with RowCounter(module, argument) as counter:
        out = hierarchical(pipe, prompts, Budget("tau", 0.0), seed=SEED, **kwargs)
    assert counter.calls == 2 * STEPS and counter.rows == 2 * STEPS * len(prompts)
    single = {**kwargs, "negative_prompt": "blurry"}
    for i in range(len(prompts)):
        assert_same_image(out.images[i], plain_latents(pipe, "flux", i, out.seeds[i], single))


def test_the_wrapper_looks_like_the_real_module_and_is_removed_even_on_errors(load):
    pipe = load("sdxl")
    real = pipe.unet
    config_before = dict(pipe.config)
    prompts, kwargs = inputs("sdxl")
    encoded = encode_prompts(pipe, prompts, kwargs)
    schedule = plan(build_tree(encoded.vectors.double().numpy()), STEPS, tau=0.0)

    class Stop(Exception):
        pass

    def stop(_pipe, index, _t, tensors):
        assert isinstance(pipe.unet, GroupedDenoiser)
        raise Stop

    with pytest.raises(Stop), grouped(pipe, schedule, seed=0) as run:
        wrapper = pipe.unet
        assert wrapper.inner is real and wrapper.config is real.config
        assert wrapper.dtype == real.dtype and wrapper.device == real.device
        assert wrapper.add_embedding is real.add_embedding  # what SDXL reads for its size ids
        assert len(run.generator) == len(prompts)
        pipe(**encoded.call_kwargs, **kwargs, generator=run.generator, callback_on_step_end=stop)
    assert pipe.unet is real
    assert dict(pipe.config) == config_before


def test_unknown_pipelines_and_schedulers_are_refused_by_name(load):
    sd = load("sd")
    img2img = StableDiffusionImg2ImgPipeline(**sd.components)
    with pytest.raises(
        UnsupportedPipelineError, match="^hierdiff does not know the denoiser of StableDiffusionImg2Img"
    ):
        hierarchical(img2img, PROMPTS, Budget("tau", 0.0))
    sde = type(sd)(**{**sd.components, "scheduler": DPMSolverSDEScheduler.from_config(sd.scheduler.config)})
    with pytest.raises(ValueError, match="cannot sample with DPMSolverSDEScheduler: .* Brownian tree"):
        hierarchical(sde, PROMPTS, Budget("tau", 0.0), **COMMON)
    assert sde.unet is sd.unet and not isinstance(sd.unet, GroupedDenoiser)


def test_steps_that_differ_from_the_plan_are_refused(load):
    pipe = load("sd", "ddim")
    prompts, kwargs = inputs("sd")
    encoded = encode_prompts(pipe, prompts, kwargs)
    schedule = plan(build_tree(encoded.vectors.double().numpy()), STEPS + 1, tau=0.0)
    with (
        pytest.raises(ValueError, match="runs 3 steps .* but the plan has 4 steps"),
        grouped(pipe, schedule, seed=0) as run,
    ):
        pipe(**encoded.call_kwargs, **kwargs, generator=run.generator)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_joint_attention_families_refuse_an_overlong_prompt_by_name(load, family):
    pipe = load(family)
    long = "a " + "very " * 40 + "long prompt"
    with pytest.raises(ValueError) as info:
        hierarchical(pipe, ["a cat", long], Budget("tau", 0.0), **COMMON)
    message = str(info.value)
    assert message.startswith("prompt 1 'a very very") and "tokenizer" in message and "(limit 77)" in message
    assert "\n" not in message


def test_the_tree_comes_from_pooled_embeddings_unless_given(load):
    pipe = load("sdxl")
    prompts, kwargs = inputs("sdxl")
    pooled = encode_prompts(pipe, prompts, kwargs).call_kwargs["pooled_prompt_embeds"]
    out = hierarchical(pipe, prompts, Budget("tau", 0.0), **kwargs)
    assert out.plan.tree == build_tree(pooled.double().numpy(), prompts=prompts)
    given = build_tree(np.eye(4) + 0.1, prompts=prompts)
    assert hierarchical(pipe, prompts, Budget("tau", 0.0), tree=given, **kwargs).plan.tree is given
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    by_vectors = hierarchical(pipe, prompts, Budget("tau", 0.0), embeddings=vectors, **kwargs).plan.tree
    assert by_vectors == build_tree(vectors, prompts=prompts)


def test_the_documented_example_gives_pil_images_and_the_plan(folders):
    pipe = load_pipeline(folders("sd"))
    out = hierarchical(pipe, PROMPTS, Budget("target_saving", 0.5), seed=0, num_inference_steps=4,
                       height=SIZE, width=SIZE)  # fmt: skip
    assert [image.size for image in out.images] == [(SIZE, SIZE)] * len(PROMPTS)
    assert out.plan.saving >= 0.5 and out.plan.steps == 4


def test_chunks_are_subtrees_run_with_the_whole_plans_tau(load):
    pipe = load("sd", "ddim")
    prompts = PROMPTS + ["a green car", "a dog"]
    kwargs = dict(COMMON)
    whole = hierarchical(pipe, prompts, Budget("target_saving", 0.5), seed=SEED, **kwargs)
    tree = whole.plan.tree
    chunks = list(hierarchical_chunks(pipe, prompts, Budget("target_saving", 0.5), chunk_size=3, seed=SEED,
                                      **kwargs))  # fmt: skip
    nodes = split_tree(tree, 3)
    assert [c.indices.tolist() for c in chunks] == [sorted(tree.members(n).tolist()) for n in nodes]
    assert sorted(i for c in chunks for i in c.indices.tolist()) == list(range(len(prompts)))
    for chunk, node in zip(chunks, nodes, strict=True):
        assert chunk.output.plan.tau == whole.plan.tau and chunk.seed == group_seed(SEED, tree, node)
        assert len(chunk.output.images) == len(chunk.indices) <= 3
    # Sharing above the chunks' roots is given up, nothing else.
    assert sum(c.output.evaluations for c in chunks) >= whole.evaluations
    skipped = list(hierarchical_chunks(pipe, prompts, Budget("target_saving", 0.5), chunk_size=3, seed=SEED,
                                       skip=lambda indices: 0 in indices, **kwargs))  # fmt: skip
    assert [c.indices.tolist() for c in skipped] == [c.indices.tolist() for c in chunks if 0 not in c.indices]
    one = list(
        hierarchical_chunks(pipe, prompts, Budget("target_saving", 0.5), chunk_size=64, seed=SEED, **kwargs)
    )
    assert len(one) == 1 and torch.equal(one[0].output.images, whole.images)


def test_a_subtree_groups_its_prompts_as_the_whole_tree_does():
    tree = build_tree(np.random.default_rng(0).normal(size=(9, 5)))
    whole = plan(tree, 6, target_saving=0.5)
    node = next(n for n in range(tree.n_prompts, tree.n_nodes) if 3 <= tree.node_sizes[n] <= 6)
    sub, members = subtree(tree, node)
    assert members.tolist() == sorted(tree.members(node).tolist())
    part = plan(sub, 6, tau=whole.tau)
    inside = frozenset(members.tolist())
    for step in range(6):
        groups = [frozenset(tree.members(int(n)).tolist()) for n in whole.active_groups(step)]
        # A group reaching above the subtree's root is the subtree's root there.
        expected = {g for g in groups if g <= inside} or {inside}
        assert {
            frozenset(members[sub.members(int(n))].tolist()) for n in part.active_groups(step)
        } == expected


def test_pipeline_folders_are_detected_and_broken_ones_refused_in_one_line(folders, tmp_path):
    assert detect_family(folders("flux")).name == "flux"
    assert detect_family(folders("kandinsky-2.2")).name == "kandinsky-2.2"
    broken = tmp_path / "sd"
    shutil.copytree(folders("sd"), broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "vae")
    cases = {
        tmp_path / "nowhere": "does not exist",
        tmp_path: "has no model_index.json: not a diffusers pipeline folder",
        broken: "is not a complete StableDiffusionPipeline: missing unet/ weights, vae/",
    }
    unsupported = tmp_path / "img2img"
    shutil.copytree(folders("sd"), unsupported)
    index = json.loads((unsupported / "model_index.json").read_text())
    (unsupported / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "StableDiffusionUpscalePipeline"})
    )
    cases[unsupported] = "hierdiff does not know the denoiser of StableDiffusionUpscalePipeline: supported"
    for folder, message in cases.items():
        with pytest.raises(PipelineFolderError, match=message) as info:
            load_pipeline(folder)
        assert "\n" not in str(info.value)


def test_rows_along_a_later_dimension_scatter_like_rows_along_the_first():
    tree = build_tree(np.random.default_rng(1).normal(size=(5, 3)))
    schedule = plan(tree, 4, target_saving=0.5)
    x = torch.randn(5, 2, 3)

    def evaluate(step, x_g, nodes):
        return x_g * 2 + torch.as_tensor(nodes, dtype=x_g.dtype).reshape(-1, *[1] * (x_g.ndim - 1))

    def evaluate_later(step, x_g, nodes):  # rows along dimension 1
        return evaluate(step, x_g.transpose(0, 1), nodes).transpose(0, 1)

    for step in range(4):
        by_first = GroupedEvaluator(schedule, evaluate, max_batch=2)(step, x)
        by_second = GroupedEvaluator(schedule, evaluate_later, max_batch=2, row_dim=1)(
            step, x.transpose(0, 1)
        )
        assert torch.equal(by_second.transpose(0, 1), by_first)
