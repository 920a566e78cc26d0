# SPDX-License-Identifier: GPL-3.0-or-later
"""Scores of a generated picture set against its prompts: paired win/tie/loss counts and diversity.

Plain numpy over per-picture arrays; the benchmarks in ``tools/`` share them.
"""

from __future__ import annotations

import numpy as np


def win_tie_loss(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """Paired comparison of two runs over the same prompts: a (N,) and b (N,) per-picture scores (for
    example satisfied attributes). Returns (pictures where a is higher, equal, lower)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"win_tie_loss needs paired scores, got shapes {a.shape} and {b.shape}")
    return int((a > b).sum()), int((a == b).sum()), int((a < b).sum())


def vendi_score(similarity: np.ndarray) -> float:
    """The Vendi score of a set from its (N, N) similarity matrix (symmetric, positive semi-definite,
    ones on the diagonal): exp of the Shannon entropy of the eigenvalues of similarity / N.

    It is the set's effective number of distinct items: 1 when all are alike, N when none share
    anything (Friedman and Dieng, 2023)."""
    similarity = np.asarray(similarity, dtype=float)
    n = similarity.shape[0]
    if similarity.shape != (n, n) or n == 0:
        raise ValueError(f"vendi_score needs a square non-empty similarity matrix, got {similarity.shape}")
    eigenvalues = np.clip(np.linalg.eigvalsh(similarity / n), 0.0, None)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def pixel_vendi(images: np.ndarray) -> float:
    """Vendi score of (N, H, W, 3) uint8 pictures with the cosine similarity of their pixels centred
    on mid-grey (values in [-1, 1]), so that two pictures agree where both are light or both dark."""
    flat = np.asarray(images, dtype=float).reshape(len(images), -1) / 127.5 - 1.0
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    return vendi_score(np.clip(flat @ flat.T, -1.0, 1.0) ** 2)


def reading_vendi(readings: list[dict[str, str | None]]) -> float:
    """Vendi score of what a checker read in each picture ({attribute: value or None}), with the
    similarity of two pictures the fraction of attributes read alike (None never matches): the
    effective number of distinct pictures by content."""
    names = sorted({name for reading in readings for name in reading})
    if not names:
        raise ValueError("reading_vendi needs at least one attribute")
    n = len(readings)
    similarity = np.zeros((n, n))
    for name in names:
        values = [reading.get(name) for reading in readings]
        same = np.array([[x is not None and x == y for y in values] for x in values], dtype=float)
        similarity += same
    similarity /= len(names)
    np.fill_diagonal(similarity, 1.0)  # an unread attribute still makes a picture its own twin
    return vendi_score(similarity)
