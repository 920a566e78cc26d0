"""Agglomerative prompt trees: scipy linkage over embeddings, effective merge heights, JSON.

Node ids follow scipy: ``0..N-1`` are the prompts (leaves), ``N + i`` is the cluster formed by
row ``i`` of the ``(N-1, 4)`` linkage matrix ``[a, b, height, count]``.

Exactness
---------
Up to ``max_exact`` prompts (default :data:`DEFAULT_MAX_EXACT`), :func:`build_tree` is exactly
``scipy.cluster.hierarchy.linkage(pdist(E, metric), method)`` as the published method does, except
that rows which are bit-identical get distance exactly 0 (pdist can leave ~1e-16 residue), so
identical prompts share every step. The condensed distance matrix needs ``8 * N * (N - 1) / 2``
bytes and scipy's nearest-neighbour chain copies it once more: about 0.8 GB at N = 10,000,
3.2 GB at N = 20,000.

Above ``max_exact`` the tree is approximate (``PromptTree.exact`` is False): prompts are split
into buckets of at most ``bucket_size`` by recursive 2-means on the (normalised, for cosine)
embeddings; each bucket is linked exactly as above; the bucket roots are then linked on top
with the same method, starting from between-bucket linkage distances that are exact for that
partition (single: min, complete: max, average: mean of the pairwise distances; ward and
centroid: the Lance-Williams values, computed from sums of squared distances; weighted and
median: approximated by average and centroid). The only approximation is the constraint that
a bucket is merged whole before any of its prompts joins another bucket. Memory is
O(bucket_size^2 + N * D); time O(N^2 * D) for the between-bucket distances (BLAS for cosine).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from numbers import Integral
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import is_valid_linkage, leaves_list, linkage
from scipy.cluster.vq import kmeans2
from scipy.spatial.distance import cdist, pdist

from .embed import validate_embeddings

METHODS = ("single", "complete", "average", "weighted", "centroid", "median", "ward")
"""Linkage methods accepted by :func:`build_tree` (scipy's names)."""

DEFAULT_MAX_EXACT = 10_000
"""Largest prompt count linked exactly by default (condensed matrix + scipy's copy ~0.8 GB)."""

DEFAULT_BUCKET_SIZE = 2_500
"""Largest bucket linked exactly inside the scalable path."""

TREE_FORMAT = "hierdiff.tree"
TREE_VERSION = 1


@dataclass(frozen=True, eq=False)
class PromptTree:
    """A binary merge tree over N prompts, in scipy linkage format.

    Attributes
    ----------
    linkage : ndarray, shape (N-1, 4), float64
        Rows ``[a, b, height, count]``; row ``i`` forms node ``N + i`` from nodes ``a`` and ``b``.
    n_prompts : int
        N >= 1 (one prompt: no merges).
    method, metric : str
        How the tree was built (scipy names).
    prompts : tuple of str, or None
        Prompt texts, leaf ``i`` is ``prompts[i]``.
    exact : bool
        False when built by the scalable bucketed path (see module docstring).
    """

    linkage: np.ndarray
    n_prompts: int
    method: str = "ward"
    metric: str = "cosine"
    prompts: tuple[str, ...] | None = None
    exact: bool = True

    def __post_init__(self) -> None:
        n = int(self.n_prompts)
        if n < 1:
            raise ValueError(f"a prompt tree needs at least one prompt, got n_prompts={self.n_prompts}")
        Z = np.array(self.linkage, dtype=np.float64).reshape(-1, 4)
        if Z.shape != (n - 1, 4):
            raise ValueError(f"linkage must have shape ({n - 1}, 4) for {n} prompts, got {Z.shape}")
        if n > 1 and not is_valid_linkage(Z):
            raise ValueError("linkage is not a valid scipy linkage matrix")
        if self.method not in METHODS:
            raise ValueError(f"unknown linkage method {self.method!r}; choose one of {', '.join(METHODS)}")
        Z.setflags(write=False)
        object.__setattr__(self, "linkage", Z)
        object.__setattr__(self, "n_prompts", n)
        if self.prompts is not None:
            prompts = tuple(str(p) for p in self.prompts)
            if len(prompts) != n:
                raise ValueError(f"tree has {n} leaves but {len(prompts)} prompts were given")
            object.__setattr__(self, "prompts", prompts)

    # ----- derived structure (computed once, bottom-up) -----
    @cached_property
    def _structure(self) -> dict[str, np.ndarray]:
        n = self.n_prompts
        total = 2 * n - 1
        a = self.linkage[:, 0].astype(np.int64).tolist()
        b = self.linkage[:, 1].astype(np.int64).tolist()
        raw = self.linkage[:, 2].tolist()
        height = [0.0] * total
        min_member = list(range(n)) + [0] * (n - 1)
        parent = [-1] * total
        for i in range(n - 1):
            node = n + i
            ai, bi = a[i], b[i]
            # fcluster 'distance' semantics: a cluster's height is the max over its subtree, so
            # inversions (centroid, median) never make a child split after its parent.
            height[node] = max(raw[i], height[ai], height[bi])
            min_member[node] = min(min_member[ai], min_member[bi])
            parent[ai] = node
            parent[bi] = node
        order = leaves_list(self.linkage) if n > 1 else np.zeros(1, dtype=np.int64)
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        start = np.empty(total, dtype=np.int64)
        start[:n] = position
        sizes = np.ones(total, dtype=np.int64)
        if n > 1:
            sizes[n:] = self.linkage[:, 3].astype(np.int64)
            s = start.tolist()
            for i in range(n - 1):
                s[n + i] = min(s[a[i]], s[b[i]])
            start = np.asarray(s, dtype=np.int64)
        out = {
            "height": np.asarray(height, dtype=np.float64),
            "min_member": np.asarray(min_member, dtype=np.int64),
            "parent": np.asarray(parent, dtype=np.int64),
            "order": order.astype(np.int64),
            "start": start,
            "size": sizes,
        }
        for arr in out.values():
            arr.setflags(write=False)
        return out

    @property
    def n_nodes(self) -> int:
        """2N - 1: leaves plus merges."""
        return 2 * self.n_prompts - 1

    @property
    def root(self) -> int:
        return self.n_nodes - 1

    @property
    def heights(self) -> np.ndarray:
        """(N-1,) effective merge heights: max of the raw heights over each merge's subtree."""
        return self._structure["height"][self.n_prompts :]

    @property
    def node_heights(self) -> np.ndarray:
        """(2N-1,) effective height of every node (0 for leaves)."""
        return self._structure["height"]

    @property
    def node_sizes(self) -> np.ndarray:
        """(2N-1,) number of prompts under every node."""
        return self._structure["size"]

    @property
    def node_parents(self) -> np.ndarray:
        """(2N-1,) parent node id of every node, -1 for the root."""
        return self._structure["parent"]

    @property
    def node_min_members(self) -> np.ndarray:
        """(2N-1,) smallest prompt index under every node."""
        return self._structure["min_member"]

    @property
    def leaf_order(self) -> np.ndarray:
        """(N,) prompts in dendrogram order: every node's members are contiguous in it."""
        return self._structure["order"]

    @property
    def node_starts(self) -> np.ndarray:
        """(2N-1,) position in :attr:`leaf_order` of every node's first member."""
        return self._structure["start"]

    def _check_node(self, node: int) -> int:
        node = int(node)
        if not 0 <= node < self.n_nodes:
            raise ValueError(f"node {node} is out of range 0..{self.n_nodes - 1}")
        return node

    def height(self, node: int) -> float:
        """Effective height of a node (0.0 for a leaf)."""
        return float(self.node_heights[self._check_node(node)])

    def children(self, node: int) -> tuple[int, int]:
        """The two nodes merged into ``node``; ValueError for a leaf."""
        node = self._check_node(node)
        if node < self.n_prompts:
            raise ValueError(f"node {node} is a leaf and has no children")
        row = self.linkage[node - self.n_prompts]
        return int(row[0]), int(row[1])

    def parent(self, node: int) -> int | None:
        """Parent node id, or None for the root."""
        p = int(self.node_parents[self._check_node(node)])
        return None if p < 0 else p

    def members(self, node: int) -> np.ndarray:
        """Sorted prompt indices under ``node``, shape (size,)."""
        node = self._check_node(node)
        start = self.node_starts[node]
        return np.sort(self.leaf_order[start : start + self.node_sizes[node]])

    def path(self, node: int) -> str:
        """Route from the root as '0'/'1' (first/second child per merge row); '' for the root."""
        node = self._check_node(node)
        steps = []
        while (p := self.parent(node)) is not None:
            steps.append("0" if self.children(p)[0] == node else "1")
            node = p
        return "".join(reversed(steps))

    # ----- serialisation -----
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_dict` rebuilds an identical tree."""
        return {
            "format": TREE_FORMAT,
            "version": TREE_VERSION,
            "n_prompts": self.n_prompts,
            "method": self.method,
            "metric": self.metric,
            "exact": self.exact,
            "prompts": None if self.prompts is None else list(self.prompts),
            "merges": merges_to_list(self.linkage),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptTree:
        if data.get("format") != TREE_FORMAT:
            raise ValueError(f"not a prompt tree: format is {data.get('format')!r}, expected {TREE_FORMAT!r}")
        if data.get("version") != TREE_VERSION:
            raise ValueError(
                f"unsupported prompt tree version {data.get('version')!r} (this reads {TREE_VERSION})"
            )
        return cls(
            linkage=merges_from_list(data["merges"]),
            n_prompts=int(data["n_prompts"]),
            method=data["method"],
            metric=data["metric"],
            prompts=None if data.get("prompts") is None else tuple(data["prompts"]),
            exact=bool(data.get("exact", True)),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PromptTree):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def with_copies(tree: PromptTree, copies: int) -> PromptTree:
    """The tree over ``copies`` copies of each prompt (variations), leaf ``i * copies + v`` being copy v of
    prompt i: shape (N * copies) leaves.

    A prompt's copies merge first, at the copy height ``h``: the smallest positive merge height of
    ``tree`` (copies are as alike as its two most alike distinct prompts), 1.0 when it has none. Every
    merge of ``tree`` keeps its height, raised to ``h`` where lower (identical prompts, at 0, would
    otherwise hold their copies together for ever). So the copies of every prompt split at one step,
    the step the plan's falling threshold passes ``h``, which a budget places like every other split.
    ``copies == 1`` returns ``tree`` itself.
    """
    if isinstance(copies, bool) or not isinstance(copies, Integral) or copies < 1:
        raise ValueError(f"copies must be a whole number >= 1, got {copies!r}")
    copies = int(copies)
    if copies == 1:
        return tree
    n, v = tree.n_prompts, copies
    heights = tree.linkage[:, 2]
    positive = heights[heights > 0]
    h = float(positive.min()) if positive.size else 1.0
    leaves = n * v
    rows: list[list[float]] = []
    copy_root = np.empty(n, dtype=np.int64)
    for i in range(n):
        node = i * v
        for c in range(1, v):
            rows.append([node, i * v + c, h, c + 1])
            node = leaves + len(rows) - 1
        copy_root[i] = node
    first_original = leaves + len(rows)

    def renamed(node: int) -> int:
        return int(copy_root[node]) if node < n else first_original + node - n

    for a, b, height, size in tree.linkage.tolist():
        rows.append([renamed(int(a)), renamed(int(b)), max(height, h), size * v])
    prompts = None if tree.prompts is None else tuple(p for p in tree.prompts for _ in range(v))
    return PromptTree(np.asarray(rows), leaves, tree.method, tree.metric, prompts, tree.exact)


def merges_to_list(Z: np.ndarray) -> list[list]:
    """Linkage rows as ``[[a, b, height, count], ...]`` with int ids/counts and float heights."""
    return [[int(a), int(b), float(h), int(c)] for a, b, h, c in np.asarray(Z).tolist()]


def merges_from_list(merges: Sequence[Sequence[float]]) -> np.ndarray:
    """Inverse of :func:`merges_to_list`: shape (len(merges), 4) float64."""
    return np.array(merges, dtype=np.float64).reshape(-1, 4)


def build_tree(
    embeddings: np.ndarray,
    method: str = "ward",
    metric: str = "cosine",
    prompts: Sequence[str] | None = None,
    *,
    max_exact: int = DEFAULT_MAX_EXACT,
    bucket_size: int = DEFAULT_BUCKET_SIZE,
    seed: int = 0,
) -> PromptTree:
    """Agglomerative tree over prompt embeddings.

    Parameters
    ----------
    embeddings : array_like, shape (N, D)
        One row per prompt (any real dtype); validated by
        :func:`hierdiff_core.embed.validate_embeddings`.
    method : str
        scipy linkage method, one of :data:`METHODS`. Default "ward" as published.
    metric : str
        scipy ``pdist`` metric. Default "cosine" as published.
    prompts : sequence of str, optional
        Texts stored in the tree (length N).
    max_exact : int
        Up to this many prompts the tree is exactly scipy's ``linkage(pdist(E, metric), method)``;
        above it the bucketed scalable path is used (approximate; see the module docstring).
    bucket_size : int
        Largest bucket of the scalable path (>= 2).
    seed : int
        Seed of the scalable path's 2-means partition (the exact path is deterministic).

    Returns
    -------
    PromptTree
    """
    if method not in METHODS:
        raise ValueError(f"unknown linkage method {method!r}; choose one of {', '.join(METHODS)}")
    if prompts is not None:
        prompts = list(prompts)
    E = validate_embeddings(embeddings, prompts=prompts)
    n = E.shape[0]
    if bucket_size < 2:
        raise ValueError(f"bucket_size must be >= 2, got {bucket_size}")
    check_metric(metric)
    if n == 1:
        Z, exact = np.zeros((0, 4)), True
    elif n <= max_exact:
        Z, exact = _exact_linkage(E, method, metric)[0], True
    else:
        Z, exact = _bucketed_linkage(E, method, metric, bucket_size, seed), False
    return PromptTree(
        linkage=Z,
        n_prompts=n,
        method=method,
        metric=metric,
        prompts=None if prompts is None else tuple(prompts),
        exact=exact,
    )


def check_metric(metric: str) -> None:
    try:
        pdist(np.eye(2), metric)
    except (ValueError, TypeError):
        raise ValueError(f"unknown distance metric {metric!r} (use a scipy pdist metric name)") from None


def _condensed_distances(E: np.ndarray, metric: str) -> np.ndarray:
    """pdist with bit-identical rows forced to distance exactly 0 and float residue clipped at 0."""
    d = pdist(E, metric)
    if not np.isfinite(d).all():
        raise ValueError(f"metric {metric!r} gives non-finite distances for these embeddings")
    np.maximum(d, 0.0, out=d)
    n = E.shape[0]
    _, inverse, counts = np.unique(E, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    for group in np.flatnonzero(counts > 1):
        rows = np.flatnonzero(inverse == group)
        i, j = np.triu_indices(len(rows), k=1)
        i, j = rows[i], rows[j]
        # condensed index of the pair (i < j) in scipy's row-major upper triangle
        d[n * i - i * (i + 1) // 2 + (j - i - 1)] = 0.0
    return d


def _exact_linkage(E: np.ndarray, method: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """scipy linkage on the condensed distances; returns (Z, condensed distances)."""
    d = _condensed_distances(E, metric)
    return linkage(d, method), d


def _partition_space(E: np.ndarray, metric: str) -> np.ndarray:
    """Rows in which k-means distances resemble the metric (normalised for angular metrics)."""
    if metric == "correlation":
        E = E - E.mean(axis=1, keepdims=True)
    if metric in ("cosine", "correlation"):
        norms = np.linalg.norm(E, axis=1, keepdims=True)
        return E / np.where(norms > 0, norms, 1.0)
    return E


def _bisect_buckets(X: np.ndarray, bucket_size: int, seed: int) -> list[np.ndarray]:
    """Recursive 2-means until every bucket holds at most bucket_size rows; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    todo = [np.arange(X.shape[0])]
    buckets = []
    while todo:
        idx = todo.pop()
        if len(idx) <= bucket_size:
            buckets.append(idx)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kmeans2 warns about empty clusters; handled below
            _, labels = kmeans2(X[idx], 2, minit="++", seed=rng)
        left, right = idx[labels == 0], idx[labels == 1]
        if len(left) == 0 or len(right) == 0:  # all rows (nearly) identical: any split is as good
            left, right = idx[: len(idx) // 2], idx[len(idx) // 2 :]
        todo += [right, left]
    return sorted(buckets, key=lambda ix: int(ix.min()))


def _cross_distances(X: np.ndarray, Y: np.ndarray, metric: str) -> np.ndarray:
    """(len(X), len(Y)) distances; cosine through BLAS, which is much faster than cdist."""
    if metric == "cosine":
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
        D = 1.0 - Xn @ Yn.T
    else:
        D = cdist(X, Y, metric)
    if not np.isfinite(D).all():
        raise ValueError(f"metric {metric!r} gives non-finite distances for these embeddings")
    return np.maximum(D, 0.0, out=D)


def _lance_williams(method: str, d_xi: np.ndarray, d_yi: np.ndarray, d_xy: float,
                    n_x: int, n_y: int, n_i: np.ndarray) -> np.ndarray:
    """Distance from the merge of clusters x and y to clusters i (scipy's update rules)."""
    if method == "single":
        return np.minimum(d_xi, d_yi)
    if method == "complete":
        return np.maximum(d_xi, d_yi)
    if method == "average":
        return (n_x * d_xi + n_y * d_yi) / (n_x + n_y)
    if method == "weighted":
        return 0.5 * (d_xi + d_yi)
    if method == "centroid":
        n = n_x + n_y
        sq = (n_x * d_xi**2 + n_y * d_yi**2) / n - n_x * n_y * d_xy**2 / n**2
    elif method == "median":
        sq = 0.5 * (d_xi**2 + d_yi**2) - 0.25 * d_xy**2
    else:  # ward
        t = n_x + n_y + n_i
        sq = ((n_x + n_i) * d_xi**2 + (n_y + n_i) * d_yi**2 - n_i * d_xy**2) / t
    return np.sqrt(np.maximum(sq, 0.0))


def _bucketed_linkage(E: np.ndarray, method: str, metric: str, bucket_size: int, seed: int) -> np.ndarray:
    """Scalable approximate linkage: exact inside 2-means buckets, then buckets linked on top."""
    n = E.shape[0]
    buckets = _bisect_buckets(_partition_space(E, metric), bucket_size, seed)
    rows: list[list[float]] = []
    roots, root_heights, sq_within = [], [], []
    for idx in buckets:
        if len(idx) == 1:
            roots.append(int(idx[0]))
            root_heights.append(0.0)
            sq_within.append(0.0)
            continue
        Z, d = _exact_linkage(E[idx], method, metric)
        m = len(idx)
        offset = n + len(rows)  # global id of this bucket's first merge
        local = np.concatenate([idx, offset + np.arange(m - 1)])
        for a, b, h, c in Z.tolist():
            ga, gb = int(local[int(a)]), int(local[int(b)])
            rows.append([min(ga, gb), max(ga, gb), h, c])
        roots.append(offset + m - 2)
        root_heights.append(float(np.max(Z[:, 2])))
        sq_within.append(2.0 * float(np.dot(d, d)))  # sum of d^2 over ordered pairs

    # Between-bucket starting distances, one bucket pair at a time (memory O(bucket_size^2)).
    nb = len(buckets)
    sizes = np.array([len(ix) for ix in buckets], dtype=np.float64)
    D = np.zeros((nb, nb))
    for p in range(nb):
        for q in range(p + 1, nb):
            block = _cross_distances(E[buckets[p]], E[buckets[q]], metric)
            if method == "single":
                value = block.min()
            elif method == "complete":
                value = block.max()
            elif method in ("average", "weighted"):
                value = block.mean()
            else:  # ward, centroid, median: squared centroid distance from pairwise squared distances
                sq = (np.dot(block.ravel(), block.ravel()) / (sizes[p] * sizes[q])
                      - 0.5 * sq_within[p] / sizes[p] ** 2 - 0.5 * sq_within[q] / sizes[q] ** 2)
                if method == "ward":
                    sq *= 2.0 * sizes[p] * sizes[q] / (sizes[p] + sizes[q])
                value = np.sqrt(max(sq, 0.0))
            D[p, q] = D[q, p] = value

    # Agglomerate the buckets with the method's Lance-Williams rule (nb is small: O(nb^3) is fine).
    active = np.ones(nb, dtype=bool)
    ids = list(roots)
    eff = list(root_heights)
    for _ in range(nb - 1):
        masked = np.where(np.outer(active, active), D, np.inf)
        np.fill_diagonal(masked, np.inf)
        x, y = np.unravel_index(int(np.argmin(masked)), masked.shape)
        d_xy = D[x, y]
        others = active.copy()
        others[[x, y]] = False
        D[x, others] = D[others, x] = _lance_williams(
            method, D[x, others], D[y, others], d_xy, sizes[x], sizes[y], sizes[others]
        )
        # Raw heights kept monotone along the tree, so the assembled matrix has no inversion here.
        h = max(float(d_xy), eff[x], eff[y])
        sizes[x] += sizes[y]
        rows.append([min(ids[x], ids[y]), max(ids[x], ids[y]), h, sizes[x]])
        ids[x], eff[x] = n + len(rows) - 1, h
        active[y] = False
    return np.array(rows, dtype=np.float64)
