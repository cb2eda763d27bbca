"""Late-interaction (MaxSim) search over stored page multi-vectors.

A page is a ragged ``(n_i, 128)`` matrix of L2-normalised token vectors (ColQwen2: ~700-800
per page); a query is ``(nq, 128)`` (~20-30 tokens). The score of a page is

    MaxSim(q, p) = sum over query tokens t of  max over page tokens j of  q_t . p_j

What is here:

* :func:`maxsim_scores` - the reference: simple, slow, exactly colpali-engine's
  ``BaseVisualRetrieverProcessor.score_multi_vector`` (including its zero-padding quirk, below).
* :class:`PageMatrix` - every page's vectors in ONE contiguous ``(N, 128)`` matrix plus page
  offsets, stored as float16 (default) or float32, saved to / memory-mapped from a cache
  directory, with

  - :meth:`PageMatrix.exact`: exact MaxSim top-k over every page (chunked MatMul on
    onnxruntime, segment max with ``np.maximum.reduceat``, sum over query tokens);
  - :meth:`PageMatrix.search`: a PLAID-style first stage (:class:`CentroidStage`) that picks
    ~128 candidate pages from k-means centroids, then exact rescoring of only those.
    Below :data:`EXACT_BELOW` pages (or without a built stage) it is :meth:`exact`.

Exact search costs ``2 * nq * 128 * N`` flops: 48 GFLOP for 25 query tokens against 10k pages
(7.5M vectors). That is compute-bound, not memory-bound: ~170 GFLOP/s is what float32 MLAS gets
out of the 2 dev-machine cores, so ~0.3-0.4 s a query at 10k pages is the floor for exact
scoring there, and the first stage is what makes large indexes interactive.

Colpali's zero-padding quirk, mirrored on purpose
-------------------------------------------------
``score_multi_vector`` scores pages in batches of ``batch_size`` (128) and zero-pads every page
of a batch to the batch's longest page (``pad_sequence(padding_value=0)``), with no mask. A
padding row dots to exactly 0 with every query token, so for a page that is SHORTER than the
longest page of its batch, each query token's max is ``max(true max, 0)``; a page that is the
longest of its batch has no padding and keeps a negative max. The score of a page therefore
depends on which pages share its batch. It only shows when all of a page's tokens have a
negative dot with some query token - essentially never for real ColQwen2 pages (hundreds of
tokens, a strong common direction), but easy to hit in tests. We reproduce it exactly so that
scores and rankings equal colpali-engine's for the same page order: page ``i`` is "clamped"
iff ``n_i < max(n_j for j in the same block of 128 consecutive pages)``
(:func:`colpali_clamp_mask`). The query side pads too, but a zero query row adds
``max_j 0 = 0``, so it never changes a score.

Precision
---------
Scores are accumulated in float32. With float16 storage the vectors are rounded to float16
once (ColQwen2 itself runs in bf16, which has fewer mantissa bits than float16); the scores are
then colpali-engine's scores of those rounded vectors (to ~1e-6), and differ from the float32
vectors' scores by up to ~1e-3, which can only swap pages whose scores tie to that precision.

Why onnxruntime for the MatMul: numpy has no fast float16 -> float32 path (its cast runs at
~1.6 ns per element here, slower than the MatMul itself) and its MatMul on a thin ``(25, 128)``
query is slower than MLAS. One tiny graph ``Cast(fp16 -> fp32) -> Gemm`` per chunk reads half
the bytes of float32 storage and still multiplies in float32; measured on the 2-core dev
machine it is ~20% faster than float32 storage with both cores free (equal on one core), at
half the memory and disk, and ~2x faster than numpy (see bench/README.md).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..fsutil import atomic_write, atomic_write_with, cpu_threads
from ..models.contract.names import VECTOR_DIM as DIM

COLPALI_BATCH = 128       # score_multi_vector's default batch_size: decides which pages are zero-padded
EXACT_BELOW = 2000        # below this many pages search() is always exact (it is fast enough there)
CHUNK_VECTORS = 16384     # rows per MatMul: (25, 16384) fp32 scores = 1.6 MB, stays in L2/L3
FORMAT_VERSION = 1

__all__ = [
    "maxsim_scores", "colpali_clamp_mask", "PageMatrix", "CentroidStage", "default_n_centroids",
    "DIM", "COLPALI_BATCH", "EXACT_BELOW",
]


# --------------------------------------------------------------------------------------------
# The reference


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
    q = _check_query(query)                                         # (nq, D) float32
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


def _check_query(query: np.ndarray, dim: int | None = None) -> np.ndarray:
    q = np.ascontiguousarray(query, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0 or (dim is not None and q.shape[1] != dim):
        raise ValueError(f"query: expected a (n_tokens >= 1, {dim or 'dim'}) matrix, got {q.shape}")
    return q


# --------------------------------------------------------------------------------------------
# onnxruntime kernels


class _Kernels:
    """Two tiny onnxruntime graphs, built in memory once per storage dtype, single-threaded.

    * ``scores(X (n, D) fp16|fp32, Q (m, D) fp32) -> (m, n) fp32`` = Q @ float32(X).T
    * ``assign(X (n, D), CT (D, K) fp32) -> (n,) int64`` = argmax over K of float32(X) @ CT

    Each session runs on ONE thread; the parallelism is ours (:func:`_parallel`): whole chunks
    handed to worker threads from a shared queue. Why not onnxruntime's intra-op threads: they
    split every MatMul statically and meet at a barrier, so when another process holds one of
    the two cores each call waits for the descheduled half - measured 2x SLOWER than one thread
    on the shared dev machine, while chunk-level work sharing stays >= one thread's speed under
    contention and ~2x when the cores are free (the segment max runs in parallel too).
    Concurrent ``run`` calls on one session are supported by onnxruntime.
    """

    _cache: dict = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, dtype: np.dtype) -> "_Kernels":
        key = np.dtype(dtype).str
        with cls._lock:
            k = cls._cache.get(key)
            if k is None:
                k = cls._cache[key] = cls(np.dtype(dtype))
            return k

    def __init__(self, dtype: np.dtype):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        elem = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float32): TensorProto.FLOAT}[dtype]
        x_in = helper.make_tensor_value_info("X", elem, ["n", "d"])
        head = [helper.make_node("Cast", ["X"], ["Xf"], to=TensorProto.FLOAT)] if elem != TensorProto.FLOAT else []
        xf = "Xf" if head else "X"

        def session(nodes, inputs, outputs):
            graph = helper.make_graph(head + nodes, "maxsim", [x_in] + inputs, outputs)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8                                    # loadable by onnxruntime >= 1.14
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

        # Gemm(Q, X, transB) gives (m, n) with n contiguous: the page segments of a row are
        # contiguous, which is what makes np.maximum.reduceat(axis=1) fast (~0.15 ns/element).
        self._scores = session(
            [helper.make_node("Gemm", ["Q", xf], ["S"], transB=1)],
            [helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["m", "d"])],
            [helper.make_tensor_value_info("S", TensorProto.FLOAT, ["m", "n"])])
        self._assign = session(
            [helper.make_node("MatMul", [xf, "CT"], ["S"]),
             helper.make_node("ArgMax", ["S"], ["I"], axis=1, keepdims=0)],
            [helper.make_tensor_value_info("CT", TensorProto.FLOAT, ["d", "k"])],
            [helper.make_tensor_value_info("I", TensorProto.INT64, ["n"])])

    def scores(self, x: np.ndarray, q: np.ndarray) -> np.ndarray:
        return self._scores.run(None, {"X": x, "Q": q})[0]          # (m, n) float32

    def assign(self, x: np.ndarray, ct: np.ndarray) -> np.ndarray:
        return self._assign.run(None, {"X": x, "CT": ct})[0]        # (n,) int64


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _parallel(fn, items: Sequence, threads: int) -> None:
    """Call ``fn(item)`` for every item on up to `threads` threads, each pulling the next item
    from a shared iterator (a thread that gets less CPU simply does fewer items)."""
    n = min(int(threads), len(items))
    if n <= 1:
        for it in items:
            fn(it)
        return
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ragvl-maxsim")
    it = iter(range(len(items)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                return
            fn(items[i])

    for f in [pool.submit(worker) for _ in range(n)]:
        f.result()                                                  # re-raises a worker's error


# --------------------------------------------------------------------------------------------
# The page matrix


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
        lengths = np.diff(offsets)                                  # (n_pages,)
        self._clamp = colpali_clamp_mask(lengths)                   # (n_pages,) bool
        self._chunks = _page_chunks(offsets, CHUNK_VECTORS)         # page-aligned chunk bounds
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
        q = _check_query(query, self.dim)                           # (nq, D)
        out = np.empty(self.n_pages, dtype=np.float32)
        if self.n_pages:
            self._score_range(q, self.vectors, self.offsets, self._clamp, self._chunks, out)
        return out

    def exact(self, query: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact MaxSim top-k over every page: ``(indices (k',) int64, scores (k',) float32)``,
        best first (equal scores by page index), ``k' = min(k, n_pages)``."""
        return _top_k(self.scores(query), k)

    def score_pages(self, query: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Exact MaxSim against the given pages only: ``(len(pages),)`` float32, in that order.

        Gathers the pages' rows into one contiguous block (sorted by page, so a memory-mapped
        matrix is read forward) and runs the same chunked kernel on it.
        """
        q = _check_query(query, self.dim)
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
        self._score_range(q, block, sub_off, self._clamp[sel], _page_chunks(sub_off, CHUNK_VECTORS), sub)
        out[order] = sub
        return out

    def _gather_buffer(self, rows: int) -> np.ndarray:
        """A per-thread scratch block of at least `rows` rows, kept between calls: a fresh
        50 MB allocation per query costs more in page faults than the copy itself."""
        buf = getattr(self._tls, "buf", None)
        if buf is None or len(buf) < rows:
            buf = self._tls.buf = np.empty((max(rows, 1 << 16), self.dim), dtype=self.dtype)
        return buf[:rows]

    def _score_range(self, q, vectors, offsets, clamp, chunks, out) -> None:
        """MaxSim of q against the pages described by (vectors, offsets), chunk by chunk.

        Never materialises (nq, N): each chunk is a whole number of pages, its (nq, rows)
        scores are reduced to (nq, pages) right away.
        """
        kern = _Kernels.get(vectors.dtype)

        def chunk(bounds):
            p0, p1 = bounds
            r0, r1 = int(offsets[p0]), int(offsets[p1])
            s = kern.scores(vectors[r0:r1], q)                      # (nq, rows) float32
            seg = np.maximum.reduceat(s, offsets[p0:p1] - r0, axis=1)   # (nq, pages): max per page
            c = clamp[p0:p1]
            if c.any():
                seg[:, c] = np.maximum(seg[:, c], 0.0)              # colpali's zero padding rows
            out[p0:p1] = seg.sum(axis=0, dtype=np.float32)          # (pages,); chunks never overlap

        _parallel(chunk, chunks, self.threads)

    # ---- first stage -------------------------------------------------------------------

    def build_first_stage(self, n_centroids: int | None = None, *, seed: int = 0, sample: int | None = None,
                          iters: int = 10) -> "CentroidStage":
        """Train the centroid first stage on this matrix and attach it (see :class:`CentroidStage`)."""
        self.stage = CentroidStage.build(self, n_centroids=n_centroids, seed=seed, sample=sample, iters=iters)
        return self.stage

    def search(self, query: np.ndarray, k: int = 10, *, candidates: int = 128,
               exact_below: int = EXACT_BELOW) -> tuple[np.ndarray, np.ndarray]:
        """Top-k pages: ``(indices, scores)`` like :meth:`exact`, the scores exact.

        With a first stage and at least `exact_below` pages: the stage proposes
        ``max(candidates, k)`` pages, which are rescored exactly. Otherwise exact over all pages.
        """
        n_cand = max(int(candidates), int(k))
        if self.stage is None or self.n_pages < exact_below or n_cand >= self.n_pages:
            return self.exact(query, k)
        q = _check_query(query, self.dim)
        cand = self.stage.candidates(q, n_cand)                     # (n_cand,) page ids
        s = self.score_pages(q, cand)                               # (n_cand,) exact
        idx, sc = _top_k(s, k, tiebreak=cand)
        return cand[idx], sc

    # ---- persistence -------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the matrix (and the first stage, if built) into directory `path`.

        Files: ``vectors.npy`` (N, D), ``offsets.npy`` (n_pages + 1,), the stage's
        ``centroids.npy`` / ``inv_offsets.npy`` / ``inv_pages.npy``, then ``meta.json`` last.
        Every file goes through tmp + fsync + rename, so a reader never sees a torn file; the
        meta records the shapes, and :meth:`load` refuses files that disagree with it (e.g.
        a crash between two renames) instead of returning a mixed index.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _save_npy(path / "vectors.npy", self.vectors)
        _save_npy(path / "offsets.npy", self.offsets)
        meta = {"format": FORMAT_VERSION, "dtype": self.dtype.name, "dim": self.dim,
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
        """Open a directory written by :meth:`save`; `mmap` maps the vectors read-only
        (pages are read from disk on demand and shared through the page cache)."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a page matrix cache ({e})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: cache format {meta.get('format')}, expected {FORMAT_VERSION}")
        vectors = np.load(path / "vectors.npy", mmap_mode="r" if mmap else None)
        offsets = np.load(path / "offsets.npy")
        if (vectors.shape != (meta["n_vectors"], meta["dim"]) or vectors.dtype.name != meta["dtype"]
                or offsets.shape != (meta["n_pages"] + 1,)):
            raise ValueError(f"{path}: files disagree with meta.json (interrupted save?); rebuild the cache")
        stage = CentroidStage._load(path, meta["stage"], meta["n_pages"]) if meta.get("stage") else None
        return cls(vectors, offsets, threads=threads, stage=stage)


# --------------------------------------------------------------------------------------------
# The first stage


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
    def build(cls, matrix: PageMatrix, n_centroids: int | None = None, *, seed: int = 0,
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
        cent = _spherical_kmeans(x, k, iters, rng, matrix.threads)  # (K, D)
        return cls.from_centroids(matrix, cent, probe=probe, seed=seed)

    @classmethod
    def from_centroids(cls, matrix: PageMatrix, centroids: np.ndarray, *, probe: int = 16,
                       seed: int = 0) -> "CentroidStage":
        """Index every page of `matrix` against given centroids (no training)."""
        codes, pages = _centroid_pairs(matrix, centroids)           # sorted by (code, page)
        k = len(centroids)
        inv_offsets = np.searchsorted(codes, np.arange(k + 1)).astype(np.int64)
        return cls(centroids, inv_offsets, pages, matrix.n_pages, probe=probe, seed=seed)

    def extended(self, new: PageMatrix) -> "CentroidStage":
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
        new_codes, new_pages = _centroid_pairs(new, self.centroids)
        old_codes = np.repeat(np.arange(k, dtype=np.int64), np.diff(self.inv_offsets))
        codes = np.concatenate([old_codes, new_codes])
        pages = np.concatenate([self.inv_pages, (new_pages + self.n_pages).astype(np.int32)])
        order = np.argsort(codes, kind="stable")                    # old before new in each list
        inv_offsets = np.searchsorted(codes[order], np.arange(k + 1)).astype(np.int64)
        return CentroidStage(self.centroids, inv_offsets, pages[order], self.n_pages + new.n_pages,
                             probe=self.probe, seed=self.seed)

    def approx_scores(self, query: np.ndarray) -> np.ndarray:
        """Approximate MaxSim of every page from its centroid set: ``(n_pages,)`` float32."""
        q = _check_query(query, self.centroids.shape[1])            # (nq, D)
        nq, n = len(q), self.n_pages
        # onnxruntime, not numpy: an OpenBLAS call leaves its worker threads spinning for a
        # while, and on 2 cores they then slow down the rescoring MatMuls that follow (measured 2x).
        s = _Kernels.get(np.float32).scores(self.centroids, q)     # (nq, K)
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
        _save_npy(path / "centroids.npy", self.centroids)
        _save_npy(path / "inv_offsets.npy", self.inv_offsets)
        _save_npy(path / "inv_pages.npy", self.inv_pages)
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


def _centroid_pairs(matrix: PageMatrix, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (nearest centroid, page) pairs of every vector of `matrix`, sorted by centroid
    then page: ``(codes (P,) int64, pages (P,) int32)``."""
    codes = _nearest(matrix.vectors, centroids, matrix.threads)    # (N,) int64
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


def _nearest(x: np.ndarray, centroids: np.ndarray, threads: int) -> np.ndarray:
    """Index of the max-dot centroid of every row of `x` (fp16 or fp32): ``(len(x),)`` int64."""
    kern = _Kernels.get(x.dtype)
    ct = np.ascontiguousarray(np.asarray(centroids, dtype=np.float32).T)   # (D, K)
    out = np.empty(len(x), dtype=np.int64)
    step = max(256, (1 << 21) // len(centroids))                # (step, K) fp32 scores: 8 MB per thread

    def block(r0):
        out[r0:r0 + step] = kern.assign(x[r0:r0 + step], ct)

    _parallel(block, range(0, len(x), step), threads)
    return out


def _spherical_kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator, threads: int) -> np.ndarray:
    """k-means on the unit sphere (assign by max dot, centroid = normalised mean): ``(k, D)``.

    Seeded init from distinct sample rows; an emptied cluster is re-seeded with a random row.
    """
    cent = x[rng.choice(len(x), size=k, replace=False)].copy()     # (k, D)
    for _ in range(iters):
        a = _nearest(x, cent, threads)                              # (m,) nearest centroid
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


# --------------------------------------------------------------------------------------------
# helpers


def _page_chunks(offsets: np.ndarray, target: int) -> list[tuple[int, int]]:
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


def _top_k(scores: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices into `scores` of the k best, best first (ties: lower `tiebreak`, default index)."""
    n = len(scores)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    idx = np.arange(n) if k == n else np.argpartition(-scores, k - 1)[:k]
    tb = idx if tiebreak is None else np.asarray(tiebreak)[idx]
    idx = idx[np.lexsort((tb, -scores[idx]))].astype(np.int64)
    return idx, scores[idx].astype(np.float32)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write_with(path, lambda f: np.save(f, np.asarray(arr), allow_pickle=False))
