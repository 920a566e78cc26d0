"""Captioned synthetic pictures with checkable content: one coloured shape on a plain background.

A :class:`Scene` fixes five attributes (shape, colour, size, position on a 3 x 3 grid, background);
:func:`render` draws it (deterministic from a seed: small jitter of place, size and colour) and
:func:`caption` words it in one of several natural phrasings. :func:`parse_caption` reads the
attributes back out of any caption (or a user's prompt in the same vocabulary), so prompt-set files
need no side-car annotations.

Run ``python -m hierdiff_lab.synthetic`` to rewrite its prompt sets among the embedded ones in
``hierdiff_core/prompt_sets/`` (read them with ``hierdiff_core.prompts.embedded_prompt_set``).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hierdiff_core.prompts import PROMPT_SET_DIR

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 50, 190),
}
# Background colours are disjoint from shape colours, so a colour word alone says which it names.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
# Side of the shape's bounding box as a fraction of the picture side.
SIZE_FRACTION: dict[str, float] = {"small": 0.22, "large": 0.40}
# 3 x 3 grid: (row, column) -> name. Cell centres lie at these fractions of the picture side.
GRID_CENTRES: tuple[float, float, float] = (0.22, 0.5, 0.78)
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "center",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}
POSITION_CELL: dict[str, tuple[int, int]] = {name: cell for cell, name in POSITIONS.items()}
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "position", "background")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One picture's content. Any attribute may be None in a parsed caption that leaves it out."""

    shape: str | None
    colour: str | None
    size: str | None
    position: str | None
    background: str | None

    def attributes(self) -> dict[str, str]:
        """The attributes that are set, by name (see :data:`ATTRIBUTES`)."""
        return {name: value for name in ATTRIBUTES if (value := getattr(self, name)) is not None}


def all_scenes() -> list[Scene]:
    """Every fully specified scene: 3 shapes x 5 colours x 2 sizes x 9 positions x 3 backgrounds = 810."""
    return [
        Scene(shape, colour, size, position, background)
        for shape, colour, size, position, background in itertools.product(
            SHAPES, SHAPE_COLOURS, SIZES, POSITIONS.values(), BACKGROUNDS
        )
    ]


def random_scene(rng: np.random.Generator) -> Scene:
    """A uniformly drawn fully specified scene."""
    return Scene(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=list(SHAPE_COLOURS)[rng.integers(len(SHAPE_COLOURS))],
        size=SIZES[rng.integers(len(SIZES))],
        position=list(POSITIONS.values())[rng.integers(len(POSITIONS))],
        background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
    )


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape centred (by bounding box) at (cx, cy); None for a circle."""
    h = side / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # apex up
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, seed: int, resolution: int = 64, jitter: bool = True) -> np.ndarray:
    """Draw a fully specified scene.

    Returns an (resolution, resolution, 3) uint8 RGB array. ``seed`` drives the jitter of place
    (up to 4 % of the side), size (+-10 %) and colours (+-12 per channel); anti-aliased by drawing at
    4x and box-filtering down.
    """
    missing = [name for name in ATTRIBUTES if getattr(scene, name) is None]
    if missing:
        raise ValueError(f"cannot render a scene without {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    row, col = POSITION_CELL[scene.position]
    cx, cy, side = GRID_CENTRES[col], GRID_CENTRES[row], SIZE_FRACTION[scene.size]
    colour = np.array(SHAPE_COLOURS[scene.colour], dtype=float)
    background = np.array(BACKGROUNDS[scene.background], dtype=float)
    if jitter:
        cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
        side *= rng.uniform(0.9, 1.1)
        colour += rng.uniform(-12, 12, 3)
        background += rng.uniform(-12, 12, 3)
    scale = 4 * resolution
    image = Image.new("RGB", (scale, scale), tuple(int(v) for v in np.clip(background, 0, 255)))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(v) for v in np.clip(colour, 0, 255))
    polygon = shape_polygon(scene.shape, cx * scale, cy * scale, side * scale)
    if polygon is None:
        h = side * scale / 2
        draw.ellipse([cx * scale - h, cy * scale - h, cx * scale + h, cy * scale + h], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.BOX))


# Caption wording. Each template uses the same slots; position and size have several phrasings.
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the top-left corner", "at the top left"),
    "top": ("at the top", "at the top center", "near the top edge"),
    "top right": ("in the top right", "in the top-right corner", "at the top right"),
    "left": ("on the left", "at the left side", "in the middle left"),
    "center": ("in the center", "in the middle", "at the centre"),
    "right": ("on the right", "at the right side", "in the middle right"),
    "bottom left": ("in the bottom left", "in the bottom-left corner", "at the bottom left"),
    "bottom": ("at the bottom", "at the bottom center", "near the bottom edge"),
    "bottom right": ("in the bottom right", "in the bottom-right corner", "at the bottom right"),
}
_SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} {where} on a {background} background",
    "{colour} {shape}, {size}, {where}, {background} backdrop",
    "a {background} background with a {size} {colour} {shape} {where}",
    "{size} {colour} {shape} {where}, {background} background",
    "a picture of a {colour} {shape}, {size}, {where}, on {background}",
    "one {size} {colour} {shape} {where} over a plain {background} background",
)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """Word a fully specified scene in one of several phrasings, chosen by ``rng``."""
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    where = _POSITION_PHRASES[scene.position]
    size_words = _SIZE_WORDS[scene.size]
    return template.format(
        size=size_words[rng.integers(len(size_words))],
        colour=scene.colour,
        shape=scene.shape,
        where=where[rng.integers(len(where))],
        background=scene.background,
    )


def canonical_caption(scene: Scene) -> str:
    """The first phrasing, for prompt sets that should differ only in content."""
    return _TEMPLATES[0].format(
        size=scene.size,
        colour=scene.colour,
        shape=scene.shape,
        where=_POSITION_PHRASES[scene.position][0],
        background=scene.background,
    )


_WORD = re.compile(r"[a-z]+")


def parse_caption(text: str) -> Scene:
    """Read the attributes a caption names (None for those it leaves out).

    Accepts every phrasing :func:`caption` makes and free prompts in the same vocabulary, e.g.
    "big blue square, top-right corner". Position words: top/bottom and left/right combine; "middle"
    or "center"/"centre" alone means the centre cell, "middle left" means the left cell.
    """
    words = _WORD.findall(text.lower().replace("-", " "))
    shape = next((w for w in words if w in SHAPES), None)
    colour = next((w for w in words if w in SHAPE_COLOURS), None)
    background = next((w for w in words if w in BACKGROUNDS or w == "gray"), None)
    background = "grey" if background == "gray" else background
    size = next((name for w in words for name, syn in _SIZE_WORDS.items() if w in syn), None)
    vertical = next((w for w in words if w in ("top", "bottom")), None)
    horizontal = next((w for w in words if w in ("left", "right")), None)
    if vertical and horizontal:
        position = f"{vertical} {horizontal}"
    elif vertical or horizontal:
        position = vertical or horizontal
    elif any(w in ("center", "centre", "middle") for w in words):
        position = "center"
    else:
        position = None
    return Scene(shape, colour, size, position, background)


def samples(seed: int, count: int, resolution: int = 64) -> Iterator[tuple[np.ndarray, str, Scene]]:
    """``count`` (image, caption, scene) triples, the same for the same seed and resolution."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        scene = random_scene(rng)
        image_seed = int(rng.integers(2**63))
        yield render(scene, image_seed, resolution), caption(scene, rng), scene


def dataset(seed: int, count: int, resolution: int = 64) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``count`` samples stacked: images (count, resolution, resolution, 3) uint8, captions, scenes."""
    images, captions, scenes = [], [], []
    for image, text, scene in samples(seed, count, resolution):
        images.append(image)
        captions.append(text)
        scenes.append(scene)
    return np.stack(images), captions, scenes


# Prompt sets a user of this domain would plausibly write.
def variations_prompt_set() -> list[str]:
    """Variations of one scene (a small red triangle at the top left on grey): each line changes one
    or two attributes, the way an artist explores around an idea. 16 prompts."""
    base = Scene("triangle", "red", "small", "top left", "grey")
    changes = [
        {},
        {"size": "large"},
        {"colour": "blue"},
        {"colour": "yellow"},
        {"shape": "circle"},
        {"shape": "square"},
        {"position": "top right"},
        {"position": "center"},
        {"position": "bottom left"},
        {"background": "white"},
        {"background": "black"},
        {"size": "large", "colour": "green"},
        {"shape": "circle", "position": "center"},
        {"colour": "purple", "background": "white"},
        {"shape": "square", "size": "large", "position": "bottom right"},
        {"colour": "blue", "background": "black", "position": "top"},
    ]
    return [canonical_caption(dataclasses.replace(base, **change)) for change in changes]


def attribute_grid_prompt_set() -> list[str]:
    """A grid of attributes: 3 shapes x 4 colours x 2 positions, large, on white. 24 prompts."""
    return [
        canonical_caption(Scene(shape, colour, "large", position, "white"))
        for shape, colour, position in itertools.product(
            SHAPES, ("red", "green", "blue", "yellow"), ("top left", "bottom right")
        )
    ]


def wording_prompt_set(seed: int = 7) -> list[str]:
    """Four scenes, each worded four ways: near-duplicate prompts that should share most steps."""
    rng = np.random.default_rng(seed)
    scenes = [
        Scene("circle", "blue", "large", "center", "white"),
        Scene("square", "green", "small", "bottom right", "black"),
        Scene("triangle", "yellow", "large", "top", "grey"),
        Scene("circle", "purple", "small", "left", "grey"),
    ]
    prompts: list[str] = []
    for scene in scenes:
        while sum(parse_caption(p) == scene for p in prompts) < 4:
            text = caption(scene, rng)
            if text not in prompts:
                prompts.append(text)
    return prompts


PROMPT_SETS = {
    "variations": variations_prompt_set,
    "attribute_grid": attribute_grid_prompt_set,
    "wording": wording_prompt_set,
}


def write_prompt_sets(directory: Path = PROMPT_SET_DIR) -> list[Path]:
    """Write every prompt set as ``NAME.txt`` (one prompt per line); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in PROMPT_SETS.items():
        path = directory / f"{name}.txt"
        path.write_text("\n".join(build()) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_prompt_sets():
        print(written)
