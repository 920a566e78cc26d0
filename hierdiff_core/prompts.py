# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading prompts: prompt files, prompt texts from other nodes, and the prompt sets shipped in the package.

Every reader yields one prompt per non-blank line, stripped, in order, duplicates kept. Standard library
only: both ``hierdiff_core`` and the ComfyUI nodes import this module.
"""

from __future__ import annotations

import os
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


def _prompt_lines(raw: bytes, label: str) -> list[str]:
    """Decode ``raw`` as UTF-8 and keep its stripped non-blank lines; ``label`` names the file in errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompt file {label!r} is not UTF-8 (bad byte at offset {exc.start})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [line for line in prompts if line]
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


def prompts_from_texts(texts: list[str]) -> list[str]:
    """One prompt per non-blank line of each text, stripped, in order (a node's multiline text or a list)."""
    return [line.strip() for text in texts for line in str(text).splitlines() if line.strip()]


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
