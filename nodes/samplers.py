# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical sampler nodes: all-in-one KSampler, shared trunk + branches, and a GUIDER.

Each node only gathers its inputs and hands over to :class:`.guider.HierarchicalGuider`, which plans
(and, for a first-step tree, chooses the tree) when it sees the run's sigmas and noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from hierdiff_core.engine import CONDITIONING_MIXES
from hierdiff_core.layout import layout_groups, within_groups
from hierdiff_core.schedule import BUDGET_MODES, MAX_STEPS, Budget, Plan, plan
from hierdiff_core.spend import SPEND_MODES, spend, spend_within_layout
from hierdiff_core.tree import with_copies

from .checks import (
    TRUNK_INPUT,
    check_budget,
    check_budget_steps,
    check_denoise,
    check_images_per_prompt,
    check_latent_channels,
    check_latent_image,
    check_model_inputs,
    check_prompt_tree,
    end_step,
)
from .conditioning import CacheSized, PromptTreeSet
from .guider import (
    NOISE_MODES,
    TREE_SOURCES,
    EvaluationCount,
    HierarchicalGuider,
    first_step_predictions,
    measured_line,
    predicted_tree,
    probe_per_image,
)
from .report import plan_ui
from .sockets import HIER_LATENT, MEASURED_KEY, PLAN_KEY, PROMPT_TREE


@dataclass(frozen=True)
class HierLatent(CacheSized):
    """The HIER_LATENT socket value: one latent row per prompt part-way through a planned run.

    samples: (N, C, H, W) rows (video: (N, C, T, H, W)) after ``step`` of the plan's steps, with their
    leftover noise;
    sigmas: the whole run's (K + 1,) noise levels, so branches continue on the same schedule.
    """

    samples: torch.Tensor
    prompt_set: PromptTreeSet
    plan: Plan
    sigmas: torch.Tensor
    step: int
    seed: int
    max_batch: int
    mix: str
    copies: int = 1


DEFAULT_TARGET_SAVING = 0.05
"""budget_value's default: the largest target saving measured to keep attribute accuracy within 2 points of
independent sampling on held-out prompt sets of the trained shapes model (tools/bench_budget_defaults.py,
docs/fidelity.md). A saved workflow keeps its own value: budget_value is a required widget."""

MAX_IMAGES_PER_PROMPT = 64
"""Most variations per prompt: every one is a latent row held through the whole run."""


def budget_inputs() -> list:
    return [
        io.Combo.Input(
            "budget",
            options=list(BUDGET_MODES),
            default="target_saving",
            tooltip="How much to share: a target fraction of model evaluations saved, the raw "
            "threshold tau (0 = ordinary sampling), or model evaluations per image. Sharing may change "
            "what the first steps decide, the place and size of things first; colour and background are "
            "decided late and keep. Measured on held-out sets of the trained shapes model "
            "(docs/fidelity.md): at a 50 % saving 57 % of places and 93 % of sizes stay right, 97 % of "
            "colours and every background.",
        ),
        io.Float.Input(
            "budget_value",
            default=DEFAULT_TARGET_SAVING,
            min=0.0,
            max=10000.0,
            step=0.01,
            tooltip="The value for the chosen budget; for target_saving the fraction of model evaluations "
            "saved (0.5 = half). Two prompts that share their first 6 of 20 steps keep their own place 62 % "
            "of the time and their own size 92 %; sharing 10, 25 % and 62 %; colour and background stay "
            "theirs after 14. The default, 0.05, keeps attribute accuracy within 1.4 points of independent "
            "sampling on held-out shapes sets (prompt_tree; 0.1: -2.5, 0.25: -6.0, 0.5: -11.1); with "
            "tree_from = first_step, 0.1 costs 0.2 points.",
        ),
    ]


def engine_inputs() -> list:
    return [
        io.Int.Input(
            "max_batch",
            default=64,
            min=1,
            max=4096,
            tooltip="Most groups evaluated in one model call (memory vs speed).",
        ),
        io.Combo.Input(
            "noise_mode",
            options=list(NOISE_MODES),
            default="shared",
            tooltip="shared: every prompt starts from the seed's noise (as KSampler with batch 1); "
            "per_root: each top-level group draws its own.",
        ),
        io.Combo.Input(
            "conditioning_mix",
            options=list(CONDITIONING_MIXES),
            default="mean",
            tooltip="A group's conditioning: the mean of its members', or the member nearest it.",
        ),
    ]


# The sockets several sampler nodes share, each made in one place (with its tooltip).


def model_input() -> io.Model.Input:
    return io.Model.Input(
        "model", tooltip="The diffusion model, patched as for KSampler (LoRAs, FreeU, EasyCache, ...)."
    )


def prompt_tree_input() -> io.Input:
    return PROMPT_TREE.Input(
        "prompt_tree", tooltip="The prompts and their tree, from Prompt Set Cluster (or Prior Embed)."
    )


def negative_input() -> io.Conditioning.Input:
    return io.Conditioning.Input("negative", tooltip="The negative conditioning, one for every prompt.")


def cfg_input() -> io.Float.Input:
    return io.Float.Input(
        "cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
        tooltip="Classifier-free guidance scale, as in KSampler.",
    )  # fmt: skip


def sampler_name_input() -> io.Combo.Input:
    return io.Combo.Input(
        "sampler_name",
        options=comfy.samplers.KSampler.SAMPLERS,
        tooltip="Any ComfyUI sampler; stochastic ones draw each group's noise from the seed and the group.",
    )


def end_at_step_input() -> io.Int.Input:
    return io.Int.Input(
        "end_at_step", default=MAX_STEPS, min=1, max=MAX_STEPS,
        tooltip="The step this node stops at (the trunk) or runs to (the branch); the rest is left to the "
        "next sampler.",
    )  # fmt: skip


def latent_output() -> io.Latent.Output:
    return io.Latent.Output(
        display_name="LATENT",
        tooltip="One latent per prompt (and per variation), in the order of the prompts.",
    )


def hier_latent_output() -> io.Output:
    return HIER_LATENT.Output(
        display_name="hier_latent",
        tooltip="Every group's latent at the step this node stopped, for Branch Sampler.",
    )


def plan_output() -> io.String.Output:
    return io.String.Output(
        display_name="plan",
        tooltip="The plan as JSON: the tree, the steps each group shares and the evaluations it costs.",
    )


def sampling_inputs() -> list:
    return [
        io.Int.Input(
            "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
            tooltip="The seed of every prompt's starting noise: each prompt starts from the noise KSampler "
            "draws for this seed and a batch of one, so at budget tau = 0 each image is KSampler's for "
            "that prompt.",
        ),
        io.Int.Input(
            "steps", default=20, min=1, max=MAX_STEPS,
            tooltip="Sampling steps of the whole run. Groups share the early ones and split later, as the "
            "budget plans.",
        ),
        cfg_input(),
        sampler_name_input(),
        io.Combo.Input(
            "scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
            tooltip="Any ComfyUI scheduler: the sigmas of the steps.",
        ),
    ]  # fmt: skip


def planner(budget: Budget):
    """The guider's ``plan_fn`` for a budget."""

    def plan_for(prompt_set: PromptTreeSet, steps: int, probe_evaluations: int) -> Plan:
        budget_for_run = check_budget_steps(budget, steps, probe_evaluations / prompt_set.tree.n_prompts)
        try:
            return plan(prompt_set.tree, steps, budget_for_run, probe_evaluations=probe_evaluations)
        except ValueError as error:  # a target the tree cannot reach: the message says the most it can
            raise ValueError(f"budget_value: {error}") from error

    return plan_for


def planning_guider(
    model,
    prompt_tree: PromptTreeSet,
    negative,
    cfg: float,
    budget: str,
    budget_value: float,
    max_batch: int,
    noise_mode: str,
    mix: str,
    tree_from: str,
    sigmas: torch.Tensor | None = None,
    copies: int = 1,
    probe: EvaluationCount | None = None,
) -> HierarchicalGuider:
    """The guider every planning node hands over to: it plans for the budget (and, for a first-step
    tree, chooses the tree) when it sees the run's sigmas and noise. ``sigmas``: the whole run's, when
    the guider samples only part of it (a trunk); ``probe``: what choosing ``prompt_tree``'s tree
    beforehand cost."""
    return HierarchicalGuider(
        model,
        prompt_tree,
        negative,
        cfg,
        plan_fn=planner(check_budget(budget, budget_value)),  # a bad budget is refused here, before sampling
        sigmas=sigmas,
        max_batch=max_batch,
        noise_mode=noise_mode,
        mix=mix,
        tree_from=tree_from,
        copies=copies,
        probe=probe,
    )


def tree_input() -> io.Combo.Input:
    return io.Combo.Input(
        "tree_from",
        options=list(TREE_SOURCES),
        default="prompt_tree",
        optional=True,
        tooltip="prompt_tree: share along the prompt tree as given (text embeddings, as published); "
        "prompts that differ only in the place or size of things merge early, and sharing moves those "
        "first. first_step: one model evaluation per prompt on the seed's noise first, then cluster on "
        "what the model predicts there: prompts that differ in what early steps decide (place, size) "
        "split early. Costs one evaluation per image, counted in the budget. On held-out shapes sets: "
        "attribute accuracy 99.8 % at a 10 % saving (prompt_tree 97.5 %), 95.6 % at 25 % (94.0 %), no "
        "better from 35 % on.",
    )


def copies_input() -> io.Int.Input:
    return io.Int.Input(
        "images_per_prompt",
        default=1,
        min=1,
        max=MAX_IMAGES_PER_PROMPT,
        optional=True,
        tooltip="Variations: this many images of each prompt, one after another in the batch. A prompt's "
        "images share its steps until the budget parts them, like any split (at tau 0: from the start), "
        "then each but the first goes on from fresh noise: the later they part, the more alike they are.",
    )


def full_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The whole run's sigmas, as stock KSampler makes them for these inputs."""
    denoise = check_denoise(denoise)
    device = comfy.model_management.get_torch_device()
    return comfy.samplers.KSampler(model, steps, device, sampler_name, scheduler, denoise).sigmas.cpu()


def run_steps(
    model,
    guider: HierarchicalGuider,
    latent: torch.Tensor,
    sigmas: torch.Tensor,
    start: int,
    end: int,
    sampler_name: str,
    seed: int,
    add_noise: bool,
    noise_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample steps [start, end) of ``sigmas``; the rows (N, ...) keep their leftover noise when end < K."""
    run_sigmas = sigmas[start : end + 1]
    noise = comfy.sample.prepare_noise(latent[:1], seed) if add_noise else torch.zeros_like(latent[:1])
    callback = work_progress(model, guider, start, end)
    samples = guider.sample(
        noise,
        latent,
        comfy.samplers.sampler_object(sampler_name),
        run_sigmas,
        denoise_mask=noise_mask,
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
    )
    return samples.to(comfy.model_management.intermediate_device())


def work_progress(model, guider: HierarchicalGuider, start: int, end: int):
    """ComfyUI's progress-and-preview callback for steps [start, end), advancing by the plan's model
    evaluations done rather than by steps: early shared steps evaluate a few groups, late ones a row per
    prompt, so a bar by steps ran ahead of the time spent (80 % shown after 59 % of the time)."""
    show = latent_preview.prepare_callback(model, end - start)

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        per_step = guider.plan.evaluations_per_step[start:end]  # planned when sampling began
        done = int(per_step[: step + 1].sum())
        show(done - 1, x0, x, int(per_step.sum()))

    return callback


def report(guider: HierarchicalGuider) -> tuple[str, dict]:
    """The plan JSON (for the plan output) and the UI output the web widget draws, with measured counts."""
    ui = {**plan_ui(guider.plan), MEASURED_KEY: [measured_line(guider.count)]}
    return ui[PLAN_KEY][0], ui


def sample_trunk(
    model,
    prompt_tree: PromptTreeSet,
    negative,
    latent_image: dict,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    denoise: float,
    budget: str,
    budget_value: float,
    end_at_step: int,
    max_batch: int,
    noise_mode: str,
    conditioning_mix: str,
    tree_from: str = "prompt_tree",
    copies: int = 1,
    probe: EvaluationCount | None = None,
) -> tuple[HierLatent, str, dict]:
    """Plan a prompt tree's run and sample its first ``end_at_step`` steps (all of them by default).
    ``probe``: what choosing ``prompt_tree``'s tree beforehand cost (:func:`within_layout`)."""
    check_model_inputs(model, prompt_tree, negative, cfg)
    latent = check_latent_image(model, latent_image)
    sigmas = full_sigmas(model, steps, sampler_name, scheduler, denoise)
    probed = "first_step" if probe is not None else tree_from
    probe_share = probe_per_image(probed, prompt_tree.tree.n_prompts, check_images_per_prompt(copies))
    check_budget_steps(check_budget(budget, budget_value), len(sigmas) - 1, probe_share)
    end = end_step(end_at_step, len(sigmas) - 1, 0)
    guider = planning_guider(
        model, prompt_tree, negative, cfg, budget, budget_value, max_batch, noise_mode, conditioning_mix,
        tree_from, sigmas, copies, probe,
    )  # fmt: skip
    samples = run_steps(
        model, guider, latent, sigmas, 0, end, sampler_name, seed, True, latent_image.get("noise_mask")
    )
    plan_json, ui = report(guider)
    # The guider planned while sampling (and chose the tree, for a first-step tree): keep what it used.
    hier = HierLatent(
        samples, guider.prompt_set, guider.plan, sigmas, end, seed, max_batch, conditioning_mix, guider.copies
    )
    return hier, plan_json, ui


def trunk_inputs(*, end_at_step: bool) -> list:
    """The inputs the all-in-one and the trunk sampler share (the trunk also stops at end_at_step)."""
    stop = [end_at_step_input()] if end_at_step else []
    return [
        model_input(),
        prompt_tree_input(),
        negative_input(),
        io.Latent.Input("latent_image", tooltip="An empty latent of batch 1: it sets the size."),
        *sampling_inputs(),
        io.Float.Input(
            "denoise", default=1.0, min=0.0, max=1.0, step=0.01,
            tooltip="As in KSampler: below 1, the steps start part way, from the latent image.",
        ),  # fmt: skip
        *budget_inputs(),
        *stop,
        *engine_inputs(),
        tree_input(),
        copies_input(),
    ]


def spend_input() -> io.Combo.Input:
    return io.Combo.Input(
        "spend",
        options=list(SPEND_MODES),
        default="sharing",
        optional=True,
        tooltip="How the budget's compute is spent. sharing: all the steps, shared down to the budget (as "
        "published). steps_then_sharing: fewer steps first, down to the sampler's measured minimum, and "
        "sharing only for the rest; needs a budget in compute (target_saving or evaluations_per_image). "
        "Measured on the shapes test model's held-out and confirmation sets: it kept more than sharing "
        "alone or fewer steps alone with dpmpp_2m at 3 to 6 evaluations per image and with dpmpp_2m_sde at "
        "3 and 4; with euler and euler_ancestral, which still work with 3 steps, it only cuts steps "
        "(docs/fidelity.md, \"Spending a budget\").",
    )


def spent_budget(
    budget: str, budget_value: float, steps: int, sampler_name: str, tree_from: str, n_prompts: int,
    copies: int,
) -> tuple[int, str, float]:
    """(steps, budget, budget_value) that steps_then_sharing runs for the node's inputs."""
    # A first-step tree's probe is paid from the budget, spread over every image (copies included).
    probe = probe_per_image(tree_from, n_prompts, copies)
    try:
        chosen, spent = spend(check_budget(budget, budget_value), steps, sampler_name, probe)
    except ValueError as error:
        raise ValueError(f"budget: {error}") from error
    return chosen, spent.mode, spent.value


def within_layout(
    model, prompt_tree: PromptTreeSet, negative, latent_image: dict, seed: int, steps: int, cfg: float,
    sampler_name: str, scheduler: str, denoise: float, budget: str, budget_value: float, max_batch: int,
    copies: int,
) -> tuple[PromptTreeSet, EvaluationCount, int, str, float]:
    """What sharing_within_layout runs: (the set with its first-step tree kept within layouts, what the
    probe cost, steps, budget, budget_value).

    The probe evaluates every prompt once on the seed's noise at the first sigma; the prompts are grouped
    by the layouts of those predictions (:func:`hierdiff_core.layout.layout_groups`) and the first-step
    tree keeps its sharing inside the groups; the budget then chooses the steps
    (:func:`hierdiff_core.spend.spend_within_layout`)."""
    check_model_inputs(model, prompt_tree, negative, cfg)
    latent = check_latent_image(model, latent_image)
    sigmas = full_sigmas(model, steps, sampler_name, scheduler, denoise)
    wanted = check_budget_steps(check_budget(budget, budget_value), len(sigmas) - 1)
    probe, tree, ceiling = None, prompt_tree.tree, 0.0
    if tree.n_prompts > 1:
        noise = comfy.sample.prepare_noise(latent[:1], seed)
        x0, probe = first_step_predictions(
            model, prompt_tree, negative, cfg, noise, latent, sigmas, max_batch,
            latent_image.get("noise_mask"), seed,
        )  # fmt: skip
        tree, ceiling = within_groups(predicted_tree(prompt_tree, x0), layout_groups(x0.numpy()))
    copied = with_copies(tree, copies)
    if tree.n_prompts == 1:  # one prompt, one layout: its copies may share throughout
        ceiling = float(copied.heights.max(initial=0.0))
    probe_share = probe_per_image("first_step", tree.n_prompts, copies)
    try:
        chosen, spent = spend_within_layout(
            wanted, len(sigmas) - 1, sampler_name, copied, ceiling, probe_share
        )
    except ValueError as error:
        raise ValueError(f"budget: {error}") from error
    return dataclasses.replace(prompt_tree, tree=tree), probe, chosen, spent.mode, spent.value


class HierKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierKSampler",
            display_name="Hierarchical KSampler",
            category="sampling/hierarchical",
            description="Samples one image per prompt of a prompt tree, sharing early steps within clusters.",
            inputs=[*trunk_inputs(end_at_step=False), spend_input()],
            outputs=[latent_output(), plan_output()],
        )

    @classmethod
    def execute(
        cls, model, prompt_tree, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise,
        budget, budget_value, max_batch, noise_mode, conditioning_mix,
        tree_from="prompt_tree", images_per_prompt=1, spend="sharing",
    ) -> io.NodeOutput:
        probe = None
        if spend == "steps_then_sharing":
            check_prompt_tree(model, prompt_tree)
            steps, budget, budget_value = spent_budget(
                budget, budget_value, steps, sampler_name, tree_from,
                prompt_tree.tree.n_prompts, check_images_per_prompt(images_per_prompt),
            )  # fmt: skip
        elif spend == "sharing_within_layout":
            prompt_tree, probe, steps, budget, budget_value = within_layout(
                model, prompt_tree, negative, latent_image, seed, steps, cfg, sampler_name, scheduler,
                denoise, budget, budget_value, max_batch, check_images_per_prompt(images_per_prompt),
            )  # fmt: skip
            tree_from = "prompt_tree"  # the probe chose the tree
        elif spend != "sharing":
            raise ValueError(f"spend must be one of {', '.join(SPEND_MODES)}, got {spend!r}")
        hier, plan_json, ui = sample_trunk(
            model, prompt_tree, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise,
            budget, budget_value, MAX_STEPS, max_batch, noise_mode, conditioning_mix, tree_from,
            images_per_prompt, probe,
        )
        return io.NodeOutput({"samples": hier.samples}, plan_json, ui=ui)


class HierSharedTrunkSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierSharedTrunkSampler",
            display_name="Shared Trunk Sampler",
            category="sampling/hierarchical",
            description="Runs a prompt tree's shared early steps to end_at_step; Branch Sampler continues.",
            inputs=trunk_inputs(end_at_step=True),
            outputs=[hier_latent_output(), plan_output()],
        )

    @classmethod
    def execute(
        cls, model, prompt_tree, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise,
        budget, budget_value, end_at_step, max_batch, noise_mode, conditioning_mix,
        tree_from="prompt_tree", images_per_prompt=1,
    ) -> io.NodeOutput:
        hier, plan_json, ui = sample_trunk(
            model, prompt_tree, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise,
            budget, budget_value, end_at_step, max_batch, noise_mode, conditioning_mix, tree_from,
            images_per_prompt,
        )
        return io.NodeOutput(hier, plan_json, ui=ui)


class HierBranchSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierBranchSampler",
            display_name="Branch Sampler",
            category="sampling/hierarchical",
            description="Continues a Shared Trunk Sampler's run, maybe with another model (LoRA, refiner).",
            inputs=[
                model_input(),
                HIER_LATENT.Input(
                    "hier_latent",
                    tooltip="The trunk's state from Shared Trunk Sampler: every group's latent at the step "
                    "it stopped.",
                ),
                negative_input(),
                cfg_input(),
                sampler_name_input(),
                end_at_step_input(),
            ],
            outputs=[latent_output(), hier_latent_output(), plan_output()],
        )

    @classmethod
    def execute(cls, model, hier_latent, negative, cfg, sampler_name, end_at_step) -> io.NodeOutput:
        hier: HierLatent = hier_latent
        check_model_inputs(model, hier.prompt_set, negative, cfg, TRUNK_INPUT)
        check_latent_channels(
            model, hier.samples, "hier_latent",
            "a Branch Sampler continues its trunk's latents, so connect a model with the trunk's latent "
            "format (the trunk's checkpoint, with a LoRA or other patches)",
        )  # fmt: skip
        end = end_step(end_at_step, hier.plan.steps, hier.step)
        guider = HierarchicalGuider(
            model,
            hier.prompt_set,
            negative,
            cfg,
            plan=hier.plan,
            sigmas=hier.sigmas,
            max_batch=hier.max_batch,
            noise_mode="shared",
            mix=hier.mix,
            copies=hier.copies,
        )
        samples = run_steps(
            model, guider, hier.samples, hier.sigmas, hier.step, end, sampler_name, hier.seed, False
        )
        continued = dataclasses.replace(hier, samples=samples, step=end)
        plan_json, ui = report(guider)
        return io.NodeOutput({"samples": samples}, continued, plan_json, ui=ui)


class HierGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierGuider",
            display_name="Hierarchical Guider",
            category="sampling/hierarchical",
            description="A GUIDER for SamplerCustomAdvanced: any SAMPLER and SIGMAS, one image per prompt. "
            "Give SamplerCustomAdvanced a latent of batch 1.",
            inputs=[
                model_input(),
                prompt_tree_input(),
                negative_input(),
                cfg_input(),
                *budget_inputs(),
                *engine_inputs(),
                tree_input(),
                copies_input(),
            ],
            outputs=[
                io.Guider.Output(
                    tooltip="A GUIDER for SamplerCustomAdvanced: it samples every prompt of the tree, "
                    "sharing as planned."
                )
            ],
        )

    @classmethod
    def execute(
        cls, model, prompt_tree, negative, cfg, budget, budget_value, max_batch, noise_mode, conditioning_mix,
        tree_from="prompt_tree", images_per_prompt=1,
    ) -> io.NodeOutput:  # fmt: skip
        check_model_inputs(model, prompt_tree, negative, cfg)
        guider = planning_guider(
            model, prompt_tree, negative, cfg, budget, budget_value, max_batch, noise_mode, conditioning_mix,
            tree_from, copies=images_per_prompt,
        )  # fmt: skip
        return io.NodeOutput(guider)


NODES = [HierKSampler, HierSharedTrunkSampler, HierBranchSampler, HierGuider]
