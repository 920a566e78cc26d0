# SPDX-License-Identifier: GPL-3.0-or-later
"""The one prompt reader: node texts and the embedded prompt sets."""

from __future__ import annotations

import re

import pytest

from hierdiff_core.prompts import (
    EMBEDDED_PROMPT_SETS,
    MAX_EXPANDED_PROMPTS,
    PROMPT_SET_DIR,
    cross_prompts,
    embedded_prompt_set,
    expand_template,
    prompts_from_input,
    read_prompts,
    text_prompts,
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


def test_a_text_holds_one_stripped_prompt_per_non_blank_line():
    assert text_prompts("  a cat \n\n a dog\r\na bird\ra cat\n") == ["a cat", "a dog", "a bird", "a cat"]


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffa cat\na dog\n".encode())
    assert read_prompts(path) == ["a cat", "a dog"]


@pytest.mark.parametrize("inner", ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_other_unicode_line_breaks_stay_inside_their_prompt_as_a_space(tmp_path, inner):
    path = tmp_path / "prompts.txt"
    path.write_text(f"a red{inner}cat\na blue{inner}dog\nan old castle\n", encoding="utf-8", newline="")
    assert read_prompts(path) == ["a red cat", "a blue dog", "an old castle"]


def test_a_list_input_keeps_one_prompt_per_item_whatever_it_holds():
    captions = ["a red cat\non a sofa", "", "  a dog  ", "a cat"]
    assert prompts_from_input(captions) == captions
    assert prompts_from_input([["a cat", "a dog"], ("a bird",)]) == ["a cat", "a dog", "a bird"]
    assert prompts_from_input([7, 8.5]) == ["7", "8.5"]


def test_a_single_input_text_is_read_line_by_line():
    assert prompts_from_input(["  a cat \n\n a dog"]) == ["a cat", "a dog"]
    assert prompts_from_input([["a cat\na dog"]]) == ["a cat", "a dog"]
    assert prompts_from_input([]) == []


def test_a_template_names_its_grid_first_group_slowest():
    assert expand_template("a {red|blue} {circle|square}") == [
        "a red circle", "a red square", "a blue circle", "a blue square"
    ]  # fmt: skip
    assert expand_template("{|very }red {apple}") == ["red apple", "very red apple"]
    assert expand_template("no braces") == ["no braces"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a {red", "template 'a {red' has a '{' without its '}' at character 3"),
        ("a red}", "template 'a red}' has a '}' without its '{' at character 6"),
        ("{a{b}}", "template '{a{b}}' has a '{' inside braces (they do not nest) at character 3"),
        ("{a|b}" * 17, f"makes 131,072 prompts, more than {MAX_EXPANDED_PROMPTS:,}"),
    ],
)
def test_a_bad_template_is_refused_naming_where(template, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        expand_template(template)


def test_a_cross_writes_every_pairing_into_the_pattern_first_slowest():
    assert cross_prompts(["a cat", "a dog"], ["oil", "ink"], "{second} painting of {first}") == [
        "oil painting of a cat", "ink painting of a cat", "oil painting of a dog", "ink painting of a dog"
    ]  # fmt: skip
    with pytest.raises(ValueError, match=re.escape("pattern '{first} alone' has no {second}")):
        cross_prompts(["a"], ["b"], "{first} alone")
