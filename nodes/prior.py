# SPDX-License-Identifier: GPL-3.0-or-later
"""unCLIP prior nodes: load a text-to-image-embedding prior, cluster prompts in its image space.

``HierPriorLoader`` lists the sub-folders of ComfyUI's ``models/unclip_priors/`` (each a diffusers
prior folder, see ``hierdiff_diffusers.prior.LAYOUTS``) and loads one offline. ``HierPriorEmbed`` turns
prompts into one image embedding each and a PROMPT_TREE clustered in that space, whose per-prompt
conditioning is a base text conditioning plus the prompt's image embedding for an unCLIP model's
``y`` (adm) input, the way ComfyUI's unCLIPConditioning node attaches a CLIP vision embedding.

diffusers is imported only when one of these nodes executes: the pack loads, and every other node
works, in a ComfyUI whose diffusers is missing or broken.
"""

from __future__ import annotations

import importlib
import json
import os
from types import ModuleType

import comfy.model_management
import folder_paths
import torch
from comfy.model_base import unclip_adm
from comfy_api.latest import io

from hierdiff_core.prompts import prompts_from_input

from .cluster import linkage_input, prompts_output
from .conditioning import PromptTreeSet
from .sockets import HIER_PRIOR, PROMPT_TREE, TREE_KEY

PRIOR_FOLDER = "unclip_priors"
EMBEDDING_SPACE = "prior_image"
IMAGE_EMBEDS_KEY = "hier_prior_image_embeds"
"""Conditioning extra: (N, D) prior image embeddings, one row per prompt."""
UNCLIP_KEY = "hier_unclip"
"""Conditioning extra: {"strength": float, "noise_augmentation": float}, as unCLIPConditioning takes."""


def diffusers_priors() -> ModuleType:
    """``hierdiff_diffusers.prior``, imported when a prior node runs; one clear error when diffusers
    (or transformers) cannot be imported in this ComfyUI."""
    try:
        return importlib.import_module("hierdiff_diffusers.prior")
    except Exception as exc:  # missing or broken: any import-time failure is the same answer to the user
        raise RuntimeError(
            f"the unCLIP prior nodes need diffusers, which cannot be imported here ({type(exc).__name__}: "
            f"{exc}): install it into ComfyUI's Python with `pip install 'diffusers>=0.30'`"
        ) from exc


def register_prior_folder() -> None:
    """Make ``models/unclip_priors`` a ComfyUI model folder (extra_model_paths.yaml may add more)."""
    if PRIOR_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(
            PRIOR_FOLDER, os.path.join(folder_paths.models_dir, PRIOR_FOLDER), True
        )


def prior_names() -> list[str]:
    """Sub-folders of every registered ``unclip_priors`` folder, sorted."""
    names = set()
    for base in folder_paths.get_folder_paths(PRIOR_FOLDER):
        if os.path.isdir(base):
            names.update(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    return sorted(names)


def prior_path(name: str) -> str:
    """The folder of a listed prior; ValueError naming the searched folders when it is absent."""
    for base in folder_paths.get_folder_paths(PRIOR_FOLDER):
        candidate = os.path.join(base, name)
        if os.path.isdir(candidate):
            return candidate
    searched = ", ".join(folder_paths.get_folder_paths(PRIOR_FOLDER))
    raise ValueError(f"prior {name!r} not found in the unclip_priors folders ({searched})")


def check_tree_matches_model(prompt_set: PromptTreeSet, model) -> None:
    """Refuse a prior-space PROMPT_TREE on a model without unCLIP image conditioning, or of another width.

    model: a ComfyUI MODEL (ModelPatcher). Raises ValueError naming the input. Text-space trees
    pass unchanged.
    """
    if prompt_set.embedding_space != EMBEDDING_SPACE:
        return
    base = model.model
    augmentor = getattr(base, "noise_augmentor", None)
    if augmentor is None:
        raise ValueError(
            f"prompt_tree input holds prior image embeddings, but the MODEL ({type(base).__name__}) takes no "
            "unCLIP image conditioning: use a Stable unCLIP checkpoint, or Prompt Set Cluster for this model"
        )
    width = int(augmentor.data_mean.shape[-1])
    dim = int(prompt_set.conditioning[0][1][IMAGE_EMBEDS_KEY].shape[-1])
    if width != dim:
        raise ValueError(
            f"prompt_tree input holds {dim}-wide prior image embeddings but the MODEL's unCLIP input "
            f"expects {width}: pick a prior made for this checkpoint"
        )


def unclip_adm_rows(prompt_set: PromptTreeSet, model, seed: int) -> torch.Tensor:
    """Per-prompt unCLIP ``y`` rows, shape (N, adm_channels): row i is exactly what ComfyUI computes
    for prompt i alone conditioned through unCLIPConditioning with its image embedding (same
    strength, noise augmentation and seed). The samplers put these rows in ``y`` and mix them per
    group like any per-row conditioning."""
    check_tree_matches_model(prompt_set, model)
    extras = prompt_set.conditioning[0][1]
    settings = extras[UNCLIP_KEY]
    device = comfy.model_management.get_torch_device()
    rows = []
    for embedding in extras[IMAGE_EMBEDS_KEY]:
        unclip = [
            {
                "clip_vision_output": _VisionOutput(embedding[None]),
                "strength": settings["strength"],
                "noise_augmentation": settings["noise_augmentation"],
            }
        ]
        rows.append(unclip_adm(unclip, device, model.model.noise_augmentor, seed=seed - 10))
    return torch.cat(rows)


class _VisionOutput:
    """The one attribute of ComfyUI's CLIP vision output that unCLIP conditioning reads."""

    def __init__(self, image_embeds: torch.Tensor):
        self.image_embeds = image_embeds


def prior_conditioning(
    base: list, image_embeds: torch.Tensor, strength: float, noise_augmentation: float
) -> list:
    """Base CONDITIONING (one entry, batch 1) -> one entry with N rows carrying the image embeddings.

    base: [[(1, T, C), extras]]; image_embeds: (N, D). Tensor extras with one row are repeated to N.
    """
    if len(base) != 1 or base[0][0].shape[0] != 1:
        raise ValueError("conditioning input must be a single prompt's conditioning (one entry, batch 1)")
    tokens, extras = base[0]
    n = image_embeds.shape[0]
    rows = {
        k: v.repeat(n, *([1] * (v.ndim - 1)))
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == 1
        else v
        for k, v in extras.items()
    }
    rows[IMAGE_EMBEDS_KEY] = image_embeds
    rows[UNCLIP_KEY] = {"strength": float(strength), "noise_augmentation": float(noise_augmentation)}
    return [[tokens.repeat(n, 1, 1), rows]]


class HierPriorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_prior_folder()
        return io.Schema(
            node_id="HierPriorLoader",
            display_name="unCLIP Prior Loader",
            category="sampling/hierarchical",
            description="Loads a diffusers text-to-image-embedding prior (Kandinsky 2.2, Karlo, "
            "Stable unCLIP) from models/unclip_priors/, offline.",
            inputs=[
                io.Combo.Input(
                    "prior_name", options=prior_names(), tooltip="A folder in models/unclip_priors/."
                )
            ],
            outputs=[
                HIER_PRIOR.Output(display_name="prior", tooltip="The loaded unCLIP prior, for Prior Embed.")
            ],
        )

    @classmethod
    def execute(cls, prior_name) -> io.NodeOutput:
        priors = diffusers_priors()
        folder = prior_path(prior_name)
        priors.check_prior_folder(folder)
        return io.NodeOutput(priors.load_prior(folder, device=comfy.model_management.get_torch_device()))


class HierPriorEmbed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierPriorEmbed",
            display_name="Prior Embed and Cluster",
            category="sampling/hierarchical",
            description="Prompts -> one prior image embedding each -> a PROMPT_TREE clustered in "
            "image-embedding space, conditioning an unCLIP model through its image input.",
            is_input_list=True,
            inputs=[
                HIER_PRIOR.Input("prior", tooltip="The unCLIP prior from Prior Loader."),
                io.Conditioning.Input(
                    "conditioning", tooltip="Base text conditioning shared by every prompt."
                ),
                io.String.Input("prompts", multiline=True, default="", tooltip="One prompt per line."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                    tooltip="The prior's seed: each prompt's image embedding is what the prior samples for "
                    "that prompt alone with this seed (it also seeds unCLIP's noise augmentation).",
                ),
                io.Float.Input(
                    "prior_guidance", default=4.0, min=0.0, max=30.0, step=0.1,
                    tooltip="The prior's classifier-free guidance scale.",
                ),
                io.Int.Input(
                    "prior_steps", default=25, min=1, max=200, tooltip="The prior's sampling steps."
                ),
                io.Float.Input(
                    "strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                    tooltip="How strongly each prompt's image embedding conditions the model (as "
                    "unCLIPConditioning's strength).",
                ),
                io.Float.Input(
                    "noise_augmentation", default=0.0, min=0.0, max=1.0, step=0.01,
                    tooltip="unCLIP noise augmentation of the image embeddings (as unCLIPConditioning's).",
                ),
                linkage_input(),
            ],
            outputs=[
                PROMPT_TREE.Output(
                    display_name="prompt_tree",
                    tooltip="The prompts, their image embeddings and their tree, for the hierarchical "
                    "samplers.",
                ),
                prompts_output(),
            ],
        )

    @classmethod
    def execute(
        cls,
        prior,
        conditioning,
        prompts,
        seed,
        prior_guidance,
        prior_steps,
        strength,
        noise_augmentation,
        linkage,
    ) -> io.NodeOutput:
        priors = diffusers_priors()
        prior, conditioning, seed = prior[0], conditioning[0], seed[0]
        texts = prompts_from_input(prompts)
        if not texts:
            raise ValueError("prompts input is empty: give one prompt per line")
        embeds = priors.embed_prompts_with_prior(prior, texts, seed, prior_guidance[0], prior_steps[0])
        tree = priors.prior_tree(embeds, texts, method=linkage[0])
        cond = prior_conditioning(conditioning, embeds, strength[0], noise_augmentation[0])
        prompt_set = PromptTreeSet(tree, tuple(texts), cond, EMBEDDING_SPACE)
        return io.NodeOutput(prompt_set, texts, ui={TREE_KEY: [json.dumps(tree.to_dict())]})


NODES: list[type[io.ComfyNode]] = [HierPriorLoader, HierPriorEmbed]
