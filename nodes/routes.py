# SPDX-License-Identifier: GPL-3.0-or-later
"""HTTP routes the web widget calls on ComfyUI's server: the live plan preview, from the one planner.

``POST /hierdiff/plan_preview`` (also under ``/api``, as every ComfyUI route) plans what a hierarchical
node would do with the inputs on screen, before anything is queued. The body is a JSON object:

- ``prompts`` (required): the Prompt Set Cluster's text (one prompt per line) or a list of prompts,
  read as the node reads them (:func:`hierdiff_core.prompts.prompts_from_input`);
- ``linkage`` (default "ward"), ``embedding`` (default "clip_pooled"): the cluster's widgets;
- ``tree`` (optional): the tree of the cluster's last run (``PromptTree.to_dict``, its ``hierdiff_tree``
  UI output), used as it is; without it the prompts are clustered with the offline sentence encoder,
  which is only a preview of the run's tree when the cluster clusters on CLIP's pooled output;
- ``steps`` (optional; without it only the tree is made), ``budget``, ``budget_value`` (defaults
  "target_saving", 0.5), ``tree_from`` (default "prompt_tree"), ``spend`` (default "sharing") and, for
  spend "steps_then_sharing", ``sampler_name``: the sampler's widgets (the plan then has the steps that
  spend chose). Spend "sharing_within_layout" plans from the model's first-step predictions, which only
  a run has: it is refused naming ``spend``.

The answer: ``{"plan": Plan.to_dict() or null, "tree": PromptTree.to_dict() or null (only without
steps), "summary", "tree_source": "run" | "sentence", "preview_tree": bool, "notes": [str]}``. Bad
input gets HTTP 400 and ``{"error": one line naming the field, "field": its name}``.

``POST /hierdiff/prompts`` with ``{"prompts": ...}`` answers ``{"prompts": [str]}``: the widget labels a
plan saved in a workflow (which keeps no prompt texts) with the prompts as the node reads them.

The routes are added to ``PromptServer.instance.routes`` when this module is imported, which the pack's
entry point does while ComfyUI loads custom nodes (before the server adds its routes to the app). A
host without a server (the in-process test host, tools) imports it without effect.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from hierdiff_core.embed import encode_prompts
from hierdiff_core.prompts import prompts_from_input
from hierdiff_core.report import summary_line
from hierdiff_core.schedule import BUDGET_MODES, Budget, plan
from hierdiff_core.spend import SPEND_MODES, spend
from hierdiff_core.tree import METHODS, PromptTree, build_tree

from .cluster import EMBEDDING_SOURCES
from .guider import TREE_SOURCES, probe_per_image, probe_rows

PREVIEW_PATH = "/hierdiff/plan_preview"
PROMPTS_PATH = "/hierdiff/prompts"
MAX_PREVIEW_PROMPTS = 20_000
"""Most prompts a preview clusters: beyond, encoding them alone takes minutes on a CPU."""
SENTENCE_CACHE_SIZE = 20_000
"""Sentence vectors kept between previews (about 30 MB), so an edit re-encodes only the new prompts."""
TREE_CACHE_SIZE = 4


class FieldError(ValueError):
    """A request field that cannot be used; the message is one line and starts with the field's name."""

    def __init__(self, field: str, message: str) -> None:
        message = " ".join(str(message).split())  # one line, whatever the planner's text was
        super().__init__(message if message.startswith(field) else f"{field}: {message}")
        self.field = field


class VectorCache:
    """Sentence-encoder vectors by prompt text, least recently used dropped first; thread-safe.

    Previews encode prompts one set at a time as the user types: a new prompt costs one encoding,
    not the whole set's. Vectors of a prompt encoded in another batch can differ in the last bits
    from the node's own batch, which is one more reason the preview tree is called a preview.
    """

    def __init__(self, limit: int, encode: Callable[[list[str]], np.ndarray]) -> None:
        self.limit = limit
        self.encode = encode
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:  # one encoding at a time: two previews of one set encode it once
            missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
            if missing:
                for text, vector in zip(missing, np.asarray(self.encode(missing)), strict=True):
                    self._vectors[text] = vector
            for text in dict.fromkeys(texts):
                self._vectors.move_to_end(text)
            rows = np.stack([self._vectors[t] for t in texts])
            while len(self._vectors) > max(self.limit, len(texts)):
                self._vectors.popitem(last=False)
            return rows

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()


SENTENCE_VECTORS = VectorCache(SENTENCE_CACHE_SIZE, lambda texts: encode_prompts(texts))
_TREES: OrderedDict[tuple, PromptTree] = OrderedDict()
_TREES_LOCK = threading.Lock()


def _choice(body: dict, field: str, options: tuple[str, ...], default: str) -> str:
    value = body.get(field, default)
    if value not in options:
        raise FieldError(field, f"must be one of {', '.join(options)}, got {value!r}")
    return value


def _prompts(body: dict) -> list[str]:
    raw = body.get("prompts")
    if isinstance(raw, str):
        texts = prompts_from_input([raw])
    elif isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
        texts = prompts_from_input(raw)
    else:
        wanted = "a text (one prompt per line) or a list of strings"
        raise FieldError("prompts", f"must be {wanted}, got {raw!r:.60}")
    if not texts:
        raise FieldError("prompts", "no prompts: give one prompt per line")
    if len(texts) > MAX_PREVIEW_PROMPTS:
        limit = f"{MAX_PREVIEW_PROMPTS:,}"
        raise FieldError("prompts", f"a preview takes at most {limit} prompts, got {len(texts):,}")
    return texts


def _given_tree(raw: Any, texts: list[str], linkage: str) -> PromptTree:
    try:
        tree = PromptTree.from_dict(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise FieldError("tree", f"not a prompt tree: {err}") from None
    if tree.prompts != tuple(texts):
        raise FieldError("tree", "its prompts are not the request's prompts (a tree of other prompts)")
    if tree.method != linkage:
        raise FieldError("tree", f"it was built with {tree.method} linkage, the request asks for {linkage}")
    return tree


def _sentence_tree(texts: list[str], linkage: str) -> PromptTree:
    key = (tuple(texts), linkage)
    with _TREES_LOCK:
        if key in _TREES:
            _TREES.move_to_end(key)
            return _TREES[key]
    tree = build_tree(SENTENCE_VECTORS(texts), method=linkage, metric="cosine", prompts=texts)
    with _TREES_LOCK:
        _TREES[key] = tree
        while len(_TREES) > TREE_CACHE_SIZE:
            _TREES.popitem(last=False)
    return tree


def preview(body: Any) -> dict[str, Any]:
    """The answer to a preview request (see the module docstring); FieldError on bad input."""
    if not isinstance(body, dict):
        raise FieldError("request body", "must be a JSON object")
    texts = _prompts(body)
    linkage = _choice(body, "linkage", METHODS, "ward")
    embedding = _choice(body, "embedding", EMBEDDING_SOURCES, "clip_pooled")
    tree_from = _choice(body, "tree_from", TREE_SOURCES, "prompt_tree")
    steps = body.get("steps")
    budget = None
    if steps is not None:  # check the sampler's fields before any clustering is paid for
        mode = _choice(body, "budget", BUDGET_MODES, "target_saving")
        try:
            budget = Budget(mode, body.get("budget_value", 0.5))
        except ValueError as err:
            raise FieldError("budget_value", str(err)) from None
        try:
            budget = budget.check(steps)
        except ValueError as err:
            field = "budget_value" if str(err).startswith("evaluations per image") else "steps"
            raise FieldError(field, str(err)) from None
        spend_mode = _choice(body, "spend", SPEND_MODES, "sharing")
        if spend_mode == "sharing_within_layout":
            raise FieldError("spend", "sharing_within_layout plans from the model's first step: run to see")
        if spend_mode == "steps_then_sharing":
            sampler_name = body.get("sampler_name")
            if not isinstance(sampler_name, str):
                raise FieldError("sampler_name", f"must be a sampler's name, got {sampler_name!r}")
            try:
                steps, budget = spend(budget, steps, sampler_name, probe_per_image(tree_from, len(texts), 1))
            except ValueError as err:
                raise FieldError("budget", str(err)) from None

    if body.get("tree") is not None:
        tree, source = _given_tree(body["tree"], texts, linkage), "run"
    else:
        tree, source = _sentence_tree(texts, linkage), "sentence"
    preview_tree = source == "sentence" and embedding != "sentence"
    notes = []
    if preview_tree:
        notes.append("preview tree: sentence encoder (the run clusters on CLIP)")
    answer: dict[str, Any] = {"plan": None, "tree": None, "tree_source": source, "preview_tree": preview_tree}
    if budget is None:
        answer["tree"] = tree.to_dict()
        answer["summary"] = f"{tree.n_prompts:,} prompts, {tree.method} linkage"
    else:
        n = tree.n_prompts
        probe = probe_rows(tree_from, n)
        try:
            schedule = plan(tree, steps, budget, probe_evaluations=probe)
        except ValueError as err:
            raise FieldError("budget_value", str(err)) from None
        if probe:
            notes.append(f"tree chosen at run time (first step); counts its {probe:,} probe evaluations")
        answer["plan"] = schedule.to_dict()
        answer["summary"] = summary_line(schedule)
    answer["notes"] = notes
    return answer


def _bad_request(err: FieldError) -> web.Response:
    return web.json_response({"error": str(err), "field": err.field}, status=400)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise FieldError("request body", "not valid JSON") from None


async def plan_preview(request: web.Request) -> web.Response:
    """POST /hierdiff/plan_preview: plan (or only cluster) the inputs in the body."""
    try:
        body = await _json_body(request)
        # Encoding and clustering take seconds for large sets: off the event loop, which serves the UI.
        answer = await asyncio.to_thread(preview, body)
    except FieldError as err:
        return _bad_request(err)
    except Exception as err:  # the widget shows the reason instead of a bare HTTP 500
        logging.exception("hierdiff plan preview failed")
        return web.json_response({"error": f"preview failed: {type(err).__name__}: {err}"}, status=500)
    return web.json_response(answer)


async def read_prompts(request: web.Request) -> web.Response:
    """POST /hierdiff/prompts: the prompts of a text or list, as Prompt Set Cluster reads them."""
    try:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise FieldError("request body", "must be a JSON object")
        texts = _prompts(body)
    except FieldError as err:
        return _bad_request(err)
    return web.json_response({"prompts": texts})


def add_routes(routes: web.RouteTableDef) -> None:
    """Add the pack's routes to a route table (ComfyUI's, or a test's)."""
    routes.post(PREVIEW_PATH)(plan_preview)
    routes.post(PROMPTS_PATH)(read_prompts)


_registered = False


def register_with_server() -> bool:
    """Add the routes to the running ComfyUI server, once; False where there is none.

    ComfyUI's main.py imports its ``server`` module and makes the PromptServer before it loads custom
    nodes. Without that (the in-process host, tools) there is nothing to register with, and importing
    ``server`` here would not make one.
    """
    global _registered
    prompt_server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if prompt_server is None or _registered:
        return _registered
    add_routes(prompt_server.routes)
    _registered = True
    return True


NODES: list[type] = []  # no node here: the entry point imports this module for its routes

register_with_server()
