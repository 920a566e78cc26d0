# SPDX-License-Identifier: GPL-3.0-or-later
"""The one prompt reader: node texts and the embedded prompt sets."""

from __future__ import annotations

import pytest

from hierdiff_core.prompts import (
    EMBEDDED_PROMPT_SETS,
    PROMPT_SET_DIR,
    embedded_prompt_set,
    prompts_from_texts,
    read_prompts,
)


def test_embedded_sets_are_exactly_the_prompt_files_in_the_folder():
    files = {path.stem for path in PROMPT_SET_DIR.glob("*.txt") if not path.stem.startswith("LICENSE")}
    assert set(EMBEDDED_PROMPT_SETS) == files


@pytest.mark.parametrize("name", EMBEDDED_PROMPT_SETS)
def test_embedded_set_reads_as_its_file(name):
    assert embedded_prompt_set(name) == read_prompts(PROMPT_SET_DIR / f"{name}.txt")


def test_embedded_set_sizes():
    sizes = {name: len(embedded_prompt_set(name)) for name in EMBEDDED_PROMPT_SETS}
    assert sizes == {
        "demo": 6, "style_variations": 100, "variations": 16, "attribute_grid": 24, "wording": 16
    }


def test_unknown_embedded_set_names_the_known_ones():
    with pytest.raises(ValueError, match="no embedded prompt set 'cats'; expected one of demo, "):
        embedded_prompt_set("cats")


def test_prompts_from_texts_splits_every_text_into_stripped_non_blank_lines():
    assert prompts_from_texts(["  a cat \n\n a dog", "", "a cat"]) == ["a cat", "a dog", "a cat"]
    assert prompts_from_texts([]) == []
