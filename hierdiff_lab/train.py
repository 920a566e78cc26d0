"""Train a tiny SD1.5-architecture text-to-image model on a synthetic domain (shapes or textures).

The model is ComfyUI's own SD1.5 classes (the openaimodel UNet, the SD1 CLIP text transformer behind
the real SD1 tokenizer, the KL autoencoder) at tiny widths, in the layout of the hierdiff testkit's
tiny model (``testkit/tiny_model.py``): its text encoder config unchanged, its own UNet and VAE widths
(``UNET_OVERRIDES``, ``VAE_OVERRIDES``, both stored in the file's metadata or detected). The
checkpoint it writes loads through the testkit loader's ``checkpoint`` input exactly like the random
tiny model.

Two phases, so the training can run on a machine without the ComfyUI host's full dependencies:

``prepare`` (needs the ComfyUI host: testkit configs, SD1 tokenizer) writes a small ``.npz`` with the
model spec and the tokenised captions of the training set;
``fit`` (needs torch and ComfyUI's ``comfy`` package only) regenerates the images from the seed, trains
the VAE, normalises its latents to SD1.5's scale, trains the UNet and text encoder jointly
(eps-prediction, SD1.5's scaled-linear betas so ComfyUI's SD15 model sampling matches, caption dropout
for classifier-free guidance, EMA weights) and writes the safetensors checkpoint.

``python -m hierdiff_lab.train --out PATH`` does both (CPU by default; ``--preset gpu`` for the longer
schedule used for the committed weights). Everything is deterministic for a seed on a given device.

``--domain`` picks the test bed (:data:`hierdiff_lab.domains.DOMAINS`): ``shapes``
(:mod:`hierdiff_lab.synthetic`, 64 px, the default; its data and schedule are unchanged, so the
committed ``weights/shapes-t2i.safetensors`` stays reproducible) or ``textures``
(:mod:`hierdiff_lab.textures`, 128 px pictures and 16 x 16 latents, checked by
:mod:`hierdiff_lab.texture_checker`, written to ``weights/textures-t2i.safetensors``; its CPU schedule is
the ``textures-cpu`` preset). The domain decides the pictures, captions, evaluation captions, checker,
default output and the metadata's key prefix (``hierdiff.<domain>_t2i.``); its :data:`RECIPES` entry
the UNet widths and the default preset; everything else is one code path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .domains import DOMAINS, Domain

ROOT = Path(__file__).resolve().parent.parent

# SD1.5's latent scale (ComfyUI's latent_formats.SD15) and beta schedule (scaled linear, 1000 steps).
SD15_LATENT_SCALE = 0.18215
SD15_LINEAR_START, SD15_LINEAR_END, SD15_TIMESTEPS = 0.00085, 0.012, 1000

# The UNet at the testkit's width with two levels (8 x 8, 4 x 4 for the 8 x 8 latents) and no attention
# at 8 x 8: a CPU training step at batch 128 takes 0.32 s, against 0.55 s with that attention and 0.70 s
# for three levels; the text still reaches every place through the 4 x 4 transformers.
UNET_OVERRIDES = {
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": [1, 1],
    "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1],
}

MIN_SNR_GAMMA = 5.0

# The VAE is twice the testkit's width, doubled again at the two coarse levels (16 x 16, 8 x 8). Its
# GroupNorms have 32 groups: at 32 channels each normalises one channel over the image, which erases
# a flat background's colour; at 64, channel pairs keep it. Trained alike, the testkit's widths
# reconstructed 14 % of images with all five attributes right, these 61 % (1,500 steps of 32 crops).
VAE_OVERRIDES = {"ch": 64, "ch_mult": [1, 1, 2, 2]}

# The textures domain's 16 x 16 latents: three levels (16 x 16, 8 x 8, 4 x 4), the transformers at 4 x 4
# only. Measured CPU training steps (2 threads, idle 2-core machine) at batch 128 / 64: 0.72 s / 0.40 s,
# against 1.05 s / 0.58 s for the shapes layout's two levels (its transformers then at 8 x 8) and
# 1.31 s / 0.65 s for three levels with transformers at 8 x 8 and 4 x 4 (the shapes UNet: 0.37 s).
TEXTURES_UNET_OVERRIDES = {
    "model_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": [1, 1, 1],
    "transformer_depth": [0, 0, 1],
    "transformer_depth_output": [0, 0, 0, 0, 1, 1],
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a domain's model is built and trained: the UNet's departures from the testkit's, the CPU
    schedule used when no ``--preset`` is given, and the note stored in the checkpoint."""

    unet_overrides: dict
    default_preset: str
    note: str


RECIPES: dict[str, Recipe] = {
    "shapes": Recipe(UNET_OVERRIDES, "cpu", "Trained on hierdiff_lab's synthetic shapes; a demo model."),
    "textures": Recipe(
        TEXTURES_UNET_OVERRIDES,
        "textures-cpu",
        "Trained on hierdiff_lab's synthetic textures (details decided late); a demo model.",
    ),
}
SHAPES = DOMAINS["shapes"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training schedule. ``presets`` holds the CPU and GPU schedules."""

    seed: int = 0
    samples: int = 20000  # training images (regenerated from the seed)
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_crop: int = 32  # VAE trains on random crops (it is fully convolutional): 4x cheaper at 32
    vae_lr: float = 1e-3
    unet_steps: int = 5000
    unet_batch: int = 128
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    log_every: int = 250
    # Wall-clock cap on the UNet phase: after 50 steps the step count is cut to what fits (then printed
    # and stored in the checkpoint's metadata; rerun with that unet_steps and no cap to reproduce).
    unet_minutes: float = 0.0


PRESETS: dict[str, TrainConfig] = {
    "cpu": TrainConfig(),
    # On a GPU the step time of a model this small is kernel launches, not arithmetic: large batches
    # are nearly free, so the GPU schedule sees far more images per step.
    "gpu": TrainConfig(
        samples=40000,
        vae_steps=3000,
        vae_batch=64,
        vae_crop=64,
        unet_steps=24000,
        unet_batch=1024,
        unet_lr=1e-3,
        log_every=500,
    ),
    # Continuing a checkpoint on the CPU (``--init``): fewer images to encode, more UNet steps.
    "cpu-continue": TrainConfig(
        samples=8000, vae_steps=0, unet_steps=3000, unet_batch=128, unet_lr=2e-4, log_every=100
    ),
    "smoke": TrainConfig(samples=256, vae_steps=4, vae_batch=8, unet_steps=4, unet_batch=8, log_every=2),
    # The textures domain (128 px) on the CPU. Measured with 2 threads on an idle 2-core machine: a VAE
    # step 0.80 s (32 crops of 32 px; 3.6 s at 64 px), a UNet step 0.72 s (batch 128), encoding 8000
    # pictures 5.5 min, drawing them 1 min: about 27 + 60 + 8 min, 1.6 hours in all.
    "textures-cpu": TrainConfig(samples=8000, vae_steps=2000, unet_steps=5000),
}


def use_comfy_host(cpu: bool) -> None:
    """Pick ComfyUI's device mode (ComfyUI is importable from the git-ignored ``.comfyui/`` through the
    ``.pth`` file ``tools/setup_env.sh`` writes into the virtualenv).

    Must run before anything imports ``comfy.model_management``.
    """
    from comfy.cli_args import args

    args.cpu = cpu
    # On the CPU ComfyUI picks its sub-quadratic attention, made for inference memory: chunked and
    # checkpointed, its backward pass doubled the UNet's training step. PyTorch's fused attention
    # computes the same function.
    args.use_pytorch_cross_attention = True


# ----------------------------------------------------------------------------------------------- prepare
def model_spec(domain: Domain = SHAPES) -> dict:
    """The model's configs and checkpoint metadata, from the testkit (needs the full ComfyUI host)."""
    import comfy.supported_models

    from testkit import tiny_model

    unet_config = {**tiny_model.UNET_CONFIG, **RECIPES[domain.name].unet_overrides}
    # SD15 adds its fixed extras (attention heads); the UNet is built with exactly this dict.
    full_unet_config = dict(comfy.supported_models.SD15(dict(unet_config)).unet_config)
    return {
        "unet": full_unet_config,
        "text": tiny_model.TEXT_CONFIG,
        "vae": {**tiny_model.VAE_CONFIG, "ddconfig": {**tiny_model.VAE_CONFIG["ddconfig"], **VAE_OVERRIDES}},
        "prefixes": {
            "unet": tiny_model.UNET_PREFIX,
            "clip": tiny_model.CLIP_PREFIX,
            "vae": tiny_model.VAE_PREFIX,
        },
        "metadata_keys": {
            "format": tiny_model.META_FORMAT,
            "format_value": tiny_model.FORMAT_VALUE,
            "text_config": tiny_model.META_TEXT_CONFIG,
            "vae_config": tiny_model.META_VAE_CONFIG,
            "seed": tiny_model.META_SEED,
        },
    }


def tokenize(captions: list[str], embedding_size: int) -> np.ndarray:
    """(N, 77) int32 token ids, exactly as ComfyUI's SD1 tokenizer makes them for CLIPTextEncode."""
    import comfy.sd1_clip

    tokenizer = comfy.sd1_clip.SDTokenizer(embedding_size=embedding_size)
    rows = []
    for text in captions:
        (batch,) = tokenizer.tokenize_with_weights(text)  # short captions: one 77-token chunk
        rows.append([int(token) for token, _weight in batch])
    return np.asarray(rows, dtype=np.int32)


def prepare(config: TrainConfig, path: Path, domain: Domain = SHAPES) -> Path:
    """Write the ``fit`` phase's input: model spec and tokenised captions (a few MB, compressed)."""
    spec = model_spec(domain)
    captions = [
        text for _image, text, _scene in domain.data.samples(config.seed, config.samples, domain.resolution)
    ]
    unique = sorted(set(captions))
    index = {text: i for i, text in enumerate(unique)}
    eval_captions = evaluation_captions(config.seed, domain=domain)
    tokens = tokenize(unique + eval_captions + [""], spec["text"]["hidden_size"])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        spec=np.array(json.dumps(spec)),
        domain=np.array(domain.name),
        seed=np.array(config.seed),
        samples=np.array(config.samples),
        caption_tokens=tokens[: len(unique)],
        eval_captions=np.array(eval_captions),
        eval_tokens=tokens[len(unique) : -1],
        caption_index=np.array([index[text] for text in captions], dtype=np.int32),
        empty_tokens=tokens[-1],
    )
    return path


def evaluation_captions(seed: int, count: int = 96, domain: Domain = SHAPES) -> list[str]:
    """Canonical captions of ``count`` distinct scenes drawn with ``seed``: the held-out check."""
    scenes = domain.data.all_scenes()
    order = np.random.default_rng(seed + 1).permutation(len(scenes))[:count]
    return [domain.data.canonical_caption(scenes[i]) for i in order]


# ------------------------------------------------------------------------------------------------- fit
def reset_parameters(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Training initialisation (ComfyUI's ops skip PyTorch's): PyTorch's default init per layer type,
    token/position embeddings N(0, 0.02) as CLIP's, deterministic from ``generator``."""
    state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    bases = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    for child in module.modules():
        if isinstance(child, torch.nn.Embedding):
            torch.nn.init.normal_(child.weight, std=0.02)
            continue
        for base in bases:
            if isinstance(child, base):
                base.reset_parameters(child)
                break
    torch.random.set_rng_state(state)


def build_modules(spec: dict, device: torch.device, generator: torch.Generator):
    """(unet, text_model, vae): ComfyUI's SD1.5 module classes at the spec's widths, initialised."""
    import comfy.clip_model
    import comfy.ldm.models.autoencoder
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    unet_config = {k: v for k, v in spec["unet"].items() if k != "dtype"}
    unet = UNetModel(**unet_config, dtype=torch.float32, device=device, operations=ops)
    text_model = comfy.clip_model.CLIPTextModel(dict(spec["text"]), torch.float32, device, ops)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(**json.loads(json.dumps(spec["vae"]))).to(device)
    for module in (unet, text_model, vae):
        reset_parameters(module, generator)
    with torch.no_grad():  # zero output layer: the UNet starts by predicting zero noise
        unet.out[-1].weight.zero_()
        unet.out[-1].bias.zero_()
    return unet, text_model, vae


def _log(stage: str, step: int, total: int, losses: list[torch.Tensor], started: float) -> None:
    # Losses stay on the device between reports: one synchronisation per report, not per step.
    mean = float(torch.stack(losses).mean())
    print(f"[{stage}] step {step:6d}/{total}  loss {mean:.5f}  {time.time() - started:7.1f}s", flush=True)


def warmup_cosine(optimiser: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5 % of ``total`` steps, then cosine decay to zero."""
    warmup = max(1, total // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )


def vae_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of the latent for pixels in [-1, 1]; each (B, 4, H/8, W/8)."""
    mean, logvar = vae.quant_conv(vae.encoder(pixels)).chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def train_vae(vae, images: np.ndarray, config: TrainConfig, device: torch.device, generator: torch.Generator):
    """Reconstruction (MSE) plus a small KL term, on random crops; prints the loss curve."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0, fused=True)
    # A constant rate left the reconstruction loss climbing back after its minimum (0.007 at step 2000,
    # 0.028 at 4000 for the first committed model): decay it, and clip the rare large gradients.
    schedule = warmup_cosine(optimiser, config.vae_steps)
    resolution = images.shape[1]
    losses: list[torch.Tensor] = []
    started = time.time()
    for step in range(1, config.vae_steps + 1):
        rows = torch.randint(len(images), (config.vae_batch,), generator=generator).numpy()
        top, left = (
            int(v) for v in torch.randint(resolution - config.vae_crop + 1, (2,), generator=generator)
        )
        crop = images[rows, top : top + config.vae_crop, left : left + config.vae_crop]
        pixels = torch.from_numpy(crop).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        mean, logvar = vae_posterior(vae, pixels)
        noise = torch.randn(mean.shape, generator=generator).to(device)
        latent = mean + torch.exp(0.5 * logvar) * noise
        reconstruction = vae.decoder(vae.post_quant_conv(latent))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = torch.nn.functional.mse_loss(reconstruction, pixels) + 1e-4 * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.detach())
        if step % config.log_every == 0 or step == config.vae_steps:
            _log("vae", step, config.vae_steps, losses[-config.log_every :], started)
    return [float(v) for v in torch.stack(losses).cpu()]


def _picture_batch(side: int) -> int:
    """Pictures per VAE pass: 256 at 64 px, fewer for larger pictures (the same activation memory)."""
    return max(1, 256 * 64 * 64 // (side * side))


@torch.no_grad()
def encode_images(vae, images: np.ndarray, device: torch.device, batch: int | None = None) -> torch.Tensor:
    """(N, 4, H/8, W/8) latent means (the posterior mode, as ComfyUI's VAEEncode returns)."""
    batch = batch or _picture_batch(images.shape[1])
    out = []
    for start in range(0, len(images), batch):
        pixels = torch.from_numpy(images[start : start + batch]).to(device).permute(0, 3, 1, 2).float()
        out.append(vae_posterior(vae, pixels / 127.5 - 1.0)[0])
    return torch.cat(out)


@torch.no_grad()
def decode_images(vae, latents: torch.Tensor) -> np.ndarray:
    """(N, 4, h, w) latents (unscaled, as :func:`encode_images` gives) -> (N, 8h, 8w, 3) uint8 pictures,
    decoded :func:`_picture_batch` at a time."""
    batch = _picture_batch(8 * latents.shape[-1])
    out = []
    for start in range(0, len(latents), batch):
        pixels = vae.decoder(vae.post_quant_conv(latents[start : start + batch]))
        out.append(((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Fold a per-channel shift and scale into the VAE's quant convs so that latents times SD1.5's
    0.18215 have zero mean and unit variance per channel (the scale the sampler's noise assumes).
    Returns the latents in the new scale (unscaled by 0.18215)."""
    mean = latents.mean(dim=(0, 2, 3))
    scale = 1.0 / (SD15_LATENT_SCALE * latents.std(dim=(0, 2, 3)))
    channels = len(mean)
    quant, post = vae.quant_conv, vae.post_quant_conv
    # quant_conv's first `channels` outputs are the mean: z' = (z - m) * k.
    quant.weight[:channels] *= scale.view(-1, 1, 1, 1)
    quant.bias[:channels] = (quant.bias[:channels] - mean) * scale
    # logvar rows: var scales by k^2.
    quant.bias[channels:] += 2.0 * torch.log(scale)
    # post_quant_conv(z) = W z + b = (W / k) z' + (b + W m).
    post.bias += post.weight[:, :, 0, 0] @ mean
    post.weight /= scale.view(1, -1, 1, 1)
    return (latents - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)


@torch.no_grad()
def reconstruction_acceptance(
    vae, seed: int, device: torch.device, count: int = 192, domain: Domain = SHAPES
) -> dict[str, float]:
    """Checker acceptance of the VAE's reconstructions of ``count`` images drawn with another seed than
    the training set's: the ceiling of what the UNet can reach through this VAE."""
    images, captions, _scenes = domain.data.dataset(seed + 1, count, domain.resolution)
    return acceptance(decode_images(vae, encode_images(vae, images, device)), captions, domain)


def alphas_cumprod(device: torch.device) -> torch.Tensor:
    """(1000,) SD1.5's cumulative alphas, from ComfyUI's own beta schedule function."""
    from comfy.ldm.modules.diffusionmodules.util import make_beta_schedule

    betas = torch.as_tensor(
        make_beta_schedule(
            "linear", SD15_TIMESTEPS, linear_start=SD15_LINEAR_START, linear_end=SD15_LINEAR_END
        )
    )
    return torch.cumprod(1.0 - betas, dim=0).float().to(device)


def encode_text(text_model, tokens: torch.Tensor) -> torch.Tensor:
    """(B, 77, C) cross-attention context: the last layer after the final layer norm, as SD1 CLIP's
    ``layer="last"`` gives CLIPTextEncode."""
    return text_model(tokens, None, dtype=torch.float32)[0]


def allow_text_backprop(text_model) -> None:
    """ComfyUI's CLIP layers add residuals in place (``x += ...``), which overwrites the tensor their
    layer norms saved for the backward pass; feeding each layer norm a copy keeps autograd valid
    without changing a single value of the forward pass."""
    for module in text_model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.register_forward_pre_hook(lambda _module, args: (args[0].clone(), *args[1:]))


def train_unet(
    unet,
    text_model,
    x0: torch.Tensor,
    tokens: torch.Tensor,
    empty: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
):
    """Joint UNet and text-encoder training (eps-prediction); returns (losses, ema_state)."""
    allow_text_backprop(text_model)
    parameters = list(unet.parameters()) + list(text_model.parameters())
    # The fused AdamW (one kernel for all tensors; CPU too) instead of PyTorch's per-tensor loop on the CPU.
    optimiser = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=0.0, fused=True)
    total = config.unet_steps
    schedule = warmup_cosine(optimiser, total)
    ema = [p.detach().clone() for p in parameters]
    abar = alphas_cumprod(device)
    losses: list[torch.Tensor] = []
    started = time.time()
    step = 0
    while step < total:
        step += 1
        if config.unet_minutes and step == 51:
            seconds_per_step = (time.time() - started) / 50
            total = min(total, int(config.unet_minutes * 60 / seconds_per_step))
            print(
                f"[unet] {seconds_per_step * 1000:.1f} ms/step: {total} steps fit {config.unet_minutes} min"
            )
        rows = torch.randint(len(x0), (config.unet_batch,), generator=generator).to(device)
        batch_tokens = tokens[rows]
        dropped = (torch.rand(config.unet_batch, generator=generator) < config.caption_dropout).to(device)
        batch_tokens = torch.where(dropped[:, None], empty[None, :], batch_tokens)
        t = torch.randint(SD15_TIMESTEPS, (config.unet_batch,), generator=generator).to(device)
        noise = torch.randn(x0[rows].shape, generator=generator).to(device)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0[rows] + (1 - a).sqrt() * noise
        predicted = unet(noisy, timesteps=t.float(), context=encode_text(text_model, batch_tokens))
        # Min-SNR weighting (Hang et al. 2023) for eps-prediction: min(SNR, gamma) / SNR, so the nearly
        # clean timesteps, whose noise is hard to see and matters little, stop dominating the gradient.
        snr = a.view(-1) / (1 - a.view(-1))
        weight = snr.clamp(max=MIN_SNR_GAMMA) / snr
        loss = (weight * (predicted - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        schedule.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in parameters], 1.0 - decay)
        losses.append(loss.detach())
        if step % config.log_every == 0 or step == total:
            _log("unet", step, total, losses[-config.log_every :], started)
    return [float(v) for v in torch.stack(losses).cpu()], ema


@torch.no_grad()
def sample_ddim(
    unet,
    text_model,
    vae,
    tokens: torch.Tensor,
    empty: torch.Tensor,
    seed: int,
    steps: int = 25,
    cfg: float = 4.0,
    latent_size: int = 8,
) -> np.ndarray:
    """Quick in-training check (not ComfyUI's sampler): deterministic DDIM with classifier-free
    guidance. tokens (B, 77) -> images (B, 8 latent_size, 8 latent_size, 3) uint8."""
    device = tokens.device
    abar = alphas_cumprod(device)
    generator = torch.Generator().manual_seed(seed)
    latent_shape = (len(tokens), 4, latent_size, latent_size)
    x = torch.randn(latent_shape, generator=generator).to(device)
    context = torch.cat(
        [encode_text(text_model, tokens), encode_text(text_model, empty[None].expand_as(tokens))]
    )
    timesteps = torch.linspace(SD15_TIMESTEPS - 1, 0, steps).round().long().tolist()
    for i, t in enumerate(timesteps):
        both = unet(
            torch.cat([x, x]), timesteps=torch.full((2 * len(x),), float(t), device=device), context=context
        )
        conditional, unconditional = both.chunk(2)
        eps = unconditional + cfg * (conditional - unconditional)
        a = abar[t]
        a_next = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, device=device)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return decode_images(vae, x / SD15_LATENT_SCALE)


def acceptance(images: np.ndarray, captions: list[str], domain: Domain = SHAPES) -> dict[str, float]:
    """Fraction of images the domain's checker accepts per attribute (among the captions that name it),
    and for all attributes together."""
    results = [domain.checker.check(image, text) for image, text in zip(images, captions, strict=True)]
    named = {name: [r[name] for r in results if name in r] for name in domain.data.ATTRIBUTES}
    rates = {name: float(np.mean(values)) for name, values in named.items() if values}
    rates["all"] = float(np.mean([all(r.values()) for r in results]))
    return rates


def save_grid(images: np.ndarray, path: Path, columns: int = 12) -> None:
    """Tile (B, H, W, 3) uint8 images into one PNG."""
    from PIL import Image

    rows = math.ceil(len(images) / columns)
    height, width = images.shape[1:3]
    grid = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    Image.fromarray(grid).save(path)


def checkpoint_state(spec: dict, unet, text_model, vae) -> dict[str, torch.Tensor]:
    """The standard SD checkpoint layout, float16 (halves the committed file; ComfyUI upcasts)."""
    prefixes = spec["prefixes"]
    state: dict[str, torch.Tensor] = {}
    parts = (
        (prefixes["unet"], unet.state_dict()),
        # SD1.5 checkpoints carry the text transformer only (``cond_stage_model.transformer.text_model.``).
        (prefixes["clip"] + "transformer.text_model.", text_model.text_model.state_dict()),
        (prefixes["vae"], vae.state_dict()),
    )
    for prefix, part in parts:
        for key, tensor in part.items():
            state[prefix + key] = tensor.detach().to("cpu", torch.float16).contiguous()
    return state


def unused_token_rows(prepared: np.lib.npyio.NpzFile, vocabulary: int) -> torch.Tensor:
    """(V,) bool: the token-embedding rows no training caption (nor the empty prompt) uses."""
    used = np.union1d(np.unique(prepared["caption_tokens"]), prepared["empty_tokens"])
    unused = torch.ones(vocabulary, dtype=torch.bool)
    unused[torch.from_numpy(used.astype(np.int64))] = False
    return unused


def load_weights(path: Path, spec: dict, unet, text_model, vae) -> dict[str, str]:
    """Load a checkpoint written by :func:`fit` into the modules; returns its metadata."""
    import safetensors

    with safetensors.safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key).float() for key in handle.keys()}
        metadata = handle.metadata()
    prefixes = spec["prefixes"]
    parts = (
        (prefixes["unet"], unet),
        (prefixes["clip"] + "transformer.text_model.", text_model.text_model),
        (prefixes["vae"], vae),
    )
    for prefix, module in parts:
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return metadata


def load_prepared(
    prepared: Path, config: TrainConfig, domain: Domain = SHAPES
) -> tuple[np.lib.npyio.NpzFile, dict]:
    """(the ``prepare`` file's arrays, its model spec); raises if it was prepared for another data set."""
    data = np.load(prepared)
    spec = json.loads(str(data["spec"]))
    prepared_domain = str(data["domain"]) if "domain" in data else "shapes"  # files from before domains
    if prepared_domain != domain.name:
        raise ValueError(f"{prepared} was prepared for the {prepared_domain} domain, not {domain.name}")
    if int(data["seed"]) != config.seed or int(data["samples"]) != config.samples:
        raise ValueError(
            f"{prepared} was prepared for seed {int(data['seed'])}, {int(data['samples'])} samples"
        )
    return data, spec


def training_images(config: TrainConfig, domain: Domain = SHAPES) -> np.ndarray:
    """(N, H, W, 3) uint8: the training pictures, regenerated from the seed."""
    started = time.time()
    images, _captions, _scenes = domain.data.dataset(config.seed, config.samples, domain.resolution)
    print(f"[data] {len(images)} images {images.shape[1:]} in {time.time() - started:.1f}s", flush=True)
    return images


def parameter_counts(unet, text_model, vae) -> dict[str, int]:
    """Parameters per module, printed."""
    counts = {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (("unet", unet), ("text", text_model), ("vae", vae))
    }
    print(f"[model] parameters {counts}", flush=True)
    return counts


def vae_stage(
    vae,
    images: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    domain: Domain = SHAPES,
) -> tuple[torch.Tensor, list[float]]:
    """Train the VAE and normalise its latents to SD1.5's scale; returns ((N, 4, h, w) latents, losses)."""
    losses = train_vae(vae, images, config, device, generator)
    vae.eval()
    latents = normalise_latents(vae, encode_images(vae, images, device))
    rates = reconstruction_acceptance(vae, config.seed, device, domain=domain)
    print(f"[vae] reconstruction acceptance {rates}")
    return latents, losses


def resume_stage(
    init: Path,
    spec: dict,
    unet,
    text_model,
    vae,
    images: np.ndarray,
    device: torch.device,
    domain: Domain = SHAPES,
) -> tuple[torch.Tensor, list[float]]:
    """Load every module from ``init`` and keep its (already normalised) VAE; returns ((N, 4, h, w)
    latents, the earlier run's final VAE loss as the loss list)."""
    metadata = load_weights(init, spec, unet, text_model, vae)
    key = domain.metadata_prefix + "final_losses"
    if key not in metadata:
        raise ValueError(f"{init} is not a checkpoint of the {domain.name} domain (no {key!r})")
    earlier = json.loads(metadata[key])
    vae.eval()
    latents = encode_images(vae, images, device)
    print(f"[init] continuing from {init} (earlier losses {earlier})", flush=True)
    return latents, [earlier["vae"]]


def unet_stage(
    unet,
    text_model,
    x0: torch.Tensor,
    data: np.lib.npyio.NpzFile,
    empty: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
) -> list[float]:
    """Train the UNet and text encoder on the (N, 4, h, w) scaled latents ``x0``, then keep their EMA
    weights; returns the losses."""
    tokens = torch.from_numpy(data["caption_tokens"][data["caption_index"]].astype(np.int64)).to(device)
    losses, ema = train_unet(unet, text_model, x0, tokens, empty, config, device, generator)
    with torch.no_grad():
        for parameter, averaged in zip(
            list(unet.parameters()) + list(text_model.parameters()), ema, strict=True
        ):
            parameter.copy_(averaged)

        # Rows no caption uses never get a gradient: they hold their random initialisation and mean
        # nothing. Zeros say so, and let git compress the committed file (the table is 6.3 of its MB).
        table = text_model.text_model.embeddings.token_embedding.weight
        table[unused_token_rows(data, len(table)).to(device)] = 0.0
    return losses


def evaluate(
    unet,
    text_model,
    vae,
    data: np.lib.npyio.NpzFile,
    empty: torch.Tensor,
    seed: int,
    output: Path,
    device: torch.device,
    domain: Domain = SHAPES,
) -> dict[str, float]:
    """Checker acceptance of DDIM samples for the held-out captions; saves the samples beside ``output``."""
    unet.eval()
    text_model.eval()
    eval_captions = [str(c) for c in data["eval_captions"]]
    eval_tokens = torch.from_numpy(data["eval_tokens"].astype(np.int64)).to(device)
    samples = sample_ddim(
        unet, text_model, vae, eval_tokens, empty, seed=seed, latent_size=domain.latent_size
    )
    rates = acceptance(samples, eval_captions, domain)
    print(
        f"[eval] checker acceptance on {len(samples)} held-out captions (DDIM 25, cfg 4): {rates}", flush=True
    )
    save_grid(samples, output.with_name(output.stem + "-samples.png"))
    return rates


def final_losses(vae_losses: list[float], unet_losses: list[float]) -> dict[str, float]:
    """The run's closing losses: the mean of the last 100 VAE and last 500 UNet steps."""
    return {"vae": float(np.mean(vae_losses[-100:])), "unet": float(np.mean(unet_losses[-500:]))}


def save_checkpoint(
    output: Path,
    spec: dict,
    config: TrainConfig,
    modules: tuple,
    rates: dict[str, float],
    losses: dict[str, float],
    unet_steps: int,
    domain: Domain = SHAPES,
) -> None:
    """Write the (unet, text_model, vae) ``modules`` as a safetensors checkpoint with the run's metadata;
    atomic (a ``.partial`` file renamed over ``output``)."""
    import safetensors.torch

    prefix = domain.metadata_prefix
    metadata = {
        spec["metadata_keys"]["format"]: spec["metadata_keys"]["format_value"],
        spec["metadata_keys"]["text_config"]: json.dumps(spec["text"], sort_keys=True),
        spec["metadata_keys"]["vae_config"]: json.dumps(spec["vae"], sort_keys=True),
        spec["metadata_keys"]["seed"]: str(config.seed),
        prefix + "train_config": json.dumps(
            {**dataclasses.asdict(config), "unet_steps": unet_steps, "unet_minutes": 0.0},
            sort_keys=True,
        ),
        prefix + "acceptance": json.dumps(rates, sort_keys=True),
        prefix + "final_losses": json.dumps(losses),
        prefix + "note": RECIPES[domain.name].note,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    safetensors.torch.save_file(checkpoint_state(spec, *modules), str(partial), metadata=metadata)
    os.replace(partial, output)


def fit(
    prepared: Path,
    config: TrainConfig,
    output: Path,
    device: torch.device,
    init: Path | None = None,
    domain: Domain = SHAPES,
) -> dict:
    """Train from a ``prepare`` file and write the checkpoint; returns a summary of the run.

    With ``init`` (a checkpoint this function wrote), training continues from its weights: its VAE is
    kept as it is (already normalised) and only the UNet phase runs, from its UNet and text encoder."""
    data, spec = load_prepared(prepared, config, domain)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.time()
    images = training_images(config, domain)
    unet, text_model, vae = build_modules(spec, device, generator)
    counts = parameter_counts(unet, text_model, vae)

    if init is None:
        latents, vae_losses = vae_stage(vae, images, config, device, generator, domain)
    else:
        latents, vae_losses = resume_stage(init, spec, unet, text_model, vae, images, device, domain)
    x0 = latents * SD15_LATENT_SCALE
    print(f"[latents] {tuple(x0.shape)} std {float(x0.std()):.3f}", flush=True)

    empty = torch.from_numpy(data["empty_tokens"].astype(np.int64)).to(device)
    unet_losses = unet_stage(unet, text_model, x0, data, empty, config, device, generator)
    seconds = time.time() - started  # training only: the evaluation below is not part of it

    rates = evaluate(unet, text_model, vae, data, empty, config.seed, output, device, domain)
    losses = final_losses(vae_losses, unet_losses)
    modules = (unet, text_model, vae)
    save_checkpoint(output, spec, config, modules, rates, losses, len(unet_losses), domain)
    summary = {
        "domain": domain.name,
        "seconds": seconds,
        "device": str(device),
        "parameters": counts,
        "vae_loss": losses["vae"],
        "unet_loss": losses["unet"],
        "unet_steps": len(unet_losses),
        "acceptance": rates,
        "output": str(output),
    }
    print(f"[done] {json.dumps(summary)}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", nargs="?", choices=("all", "prepare", "fit"), default="all")
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="shapes", help="the synthetic domain")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="schedule (default: cpu; textures-cpu for textures)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepared", type=Path, help="default: out/DOMAIN-t2i-prepared.npz")
    parser.add_argument("--out", type=Path, help="default: hierdiff_lab/weights/DOMAIN-t2i.safetensors")
    parser.add_argument("--device", default="cpu", help="torch device for fit (cpu, cuda)")
    parser.add_argument("--unet-steps", type=int, help="override the preset's UNet steps")
    parser.add_argument("--unet-minutes", type=float, help="cap the UNet phase's wall-clock minutes")
    parser.add_argument("--init", type=Path, help="continue the UNet phase from this checkpoint")
    parser.add_argument("--lr", type=float, help="override the preset's UNet learning rate")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    domain = DOMAINS[args.domain]
    config = dataclasses.replace(PRESETS[args.preset or RECIPES[domain.name].default_preset], seed=args.seed)
    prepared = args.prepared or ROOT / "out" / f"{domain.name}-t2i-prepared.npz"
    output = args.out or domain.checkpoint
    if args.unet_steps is not None:
        config = dataclasses.replace(config, unet_steps=args.unet_steps)
    if args.lr is not None:
        config = dataclasses.replace(config, unet_lr=args.lr)
    if args.unet_minutes is not None:
        config = dataclasses.replace(config, unet_minutes=args.unet_minutes)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_comfy_host(cpu=device.type == "cpu")
    if args.phase in ("all", "prepare"):
        print(f"[prepare] {prepare(config, prepared, domain)}", flush=True)
    if args.phase in ("all", "fit"):
        fit(prepared, config, output, device, init=args.init, domain=domain)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
