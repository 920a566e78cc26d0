# SPDX-License-Identifier: GPL-3.0-or-later
"""SelfAttentionGuidance per group: the attention it records, handed back one map per prompt row.

ComfyUI's SelfAttentionGuidance (``comfy_extras/nodes_sag.py``) replaces the middle block's
self-attention with a function that keeps the unconditioned rows' attention scores of the last model
call in a variable it shares with its post-CFG function; that function blurs each latent row of the
step where the map says the model attends, and calls the model once more on the blurred rows. Under a
hierarchical sampler the model calls hold one row per group (and a step may take several calls), while
the post-CFG function works on the N prompt rows. :class:`GroupedAttentionMaps` collects the map of
every group from the step's grouped calls and, once the step's calls are done, leaves SAG one map per
prompt row, its group's. Members of a group hold one latent, so they get one map and stay one image;
SAG's own extra call is grouped like every other call on the N rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

SAG_PREFIX = "SelfAttentionGuidance."
SAG_VARIABLE = "attn_scores"


class GroupedAttentionMaps:
    """The variable SelfAttentionGuidance records into, and the maps recorded per tree node this step."""

    def __init__(self, cell: Any) -> None:
        self._cell = cell
        self._by_node: dict[int, torch.Tensor] = {}

    @classmethod
    def find(cls, model_options: dict) -> GroupedAttentionMaps | None:
        """The maps of the SelfAttentionGuidance patch in ``model_options``, or None without one."""
        replaced = model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
        for function in replaced.values():
            code = getattr(function, "__code__", None)
            if getattr(function, "__qualname__", "").startswith(SAG_PREFIX) and code is not None:
                if SAG_VARIABLE in code.co_freevars:
                    return cls(function.__closure__[code.co_freevars.index(SAG_VARIABLE)])
        return None

    def begin_step(self) -> None:
        self._by_node = {}

    def record(self, nodes: np.ndarray, call: Callable[[], Any]) -> Any:
        """Run one grouped model call over the groups ``nodes`` (G,) and keep each group's map
        (heads, tokens, tokens) when the call recorded one (it held unconditioned rows)."""
        self._cell.cell_contents = None
        out = call()
        maps = self._cell.cell_contents
        if maps is not None and maps.shape[0] % len(nodes) == 0:
            heads = maps.shape[0] // len(nodes)
            for k, node in enumerate(nodes):
                self._by_node[int(node)] = maps[k * heads : (k + 1) * heads]
        return out

    def end_step(self, nodes: np.ndarray, row_group: np.ndarray) -> None:
        """Leave SAG one map per prompt row (N * heads, tokens, tokens), row i's from its group
        ``nodes[row_group[i]]``; unchanged when a group recorded none (no unconditioned call)."""
        if all(int(node) in self._by_node for node in nodes):
            self._cell.cell_contents = torch.cat([self._by_node[int(nodes[g])] for g in row_group])
