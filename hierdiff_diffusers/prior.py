# SPDX-License-Identifier: GPL-3.0-or-later
"""Text-to-image-embedding priors (diffusers), loaded offline from local folders.

The published method clusters prompts, and conditions groups, in the image-embedding space of an
unCLIP prior (Kandinsky 2.2, Karlo): two prompts whose pictures will look alike get nearby
embeddings even when their wording differs. This module loads such a prior from a folder on disk,
never touching the network, and turns prompts into one image embedding each.

Three folder layouts are recognised (the way each model is published in diffusers format):

========================  =====================================================================
layout                    sub-folders
========================  =====================================================================
``kandinsky-2.2``         ``prior/ text_encoder/ tokenizer/ scheduler/`` and optionally
                          ``image_encoder/`` (needed for the decoder's negative embedding)
``karlo``                 ``prior/ text_encoder/ tokenizer/ prior_scheduler/``
``stable-unclip``         ``prior/ prior_text_encoder/ prior_tokenizer/ prior_scheduler/``
========================  =====================================================================
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler
from transformers import (
    CLIPImageProcessor,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from hierdiff_core.tree import PromptTree, build_tree

# Weight files diffusers / transformers write, in the order they prefer them.
_MODEL_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))

LAYOUTS = {
    # layout: (prior, text encoder, tokenizer, scheduler) sub-folder names
    "kandinsky-2.2": ("prior", "text_encoder", "tokenizer", "scheduler"),
    "karlo": ("prior", "text_encoder", "tokenizer", "prior_scheduler"),
    "stable-unclip": ("prior", "prior_text_encoder", "prior_tokenizer", "prior_scheduler"),
}


class PriorFolderError(ValueError):
    """A prior folder is missing, incomplete or inconsistent; the message is one line naming what."""


@dataclass
class TextToImagePrior:
    """A loaded prior: a diffusers ``KandinskyV22PriorPipeline`` over whichever layout was found.

    The Kandinsky 2.2 prior pipeline's sampling loop (tokenise, CLIP text encoder with projection,
    ``PriorTransformer`` with classifier-free guidance, ``UnCLIPScheduler``) is the same algorithm
    the Karlo and Stable unCLIP pipelines run for their priors, so one loop serves all three.
    """

    pipeline: object  # diffusers.KandinskyV22PriorPipeline
    layout: str
    folder: Path

    @property
    def embedding_dim(self) -> int:
        """Width D of the image embeddings this prior produces."""
        return int(self.pipeline.prior.config.embedding_dim)

    @property
    def device(self) -> torch.device:
        return self.pipeline.prior.device

    def negative_embedding(self) -> torch.Tensor:
        """The unconditional image embedding a Kandinsky 2.2 decoder is guided away from.

        Returns
        -------
        (1, D) float tensor: the image encoder's embedding of an all-zero image, exactly what
        ``KandinskyV22PriorPipeline`` returns as ``negative_image_embeds``.
        """
        if self.pipeline.image_encoder is None:
            raise PriorFolderError(
                f"prior folder {str(self.folder)!r} has no image_encoder/: it is needed for the decoder's "
                "negative (zero-image) embedding"
            )
        with torch.no_grad():
            return self.pipeline.get_zero_embed(1, device=self.device)


class _PriorPipeline(KandinskyV22PriorPipeline):
    """The diffusers prior pipeline, computing the zero-image negative once instead of per call.

    Its ``__call__`` always appends the negative embedding of a zero image; Karlo and Stable unCLIP
    priors ship no image encoder and their decoders need no such negative, so for them the
    pipeline's unused negative output is a zero row (:meth:`TextToImagePrior.negative_embedding`
    refuses them explicitly).
    """

    _zero_embed: torch.Tensor | None = None

    def get_zero_embed(self, batch_size: int = 1, device=None) -> torch.Tensor:
        if self._zero_embed is None:
            if self.image_encoder is None:
                dim = self.prior.config.clip_embed_dim or self.prior.config.embedding_dim
                self._zero_embed = torch.zeros(1, dim, device=self.prior.device, dtype=self.prior.dtype)
            else:
                self._zero_embed = super().get_zero_embed(1, device=device)
        return self._zero_embed.repeat(batch_size, 1)


def _has_any(folder: Path, names: Sequence[str]) -> bool:
    return any((folder / n).is_file() for n in names)


def _missing_parts(root: Path, layout: str) -> list[str]:
    """Names (relative to root) of files a layout needs and the folder lacks."""
    prior, text_encoder, tokenizer, scheduler = LAYOUTS[layout]
    missing = []
    for sub, config, weights in (
        (prior, "config.json", _MODEL_WEIGHTS),
        (text_encoder, "config.json", _TRANSFORMERS_WEIGHTS),
    ):
        if not (root / sub).is_dir():
            missing.append(f"{sub}/")
            continue
        if not (root / sub / config).is_file():
            missing.append(f"{sub}/{config}")
        if not _has_any(root / sub, weights):
            missing.append(f"{sub}/{' or '.join(weights)}")
    if not (root / tokenizer).is_dir():
        missing.append(f"{tokenizer}/")
    elif not any(all((root / tokenizer / f).is_file() for f in files) for files in _TOKENIZER_FILES):
        missing.append(f"{tokenizer}/vocab.json+merges.txt or tokenizer.json")
    if not (root / scheduler / "scheduler_config.json").is_file():
        missing.append(f"{scheduler}/scheduler_config.json")
    return missing


def detect_layout(folder: str | os.PathLike[str]) -> str:
    """Which of :data:`LAYOUTS` a folder follows (decided by its distinctive sub-folders)."""
    root = Path(folder)
    if (root / "prior_text_encoder").is_dir() or (root / "prior_tokenizer").is_dir():
        return "stable-unclip"
    if (root / "prior_scheduler").is_dir():
        return "karlo"
    return "kandinsky-2.2"


def check_prior_folder(folder: str | os.PathLike[str]) -> str:
    """Validate a prior folder without loading weights; return its layout.

    Raises :class:`PriorFolderError` (one line) naming the folder and every missing part.
    """
    root = Path(folder)
    if not root.is_dir():
        raise PriorFolderError(f"prior folder {str(root)!r} does not exist")
    layout = detect_layout(root)
    missing = _missing_parts(root, layout)
    if missing:
        raise PriorFolderError(
            f"prior folder {str(root)!r} is not a complete {layout} prior: missing {', '.join(missing)}"
        )
    return layout


def load_prior(
    folder: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TextToImagePrior:
    """Load a text-to-image-embedding prior from a local folder, fully offline.

    Parameters
    ----------
    folder : path
        A folder in one of the :data:`LAYOUTS` (e.g. ``kandinsky-community/kandinsky-2-2-prior`` as
        downloaded by ``huggingface-cli download ... --local-dir``).
    device, dtype :
        Where and in which precision the prior runs.

    Raises
    ------
    PriorFolderError
        When the folder is missing or incomplete (the message names what is missing), or when the
        text encoder's projection width differs from the prior's embedding width.
    """
    layout = check_prior_folder(folder)
    root = Path(folder)
    # Offline for this process: these libraries must never reach for a hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    prior_dir, text_dir, tokenizer_dir, scheduler_dir = (root / s for s in LAYOUTS[layout])
    offline = {"local_files_only": True}
    prior = PriorTransformer.from_pretrained(prior_dir, torch_dtype=dtype, **offline)
    text_encoder = CLIPTextModelWithProjection.from_pretrained(text_dir, torch_dtype=dtype, **offline)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, **offline)
    scheduler = UnCLIPScheduler.from_pretrained(scheduler_dir, **offline)
    image_encoder = image_processor = None
    if layout == "kandinsky-2.2" and (root / "image_encoder" / "config.json").is_file():
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            root / "image_encoder", torch_dtype=dtype, **offline
        )
        if (root / "image_processor").is_dir():
            image_processor = CLIPImageProcessor.from_pretrained(root / "image_processor", **offline)
    if text_encoder.config.projection_dim != prior.config.embedding_dim:
        raise PriorFolderError(
            f"prior folder {str(root)!r}: text encoder projects to {text_encoder.config.projection_dim} "
            f"but the prior expects {prior.config.embedding_dim}"
        )
    pipeline = _PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        image_processor=image_processor,
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(device)
    return TextToImagePrior(pipeline=pipeline, layout=layout, folder=root)


def embed_prompts_with_prior(
    prior: TextToImagePrior,
    prompts: Sequence[str],
    seed: int,
    guidance_scale: float = 4.0,
    steps: int = 25,
    batch_size: int = 16,
) -> torch.Tensor:
    """One image embedding per prompt, sampled by the prior.

    Each prompt is sampled with its own ``torch.Generator`` seeded with ``seed``, so a prompt's
    embedding is what the plain diffusers prior pipeline returns for that prompt alone with
    ``generator=torch.Generator().manual_seed(seed)``: it does not depend on the other prompts, on
    their order or on ``batch_size`` (up to float rounding of batched matrix products).

    Parameters
    ----------
    prompts : sequence of str, length N >= 1
    seed : int
    guidance_scale : float
        The prior's classifier-free guidance (published: 4).
    steps : int
        Prior sampling steps (diffusers' default 25).
    batch_size : int
        Prompts sampled together.

    Returns
    -------
    E : tensor, shape (N, D), float32 on the CPU, in prompt order.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to embed")
    if steps < 1:
        raise ValueError(f"prior steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pipe = prior.pipeline
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for _ in chunk]
        out = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generators,
        )
        rows.append(out.image_embeds.float().cpu())
    return torch.cat(rows, 0)


def text_embeddings(prior: TextToImagePrior, prompts: Sequence[str]) -> np.ndarray:
    """The prior's CLIP text embeddings (projected, before the prior), shape (N, D) float32.

    These are what clustering on text alone would use; tests contrast them with the prior's image
    embeddings.
    """
    pipe = prior.pipeline
    tokens = pipe.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = pipe.text_encoder(tokens.input_ids.to(prior.device))
    return out.text_embeds.float().cpu().numpy()


def prior_tree(
    image_embeds: torch.Tensor, prompts: Sequence[str], method: str = "ward", metric: str = "cosine"
) -> PromptTree:
    """The prompt hierarchy in the prior's image-embedding space (published: Ward over cosine).

    image_embeds: (N, D) from :func:`embed_prompts_with_prior`, in prompt order.
    """
    return build_tree(
        image_embeds.detach().double().cpu().numpy(), method=method, metric=metric, prompts=prompts
    )
