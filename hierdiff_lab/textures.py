# SPDX-License-Identifier: GPL-3.0-or-later
"""A synthetic domain whose details are decided late: one large textured shape above a row of small bars.

The shapes domain (:mod:`hierdiff_lab.synthetic`) decides every attribute in the first denoising steps,
so sharing early steps cannot lose there, nor win. Here the coarse layout is few and shared, and what
varies is fine detail:

- layout (decided early): ``shape`` (circle, square) and ``position`` (left, center, right) of one large
  shape (about 0.54 of the side) on a plain dark background: 6 layouts;
- fine detail: the ``texture`` filling the shape (plain, stripes, checks, dots) on a white base, its
  ``colour`` (red, blue, green), its ``frequency`` (fine: a 10 px period, coarse: 20 px, at 128 px;
  None for a plain texture, which has none), and ``marks``: a count (1 to 3) of small light bars in a
  band under the shape.

That makes 2 x 3 x 21 x 3 = 378 scenes. Pictures are 128 px (a 16 x 16 latent): the issue's example is
256 px (32 x 32), but 128 px is what a 2-core CPU can train in hours; the geometry is in fractions of the
side, so :func:`render` draws any resolution (texture periods and bars scale with it).

:func:`caption` words a scene in one of six phrasings with synonyms and, as training captions should,
leaves a fine attribute out now and then (:data:`OMIT_PROBABILITY`: the model learns to leave it to the
noise); :func:`canonical_caption` names every attribute. :func:`parse_caption` reads any of them back
(None for what a caption leaves out); the vocabularies of the attributes are disjoint. The checker is
:mod:`hierdiff_lab.texture_checker`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square")
POSITIONS: tuple[str, ...] = ("left", "center", "right")
TEXTURES: tuple[str, ...] = ("plain", "stripes", "checks", "dots")
TEXTURE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 45),
    "blue": (45, 85, 205),
    "green": (35, 150, 70),
}
FREQUENCIES: tuple[str, ...] = ("fine", "coarse")
MARK_COUNTS: tuple[int, ...] = (1, 2, 3)
ATTRIBUTES: tuple[str, ...] = ("shape", "position", "texture", "colour", "frequency", "marks")
# Attributes that are fine detail (decided late); the others are the layout.
FINE_ATTRIBUTES: tuple[str, ...] = ("texture", "colour", "frequency", "marks")

# Geometry, in fractions of the picture side.
# Dark, so that no blurred mix of the white base and a colour comes near it.
BACKGROUND: tuple[int, int, int] = (50, 52, 60)
BASE: tuple[int, int, int] = (245, 245, 245)  # the texture's light part
MARK_COLOUR: tuple[int, int, int] = (230, 230, 230)
SHAPE_SIDE = 0.54  # bounding-box side of the shape
SHAPE_Y = 0.40  # centre of the shape, from the top
POSITION_X: dict[str, float] = {"left": 0.32, "center": 0.5, "right": 0.68}
# Texture period (one stripe and one gap, two check squares, dot spacing): 10 px and 20 px at 128 px.
PERIOD: dict[str, float] = {"fine": 10 / 128, "coarse": 20 / 128}
DOT_RADIUS = 0.3  # in periods
MARK_SLOTS: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.8)  # possible centres (x) of the bars
MARK_Y = 0.83  # centre (y) of the band of bars
MARK_WIDTH, MARK_HEIGHT = 0.05, 0.11
SUPERSAMPLING = 4

# Training captions leave these attributes out with these probabilities (independently).
OMIT_PROBABILITY: dict[str, float] = {"colour": 0.15, "frequency": 0.10, "marks": 0.10}


@dataclasses.dataclass(frozen=True)
class Scene:
    """One picture's content. Any attribute may be None in a parsed caption that leaves it out;
    ``frequency`` is None for a plain texture. ``marks`` is the number of bars (1 to 3)."""

    shape: str | None
    position: str | None
    texture: str | None
    colour: str | None
    frequency: str | None
    marks: int | None

    def attributes(self) -> dict[str, str | int]:
        """The attributes that are set, by name (see :data:`ATTRIBUTES`)."""
        return {name: value for name in ATTRIBUTES if (value := getattr(self, name)) is not None}

    def missing(self) -> list[str]:
        """Attributes a picture needs and this scene leaves out (frequency is not needed when plain)."""
        needed = [name for name in ATTRIBUTES if name != "frequency" or self.texture != "plain"]
        return [name for name in needed if getattr(self, name) is None]


def all_scenes() -> list[Scene]:
    """Every fully specified scene: 2 shapes x 3 positions x (3 plain + 3 textures x 3 colours x 2
    frequencies) x 3 counts = 378."""
    scenes = []
    for shape, position, texture, colour, marks in itertools.product(
        SHAPES, POSITIONS, TEXTURES, TEXTURE_COLOURS, MARK_COUNTS
    ):
        for frequency in (None,) if texture == "plain" else FREQUENCIES:
            scenes.append(Scene(shape, position, texture, colour, frequency, marks))
    return scenes


def random_scene(rng: np.random.Generator) -> Scene:
    """A fully specified scene, each attribute drawn uniformly (so a quarter of them are plain)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    colour = list(TEXTURE_COLOURS)[rng.integers(len(TEXTURE_COLOURS))]
    frequency = FREQUENCIES[rng.integers(len(FREQUENCIES))]
    marks = MARK_COUNTS[rng.integers(len(MARK_COUNTS))]
    return Scene(shape, position, texture, colour, None if texture == "plain" else frequency, marks)


def _ink(texture: str, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """Where the texture's colour is (bool, broadcast of x (1, n) and y (n, 1), in periods' phase)."""
    u, v = x / period, y / period
    if texture == "plain":
        return np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    if texture == "stripes":  # vertical stripes, half a period wide
        return np.broadcast_to((u % 1.0) < 0.5, np.broadcast_shapes(u.shape, v.shape))
    if texture == "checks":  # squares half a period wide
        return (np.floor(2 * u).astype(int) + np.floor(2 * v).astype(int)) % 2 == 0
    if texture == "dots":  # a square lattice of discs
        return ((u % 1.0) - 0.5) ** 2 + ((v % 1.0) - 0.5) ** 2 <= DOT_RADIUS**2
    raise ValueError(f"unknown texture {texture!r}; known: {', '.join(TEXTURES)}")


def render(scene: Scene, seed: int, resolution: int = 128, jitter: bool = True) -> np.ndarray:
    """Draw a fully specified scene.

    Returns a (resolution, resolution, 3) uint8 RGB array. ``seed`` drives the bars' places (which of
    five slots), the texture's phase and, with ``jitter``, small changes of the shape's place (+-2 % of
    the side), size (+-5 %), the texture's period (+-6 %), the bars' places and sizes and the colours
    (+-10 per channel). Anti-aliased: drawn at 4x and averaged down.
    """
    missing = scene.missing()
    if missing:
        raise ValueError(f"cannot render a scene without {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    cx, cy, side = POSITION_X[scene.position], SHAPE_Y, SHAPE_SIDE
    period = PERIOD[scene.frequency or "coarse"]
    phase = rng.uniform(0.0, 1.0, 2) * period
    slots = np.sort(rng.choice(len(MARK_SLOTS), size=scene.marks, replace=False))
    mark_x = np.array(MARK_SLOTS)[slots]
    mark_y = np.full(scene.marks, MARK_Y)
    mark_w = np.full(scene.marks, MARK_WIDTH)
    mark_h = np.full(scene.marks, MARK_HEIGHT)
    colours = {
        "background": np.array(BACKGROUND, dtype=float),
        "base": np.array(BASE, dtype=float),
        "ink": np.array(TEXTURE_COLOURS[scene.colour], dtype=float),
        "mark": np.array(MARK_COLOUR, dtype=float),
    }
    if jitter:
        cx, cy = cx + rng.uniform(-0.02, 0.02), cy + rng.uniform(-0.02, 0.02)
        side *= rng.uniform(0.95, 1.05)
        period *= rng.uniform(0.94, 1.06)
        mark_x = mark_x + rng.uniform(-0.015, 0.015, scene.marks)
        mark_y = mark_y + rng.uniform(-0.015, 0.015, scene.marks)
        mark_w = mark_w * rng.uniform(0.9, 1.1, scene.marks)
        mark_h = mark_h * rng.uniform(0.9, 1.1, scene.marks)
        for name in colours:
            colours[name] = colours[name] + rng.uniform(-10, 10, 3)

    n = SUPERSAMPLING * resolution
    x = ((np.arange(n) + 0.5) / n)[None, :]
    y = ((np.arange(n) + 0.5) / n)[:, None]
    half = side / 2
    if scene.shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif scene.shape == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; known: {', '.join(SHAPES)}")
    ink = inside & _ink(scene.texture, x - phase[0], y - phase[1], period)
    mark = np.zeros((n, n), dtype=bool)
    for mx, my, mw, mh in zip(mark_x, mark_y, mark_w, mark_h, strict=True):
        mark |= (np.abs(x - mx) <= mw / 2) & (np.abs(y - my) <= mh / 2)
    layers = {"ink": ink, "base": inside & ~ink, "mark": mark & ~inside}
    layers["background"] = ~(inside | layers["mark"])

    def coverage(layer: np.ndarray) -> np.ndarray:
        return layer.reshape(resolution, SUPERSAMPLING, resolution, SUPERSAMPLING).mean(axis=(1, 3))

    image = sum(
        coverage(layer)[:, :, None] * np.clip(colours[name], 0, 255) for name, layer in layers.items()
    )
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# Caption wording. The vocabularies of the attributes are disjoint (a test checks).
_SHAPE_WORDS: dict[str, tuple[str, ...]] = {"circle": ("circle", "disc"), "square": ("square", "box")}
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "to the left"),
    "center": ("in the middle", "in the center", "at the centre"),
    "right": ("on the right", "at the right", "to the right"),
}
_TEXTURE_NOUNS: dict[str, tuple[str, ...]] = {
    "stripes": ("stripes", "stripe pattern"),
    "checks": ("checks", "checkerboard"),
    "dots": ("dots", "spots", "polka dots"),
}
_TEXTURE_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "stripes": ("striped", "stripy"),
    "checks": ("checked", "checkered", "chequered"),
    "dots": ("dotted", "spotted", "polka-dot"),
}
_FREQUENCY_WORDS: dict[str, tuple[str, ...]] = {
    "fine": ("fine", "dense", "tight"),
    "coarse": ("coarse", "broad", "wide"),
}
_MARK_NOUNS: tuple[tuple[str, str], ...] = (("bar", "bars"), ("tick", "ticks"), ("mark", "marks"))
_COUNT_WORDS: dict[int, tuple[str, ...]] = {1: ("one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
_BELOW_WORDS: tuple[str, ...] = ("below", "underneath", "beneath")


@dataclasses.dataclass(frozen=True)
class _Phrases:
    """The pieces a template joins; empty strings for what the caption leaves out."""

    shape: str  # "circle"
    where: str  # "on the left"
    noun: str  # "fine red stripes"; plain: "solid red colour"
    adjective: str  # "red striped"; plain: "plain red"
    frequency: str  # " with a fine pattern" or ""
    marks: str  # "two bars" or ""
    below: str  # "below"


def _choose(options: tuple[str, ...], rng: np.random.Generator | None) -> str:
    return options[0] if rng is None else options[rng.integers(len(options))]


def _phrases(scene: Scene, rng: np.random.Generator | None, omitted: frozenset[str]) -> _Phrases:
    colour = "" if "colour" in omitted else scene.colour
    frequency = "" if "frequency" in omitted or scene.texture == "plain" else scene.frequency
    frequency_word = _choose(_FREQUENCY_WORDS[frequency], rng) if frequency else ""
    adjective_word = _choose(_TEXTURE_ADJECTIVES[scene.texture], rng)
    if scene.texture == "plain":
        noun = " ".join(w for w in (adjective_word, colour, "colour") if w)
        adjective = " ".join(w for w in (adjective_word, colour) if w)
    else:
        noun = " ".join(w for w in (frequency_word, colour, _choose(_TEXTURE_NOUNS[scene.texture], rng)) if w)
        adjective = " ".join(w for w in (colour, adjective_word) if w)
    marks = ""
    if "marks" not in omitted:
        singular, plural = _MARK_NOUNS[0] if rng is None else _MARK_NOUNS[rng.integers(len(_MARK_NOUNS))]
        marks = f"{_choose(_COUNT_WORDS[scene.marks], rng)} {singular if scene.marks == 1 else plural}"
    return _Phrases(
        shape=_choose(_SHAPE_WORDS[scene.shape], rng),
        where=_choose(_POSITION_PHRASES[scene.position], rng),
        noun=noun,
        adjective=adjective,
        frequency=f" with a {frequency_word} pattern" if frequency_word else "",
        marks=marks,
        below=_choose(_BELOW_WORDS, rng),
    )


def _after(marks: str, below: str, separator: str = ", ") -> str:
    return f"{separator}{marks} {below}" if marks else ""


_TEMPLATES = (
    lambda p: f"a {p.shape} {p.where} with {p.noun}{_after(p.marks, p.below)}",
    lambda p: f"a {p.adjective} {p.shape} {p.where}{p.frequency}{_after(p.marks, p.below)}",
    lambda p: f"{p.noun} filling a {p.shape} {p.where}{_after(p.marks, p.below)}",
    lambda p: f"{p.where}: a {p.shape} of {p.noun}{_after(p.marks, p.below, '; ')}",
    lambda p: f"picture of a {p.shape} {p.where}, {p.noun}{_after(p.marks, p.below)}",
    lambda p: (f"{p.marks} under " if p.marks else "") + f"a {p.adjective} {p.shape} {p.where}{p.frequency}",
)
TEMPLATE_COUNT = len(_TEMPLATES)


def caption(
    scene: Scene,
    rng: np.random.Generator,
    omit: dict[str, float] | None = None,
    template: int | None = None,
) -> str:
    """Word a fully specified scene in one of several phrasings, chosen by ``rng``.

    ``omit`` gives, per attribute, the probability that the caption leaves it out (default
    :data:`OMIT_PROBABILITY`; ``{}`` names everything); ``template`` picks a phrasing instead of ``rng``.
    """
    omit = OMIT_PROBABILITY if omit is None else omit
    index = int(rng.integers(TEMPLATE_COUNT)) if template is None else template
    omitted = frozenset(name for name, p in omit.items() if rng.random() < p)
    return _TEMPLATES[index](_phrases(scene, rng, omitted))


def canonical_caption(scene: Scene) -> str:
    """The first phrasing with the first synonyms, naming every attribute: for prompt sets that should
    differ only in content."""
    return _TEMPLATES[0](_phrases(scene, None, frozenset()))


def captioned_scene(scene: Scene, text: str) -> Scene:
    """``scene`` with the attributes ``text`` leaves out set to None (what the caption asks for)."""
    named = parse_caption(text).attributes()
    return Scene(**{name: getattr(scene, name) if name in named else None for name in ATTRIBUTES})


# The words parse_caption reads, per attribute value (a word in no table is ignored: "pattern", "a").
_PARSE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": _SHAPE_WORDS,
    "position": {"left": ("left",), "center": ("center", "centre", "middle"), "right": ("right",)},
    "texture": {
        "plain": ("plain", "solid"),
        "stripes": ("stripes", "stripe", "striped", "stripy"),
        "checks": ("checks", "checkerboard", "checked", "checkered", "chequered"),
        "dots": ("dots", "dot", "spots", "polka", "dotted", "spotted"),
    },
    "colour": {name: (name,) for name in TEXTURE_COLOURS},
    "frequency": _FREQUENCY_WORDS,
}
_MARK_WORDS: frozenset[str] = frozenset(w for pair in _MARK_NOUNS for w in pair)
_COUNT_INDEX: dict[str, int] = {"one": 1, "single": 1, "two": 2, "pair": 2, "three": 3}
_WORD = re.compile(r"[a-z]+")


def _lookup(words: list[str], table: dict[str, tuple[str, ...]]) -> str | None:
    """The value of the first word of ``words`` that ``table`` (value -> words) knows."""
    index = {word: value for value, synonyms in table.items() for word in synonyms}
    return next((index[w] for w in words if w in index), None)


def parse_caption(text: str) -> Scene:
    """Read the attributes a caption names (None for those it leaves out).

    Accepts every phrasing :func:`caption` makes and free prompts in the same vocabulary, e.g.
    "a disc on the right with dense blue polka dots, three ticks below". The bars' count is the count
    word (one, single, two, pair, three) among the three words before the first bar/tick/mark word.
    """
    words = _WORD.findall(text.lower().replace("-", " "))
    found = {name: _lookup(words, table) for name, table in _PARSE_WORDS.items()}
    marks = None
    at = next((i for i, w in enumerate(words) if w in _MARK_WORDS), None)
    if at is not None:
        before = reversed(words[max(0, at - 3) : at])
        marks = next((_COUNT_INDEX[w] for w in before if w in _COUNT_INDEX), None)
    return Scene(**found, marks=marks)


def vocabulary() -> dict[str, set[str]]:
    """Every word :func:`parse_caption` reads, per attribute (their sets are disjoint)."""
    words = {name: {w for s in table.values() for w in s} for name, table in _PARSE_WORDS.items()}
    return {**words, "marks": set(_MARK_WORDS) | set(_COUNT_INDEX)}


def samples(
    seed: int, count: int, resolution: int = 128, omit: dict[str, float] | None = None
) -> Iterator[tuple[np.ndarray, str, Scene]]:
    """``count`` (image, caption, scene) triples, the same for the same seed and resolution. The scene is
    the picture's full content; the caption may leave fine attributes out (``omit``, see :func:`caption`)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        scene = random_scene(rng)
        image_seed = int(rng.integers(2**63))
        yield render(scene, image_seed, resolution), caption(scene, rng, omit), scene


def dataset(
    seed: int, count: int, resolution: int = 128, omit: dict[str, float] | None = None
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``count`` samples stacked: images (count, resolution, resolution, 3) uint8, captions, scenes."""
    images, captions, scenes = [], [], []
    for image, text, scene in samples(seed, count, resolution, omit):
        images.append(image)
        captions.append(text)
        scenes.append(scene)
    return np.stack(images), captions, scenes


# Development prompt sets: one layout (or two), varying the fine detail.
def texture_grid_prompt_set() -> list[str]:
    """One layout (a square in the middle, two bars): 3 textures x 3 colours x 2 frequencies (18)."""
    return [
        canonical_caption(Scene("square", "center", texture, colour, frequency, 2))
        for texture, colour, frequency in itertools.product(
            ("stripes", "checks", "dots"), TEXTURE_COLOURS, FREQUENCIES
        )
    ]


def detail_variations_prompt_set() -> list[str]:
    """Variations of one scene (a circle on the left with fine red stripes, one bar), each line changing
    one or two fine attributes, never the layout (16)."""
    base = Scene("circle", "left", "stripes", "red", "fine", 1)
    changes = [
        {},
        {"frequency": "coarse"},
        {"colour": "blue"},
        {"colour": "green"},
        {"texture": "checks"},
        {"texture": "dots"},
        {"texture": "plain", "frequency": None},
        {"marks": 2},
        {"marks": 3},
        {"texture": "checks", "frequency": "coarse"},
        {"texture": "dots", "colour": "green"},
        {"colour": "blue", "marks": 3},
        {"texture": "plain", "frequency": None, "colour": "green"},
        {"frequency": "coarse", "marks": 2},
        {"texture": "dots", "frequency": "coarse", "marks": 2},
        {"texture": "checks", "colour": "blue", "marks": 2},
    ]
    return [canonical_caption(dataclasses.replace(base, **change)) for change in changes]


def marks_and_layout_prompt_set() -> list[str]:
    """Two layouts (a circle and a square on the right), coarse green dots or fine blue checks, 1 to 3
    bars (12)."""
    return [
        canonical_caption(Scene(shape, "right", texture, colour, frequency, marks))
        for shape, (texture, colour, frequency), marks in itertools.product(
            SHAPES, (("dots", "green", "coarse"), ("checks", "blue", "fine")), MARK_COUNTS
        )
    ]


PROMPT_SETS = {
    "texture_grid": texture_grid_prompt_set,
    "detail_variations": detail_variations_prompt_set,
    "marks_and_layout": marks_and_layout_prompt_set,
}


def held_out_sets() -> dict[str, list[str]]:
    """Four prompt sets of this domain for measuring, none used while developing hierdiff.

    - ``patterns``: a circle in the middle with three bars: 4 textures x 3 colours, fine, plus the three
      textures coarse in blue (15): one layout, differing in texture, colour and frequency;
    - ``counts``: a square on the left with coarse red checks or fine green dots, plain blue, or coarse
      red stripes, 1 to 3 bars each (12): one layout, differing in detail;
    - ``reworded``: three scenes sharing a layout (a square in the middle), each worded four ways in
      random phrasings that name every attribute (12, rng seed 2027);
    - ``mixed``: 16 random scenes in random phrasings (rng seed 2026; some leave a detail out).
    """
    patterns = [
        canonical_caption(
            Scene("circle", "center", texture, colour, None if texture == "plain" else "fine", 3)
        )
        for texture, colour in itertools.product(TEXTURES, TEXTURE_COLOURS)
    ]
    patterns += [canonical_caption(Scene("circle", "center", t, "blue", "coarse", 3)) for t in TEXTURES[1:]]
    counts = [
        canonical_caption(Scene("square", "left", texture, colour, frequency, marks))
        for (texture, colour, frequency), marks in itertools.product(
            (
                ("checks", "red", "coarse"),
                ("dots", "green", "fine"),
                ("plain", "blue", None),
                ("stripes", "red", "coarse"),
            ),
            MARK_COUNTS,
        )
    ]
    rng = np.random.default_rng(2027)
    reworded: list[str] = []
    for scene in (
        Scene("square", "center", "dots", "blue", "fine", 3),
        Scene("square", "center", "stripes", "green", "coarse", 1),
        Scene("square", "center", "plain", "red", None, 2),
    ):
        words: list[str] = []
        while len(words) < 4:
            text = caption(scene, rng, omit={})
            if text not in words and text != canonical_caption(scene):
                words.append(text)
        reworded += words
    rng = np.random.default_rng(2026)
    mixed = [caption(random_scene(rng), rng) for _ in range(16)]
    sets = {"patterns": patterns, "counts": counts, "reworded": reworded, "mixed": mixed}
    developed = {p for build in PROMPT_SETS.values() for p in build()}
    for name, prompts in sets.items():
        reused = developed.intersection(prompts)
        if reused:
            raise AssertionError(f"{name} reuses prompts of the development sets: {sorted(reused)}")
    return sets
