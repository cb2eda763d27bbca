"""`ragvl index`: a real LanceDB folder, real PDFs and a real (tiny) converted ColQwen2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ragvl.errors import RagvlError
from ragvl.index.indexer import index_paths
from ragvl.index.store import PageStore, vectors_from_column
from ragvl.models.runtime.colqwen2 import ColQwen2
from tiny_pdfs import make_pdf

pytest.importorskip("colpali_engine")


class CountingEmbedder:
    """The real embedder, counting the pages it is asked to embed."""

    def __init__(self, model: ColQwen2):
        self.model, self.id, self.calls = model, model.id, 0

    def embed_images(self, images):
        self.calls += len(images)
        return self.model.embed_images(images)


@pytest.fixture(scope="module")
def embedder(tiny_embedder):
    return ColQwen2(tiny_embedder)


def rows(db: Path) -> dict:
    """{(path, page): (sha, vectors)} of the whole index, for exact comparisons."""
    store = PageStore(db)
    t = store.scan(["doc_path", "page", "doc_sha256", "vectors", "embedder"])
    flat, offsets = vectors_from_column(t["vectors"])
    return {(str(store.resolve(p)), n): (sha, flat[offsets[i]:offsets[i + 1]].tobytes(), e)
            for i, (p, n, sha, e) in enumerate(zip(t["doc_path"].to_pylist(), t["page"].to_pylist(),
                                                   t["doc_sha256"].to_pylist(), t["embedder"].to_pylist()))}


def test_incremental_runs(tmp_path, embedder):
    docs, db = tmp_path / "docs", tmp_path / "db"
    a, b = make_pdf(docs / "a.pdf", 2, seed=1), make_pdf(docs / "sub" / "B.PDF", 3, seed=2)
    emb = CountingEmbedder(embedder)
    store = PageStore(db, create=True)
    s = index_paths([docs], store, emb, progress=False)
    assert (len(s.new), s.pages, emb.calls) == (2, 5, 5)
    first = rows(db)
    assert sorted(first) == sorted([(str(a), 1), (str(a), 2), (str(b), 1), (str(b), 2), (str(b), 3)])
    stored = np.frombuffer(first[(str(a), 1)][1], np.float16).reshape(-1, 128)
    img = PageStore(db).page_image(str(a), 1)
    assert img.startswith(b"\x89PNG")

    # unchanged: skipped by hash, no model work
    s = index_paths([docs], PageStore(db), emb, progress=False)
    assert (len(s.unchanged), s.pages, emb.calls) == (2, 0, 5)
    assert rows(db) == first

    # changed (fewer pages), removed, added
    make_pdf(a, 1, seed=7)
    b.unlink()
    c = make_pdf(docs / "c.pdf", 1, seed=3)
    s = index_paths([docs], PageStore(db), emb, progress=False)
    assert (s.changed, s.removed, s.new) == ([str(a)], [str(b)], [str(c)])
    now = rows(db)
    assert sorted(now) == [(str(a), 1), (str(c), 1)]
    assert now[(str(a), 1)][0] != first[(str(a), 1)][0]
    assert not np.array_equal(np.frombuffer(now[(str(a), 1)][1], np.float16).reshape(-1, 128), stored)


def test_float16_storage_keeps_the_embeddings(tmp_path, embedder):
    doc = make_pdf(tmp_path / "d.pdf", 1, seed=4)
    index_paths([doc], PageStore(tmp_path / "db", create=True), embedder, progress=False)
    from ragvl.pdf import DEFAULT_DPI, open_pdf

    with open_pdf(doc) as d:
        fp32 = embedder.embed_images([d.render_page(0, DEFAULT_DPI)])[0]
    stored = np.frombuffer(rows(tmp_path / "db")[(str(doc), 1)][1], np.float16).reshape(-1, 128)
    np.testing.assert_allclose(stored.astype(np.float32), fp32, atol=1e-3)


def test_other_embedder_is_refused(tmp_path, embedder, tiny_embedder):
    doc = make_pdf(tmp_path / "d.pdf", 1)
    index_paths([doc], PageStore(tmp_path / "db", create=True), embedder, progress=False)
    other = ColQwen2(tiny_embedder, max_pixels=28 * 28 * 16)  # same weights, other resolution: other vectors
    with pytest.raises(RagvlError, match="built with embedder"):
        index_paths([doc], PageStore(tmp_path / "db"), other, progress=False)


def ragvl(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


def test_bad_files_are_named_and_skipped(tmp_path, tiny_embedder):
    import pymupdf

    docs = tmp_path / "docs"
    good = [make_pdf(docs / "good1.pdf", 1, seed=1), make_pdf(docs / "deep" / "good2.pdf", 2, seed=2)]
    enc = pymupdf.open(good[0])
    enc.save(docs / "encrypted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")
    data = good[1].read_bytes()
    (docs / "truncated.pdf").write_bytes(data[: len(data) // 2])
    (docs / "empty.pdf").write_bytes(b"")
    (docs / "notes.pdf").write_text("just some text, not a PDF\n")
    (docs / "folder.pdf").mkdir()  # a folder, however named, is searched, not reported
    (docs / "dangling.pdf").symlink_to(docs / "nowhere.pdf")
    bad = ["encrypted.pdf", "truncated.pdf", "empty.pdf", "notes.pdf", "dangling.pdf"]
    r = ragvl("index", docs, "--db", tmp_path / "db", "--embedder", tiny_embedder, "--json", "-q")
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert sorted(Path(f["path"]).name for f in summary["failed"]) == sorted(bad)
    assert sorted(Path(p).name for p in summary["new"]) == ["good1.pdf", "good2.pdf"]
    for name in bad:
        line = next(ln for ln in r.stderr.splitlines() if name in ln)
        assert line.startswith("skipped: ")
    assert "5 failed" in r.stderr.splitlines()[-1] and "2 new" in r.stderr.splitlines()[-1]
    assert len(rows(tmp_path / "db")) == 3


def test_missing_path_and_missing_embedder(tmp_path, tiny_embedder, monkeypatch):
    r = ragvl("index", tmp_path / "nope", "--db", tmp_path / "db", "--embedder", tiny_embedder)
    assert r.returncode != 0 and "nope" in r.stderr.strip().splitlines()[-1]
    r = ragvl("index", tmp_path, "--db", tmp_path / "db", env={"RAGVL_HOME": str(tmp_path / "home"),
                                                                "RAGVL_EMBEDDER": ""})
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "ragvl models pull" in last and "ragvl models convert" in last
    qwen = tmp_path / "not-an-embedder"
    qwen.mkdir()
    r = ragvl("index", tmp_path, "--db", tmp_path / "db", "--embedder", qwen)
    assert r.returncode != 0 and "not a ragvl model" in r.stderr


def test_killed_run_then_rerun_gives_the_same_rows(tmp_path, tiny_embedder):
    docs = tmp_path / "docs"
    for i in range(8):
        make_pdf(docs / f"doc{i}.pdf", 3, seed=i)
    args = ("index", docs, "--embedder", tiny_embedder, "-q")
    t0 = time.perf_counter()
    assert ragvl(*args, "--db", tmp_path / "clean").returncode == 0
    full = time.perf_counter() - t0
    expected = rows(tmp_path / "clean")
    assert len(expected) == 24

    db = tmp_path / "killed"
    for frac in (0.45, 0.6, 0.75, 0.9):  # kill at several moments, each time resuming the last run
        p = subprocess.Popen([sys.executable, "-m", "ragvl.cli", *map(str, args), "--db", str(db)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * frac)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if db.exists() and (db / "meta.lance").exists():
            got = rows(db)
            assert set(got) <= set(expected)  # never a page that the clean run lacks
            by_doc: dict = {}
            for path, page in got:
                by_doc.setdefault(path, []).append(page)
            assert all(sorted(v) == [1, 2, 3] for v in by_doc.values())  # documents whole or absent
    assert ragvl(*args, "--db", db).returncode == 0
    assert rows(db) == expected
    shutil.rmtree(db)
