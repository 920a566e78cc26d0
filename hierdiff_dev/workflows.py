# SPDX-License-Identifier: GPL-3.0-or-later
"""API-format prompts on the testkit's tiny model, the building blocks of the tests' workflows."""

from __future__ import annotations

from . import TINY_LOADER


def prompt_tree_workflow(prompts: list[str], size: int = 64) -> dict[str, dict]:
    """The common head of hierarchical API prompts: tiny model loader ("loader"), empty negative
    ("negative"), Prompt Set Cluster over ``prompts`` ("cluster") and an empty latent of batch 1
    ("latent"). Tests add their sampler nodes to it."""
    return {
        "loader": {"class_type": TINY_LOADER, "inputs": {}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["loader", 1], "text": ""}},
        "cluster": {
            "class_type": "HierPromptSetCluster",
            "inputs": {
                "clip": ["loader", 1],
                "prompts": "\n".join(prompts),
                "linkage": "ward",
                "embedding": "clip_pooled",
            },
        },
        "latent": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": size, "height": size, "batch_size": 1},
        },
    }


def hier_sampling_inputs(steps: int, **overrides) -> dict:
    """Widget values of a Hierarchical KSampler / Shared Trunk Sampler: euler, target saving 0.5."""
    return {
        "seed": 3,
        "steps": steps,
        "cfg": 6.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1.0,
        "budget": "target_saving",
        "budget_value": 0.5,
        "max_batch": 64,
        "noise_mode": "shared",
        "conditioning_mix": "mean",
        **overrides,
    }


def decoded_and_saved(graph: dict[str, dict], source: list, prefix: str = "hier") -> dict[str, dict]:
    """``graph`` plus VAEDecode ("decode", the loader's VAE) of ``source`` and SaveImage ("save")."""
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": source, "vae": ["loader", 2]}}
    graph["save"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["decode", 0], "filename_prefix": prefix},
    }
    return graph


def basic_workflow(
    prompts: list[str] | str,
    *,
    seed: int = 1,
    steps: int = 8,
    width: int = 128,
    height: int = 128,
    cfg: float = 7.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    negative: str = "",
    filename_prefix: str = "hierdiff_test",
    checkpoint: str = "",
) -> dict[str, dict]:
    """An API-format prompt: tiny model loader -> CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage.

    ``prompts`` is one text or a list; each text gets its own KSampler (batch of one, same seed), all
    sharing the loader and the negative. Node ids are stable: "loader", "negative", and for text i
    "positive_i", "latent_i", "sampler_i", "decode_i", "save_i".
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    graph: dict[str, dict] = {
        "loader": {"class_type": TINY_LOADER, "inputs": {"checkpoint": checkpoint}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["loader", 1], "text": negative}},
    }
    for i, text in enumerate(texts):
        graph[f"positive_{i}"] = {
            "class_type": "CLIPTextEncode",
            "inputs": {"clip": ["loader", 1], "text": text},
        }
        graph[f"latent_{i}"] = {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": 1},
        }
        graph[f"sampler_{i}"] = {
            "class_type": "KSampler",
            "inputs": {
                "model": ["loader", 0],
                "positive": [f"positive_{i}", 0],
                "negative": ["negative", 0],
                "latent_image": [f"latent_{i}", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        }
        graph[f"decode_{i}"] = {
            "class_type": "VAEDecode",
            "inputs": {"samples": [f"sampler_{i}", 0], "vae": ["loader", 2]},
        }
        graph[f"save_{i}"] = {
            "class_type": "SaveImage",
            "inputs": {"images": [f"decode_{i}", 0], "filename_prefix": f"{filename_prefix}_{i}"},
        }
    return graph


def trunk_and_branch_workflow(prompts: list[str], steps: int = 6, end_at_step: int = 3) -> dict[str, dict]:
    """Prompt tree head + Shared Trunk Sampler ("trunk", euler, to ``end_at_step``) + Branch Sampler
    ("branch", dpmpp_2m, to the end) + decode and save."""
    graph = prompt_tree_workflow(prompts)
    graph["trunk"] = {
        "class_type": "HierSharedTrunkSampler",
        "inputs": {
            "model": ["loader", 0],
            "prompt_tree": ["cluster", 0],
            "negative": ["negative", 0],
            "latent_image": ["latent", 0],
            "end_at_step": end_at_step,
            **hier_sampling_inputs(steps),
        },
    }
    graph["branch"] = {
        "class_type": "HierBranchSampler",
        "inputs": {
            "model": ["loader", 0],
            "hier_latent": ["trunk", 0],
            "negative": ["negative", 0],
            "cfg": 6.0,
            "sampler_name": "dpmpp_2m",
            "end_at_step": 10000,
        },
    }
    return decoded_and_saved(graph, ["branch", 0])


def guider_workflow(prompts: list[str], steps: int = 5) -> dict[str, dict]:
    """Prompt tree head + Hierarchical Guider ("guider": tau 0.3, max_batch 2, per-root noise, medoid
    mix) under SamplerCustomAdvanced ("custom": euler_ancestral, karras sigmas) + decode and save."""
    graph = prompt_tree_workflow(prompts)
    graph.update(
        {
            "guider": {
                "class_type": "HierGuider",
                "inputs": {
                    "model": ["loader", 0],
                    "prompt_tree": ["cluster", 0],
                    "negative": ["negative", 0],
                    "cfg": 6.0,
                    "budget": "tau",
                    "budget_value": 0.3,
                    "max_batch": 2,
                    "noise_mode": "per_root",
                    "conditioning_mix": "medoid",
                },
            },
            "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
            "sigmas": {
                "class_type": "BasicScheduler",
                "inputs": {"model": ["loader", 0], "scheduler": "karras", "steps": steps, "denoise": 1.0},
            },
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 11}},
            "custom": {
                "class_type": "SamplerCustomAdvanced",
                "inputs": {
                    "noise": ["noise", 0],
                    "guider": ["guider", 0],
                    "sampler": ["select", 0],
                    "sigmas": ["sigmas", 0],
                    "latent_image": ["latent", 0],
                },
            },
        }
    )
    return decoded_and_saved(graph, ["custom", 0])
