# SPDX-License-Identifier: GPL-3.0-or-later
"""The plan preview route (nodes/routes.py): the web widget's live plan comes from the one planner.

Specification:
- a request with the tree of a cluster's run answers exactly the plan JSON that
  ``hierdiff_core.schedule.plan`` gives for that tree, steps and budget, with its summary line;
- a request with prompts alone clusters them with the sentence encoder: the plan is the planner's for
  those embeddings, and it is called a preview tree when the node clusters on CLIP's pooled output;
- without steps only the tree is made; with ``tree_from = first_step`` the plan counts one probe
  evaluation per prompt and says that the tree is chosen at run time;
- with ``spend = steps_then_sharing`` the plan has the steps and budget that hierdiff_core.spend gives
  for the sampler (what the node runs); ``spend = sharing_within_layout``, which plans from the model's
  first step, is refused naming spend;
- an edit that adds one prompt encodes only that prompt;
- bad input gets HTTP 400 and one line that names the field;
- the pack loads where there is no server (the in-process host) and registers nothing there; on the
  real server the routes answer, also under /api.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

import numpy as np
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hierdiff_core.report import summary_line
from hierdiff_core.schedule import Budget, plan
from hierdiff_core.spend import minimum_steps
from hierdiff_core.tree import build_tree
from hierdiff_dev.server import ComfyServer

PROMPTS = [
    "a red fox in the snow",
    "a red fox in the forest",
    "a grey wolf in the snow",
    "a lighthouse at dusk",
    "a lighthouse in a storm",
    "a castle on a hill",
]
PREVIEW = "/hierdiff/plan_preview"


def fake_vector(text: str) -> np.ndarray:
    """A fixed 16-d vector per text, standing in for the sentence encoder."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=16).astype(np.float32)


@pytest.fixture(scope="module")
def routes(comfy_host):
    package = comfy_host.node_classes["HierKSampler"].__module__.rsplit(".", 1)[0]
    return sys.modules[f"{package}.routes"]


@pytest.fixture
def encoded(routes, monkeypatch) -> list[list[str]]:
    """The sentence encoder replaced by fake_vector; returns the list of texts of every encoder call."""
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.stack([fake_vector(t) for t in texts])

    monkeypatch.setattr(routes, "SENTENCE_VECTORS", routes.VectorCache(routes.SENTENCE_CACHE_SIZE, encode))
    routes._TREES.clear()
    return calls


def post(routes, path: str, body, raw: bool = False) -> tuple[int, dict]:
    """POST to the module's routes on an aiohttp test server on 127.0.0.1; (status, JSON answer)."""

    async def go() -> tuple[int, dict]:
        table = web.RouteTableDef()
        routes.add_routes(table)
        app = web.Application()
        app.add_routes(table)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            data = body if raw else json.dumps(body)
            response = await client.post(path, data=data, headers={"Content-Type": "application/json"})
            return response.status, await response.json()

    return asyncio.run(go())


def request(**fields) -> dict:
    return {
        "prompts": "\n".join(PROMPTS),
        "steps": 20,
        "budget": "target_saving",
        "budget_value": 0.5,
        **fields,
    }


def test_a_runs_tree_gives_the_planners_plan_for_it(routes) -> None:
    embeddings = np.stack([fake_vector(p) for p in PROMPTS])
    tree = build_tree(embeddings, method="ward", prompts=PROMPTS)
    status, answer = post(routes, PREVIEW, request(tree=tree.to_dict()))
    expected = plan(tree, 20, Budget("target_saving", 0.5))
    assert status == 200
    assert answer["plan"] == json.loads(expected.to_json())
    assert answer["summary"] == summary_line(expected)
    assert (answer["tree_source"], answer["preview_tree"], answer["notes"]) == ("run", False, [])


def test_prompts_alone_are_planned_on_their_sentence_embeddings(routes, encoded) -> None:
    status, answer = post(
        routes, PREVIEW, request(linkage="average", budget="tau", budget_value=0.4, steps=12)
    )
    embeddings = np.stack([fake_vector(p) for p in PROMPTS])
    expected = plan(build_tree(embeddings, method="average", prompts=PROMPTS), 12, Budget("tau", 0.4))
    assert status == 200
    assert answer["plan"] == json.loads(expected.to_json())
    assert answer["tree_source"] == "sentence"


def test_the_sentence_tree_is_called_a_preview_when_the_node_clusters_on_clip(routes, encoded) -> None:
    _, on_clip = post(routes, PREVIEW, request(embedding="clip_pooled"))
    _, on_sentences = post(routes, PREVIEW, request(embedding="sentence"))
    assert on_clip["preview_tree"] is True
    assert any("preview tree" in note and "CLIP" in note for note in on_clip["notes"])
    assert (on_sentences["preview_tree"], on_sentences["notes"]) == (False, [])


def test_without_steps_only_the_tree_is_made(routes, encoded) -> None:
    status, answer = post(routes, PREVIEW, {"prompts": PROMPTS, "linkage": "complete"})
    embeddings = np.stack([fake_vector(p) for p in PROMPTS])
    assert status == 200
    assert answer["plan"] is None
    assert answer["tree"] == build_tree(embeddings, method="complete", prompts=PROMPTS).to_dict()


def test_a_first_step_tree_is_chosen_at_run_time_and_its_probe_is_counted(routes, encoded) -> None:
    _, answer = post(
        routes, PREVIEW, request(tree_from="first_step", budget="evaluations_per_image", budget_value=8)
    )
    assert answer["plan"]["probe_evaluations"] == len(PROMPTS)
    assert answer["plan"]["model_evaluations"] <= 8 * len(PROMPTS)
    assert any("run time" in note for note in answer["notes"])


def test_a_spent_budget_is_planned_at_the_steps_the_node_runs(routes) -> None:
    tree = build_tree(np.stack([fake_vector(p) for p in PROMPTS]), method="ward", prompts=PROMPTS)
    minimum = minimum_steps("euler")
    fields = {"spend": "steps_then_sharing", "sampler_name": "euler", "tree": tree.to_dict()}
    below = request(budget="evaluations_per_image", budget_value=minimum - 1, **fields)
    status, answer = post(routes, PREVIEW, below)
    assert status == 200, answer
    expected = plan(tree, minimum, Budget("evaluations_per_image", minimum - 1))
    assert answer["plan"] == json.loads(expected.to_json())
    status, answer = post(routes, PREVIEW, request(budget_value=0.5, **fields))  # 10 evaluations: 10 steps
    assert answer["plan"] == json.loads(plan(tree, 10, Budget("tau", 0.0)).to_json())


def test_an_added_prompt_is_the_only_one_encoded(routes, encoded) -> None:
    post(routes, PREVIEW, request())
    post(routes, PREVIEW, request(steps=30))  # another budget or step count: nothing encoded
    post(routes, PREVIEW, request(prompts="\n".join([*PROMPTS, "a castle in the fog"])))
    assert encoded == [PROMPTS, ["a castle in the fog"]]


def test_prompts_are_read_as_the_cluster_node_reads_them(routes) -> None:
    status, answer = post(
        routes, "/hierdiff/prompts", {"prompts": "\ufeffa cat\r\n\n  a dog \u2028 running\r"}
    )
    assert (status, answer) == (200, {"prompts": ["a cat", "a dog   running"]})


BAD_FIELDS = [
    ("steps", {"steps": 0}),
    ("steps", {"steps": 10.5}),
    ("budget", {"budget": "cheap"}),
    ("budget_value", {"budget_value": 1.5}),
    ("budget_value", {"budget_value": "half"}),
    ("budget_value", {"budget": "evaluations_per_image", "budget_value": 40}),
    ("budget_value", {"budget_value": 0.99, "steps": 2}),  # not attainable
    ("linkage", {"linkage": "nearest"}),
    ("embedding", {"embedding": "pixels"}),
    ("tree_from", {"tree_from": "last_step"}),
    ("spend", {"spend": "cheapest"}),
    ("sampler_name", {"spend": "steps_then_sharing"}),
    ("budget", {"spend": "steps_then_sharing", "sampler_name": "euler", "budget": "tau"}),
    ("spend", {"spend": "sharing_within_layout"}),  # only a run has the model's first step
    ("prompts", {"prompts": " \n \n"}),
    ("prompts", {"prompts": 7}),
    ("prompts", {"prompts": ["a cat", 3]}),
    ("tree", {"tree": {"format": "hierdiff.plan"}}),
]


@pytest.mark.parametrize(
    ("field", "change"), BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)]
)
def test_bad_input_is_refused_with_one_line_naming_the_field(routes, encoded, field, change) -> None:
    status, answer = post(routes, PREVIEW, request(**change))
    assert status == 400
    assert answer["field"] == field
    assert answer["error"].startswith(field) and "\n" not in answer["error"], answer["error"]


def test_a_tree_of_other_prompts_is_refused(routes) -> None:
    tree = build_tree(np.stack([fake_vector(p) for p in PROMPTS[:3]]), prompts=PROMPTS[:3])
    status, answer = post(routes, PREVIEW, request(tree=tree.to_dict()))
    assert (status, answer["field"]) == (400, "tree")
    assert "other prompts" in answer["error"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]"])
def test_a_body_that_is_not_a_json_object_is_refused(routes, body) -> None:
    status, answer = post(routes, PREVIEW, body, raw=True)
    assert (status, answer["field"]) == (400, "request body")


def test_the_pack_loads_without_a_server_and_registers_nothing(routes) -> None:
    assert routes.register_with_server() is False


def test_the_real_server_answers_on_both_paths(comfy_server: ComfyServer) -> None:
    embeddings = np.stack([fake_vector(p) for p in PROMPTS])
    tree = build_tree(embeddings, prompts=PROMPTS)
    for path in (PREVIEW, "/api" + PREVIEW):
        response = requests.post(comfy_server.url + path, json=request(tree=tree.to_dict()), timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["plan"] == json.loads(plan(tree, 20, target_saving=0.5).to_json())
    response = requests.post(comfy_server.url + PREVIEW, json=request(steps=-1), timeout=60)
    assert (response.status_code, response.json()["field"]) == (400, "steps")
