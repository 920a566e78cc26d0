"""Generate pictures of a prompt set through a running ComfyUI host, independently or hierarchically.

Needs ComfyUI imported and set up by the caller (the in-process host ``hierdiff_dev/host.py`` does it,
for pytest and for ``tools/bench_fidelity.py``); hierarchical sampling needs hierdiff's nodes loaded (their
classes come from ComfyUI's ``NODE_CLASS_MAPPINGS``). Models are the testkit loader's outputs, so the
trained shapes model (``hierdiff_lab/weights/shapes-t2i.safetensors``) and the random tiny model both fit.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from .domains import DOMAINS

TRAINED_CHECKPOINT = DOMAINS["shapes"].checkpoint  # the committed shapes model

__all__ = [
    "TRAINED_CHECKPOINT",
    "Generation",
    "SamplingSettings",
    "decode",
    "hierarchical",
    "independent_batch",
    "x0_trajectory",
]


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """What every run of a comparison shares. Latents are 8x8 (64x64 pixels)."""

    seed: int = 0
    steps: int = 20
    cfg: float = 4.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    width: int = 64
    height: int = 64


@dataclasses.dataclass(frozen=True)
class Generation:
    """One run over a prompt set: latents (N, 4, h, w), pictures (N, H, W, 3) uint8, and the model
    evaluations it cost (per conditional row, not doubled for guidance)."""

    latents: torch.Tensor
    images: np.ndarray
    model_evaluations: int
    plan: dict | None = None


def _empty_latent(settings: SamplingSettings, batch: int) -> dict:
    return {"samples": torch.zeros(batch, 4, settings.height // 8, settings.width // 8)}


def _encode(clip, text: str) -> list:
    tokens = clip.tokenize(text)
    return clip.encode_from_tokens_scheduled(tokens)


def decode(vae, latents: torch.Tensor) -> np.ndarray:
    """(N, 4, h, w) latents -> (N, H, W, 3) uint8 pictures, through ComfyUI's VAE."""
    pixels = vae.decode(latents)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _batch_positive(clip, prompts: list[str]) -> list:
    """One conditioning entry with a row per prompt, (N, 77, C)."""
    conditionings = [_encode(clip, text)[0] for text in prompts]
    positive = [[torch.cat([c[0] for c in conditionings]), {**conditionings[0][1]}]]
    positive[0][1].pop("pooled_output", None)  # SD1.5 has no pooled conditioning input
    return positive


def independent_batch(model, clip, vae, prompts: list[str], settings: SamplingSettings) -> Generation:
    """Stock ComfyUI sampling (``common_ksampler``, as KSampler) of all prompts as one batch: per-row
    conditioning of shape (N, 77, C), the batch noise KSampler draws for the seed."""
    import nodes as comfy_nodes  # ComfyUI's top-level module (not hierdiff's `nodes` package)

    (latent,) = comfy_nodes.common_ksampler(
        model,
        settings.seed,
        settings.steps,
        settings.cfg,
        settings.sampler_name,
        settings.scheduler,
        _batch_positive(clip, prompts),
        _encode(clip, ""),
        _empty_latent(settings, len(prompts)),
    )
    samples = latent["samples"]
    return Generation(samples, decode(vae, samples), settings.steps * len(prompts))


def x0_trajectory(model, clip, vae, prompts: list[str], settings: SamplingSettings) -> np.ndarray:
    """The pictures the model predicts at every step of stock sampling (as :func:`independent_batch`):
    (steps, N, H, W, 3) uint8, the decoded x0 prediction after each step; the last is the result."""
    import comfy.sample

    latent = _empty_latent(settings, len(prompts))["samples"]
    predictions: list[torch.Tensor] = []

    def keep(step: int, x0: torch.Tensor, x: torch.Tensor, total: int) -> None:
        predictions.append(model.model.process_latent_out(x0.detach().clone()))

    samples = comfy.sample.sample(
        model,
        comfy.sample.prepare_noise(latent, settings.seed),
        settings.steps,
        settings.cfg,
        settings.sampler_name,
        settings.scheduler,
        _batch_positive(clip, prompts),
        _encode(clip, ""),
        latent,
        callback=keep,
        disable_pbar=True,
        seed=settings.seed,
    )
    if len(predictions) != settings.steps:
        raise RuntimeError(f"{settings.sampler_name} reported {len(predictions)} of {settings.steps} steps")
    predictions[-1] = samples  # the last x0 is the result up to the sampler's final noise handling
    return np.stack([decode(vae, x0) for x0 in predictions])


def first_step_predictions(model, clip, prompts: list[str], settings: SamplingSettings) -> np.ndarray:
    """(N, C, h, w) the x0 prediction of every prompt after the first step of the schedule, from the
    seed's batch-1 noise that every prompt of a hierarchical run starts from, with guidance: what a
    first-step tree clusters (``nodes.guider.first_step_tree``)."""
    import comfy.sample
    import comfy.samplers

    latent = _empty_latent(settings, 1)["samples"]
    rows = (len(prompts), *latent.shape[1:])
    noise = comfy.sample.prepare_noise(latent, settings.seed).expand(rows)
    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, settings.scheduler, settings.steps)
    predictions: list[torch.Tensor] = []
    comfy.sample.sample(
        model, noise, 1, settings.cfg, settings.sampler_name, settings.scheduler,
        _batch_positive(clip, prompts), _encode(clip, ""), latent.expand(rows),
        callback=lambda step, x0, x, total: predictions.append(x0.detach().clone()),
        disable_pbar=True, seed=settings.seed, sigmas=sigmas[:2],
    )  # fmt: skip
    return predictions[0].float().cpu().numpy()


def hierarchical(
    node_classes: dict[str, type],
    model,
    clip,
    vae,
    prompts: list[str],
    settings: SamplingSettings,
    budget: str,
    budget_value: float,
    tree_from: str = "prompt_tree",
    images_per_prompt: int = 1,
    conditioning_mix: str = "mean",
    spend: str = "sharing",
) -> Generation:
    """hierdiff's Prompt Set Cluster then Hierarchical KSampler (every prompt starts from the noise
    stock KSampler draws for the seed and a batch of one). ``budget``: "target_saving", "tau" (0 is
    ordinary sampling, equal to stock KSampler per prompt) or "evaluations_per_image"; ``tree_from``:
    the sampler's tree source ("prompt_tree" or "first_step"); ``images_per_prompt`` copies of each
    prompt, prompt after prompt; ``conditioning_mix``: what a group is conditioned on ("mean" as
    published, or "medoid"); ``spend``: how the budget is spent (the sampler's ``spend`` input)."""
    cluster, sampler = node_classes["HierPromptSetCluster"], node_classes["HierKSampler"]
    prompt_tree = cluster.execute(
        clip=[clip], prompts=["\n".join(prompts)], linkage=["ward"], embedding=["clip_pooled"]
    ).result[0]
    output = sampler.execute(
        model=model,
        prompt_tree=prompt_tree,
        negative=_encode(clip, ""),
        latent_image=_empty_latent(settings, 1),
        seed=settings.seed,
        steps=settings.steps,
        cfg=settings.cfg,
        sampler_name=settings.sampler_name,
        scheduler=settings.scheduler,
        denoise=1.0,
        budget=budget,
        budget_value=budget_value,
        max_batch=64,
        noise_mode="shared",
        conditioning_mix=conditioning_mix,
        tree_from=tree_from,
        images_per_prompt=images_per_prompt,
        spend=spend,
    )
    latent, plan_json = output.result
    plan = json.loads(plan_json)
    samples = latent["samples"]
    return Generation(samples, decode(vae, samples), int(plan["model_evaluations"]), plan)
