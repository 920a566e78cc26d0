# SPDX-License-Identifier: GPL-3.0-or-later
"""The compatibility matrix: ComfyUI's own model patches and guidance functions in front of the
hierarchical sampler, each on the real host with the tiny model (docs/sampling.md, "Composing with other
nodes"; EasyCache and LazyCache are in test_step_cache.py and test_composition.py, PAG, SAG and the
negatives in test_composition.py, ControlNet, areas and timestep ranges on the positives in
test_tree_conditioning.py).

Specification, per patch (the same patched MODEL, CLIP or latent feeds stock KSampler and Hierarchical
KSampler):
- at tau = 0, with one model call per step and with several (max_batch 2), every prompt's latent equals
  stock KSampler's on that prompt alone with the same seed; a patch that mixes the rows of its batch in
  stock ComfyUI too (Mahiro and Perp-Neg take one norm over the whole batch) is compared with stock
  sampling of the set as one batch, every row starting from the seed's noise as the hierarchical run does;
- at a 50 % target saving the network sees exactly the rows the plan counts, the measured line equals an
  independent counter around the model, and a prompt given twice stays one image (members of a group
  are identical until their split, duplicates never split);
- a patch that cannot run on more than one latent row (TemporalScoreRescaling compares the step's sigma,
  one per row, as one number: stock KSampler with a batch of two fails too) is refused before the model
  runs, naming the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import comfy.sample as comfy_sample
import pytest
import torch

from hierdiff_core.schedule import Plan
from hierdiff_dev.expect import PROMPTS, SET_WITH_SPLITS, assert_close, counting, measured_rows

pytestmark = pytest.mark.slow  # about 200 sampling runs: minutes on the CPU

SET_WITH_DUPLICATE = [*SET_WITH_SPLITS, SET_WITH_SPLITS[0]]  # the duplicate stays one image to the end
SEED = 7
STEPS = 6
CFG = 7.0
LORA = "hierdiff-compat-tiny-lora.safetensors"
ATTENTION = {"q": 1.5, "k": 1.0, "v": 1.2, "out": 1.0}  # the attention multiply nodes' scales


@dataclass(frozen=True)
class Setup:
    """What feeds both samplers: MODEL, CLIP (encodes the prompts and the negative) and latent; whether
    the patch mixes the rows of a batch in stock ComfyUI; latent rows per evaluation (cond + uncond, +1
    for a patch that calls the model once more)."""

    model: Any
    clip: Any
    latent: dict
    mixes_batch_rows: bool = False
    rows_per_evaluation: int = 2


def node(comfy, node_id: str, **inputs) -> Any:
    """The first output of a core node, V3 (``io.ComfyNode``) or legacy."""
    cls = comfy.classes[node_id]
    if hasattr(cls, "FUNCTION"):
        return getattr(cls(), cls.FUNCTION)(**inputs)[0]
    return cls.execute(**inputs).args[0]


def masked_latent() -> dict:
    """An img2img latent whose noise mask ramps from keep (left) to repaint (right), pixel resolution."""
    samples = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.linspace(0.0, 1.0, 64).repeat(64, 1).reshape(1, 1, 64, 64)
    return {"samples": samples, "noise_mask": mask}


def write_lora(comfy) -> str:
    """A rank-4 LoRA over the tiny UNet's and CLIP's linear layers (explicitly seeded), in the loras
    folder, in the kohya key layout ComfyUI's LoRA loader reads."""
    import folder_paths
    import safetensors.torch

    folder = Path(folder_paths.get_folder_paths("loras")[0])
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(11)
    tensors: dict[str, torch.Tensor] = {}

    def add(name: str, weight: torch.Tensor, rank: int = 4) -> None:
        out_features, in_features = weight.shape
        down = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) / rank
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))

    for key, weight in comfy.model.model.diffusion_model.state_dict().items():
        if key.endswith(".weight") and weight.ndim == 2 and "transformer_blocks" in key:
            add("lora_unet_" + key.removesuffix(".weight").replace(".", "_"), weight)
    prefix = "clip_l.transformer.text_model.encoder.layers."
    for key, weight in comfy.clip.cond_stage_model.state_dict().items():
        if key.startswith(prefix) and key.endswith(".weight") and weight.ndim == 2:
            add(
                "lora_te_text_model_encoder_layers_" + key[len(prefix) : -len(".weight")].replace(".", "_"),
                weight,
            )
    safetensors.torch.save_file(tensors, str(folder / LORA))
    return LORA


def seeded_per_call(model):
    """ToMe draws random token partitions from torch's global generator: seed it from each call's sigma,
    so that stock and hierarchical runs draw the same partitions for the same step."""

    def seed(q, k, v, extra_options):
        torch.manual_seed(int(float(extra_options["sigmas"].flatten()[0]) * 1e4))
        return q, k, v

    patched = model.clone()
    patched.set_model_attn1_patch(seed)
    return patched


def lora_hooks_on_clip(comfy, keyframed: bool, schedule_clip: bool = False) -> Setup:
    """CreateHookLora -> (keyframes) -> SetClipHooks: the LoRA patches the CLIP that encodes every prompt
    and rides on the conditioning to patch the model while it samples, at keyframed strengths; with
    ``schedule_clip`` the CLIP encodes each prompt once per keyframe too (scheduled conditioning: one
    entry per keyframe, each for its range of steps)."""
    hooks = node(comfy, "CreateHookLora", lora_name=write_lora(comfy), strength_model=1.0, strength_clip=1.0)
    if keyframed:
        keyframes = node(comfy, "CreateHookKeyframe", strength_mult=1.0, start_percent=0.0)
        keyframes = node(
            comfy, "CreateHookKeyframe", strength_mult=0.3, start_percent=0.5, prev_hook_kf=keyframes
        )
        hooks = node(comfy, "SetHookKeyframes", hooks=hooks, hook_kf=keyframes)
    clip = node(
        comfy, "SetClipHooks", clip=comfy.clip, apply_to_conds=True, schedule_clip=schedule_clip, hooks=hooks
    )
    return Setup(comfy.model, clip, plain_latent())


def plain_latent() -> dict:
    return {"samples": torch.zeros(1, 4, 8, 8)}


def patched(comfy, node_id: str, **inputs) -> Setup:
    return Setup(node(comfy, node_id, model=comfy.model, **inputs), comfy.clip, plain_latent())


CASES: dict[str, Callable[[Any], Setup]] = {
    "FreeU": lambda c: patched(c, "FreeU", b1=1.1, b2=1.2, s1=0.9, s2=0.2),
    "FreeU_V2": lambda c: patched(c, "FreeU_V2", b1=1.3, b2=1.4, s1=0.9, s2=0.2),
    "TomePatchModel": lambda c: Setup(
        node(c, "TomePatchModel", model=seeded_per_call(c.model), ratio=0.5), c.clip, plain_latent()
    ),
    "PatchModelAddDownscale": lambda c: patched(
        c, "PatchModelAddDownscale", block_number=3, downscale_factor=2.0, start_percent=0.0, end_percent=0.5,
        downscale_after_skip=True, downscale_method="bicubic", upscale_method="bicubic",
    ),
    "ModelSamplingDiscrete v_prediction": lambda c: patched(
        c, "ModelSamplingDiscrete", sampling="v_prediction", zsnr=False
    ),
    "ModelSamplingDiscrete v_prediction zsnr": lambda c: patched(
        c, "ModelSamplingDiscrete", sampling="v_prediction", zsnr=True
    ),
    "ModelSamplingContinuousEDM": lambda c: patched(
        c, "ModelSamplingContinuousEDM", sampling="v_prediction", sigma_max=120.0, sigma_min=0.002
    ),
    "ModelSamplingContinuousV": lambda c: patched(
        c, "ModelSamplingContinuousV", sampling="v_prediction", sigma_max=500.0, sigma_min=0.03
    ),
    "RescaleCFG": lambda c: patched(c, "RescaleCFG", multiplier=0.7),
    "CFGNorm": lambda c: patched(c, "CFGNorm", strength=1.0),
    "CFGZeroStar": lambda c: patched(c, "CFGZeroStar"),
    "APG": lambda c: patched(c, "APG", eta=1.0, norm_threshold=5.0, momentum=0.5),
    "TCFG": lambda c: patched(c, "TCFG"),
    "Epsilon Scaling": lambda c: patched(c, "Epsilon Scaling", scaling_factor=1.05),
    "FreSca": lambda c: patched(c, "FreSca", scale_low=1.0, scale_high=1.25, freq_cutoff=2),
    "HyperTile": lambda c: patched(c, "HyperTile", tile_size=32, swap_size=2, max_depth=0, scale_depth=False),
    "UNetSelfAttentionMultiply": lambda c: patched(c, "UNetSelfAttentionMultiply", **ATTENTION),
    "UNetCrossAttentionMultiply": lambda c: patched(c, "UNetCrossAttentionMultiply", **ATTENTION),
    "LoraLoaderModelOnly": lambda c: patched(
        c, "LoraLoaderModelOnly", lora_name=write_lora(c), strength_model=1.0
    ),
    "LoRA hooks on CLIP": lambda c: lora_hooks_on_clip(c, keyframed=False),
    "LoRA hooks on CLIP, keyframed": lambda c: lora_hooks_on_clip(c, keyframed=True),
    "LoRA hooks on CLIP, keyframed, scheduled CLIP": lambda c: lora_hooks_on_clip(
        c, keyframed=True, schedule_clip=True
    ),
    "SetLatentNoiseMask": lambda c: Setup(c.model, c.clip, masked_latent()),
    "DifferentialDiffusion": lambda c: Setup(
        node(c, "DifferentialDiffusion", model=c.model, strength=1.0), c.clip, masked_latent()
    ),
    "Mahiro": lambda c: replace(patched(c, "Mahiro"), mixes_batch_rows=True),
    "SelfAttentionGuidance": lambda c: replace(
        patched(c, "SelfAttentionGuidance", scale=0.5, blur_sigma=2.0), rows_per_evaluation=3
    ),
    "PerpNeg": lambda c: replace(
        patched(c, "PerpNeg", empty_conditioning=encode(c.clip, ""), neg_scale=1.0),
        mixes_batch_rows=True,
        rows_per_evaluation=3,
    ),
}  # fmt: skip


def encode(clip, text: str) -> list:
    import nodes as comfy_nodes

    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def hier_ksampler(comfy, setup: Setup, model, prompts, *, budget="tau", value=0.0, max_batch=64):
    tree = comfy.classes["HierPromptSetCluster"].execute(
        [setup.clip], ["\n".join(prompts)], ["ward"], ["clip_pooled"]
    )
    return comfy.classes["HierKSampler"].execute(
        model, tree.args[0], encode(setup.clip, "blurry"), setup.latent, SEED, STEPS, CFG, "euler", "normal",
        1.0, budget, value, max_batch, "shared", "mean", "prompt_tree",
    )  # fmt: skip


def stock_per_prompt(comfy, setup: Setup, prompt: str) -> torch.Tensor:
    out = comfy.stock.common_ksampler(
        setup.model, SEED, STEPS, CFG, "euler", "normal", encode(setup.clip, prompt),
        encode(setup.clip, "blurry"), setup.latent,
    )  # fmt: skip
    return out[0]["samples"]


def stock_batch(setup: Setup, prompts: list[str]) -> torch.Tensor:
    """Stock sampling of the prompts as one batch, every row from the seed's batch-1 noise."""
    conditionings = [encode(setup.clip, p) for p in prompts]
    positive = [[torch.cat([c[0][0] for c in conditionings]), dict(conditionings[0][0][1])]]
    latent = setup.latent["samples"]
    noise = comfy_sample.prepare_noise(latent, SEED).repeat(len(prompts), 1, 1, 1)
    mask = setup.latent.get("noise_mask")
    return comfy_sample.sample(
        setup.model, noise, STEPS, CFG, "euler", "normal", positive, encode(setup.clip, "blurry"),
        latent.repeat(len(prompts), 1, 1, 1), noise_mask=mask, seed=SEED,
    )  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_each_patch_is_exact_at_tau_zero_keeps_the_saving_and_is_measured(comfy, case):
    setup = CASES[case](comfy)
    if setup.mixes_batch_rows:
        references = list(stock_batch(setup, PROMPTS))
    else:
        references = [stock_per_prompt(comfy, setup, p)[0] for p in PROMPTS]
    # A patch that did nothing would make the row prove nothing (the noise mask is a patch too).
    plain = stock_per_prompt(
        comfy, Setup(comfy.model, comfy.clip, {"samples": setup.latent["samples"]}), PROMPTS[0]
    )
    assert (references[0] - plain[0]).abs().max() > 1e-3 * plain.abs().max(), "the patch changes nothing"

    rows = setup.rows_per_evaluation * STEPS * len(PROMPTS)
    for max_batch in (64, 2):
        model, counter = counting(setup.model)
        out = hier_ksampler(comfy, setup, model, PROMPTS, max_batch=max_batch)
        for i, reference in enumerate(references):
            assert_close(out.args[0]["samples"][i], reference, f"prompt {i}, max_batch {max_batch}")
        assert measured_rows(out) == (counter["rows"], rows) == (rows, rows)

    model, counter = counting(setup.model)
    out = hier_ksampler(comfy, setup, model, SET_WITH_DUPLICATE, budget="target_saving", value=0.5)
    plan = Plan.from_json(out.args[1])
    assert plan.saving >= 0.45
    independent = setup.rows_per_evaluation * STEPS * len(SET_WITH_DUPLICATE)
    assert measured_rows(out) == (counter["rows"], independent)
    assert counter["rows"] == setup.rows_per_evaluation * plan.model_evaluations
    samples = out.args[0]["samples"]
    assert torch.equal(samples[0], samples[-1]), "a duplicate must stay one image"
    assert not torch.equal(samples[0], samples[1])


def test_temporal_score_rescaling_is_refused_by_name_before_the_model_runs(comfy):
    setup = patched(comfy, "TemporalScoreRescaling", tsr_k=0.95, tsr_sigma=1.0)
    with pytest.raises(RuntimeError, match="Boolean value of Tensor with more than one value is ambiguous"):
        stock_batch(setup, PROMPTS[:2])  # stock ComfyUI cannot run it on two rows either
    model, counter = counting(setup.model)
    with pytest.raises(ValueError, match="TemporalScoreRescaling works on one latent row at a time"):
        hier_ksampler(comfy, setup, model, PROMPTS)
    assert counter["rows"] == 0


def test_scheduled_clip_conditioning_keeps_one_entry_per_keyframe_in_every_group(comfy):
    # Scheduled CLIP hooks encode every prompt once per keyframe: the prompt set holds one N-row entry per
    # keyframe, each for its own range of steps, so a group's conditioning changes where its members' do.
    scheduled = lora_hooks_on_clip(comfy, keyframed=True, schedule_clip=True)
    tree = comfy.classes["HierPromptSetCluster"].execute(
        [scheduled.clip], ["\n".join(PROMPTS)], ["ward"], ["clip_pooled"]
    )
    entries = tree.args[0].conditioning
    assert [(e[1]["clip_start_percent"], e[1]["clip_end_percent"]) for e in entries] == [
        (0.0, 0.5),
        (0.5, 1.0),
    ]
    assert all(e[0].shape[0] == len(PROMPTS) for e in entries)
    assert (entries[0][0] - entries[1][0]).abs().max() > 1e-3, "the keyframes must encode differently"
    unscheduled = lora_hooks_on_clip(comfy, keyframed=True, schedule_clip=False)
    one = hier_ksampler(comfy, scheduled, scheduled.model, PROMPTS).args[0]["samples"]
    other = hier_ksampler(comfy, unscheduled, unscheduled.model, PROMPTS).args[0]["samples"]
    assert (one - other).abs().max() > 1e-3 * other.abs().max()


def test_self_attention_guidance_whose_map_cannot_be_handed_per_row_is_refused(comfy):
    # Should a ComfyUI keep SAG's attention map elsewhere (here its recording attention is replaced), the
    # sampler could not give each row its group's map: refused before the model runs, never mis-blurred.
    setup = patched(comfy, "SelfAttentionGuidance", scale=0.5, blur_sigma=2.0)
    model = setup.model.clone()
    model.set_model_attn1_replace(lambda q, k, v, extra_options: q, "middle", 0, 0)
    model, counter = counting(model)
    with pytest.raises(ValueError, match="^SelfAttentionGuidance: this ComfyUI's version of it keeps"):
        hier_ksampler(comfy, setup, model, PROMPTS)
    assert counter["rows"] == 0
