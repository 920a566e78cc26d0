# SPDX-License-Identifier: GPL-3.0-or-later
"""The synthetic test beds: one :class:`Domain` per test bed, for training and for the benchmarks.

A domain pairs a data module (pictures, captions, prompt sets) with a checker module that reads
pictures back, and names its trained model. Both modules have the same shape in every domain:

- data: ``ATTRIBUTES``, ``PROMPT_SETS`` (name -> builder), ``parse_caption(text) -> Scene``,
  ``canonical_caption(scene)``, ``all_scenes()``, ``samples(seed, count, resolution)``,
  ``dataset(seed, count, resolution)``; a ``Scene`` has ``attributes()`` (what it names);
- checker: ``read_scene(image) -> Reading`` (``.scene``), ``check(image, caption) -> {attribute: bool}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from . import checker, held_out, synthetic, texture_checker, textures

WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclasses.dataclass(frozen=True)
class Domain:
    """One synthetic test bed: ``data`` and ``checker`` modules (see the module docstring), the
    picture side in pixels, the trained model's path and the held-out prompt sets (never used while
    developing hierdiff; ``data.PROMPT_SETS`` are the development sets); ``confirmation_sets``, where
    there are any, were made after a conclusion drawn on the held-out sets, to confirm it."""

    name: str
    resolution: int
    data: ModuleType
    checker: ModuleType
    checkpoint: Path
    held_out_sets: Callable[[], dict[str, list[str]]]
    confirmation_sets: Callable[[], dict[str, list[str]]] | None = None

    @property
    def attributes(self) -> tuple[str, ...]:
        return self.data.ATTRIBUTES

    @property
    def prompt_sets(self) -> dict[str, Callable[[], list[str]]]:
        return self.data.PROMPT_SETS

    @property
    def latent_size(self) -> int:
        """The latent's side (the VAE down-samples 8 x)."""
        return self.resolution // 8

    @property
    def metadata_prefix(self) -> str:
        """Prefix of its checkpoint's training metadata keys (``hierdiff.shapes_t2i.`` for shapes)."""
        return f"hierdiff.{self.name}_t2i."

    def sets(self, collection: str) -> dict[str, list[str]]:
        """The prompt sets of a collection: "development", "held_out" or "confirmation"."""
        if collection == "development":
            return {name: build() for name, build in self.prompt_sets.items()}
        if collection == "held_out":
            return self.held_out_sets()
        if collection == "confirmation" and self.confirmation_sets is not None:
            return self.confirmation_sets()
        raise ValueError(f"the {self.name} domain has no {collection!r} prompt sets")

    def read(self, image: np.ndarray) -> dict[str, str | int | None]:
        """(H, W, 3) uint8 -> every attribute's value as the checker reads it (None: read nothing)."""
        scene = self.checker.read_scene(image).scene
        return {name: getattr(scene, name) for name in self.attributes}

    def parse(self, text: str) -> dict[str, str | int]:
        """The attributes a caption names, with their values."""
        return self.data.parse_caption(text).attributes()


DOMAINS: dict[str, Domain] = {
    "shapes": Domain(
        name="shapes",
        resolution=64,
        data=synthetic,
        checker=checker,
        checkpoint=WEIGHTS / "shapes-t2i.safetensors",
        held_out_sets=held_out.held_out_sets,
        confirmation_sets=held_out.confirmation_sets,
    ),
    "textures": Domain(
        name="textures",
        resolution=128,
        data=textures,
        checker=texture_checker,
        checkpoint=WEIGHTS / "textures-t2i.safetensors",
        held_out_sets=textures.held_out_sets,
    ),
}
