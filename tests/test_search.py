"""`ragvl index` then `ragvl search` on real PDFs (a numpy-built tiny ColQwen2), scored against
colpali-engine on the same checkpoint (that test is marked `reference`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

QUERIES = ["revenue grew in region 2", "bar chart", "page 3 of the report"]


def ragvl(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_embedder):
    tmp = tmp_path_factory.mktemp("search")
    docs = tmp / "docs"
    for i in range(3):
        make_pdf(docs / f"report{i}.pdf", 3, seed=10 + i, title=f"Annual report {i}")
    r = ragvl("index", docs, "--db", tmp / "db", "--embedder", tiny_embedder, "-q")
    assert r.returncode == 0, r.stderr
    return tmp / "db", docs


@pytest.mark.reference
def test_search_scores_and_ranking_match_colpali(indexed, tiny_embedder):
    import tiny_colqwen2 as tq

    from ragvl.ingest import DEFAULT_DPI, find_pdfs, open_pdf

    db, docs = indexed
    pages, labels = [], []
    for pdf in find_pdfs([docs]):
        with open_pdf(pdf) as d:
            for i in range(d.page_count):
                pages.append(d.render_page(i, DEFAULT_DPI))
                labels.append((str(pdf), i + 1))
    ckpt = tiny_embedder.parent / "ckpt"  # the checkpoint the fixture converted
    ref, proc = tq.load_colqwen2(ckpt), tq.make_colqwen2_processor(ckpt, max_num_visual_tokens=768)
    ps = tq.colpali_embed_images(ref, proc, pages)
    atol = 2e-2  # vectors are stored as float16: scores agree to ~1e-3 of a per-token maximum of 1
    ordered_pairs = 0
    for query in QUERIES:
        expected = tq.colpali_scores(proc, tq.colpali_embed_queries(ref, proc, [query]), ps)[0]
        r = ragvl("search", query, "-k", len(pages), "--db", db, "--embedder", tiny_embedder, "--json")
        assert r.returncode == 0, r.stderr
        hits = json.loads(r.stdout)
        assert [h["rank"] for h in hits] == list(range(1, len(pages) + 1))
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)  # ranked by score
        got = {(h["path"], h["page"]): h["score"] for h in hits}
        np.testing.assert_allclose([got[lab] for lab in labels], expected, atol=atol)
        # Ranking: a page colpali scores clearly higher (by more than float16 can move two scores)
        # is ranked before the other; near-ties may come in either order.
        rank = {(h["path"], h["page"]): h["rank"] for h in hits}
        for i, j in np.argwhere(expected[:, None] - expected[None, :] > 2 * atol):
            assert rank[labels[i]] < rank[labels[j]], (query, labels[i], labels[j])
            ordered_pairs += 1
    n_pairs = len(QUERIES) * len(pages) * (len(pages) - 1) // 2
    assert ordered_pairs >= n_pairs // 2  # the pages really differ: the ranking check has teeth


def test_search_prints_rank_document_page_score(indexed, tiny_embedder):
    db, _ = indexed
    r = ragvl("search", "chart", "-k", 2, "--db", db, "--embedder", tiny_embedder)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and "page" in lines[0] and ".pdf" in lines[0]
    assert (db / "cache").is_dir()  # the matrix was cached for the next search


def test_k_larger_than_the_index(indexed, tiny_embedder):
    db, _ = indexed
    r = ragvl("search", "chart", "-k", 100, "--db", db, "--embedder", tiny_embedder, "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 9
    assert "more than the 9 pages" in r.stderr


def test_no_index_and_empty_index(tmp_path, tiny_embedder):
    r = ragvl("search", "x", "--db", tmp_path / "none", "--embedder", tiny_embedder)
    assert r.returncode != 0 and "ragvl index" in r.stderr.strip().splitlines()[-1]
    empty = tmp_path / "empty_docs"
    empty.mkdir()
    assert ragvl("index", empty, "--db", tmp_path / "db", "--embedder", tiny_embedder).returncode == 0
    r = ragvl("search", "x", "--db", tmp_path / "db", "--embedder", tiny_embedder)
    assert r.returncode != 0 and "empty" in r.stderr and "ragvl index" in r.stderr


def test_search_with_another_embedder_is_refused(indexed, tmp_path, make_np_ckpt):
    from ragvl.models.converter.convert import convert

    other = convert(make_np_ckpt(variant="b", kind="colqwen2"), tmp_path / "m", log=lambda m: None)
    db, _ = indexed
    r = ragvl("search", "x", "--db", db, "--embedder", other)
    assert r.returncode != 0 and "built with embedder" in r.stderr
