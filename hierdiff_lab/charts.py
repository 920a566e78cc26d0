# SPDX-License-Identifier: GPL-3.0-or-later
"""Line charts of benchmark curves against model evaluations per image, drawn with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def plot(panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], path: Path, title: str) -> None:
    """Side-by-side line charts against model evaluations per image, one polyline per curve (Pillow).

    ``panels`` holds (y-axis label, {curve name: [(evaluations per image, value), ...]})."""
    from PIL import Image, ImageDraw

    width, height, margin = 560, 420, 60
    image = Image.new("RGB", (width * len(panels), height + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 8), title, fill="black")
    for panel, (label, curves) in enumerate(panels):
        left, top = panel * width, 30
        points = [p for curve in curves.values() for p in curve]
        x_max = max(x for x, _ in points) * 1.05
        y_low, y_high = min(y for _, y in points), max(y for _, y in points)
        pad = max(0.05 * (y_high - y_low), 1e-3)
        y_low, y_high = y_low - pad, y_high + pad

        def at(x: float, y: float, left=left, top=top, x_max=x_max, y_low=y_low, y_high=y_high):
            return (
                left + margin + x / x_max * (width - 2 * margin),
                top + height - margin - (y - y_low) / (y_high - y_low) * (height - 2 * margin),
            )

        draw.line([at(0, y_low), at(x_max, y_low)], fill="black")
        draw.line([at(0, y_low), at(0, y_high)], fill="black")
        for tick in np.linspace(y_low, y_high, 6):
            draw.text((left + 5, at(0, tick)[1] - 6), f"{tick:.3g}", fill="black")
        for tick in np.linspace(0, x_max, 6):
            draw.text((at(tick, y_low)[0] - 8, top + height - margin + 8), f"{tick:.1f}", fill="black")
        draw.text((left + width // 2 - 90, top + height - 28), "model evaluations per image", fill="black")
        draw.text((left + margin, top + 4), label, fill="black")
        for index, ((name, curve), colour) in enumerate(zip(curves.items(), COLOURS, strict=False)):
            xy = [at(x, y) for x, y in sorted(curve)]
            draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            legend_x, legend_y = left + width - margin - 190, top + 24 + 16 * index
            draw.line([(legend_x, legend_y + 6), (legend_x + 20, legend_y + 6)], fill=colour, width=2)
            draw.text((legend_x + 25, legend_y), name, fill=colour)
    image.save(path)
