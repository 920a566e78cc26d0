# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading prompts: prompt files, prompt texts from other nodes, and the prompt sets shipped in the package.

Standard library only: both ``hierdiff_core`` and the ComfyUI nodes import this module.

A TEXT (a prompt file, a node's multiline widget) holds one prompt per line, read the same way everywhere:

- UTF-8; a byte-order mark at the start is dropped;
- lines end at ``\n``, ``\r\n`` or ``\r`` only; every other character Python would call a line break
  (form feed, vertical tab, ``\x1c``-``\x1e``, NEL ``\x85``, U+2028, U+2029) stands for a space inside
  its line, so a prompt copied from a web page or a word processor stays one prompt;
- each line is stripped; blank lines are skipped; duplicates are kept (they share every step).

A LIST (a node input fed by several strings, e.g. the captions of an image-and-text data set) holds one
prompt per ITEM, whatever the item contains (newlines, nothing at all): the k-th prompt is the k-th item,
verbatim, so images stay paired with their captions. Items that are lists themselves are flattened.
A list of one item is a text.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

PROMPT_SET_DIR = Path(__file__).resolve().parent / "prompt_sets"
"""The embedded prompt sets' folder in a source checkout (``hierdiff_lab.synthetic`` writes its sets here).

Read a set with :func:`embedded_prompt_set`, which also works from an installed wheel."""

EMBEDDED_PROMPT_SETS: tuple[str, ...] = (
    "demo",
    "style_variations",
    "variations",
    "attribute_grid",
    "wording",
)
"""Names of the sets shipped in ``PROMPT_SET_DIR`` as ``NAME.txt`` (its README says where each is from)."""


_LINE_END = re.compile(r"\r\n|\r|\n")
_INNER_BREAKS = re.compile("[\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def text_prompts(text: str) -> list[str]:
    """The prompts of one text: one per line (see the module docstring), in order."""
    text = text.removeprefix("\ufeff")
    lines = (_INNER_BREAKS.sub(" ", line).strip() for line in _LINE_END.split(text))
    return [line for line in lines if line]


def _prompt_lines(raw: bytes, label: str) -> list[str]:
    """Decode ``raw`` as UTF-8 and read it as a text; ``label`` names the file in errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompt file {label!r} is not UTF-8 (bad byte at offset {exc.start})") from None
    prompts = text_prompts(text)
    if not prompts:
        raise ValueError(f"prompt file {label!r} holds no prompts (empty or only blank lines)")
    return prompts


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Read one prompt per line from a UTF-8 text file.

    Lines are stripped; blank lines are ignored. Duplicate prompts are kept (they share every
    step of a plan). Raises ``ValueError`` with a one-line message for a missing, unreadable,
    non-UTF-8 or empty file.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"prompt file {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"prompt file {str(p)!r} is a directory")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"prompt file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    return _prompt_lines(raw, str(p))


def prompts_from_input(values: Sequence[object]) -> list[str]:
    """The prompts of a node's string input as ComfyUI hands it to a list node: ``[text]`` from the
    widget or from one string, ``[item, item, ...]`` from a list; nested lists are flattened.

    One item is a text (one prompt per line); several items are one prompt each, verbatim.
    """
    items = list(_flatten(values))
    if len(items) == 1:
        return text_prompts(items[0])
    return items


def _flatten(values: object) -> Iterator[str]:
    if isinstance(values, list | tuple):
        for value in values:
            yield from _flatten(value)
    else:
        yield str(values)


def embedded_prompt_set(name: str) -> list[str]:
    """The prompts of the embedded set ``name`` (one of :data:`EMBEDDED_PROMPT_SETS`).

    Read through importlib.resources so that it works from a wheel as well as from a checkout.
    Raises ``ValueError`` for an unknown name.
    """
    if name not in EMBEDDED_PROMPT_SETS:
        known = ", ".join(EMBEDDED_PROMPT_SETS)
        raise ValueError(f"no embedded prompt set {name!r}; expected one of {known}")
    resource = resources.files(__package__) / "prompt_sets" / f"{name}.txt"
    return _prompt_lines(resource.read_bytes(), f"{__package__}/prompt_sets/{name}.txt")


MAX_EXPANDED_PROMPTS = 100_000
"""Most prompts a template or a cross may expand to (a grid grows multiplicatively)."""


def expand_template(template: str) -> list[str]:
    """Every prompt a template names, e.g. ``a {red|blue} {circle|square}`` -> 4 prompts.

    Each ``{a|b|c}`` takes each of its options in turn; the first group varies slowest, as nested loops
    read left to right (``a red circle, a red square, a blue circle, a blue square``). An option may be
    empty (``{|very }red``); runs of spaces left by empty options become one space. Braces do not nest,
    and a lone ``{`` or ``}`` is an error naming its position. ValueError (one line) on bad input or when
    the grid exceeds :data:`MAX_EXPANDED_PROMPTS`.
    """
    pieces: list[list[str]] = []
    literal, position = [], 0
    while position < len(template):
        char = template[position]
        if char == "}":
            raise _template_error(template, position, "a '}' without its '{'")
        if char != "{":
            literal.append(char)
            position += 1
            continue
        end = template.find("}", position + 1)
        nested = template.find("{", position + 1)
        if end < 0:
            raise _template_error(template, position, "a '{' without its '}'")
        if 0 <= nested < end:
            raise _template_error(template, nested, "a '{' inside braces (they do not nest)")
        pieces += [["".join(literal)], template[position + 1 : end].split("|")]
        literal, position = [], end + 1
    pieces.append(["".join(literal)])
    count = math.prod(len(options) for options in pieces)
    _check_count(count, f"template {template!r}")
    return [" ".join("".join(parts).split()) for parts in itertools.product(*pieces)]


def cross_prompts(
    first: Sequence[str], second: Sequence[str], pattern: str = "{first}, {second}"
) -> list[str]:
    """Every pairing of ``first`` and ``second`` written into ``pattern``, ``first`` varying slowest.

    ``pattern`` holds ``{first}`` and ``{second}`` (each at least once), e.g. ``{second} painting of
    {first}`` with subjects first and styles second.
    """
    for name in ("{first}", "{second}"):
        if name not in pattern:
            raise ValueError(f"pattern {pattern!r} has no {name}: write where each list's item goes")
    _check_count(len(first) * len(second), f"crossing {len(first):,} by {len(second):,} prompts")
    return [pattern.replace("{first}", a).replace("{second}", b) for a in first for b in second]


def _template_error(template: str, position: int, what: str) -> ValueError:
    return ValueError(f"template {template!r} has {what} at character {position + 1}")


def _check_count(count: int, what: str) -> None:
    if count > MAX_EXPANDED_PROMPTS:
        raise ValueError(f"{what} makes {count:,} prompts, more than {MAX_EXPANDED_PROMPTS:,}")
