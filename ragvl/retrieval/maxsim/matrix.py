"""PageMatrix: every page's vectors in one contiguous matrix, exact scoring, its first stage.

The staged search (first stage, then exact rescoring) is PageSearch.visual's, over views of
these matrices: one implementation, the one users run."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterable

import numpy as np

from ...fsutil import atomic_write, cpu_threads, save_npy
from ...models.contract import VECTOR_DIM as DIM
from .kernels import Kernels
from .pool import parallel
from .reference import check_query
from .stage import CentroidStage

EXACT_BELOW = 2000        # below this many pages a search is always exact (it is fast enough there)
CHUNK_VECTORS = 16384     # rows per MatMul: (25, 16384) fp32 scores = 1.6 MB, stays in L2/L3
PERSIST_FORMAT = 1        # the cache directory's layout (meta.json "format")

__all__ = ["PageMatrix", "EXACT_BELOW", "CHUNK_VECTORS", "page_chunks", "top_k"]


class PageMatrix:
    """Every page's token vectors in one contiguous ``(N, D)`` matrix plus ``(n_pages + 1,)``
    offsets: page ``i`` is ``vectors[offsets[i]:offsets[i + 1]]``.

    Built once (:meth:`from_pages`), saved to a cache directory (:meth:`save`) and memory-mapped
    back (:meth:`load`). Its arrays are never modified: :meth:`append` returns a new matrix
    (growing a contiguous matrix is a copy anyway) and carries the first stage over.
    """

    def __init__(self, vectors: np.ndarray, offsets: np.ndarray, *, threads: int | None = None,
                 stage: "CentroidStage | None" = None):
        if not isinstance(vectors, np.ndarray):                     # keep an np.memmap a memmap
            vectors = np.asarray(vectors)
        offsets = np.asarray(offsets, dtype=np.int64)
        if vectors.ndim != 2 or vectors.dtype not in (np.float16, np.float32):
            raise ValueError(f"vectors: expected a (N, D) float16/float32 matrix, got {vectors.dtype} {vectors.shape}")
        if not vectors.flags.c_contiguous:
            vectors = np.ascontiguousarray(vectors)
        if (offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(vectors)
                or np.any(np.diff(offsets) <= 0)):
            raise ValueError("offsets: expected 0 = o_0 < o_1 < ... < o_n = N (every page non-empty)")
        self.vectors = vectors                                      # (N, D) fp16|fp32, maybe a memmap
        self.offsets = offsets                                      # (n_pages + 1,) int64
        self.threads = threads if threads is not None else cpu_threads()
        self.stage = stage
        if stage is not None:
            if stage.n_pages != len(offsets) - 1:
                raise ValueError(f"stage: indexes {stage.n_pages} pages, the matrix has {len(offsets) - 1}")
        self._chunks = page_chunks(offsets, CHUNK_VECTORS)         # page-aligned chunk bounds
        self._tls = threading.local()                               # per-thread rescoring buffer

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def from_pages(cls, pages: Iterable[np.ndarray], dtype=np.float16, *, threads: int | None = None) -> "PageMatrix":
        """Copy ragged ``(n_i, D)`` page matrices into one contiguous matrix of `dtype`
        (``np.float16``, the default, or ``np.float32``)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float16, np.float32):
            raise ValueError(f"dtype: float16 or float32, got {dtype}")
        pages = list(pages)
        dim = pages[0].shape[1] if pages else DIM
        lengths = np.array([len(p) for p in pages], dtype=np.int64)
        for i, p in enumerate(pages):
            if p.ndim != 2 or p.shape[1] != dim or len(p) == 0:
                raise ValueError(f"page {i}: expected a non-empty (n, {dim}) matrix, got {p.shape}")
        offsets = np.zeros(len(pages) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        vectors = np.empty((int(offsets[-1]), dim), dtype=dtype)   # (N, D)
        for p, a, b in zip(pages, offsets[:-1], offsets[1:]):
            vectors[a:b] = p                                        # one cast per page, no big temporaries
        return cls(vectors, offsets, threads=threads)

    def append(self, pages: Iterable[np.ndarray]) -> "PageMatrix":
        """A new matrix: these pages, then `pages` (same dtype); this one is left as it is.

        The vectors are copied once (a contiguous matrix cannot grow in place); a first stage
        is carried over incrementally (:meth:`CentroidStage.extended`), not retrained.
        """
        new = PageMatrix.from_pages(pages, dtype=self.dtype, threads=self.threads)
        if new.n_pages and self.n_pages and new.dim != self.dim:
            raise ValueError(f"pages: width {new.dim}, the index has {self.dim}")
        vectors = np.concatenate([self.vectors, new.vectors]) if new.n_pages else np.array(self.vectors)
        offsets = np.concatenate([self.offsets, self.offsets[-1] + new.offsets[1:]])
        stage = self.stage.extended(new) if self.stage is not None else None
        return PageMatrix(vectors, offsets, threads=self.threads, stage=stage)

    # ---- properties --------------------------------------------------------------------

    @property
    def n_pages(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_vectors(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self.vectors.dtype

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        """Bytes of vectors + offsets (+ the first stage, if built)."""
        return self.vectors.nbytes + self.offsets.nbytes + (self.stage.nbytes if self.stage else 0)

    def page(self, i: int) -> np.ndarray:
        return self.vectors[self.offsets[i]:self.offsets[i + 1]]

    def __len__(self) -> int:
        return self.n_pages

    # ---- exact search ------------------------------------------------------------------

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Exact MaxSim of `query` against every page: ``(n_pages,)`` float32."""
        q = check_query(query, self.dim)                           # (nq, D)
        out = np.empty(self.n_pages, dtype=np.float32)
        if self.n_pages:
            self._score_range(q, self.vectors, self.offsets, self._chunks, out)
        return out

    def exact(self, query: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact MaxSim top-k over every page: ``(indices (k',) int64, scores (k',) float32)``,
        best first (equal scores by page index), ``k' = min(k, n_pages)``."""
        return top_k(self.scores(query), k)

    def score_pages(self, query: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Exact MaxSim against the given pages only: ``(len(pages),)`` float32, in that order.

        Gathers the pages' rows into one contiguous block (sorted by page, so a memory-mapped
        matrix is read forward) and runs the same chunked kernel on it.
        """
        q = check_query(query, self.dim)
        pages = np.asarray(pages, dtype=np.int64)
        out = np.empty(len(pages), dtype=np.float32)
        if len(pages) == 0:
            return out
        order = np.argsort(pages, kind="stable")
        sel = pages[order]                                          # (c,) ascending
        lens = self.offsets[sel + 1] - self.offsets[sel]            # (c,)
        sub_off = np.zeros(len(sel) + 1, dtype=np.int64)
        np.cumsum(lens, out=sub_off[1:])
        block = self._gather_buffer(int(sub_off[-1]))              # (sum n_c, D)
        for j, p in enumerate(sel):                                 # a memcpy per page
            block[sub_off[j]:sub_off[j + 1]] = self.vectors[self.offsets[p]:self.offsets[p + 1]]
        sub = np.empty(len(sel), dtype=np.float32)
        self._score_range(q, block, sub_off, page_chunks(sub_off, CHUNK_VECTORS), sub)
        out[order] = sub
        return out

    def _gather_buffer(self, rows: int) -> np.ndarray:
        """A per-thread scratch block of at least `rows` rows, kept between calls: a fresh
        50 MB allocation per query costs more in page faults than the copy itself."""
        buf = getattr(self._tls, "buf", None)
        if buf is None or len(buf) < rows:
            buf = self._tls.buf = np.empty((max(rows, 1 << 16), self.dim), dtype=self.dtype)
        return buf[:rows]

    def _score_range(self, q, vectors, offsets, chunks, out) -> None:
        """MaxSim of q against the pages described by (vectors, offsets), chunk by chunk.

        Never materialises (nq, N): each chunk is a whole number of pages, its (nq, rows)
        scores are reduced to (nq, pages) right away.
        """
        kern = Kernels.get(vectors.dtype)

        def chunk(bounds):
            p0, p1 = bounds
            r0, r1 = int(offsets[p0]), int(offsets[p1])
            s = kern.scores(vectors[r0:r1], q)                      # (nq, rows) float32
            seg = np.maximum.reduceat(s, offsets[p0:p1] - r0, axis=1)   # (nq, pages): max per page
            out[p0:p1] = seg.sum(axis=0, dtype=np.float32)          # (pages,); chunks never overlap

        parallel(chunk, chunks, self.threads)

    # ---- first stage -------------------------------------------------------------------

    def build_first_stage(self, n_centroids: int | None = None, *, seed: int = 0, sample: int | None = None,
                          iters: int = 10) -> "CentroidStage":
        """Train the centroid first stage on this matrix and attach it (see :class:`CentroidStage`)."""
        self.stage = CentroidStage.build(self, n_centroids=n_centroids, seed=seed, sample=sample, iters=iters)
        return self.stage

    # ---- persistence: a cache directory, memory-mapped back ----------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the matrix (and its first stage, if built) into directory `path`.

        Files: ``vectors.npy`` (N, D), ``offsets.npy`` (n_pages + 1,), the stage's
        ``centroids.npy`` / ``inv_offsets.npy`` / ``inv_pages.npy``, then ``meta.json`` last.
        Every file goes through tmp + fsync + rename, so a reader never sees a torn file; the
        meta records the shapes, and :meth:`load` refuses files that disagree with it (e.g. a
        crash between two renames) instead of returning a mixed index.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        v = self.vectors
        in_place = (isinstance(v, np.memmap) and v.filename
                    and Path(v.filename).resolve() == (path / "vectors.npy").resolve())
        if in_place:                                            # filled in place (a big segment): just flush
            if v.mode != "r":
                v.flush()
        else:
            save_npy(path / "vectors.npy", v)
        save_npy(path / "offsets.npy", self.offsets)
        meta = {"format": PERSIST_FORMAT, "dtype": self.dtype.name, "dim": self.dim,
                "n_pages": self.n_pages, "n_vectors": self.n_vectors, "stage": None}
        if self.stage is not None:
            meta["stage"] = self.stage._save(path)
        else:
            for name in CentroidStage.FILES:
                (path / name).unlink(missing_ok=True)
        atomic_write(path / "meta.json", json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, *, threads: int | None = None) -> "PageMatrix":
        """Open a directory written by :meth:`save`; `mmap` maps the vectors read-only (pages are
        read from disk on demand and shared through the page cache)."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a page matrix cache ({e})") from None
        if meta.get("format") != PERSIST_FORMAT:
            raise ValueError(f"{path}: cache format {meta.get('format')}, expected {PERSIST_FORMAT}")
        vectors = np.load(path / "vectors.npy", mmap_mode="r" if mmap else None)
        offsets = np.load(path / "offsets.npy")
        if (vectors.shape != (meta["n_vectors"], meta["dim"]) or vectors.dtype.name != meta["dtype"]
                or offsets.shape != (meta["n_pages"] + 1,)):
            raise ValueError(f"{path}: files disagree with meta.json (interrupted save?); rebuild the cache")
        stage = CentroidStage._load(path, meta["stage"], meta["n_pages"]) if meta.get("stage") else None
        return cls(vectors, offsets, threads=threads, stage=stage)


def page_chunks(offsets: np.ndarray, target: int) -> list[tuple[int, int]]:
    """Split pages into consecutive runs of about `target` rows, each a whole number of pages
    (at least one): ``[(p0, p1), ...]``. Page-aligned, so no page straddles two MatMuls."""
    n = len(offsets) - 1
    out, p0 = [], 0
    while p0 < n:
        p1 = int(np.searchsorted(offsets, offsets[p0] + target, side="right")) - 1
        p1 = min(max(p1, p0 + 1), n)
        out.append((p0, p1))
        p0 = p1
    return out


def top_k(scores: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices into `scores` of the k best, best first (ties: lower `tiebreak`, default index)."""
    n = len(scores)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    idx = np.arange(n) if k == n else np.argpartition(-scores, k - 1)[:k]
    tb = idx if tiebreak is None else np.asarray(tiebreak)[idx]
    idx = idx[np.lexsort((tb, -scores[idx]))].astype(np.int64)
    return idx, scores[idx].astype(np.float32)
