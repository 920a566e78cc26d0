# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff outside ComfyUI, on diffusers pipelines: any supported pipeline through :func:`hierarchical`,
priors, the Kandinsky 2.2 decoder, ``hierdiff generate``.

The only package of hierdiff that imports diffusers and transformers (each module where it needs them;
importing this package itself loads neither: :func:`hierarchical` and the other names below are
imported on first use). The planner and the engine it drives are ``hierdiff_core``'s.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .denoiser import grouped
    from .pipelines import (
        HierarchicalOutput,
        PipelineFolderError,
        detect_family,
        hierarchical,
        hierarchical_chunks,
        load_pipeline,
        plan_chunks,
    )

_LAZY = {
    "hierarchical": "pipelines",
    "hierarchical_chunks": "pipelines",
    "HierarchicalOutput": "pipelines",
    "PipelineFolderError": "pipelines",
    "detect_family": "pipelines",
    "load_pipeline": "pipelines",
    "plan_chunks": "pipelines",
    "grouped": "denoiser",
}

__all__ = [
    "HierarchicalOutput",
    "PipelineFolderError",
    "detect_family",
    "grouped",
    "hierarchical",
    "hierarchical_chunks",
    "load_pipeline",
    "plan_chunks",
]


def __getattr__(name: str) -> Any:
    # PEP 562: these names load their modules (and torch) only when first used.
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
