"""Fixtures for the framework-free planner tests: real prompt sets and their real embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PROMPTS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "prompts"


@pytest.fixture(scope="session")
def prompt_set():
    """prompt_set(name) -> list of prompts: an embedded set (hierdiff_core.prompts), else the large sets
    kept out of the package (animals, prompt_templates) from ../shared/prompts/NAME.txt; skips when absent."""
    from hierdiff_core.prompts import EMBEDDED_PROMPT_SETS, embedded_prompt_set, read_prompts

    def load(name: str) -> list[str]:
        if name in EMBEDDED_PROMPT_SETS:
            return embedded_prompt_set(name)
        path = PROMPTS_DIR / f"{name}.txt"
        if not path.is_file():
            pytest.skip(f"real prompt set {path} is absent (../shared is not beside this checkout)")
        return read_prompts(path)

    return load


@pytest.fixture(scope="session")
def embedded(prompt_set):
    """embedded(name) -> (prompts, (N, 384) float32 embeddings from the real sentence encoder).

    Each set is encoded once per test session."""
    from hierdiff_core.embed import encode_prompts

    cache: dict[str, tuple[list[str], np.ndarray]] = {}

    def get(name: str) -> tuple[list[str], np.ndarray]:
        if name not in cache:
            prompts = prompt_set(name)
            cache[name] = (prompts, encode_prompts(prompts))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for the module (testkit.tiny_pipelines.one_torch_thread): the tiny pipelines'
    kernels gain nothing from more, and on a shared machine spinning threads slow them many times."""
    from testkit.tiny_pipelines import one_torch_thread as one_thread

    with one_thread():
        yield
