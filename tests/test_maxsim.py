"""ragvl.retrieval.maxsim against colpali-engine's score_multi_vector (torch, CPU), plus the
PageMatrix cache, edge cases and the first stage's recall on bench/bench_search.py's data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ragvl.retrieval import maxsim
from ragvl.retrieval.cache import View
from ragvl.retrieval.maxsim import EXACT_BELOW, CentroidStage, PageMatrix, default_n_centroids, maxsim_scores
from ragvl.retrieval.page_search import PageSearch
from ragvl.retrieval.segments import Segment


def staged(m: PageMatrix, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The staged search users run (PageSearch.visual) over `m` as a one-segment view: (pages, scores)."""
    n = m.n_pages
    view = View(0, [Segment("t", m, np.arange(n).astype(str), {})], np.array([0, n]), np.ones(n, bool),
                np.arange(n), np.full(n, "doc"), np.full(n, "sha"), np.arange(1, n + 1, dtype=np.int32), {})
    hits = PageSearch(None, view=view).visual(q, k)
    return (np.array([r for r, _ in hits], dtype=np.int64), np.array([s for _, s in hits], dtype=np.float32))

ROOT = Path(__file__).resolve().parents[1]
D = 128


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _colpali_batch(query: np.ndarray, pages: list[np.ndarray]) -> np.ndarray:
    """colpali-engine's score_multi_vector of one query over `pages` in its batches: ``(n_pages,)``."""
    import colpali_engine.utils.processing_utils as proc
    import torch
    s = proc.BaseVisualRetrieverProcessor.score_multi_vector(
        [torch.from_numpy(np.asarray(query, np.float32))],
        [torch.from_numpy(np.asarray(p, np.float32)) for p in pages], device="cpu")
    return s[0].numpy()


def _colpali(query: np.ndarray, pages: list[np.ndarray]) -> np.ndarray:
    """colpali-engine's reference score of each page scored alone, float32 ``(n_pages,)``."""
    return np.array([_colpali_batch(query, [p])[0] for p in pages], dtype=np.float32)


@pytest.fixture(scope="module")
def ragged():
    """300 random pages of 1..60 vectors (3 colpali batches) with all-negative cases planted.

    Query token 0 is ``e``; pages built from ``-e`` plus noise dot negatively with it on every
    vector. Page 5 (short, padded in its batch: colpali's batch scoring clamps it at 0) and page 140
    (the longest page of batch 1: no padding) both carry it.
    """
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 61, size=300)
    lengths[[3, 77, 200]] = 1                                   # single-vector pages
    lengths[140] = 80                                           # the longest of batch [128, 256)
    pages = [_unit(rng.standard_normal((int(n), D))) for n in lengths]
    queries = [_unit(rng.standard_normal((int(nq), D))) for nq in (25, 20, 30)]
    e = queries[0][0]
    for i in (5, 140, 3):
        pages[i] = _unit(-e + 0.3 * _unit(rng.standard_normal((len(pages[i]), D))))
    return pages, queries


@pytest.mark.reference
def test_scores_are_pure_maxsim_not_colpalis_batch_padding(ragged):
    """A page's score is its own: colpali scored alone, never clamped by a neighbour's padding."""
    pages, queries = ragged
    q = queries[0]
    # Token 0 has only negative dots on pages 5 and 140.
    assert (q[:1] @ pages[5].T).max() < 0 and (q[:1] @ pages[140].T).max() < 0
    alone = _colpali(q, pages)
    batched = _colpali_batch(q, pages)
    pure = np.array([(q @ p.T).max(axis=1).sum() for p in pages], dtype=np.float32)
    assert batched[5] > alone[5] + 0.5                          # colpali's batch padding: not reproduced
    np.testing.assert_allclose(alone, pure, rtol=0, atol=1e-5)
    np.testing.assert_allclose(maxsim_scores(q, pages), alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(PageMatrix.from_pages(pages, dtype=np.float32).scores(q), alone, rtol=0, atol=1e-5)


@pytest.mark.reference
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exact_equals_colpali(ragged, dtype, monkeypatch):
    """PageMatrix scores = colpali's within 1e-5, same ranking; float16 storage is compared
    with colpali on the same float16-rounded vectors."""
    pages, queries = ragged
    stored = [p.astype(dtype).astype(np.float32) for p in pages]
    for chunk in (maxsim.CHUNK_VECTORS, 50):                    # one chunk; many (pages > chunk too)
        monkeypatch.setattr(maxsim.matrix, "CHUNK_VECTORS", chunk)
        m = PageMatrix.from_pages(pages, dtype=dtype)
        assert m.dtype == dtype and m.n_pages == len(pages)
        if chunk == 50:
            assert len(m._chunks) > 50
        for q in queries:
            ref = _colpali(q, stored)
            np.testing.assert_allclose(m.scores(q), ref, rtol=0, atol=1e-5)
            np.testing.assert_allclose(maxsim_scores(q, stored), ref, rtol=0, atol=1e-5)
            idx, sc = m.exact(q, len(pages))
            np.testing.assert_array_equal(idx, np.argsort(-ref, kind="stable"))
            np.testing.assert_allclose(sc, ref[idx], rtol=0, atol=1e-5)
            sub = np.array([140, 5, 0, 299, 3, 77])             # rescoring path: any order
            np.testing.assert_allclose(m.score_pages(q, sub), ref[sub], rtol=0, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    pages = [_unit(rng.standard_normal((int(n), D))) for n in rng.integers(20, 60, size=400)]
    m = PageMatrix.from_pages(pages)
    m.build_first_stage(n_centroids=64, seed=0)
    m.save(tmp_path / "idx")
    assert not [p for p in (tmp_path / "idx").iterdir() if ".tmp" in p.name]
    for mmap in (True, False):
        m2 = PageMatrix.load(tmp_path / "idx", mmap=mmap)
        assert isinstance(m2.vectors, np.memmap) == mmap
        np.testing.assert_array_equal(m2.vectors, m.vectors)
        np.testing.assert_array_equal(m2.offsets, m.offsets)
        np.testing.assert_array_equal(m2.stage.inv_pages, m.stage.inv_pages)
        np.testing.assert_array_equal(m2.stage.centroids, m.stage.centroids)
        for q in (_unit(rng.standard_normal((25, D))) for _ in range(3)):
            np.testing.assert_array_equal(m2.scores(q), m.scores(q))
            for a, b in zip(m2.exact(q, 7), m.exact(q, 7)):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(staged(m2, q, 5), staged(m, q, 5)):
                np.testing.assert_array_equal(a, b)
    # Saving again over a mapped cache (the old inode stays valid for the open map).
    m2 = PageMatrix.load(tmp_path / "idx")
    m2.save(tmp_path / "idx")
    q = _unit(rng.standard_normal((25, D)))
    np.testing.assert_array_equal(PageMatrix.load(tmp_path / "idx").scores(q), m.scores(q))
    # Without a stage the stage files go away.
    PageMatrix.from_pages(pages[:10]).save(tmp_path / "idx")
    m3 = PageMatrix.load(tmp_path / "idx")
    assert m3.stage is None and m3.n_pages == 10
    assert not (tmp_path / "idx" / "centroids.npy").exists()


def test_load_refuses_inconsistent_files(tmp_path):
    rng = np.random.default_rng(2)
    PageMatrix.from_pages([_unit(rng.standard_normal((5, D))) for _ in range(4)]).save(tmp_path / "a")
    PageMatrix.from_pages([_unit(rng.standard_normal((5, D))) for _ in range(6)]).save(tmp_path / "b")
    (tmp_path / "b" / "offsets.npy").replace(tmp_path / "a" / "offsets.npy")   # a torn update
    with pytest.raises(ValueError, match="disagree"):
        PageMatrix.load(tmp_path / "a")
    with pytest.raises(ValueError, match="not a page matrix"):
        PageMatrix.load(tmp_path / "missing")


def test_empty_index(tmp_path):
    m = PageMatrix.from_pages([])
    q = _unit(np.ones((20, D)))
    assert m.n_pages == 0 and m.n_vectors == 0 and m.scores(q).shape == (0,)
    for idx, sc in (m.exact(q, 5), staged(m, q, 5)):
        assert idx.shape == (0,) and sc.shape == (0,) and idx.dtype == np.int64
    m.save(tmp_path / "e")
    m2 = PageMatrix.load(tmp_path / "e")
    assert m2.n_pages == 0 and m2.exact(q, 3)[0].shape == (0,)
    assert maxsim_scores(q, []).shape == (0,)
    with pytest.raises(ValueError):
        m.build_first_stage()


def test_k_larger_than_n_pages_and_bad_inputs():
    rng = np.random.default_rng(3)
    pages = [_unit(rng.standard_normal((n, D))) for n in (3, 1, 7)]
    m = PageMatrix.from_pages(pages, dtype=np.float32)
    q = _unit(rng.standard_normal((25, D)))
    ref = maxsim_scores(q, pages)
    for fn in (m.exact, lambda q, k: staged(m, q, k)):
        idx, sc = fn(q, 10)
        np.testing.assert_array_equal(idx, np.argsort(-ref))
        np.testing.assert_allclose(sc, np.sort(ref)[::-1], atol=1e-6)
        assert fn(q, 0)[0].shape == (0,)
    with pytest.raises(ValueError):
        m.exact(q[:, :64], 3)                                   # wrong width
    with pytest.raises(ValueError):
        m.exact(q[:0], 3)                                       # no query tokens
    with pytest.raises(ValueError):
        PageMatrix.from_pages([pages[0], np.zeros((0, D), np.float32)])   # empty page
    with pytest.raises(ValueError):
        PageMatrix.from_pages(pages, dtype=np.float64)


def test_append_is_incremental():
    """append() = building over all pages; its stage = indexing all pages against the old centroids."""
    rng = np.random.default_rng(5)
    pages = [_unit(rng.standard_normal((int(n), D))) for n in rng.integers(1, 90, size=300)]
    m = PageMatrix.from_pages(pages[:170])
    m.build_first_stage(n_centroids=32, seed=0)
    grown = m.append(pages[170:])
    assert m.n_pages == 170 and grown.n_pages == 300 and grown.stage.n_pages == 300
    full = PageMatrix.from_pages(pages)
    ref = CentroidStage.from_centroids(full, m.stage.centroids)
    np.testing.assert_array_equal(grown.stage.inv_offsets, ref.inv_offsets)
    np.testing.assert_array_equal(grown.stage.inv_pages, ref.inv_pages)
    q = _unit(rng.standard_normal((25, D)))
    np.testing.assert_array_equal(grown.scores(q), full.scores(q))
    np.testing.assert_array_equal(grown.stage.approx_scores(q), ref.approx_scores(q))
    assert PageMatrix.from_pages([]).append(pages[:3]).n_pages == 3
    assert m.append([]).n_pages == 170


@pytest.mark.slow  # over 5 s: left out of the fast loop
def test_first_stage_recall():
    """recall@5 of the centroid first stage + exact rescoring >= 0.98 vs exact, on the bench's
    clustered ColQwen2-like data (shorter pages than real ones, to keep this test fast)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_search import make_corpus, make_queries
    finally:
        sys.path.remove(str(ROOT / "bench"))
    X, offsets, meta = make_corpus(3000, seed=3, len_range=(100, 160))
    queries, targets = make_queries(X, offsets, meta, 40, seed=4)
    m = PageMatrix(X.astype(np.float16), offsets)
    m.build_first_stage(seed=0)
    assert m.stage.n_centroids == default_n_centroids(m.n_vectors) == 512
    assert m.n_pages >= EXACT_BELOW                             # the search really uses the stage
    hits, top1 = [], []
    for q, t in zip(queries, targets):
        ex_idx, ex_sc = m.exact(q, 5)
        idx, sc = staged(m, q, 5)                               # 128 of 3000 pages rescored
        hits.append(len(set(idx) & set(ex_idx)) / 5)
        top1.append(ex_idx[0] == t)
        common = np.isin(idx, ex_idx)                           # rescored scores are the exact ones
        np.testing.assert_allclose(sc[common], ex_sc[np.isin(ex_idx, idx)], rtol=0, atol=1e-5)
    assert np.mean(top1) >= 0.95                                # the data behaves: targets win
    assert np.mean(hits) >= 0.98, f"recall@5 {np.mean(hits):.3f}"
