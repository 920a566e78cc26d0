# SPDX-License-Identifier: GPL-3.0-or-later
"""Prompt Set Cluster: prompts + CLIP -> PROMPT_TREE (tree, per-prompt conditioning, texts).

Encoding is where a large set spends its time: a text encoder run on one prompt's few token rows
costs about as much as a run on dozens, since the work per call is small and the calls' fixed costs
(every layer's operations and their threading) dominate. So each distinct prompt is encoded once, and
the text encoders run over many prompts' token rows per call, while every prompt still goes through
ComfyUI's own encoding code (prompt weights, pooled output, combining several encoders), which is why
its rows are what CLIPTextEncode gives for it alone (see :func:`encode_distinct`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral
from typing import Any

import comfy.clip_model
import comfy.model_management
import comfy.sd1_clip
import comfy.utils
import torch
from comfy_api.latest import io

from hierdiff_core.embed import encode_prompts
from hierdiff_core.prompts import prompts_from_input
from hierdiff_core.tree import METHODS, build_tree

from .conditioning import PromptTreeSet, clustering_embeddings, stack_conditionings
from .sockets import PROMPT_TREE, TREE_KEY

EMBEDDING_SOURCES = ("clip_pooled", "sentence")


TOKENS_PER_CALL = 256 * 77
"""Tokens per batched text-encoder call: 256 CLIP rows (one 77-token chunk each), fewer longer T5 rows.
Per-row cost keeps falling up to a few hundred rows (tiny CLIP on the CPU: 6.3 ms a row in calls of 64
rows, 2.7 ms in calls of 256), while a call's activations grow with it."""
PROMPTS_PER_ROUND = 256
"""Prompts encoded together; progress is reported, and the row cache emptied, after each round."""
_MAX_PASSES = 8  # ComfyUI calls per prompt and round before batching gives up (see _encode_round)


def encode_each(clip, prompts: list[str]) -> list:
    """One CONDITIONING row per prompt, each what CLIPTextEncode gives for it alone (see
    :func:`encode_distinct`), stacked by :func:`~.conditioning.stack_conditionings`."""
    if clip is None:
        raise ValueError("clip input is invalid: None (is the checkpoint's text encoder missing?)")
    return stack_conditionings(encode_distinct(clip, prompts))


def encode_distinct(clip, prompts: list[str]) -> list[list]:
    """Each prompt's CONDITIONING as ``clip.encode_from_tokens_scheduled(clip.tokenize(prompt))`` (what
    CLIPTextEncode does) gives it, encoding each distinct prompt once; equal prompts share one object.

    Prompts go through ComfyUI's encoding PROMPTS_PER_ROUND at a time, and the text encoders inside the
    CLIP (ComfyUI's ``SDClipModel``: CLIP-L/G, T5, ...) run over the token rows of a whole round per call
    instead of one prompt's (see :class:`_BatchedRows`). A row's result does not depend on the other rows
    of its call when the encoder's arithmetic is row by row, which tests/comfy/test_cluster_encoding.py
    checks bit for bit for CLIP and T5 on the CPU. CLIPs with scheduled hooks (each keyframe patches
    the weights) are encoded prompt by prompt. Reports progress per round; honours Cancel.
    """
    distinct = list(dict.fromkeys(prompts))
    progress = comfy.utils.ProgressBar(len(distinct))
    encoded: dict[str, list] = {}
    scheduled = clip.patcher.forced_hooks is not None and clip.use_clip_schedule
    with _batched_encoders(clip, enabled=not scheduled) as encoders:
        for start in range(0, len(distinct), PROMPTS_PER_ROUND):
            comfy.model_management.throw_exception_if_processing_interrupted()
            round_prompts = distinct[start : start + PROMPTS_PER_ROUND]
            encoded.update(_encode_round(clip, round_prompts, encoders))
            progress.update(len(round_prompts))
    return [encoded[p] for p in prompts]


def _encode_round(clip, prompts: list[str], encoders: list[_BatchedRows]) -> dict[str, list]:
    """Encode ``prompts`` through ComfyUI, pass after pass: a prompt whose encoder rows are not computed
    yet stops (``_RowsMissing``), the rows every stopped prompt asked for are computed in batches, and the
    stopped prompts go again. A family with several encoders (SDXL: CLIP-G then CLIP-L) takes one pass per
    encoder plus one; after _MAX_PASSES the rest is encoded without batching."""
    tokens = {p: clip.tokenize(p) for p in prompts}
    encoded: dict[str, list] = {}
    waiting = prompts
    try:
        for _ in range(_MAX_PASSES):
            stopped = []
            for prompt in waiting:
                try:
                    encoded[prompt] = clip.encode_from_tokens_scheduled(tokens[prompt])
                except _RowsMissing:
                    stopped.append(prompt)
            for encoder in encoders:
                encoder.compute_pending()
            waiting = stopped
            if not waiting:
                return encoded
        for encoder in encoders:
            encoder.active = False
        for prompt in waiting:
            encoded[prompt] = clip.encode_from_tokens_scheduled(tokens[prompt])
        return encoded
    finally:
        for encoder in encoders:
            encoder.clear()


class _RowsMissing(Exception):
    """An encoder was asked for token rows it has not computed yet (they are now pending)."""


class _Unbatchable(Exception):
    """An encoder's output cannot be split into rows."""


class _BatchedRows:
    """Stands in for one text encoder's ``encode(token rows)`` while a round is encoded.

    Answers from the rows it computed; asked for any other row, it notes them as pending and raises
    ``_RowsMissing``, which stops that prompt's encoding inside ComfyUI (nothing there holds state
    across the raise). :meth:`compute_pending` then runs the encoder over all pending rows, rows of one
    length together, TOKENS_PER_CALL tokens per call. Rows holding anything but token ids (embeddings) are
    encoded directly, as is everything once ``active`` is False.
    """

    def __init__(self, encoder: torch.nn.Module):
        self.encoder = encoder
        self.encode = encoder.encode  # the encoder's own (a bound method)
        self.active = True
        self.rows: dict[tuple, tuple] = {}
        self.pending: dict[tuple, list] = {}
        self.options: object = None

    def __call__(self, tokens: list) -> Any:
        keys = [_row_key(row) for row in tokens]
        if not self.active or not tokens or None in keys:
            return self.encode(tokens)
        missing = {key: row for key, row in zip(keys, tokens, strict=True) if key not in self.rows}
        if not missing:
            out = _join([self.rows[key] for key in keys])
            if self._projects_pooled():
                # The last step of the encoder's forward, on this call's rows only (see compute_pending).
                out = (out[0], self.encoder.transformer.text_projection(out[1]).float(), *out[2:])
            return out
        # The encoder's layer settings are set by ComfyUI for every call; rows are computed under them.
        self.options = _encoder_options(self.encoder)
        self.pending.update(missing)
        raise _RowsMissing

    def compute_pending(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        if _encoder_options(self.encoder) != self.options:
            self.active = False  # settings changed since the rows were asked for: encode directly
            return
        by_length: dict[int, list[tuple[tuple, list]]] = defaultdict(list)
        for key, row in pending.items():
            by_length[len(row)].append((key, row))
        # CLIP projects its pooled rows with one matrix product over the call's rows, whose rounding on
        # the CPU depends on how many rows there are (1 or 2 differ from 64). So the rows are computed
        # unprojected, and each call projects its own rows as it would alone (see __call__).
        project = self._projects_pooled()
        try:
            if project:
                self.encoder.return_projected_pooled = False
            for length, items in by_length.items():
                rows_per_call = max(1, TOKENS_PER_CALL // max(length, 1))
                for start in range(0, len(items), rows_per_call):
                    comfy.model_management.throw_exception_if_processing_interrupted()
                    part = items[start : start + rows_per_call]
                    out = self.encode([row for _, row in part])
                    for i, (key, _) in enumerate(part):
                        self.rows[key] = _split_row(out, i, len(part))
        except _Unbatchable:
            self.active = False
            self.rows.clear()
        finally:
            if project:
                self.encoder.return_projected_pooled = True

    def _projects_pooled(self) -> bool:
        """Whether the encoder returns ComfyUI's CLIP pooled output projected by ``text_projection``."""
        return self.encoder.return_projected_pooled is True and isinstance(
            self.encoder.transformer, comfy.clip_model.CLIPTextModel
        )

    def clear(self) -> None:
        self.rows.clear()
        self.pending.clear()


@contextmanager
def _batched_encoders(clip, enabled: bool) -> Iterator[list[_BatchedRows]]:
    """Puts a :class:`_BatchedRows` in front of every ComfyUI text encoder of ``clip`` for the block."""
    encoders = [m for m in clip.cond_stage_model.modules() if isinstance(m, comfy.sd1_clip.SDClipModel)]
    batched = [_BatchedRows(m) for m in encoders] if enabled else []
    # An attribute on the instance shadows the class's method; removing it restores the encoder.
    saved = [(b.encoder, b.encoder.__dict__.get("encode", _ABSENT)) for b in batched]
    try:
        for b in batched:
            b.encoder.encode = b
        yield batched
    finally:
        for encoder, previous in saved:
            if previous is _ABSENT:
                del encoder.encode
            else:
                encoder.encode = previous


_ABSENT = object()


def _row_key(row: object) -> tuple | None:
    """A token row's cache key: its token ids; None when it holds anything else (an embedding)."""
    if not isinstance(row, list | tuple):
        return None
    key = tuple(row)
    if all(type(t) is int for t in key):  # the usual row, checked fast
        return key
    return tuple(int(t) for t in key) if all(isinstance(t, Integral) for t in key) else None


def _encoder_options(encoder: torch.nn.Module) -> str:
    """The layer settings ComfyUI sets on an encoder before each call (clip skip, projected pooled)."""
    return repr([getattr(encoder, n, None) for n in ("layer", "layer_idx", "return_projected_pooled")])


def _split_row(out: object, i: int, n: int) -> object:
    """Row ``i`` of an encoder output for ``n`` rows: tensors sliced along their first dimension."""
    if out is None:
        return None
    if isinstance(out, torch.Tensor):
        if out.ndim == 0 or out.shape[0] != n:
            raise _Unbatchable
        return out[i : i + 1]
    if isinstance(out, tuple | list):
        return tuple(_split_row(v, i, n) for v in out)
    if isinstance(out, dict):
        return {k: _split_row(v, i, n) for k, v in out.items()}
    raise _Unbatchable


def _join(rows: list[object]) -> object:
    """The output for several rows from each row's :func:`_split_row` part (new tensors, never views of
    the cache: ComfyUI applies prompt weights in place)."""
    first = rows[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(rows)
    if isinstance(first, tuple):
        return tuple(_join([r[j] for r in rows]) for j in range(len(first)))
    return {k: _join([r[k] for r in rows]) for k in first}


def linkage_input() -> io.Combo.Input:
    """The linkage widget of the nodes that build a prompt tree (here and Prior Embed)."""
    return io.Combo.Input(
        "linkage",
        options=list(METHODS),
        default="ward",
        tooltip="Agglomerative linkage over cosine distances (published default: ward).",
    )


def prompts_output() -> io.String.Output:
    """The prompts output of the nodes that build a prompt tree, one item per prompt."""
    return io.String.Output(
        display_name="prompts",
        is_output_list=True,
        tooltip="The prompts as a list, one item per prompt, in order (for captions, file names, ...).",
    )


class HierPromptSetCluster(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierPromptSetCluster",
            display_name="Prompt Set Cluster",
            category="sampling/hierarchical",
            description="Encodes every prompt and builds the hierarchy that the hierarchical samplers share.",
            is_input_list=True,
            inputs=[
                io.Clip.Input(
                    "clip", tooltip="The text encoder that encodes every prompt (as CLIP Text Encode does)."
                ),
                io.String.Input(
                    "prompts",
                    multiline=True,
                    default="",
                    tooltip="One prompt per line; a list of strings from other nodes works too.",
                ),
                linkage_input(),
                io.Combo.Input(
                    "embedding",
                    options=list(EMBEDDING_SOURCES),
                    default="clip_pooled",
                    tooltip="Cluster on CLIP's pooled output, or on the offline sentence encoder.",
                ),
            ],
            outputs=[
                PROMPT_TREE.Output(
                    display_name="prompt_tree",
                    tooltip="The prompts, their conditioning and their tree, for the hierarchical samplers.",
                ),
                prompts_output(),
            ],
        )

    @classmethod
    def execute(cls, clip, prompts, linkage, embedding) -> io.NodeOutput:
        clip, linkage, embedding = clip[0], linkage[0], embedding[0]
        texts = prompts_from_input(prompts)
        if not texts:
            raise ValueError("prompts input is empty: give one prompt per line")
        conditioning = encode_each(clip, texts)
        vectors = encode_prompts(texts) if embedding == "sentence" else clustering_embeddings(conditioning)
        tree = build_tree(vectors, method=linkage, metric="cosine", prompts=texts)
        prompt_set = PromptTreeSet(tree, tuple(texts), conditioning, embedding)
        return io.NodeOutput(prompt_set, texts, ui={TREE_KEY: [json.dumps(tree.to_dict())]})


NODES = [HierPromptSetCluster]
