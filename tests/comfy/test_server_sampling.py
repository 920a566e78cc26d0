# SPDX-License-Identifier: GPL-3.0-or-later
"""The hierarchical nodes on a real headless ComfyUI server: listing, whole workflows, Cancel."""

from __future__ import annotations

import time

import requests

from hierdiff_dev.workflows import (
    decoded_and_saved,
    guider_workflow,
    hier_sampling_inputs,
    prompt_tree_workflow,
    trunk_and_branch_workflow,
)

PROMPTS = ["a red cat on a sofa", "a red cat on a chair", "a blue dog in the snow", "an old castle at night"]
NODE_IDS = {
    "HierPromptSetCluster": "Prompt Set Cluster",
    "HierSharedTrunkSampler": "Shared Trunk Sampler",
    "HierBranchSampler": "Branch Sampler",
    "HierKSampler": "Hierarchical KSampler",
    "HierGuider": "Hierarchical Guider",
}


def test_object_info_lists_every_hierarchical_node_in_its_category(comfy_server):
    info = comfy_server.object_info()
    for node_id, display_name in NODE_IDS.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["display_name"] == display_name
        assert info[node_id]["category"] == "sampling/hierarchical"
    assert info["HierKSampler"]["output"] == ["LATENT", "STRING"]
    assert info["HierGuider"]["output"] == ["GUIDER"]


def test_trunk_and_branch_workflow_writes_one_image_per_prompt(comfy_server):
    entry = comfy_server.run(trunk_and_branch_workflow(PROMPTS))
    images = entry["outputs"]["save"]["images"]
    assert len(images) == len(PROMPTS)
    assert comfy_server.view(images[0]).startswith(b"\x89PNG")
    assert entry["outputs"]["branch"]["hierdiff_summary"][0].startswith(f"{len(PROMPTS)} images, ")


def test_guider_workflow_with_sampler_custom_advanced(comfy_server):
    entry = comfy_server.run(guider_workflow(PROMPTS))
    assert len(entry["outputs"]["save"]["images"]) == len(PROMPTS)


def _wait_until_running(server, prompt_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = server.get_json("/queue")["queue_running"]
        if any(item[1] == prompt_id for item in running):
            return
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} never started")


def _finished_events(server, prompt_id: str, timeout: float = 60.0) -> list[str]:
    """The status event names of a finished prompt (from /history)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            return [event for event, _ in entry["status"].get("messages", [])]
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish after the interrupt")


def test_cancel_stops_the_run_and_the_next_prompt_runs_normally(comfy_server):
    graph = prompt_tree_workflow(PROMPTS)
    graph["sampler"] = {
        "class_type": "HierKSampler",
        "inputs": {
            "model": ["loader", 0],
            "prompt_tree": ["cluster", 0],
            "negative": ["negative", 0],
            "latent_image": ["latent", 0],
            **hier_sampling_inputs(10000, max_batch=1),
        },
    }
    long_id = comfy_server.queue(decoded_and_saved(graph, ["sampler", 0]))
    _wait_until_running(comfy_server, long_id)
    time.sleep(1.0)  # inside the sampler: the loader and the encoders take well under a second here
    started = time.monotonic()
    requests.post(comfy_server.url + "/interrupt", timeout=10).raise_for_status()
    events = _finished_events(comfy_server, long_id)
    assert time.monotonic() - started < 10, "Cancel took effect only after many model calls"
    assert "execution_interrupted" in events and "execution_success" not in events

    graph["sampler"]["inputs"].update(hier_sampling_inputs(4))
    entry = comfy_server.run(decoded_and_saved(graph, ["sampler", 0]))
    assert len(entry["outputs"]["save"]["images"]) == len(PROMPTS)
