# SPDX-License-Identifier: GPL-3.0-or-later
"""Rule-based reader of textures-domain pictures (:mod:`hierdiff_lab.textures`): which caption attributes
does an image satisfy?

:func:`read_scene` estimates every attribute of a picture of any size (lengths below are at 128 px and
scale with the side); it first smooths a copy (Gaussian, 1 px) against pixel noise:

- background: median colour of the 2-pixel border;
- shape: the largest 4-connected region farther than :data:`FOREGROUND_DISTANCE` from the background,
  holes filled; circle or square by the better intersection over union with the ideal shape in its
  bounding box; position: its centroid's x, nearest of the three nominal centres;
- colour: inside the shape shrunk by 4 px, the mean direction (from the white base) of the 30 % of
  pixels farthest from white, nearest (by angle) of the palette's directions from white: the same for a
  blurred mix of colour and white;
- texture: the "ink" (0 on white, 1 on the colour) inside the shrunk shape. Plain when its mean
  exceeds 0.75 (mean is kept by blur); otherwise the 2-D power spectrum of the tapered ink (unsmoothed
  picture) decides: its peak within periods of 6 to 32 px gives the period (fine below 14.1 px, the
  geometric mean of 10 and 20), and the power at that frequency on the axes against the diagonals the
  kind: checks when a diagonal is strongest, stripes when one axis holds under a quarter of the other's
  power, dots otherwise;
- marks: 4-connected regions lighter than half-way between the background and the bars' nominal
  lightness, below the shape (at least 3 px away), of at least a quarter of a bar's nominal area.

:func:`check` compares that reading with a caption (or :class:`~hierdiff_lab.textures.Scene`) and
reports, per attribute the caption names, whether the picture satisfies it. :func:`validate` measures
the checker on fresh renders, clean or blurred and noisy; ``python -m hierdiff_lab.texture_checker``
prints that table. Measured on 500 renders (seed 31337): every attribute 1.000 clean, under Gaussian
blur of sigma 1 or 2 px, pixel noise of std 10, 20 or 40, and blur 2 with noise 20; at blur 3 the
fine textures fade (texture 0.974, frequency 0.961, marks 0.998, all 0.968).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from PIL import Image
from scipy import ndimage

from . import textures
from .checker import as_array
from .textures import ATTRIBUTES, Scene, parse_caption

FOREGROUND_DISTANCE = 50.0
MIN_SHAPE_FRACTION = 0.05
PLAIN_INK = 0.75
FINE_COARSE_PERIOD = float(np.sqrt(10.0 * 20.0))  # px at 128 px
STRIPES_AXIS_RATIO = 0.25
REFERENCE = 128  # lengths in px are at this resolution


@dataclasses.dataclass(frozen=True)
class Reading:
    """What :func:`read_scene` saw: the estimated scene plus the measurements behind it (period in px at
    128 px; the spectrum's power on the x axis, the y axis and the stronger diagonal)."""

    scene: Scene
    foreground_fraction: float
    shape_iou: float
    ink_mean: float
    period: float
    axis_x: float
    axis_y: float
    diagonal: float


def _shape_of(component: np.ndarray) -> tuple[str, float]:
    """(circle or square, its IoU) for the region, against the ideal shape filling its bounding box."""
    ys, xs = np.nonzero(component)
    box = component[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    height, width = box.shape
    y, x = np.mgrid[0:height, 0:width]
    u, v = (x + 0.5) / width - 0.5, (y + 0.5) / height - 0.5
    ideals = {"circle": u**2 + v**2 <= 0.25, "square": np.ones_like(box)}
    ious = {name: float((ideal & box).sum()) / float((ideal | box).sum()) for name, ideal in ideals.items()}
    shape = max(ious, key=ious.get)
    return shape, ious[shape]


def _colour_of(pixels: np.ndarray) -> str:
    """Nearest palette colour by the direction of the pixels (N, 3) from the white base."""
    offsets = np.array(textures.BASE, dtype=float) - pixels
    distance = np.linalg.norm(offsets, axis=1)
    strongest = offsets[distance >= np.quantile(distance, 0.7)].mean(axis=0)
    names = list(textures.TEXTURE_COLOURS)
    directions = np.array(textures.BASE, dtype=float) - np.array([textures.TEXTURE_COLOURS[n] for n in names])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return names[int(np.argmax(directions @ strongest))]


def _spectrum(ink: np.ndarray, inside: np.ndarray, scale: float) -> tuple[float, float, float, float]:
    """(period in px at 128 px, power on the x axis, on the y axis, on the stronger diagonal) of the ink
    pattern inside the region, at the peak frequency."""
    taper = np.clip(ndimage.distance_transform_edt(inside) / (4.0 * scale), 0.0, 1.0)
    centred = np.where(inside, ink - ink[inside].mean(), 0.0) * taper
    size = 2 * int(2 ** np.ceil(np.log2(max(ink.shape))))
    power = np.abs(np.fft.fft2(centred, s=(size, size))) ** 2
    k = np.fft.fftfreq(size)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    chebyshev = np.maximum(np.abs(kx), np.abs(ky))
    band = (chebyshev >= 1.0 / (32 * scale)) & (chebyshev <= 1.0 / (6 * scale))
    peak = np.unravel_index(np.argmax(np.where(band, power, -1.0)), power.shape)
    f = float(chebyshev[peak])
    bins = int(round(f * size))
    reach = max(2, int(round(0.1 * bins)))  # +-10 % of the frequency

    def near(fx: int, fy: int) -> float:
        rows = np.arange(fy - reach, fy + reach + 1) % size
        cols = np.arange(fx - reach, fx + reach + 1) % size
        return float(power[np.ix_(rows, cols)].max())

    axis_x = max(near(bins, 0), near(-bins, 0))
    axis_y = max(near(0, bins), near(0, -bins))
    diagonal = max(near(bins, bins), near(bins, -bins))
    return 1.0 / f / scale, axis_x, axis_y, diagonal


def _count_marks(smooth: np.ndarray, background: np.ndarray, shape_mask: np.ndarray, scale: float) -> int:
    """Light regions under the shape, of at least a quarter of a bar's nominal area."""
    weights = np.array([0.299, 0.587, 0.114])
    level = (float(background @ weights) + float(np.array(textures.MARK_COLOUR) @ weights)) / 2
    light = smooth @ weights > level
    height = shape_mask.shape[0]
    rows = np.nonzero(shape_mask.any(axis=1))[0]
    top = (rows.max() + 1 if len(rows) else int(0.7 * height)) + int(round(3 * scale))
    light[:top] = False
    labels, count = ndimage.label(light)
    if count == 0:
        return 0
    areas = ndimage.sum_labels(light, labels, index=np.arange(1, count + 1))
    nominal = textures.MARK_WIDTH * textures.MARK_HEIGHT * height * shape_mask.shape[1]
    return int((areas >= 0.25 * nominal).sum())


def read_scene(image: np.ndarray | Image.Image) -> Reading:
    """Estimate every attribute of a picture (see the module docstring for the rules)."""
    pixels = as_array(image).astype(float)
    height, width, _ = pixels.shape
    scale = height / REFERENCE
    smooth = ndimage.gaussian_filter(pixels, (scale, scale, 0))
    border = np.concatenate(
        [smooth[:2].reshape(-1, 3), smooth[-2:].reshape(-1, 3), smooth[:, :2].reshape(-1, 3),
         smooth[:, -2:].reshape(-1, 3)]
    )  # fmt: skip
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(smooth - background, axis=2) > FOREGROUND_DISTANCE
    labels, count = ndimage.label(foreground)
    shape_mask = np.zeros_like(foreground)
    if count:
        sizes = ndimage.sum_labels(foreground, labels, index=np.arange(1, count + 1))
        shape_mask = ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))
    marks = _count_marks(smooth, background, shape_mask, scale)
    fraction = float(shape_mask.sum()) / (height * width)
    inside = ndimage.binary_erosion(shape_mask, iterations=max(1, int(round(4 * scale))))
    if fraction < MIN_SHAPE_FRACTION or inside.sum() < 16:
        return Reading(Scene(None, None, None, None, None, marks), fraction, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    shape, iou = _shape_of(shape_mask)
    centre_x = float(np.nonzero(shape_mask)[1].mean()) / width
    position = min(textures.POSITION_X, key=lambda name: abs(textures.POSITION_X[name] - centre_x))
    colour = _colour_of(smooth[inside])
    base = np.array(textures.BASE, dtype=float)
    direction = base - np.array(textures.TEXTURE_COLOURS[colour], dtype=float)
    ink = (base - pixels) @ direction / float(direction @ direction)
    ink_mean = float(ink[inside].mean())
    period, axis_x, axis_y, diagonal = _spectrum(ink, inside, scale)
    if ink_mean > PLAIN_INK:
        texture, frequency = "plain", None
    else:
        frequency = "fine" if period < FINE_COARSE_PERIOD else "coarse"
        if diagonal > max(axis_x, axis_y):
            texture = "checks"
        elif min(axis_x, axis_y) < STRIPES_AXIS_RATIO * max(axis_x, axis_y):
            texture = "stripes"
        else:
            texture = "dots"
    scene = Scene(shape, position, texture, colour, frequency, marks)
    return Reading(scene, fraction, iou, ink_mean, period, axis_x, axis_y, diagonal)


def check(image: np.ndarray | Image.Image, expected: Scene | str) -> dict[str, bool]:
    """For each attribute ``expected`` names (a Scene or a caption), whether the image satisfies it.

    A caption's frequency is satisfied only by a textured picture of that frequency."""
    if isinstance(expected, str):
        expected = parse_caption(expected)
    seen = read_scene(image).scene
    return {name: getattr(seen, name) == value for name, value in expected.attributes().items()}


def accepts(image: np.ndarray | Image.Image, expected: Scene | str) -> bool:
    """True when the image satisfies every attribute the caption names."""
    return all(check(image, expected).values())


def degrade(image: np.ndarray, blur_sigma: float, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (sigma in pixels) then Gaussian pixel noise (std in grey levels), as uint8."""
    out = image.astype(float)
    if blur_sigma > 0:
        out = ndimage.gaussian_filter(out, (blur_sigma, blur_sigma, 0))
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


VALIDATION_SEED = 31337  # not a training seed (training draws with its --seed, 0 by default, and seed + 1)


def validate(
    seed: int = VALIDATION_SEED,
    count: int = 500,
    blur_sigma: float = 0.0,
    noise_std: float = 0.0,
    resolution: int = 128,
) -> dict[str, float]:
    """The checker's accuracy on ``count`` fresh renders drawn with ``seed``, blurred and noised: per
    attribute (frequency over the textured pictures only) and ``all`` (every attribute right)."""
    rng = np.random.default_rng([seed, 1])
    results = []
    for image, _caption, scene in textures.samples(seed, count, resolution):
        results.append(check(degrade(image, blur_sigma, noise_std, rng), scene))
    rates = {name: float(np.mean([r[name] for r in results if name in r])) for name in ATTRIBUTES}
    rates["all"] = float(np.mean([all(r.values()) for r in results]))
    return rates


CONDITIONS: dict[str, tuple[float, float]] = {
    "clean": (0.0, 0.0),
    "blur 1": (1.0, 0.0),
    "blur 2": (2.0, 0.0),
    "noise 10": (0.0, 10.0),
    "noise 20": (0.0, 20.0),
    "blur 1 + noise 10": (1.0, 10.0),
    "blur 2 + noise 20": (2.0, 20.0),
    "blur 3": (3.0, 0.0),
    "noise 40": (0.0, 40.0),
}


def validation_table(seed: int = VALIDATION_SEED, count: int = 500) -> str:
    """A markdown table of :func:`validate` under each of :data:`CONDITIONS`."""
    columns = [*ATTRIBUTES, "all"]
    lines = [
        f"| condition ({count} pictures, seed {seed}) | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, (blur, noise) in CONDITIONS.items():
        rates = validate(seed, count, blur, noise)
        lines.append(f"| {name} | " + " | ".join(f"{rates[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate the textures checker on fresh renders.")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    args = parser.parse_args(argv)
    print(validation_table(args.seed, args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
