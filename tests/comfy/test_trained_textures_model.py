"""The trained textures model (hierdiff_lab/weights/textures-t2i.safetensors) loads through ComfyUI like
the shapes model and draws 128 px pictures the texture checker reads as their captions say.

Thresholds come from measurements on the committed weights, euler 20 steps, cfg 4, seed 0, the first 24
evaluation captions: shape 20, position 21, texture 19, colour 15 of 24 right, frequency 15 of 18, all
six 6 of 24. Generation is deterministic on the CPU, and the thresholds leave a margin of two or three
pictures for other torch builds. The count of bars is not checked: the model draws it at chance (8 of
24; docs/fidelity.md, "textures").
"""

import pytest

from hierdiff_lab import comfy_generation, train
from hierdiff_lab.domains import DOMAINS

TEXTURES = DOMAINS["textures"]
MINIMUM_RATES = {
    "shape": 18 / 24,
    "position": 19 / 24,
    "texture": 17 / 24,
    "colour": 12 / 24,
    "frequency": 12 / 18,
    "all": 3 / 24,
}


@pytest.fixture(scope="module")
def textures_model(comfy_host):
    from testkit.tiny_model import load_tiny_model

    return load_tiny_model(str(TEXTURES.checkpoint))


def test_textures_checkpoint_loads_with_its_own_unet_and_the_shared_text_encoder(textures_model):
    model, clip, vae = textures_model
    config = model.model.model_config.unet_config
    assert type(model.model).__name__ == "BaseModel"
    assert (config["context_dim"], config["channel_mult"]) == (64, [1, 2, 2])
    tokens = clip.tokenize("a circle on the left with fine red stripes, two bars below")
    conditioning = clip.encode_from_tokens_scheduled(tokens)
    assert conditioning[0][0].shape == (1, 77, 64)


def test_textures_model_draws_captions_the_texture_checker_accepts(textures_model):
    model, clip, vae = textures_model
    prompts = train.evaluation_captions(seed=0, count=24, domain=TEXTURES)
    settings = comfy_generation.SamplingSettings(width=TEXTURES.resolution, height=TEXTURES.resolution)
    generation = comfy_generation.independent_batch(model, clip, vae, prompts, settings)
    assert generation.images.shape == (24, 128, 128, 3)
    rates = train.acceptance(generation.images, prompts, TEXTURES)
    assert all(rates[name] >= minimum for name, minimum in MINIMUM_RATES.items()), rates
