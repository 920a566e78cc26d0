# SPDX-License-Identifier: GPL-3.0-or-later
"""The synthetic textures domain (details decided late): deterministic data, captions that parse back
(leaving out what they omit), held-out sets apart from the development sets, and a checker of stated
accuracy that rejects pictures of other details."""

import dataclasses

import numpy as np
import pytest

from hierdiff_lab import texture_checker, textures
from hierdiff_lab.textures import Scene

BASE = Scene("circle", "left", "stripes", "red", "fine", 2)


def test_same_seed_gives_identical_images_and_captions():
    images_a, captions_a, scenes_a = textures.dataset(seed=5, count=8)
    images_b, captions_b, scenes_b = textures.dataset(seed=5, count=8)
    assert images_a.shape == (8, 128, 128, 3) and images_a.dtype == np.uint8
    assert np.array_equal(images_a, images_b)
    assert captions_a == captions_b and scenes_a == scenes_b
    images_c, captions_c, _ = textures.dataset(seed=6, count=8)
    assert not np.array_equal(images_a, images_c) and captions_a != captions_c


def test_render_is_deterministic_and_draws_other_sizes():
    assert np.array_equal(textures.render(BASE, seed=3), textures.render(BASE, seed=3))
    assert not np.array_equal(textures.render(BASE, seed=3), textures.render(BASE, seed=4))
    assert textures.render(BASE, seed=3, resolution=64).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="frequency"):
        textures.render(dataclasses.replace(BASE, frequency=None), seed=0)


def test_all_scenes_are_distinct_and_complete():
    scenes = textures.all_scenes()
    assert len(scenes) == len(set(scenes)) == 378
    assert all(not scene.missing() for scene in scenes)
    assert all((scene.frequency is None) == (scene.texture == "plain") for scene in scenes)


def test_every_template_parses_back_to_its_scene():
    rng = np.random.default_rng(11)
    for _ in range(60):
        scene = textures.random_scene(rng)
        for template in range(textures.TEMPLATE_COUNT):
            text = textures.caption(scene, rng, omit={}, template=template)
            assert textures.parse_caption(text) == scene, text
    assert textures.TEMPLATE_COUNT >= 5


def test_training_captions_leave_out_fine_attributes_only_and_parse_back():
    omitted = {name: 0 for name in textures.ATTRIBUTES}
    captions = []
    for _image, text, scene in textures.samples(seed=12, count=300, resolution=32):
        parsed = textures.parse_caption(text)
        assert parsed == textures.captioned_scene(scene, text), text
        for name in textures.ATTRIBUTES:
            if getattr(parsed, name) is None and not (name == "frequency" and scene.texture == "plain"):
                omitted[name] += 1
        captions.append(text)
    assert omitted["shape"] == omitted["position"] == omitted["texture"] == 0
    assert 20 <= omitted["colour"] <= 75  # 15 % of 300
    assert omitted["frequency"] > 0 and omitted["marks"] > 0
    assert len({text.split()[0] for text in captions}) >= 5


def test_parse_caption_reads_free_prompts_and_vocabularies_are_disjoint():
    assert textures.parse_caption(
        "a disc on the right with dense blue polka dots, three ticks below"
    ) == Scene("circle", "right", "dots", "blue", "fine", 3)
    assert textures.parse_caption("checkered box in the middle, a pair of marks") == Scene(
        "square", "center", "checks", None, None, 2
    )
    words = [word for group in textures.vocabulary().values() for word in group]
    assert len(words) == len(set(words))


def test_prompt_sets_share_layouts_and_name_every_attribute():
    for name, build in textures.PROMPT_SETS.items():
        prompts = build()
        assert 12 <= len(prompts) <= 24 and len(set(prompts)) == len(prompts), name
        scenes = [textures.parse_caption(p) for p in prompts]
        assert all(not scene.missing() for scene in scenes), name
        assert len({(s.shape, s.position) for s in scenes}) <= 2, name


def test_held_out_sets_do_not_reuse_development_prompts():
    sets = textures.held_out_sets()
    assert len(sets) == 4
    developed = {p for build in textures.PROMPT_SETS.values() for p in build()}
    for name, prompts in sets.items():
        assert not developed.intersection(prompts), name
        assert 12 <= len(prompts) <= 24 and len(set(prompts)) == len(prompts), name
    for name in ("patterns", "counts", "reworded"):
        assert len({textures.parse_caption(p).shape for p in sets[name]}) == 1, name


def test_checker_reads_fresh_clean_renders():
    # Stated accuracy (python -m hierdiff_lab.texture_checker, 500 pictures): 1.000 on every attribute
    # clean, blurred (sigma 1 and 2 px) or noisy (std 10 and 20); at blur 3 the texture and frequency fail.
    rates = texture_checker.validate(seed=777, count=100)
    assert all(value >= 0.98 for value in rates.values()), rates


def test_checker_reads_blurred_noisy_renders():
    rates = texture_checker.validate(seed=778, count=40, blur_sigma=2.0, noise_std=10.0)
    assert all(value >= 0.95 for value in rates.values()), rates


@pytest.mark.parametrize(
    "change",
    [
        {"shape": "square"},
        {"position": "right"},
        {"texture": "checks"},
        {"texture": "dots"},
        {"texture": "plain", "frequency": None},
        {"colour": "green"},
        {"frequency": "coarse"},
        {"marks": 3},
    ],
)
def test_checker_rejects_a_picture_of_other_details(change):
    image = textures.render(BASE, seed=21)
    assert texture_checker.accepts(image, BASE)
    other = dataclasses.replace(BASE, **change)
    seen = texture_checker.check(image, other)
    changed = {name for name in change if getattr(other, name) is not None}
    assert {name for name, ok in seen.items() if not ok} == changed, seen
    # and the picture of the other scene is read as that scene
    assert texture_checker.read_scene(textures.render(other, seed=22)).scene == other


def test_checker_rejects_an_empty_background():
    image = np.full((128, 128, 3), textures.BACKGROUND, dtype=np.uint8)
    assert not any(texture_checker.check(image, BASE).values())


def test_training_uses_the_domain_and_keeps_shapes_the_default():
    from hierdiff_lab import train

    domain = train.DOMAINS["textures"]
    assert (domain.resolution, domain.latent_size) == (128, 16)
    assert train.RECIPES["textures"].default_preset == "textures-cpu"
    assert domain.checkpoint.name == "textures-t2i.safetensors"
    assert train.evaluation_captions(0, 12) == train.evaluation_captions(0, 12, domain=train.SHAPES)
    captions = train.evaluation_captions(0, 6, domain=domain)
    scenes = [textures.parse_caption(text) for text in captions]
    assert all(not scene.missing() for scene in scenes)
    images = np.stack([textures.render(scene, seed=i) for i, scene in enumerate(scenes)])
    rates = train.acceptance(images, captions, domain)
    assert rates["all"] == 1.0 and all(value == 1.0 for value in rates.values()), rates
