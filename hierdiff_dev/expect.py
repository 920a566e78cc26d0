# SPDX-License-Identifier: GPL-3.0-or-later
"""What the tests on the real host expect of sampling, and the independent counters they check it with.

``assert_close`` is the equality of hierarchical sampling at tau = 0 with stock sampling; ``counting`` and
``recording`` wrap a MODEL's apply function (ComfyUI's ``model_function_wrapper``), below everything the
pack does, so what they see is what reached the network.
"""

from __future__ import annotations

from typing import Any

import torch

TOLERANCE = 1e-4
"""Relative to the reference's magnitude. The tiny models' random weights give latents of magnitude ~100
(they predict no real noise), so float32 round-off alone is ~1e-3 in absolute terms: stock ComfyUI's own
batch-of-N and batch-of-1 runs of one prompt differ by about 4e-6 of the magnitude."""


PROMPTS = ["a red cat on a sofa", "a blue dog in the snow", "a green tree in a field"]
"""Three prompts far apart: at a 50 % target saving the tiny model's tree keeps them apart long."""
SET_WITH_SPLITS = [
    "a red cat on a sofa",
    "a red cat on a chair",
    "a blue dog in the snow",
    "a blue dog on a beach",
    "a green tree in a field",
    "an old castle at night",
]
"""Six prompts in pairs: at a 50 % target saving groups form and split during the run."""


def assert_close(actual: torch.Tensor, reference: torch.Tensor, what: str) -> float:
    """Equal shapes, and values within ``TOLERANCE`` of the reference's magnitude (at least 1); returns
    the difference relative to that magnitude."""
    assert actual.shape == reference.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    scale = max(1.0, reference.abs().max().item())
    difference = (actual - reference).abs().max().item()
    assert difference <= TOLERANCE * scale, f"{what}: differs by {difference} (magnitude {scale})"
    return difference / scale


def recording(model: Any) -> tuple[Any, list[dict]]:
    """A clone of ``model`` whose apply function records every call, and the list of records: ``rows``
    (latent rows in the call), ``shape`` (one row's), ``chunks`` (ComfyUI's cond_or_uncond) and ``c`` (the
    network's inputs)."""
    calls: list[dict] = []

    def wrapper(apply_model, args):
        x = args["input"]
        calls.append({"rows": x.shape[0], "shape": tuple(x.shape[1:]), "chunks": list(args["cond_or_uncond"]),
                      "c": args["c"]})  # fmt: skip
        return apply_model(x, args["timestep"], **args["c"])

    clone = model.clone()
    clone.set_model_unet_function_wrapper(wrapper)
    return clone, calls


class RowCounter:
    """Totals over a :func:`recording`'s calls, read live: ``rows``, ``calls`` and the row ``shapes``;
    ``reset()`` starts again."""

    def __init__(self, calls: list[dict]):
        self._calls = calls

    def __getitem__(self, name: str) -> Any:
        if name == "rows":
            return sum(call["rows"] for call in self._calls)
        if name == "calls":
            return len(self._calls)
        if name == "shapes":
            return {call["shape"] for call in self._calls}
        raise KeyError(name)

    def reset(self) -> None:
        self._calls.clear()


def counting(model: Any) -> tuple[Any, RowCounter]:
    """A clone of ``model`` and a :class:`RowCounter` of the latent rows that reach its network."""
    clone, calls = recording(model)
    return clone, RowCounter(calls)


def network_counting(model: Any) -> tuple[Any, dict[str, int], Any]:
    """A clone of ``model`` and a counter of the latent rows its network's first layer really computes
    (below every wrapper, so rows a cache answers are not counted), and the hook's handle. The clone
    shares the network, so the counter also sees the rows of other clones of it (an SD1-style UNet)."""
    clone = model.clone()
    counter = {"rows": 0}
    first_layer = clone.model.diffusion_model.input_blocks[0][0]

    def count(_module, inputs):
        counter["rows"] += int(inputs[0].shape[0])

    handle = first_layer.register_forward_pre_hook(count)
    return clone, counter, handle


def measured_rows(out: Any) -> tuple[int, int]:
    """(rows through the model, rows ordinary sampling would take) from a sampler node's measured line."""
    line = out.ui["hierdiff_measured"][0]
    through = line.split("measured: ")[1].split(" latent rows")[0]
    instead = line.split(" instead of ")[1].split(",")[0].split(" ")[0]
    return int(through.replace(",", "")), int(instead.replace(",", ""))
