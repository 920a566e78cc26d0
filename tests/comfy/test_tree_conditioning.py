# SPDX-License-Identifier: GPL-3.0-or-later
"""ComfyUI's conditioning nodes on the positive prompts of a PROMPT_TREE (real host, tiny model).

Specification (Prompt Tree Conditioning -> stock conditioning nodes -> Prompt Tree Set Conditioning):
- at tau = 0 the Hierarchical KSampler gives every prompt what stock KSampler gives it with the same
  nodes applied to its own CLIPTextEncode: a ControlNet (the testkit's tiny ControlNet, loaded as
  ControlNetLoader loads a file), an area, a timestep range, combined with a shared extra conditioning;
  also when a step takes several model calls (more prompts than max_batch);
- at a target saving of 0.5 the saving holds: a ControlNet adds no rows through the denoiser, and the
  node's measured line equals a counter around the model's apply function;
- a ControlNet variation set runs from a workflow through ComfyUI's executor;
- what grouping cannot keep per prompt is refused with one line naming the conditioning input.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hierdiff_core.schedule import Plan
from hierdiff_dev.expect import PROMPTS, SET_WITH_SPLITS, assert_close, counting, measured_rows

PAIR = PROMPTS[:2]  # sampled at tau = 0 with max_batch 1 too: two model calls a step
LONG_PROMPT = " ".join(["a very detailed painting of a lighthouse on a cliff"] * 12)  # two CLIP chunks
SEED = 7
STEPS = 4
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}


@pytest.fixture(scope="module")
def comfy(comfy):
    """The shared host fixture plus the tiny ControlNet, an extra shared conditioning, a control image
    and a cache of stock references."""
    from testkit.tiny_controlnet import load_tiny_controlnet

    return SimpleNamespace(
        **vars(comfy),
        references={},
        controlnet=load_tiny_controlnet(),
        extra=comfy.stock.CLIPTextEncode().encode(comfy.clip, "a stormy sky")[0],
        image=torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3)),
    )


def controlnet(comfy, positive: list, image: torch.Tensor | None = None) -> tuple[list, list]:
    """ControlNetApplyAdvanced with the tiny ControlNet and the control image on positive and negative."""
    image = comfy.image if image is None else image
    apply = comfy.stock.ControlNetApplyAdvanced()
    positive, negative = apply.apply_controlnet(
        positive, comfy.negative, comfy.controlnet, image, 0.8, 0.0, 1.0
    )
    return positive, negative


def area(comfy, positive: list) -> tuple[list, list]:
    """The prompt everywhere plus again, stronger, on the left half: two entries of the prompt's rows."""
    left = comfy.stock.ConditioningSetArea().append(positive, 32, 64, 0, 0, 1.5)[0]
    return comfy.stock.ConditioningCombine().combine(positive, left)[0], comfy.negative


def timestep_range(comfy, positive: list) -> tuple[list, list]:
    """The prompt for the first half of the steps, a shared extra conditioning for the second half."""
    ranged = comfy.stock.ConditioningSetTimestepRange()
    first = ranged.set_range(positive, 0.0, 0.5)[0]
    second = ranged.set_range(comfy.extra, 0.5, 1.0)[0]
    return comfy.stock.ConditioningCombine().combine(first, second)[0], comfy.negative


def shared_first(comfy, positive: list) -> tuple[list, list]:
    """A shared extra conditioning combined in front of the prompts' own entry."""
    return comfy.stock.ConditioningCombine().combine(comfy.extra, positive)[0], comfy.negative


def prompt_tree(comfy, prompts: list[str]):
    node = comfy.classes["HierPromptSetCluster"]
    return node.execute([comfy.clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]).args[0]


def tree_conditioning(comfy, tree) -> list:
    return comfy.classes["HierPromptTreeConditioning"].execute(tree).args[0]


def set_conditioning(comfy, tree, conditioning: list):
    return comfy.classes["HierPromptTreeSetConditioning"].execute(tree, conditioning).args[0]


def conditioned_tree(comfy, prompts: list[str], operation) -> tuple[object, list]:
    """(PROMPT_TREE with ``operation`` applied to its positives, the negative ``operation`` gives)."""
    tree = prompt_tree(comfy, prompts)
    positive, negative = operation(comfy, tree_conditioning(comfy, tree))
    return set_conditioning(comfy, tree, positive), negative


def hier_ksampler(comfy, model, tree, negative: list, *, budget="tau", value=0.0, max_batch=64):
    node = comfy.classes["HierKSampler"]
    return node.execute(
        model, tree, negative, LATENT, SEED, STEPS, 7.0, "euler", "normal", 1.0, budget, value, max_batch,
        "shared", "mean", "prompt_tree",
    )  # fmt: skip


def stock_ksampler(comfy, model, prompt: str, operation) -> torch.Tensor:
    """Stock KSampler on the prompt's own CLIPTextEncode with ``operation`` applied to it."""
    positive, negative = operation(comfy, comfy.stock.CLIPTextEncode().encode(comfy.clip, prompt)[0])
    out = comfy.stock.common_ksampler(model, SEED, STEPS, 7.0, "euler", "normal", positive, negative, LATENT)
    return out[0]["samples"]


def reference(comfy, prompt: str, operation) -> torch.Tensor:
    key = (prompt, operation.__name__)
    if key not in comfy.references:
        comfy.references[key] = stock_ksampler(comfy, comfy.model, prompt, operation)
    return comfy.references[key]


@pytest.mark.parametrize(
    ("operation", "max_batch", "prompts"),
    [
        (controlnet, 1, PAIR),  # at max_batch 64 in the saving test and the workflow
        (area, 1, PAIR),
        (timestep_range, 1, PAIR),
        # Prompts of 154 and 77 tokens behind a shared entry: one model call per token length.
        (shared_first, 64, [LONG_PROMPT, PROMPTS[0]]),
    ],
)
def test_positive_conditioning_at_tau_zero_equals_stock_per_prompt(comfy, operation, max_batch, prompts):
    tree, negative = conditioned_tree(comfy, prompts, operation)
    samples = hier_ksampler(comfy, comfy.model, tree, negative, max_batch=max_batch).args[0]["samples"]
    for i, prompt in enumerate(prompts):
        expected = reference(comfy, prompt, operation)
        assert_close(samples[i : i + 1], expected, f"{operation.__name__}, max_batch {max_batch}, prompt {i}")


def test_the_controlnet_changes_the_images(comfy):
    plain = comfy.stock.CLIPTextEncode().encode(comfy.clip, PROMPTS[0])[0]
    out = comfy.stock.common_ksampler(
        comfy.model, SEED, STEPS, 7.0, "euler", "normal", plain, comfy.negative, LATENT
    )
    difference = (out[0]["samples"] - reference(comfy, PROMPTS[0], controlnet)).abs().max().item()
    assert difference > 1.0


def test_a_controlnet_keeps_the_saving_and_measured_equals_the_model_counter(comfy):
    tree, negative = conditioned_tree(comfy, SET_WITH_SPLITS, controlnet)
    model, counter = counting(comfy.model)
    out = hier_ksampler(comfy, model, tree, negative, budget="target_saving", value=0.5)
    plan = Plan.from_json(out.args[1])
    assert plan.saving >= 0.5
    # Conditional and unconditional row per group and step: the ControlNet sends nothing through the UNet.
    assert counter["rows"] == 2 * plan.model_evaluations
    assert measured_rows(out) == (counter["rows"], 2 * STEPS * len(SET_WITH_SPLITS))
    samples = out.args[0]["samples"]
    first = plan.groups(STEPS - 1)
    for node in first.nodes:  # members of a group still active at the last step are one image
        members = plan.tree.members(int(node))
        assert all(torch.equal(samples[members[0]], samples[m]) for m in members)


def test_a_controlnet_variation_set_runs_from_a_workflow(comfy_host, comfy):
    from hierdiff_dev.workflows import decoded_and_saved, hier_sampling_inputs, prompt_tree_workflow
    from testkit.tiny_controlnet import TINY_CONTROLNET_NAME, ensure_tiny_controlnet

    ensure_tiny_controlnet()  # in ComfyUI's controlnet models folder, where ControlNetLoader lists it
    graph = prompt_tree_workflow(SET_WITH_SPLITS)
    graph.update(
        {
            "tree_conditioning": {
                "class_type": "HierPromptTreeConditioning",
                "inputs": {"prompt_tree": ["cluster", 0]},
            },
            "controlnet": {
                "class_type": "ControlNetLoader",
                "inputs": {"control_net_name": TINY_CONTROLNET_NAME},
            },
            "image": {
                "class_type": "EmptyImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3366CC},
            },
            "apply": {
                "class_type": "ControlNetApplyAdvanced",
                "inputs": {
                    "positive": ["tree_conditioning", 0],
                    "negative": ["negative", 0],
                    "control_net": ["controlnet", 0],
                    "image": ["image", 0],
                    "vae": ["loader", 2],
                    "strength": 0.8,
                    "start_percent": 0.0,
                    "end_percent": 1.0,
                },
            },
            "set_conditioning": {
                "class_type": "HierPromptTreeSetConditioning",
                "inputs": {"prompt_tree": ["cluster", 0], "conditioning": ["apply", 0]},
            },
            "sampler": {
                "class_type": "HierKSampler",
                "inputs": {
                    "model": ["loader", 0],
                    "prompt_tree": ["set_conditioning", 0],
                    "negative": ["apply", 1],
                    "latent_image": ["latent", 0],
                    **hier_sampling_inputs(STEPS),
                },
            },
        }
    )
    result = comfy_host.run(decoded_and_saved(graph, ["sampler", 0], prefix="hier_controlnet"))
    assert len(result.image_paths("save")) == len(SET_WITH_SPLITS)
    plan = Plan.from_json(result.outputs["sampler"]["hierdiff_plan"][0])
    assert plan.saving >= 0.5
    through = 2 * plan.model_evaluations
    expected = (
        f"measured: {through:,} latent rows through the model instead of {2 * STEPS * len(SET_WITH_SPLITS):,}"
    )
    assert result.outputs["sampler"]["hierdiff_measured"][0].startswith(expected)


def images_per_prompt(comfy, tree) -> list:
    return controlnet(comfy, tree_conditioning(comfy, tree), comfy.image.repeat(2, 1, 1, 1))[0]


def masks_per_prompt(comfy, tree) -> list:
    mask = torch.ones(len(PROMPTS), 64, 64)
    return comfy.stock.ConditioningSetMask().append(tree_conditioning(comfy, tree), mask, "default", 1.0)[0]


def another_plain_conditioning(comfy, tree) -> list:
    return comfy.extra


def another_tree_of_two(comfy, tree) -> list:
    return tree_conditioning(comfy, prompt_tree(comfy, PROMPTS[:2]))


def nothing(comfy, tree) -> list:
    return []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            images_per_prompt,
            "conditioning input: entry 1 has a ControlNet image batch of 2, but ComfyUI hands control images "
            "to a model call by row position and hierarchical sampling evaluates one row per group of "
            "prompts, so images per prompt cannot follow the groups: give one control image (batch 1), "
            "shared by every prompt",
        ),
        (
            masks_per_prompt,
            "conditioning input: entry 1 has a mask of 3 rows, but ComfyUI hands masks to a model call by "
            "row position and hierarchical sampling evaluates one row per group of prompts: give one mask "
            "(batch 1), shared by every prompt",
        ),
        (
            another_plain_conditioning,
            "conditioning input was not made from this prompt_tree: none of its entries holds the prompts' "
            "own rows; make it from this prompt_tree with Prompt Tree Conditioning, then the conditioning "
            "nodes",
        ),
        (
            another_tree_of_two,
            "conditioning input: entry 1 has tokens of 2 rows but prompt_tree has 3 prompts: every entry "
            "must hold one row per prompt (made from this prompt_tree by Prompt Tree Conditioning) or one "
            "row shared by every prompt",
        ),
        (
            nothing,
            "conditioning input is empty: connect the CONDITIONING of Prompt Tree Conditioning, after the "
            "conditioning nodes",
        ),
    ],
)
def test_what_grouping_cannot_keep_per_prompt_is_refused(comfy, make, message):
    tree = prompt_tree(comfy, PROMPTS)
    with pytest.raises(ValueError) as refused:
        set_conditioning(comfy, tree, make(comfy, tree))
    assert str(refused.value) == message


def test_prompts_of_different_token_lengths_refuse_changed_token_counts_and_other_sets(comfy):
    tree = prompt_tree(comfy, [PROMPTS[0], LONG_PROMPT, PROMPTS[1]])
    # ConditioningConcat needs as many rows on both sides: the tree's tokens after themselves.
    own = tree_conditioning(comfy, tree)
    concatenated = comfy.stock.ConditioningConcat().concat(own, own)[0]
    with pytest.raises(ValueError) as refused:
        set_conditioning(comfy, tree, concatenated)
    assert str(refused.value) == (
        "conditioning input: entry 1 has 308 tokens a row, but this prompt_tree's prompts encode to 77 to "
        "154 tokens each, which a node that changes the token count (ConditioningConcat) cannot keep "
        "apart: shorten the long prompts so that all encode to one length, or write the extra text into "
        "the prompts"
    )
    other = tree_conditioning(comfy, prompt_tree(comfy, [LONG_PROMPT, PROMPTS[0], PROMPTS[1]]))
    with pytest.raises(ValueError) as refused:
        set_conditioning(comfy, tree, other)
    assert str(refused.value) == (
        "conditioning input: entry 1 holds the rows of another prompt set (other token lengths): make it "
        "from this prompt_tree with Prompt Tree Conditioning"
    )
    # Combined with a shared extra conditioning, the prompts of different lengths keep their own tokens.
    combined = comfy.stock.ConditioningCombine().combine(comfy.extra, tree_conditioning(comfy, tree))[0]
    assert set_conditioning(comfy, tree, combined).conditioning[1][0] is tree.conditioning[0][0]
