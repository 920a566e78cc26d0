# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff testkit: a separate tiny ComfyUI node pack for hierdiff's tests and demo. NOT for users.

It provides one node, "Tiny Test Model Loader (hierdiff testkit, random weights)", which outputs
MODEL, CLIP and VAE like CheckpointLoaderSimple, for a tiny SD1.5-architecture model whose weights are
random (see ``tiny_model``). Its pictures are noise; it exists so that whole workflows run in seconds.

The folder is also the installed package ``testkit``. Importing it imports no ComfyUI, so its
ComfyUI-free modules work without the host; ``tiny_model``, ``tiny_families`` and ``nodes`` need
ComfyUI importable and its arguments set first (``hierdiff_dev.host.prepare_comfy_imports``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nodes import HierdiffTestkitExtension


async def comfy_entrypoint() -> HierdiffTestkitExtension:
    """ComfyUI's V3 entry point; imports the node (and so ComfyUI) only when ComfyUI loads the pack."""
    from .nodes import HierdiffTestkitExtension

    return HierdiffTestkitExtension()
