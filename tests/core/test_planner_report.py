"""Dendrogram picture and savings table."""

from __future__ import annotations

import numpy as np

from hierdiff_core.report import render_dendrogram, savings_table, summary_line
from hierdiff_core.schedule import plan
from hierdiff_core.tree import build_tree


def ink(image, box) -> int:
    """Number of non-white pixels inside box (left, top, right, bottom)."""
    region = np.asarray(image.crop(box).convert("L"))
    return int((region < 250).sum())


def test_summary_line_states_the_saving(embedded):
    prompts, E = embedded("demo")
    schedule = plan(build_tree(E, prompts=prompts), 40, target_saving=0.5)
    assert summary_line(schedule) == "6 images, 120 model evaluations instead of 40 x 6 = 240, 50.0 % saved"


def test_small_set_draws_bands_and_prompt_labels(embedded):
    prompts, E = embedded("demo")
    schedule = plan(build_tree(E, prompts=prompts), 40, target_saving=0.5)
    image = render_dendrogram(schedule, width=1000)
    assert image.mode == "RGB" and image.size == (1000, 300)
    w, h = image.size
    assert ink(image, (0, 0, w, 30)) > 100  # title lines
    assert ink(image, (int(0.6 * w) + 8, 40, w, h - 40)) > 200  # prompt labels beside the plot
    # the root band covers step 0 across the whole plot height: blue, not white
    r, g, b = image.getpixel((14, h // 2))
    assert b > r + 40


def test_two_thousand_prompts_collapse_to_bands_without_labels():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(2000, 16))
    schedule = plan(build_tree(E, prompts=[f"p{i}" for i in range(2000)]), 40, target_saving=0.6)
    image = render_dendrogram(schedule)
    assert image.size == (1200, 1000)
    # no label column: the bands reach the right edge of the picture
    assert ink(image, (1150, 100, 1185, 900)) > 1000


def test_savings_table_folds_equal_steps_and_totals(embedded):
    prompts, E = embedded("demo")
    schedule = plan(build_tree(E, prompts=prompts), 40, target_saving=0.5)
    table = savings_table(schedule)
    lines = table.splitlines()
    assert lines[0].split() == ["steps", "threshold", "groups", "evaluations"]
    rows = [line.split() for line in lines[2:] if line and line[0] in " 0123456789"]
    rows = [r for r in rows if r[0][0].isdigit()]
    assert sum(int(r[3].replace(",", "")) for r in rows) == schedule.model_evaluations
    assert rows[0][0].startswith("0") and rows[-1][0].endswith("39")
    assert "model evaluations: 120 instead of 40 x 6 = 240 (50.0 % saved, 20.00 per image)" in table
