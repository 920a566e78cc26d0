"""PromptTree and build_tree: scipy-exact linkage, effective heights, duplicates, JSON, scalable path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.cluster.hierarchy import is_valid_linkage, linkage
from scipy.spatial.distance import pdist

from hierdiff_core.tree import METHODS, PromptTree, build_tree


def two_blobs(n_a: int, n_b: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=dim) * 4, rng.normal(size=dim) * 4
    return np.vstack([a + rng.normal(size=(n_a, dim)), b + rng.normal(size=(n_b, dim))])


@pytest.mark.parametrize("method", METHODS)
def test_exact_tree_is_scipy_linkage_over_pdist(embedded, method):
    prompts, E = embedded("style_variations")
    tree = build_tree(E, method=method, prompts=prompts)
    expected = linkage(pdist(E.astype(np.float64), "cosine"), method)
    assert tree.exact
    np.testing.assert_array_equal(tree.linkage, expected)
    assert tree.prompts == tuple(prompts)


def test_default_is_ward_over_cosine(embedded):
    _, E = embedded("demo")
    tree = build_tree(E)
    assert (tree.method, tree.metric) == ("ward", "cosine")
    np.testing.assert_array_equal(tree.linkage, linkage(pdist(E.astype(np.float64), "cosine"), "ward"))


def test_other_metric_is_used(embedded):
    _, E = embedded("demo")
    tree = build_tree(E, method="average", metric="euclidean")
    np.testing.assert_array_equal(tree.linkage, linkage(pdist(E.astype(np.float64), "euclidean"), "average"))


def test_effective_heights_are_subtree_maxima_for_inversions(embedded):
    _, E = embedded("animals")
    tree = build_tree(E, method="centroid")
    raw = tree.linkage[:, 2]
    assert (np.diff(raw) < 0).any(), "centroid linkage on animals should contain an inversion"
    n = tree.n_prompts
    for i, (a, b, h, _) in enumerate(tree.linkage):
        assert tree.heights[i] == max(h, tree.height(int(a)), tree.height(int(b)))
    parents = tree.node_parents[: tree.n_nodes - 1]
    assert (tree.node_heights[parents] >= tree.node_heights[: tree.n_nodes - 1]).all()
    assert tree.height(0) == 0.0 and tree.height(n) == tree.heights[0]


def test_node_navigation_is_consistent(embedded):
    _, E = embedded("style_variations")
    tree = build_tree(E)
    n = tree.n_prompts
    np.testing.assert_array_equal(tree.members(tree.root), np.arange(n))
    assert tree.parent(tree.root) is None and tree.path(tree.root) == ""
    for node in range(n, tree.n_nodes):
        a, b = tree.children(node)
        assert tree.parent(a) == node and tree.parent(b) == node
        np.testing.assert_array_equal(tree.members(node), np.union1d(tree.members(a), tree.members(b)))
        assert tree.path(a) == tree.path(node) + "0" and tree.path(b) == tree.path(node) + "1"
    assert len({tree.path(leaf) for leaf in range(n)}) == n
    with pytest.raises(ValueError, match="leaf"):
        tree.children(0)


def test_identical_rows_merge_at_height_exactly_zero(embedded):
    prompts, E = embedded("demo")
    # rows 6, 7, 8 repeat rows 0, 0, 3 bit for bit
    E2 = np.vstack([E, E[[0, 0, 3]]])
    tree = build_tree(E2, prompts=prompts + [prompts[0], prompts[0], prompts[3]])
    zero = tree.linkage[tree.linkage[:, 2] == 0.0]
    assert sorted(map(int, zero[:, 3])) == [2, 2, 3]  # {0,6}, {3,8}, then {0,6,7}
    node_of_0 = tree.parent(0)
    assert tree.height(node_of_0) == 0.0


def test_one_prompt_has_no_merges_and_zero_prompts_fail():
    tree = build_tree(np.ones((1, 4)), prompts=["only"])
    assert tree.linkage.shape == (0, 4) and tree.n_nodes == 1 and tree.root == 0
    np.testing.assert_array_equal(tree.members(0), [0])
    with pytest.raises(ValueError, match="empty"):
        build_tree(np.zeros((0, 4)))


@pytest.mark.parametrize(
    ("embeddings", "prompts", "message"),
    [
        (np.array([[1.0, np.nan], [1.0, 2.0]]), ["a", "b"], r"NaN or inf in row 0 \('a'\)"),
        (np.array([[1.0, 2.0], [np.inf, 2.0]]), None, "NaN or inf in row 1"),
        (np.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]), list("abc"), r"zero norm in row 1 \('b'\), row 2"),
        (np.ones(3), None, "2-D"),
        (np.ones((3, 2)), ["a", "b"], "3 rows but there are 2 prompts"),
    ],
)
def test_bad_embeddings_give_one_line_errors(embeddings, prompts, message):
    with pytest.raises(ValueError, match=message) as info:
        build_tree(embeddings, prompts=prompts)
    assert "\n" not in str(info.value)


def test_unknown_method_and_metric_are_rejected():
    with pytest.raises(ValueError, match="unknown linkage method 'wards'"):
        build_tree(np.eye(3), method="wards")
    with pytest.raises(ValueError, match="unknown distance metric 'cosinus'"):
        build_tree(np.eye(3), metric="cosinus")


@pytest.mark.parametrize("exact", [True, False])
def test_json_round_trip_is_unchanged(embedded, exact):
    prompts, E = embedded("style_variations")
    tree = build_tree(E, prompts=prompts, max_exact=100 if exact else 40, bucket_size=30)
    assert tree.exact is exact
    data = json.loads(json.dumps(tree.to_dict()))
    again = PromptTree.from_dict(data)
    assert again.to_dict() == tree.to_dict()
    assert again == tree
    np.testing.assert_array_equal(again.linkage, tree.linkage)
    with pytest.raises(ValueError, match="version"):
        PromptTree.from_dict({**data, "version": 99})


@pytest.mark.parametrize("method", METHODS)
def test_scalable_path_gives_a_valid_monotone_tree(embedded, method):
    prompts, E = embedded("animals")
    tree = build_tree(E, method=method, prompts=prompts, max_exact=200, bucket_size=120)
    assert not tree.exact
    assert is_valid_linkage(tree.linkage)
    np.testing.assert_array_equal(tree.members(tree.root), np.arange(len(prompts)))
    assert (tree.linkage[:, 2] >= 0).all()
    # raw heights never drop below a child's effective height: no inversions introduced on top
    for a, b, h, _ in tree.linkage:
        assert h >= tree.height(int(a)) or method in ("centroid", "median")
        assert h >= tree.height(int(b)) or method in ("centroid", "median")


def test_scalable_path_is_deterministic_for_a_seed(embedded):
    _, E = embedded("animals")
    first = build_tree(E, max_exact=100, bucket_size=100, seed=3)
    again = build_tree(E, max_exact=100, bucket_size=100, seed=3)
    np.testing.assert_array_equal(first.linkage, again.linkage)


@pytest.mark.parametrize("method", ["ward", "centroid", "single", "complete", "average"])
def test_bucket_linkage_heights_are_exact_when_buckets_are_the_true_clusters(method):
    # Two far-apart blobs: the buckets are the blobs, so the top merge must be the exact one.
    E = two_blobs(30, 40)
    exact = linkage(pdist(E, "cosine"), method)
    approx = build_tree(E, method=method, max_exact=60, bucket_size=40)
    assert not approx.exact
    assert approx.linkage[-1, 2] == pytest.approx(exact[-1, 2], rel=1e-12)
    assert sorted(map(len, (approx.members(c) for c in approx.children(approx.root)))) == [30, 40]
