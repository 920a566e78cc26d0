# SPDX-License-Identifier: GPL-3.0-or-later
"""Prompt sets from templates through ComfyUI's executor: a grid and a cross feed Prompt Set Cluster, one
prompt per item, and the sampler makes one image per prompt."""

from __future__ import annotations

import json

from hierdiff_dev.workflows import decoded_and_saved, hier_sampling_inputs, prompt_tree_workflow


def sampled_from(graph: dict, source: list) -> dict:
    """``graph`` with the cluster's prompts taken from ``source`` and a Hierarchical KSampler after it."""
    graph["cluster"]["inputs"]["prompts"] = source
    graph["sampler"] = {
        "class_type": "HierKSampler",
        "inputs": {"model": ["loader", 0], "prompt_tree": ["cluster", 0], "negative": ["negative", 0],
                   "latent_image": ["latent", 0], **hier_sampling_inputs(3)},
    }  # fmt: skip
    return decoded_and_saved(graph, ["sampler", 0])


def cluster_prompts(result) -> list[str]:
    """The prompts of the tree Prompt Set Cluster reported, in order."""
    return json.loads(result.outputs["cluster"]["hierdiff_tree"][0])["prompts"]


def test_a_template_grid_feeds_the_cluster_one_prompt_per_item(comfy_host):
    graph = prompt_tree_workflow([])
    graph["grid"] = {
        "class_type": "HierPromptTemplate",
        "inputs": {"template": "a {red|blue} {circle|square}\n\nthe sea at {dawn|dusk}"},
    }
    result = comfy_host.run(sampled_from(graph, ["grid", 0]))
    expected = ["a red circle", "a red square", "a blue circle", "a blue square", "the sea at dawn",
                "the sea at dusk"]  # fmt: skip
    assert cluster_prompts(result) == expected
    assert len(result.outputs["save"]["images"]) == len(expected)


def test_a_cross_of_a_list_and_a_text_keeps_list_items_whole(comfy_host):
    graph = prompt_tree_workflow([])
    graph["subjects"] = {"class_type": "HierPromptTemplate", "inputs": {"template": "a {cat|dog}"}}
    graph["cross"] = {
        "class_type": "HierPromptCross",
        "inputs": {"first": ["subjects", 0], "second": "oil\nink, on paper", "pattern": "{second}: {first}"},
    }
    result = comfy_host.run(sampled_from(graph, ["cross", 0]))
    expected = ["oil: a cat", "ink, on paper: a cat", "oil: a dog", "ink, on paper: a dog"]
    assert cluster_prompts(result) == expected
    assert len(result.outputs["save"]["images"]) == 4
