# SPDX-License-Identifier: GPL-3.0-or-later
"""Kandinsky 2.2 (prior + decoder) driven by the hierarchical engine, outside ComfyUI.

The decoder runs as the diffusers ``KandinskyV22Pipeline``'s own loop with its UNet grouped
(:mod:`hierdiff_diffusers.denoiser`); this module adds the published settings, the shared starting
latent and resumable state.

The published configuration: prompts -> Kandinsky 2.2 prior image embeddings (guidance 4) -> Ward
tree over cosine distances in that space -> decoder UNet with DDPM, 40 steps, guidance 10,
512 x 512, one UNet evaluation per active group conditioned on the mean of its members' image
embeddings, guided away from the zero-image negative embedding.

Noise. Every prompt starts from one latent drawn from ``torch.Generator().manual_seed(seed)``
(shape (1, 4, H/8, W/8)). Each group owns a ``torch.Generator`` seeded with
:func:`~hierdiff_core.engine.group_seed` (the run's seed and the group's path in the tree), created
when the group becomes active and consumed one DDPM draw per step while it stays active; every
member row draws from an identical copy, so members receive identical noise and siblings distinct
noise after a split (the engine's :class:`~hierdiff_core.engine.GroupGenerators`). At tau = 0
every prompt is a leaf group from the first step, so prompt i's run
is exactly the plain ``KandinskyV22Pipeline`` called with ``latents`` = the shared start and
``generator=[Generator().manual_seed(group_seed(seed, tree, i)) for each prompt]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

from hierdiff_core.engine import GroupedEvaluator
from hierdiff_core.schedule import Plan

from .denoiser import grouped, timesteps_from
from .prior import PriorFolderError, TextToImagePrior

PUBLISHED = {"steps": 40, "guidance_scale": 10.0, "prior_guidance_scale": 4.0, "height": 512, "width": 512}
"""The configuration of the published Kandinsky 2.2 experiments."""

_DECODER_PARTS = {
    "unet": ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "movq": ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "scheduler": ("scheduler_config.json", ()),
}


@dataclass
class KandinskyDecoder:
    """A loaded Kandinsky 2.2 decoder: the diffusers pipeline with its scheduler replaced by DDPM."""

    pipeline: KandinskyV22Pipeline
    folder: Path

    @property
    def embedding_dim(self) -> int:
        """Width of the image embeddings the UNet is conditioned on."""
        return int(self.pipeline.unet.config.encoder_hid_dim)

    @property
    def device(self) -> torch.device:
        return self.pipeline.unet.device


def check_decoder_folder(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`PriorFolderError` (one line) naming every missing part of a decoder folder."""
    root = Path(folder)
    if not root.is_dir():
        raise PriorFolderError(f"decoder folder {str(root)!r} does not exist")
    missing = []
    for sub, (config, weights) in _DECODER_PARTS.items():
        if not (root / sub / config).is_file():
            missing.append(f"{sub}/{config}")
        if weights and not any((root / sub / w).is_file() for w in weights):
            missing.append(f"{sub}/{' or '.join(weights)}")
    if missing:
        raise PriorFolderError(
            f"decoder folder {str(root)!r} is not a complete Kandinsky 2.2 decoder: "
            f"missing {', '.join(missing)}"
        )


def load_decoder(
    folder: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> KandinskyDecoder:
    """Load a Kandinsky 2.2 decoder folder (``unet/ movq/ scheduler/``, e.g.
    ``kandinsky-community/kandinsky-2-2-decoder``) offline, with a DDPM scheduler built from the
    folder's scheduler configuration (the published runs use DDPM)."""
    check_decoder_folder(folder)
    os.environ["HF_HUB_OFFLINE"] = "1"
    root = Path(folder)
    offline = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=dtype, **offline)
    movq = VQModel.from_pretrained(root / "movq", torch_dtype=dtype, **offline)
    scheduler = DDPMScheduler.from_pretrained(root / "scheduler", **offline)
    if unet.config.addition_embed_type != "image":
        raise PriorFolderError(
            f"decoder folder {str(root)!r}: the UNet is not conditioned on image embeddings "
            f"(addition_embed_type={unet.config.addition_embed_type!r})"
        )
    pipeline = KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(device)
    return KandinskyDecoder(pipeline=pipeline, folder=root)


def check_prior_matches_decoder(prior: TextToImagePrior, decoder: KandinskyDecoder) -> None:
    """ValueError naming both folders when the prior's embedding width differs from the decoder's."""
    if prior.embedding_dim != decoder.embedding_dim:
        raise ValueError(
            f"prior {str(prior.folder)!r} makes {prior.embedding_dim}-wide image embeddings but decoder "
            f"{str(decoder.folder)!r} expects {decoder.embedding_dim}: they are not a matching pair"
        )


def start_latent(decoder: KandinskyDecoder, seed: int, height: int, width: int) -> torch.Tensor:
    """The one starting latent every prompt shares, shape (1, C, height/f, width/f), where f is
    the movq's downscale factor (8 for the real decoder)."""
    factor = 2 ** (len(decoder.pipeline.movq.config.block_out_channels) - 1)
    if height % factor or width % factor:
        raise ValueError(f"height and width must be multiples of {factor}, got {height} x {width}")
    channels = decoder.pipeline.unet.config.in_channels
    generator = torch.Generator("cpu").manual_seed(int(seed))
    latent = torch.randn((1, channels, height // factor, width // factor), generator=generator)
    return latent * decoder.pipeline.scheduler.init_noise_sigma


@dataclass
class DenoiseState:
    """Where a hierarchical denoising run stands after a step, enough to continue it bit for bit.

    step: the last completed step (-1 before the first); latents: (N, C, h, w) rows;
    generators: {node id: torch.Generator state (ByteTensor)} of the groups active at ``step``.
    """

    step: int
    latents: torch.Tensor
    generators: dict[int, torch.Tensor]

    def compact(self, plan: Plan) -> dict:
        """Serialisable form holding one latent row per active group instead of N."""
        if self.step < 0:
            return {"step": self.step, "latents": self.latents[:1].clone(), "generators": {}}
        reps = torch.tensor(plan.groups(self.step).representatives, dtype=torch.long)
        rows = self.latents.index_select(0, reps.to(self.latents.device)).clone()
        return {"step": self.step, "latents": rows, "generators": dict(self.generators)}

    @classmethod
    def expand(cls, data: dict, plan: Plan) -> DenoiseState:
        """Inverse of :meth:`compact`."""
        step = int(data["step"])
        n = plan.tree.n_prompts
        if step < 0:
            return cls(step, data["latents"].repeat(n, 1, 1, 1), {})
        index = torch.tensor(plan.groups(step).row_group, dtype=torch.long)
        return cls(step, data["latents"].index_select(0, index), dict(data["generators"]))


def denoise_hierarchical(
    decoder: KandinskyDecoder,
    plan: Plan,
    image_embeds: torch.Tensor,
    negative_embed: torch.Tensor,
    seed: int,
    guidance_scale: float = PUBLISHED["guidance_scale"],
    height: int = PUBLISHED["height"],
    width: int = PUBLISHED["width"],
    max_batch: int = 16,
    state: DenoiseState | None = None,
    on_step: Callable[[DenoiseState], None] | None = None,
) -> tuple[torch.Tensor, GroupedEvaluator]:
    """Run the decoder's K = ``plan.steps`` DDPM steps for N prompts: the diffusers pipeline's own loop
    with its UNet grouped (:func:`~hierdiff_diffusers.denoiser.grouped`).

    Parameters
    ----------
    image_embeds : (N, D) the prompts' prior image embeddings; a group is conditioned on the mean
        of its members' rows.
    negative_embed : (1, D) the unconditional image embedding (used when guidance_scale > 1).
    state : continue a run from a saved :class:`DenoiseState` instead of from the shared start.
    on_step : called with the state after every completed step (checkpointing, cancelling).

    Returns
    -------
    latents : (N, C, h, w) final latents in prompt order.
    evaluator : the engine's evaluator; ``evaluator.evaluations`` counts group rows evaluated
        (each costs two UNet rows with guidance).

    Resuming goes through the pipeline's loop too: the scheduler's timesteps are cut to the steps
    after ``state.step`` once the pipeline has set them. DDPM computes each step from its timestep
    alone (the previous timestep follows from the step count), and the latents and noise-generator
    states are the saved ones, so a resumed run is bit-identical to an uninterrupted one.
    """
    _check_image_embeds(decoder, image_embeds, plan.tree.n_prompts)
    pipe = decoder.pipeline
    n = plan.tree.n_prompts
    if state is None:
        start = start_latent(decoder, seed, height, width)
        state = DenoiseState(-1, start.repeat(n, 1, 1, 1), {})
    first = state.step + 1
    if first >= plan.steps:
        return state.latents, GroupedEvaluator(plan, lambda *args: None)
    dtype = pipe.unet.dtype
    embeds = image_embeds.to(device=decoder.device, dtype=dtype)
    negative = negative_embed.to(device=decoder.device, dtype=dtype).reshape(1, -1).expand(n, -1)
    with grouped(
        pipe, plan, seed=seed, max_batch=max_batch, generator_states=state.generators, first_step=first
    ) as run:

        def step_end(pipeline: object, index: int, timestep: torch.Tensor, tensors: dict) -> dict:
            if on_step is not None:
                on_step(DenoiseState(run.step, tensors["latents"], run.generator_states()))
            return {}

        with timesteps_from(pipe.scheduler, first), torch.no_grad():
            latents = pipe(
                image_embeds=embeds,
                negative_image_embeds=negative,
                height=height,
                width=width,
                num_inference_steps=plan.steps,
                guidance_scale=guidance_scale,
                generator=run.generator,
                latents=state.latents.to(device=decoder.device, dtype=dtype),
                output_type="latent",
                callback_on_step_end=step_end,
            ).images
    return latents, run.denoiser.evaluator


def _check_image_embeds(decoder: KandinskyDecoder, image_embeds: torch.Tensor, n: int) -> None:
    if image_embeds.ndim != 2 or image_embeds.shape[0] != n:
        raise ValueError(f"image_embeds must be ({n}, D), got {tuple(image_embeds.shape)}")
    if image_embeds.shape[1] != decoder.embedding_dim:
        raise ValueError(
            f"image embeddings are {image_embeds.shape[1]} wide but decoder {str(decoder.folder)!r} "
            f"expects {decoder.embedding_dim}"
        )


def decode_latents(decoder: KandinskyDecoder, latents: torch.Tensor) -> list:
    """(M, C, h, w) latents -> M PIL images, decoding each latent on its own so an image never
    depends on which others are decoded with it."""
    pipe = decoder.pipeline
    images = []
    with torch.no_grad():
        for row in latents:
            pixels = pipe.movq.decode(row[None].to(decoder.device), force_not_quantize=True)["sample"]
            pixels = (pixels * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
            images.extend(pipe.numpy_to_pil(pixels))
    return images
