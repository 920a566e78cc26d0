# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff: hierarchical shared-trunk sampling for sets of images, as a ComfyUI node pack.

ComfyUI imports this file; it registers the nodes through the V3 extension entry point. Nothing here
imports ComfyUI at module level, so tools (pytest among them) may import the package outside a host.
"""

import importlib
import os
import sys

# The framework-free engine lives beside this file. Appending (not prepending) keeps ComfyUI's own
# top-level `nodes` module ahead of our `nodes/` folder on sys.path.
_PACK_ROOT = os.path.dirname(os.path.abspath(__file__))
if _PACK_ROOT not in sys.path:
    sys.path.append(_PACK_ROOT)

WEB_DIRECTORY = "./web"

_NODE_MODULES = ("cluster", "samplers", "report", "prior", "templates", "routes", "tree_conditioning")


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class HierdiffExtension(ComfyExtension):
        async def get_node_list(self) -> list[type]:
            node_list: list[type] = []
            for name in _NODE_MODULES:
                node_list.extend(importlib.import_module(f".nodes.{name}", __name__).NODES)
            return node_list

    return HierdiffExtension()
