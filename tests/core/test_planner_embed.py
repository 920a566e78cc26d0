"""Prompt files and the packaged offline sentence encoder."""

from __future__ import annotations

import numpy as np
import pytest

from hierdiff_core.embed import EMBEDDING_DIM, validate_embeddings
from hierdiff_core.prompts import read_prompts


def test_read_prompts_strips_and_skips_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("  a red fox \n\n\t\nthe moon\r\na red fox\n", encoding="utf-8")
    assert read_prompts(path) == ["a red fox", "the moon", "a red fox"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no prompts"),
        (b"\n  \n\t\n", "holds no prompts"),
        (b"caf\xe9 au lait\n", "is not UTF-8 \\(bad byte at offset 3\\)"),
    ],
)
def test_bad_prompt_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "p.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_prompts(path)


def test_missing_and_directory_prompt_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="is a directory"):
        read_prompts(tmp_path)


def test_encoder_gives_one_normalised_row_per_prompt(embedded):
    prompts, E = embedded("demo")
    assert E.shape == (len(prompts), EMBEDDING_DIM) and E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)  # all-MiniLM normalises
    assert len({row.tobytes() for row in E}) == len(prompts)


def test_encoder_gives_identical_prompts_bit_identical_rows(embedded):
    from hierdiff_core.embed import encode_prompts

    prompts, E = embedded("demo")
    # the twins would land in different batches with different padding; each distinct prompt is
    # encoded once, so they get bit-identical rows (batching changes only the last bits of a row)
    again = encode_prompts([prompts[2], "x " * 40, prompts[0], prompts[2]], batch_size=2)
    assert again[0].tobytes() == again[3].tobytes()
    np.testing.assert_allclose(again[[0, 2]], E[[2, 0]], atol=1e-5)


def test_validate_embeddings_returns_float64_and_names_bad_rows():
    out = validate_embeddings(np.ones((2, 3), dtype=np.float32), n_prompts=2)
    assert out.dtype == np.float64 and out.flags.c_contiguous
    with pytest.raises(ValueError, match="zero norm in row 2, row 3, row 4, row 5, row 6 and 1 more$"):
        validate_embeddings(np.vstack([np.ones((2, 3))] + [np.zeros((1, 3))] * 6), n_prompts=8)
    with pytest.raises(ValueError, match="real numeric"):
        validate_embeddings(np.ones((2, 2), dtype=complex))
