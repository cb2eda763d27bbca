"""The reference MaxSim scorer: simple, slow, one page at a time (the definition).

MaxSim(q, p) = sum over query tokens t of max over page tokens j of q_t . p_j, for each page
alone: what colpali-engine's ``score_multi_vector`` gives for that page scored by itself.
(Scored in a batch, colpali-engine zero-pads shorter pages to the batch's longest one with no
mask, which clamps a query token's best match at 0 and makes a page's score depend on its
neighbours; ragvl deliberately does not reproduce that, so a page's score never depends on
what else is in the index.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["maxsim_scores", "check_query"]


def maxsim_scores(query: np.ndarray, pages: Sequence[np.ndarray]) -> np.ndarray:
    """Exact MaxSim of one query against each page, each page scored alone: ``(n_pages,)`` float32.

    Inputs may be float16 or float32; the arithmetic is float32.
    """
    q = check_query(query)                                         # (nq, D) float32
    out = np.empty(len(pages), dtype=np.float32)
    for i, p in enumerate(pages):
        p = np.asarray(p, dtype=np.float32)                         # (n_i, D)
        if p.ndim != 2 or p.shape[1] != q.shape[1] or len(p) == 0:
            raise ValueError(f"page {i}: expected a non-empty (n, {q.shape[1]}) matrix, got {p.shape}")
        out[i] = (q @ p.T).max(axis=1).sum(dtype=np.float32)        # (nq,) best per token, summed
    return out


def check_query(query: np.ndarray, dim: int | None = None) -> np.ndarray:
    """`query` as a C-contiguous float32 ``(nq >= 1, dim)`` matrix, or ValueError."""
    q = np.ascontiguousarray(query, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0 or (dim is not None and q.shape[1] != dim):
        raise ValueError(f"query: expected a (n_tokens >= 1, {dim or 'dim'}) matrix, got {q.shape}")
    return q
