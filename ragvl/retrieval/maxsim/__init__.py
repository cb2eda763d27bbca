"""Late-interaction (MaxSim) search over stored page multi-vectors.

A page is a ragged ``(n_i, 128)`` matrix of L2-normalised token vectors (ColQwen2: ~700-800
per page); a query is ``(nq, 128)`` (~20-30 tokens). The score of a page is

    MaxSim(q, p) = sum over query tokens t of  max over page tokens j of  q_t . p_j

What is here (one module per job):

* :mod:`.reference` - the reference scorer; :mod:`.kernels` - the onnxruntime MatMul/ArgMax
  graphs; :mod:`.pool` - the worker threads; :mod:`.matrix` - :class:`PageMatrix`;
  :mod:`.kmeans` - spherical k-means;
  :mod:`.stage` - :class:`CentroidStage`.

In more detail:

* :func:`maxsim_scores` - the reference: simple, slow, colpali-engine's
  ``BaseVisualRetrieverProcessor.score_multi_vector`` of each page scored alone (below).
* :class:`PageMatrix` - every page's vectors in ONE contiguous ``(N, 128)`` matrix plus page
  offsets, stored as float16 (default) or float32, saved to / memory-mapped from a cache
  directory, with

  - :meth:`PageMatrix.exact`: exact MaxSim top-k over every page (chunked MatMul on
    onnxruntime, segment max with ``np.maximum.reduceat``, sum over query tokens);
  - a PLAID-style first stage (:class:`CentroidStage`) that picks ~128 candidate pages from
    k-means centroids for exact rescoring of only those: PageSearch.visual (ragvl.retrieval)
    does the staged search, below :data:`EXACT_BELOW` pages (or without a stage) exactly.

Exact search costs ``2 * nq * 128 * N`` flops: 48 GFLOP for 25 query tokens against 10k pages
(7.5M vectors). That is compute-bound, not memory-bound: ~170 GFLOP/s is what float32 MLAS gets
out of the 2 dev-machine cores, so ~0.3-0.4 s a query at 10k pages is the floor for exact
scoring there, and the first stage is what makes large indexes interactive.

Exact means pure MaxSim
-----------------------
A page's score is computed from that page alone (:mod:`.reference`): equal to colpali-engine's
``score_multi_vector`` for the page scored by itself. Scored in batches, colpali-engine
zero-pads shorter pages without a mask, which clamps a query token's best match at 0 and makes
a page's score depend on its batch neighbours; that is not reproduced, so scores never depend
on what else is in the index, on filters, caches or compaction.

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

from ...models.contract import VECTOR_DIM as DIM
from .kernels import Kernels
from .matrix import CHUNK_VECTORS, EXACT_BELOW, PageMatrix
from .reference import maxsim_scores
from .stage import CentroidStage, default_n_centroids

__all__ = [
    "maxsim_scores", "PageMatrix", "CentroidStage", "default_n_centroids", "Kernels",
    "DIM", "EXACT_BELOW", "CHUNK_VECTORS",
]
