"""`ragvl index`: a real LanceDB folder, real PDFs and a real (tiny) converted ColQwen2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragvl.errors import RagvlError
from ragvl.indexing.run import index_paths
from ragvl.store.page_store import PageStore, vectors_from_column
from ragvl.models.runtime.colqwen2 import ColQwen2
from tiny_pdfs import break_page_content, make_image, make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop


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
    from ragvl.ingest import DEFAULT_DPI, open_pdf

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


def killed_at(args, db: Path, pages: int) -> None:
    """Run `ragvl *args --db db` with the indexer's test hook pausing it after `pages` embedded pages
    (before that page's document is committed), and SIGKILL it there."""
    p = subprocess.Popen([sys.executable, "-m", "ragvl.cli", *map(str, args), "--db", str(db)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "RAGVL_TEST_PAUSE_AFTER_PAGES": str(pages)})
    try:
        marker = f"ragvl-test: paused after {pages} pages"
        seen = []
        for line in p.stderr:  # blocks until the hook speaks, or the run ends without it
            seen.append(line)
            if marker in line:
                break
        assert any(marker in ln for ln in seen), f"the run ended before the pause:\n{''.join(seen)}"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL  # the kill, not a normal exit, ended it


def test_killed_run_then_rerun_gives_the_same_rows(tmp_path, tiny_embedder):
    """Killed mid-run, an index holds exactly the documents committed before the kill, whole, and
    a rerun completes it to what one clean run gives."""
    docs = tmp_path / "docs"
    for i in range(5):
        make_pdf(docs / f"doc{i}.pdf", 3, seed=i)  # indexed in name order, 3 pages each
    args = ("index", docs, "--embedder", tiny_embedder, "-q")
    assert ragvl(*args, "--db", tmp_path / "clean").returncode == 0
    expected = rows(tmp_path / "clean")
    assert len(expected) == 15

    def docs_in(got):
        return sorted({Path(path).name for path, _ in got})

    db = tmp_path / "killed"
    # Each run resumes the last one and counts pages from its own start. 4: doc0 committed, doc1
    # one page in. 7: doc1 (again) and doc2 committed, doc3 one page in. 3: all of doc3's pages
    # embedded, killed before its commit.
    for pages, committed in ((4, ["doc0.pdf"]), (7, ["doc0.pdf", "doc1.pdf", "doc2.pdf"]),
                             (3, ["doc0.pdf", "doc1.pdf", "doc2.pdf"])):
        killed_at(args, db, pages)
        got = rows(db)
        assert docs_in(got) == committed  # the kill landed mid-run: some documents in, not all
        assert got == {k: v for k, v in expected.items() if Path(k[0]).name in committed}  # whole, identical
    assert ragvl(*args, "--db", db).returncode == 0
    assert rows(db) == expected
    shutil.rmtree(db)


def test_bad_pages_are_skipped_and_named_images_are_documents(tmp_path, tiny_embedder, embedder):
    """One corrupt page and one hanging page cost those pages only; an image file is a one-page
    document; a poster page is stored downscaled and embedded from exactly the stored image."""
    import io

    import pymupdf
    from PIL import Image

    docs = tmp_path / "docs"
    broken = break_page_content(make_pdf(docs / "broken.pdf", 3, seed=1), [2])
    slow = make_pdf(docs / "slow.pdf", 4, seed=2)  # its page 4 hangs (the test hook below)
    scan = make_image(docs / "scans" / "receipt.png", size=(420, 300))
    poster = pymupdf.open()
    poster.new_page(width=5000, height=2500).insert_text((100, 1000), "Poster", fontsize=400)
    poster.save(docs / "poster.pdf")
    r = ragvl("index", docs, "--db", tmp_path / "db", "--embedder", tiny_embedder, "--json", "-q",
              env={"RAGVL_TEST_RENDER_HANG": "4", "RAGVL_PAGE_TIMEOUT": "5"})
    assert r.returncode == 1, r.stderr  # skipped pages make the run exit 1, so that scripts notice
    summary = json.loads(r.stdout)
    assert summary["failed"] == []
    assert sorted(Path(p).name for p in summary["new"]) == ["broken.pdf", "poster.pdf", "receipt.png", "slow.pdf"]
    skipped = {(Path(s["path"]).name, s["page"]): s["reason"] for s in summary["skipped_pages"]}
    assert list(skipped) == [("broken.pdf", 2), ("slow.pdf", 4)]
    assert "corrupt page" in skipped[("broken.pdf", 2)]
    assert skipped[("slow.pdf", 4)] == "rendering took longer than 5 s"
    assert f"skipped: {broken}: page 2: corrupt page" in r.stderr
    assert f"skipped: {slow}: page 4: rendering took longer than 5 s" in r.stderr
    assert "2 pages skipped" in r.stderr.splitlines()[-1]
    stored = rows(tmp_path / "db")
    assert sorted((Path(p).name, n) for p, n in stored) == [
        ("broken.pdf", 1), ("broken.pdf", 3), ("poster.pdf", 1), ("receipt.png", 1),
        ("slow.pdf", 1), ("slow.pdf", 2), ("slow.pdf", 3)]

    store = PageStore(tmp_path / "db")
    image = Image.open(io.BytesIO(store.page_image(str(scan), 1)))
    assert image.size == (420, 300)  # an image file keeps its own pixel size
    big = Image.open(io.BytesIO(store.page_image(str((docs / "poster.pdf").resolve()), 1))).convert("RGB")
    assert big.size == (1600, 800)
    # what was embedded is exactly the stored image
    want = embedder.embed_images([big])[0]
    got = np.frombuffer(stored[(str((docs / "poster.pdf").resolve()), 1)][1], np.float16).reshape(-1, 128)
    np.testing.assert_allclose(got.astype(np.float32), want, atol=1e-3)
