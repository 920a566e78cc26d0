# SPDX-License-Identifier: GPL-3.0-or-later
"""What the sampler nodes refuse, on the real host with tiny models of several families (testkit).

Specification: every node that samples a MODEL with conditioning from elsewhere (Hierarchical KSampler,
Shared Trunk Sampler, Branch Sampler, Hierarchical Guider) refuses, before the model runs once, with
one line that names the input and says what to connect or set instead:
- conditioning the MODEL cannot have been made for: tokens of another width (a Branch Sampler's
  trunk conditioning on a model with its own text encoder, the SDXL refiner case; a negative from
  another CLIP), or a pooled output of another width, or none, where the model's vector input ``y`` is
  made from it (an SD1.5 CLIP's tree on Flux, SDXL or SD3, whose token widths coincide here); a
  Branch Sampler names hier_latent for whatever its trunk's tree does not suit;
- latents of another channel count (latent_image, hier_latent);
- a branch after a trunk that already ran every step; no step at all (denoise 0, on the nodes and
  through SamplerCustomAdvanced's sigmas); NaN or infinite cfg, denoise or budget_value.
A Branch Sampler on another model that takes the trunk's conditioning (a LoRA, other weights of the
same family) still samples.
"""

from __future__ import annotations

import re
import sys

import pytest
import torch

SEED = 5
STEPS = 4
PROMPTS = ["a red cat on a sofa", "a blue dog in the snow", "a green tree in a field"]
REFINER_CONTEXT_DIM = 48
"""Token width of the tiny refiner's own text encoder (the SDXL refiner's CLIP-G is narrower than the
base's CLIP-L + G)."""
NAN, INF = float("nan"), float("inf")
PER_IMAGE = "evaluations per image"


@pytest.fixture(scope="module")
def comfy(comfy_host, tiny_model):
    """Node classes, the tiny SD1.5 model with its CLIP, and the testkit's other families."""
    import comfy.utils

    import testkit.tiny_families as families

    comfy.utils.PROGRESS_BAR_ENABLED = False
    classes = comfy_host.node_classes
    package = classes["HierKSampler"].__module__.rsplit(".", 1)[0]

    class Comfy:
        node_classes = classes
        conditioning = sys.modules[f"{package}.conditioning"]
        tiny = families

    Comfy.model, Comfy.clip, _ = tiny_model
    return Comfy


def exactly(message: str):
    """pytest.raises for a ValueError whose whole message is ``message``."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def counting(model):
    """A clone of ``model`` that counts its model calls: refusals come before the first."""
    calls = []

    def wrapper(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    return patched, calls


def build(config_class, unet_config: dict, seed: int = 0):
    """A tiny model of ``config_class`` with random float32 weights, as a ModelPatcher."""
    import comfy.model_management
    import comfy.model_patcher

    from testkit.tiny_model import initialise_parameters

    model_config = config_class(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    initialise_parameters(model.diffusion_model, torch.Generator().manual_seed(seed))
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def tiny_refiner(comfy):
    """A tiny SDXL refiner: ComfyUI's SDXLRefiner class, whose text encoder is narrower than the base's
    and whose adm is the pooled output plus five size/aesthetic embeddings."""
    from comfy.supported_models import SDXLRefiner  # keeps the name comfy for the fixture

    tiny = comfy.tiny
    config = dict(
        tiny.FAMILIES["sdxl"].unet_config,
        context_dim=REFINER_CONTEXT_DIM,
        adm_in_channels=tiny.POOLED_DIM + 5 * 256,
    )
    return build(SDXLRefiner, config)


def refiner_conditioning(comfy, seed: int) -> list:
    """A CONDITIONING as the tiny refiner's CLIP would give it: narrower tokens, the same pooled width."""
    tokens, extras = comfy.tiny.conditioning("sdxl", seed)[0]
    return [[tokens[..., :REFINER_CONTEXT_DIM], extras]]


def sd15_tree(comfy, prompts=PROMPTS):
    """A PROMPT_TREE from the tiny SD1.5 CLIP (Prompt Set Cluster)."""
    node = comfy.node_classes["HierPromptSetCluster"]
    return node.execute([comfy.clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]).args[0]


def sd15_negative(comfy) -> list:
    import nodes as comfy_nodes

    return comfy_nodes.CLIPTextEncode().encode(comfy.clip, "blurry")[0]


def family_tree(comfy, family: str, conditionings: list[list] | None = None):
    """A PROMPT_TREE over the family's per-prompt CONDITIONINGs (three prompts by default)."""
    from hierdiff_core.tree import build_tree

    conditionings = conditionings or [comfy.tiny.conditioning(family, seed) for seed in range(len(PROMPTS))]
    stacked = comfy.conditioning.stack_conditionings(conditionings)
    tree = build_tree(comfy.conditioning.clustering_embeddings(stacked), prompts=PROMPTS)
    return comfy.conditioning.PromptTreeSet(tree, tuple(PROMPTS), stacked, "clip_pooled")


def sd15_latent() -> dict:
    return {"samples": torch.zeros(1, 4, 8, 8)}


def hier_ksampler(
    comfy, model, tree, negative, latent, *, cfg=5.0, denoise=1.0, budget="tau", value=0.0,
    node="HierKSampler", end_at_step=None,
):  # fmt: skip
    stop = () if end_at_step is None else (end_at_step,)
    return comfy.node_classes[node].execute(
        model, tree, negative, latent, SEED, STEPS, cfg, "euler", "normal", denoise, budget, value, *stop,
        64, "shared", "mean",
    )  # fmt: skip


def trunk(comfy, model, tree, negative, latent, end_at_step: int, **options):
    """The HIER_LATENT of a Shared Trunk Sampler run stopped at ``end_at_step`` of STEPS."""
    node = "HierSharedTrunkSampler"
    out = hier_ksampler(comfy, model, tree, negative, latent, node=node, end_at_step=end_at_step, **options)
    return out.args[0]


def branch(comfy, model, hier_latent, negative, *, cfg=5.0, end_at_step=10000):
    node = comfy.node_classes["HierBranchSampler"]
    return node.execute(model, hier_latent, negative, cfg, "euler", end_at_step)


def guider(comfy, model, tree, negative, *, cfg=5.0, budget="tau", value=0.0):
    node = comfy.node_classes["HierGuider"]
    return node.execute(model, tree, negative, cfg, budget, value, 64, "shared", "mean").args[0]


@pytest.fixture(scope="module")
def sd15_trunk(comfy):
    """A Shared Trunk Sampler run on the tiny SD1.5 model, stopped at step 2 of STEPS."""
    return trunk(comfy, comfy.model, sd15_tree(comfy), sd15_negative(comfy), sd15_latent(), 2)


NODES = ["HierKSampler", "HierSharedTrunkSampler", "HierBranchSampler", "HierGuider"]


def run_node(comfy, node: str, model, tree, negative, trunk_latent, **options):
    """One sampler node on the SD1.5 inputs (the branch continues ``trunk_latent``)."""
    if node == "HierBranchSampler":
        return branch(comfy, model, trunk_latent, negative, **options)
    if node == "HierGuider":
        return guider(comfy, model, tree, negative, **options)
    end = {"end_at_step": 10000} if node == "HierSharedTrunkSampler" else {}
    return hier_ksampler(comfy, model, tree, negative, sd15_latent(), node=node, **end, **options)


# --- conditioning the MODEL cannot have been made for ----------------------------------------------


def test_a_branch_on_a_refiner_with_its_own_text_encoder_is_refused_naming_hier_latent(comfy):
    base = comfy.tiny.build_model("sdxl")
    tree = family_tree(comfy, "sdxl")
    hier = trunk(comfy, base, tree, comfy.tiny.conditioning("sdxl", 100), comfy.tiny.empty_latent("sdxl"), 2)
    refiner, calls = counting(tiny_refiner(comfy))
    with exactly(
        "hier_latent conditioning has context dimension 64 but the MODEL expects 48: a Branch Sampler "
        "continues with its trunk's prompt_tree conditioning, so connect a model that takes the trunk's text "
        "encoder (the trunk's checkpoint, with a LoRA or other patches), not one with its own text encoder "
        "such as an SDXL refiner"
    ):
        branch(comfy, refiner, hier, refiner_conditioning(comfy, 100))
    assert calls == []


def test_a_branch_names_hier_latent_when_the_trunks_tree_does_not_suit_its_model(comfy):
    # A prior-space tree (one unCLIP image embedding per prompt) runs its trunk on Stable unCLIP; a
    # branch on a model without unCLIP image input cannot continue it.
    from hierdiff_core.tree import build_tree

    prior = sys.modules[comfy.conditioning.__name__.rsplit(".", 1)[0] + ".prior"]
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(len(PROMPTS), comfy.tiny.UNCLIP_EMBEDDING_DIM, generator=generator)
    conditioning = prior.prior_conditioning(comfy.tiny.conditioning("sd21_unclip", 0), embeds, 1.0, 0.0)
    tree = comfy.conditioning.PromptTreeSet(
        build_tree(embeds.numpy(), prompts=PROMPTS), tuple(PROMPTS), conditioning, prior.EMBEDDING_SPACE
    )
    negative = comfy.tiny.conditioning("sd21_unclip", 100)
    unclip = comfy.tiny.build_model("sd21_unclip")
    hier = trunk(comfy, unclip, tree, negative, comfy.tiny.empty_latent("sd21_unclip"), 2)
    with exactly(
        "hier_latent (the trunk's prompt_tree): prompt_tree input holds prior image embeddings, but the "
        "MODEL (BaseModel) takes no unCLIP image conditioning: use a Stable unCLIP checkpoint, or Prompt "
        "Set Cluster for this model"
    ):
        branch(comfy, comfy.model, hier, sd15_negative(comfy))


@pytest.mark.parametrize("node", NODES)
def test_a_negative_from_another_clip_is_refused_on_every_sampler_node(comfy, sd15_trunk, node):
    model, calls = counting(comfy.model)
    with exactly(
        "negative conditioning has context dimension 48 but the MODEL expects 64: "
        "encode the negative with this checkpoint's CLIP"
    ):
        run_node(comfy, node, model, sd15_tree(comfy), refiner_conditioning(comfy, 100), sd15_trunk)
    assert calls == []


@pytest.mark.parametrize(("family", "model_class"), [("flux", "Flux"), ("sdxl", "SDXL"), ("sd3", "SD3")])
def test_an_sd15_tree_is_refused_by_its_pooled_output_where_token_widths_coincide(comfy, family, model_class):
    # The tiny SD1.5 CLIP's tokens are as wide as every tiny family's; its pooled output is not what
    # these models make their vector input y from.
    model, calls = counting(comfy.tiny.build_model(family))
    tree = sd15_tree(comfy)
    assert tree.context_dim == comfy.tiny.CONTEXT_DIM
    negative, latent = comfy.tiny.conditioning(family, 100), comfy.tiny.empty_latent(family)
    with exactly(
        f"prompt_tree conditioning has a 64-wide pooled output but the MODEL ({model_class}) expects one 32 "
        "wide: build the tree with this checkpoint's CLIP"
    ):
        hier_ksampler(comfy, model, tree, negative, latent)
    assert calls == []


def test_an_sd15_negative_on_flux_is_refused_by_its_pooled_output(comfy):
    model, calls = counting(comfy.tiny.build_model("flux"))
    with exactly(
        "negative conditioning has a 64-wide pooled output but the MODEL (Flux) expects one 32 wide: "
        "encode the negative with this checkpoint's CLIP"
    ):
        guider(comfy, model, family_tree(comfy, "flux"), sd15_negative(comfy))
    assert calls == []


@pytest.mark.parametrize(("family", "model_class"), [("flux", "Flux"), ("sd3", "SD3"), ("sdxl", "SDXL")])
def test_a_tree_without_the_pooled_output_the_model_reads_is_refused(comfy, family, model_class):
    per_prompt = [comfy.tiny.conditioning(family, seed) for seed in range(len(PROMPTS))]
    for conditioning in per_prompt:
        del conditioning[0][1]["pooled_output"]
    model = comfy.tiny.build_model(family)
    with exactly(
        f"prompt_tree conditioning has no pooled output, which the MODEL ({model_class}) needs: "
        "build the tree with this checkpoint's CLIP"
    ):
        guider(comfy, model, family_tree(comfy, family, per_prompt), comfy.tiny.conditioning(family, 100))


# --- latents of another channel count ---------------------------------------------------------------


@pytest.mark.parametrize("node", ["HierKSampler", "HierSharedTrunkSampler"])
def test_a_latent_image_of_another_channel_count_is_refused(comfy, node):
    model, calls = counting(comfy.model)
    latent = {"samples": torch.ones(1, 16, 8, 8)}  # a VAE Encode of SD3's VAE, say
    end = {"end_at_step": 10000} if node == "HierSharedTrunkSampler" else {}
    with exactly(
        "latent_image has 16 latent channels but this MODEL uses 4: connect a latent made for this model "
        "(its empty latent, or VAE Encode with this checkpoint's VAE)"
    ):
        hier_ksampler(comfy, model, sd15_tree(comfy), sd15_negative(comfy), latent, node=node, **end)
    assert calls == []


def test_an_empty_latent_of_another_channel_count_is_fitted_as_stock_ksampler_fits_it(comfy):
    empty_sd3 = {"samples": torch.zeros(1, 16, 8, 8)}
    out = hier_ksampler(comfy, comfy.model, sd15_tree(comfy), sd15_negative(comfy), empty_sd3)
    assert out.args[0]["samples"].shape == (len(PROMPTS), 4, 8, 8)


def test_a_branch_on_a_model_of_another_latent_format_is_refused_naming_hier_latent(comfy):
    # The tiny SDXL's conditioning fits the tiny SD3 (same token and pooled widths); its latents do not.
    tree = family_tree(comfy, "sdxl")
    negative = comfy.tiny.conditioning("sdxl", 100)
    hier = trunk(comfy, comfy.tiny.build_model("sdxl"), tree, negative, comfy.tiny.empty_latent("sdxl"), 2)
    model, calls = counting(comfy.tiny.build_model("sd3"))
    with exactly(
        "hier_latent has 4 latent channels but this MODEL uses 16: a Branch Sampler continues its trunk's "
        "latents, so connect a model with the trunk's latent format (the trunk's checkpoint, with a LoRA "
        "or other patches)"
    ):
        branch(comfy, model, hier, negative)
    assert calls == []


# --- steps, denoise, cfg, budget ----------------------------------------------------------------------


def test_a_branch_after_a_trunk_that_ran_every_step_says_there_is_nothing_left(comfy):
    finished = trunk(comfy, comfy.model, sd15_tree(comfy), sd15_negative(comfy), sd15_latent(), 10000)
    assert finished.step == STEPS
    with exactly(
        "hier_latent is already sampled through all 4 of its steps, so this Branch Sampler has nothing left "
        "to do: set end_at_step below 4 on the Shared Trunk Sampler (or Branch Sampler) before it, or use a "
        "Hierarchical KSampler when no branch should follow"
    ):
        branch(comfy, comfy.model, finished, sd15_negative(comfy))


@pytest.mark.parametrize("node", ["HierKSampler", "HierSharedTrunkSampler"])
def test_denoise_zero_is_refused_naming_denoise(comfy, node):
    with exactly(
        "denoise is 0, which leaves no step to sample: set denoise above 0, or connect the latent on "
        "directly (a stock KSampler returns it unchanged at denoise 0)"
    ):
        run_node(comfy, node, comfy.model, sd15_tree(comfy), sd15_negative(comfy), None, denoise=0.0)


def test_the_guider_refuses_sigmas_without_a_step_from_a_scheduler_at_denoise_zero(comfy):
    classes = comfy.node_classes
    model, calls = counting(comfy.model)
    hier_guider = guider(comfy, model, sd15_tree(comfy), sd15_negative(comfy))
    sigmas = classes["BasicScheduler"].execute(model, "normal", STEPS, 0.0).args[0]
    assert sigmas.shape == (0,)
    with exactly(
        "sigmas input holds no step to sample (a scheduler at denoise 0 gives none): "
        "set the scheduler's denoise above 0"
    ):
        classes["SamplerCustomAdvanced"].execute(
            classes["RandomNoise"].execute(SEED).args[0],
            hier_guider,
            classes["KSamplerSelect"].execute("euler").args[0],
            sigmas,
            sd15_latent(),
        )
    assert calls == []


@pytest.mark.parametrize("denoise", [NAN, INF, -0.5])
@pytest.mark.parametrize("node", ["HierKSampler", "HierSharedTrunkSampler"])
def test_a_denoise_that_is_no_fraction_is_refused_naming_denoise(comfy, node, denoise):
    with exactly(f"denoise must be a number in [0, 1], got {denoise!r}"):
        run_node(comfy, node, comfy.model, sd15_tree(comfy), sd15_negative(comfy), None, denoise=denoise)


@pytest.mark.parametrize("cfg", [NAN, INF, -INF])
@pytest.mark.parametrize("node", NODES)
def test_a_cfg_that_is_not_finite_is_refused_on_every_sampler_node(comfy, sd15_trunk, node, cfg):
    model, calls = counting(comfy.model)
    with exactly(f"cfg must be a finite number, got {cfg!r}: set cfg to a number such as 7"):
        run_node(comfy, node, model, sd15_tree(comfy), sd15_negative(comfy), sd15_trunk, cfg=cfg)
    assert calls == []


@pytest.mark.parametrize(
    ("budget", "value", "message"),
    [
        ("target_saving", NAN, "budget_value: target saving must be in [0, 1), got nan"),
        ("target_saving", INF, "budget_value: target saving must be in [0, 1), got inf"),
        ("tau", NAN, "budget_value: tau must be a finite number >= 0, got nan"),
        ("tau", INF, "budget_value: tau must be a finite number >= 0, got inf"),
        ("evaluations_per_image", NAN, f"budget_value: {PER_IMAGE} must be a finite number, got nan"),
        ("evaluations_per_image", 9.0, f"budget_value: {PER_IMAGE} must be in [1, 4] for 4 steps, got 9.0"),
    ],
)
@pytest.mark.parametrize("node", ["HierKSampler", "HierSharedTrunkSampler", "HierGuider"])
def test_a_bad_budget_value_is_refused_naming_budget_value(comfy, node, budget, value, message):
    model, calls = counting(comfy.model)
    tree, negative = sd15_tree(comfy), sd15_negative(comfy)
    with exactly(message):
        if node != "HierGuider":
            run_node(comfy, node, model, tree, negative, None, budget=budget, value=value)
        else:  # the step count, and with it the evaluations per image allowed, comes with the sigmas
            classes = comfy.node_classes
            classes["SamplerCustomAdvanced"].execute(
                classes["RandomNoise"].execute(SEED).args[0],
                guider(comfy, model, tree, negative, budget=budget, value=value),
                classes["KSamplerSelect"].execute("euler").args[0],
                classes["BasicScheduler"].execute(model, "normal", STEPS, 1.0).args[0],
                sd15_latent(),
            )
    assert calls == []


# --- what should work still works ------------------------------------------------------------------------


def test_a_branch_on_a_patched_copy_of_the_trunk_model_samples(comfy, sd15_trunk):
    # A LoRA reaches the model as weight patches on a clone: the same text encoder, so the same conditioning.
    patched = comfy.model.clone()
    key = next(k for k in patched.model_state_dict() if k.endswith("out.2.weight"))
    patched.add_patches({key: (torch.full_like(patched.model_state_dict()[key], 0.05),)}, strength_patch=1.0)
    negative = sd15_negative(comfy)
    with_patch = branch(comfy, patched, sd15_trunk, negative).args[0]["samples"]
    without = branch(comfy, comfy.model, sd15_trunk, negative).args[0]["samples"]
    assert with_patch.shape == (len(PROMPTS), 4, 8, 8)
    assert torch.isfinite(with_patch).all()
    assert not torch.allclose(with_patch, without)


def test_a_branch_on_another_model_of_the_trunks_family_samples(comfy):
    # Other weights of one family (a fine-tune of the same base) take the trunk's conditioning as it is.
    tree, negative = family_tree(comfy, "sdxl"), comfy.tiny.conditioning("sdxl", 100)
    hier = trunk(comfy, comfy.tiny.build_model("sdxl"), tree, negative, comfy.tiny.empty_latent("sdxl"), 2)
    out = branch(comfy, comfy.tiny.build_model("sdxl", seed=1), hier, negative)
    samples, continued = out.args[0]["samples"], out.args[1]
    assert samples.shape == (len(PROMPTS), 4, 8, 8) and torch.isfinite(samples).all()
    assert continued.step == STEPS


@pytest.mark.parametrize("node", ["HierKSampler", "HierSharedTrunkSampler"])
def test_an_unreachable_target_saving_names_budget_value_and_the_most_it_can_save(comfy, node):
    model, calls = counting(comfy.model)
    message = (
        r"^budget_value: target saving 0\.99 is not attainable for \d+ prompts in 4 steps: the maximum "
        r"attainable saving is 0\.\d+ \([\d.]+ evaluations per image\)$"
    )
    with pytest.raises(ValueError, match=message):
        tree, negative = sd15_tree(comfy), sd15_negative(comfy)
        run_node(comfy, node, model, tree, negative, None, budget="target_saving", value=0.99)
    assert calls == []
