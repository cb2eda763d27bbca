"""Spherical k-means and nearest-centroid assignment (on the onnxruntime kernels)."""

from __future__ import annotations

import numpy as np

from .kernels import Kernels
from .pool import parallel

__all__ = ["nearest", "spherical_kmeans"]


def nearest(x: np.ndarray, centroids: np.ndarray, threads: int) -> np.ndarray:
    """Index of the max-dot centroid of every row of `x` (fp16 or fp32): ``(len(x),)`` int64."""
    kern = Kernels.get(x.dtype)
    ct = np.ascontiguousarray(np.asarray(centroids, dtype=np.float32).T)   # (D, K)
    out = np.empty(len(x), dtype=np.int64)
    step = max(256, (1 << 21) // len(centroids))                # (step, K) fp32 scores: 8 MB per thread

    def block(r0):
        out[r0:r0 + step] = kern.assign(x[r0:r0 + step], ct)

    parallel(block, range(0, len(x), step), threads)
    return out


def spherical_kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator, threads: int) -> np.ndarray:
    """k-means on the unit sphere (assign by max dot, centroid = normalised mean): ``(k, D)``.

    Seeded init from distinct sample rows; an emptied cluster is re-seeded with a random row.
    """
    cent = x[rng.choice(len(x), size=k, replace=False)].copy()     # (k, D)
    for _ in range(iters):
        a = nearest(x, cent, threads)                              # (m,) nearest centroid
        order = np.argsort(a, kind="stable")
        counts = np.bincount(a, minlength=k)                        # (k,)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        empty = counts == 0
        sums = np.zeros_like(cent)                                  # (k, D) sums of members
        if (~empty).any():
            sums[~empty] = np.add.reduceat(x[order], starts[~empty], axis=0)
        if empty.any():
            sums[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        cent = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
    return cent
