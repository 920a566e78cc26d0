# SPDX-License-Identifier: GPL-3.0-or-later
"""unCLIP prior nodes on the real ComfyUI host: the prior folder ComfyUI lists, prompts clustered in
the prior's image-embedding space, per-prompt image embeddings in the PROMPT_TREE, clear errors."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from hierdiff_core.tree import PromptTree
from hierdiff_dev import TINY_LOADER
from hierdiff_diffusers.prior import embed_prompts_with_prior, load_prior, prior_tree
from testkit.tiny_kandinsky import build_tiny_prior

PROMPTS = ["a red cat on a sofa", "a red cat on a chair", "a blue car", "a green car at night"]
PRIOR_NAME = "tiny-kandinsky-prior-TEST"


@pytest.fixture(scope="module")
def prior_folder(comfy_host):
    import folder_paths

    root = folder_paths.get_folder_paths("unclip_priors")[0]
    folder = build_tiny_prior(f"{root}/{PRIOR_NAME}", seed=0)
    yield folder
    shutil.rmtree(folder)


def test_prior_nodes_are_registered_and_list_the_unclip_priors_folder(comfy_host, prior_folder):
    import folder_paths

    assert {"HierPriorLoader", "HierPriorEmbed"} <= set(comfy_host.node_classes)
    assert folder_paths.get_folder_paths("unclip_priors")[0].endswith("unclip_priors")
    schema = comfy_host.node_classes["HierPriorLoader"].define_schema()
    assert PRIOR_NAME in schema.inputs[0].options


def test_workflow_clusters_prompts_in_prior_space(comfy_host, tiny_model, prior_folder):
    prompt = {
        "loader": {"class_type": TINY_LOADER, "inputs": {"checkpoint": ""}},
        "base": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["loader", 1], "text": ""}},
        "prior": {"class_type": "HierPriorLoader", "inputs": {"prior_name": PRIOR_NAME}},
        "embed": {
            "class_type": "HierPriorEmbed",
            "inputs": {
                "prior": ["prior", 0],
                "conditioning": ["base", 0],
                "prompts": "\n".join(PROMPTS),
                "seed": 3,
                "prior_guidance": 4.0,
                "prior_steps": 5,
                "strength": 1.0,
                "noise_augmentation": 0.0,
                "linkage": "ward",
            },
        },
    }
    prompt["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["embed", 1]}}  # an output node
    result = comfy_host.run(prompt)
    tree = PromptTree.from_dict(json.loads(result.outputs["embed"]["hierdiff_tree"][0]))
    embeds = embed_prompts_with_prior(load_prior(prior_folder), PROMPTS, seed=3, guidance_scale=4.0, steps=5)
    expected = prior_tree(embeds, PROMPTS)
    np.testing.assert_allclose(tree.linkage, expected.linkage, rtol=1e-6, atol=1e-9)


def test_prompt_tree_carries_each_prompts_image_embedding_over_the_base_conditioning(
    comfy_host, tiny_model, prior_folder
):
    import nodes as comfy_nodes

    _, clip, _ = tiny_model
    base = comfy_nodes.CLIPTextEncode().encode(clip, "a photo")[0]
    prior = load_prior(prior_folder)
    embed = comfy_host.node_classes["HierPriorEmbed"]
    prompt_set = embed.execute(
        [prior], [base], ["\n".join(PROMPTS)], [3], [4.0], [5], [0.8], [0.1], ["ward"]
    ).args[0]
    assert prompt_set.embedding_space == "prior_image" and prompt_set.prompts == tuple(PROMPTS)
    tokens, extras = prompt_set.conditioning[0]
    n = len(PROMPTS)
    assert tokens.shape == (n, *base[0][0].shape[1:])
    assert all(torch.equal(row, base[0][0][0]) for row in tokens)
    assert extras["pooled_output"].shape[0] == n
    expected = embed_prompts_with_prior(prior, PROMPTS, seed=3, guidance_scale=4.0, steps=5)
    torch.testing.assert_close(extras["hier_prior_image_embeds"], expected, rtol=0, atol=0)
    assert extras["hier_unclip"] == {"strength": 0.8, "noise_augmentation": pytest.approx(0.1)}


def _prior_nodes_module(comfy_host):
    """Our nodes/prior.py as the pack loaded it (its module name depends on the custom_nodes link)."""
    return sys.modules[comfy_host.node_classes["HierPriorEmbed"].__module__]


def _prompt_set(comfy_host, tiny_model, prior_folder):
    import nodes as comfy_nodes

    base = comfy_nodes.CLIPTextEncode().encode(tiny_model[1], "a photo")[0]
    embed = comfy_host.node_classes["HierPriorEmbed"]
    return embed.execute(
        [load_prior(prior_folder)], [base], ["\n".join(PROMPTS)], [3], [4.0], [5], [1.0], [0.0], ["ward"]
    ).args[0]


def test_prior_tree_on_a_text_conditioned_model_is_refused_by_name(comfy_host, tiny_model, prior_folder):
    module = _prior_nodes_module(comfy_host)
    prompt_set = _prompt_set(comfy_host, tiny_model, prior_folder)
    with pytest.raises(ValueError, match="prompt_tree input holds prior image embeddings, but the MODEL"):
        module.check_tree_matches_model(prompt_set, tiny_model[0])


def test_missing_and_incomplete_prior_folders_give_one_line_errors(comfy_host, prior_folder, tmp_path):
    import folder_paths

    from hierdiff_diffusers.prior import PriorFolderError

    loader = comfy_host.node_classes["HierPriorLoader"]
    with pytest.raises(ValueError, match="prior 'no-such-prior' not found in the unclip_priors folders"):
        loader.execute("no-such-prior")
    broken = f"{folder_paths.get_folder_paths('unclip_priors')[0]}/broken-prior-TEST"
    shutil.copytree(prior_folder, broken)
    try:
        shutil.rmtree(f"{broken}/text_encoder")
        with pytest.raises(PriorFolderError, match="missing text_encoder/") as info:
            loader.execute("broken-prior-TEST")
        assert "\n" not in str(info.value)
    finally:
        shutil.rmtree(broken)
