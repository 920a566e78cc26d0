# SPDX-License-Identifier: GPL-3.0-or-later
"""A step cache that follows the tree: EasyCache-style skipping of model calls, kept per group.

EasyCache (Zhou et al. 2025; ComfyUI's ``EasyCache`` node) skips a model call when the model's input
has changed little since the last computed call, answering with that input plus the last computed
output-minus-input difference. Its state is per batch row, and under hierarchical sampling the rows of a
call change whenever groups split. Here every piece of state belongs to a group (a tree node): a group
that has not been computed yet reads its nearest computed ancestor's state, exactly as its latent row is
a copy of its parent's. Sharing and caching then multiply: the plan removes repeated groups, the cache
removes calls whose answer barely moves.

The rule is EasyCache's, applied to all the groups of a call at once:

- the input change is the mean absolute change of the first conditioning's inputs (subsampled every
  ``subsample`` pixels along the last two axes) since the last computed call;
- the transformation rate ``k`` is the last computed call's output change over its input change;
- a call whose noise level is at most ``start_sigma`` adds ``k * input change / mean |last output|`` to a
  running sum, and is skipped while that sum stays below ``reuse_threshold`` (a computed call resets it);
- calls below ``end_sigma`` are computed and leave the state as it is.

One call is one conditioned-batch computation of the sampler (all groups, every conditioning). The
caller reports its model's sub-calls with :meth:`answer` (a skipped call) or :meth:`record` (a computed
one), keyed by conditioning (any hashable, e.g. ComfyUI's cond uuid) and carrying the groups' node ids.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import torch

from .tree import PromptTree


class GroupStepCache:
    """EasyCache's skipping rule over the groups of a plan (see the module docstring).

    Tensors are per group: (G, C, ...) rows ordered like the ``nodes`` given with them; the last two axes
    are spatial (a video latent's frames stay whole).
    """

    def __init__(
        self,
        tree: PromptTree,
        reuse_threshold: float,
        start_sigma: float,
        end_sigma: float,
        subsample: int = 8,
    ):
        if not reuse_threshold >= 0:
            raise ValueError(f"reuse_threshold must be >= 0, got {reuse_threshold!r}")
        if int(subsample) < 1:
            raise ValueError(f"subsample must be at least 1, got {subsample!r}")
        self.parents = tree.node_parents
        self.reuse_threshold = float(reuse_threshold)
        self.start_sigma = float(start_sigma)
        self.end_sigma = float(end_sigma)
        self.subsample = int(subsample)
        self.calls = 0
        self.skipped = 0
        self.first_key: Hashable | None = None
        self.skipping = False
        self._rate: float | None = None  # EasyCache's relative transformation rate k
        self._accumulated = 0.0
        self._inputs_seen: dict[int, torch.Tensor] = {}  # node -> subsampled first-cond input
        self._outputs_seen: dict[int, torch.Tensor] = {}  # node -> subsampled first-cond output
        self._output_norm: float | None = None
        self._differences: dict[tuple[Hashable, int], torch.Tensor] = {}  # (key, node) -> output - input
        self._call: _Call | None = None

    def begin(self, sigma: float, nodes: np.ndarray, inputs: torch.Tensor) -> bool:
        """Start a call over the groups ``nodes`` (G,) whose first-conditioning model inputs are ``inputs``
        (G, C, ...); returns whether the call is answered from the cache."""
        self.calls += 1
        nodes = np.asarray(nodes)
        tracked = sigma > self.end_sigma
        in_window = tracked and sigma <= self.start_sigma
        sub = self._sub(inputs) if in_window else None
        change = None
        self.skipping = False
        if in_window and self._inputs_seen:
            change = float((sub - self._ancestral(self._inputs_seen, nodes)).abs().mean())
            if self._estimable():
                self._accumulated += self._rate * change / self._output_norm
                if self._accumulated < self.reuse_threshold and self._answerable(nodes):
                    self.skipping = True
                    self.skipped += 1
                else:
                    self._accumulated = 0.0
        self._call = _Call(nodes, sub, change, tracked, in_window)
        return self.skipping

    def answer(self, key: Hashable, nodes: np.ndarray, inputs: torch.Tensor) -> torch.Tensor | None:
        """The cached answer of a skipped call's sub-call: ``inputs`` (G', C, ...) plus each group's
        (or its nearest computed ancestor's) last output-minus-input difference for ``key``; None when
        the last computed call did not evaluate ``key`` (a conditioning entering its timestep range):
        that sub-call must be computed."""
        holders = [self._ancestor(self._differences, int(node), key) for node in nodes]
        if None in holders or self._differences[(key, holders[0])].shape[1:] != inputs.shape[1:]:
            return None
        differences = torch.cat([self._differences[(key, holder)] for holder in holders])
        return inputs + differences.to(inputs)

    def record(self, key: Hashable, nodes: np.ndarray, inputs: torch.Tensor, outputs: torch.Tensor) -> None:
        """Keep what a computed sub-call for ``key`` over groups ``nodes`` returned."""
        call = self._call
        if call is None or not call.tracked:
            return
        if self.first_key is None:
            self.first_key = key
        difference = outputs - inputs
        for row, node in enumerate(np.asarray(nodes).tolist()):
            call.differences[(key, node)] = difference[row : row + 1]
        if key == self.first_key and call.in_window:
            for row, node in enumerate(np.asarray(nodes).tolist()):
                call.outputs[node] = self._sub(outputs[row : row + 1])
        call.output_sum += float(outputs.abs().sum(dtype=torch.float64))
        call.output_count += outputs.numel()

    def end(self) -> None:
        """Close the call: a computed one updates the rate and becomes the state its groups (and, later,
        their descendants) read."""
        call, self._call = self._call, None
        if call is None or self.skipping or not call.tracked:
            return
        self._differences = call.differences
        if not call.outputs:
            return  # before the window (or the first conditioning never reached the network)
        nodes = call.nodes
        outputs = torch.cat([call.outputs[int(node)] for node in nodes])
        if self._output_norm is not None and call.input_change:
            change = float((outputs - self._ancestral(self._outputs_seen, nodes)).abs().mean())
            self._rate = change / call.input_change
        # Groups only ever split: once every active group has its own state, no ancestor's is read again.
        self._inputs_seen = {int(n): call.inputs[row : row + 1] for row, n in enumerate(nodes)}
        self._outputs_seen = {int(n): outputs[row : row + 1] for row, n in enumerate(nodes)}
        self._output_norm = call.output_sum / call.output_count

    def _estimable(self) -> bool:
        return self._rate is not None and self._output_norm is not None and self._output_norm > 0

    def _answerable(self, nodes: np.ndarray) -> bool:
        return self.first_key is not None and all(
            self._ancestor(self._differences, int(node), self.first_key) is not None for node in nodes
        )

    def _sub(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[..., :: self.subsample, :: self.subsample].detach().clone()

    def _ancestral(self, states: dict[int, torch.Tensor], nodes: np.ndarray) -> torch.Tensor:
        return torch.cat([states[self._ancestor(states, int(node))] for node in nodes])

    def _ancestor(self, states: dict, node: int, key: Hashable | None = None) -> int | None:
        """``node`` or its nearest ancestor holding state (keyed ``(key, node)`` when a key is given)."""
        while node >= 0:
            if (node if key is None else (key, node)) in states:
                return node
            node = int(self.parents[node])
        return None


class _Call:
    """What one call gathers before :meth:`GroupStepCache.end` makes it the state."""

    def __init__(
        self,
        nodes: np.ndarray,
        inputs: torch.Tensor | None,
        input_change: float | None,
        tracked: bool,
        in_window: bool,
    ):
        self.nodes = nodes
        self.inputs = inputs
        self.input_change = input_change
        self.tracked = tracked
        self.in_window = in_window
        self.outputs: dict[int, torch.Tensor] = {}
        self.differences: dict[tuple[Hashable, int], torch.Tensor] = {}
        self.output_sum = 0.0
        self.output_count = 0
