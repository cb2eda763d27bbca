"""The reference MaxSim scorer: simple, slow, one page at a time (the definition; see the package docstring)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

COLPALI_BATCH = 128       # score_multi_vector's default batch_size: decides which pages are zero-padded

__all__ = ["maxsim_scores", "colpali_clamp_mask", "check_query", "COLPALI_BATCH"]


def colpali_clamp_mask(lengths: Sequence[int] | np.ndarray, batch_size: int = COLPALI_BATCH) -> np.ndarray:
    """Which pages colpali-engine zero-pads: ``(n_pages,)`` bool.

    Page ``i`` is padded iff it is shorter than the longest page of its batch
    ``[b*batch_size, (b+1)*batch_size)``; a padded page's per-query-token max is clamped at 0.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return np.zeros(0, dtype=bool)
    starts = np.arange(0, n, batch_size)
    batch_max = np.maximum.reduceat(lengths, starts)               # (n_batches,)
    return lengths < np.repeat(batch_max, np.diff(np.append(starts, n)))


def maxsim_scores(query: np.ndarray, pages: Sequence[np.ndarray], batch_size: int = COLPALI_BATCH) -> np.ndarray:
    """Exact MaxSim of one query against each page: ``(n_pages,)`` float32.

    The reference implementation - one page at a time, no tricks - equal to colpali-engine's
    ``score_multi_vector([query], pages, batch_size)[0]`` including its zero-padding clamp
    (module docstring). Inputs may be float16 or float32; the arithmetic is float32.
    """
    q = check_query(query)                                         # (nq, D) float32
    if len(pages) == 0:
        return np.zeros(0, dtype=np.float32)
    clamp = colpali_clamp_mask([len(p) for p in pages], batch_size)
    out = np.empty(len(pages), dtype=np.float32)
    for i, p in enumerate(pages):
        p = np.asarray(p, dtype=np.float32)                         # (n_i, D)
        if p.ndim != 2 or p.shape[1] != q.shape[1] or len(p) == 0:
            raise ValueError(f"page {i}: expected a non-empty (n, {q.shape[1]}) matrix, got {p.shape}")
        best = (q @ p.T).max(axis=1)                                # (nq,)
        if clamp[i]:
            best = np.maximum(best, 0.0)                            # the zero padding rows
        out[i] = best.sum(dtype=np.float32)
    return out


def check_query(query: np.ndarray, dim: int | None = None) -> np.ndarray:
    q = np.ascontiguousarray(query, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0 or (dim is not None and q.shape[1] != dim):
        raise ValueError(f"query: expected a (n_tokens >= 1, {dim or 'dim'}) matrix, got {q.shape}")
    return q
