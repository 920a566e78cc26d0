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
    sets = {"palette": palette, "layout": layout, "two_studies": two_studies, "mixed": mixed}
    developed = {p for build in synthetic.PROMPT_SETS.values() for p in build()}
    for name, prompts in sets.items():
        reused = developed.intersection(prompts)
        if reused:
            raise AssertionError(f"{name} reuses prompts of the development sets: {sorted(reused)}")
    return sets
