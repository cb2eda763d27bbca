"""The first stage: PLAID-style candidate pages from k-means centroids.

Its builders take a PageMatrix (`matrix`: `.vectors`, `.offsets`, `.n_pages`), unannotated:
matrix.py imports this module, not the other way round.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...fsutil import save_npy
from .kernels import Kernels
from .kmeans import nearest, spherical_kmeans
from .reference import check_query

__all__ = ["CentroidStage", "default_n_centroids", "centroid_pairs"]


class CentroidStage:
    """PLAID-style candidate generation from k-means centroids.

    Build: spherical k-means (seeded, on a sample of the vectors) gives ``K`` centroids; every
    vector is assigned its nearest centroid, and each page keeps only the SET of its centroid
    ids, stored as inverted lists ``centroid -> pages containing it``.

    Query: ``S = Q @ C.T`` (nq, K). The approximate score of a page is
    ``sum_t max_{c in page} S[t, c]`` (MaxSim against the page's centroids), evaluated only
    over each query token's ``probe`` best centroids; a page that has none of them gets that
    token's ``probe``-th best centroid score (an upper bound for what it has). The
    ``n`` best approximate pages are the candidates, rescored exactly by the caller.

    Cost: one (nq, K) MatMul plus ``nq * probe`` inverted lists of ~``n_pages * u / K`` pages
    (``u`` ~ 200 distinct centroids per page). Building is dominated by the assignment
    (N * K * D multiply-adds: ~40 s for 7.5M vectors at K = 2048 with 2 free cores, ~70 s on
    one - small next to embedding those pages). Incremental-friendly: a page's entry depends only on the fixed
    centroids, so appended pages are just assigned (:meth:`extended`, via
    :meth:`PageMatrix.append`); retrain when the index has grown several-fold.
    """

    FILES = ("centroids.npy", "inv_offsets.npy", "inv_pages.npy")

    def __init__(self, centroids: np.ndarray, inv_offsets: np.ndarray, inv_pages: np.ndarray,
                 n_pages: int, probe: int = 16, seed: int = 0):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)   # (K, D)
        self.inv_offsets = np.asarray(inv_offsets, dtype=np.int64)          # (K + 1,)
        self.inv_pages = np.asarray(inv_pages, dtype=np.int32)              # (sum of set sizes,)
        self.n_pages = int(n_pages)
        self.probe = int(probe)
        self.seed = int(seed)

    @property
    def n_centroids(self) -> int:
        return len(self.centroids)

    @property
    def nbytes(self) -> int:
        return self.centroids.nbytes + self.inv_offsets.nbytes + self.inv_pages.nbytes

    @classmethod
    def build(cls, matrix, n_centroids: int | None = None, *, seed: int = 0,
              sample: int | None = None, iters: int = 10, probe: int = 16) -> "CentroidStage":
        """Train centroids on a seeded sample (default ``64 * K`` vectors) and index every page.

        `n_centroids` defaults to :func:`default_n_centroids` (~sqrt of the vector count).
        """
        n = matrix.n_vectors
        if matrix.n_pages == 0:
            raise ValueError("cannot build a first stage over an empty index")
        k = max(1, min(int(n_centroids or default_n_centroids(n)), n))
        rng = np.random.default_rng(seed)
        m = min(n, sample or 64 * k)
        rows = np.sort(rng.choice(n, size=m, replace=False))        # sorted: forward reads of a memmap
        x = np.asarray(matrix.vectors[rows], dtype=np.float32)      # (m, D)
        cent = spherical_kmeans(x, k, iters, rng, matrix.threads)  # (K, D)
        return cls.from_centroids(matrix, cent, probe=probe, seed=seed)

    @classmethod
    def from_centroids(cls, matrix, centroids: np.ndarray, *, probe: int = 16,
                       seed: int = 0) -> "CentroidStage":
        """Index every page of `matrix` against given centroids (no training)."""
        codes, pages = centroid_pairs(matrix, centroids)           # sorted by (code, page)
        k = len(centroids)
        inv_offsets = np.searchsorted(codes, np.arange(k + 1)).astype(np.int64)
        return cls(centroids, inv_offsets, pages, matrix.n_pages, probe=probe, seed=seed)

    def extended(self, new) -> "CentroidStage":
        """This stage plus the pages of `new`, numbered after this stage's pages.

        Incremental: only the new vectors are assigned (to the existing centroids, no
        retraining), ~3 ms a page at K = 2048 on 2 cores. The centroids were fitted to the old
        pages, so rebuild (:meth:`PageMatrix.build_first_stage`) once the index has grown a lot
        (e.g. when :func:`default_n_centroids` of the new size differs).
        """
        k = self.n_centroids
        if new.n_pages == 0:
            return CentroidStage(self.centroids, self.inv_offsets, self.inv_pages, self.n_pages,
                                 probe=self.probe, seed=self.seed)
        new_codes, new_pages = centroid_pairs(new, self.centroids)
        old_codes = np.repeat(np.arange(k, dtype=np.int64), np.diff(self.inv_offsets))
        codes = np.concatenate([old_codes, new_codes])
        pages = np.concatenate([self.inv_pages, (new_pages + self.n_pages).astype(np.int32)])
        order = np.argsort(codes, kind="stable")                    # old before new in each list
        inv_offsets = np.searchsorted(codes[order], np.arange(k + 1)).astype(np.int64)
        return CentroidStage(self.centroids, inv_offsets, pages[order], self.n_pages + new.n_pages,
                             probe=self.probe, seed=self.seed)

    def approx_scores(self, query: np.ndarray) -> np.ndarray:
        """Approximate MaxSim of every page from its centroid set: ``(n_pages,)`` float32."""
        q = check_query(query, self.centroids.shape[1])            # (nq, D)
        nq, n = len(q), self.n_pages
        # onnxruntime, not numpy: an OpenBLAS call leaves its worker threads spinning for a
        # while, and on 2 cores they then slow down the rescoring MatMuls that follow (measured 2x).
        s = Kernels.get(np.float32).scores(self.centroids, q)     # (nq, K)
        p = min(self.probe, s.shape[1])
        top = np.argpartition(-s, p - 1, axis=1)[:, :p]             # (nq, p) unordered
        top_s = np.take_along_axis(s, top, axis=1)
        order = np.argsort(top_s, axis=1, kind="stable")            # ascending: better ones overwrite
        top = np.take_along_axis(top, order, axis=1)
        top_s = np.take_along_axis(top_s, order, axis=1)
        best = np.repeat(top_s[:, :1], n, axis=1)                   # (nq, n_pages): floor = p-th best
        flat = best.reshape(-1)
        row_base = np.arange(nq, dtype=np.int64) * n
        for r in range(p):                                          # rank by rank, worst first
            cs = top[:, r]
            lists = [self.inv_pages[self.inv_offsets[c]:self.inv_offsets[c + 1]] for c in cs]
            # One centroid's list has each page once and rows don't overlap: no duplicate targets.
            idx = np.concatenate([lst + base for lst, base in zip(lists, row_base)])
            flat[idx] = np.repeat(top_s[:, r], [len(lst) for lst in lists])
        return best.sum(axis=0, dtype=np.float32)

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """The `n` pages with the best approximate scores: ``(min(n, n_pages),)`` int64."""
        a = self.approx_scores(query)
        n = min(int(n), len(a))
        if n >= len(a):
            return np.arange(len(a), dtype=np.int64)
        return np.argpartition(-a, n - 1)[:n].astype(np.int64)

    def _save(self, path: Path) -> dict:
        save_npy(path / "centroids.npy", self.centroids)
        save_npy(path / "inv_offsets.npy", self.inv_offsets)
        save_npy(path / "inv_pages.npy", self.inv_pages)
        return {"kind": "centroids", "n_centroids": self.n_centroids, "n_pairs": len(self.inv_pages),
                "probe": self.probe, "seed": self.seed}

    @classmethod
    def _load(cls, path: Path, meta: dict, n_pages: int) -> "CentroidStage":
        c = np.load(path / "centroids.npy")
        io = np.load(path / "inv_offsets.npy")
        ip = np.load(path / "inv_pages.npy")
        if (len(c) != meta["n_centroids"] or io.shape != (meta["n_centroids"] + 1,)
                or len(ip) != meta["n_pairs"] or io[-1] != len(ip)):
            raise ValueError(f"{path}: first-stage files disagree with meta.json; rebuild the cache")
        return cls(c, io, ip, n_pages, probe=meta["probe"], seed=meta["seed"])


def centroid_pairs(matrix, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (nearest centroid, page) pairs of every vector of `matrix`, sorted by centroid
    then page: ``(codes (P,) int64, pages (P,) int32)``."""
    codes = nearest(matrix.vectors, centroids, matrix.threads)    # (N,) int64
    page_of = np.repeat(np.arange(matrix.n_pages, dtype=np.int64), matrix.lengths)   # (N,)
    pairs = np.unique(codes * matrix.n_pages + page_of)         # sorted, distinct
    return pairs // matrix.n_pages, (pairs % matrix.n_pages).astype(np.int32)


def default_n_centroids(n_vectors: int) -> int:
    """``2**floor(log2(sqrt(N)))`` clipped to [64, 4096]: 2048 for 7.5M vectors (10k pages).

    Why: finer centroids approximate MaxSim better, so fewer candidates are needed for the
    same recall (measured at 10k pages: recall@5 0.95 with 1024 vs 0.99 with 2048 centroids at
    128 candidates), while the build (N * K multiply-adds for the assignment) and the per-query
    inverted-list work grow with K. PLAID uses ~16x more; without a GPU that build is too slow.
    """
    k = 2 ** int(np.floor(np.log2(max(n_vectors, 1)) / 2))
    return int(min(max(k, 64), 4096))
