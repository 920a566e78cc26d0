# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff_lab.scoring: paired win/tie/loss and the Vendi score (the effective number of distinct items).

Specification: a set of identical items scores 1 and a set of n items sharing nothing scores n; k
distinct items each repeated equally score k; over checker readings, two pictures are as similar as the
fraction of attributes read alike; win/tie/loss counts pictures, pairwise.
"""

from __future__ import annotations

import numpy as np
import pytest

from hierdiff_lab import scoring


def test_identical_items_count_once_and_unrelated_items_each_count() -> None:
    assert scoring.vendi_score(np.ones((6, 6))) == pytest.approx(1.0)
    assert scoring.vendi_score(np.eye(6)) == pytest.approx(6.0)


def test_repeated_items_count_as_many_as_are_distinct() -> None:
    groups = np.repeat(np.arange(3), 4)  # 3 distinct items, 4 copies each
    similarity = (groups[:, None] == groups[None, :]).astype(float)
    assert scoring.vendi_score(similarity) == pytest.approx(3.0)


def test_readings_alike_in_some_attributes_lie_between() -> None:
    same = [{"colour": "red", "shape": "circle"}] * 4
    apart = [{"colour": c, "shape": s} for c, s in (("red", "circle"), ("blue", "square"),
                                                     ("green", "triangle"), ("yellow", "star"))]  # fmt: skip
    half = [{"colour": "red", "shape": s} for s in ("circle", "square", "triangle", "star")]
    assert scoring.reading_vendi(same) == pytest.approx(1.0)
    assert scoring.reading_vendi(apart) == pytest.approx(4.0)
    assert 1.0 < scoring.reading_vendi(half) < 4.0


def test_unread_attributes_match_nothing() -> None:
    unread = [{"colour": None}] * 3
    assert scoring.reading_vendi(unread) == pytest.approx(3.0)


def test_pixel_vendi_counts_copies_once() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    copies = np.concatenate([images, images])
    assert scoring.pixel_vendi(copies) == pytest.approx(scoring.pixel_vendi(images), rel=1e-6)
    assert scoring.pixel_vendi(images[[0, 0, 0]]) == pytest.approx(1.0)


def test_win_tie_loss_counts_pictures_pairwise() -> None:
    assert scoring.win_tie_loss(np.array([5, 4, 3, 5]), np.array([4, 4, 5, 5])) == (1, 2, 1)
    with pytest.raises(ValueError, match="paired"):
        scoring.win_tie_loss(np.array([1, 2]), np.array([1]))
