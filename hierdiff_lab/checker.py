"""Rule-based reader of synthetic-domain pictures: which caption attributes does an image satisfy?

:func:`read_scene` estimates every attribute of a picture:

- background: median colour of the 2-pixel border, nearest background palette colour;
- foreground: pixels farther than a threshold from that colour; its largest 4-connected component;
- colour: median colour of the foreground, nearest shape palette colour; the outline is then redrawn
  at half contrast between background and shape colour (robust to blur);
- position: the foreground's centroid, in thirds of the picture;
- size: the bounding box's larger side against the midpoint of the two nominal sizes;
- shape: the ideal circle / square / triangle drawn in the foreground's bounding box with the best
  intersection over union with the foreground.

:func:`check` compares that reading with a caption (or :class:`Scene`) and reports, per attribute
the caption names, whether the picture satisfies it. Pictures with no foreground satisfy only the
background attribute.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
from scipy import ndimage

from .synthetic import BACKGROUNDS, GRID_CENTRES, SHAPE_COLOURS, SHAPES, SIZE_FRACTION, Scene, parse_caption

# A pixel belongs to the foreground when its RGB distance from the background exceeds this.
FOREGROUND_DISTANCE = 60.0
# Components smaller than this fraction of the picture are noise, not a shape.
MIN_SHAPE_FRACTION = 0.01


@dataclasses.dataclass(frozen=True)
class Reading:
    """What :func:`read_scene` saw: the estimated scene plus the measurements behind it."""

    scene: Scene
    foreground_fraction: float
    shape_iou: float


def as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image or an (H, W, 3) uint8 / [0, 1] float array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    return array


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], dtype=float) - colour, axis=1)
    return names[int(np.argmin(distances))]


def _ideal_mask(shape: str, height: int, width: int) -> np.ndarray:
    """(height, width) bool: the shape filling a box of that size (pixel centres inside it)."""
    y, x = np.mgrid[0:height, 0:width]
    u = (x + 0.5) / width  # 0..1 across the box
    v = (y + 0.5) / height
    if shape == "square":
        return np.ones((height, width), dtype=bool)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":  # apex up: half-width grows linearly from the top
        return np.abs(u - 0.5) <= v / 2
    raise ValueError(f"unknown shape {shape!r}")


def read_scene(image: np.ndarray | Image.Image) -> Reading:
    """Estimate every attribute of a picture (see the module docstring for the rules)."""
    pixels = as_array(image).astype(float)
    height, width, _ = pixels.shape
    border = np.concatenate(
        [
            pixels[:2].reshape(-1, 3),
            pixels[-2:].reshape(-1, 3),
            pixels[:, :2].reshape(-1, 3),
            pixels[:, -2:].reshape(-1, 3),
        ]
    )
    background_colour = np.median(border, axis=0)
    background = _nearest(background_colour, BACKGROUNDS)
    mask = np.linalg.norm(pixels - background_colour, axis=2) > FOREGROUND_DISTANCE
    labels, count = ndimage.label(mask)
    if count == 0:
        return Reading(Scene(None, None, None, None, background), 0.0, 0.0)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    component = labels == (1 + int(np.argmax(sizes)))
    fraction = float(component.sum()) / (height * width)
    if fraction < MIN_SHAPE_FRACTION:
        return Reading(Scene(None, None, None, None, background), fraction, 0.0)

    shape_colour = np.median(pixels[component], axis=0)
    colour = _nearest(shape_colour, SHAPE_COLOURS)
    # Outline at half contrast: blur moves a fixed-distance threshold outwards and rounds corners,
    # while the half-way level between background and shape colour stays on the true edge.
    direction = shape_colour - background_colour
    level = (pixels - background_colour) @ direction / max(float(direction @ direction), 1e-6)
    grown = ndimage.binary_dilation(component, iterations=2)
    refined = grown & (level > 0.5)
    if refined.sum() >= MIN_SHAPE_FRACTION * height * width:
        component = refined
    ys, xs = np.nonzero(component)
    cy, cx = ys.mean() / height, xs.mean() / width
    # Grid cell: nearest nominal centre in each direction.
    row = int(np.argmin([abs(cy - c) for c in GRID_CENTRES]))
    col = int(np.argmin([abs(cx - c) for c in GRID_CENTRES]))
    from .synthetic import POSITIONS  # local: keeps the import line above short

    position = POSITIONS[(row, col)]
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = component[top:bottom, left:right]
    side = max(bottom - top, right - left) / max(height, width)
    size = "small" if side < (SIZE_FRACTION["small"] + SIZE_FRACTION["large"]) / 2 else "large"
    ious = {}
    for shape in SHAPES:
        ideal = _ideal_mask(shape, *box.shape)
        ious[shape] = float((ideal & box).sum()) / float((ideal | box).sum())
    shape = max(ious, key=ious.get)
    return Reading(Scene(shape, colour, size, position, background), fraction, ious[shape])


def check(image: np.ndarray | Image.Image, expected: Scene | str) -> dict[str, bool]:
    """For each attribute ``expected`` names (a Scene or a caption), whether the image satisfies it."""
    if isinstance(expected, str):
        expected = parse_caption(expected)
    seen = read_scene(image).scene
    return {name: getattr(seen, name) == value for name, value in expected.attributes().items()}


def accepts(image: np.ndarray | Image.Image, expected: Scene | str) -> bool:
    """True when the image satisfies every attribute the caption names."""
    return all(check(image, expected).values())
