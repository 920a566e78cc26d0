"""Plan and plan(): agreement with a brute-force cut per step, budgets, accounting, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster

from hierdiff_core.schedule import Plan, plan, thresholds
from hierdiff_core.tree import build_tree

STEPS = 40


def same_partition(labels_a: np.ndarray, labels_b: np.ndarray) -> bool:
    """True when two labelings group the items identically (label values may differ)."""
    pairs = set(zip(labels_a.tolist(), labels_b.tolist(), strict=True))
    return len(pairs) == len(set(labels_a.tolist())) == len(set(labels_b.tolist()))


def test_thresholds_fall_linearly_from_tau_to_zero():
    np.testing.assert_array_equal(thresholds(40, 1.5), np.linspace(0, 1.5, 40)[::-1])
    np.testing.assert_array_equal(thresholds(1, 2.0), [0.0])
    assert thresholds(5, 1.0).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize(("name", "method"), [("style_variations", "ward"), ("animals", "ward"),
                                               ("animals", "centroid"), ("style_variations", "single")])
def test_schedule_agrees_with_brute_force_cut_at_every_step(embedded, name, method):
    prompts, E = embedded(name)
    tree = build_tree(E, method=method, prompts=prompts)
    top = float(tree.heights.max())
    for tau in (0.0, 0.25 * top, float(np.median(tree.heights)), top, 2.0 * top):
        schedule = plan(tree, STEPS, tau=tau)
        for step in range(STEPS):
            expected = fcluster(tree.linkage, schedule.thresholds[step], criterion="distance")
            index = schedule.group_index(step)
            assert same_partition(index, expected), (tau, step)
            groups = schedule.active_groups(step)
            assert len(groups) == len(set(expected.tolist())) == schedule.evaluations_per_step[step]
            if step % 8 == 0:  # the node ids behind the partition (costly per group: a few steps)
                for g, node in enumerate(groups.tolist()):
                    np.testing.assert_array_equal(np.flatnonzero(index == g), tree.members(node))
                    first, end = schedule.span(node)
                    assert first <= step < end
            # ordered by smallest member
            assert tree.node_min_members[groups].tolist() == sorted(tree.node_min_members[groups].tolist())
        assert schedule.model_evaluations == sum(
            len(set(fcluster(tree.linkage, t, criterion="distance").tolist())) for t in schedule.thresholds
        )


def test_spans_mark_where_groups_split(embedded):
    _, E = embedded("demo")
    tree = build_tree(E)
    schedule = plan(tree, STEPS, tau=float(tree.heights.max()) * 1.5)
    # the root is shared from step 0 until the first threshold below its height
    first, end = schedule.span(tree.root)
    assert first == 0
    assert schedule.thresholds[end - 1] >= tree.height(tree.root) > schedule.thresholds[end]
    # its children start exactly where it ends, and leaves stay active to the last step
    for child in tree.children(tree.root):
        assert schedule.span(child)[0] == end
    for leaf in range(tree.n_prompts):
        assert schedule.span(leaf)[1] == STEPS


def test_evaluations_are_monotone_in_tau(embedded):
    _, E = embedded("animals")
    tree = build_tree(E)
    taus = np.linspace(0, 2.5 * tree.heights.max(), 60)
    counts = [plan(tree, STEPS, tau=t).model_evaluations for t in taus]
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    assert counts[0] > counts[-1]


@pytest.mark.parametrize("name", ["demo", "style_variations", "animals"])
def test_tau_zero_is_independent_sampling(embedded, name):
    prompts, E = embedded(name)
    schedule = plan(build_tree(E, prompts=prompts), STEPS, tau=0.0)
    n = len(prompts)
    assert schedule.model_evaluations == schedule.independent_evaluations == STEPS * n
    assert schedule.saving == 0.0
    assert schedule.evaluations_per_step.tolist() == [n] * STEPS


def test_identical_prompts_cost_one_evaluation_per_step(embedded):
    prompts, E = embedded("demo")
    copies = np.repeat(E[:1], 7, axis=0)
    tree = build_tree(copies, prompts=[prompts[0]] * 7)
    for tau in (0.0, 0.5, 3.0):
        schedule = plan(tree, STEPS, tau=tau)
        assert schedule.model_evaluations == STEPS
        assert schedule.active_groups(STEPS - 1).tolist() == [tree.root]


def test_duplicates_inside_a_set_share_every_step(embedded):
    prompts, E = embedded("style_variations")
    E2 = np.vstack([E, E[[4, 9]]])
    schedule = plan(build_tree(E2, prompts=prompts + [prompts[4], prompts[9]]), STEPS, tau=0.0)
    assert schedule.model_evaluations == STEPS * len(prompts)
    last = schedule.group_index(STEPS - 1)
    assert last[100] == last[4] and last[101] == last[9]


@pytest.mark.parametrize("target", [0.0, 0.1, 0.3, 0.5, 0.62, 0.8])
def test_target_saving_finds_the_smallest_tau_meeting_it(embedded, target):
    _, E = embedded("style_variations")
    tree = build_tree(E)
    schedule = plan(tree, STEPS, target_saving=target)
    assert schedule.saving >= target
    assert schedule.budget == ("target_saving", target)
    if target == 0.0:
        assert schedule.tau == 0.0
    else:
        below = np.nextafter(schedule.tau, 0.0)
        assert plan(tree, STEPS, tau=below).saving < target


@pytest.mark.parametrize("per_image", [1.5, 4.0, 10.0, 39.0])
def test_evaluations_per_image_finds_the_smallest_tau_meeting_it(embedded, per_image):
    _, E = embedded("animals")
    tree = build_tree(E)
    schedule = plan(tree, STEPS, evaluations_per_image=per_image)
    assert schedule.evaluations_per_image <= per_image
    assert plan(tree, STEPS, tau=np.nextafter(schedule.tau, 0.0)).evaluations_per_image > per_image


def test_unattainable_target_names_the_maximum_saving(embedded):
    _, E = embedded("demo")
    tree = build_tree(E)
    # with tau -> inf every step but the last (threshold 0) has one group: 39 + 6 evaluations
    best = 1.0 - (STEPS - 1 + 6) / (STEPS * 6)
    with pytest.raises(ValueError, match=f"maximum attainable saving is {best:.6f}"):
        plan(tree, STEPS, target_saving=0.9)
    assert plan(tree, STEPS, target_saving=best).model_evaluations == STEPS - 1 + 6
    with pytest.raises(ValueError, match="maximum attainable saving is 0.000000"):
        plan(build_tree(E[:1]), STEPS, target_saving=0.5)


def test_one_prompt_plans_ordinary_sampling():
    schedule = plan(build_tree(np.ones((1, 3)), prompts=["alone"]), STEPS, tau=1.0)
    assert schedule.model_evaluations == STEPS and schedule.saving == 0.0
    assert schedule.active_groups(0).tolist() == [0]
    assert schedule.to_dict()["nodes"] == [
        {"id": 0, "parent": None, "size": 1, "height": 0.0, "first_step": 0, "end_step": STEPS}
    ]


def test_guidance_doubles_both_counts(embedded):
    _, E = embedded("demo")
    schedule = plan(build_tree(E), STEPS, tau=0.5)
    plain, cfg = schedule.accounting(), schedule.accounting(guidance=True)
    assert plain == {"guidance": False, "model_evaluations": schedule.model_evaluations,
                     "independent_evaluations": STEPS * 6, "saving": schedule.saving}
    assert cfg["model_evaluations"] == 2 * schedule.model_evaluations
    assert cfg["independent_evaluations"] == 2 * STEPS * 6 and cfg["saving"] == schedule.saving


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": -0.1}, "tau must be a finite number >= 0, got -0.1"),
        ({"tau": float("inf")}, "tau must be a finite number >= 0, got inf"),
        ({"tau": float("nan")}, "tau must be a finite number >= 0, got nan"),
        ({"tau": 0.5, "steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"tau": 0.5, "steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
        ({"target_saving": 1.0}, r"target saving must be in \[0, 1\), got 1.0"),
        ({"target_saving": -0.2}, r"target saving must be in \[0, 1\), got -0.2"),
        ({"evaluations_per_image": 0.5}, r"evaluations per image must be in \[1, 40\]"),
        ({"tau": 0.5, "target_saving": 0.5}, "give exactly one of .* \\(got tau and target_saving\\)"),
        ({}, "give exactly one of .* \\(got none\\)"),
    ],
)
def test_bad_plan_arguments_give_one_line_errors(embedded, kwargs, message):
    _, E = embedded("demo")
    tree = build_tree(E)
    steps = kwargs.pop("steps", STEPS)
    with pytest.raises(ValueError, match=message) as info:
        plan(tree, steps, **kwargs)
    assert "\n" not in str(info.value)


def test_plan_json_round_trips_unchanged(embedded):
    prompts, E = embedded("style_variations")
    schedule = plan(build_tree(E, prompts=prompts), STEPS, target_saving=0.5)
    text = schedule.to_json()
    data = json.loads(text)
    for key in ("prompts", "steps", "tau", "model_evaluations", "independent_evaluations", "saving"):
        assert key in data
    assert data["format"] == "hierdiff.plan" and data["version"] == 1
    assert data["prompts"] == prompts and data["linkage"]["method"] == "ward"
    again = Plan.from_json(text)
    assert again.to_dict() == schedule.to_dict()
    assert again.to_json() == text
    assert Plan.from_dict(json.loads(text)).budget == ("target_saving", 0.5)


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_probe_evaluations_are_counted_and_paid_for_inside_the_budget(embedded, target):
    _, E = embedded("style_variations")
    tree = build_tree(E)
    n = tree.n_prompts
    without = plan(tree, STEPS, target_saving=target)
    schedule = plan(tree, STEPS, target_saving=target, probe_evaluations=n)
    assert schedule.probe_evaluations == n
    assert schedule.model_evaluations == int(schedule.evaluations_per_step.sum()) + n
    assert schedule.saving >= target
    assert schedule.tau >= without.tau  # sharing more to pay for the probe
    below = np.nextafter(schedule.tau, 0.0)
    assert plan(tree, STEPS, tau=below, probe_evaluations=n).saving < target
    assert plan(tree, STEPS, tau=0.0, probe_evaluations=n).model_evaluations == (STEPS + 1) * n
    with pytest.raises(ValueError, match="probe evaluations"):
        plan(tree, STEPS, tau=0.0, probe_evaluations=-1)


def test_a_budget_in_evaluations_per_image_may_exceed_the_steps_by_the_probes_share(embedded):
    _, E = embedded("style_variations")
    tree = build_tree(E)
    n = tree.n_prompts
    schedule = plan(tree, STEPS, evaluations_per_image=STEPS + 0.5, probe_evaluations=n)
    assert schedule.model_evaluations <= (STEPS + 0.5) * n
    assert 0 < schedule.tau  # half the probe's evaluation per image is paid by sharing
    with pytest.raises(ValueError, match=rf"must be in \[1, {STEPS}\] for {STEPS} steps"):
        plan(tree, STEPS, evaluations_per_image=STEPS + 0.5)


def test_plan_json_carries_the_probe_and_reads_plans_written_before_it(embedded):
    _, E = embedded("demo")
    schedule = plan(build_tree(E), STEPS, tau=0.5, probe_evaluations=6)
    data = schedule.to_dict()
    assert data["probe_evaluations"] == 6
    assert Plan.from_dict(data).to_dict() == data
    older = plan(build_tree(E), STEPS, tau=0.5).to_dict()
    del older["probe_evaluations"]
    assert Plan.from_dict(older).probe_evaluations == 0


def test_plan_json_with_edited_counts_is_rejected(embedded):
    _, E = embedded("demo")
    data = plan(build_tree(E), STEPS, tau=0.5).to_dict()
    with pytest.raises(ValueError, match="'model_evaluations' disagrees"):
        Plan.from_dict({**data, "model_evaluations": 1})
    with pytest.raises(ValueError, match="not a hierdiff plan"):
        Plan.from_dict({**data, "format": "other"})
    with pytest.raises(ValueError, match="not valid JSON"):
        Plan.from_json("{")


def test_plan_nodes_name_their_nearest_active_ancestor(embedded):
    _, E = embedded("animals")
    tree = build_tree(E)
    schedule = plan(tree, STEPS, target_saving=0.5)
    nodes = {node["id"]: node for node in schedule.to_dict()["nodes"]}
    assert list(nodes) == sorted(nodes)
    tops = [node for node in nodes.values() if node["parent"] is None]
    assert sum(node["size"] for node in tops) == tree.n_prompts
    assert all(node["first_step"] == 0 for node in tops)
    for node in nodes.values():
        assert node["first_step"] < node["end_step"]
        if node["parent"] is not None:
            parent = nodes[node["parent"]]
            assert parent["end_step"] == node["first_step"]
            assert set(tree.members(node["id"])) <= set(tree.members(parent["id"]))
    # every listed node is active exactly in its span, and nothing unlisted is ever active
    active = set()
    for step in range(STEPS):
        active |= set(schedule.active_groups(step).tolist())
    assert active == set(nodes)
