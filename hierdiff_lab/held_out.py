# SPDX-License-Identifier: GPL-3.0-or-later
"""Held-out prompt sets of the shapes domain: made for measuring, never used while developing hierdiff
(``tools/bench_budget_defaults.py``, ``tools/bench_step_cache.py``)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np


def held_out_sets() -> dict[str, list[str]]:
    """Four prompt sets a user of the shapes domain might write, none used while developing hierdiff.

    - ``palette``: one large square in the center, 5 colours x 3 backgrounds (15): what varies is what
      settles late;
    - ``layout``: a blue circle on white in each of the 9 places, small, and large in 3 of them (12):
      what varies is what the first steps decide;
    - ``two_studies``: two scenes, each with five one-attribute changes and one two-attribute change,
      in mixed phrasings (14);
    - ``mixed``: 16 random scenes in random phrasings (rng seed 2026).
    """
    from hierdiff_lab import synthetic
    from hierdiff_lab.synthetic import Scene, canonical_caption

    palette = [
        canonical_caption(Scene("square", colour, "large", "center", background))
        for colour, background in itertools.product(synthetic.SHAPE_COLOURS, synthetic.BACKGROUNDS)
    ]
    layout = [
        canonical_caption(Scene("circle", "blue", "small", p, "white")) for p in synthetic.POSITION_CELL
    ]
    layout += [
        canonical_caption(Scene("circle", "blue", "large", p, "white")) for p in ("top", "center", "bottom")
    ]
    rng = np.random.default_rng(2026)
    two_studies = []
    bases = (
        Scene("square", "yellow", "large", "bottom right", "black"),
        Scene("circle", "green", "small", "top", "white"),
    )
    for base in bases:
        resized = "small" if base.size == "large" else "large"
        changes = ({}, {"shape": "triangle"}, {"colour": "purple"}, {"size": resized}, {"position": "left"},
                   {"background": "grey"}, {"colour": "red", "position": "right"})  # fmt: skip
        two_studies += [synthetic.caption(dataclasses.replace(base, **c), rng) for c in changes]
    mixed = [synthetic.caption(synthetic.random_scene(rng), rng) for _ in range(16)]
    return _unused({"palette": palette, "layout": layout, "two_studies": two_studies, "mixed": mixed})


def confirmation_sets() -> dict[str, list[str]]:
    """A second held-out collection, made after the spend rule was measured on :func:`held_out_sets`, to
    confirm on prompts nobody had seen what was concluded there (docs/fidelity.md, "Spending a budget").

    - ``corners``: a small square in each corner, red, blue or green, on black (12): layout varies;
    - ``figures``: a large purple shape at the bottom, 3 shapes x 2 sizes x white or black (12);
    - ``restated``: three scenes, each worded four ways (rng seed 4041, 12);
    - ``assorted``: 16 random scenes in random phrasings (rng seed 4040).
    """
    from hierdiff_lab import synthetic
    from hierdiff_lab.synthetic import Scene, canonical_caption

    corners = [
        canonical_caption(Scene("square", colour, "small", position, "black"))
        for colour, position in itertools.product(
            ("red", "blue", "green"), ("top left", "top right", "bottom left", "bottom right")
        )
    ]
    figures = [
        canonical_caption(Scene(shape, "purple", size, "bottom", background))
        for shape, size, background in itertools.product(
            synthetic.SHAPES, synthetic.SIZES, ("white", "black")
        )
    ]
    rng = np.random.default_rng(4041)
    restated = []
    for scene in (
        Scene("triangle", "red", "large", "top right", "white"),
        Scene("circle", "yellow", "small", "left", "black"),
        Scene("square", "blue", "large", "right", "white"),
    ):
        words: list[str] = []
        while len(words) < 4:
            text = synthetic.caption(scene, rng)
            if text not in words:
                words.append(text)
        restated += words
    rng = np.random.default_rng(4040)
    assorted = [synthetic.caption(synthetic.random_scene(rng), rng) for _ in range(16)]
    sets = {"corners": corners, "figures": figures, "restated": restated, "assorted": assorted}
    earlier = {p for prompts in held_out_sets().values() for p in prompts}
    for name, prompts in sets.items():
        if earlier.intersection(prompts):
            raise AssertionError(f"{name} reuses held-out prompts: {sorted(earlier.intersection(prompts))}")
    return _unused(sets)


def _unused(sets: dict[str, list[str]]) -> dict[str, list[str]]:
    """``sets``, after checking that none of their prompts is in a development set."""
    from hierdiff_lab import synthetic

    developed = {p for build in synthetic.PROMPT_SETS.values() for p in build()}
    for name, prompts in sets.items():
        reused = developed.intersection(prompts)
        if reused:
            raise AssertionError(f"{name} reuses prompts of the development sets: {sorted(reused)}")
    return sets
