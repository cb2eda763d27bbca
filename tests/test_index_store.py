"""Index format 2 on real LanceDB folders, real PDFs and the tiny converted ColQwen2:
generations and batches, resumable runs, paths that survive a move, size+mtime skipping,
skipped pages, filters, ls/rm/status, and the migration of a format-1 index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ragvl.api import Index
from ragvl.errors import RagvlError
from ragvl.indexing import plan as indexer
from ragvl.indexing.run import index_paths
from ragvl.store.lock import writer_lock
from ragvl.retrieval.page_search import PageSearch
from ragvl.store.page_store import PageStore, vectors_from_column
from ragvl.models.runtime.colqwen2 import ColQwen2
from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop



class Counting:
    """The real embedder, counting pages; `stop_after` raises KeyboardInterrupt like a Ctrl-C."""

    def __init__(self, model: ColQwen2, stop_after: int | None = None):
        self.model, self.id, self.folder, self.max_pixels = model, model.id, model.folder, model.max_pixels
        self.calls, self.stop_after = 0, stop_after

    def embed_images(self, images):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += len(images)
        return self.model.embed_images(images)

    def embed_queries(self, queries):
        return self.model.embed_queries(queries)


@pytest.fixture(scope="module")
def model(tiny_embedder):
    return ColQwen2(tiny_embedder)


def rows(db: Path, pending: bool = False) -> dict:
    """{(absolute path, page): (sha, vectors bytes)} of the searchable pages (or of pending generations)."""
    store = PageStore(db)
    gens = ", ".join(f"'{g}'" for g in store.pending_generations()) or "''"
    where = f"page > 0 AND generation IN ({gens})" if pending else "searchable"
    t = store.scan(["doc_path", "page", "doc_sha256", "vectors"], where=where)
    flat, offsets = vectors_from_column(t["vectors"])
    return {(str(store.resolve(p)), n): (sha, flat[offsets[i]:offsets[i + 1]].tobytes())
            for i, (p, n, sha) in enumerate(zip(t["doc_path"].to_pylist(), t["page"].to_pylist(),
                                                t["doc_sha256"].to_pylist()))}


def ragvl(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


def test_new_version_is_written_in_batches_and_switched_in_one_commit(tmp_path, model):
    doc, db = tmp_path / "docs" / "big.pdf", tmp_path / ".ragvl"
    make_pdf(doc, 5, seed=1)
    index_paths([doc], PageStore(db, create=True), Counting(model), progress=False, batch_pages=2)
    old = rows(db)
    old_sha = {v[0] for v in old.values()}

    make_pdf(doc, 6, seed=2)  # a new version: killed after 3 of its 6 pages were embedded
    emb = Counting(model, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        index_paths([doc], PageStore(db), emb, progress=False, batch_pages=2)
    assert rows(db) == old  # searches still see exactly the old version
    pending = rows(db, pending=True)
    assert sorted(n for _, n in pending) == [1, 2]  # the committed batch; page 3 was in the lost one
    assert {v[0] for v in pending.values()}.isdisjoint(old_sha)
    status = Index(db).status()
    assert status["incomplete"] == [str(doc)] and status["pages"] == 5

    emb = Counting(model)
    s = index_paths([doc], PageStore(db), emb, progress=False, batch_pages=2)
    assert emb.calls == 4 and s.changed == [str(doc)]  # resumed after the 2 committed pages
    now = rows(db)
    assert sorted(n for _, n in now) == [1, 2, 3, 4, 5, 6] and not rows(db, pending=True)
    assert PageStore(db).pending_generations() == set() and PageStore(db).count(where=None) == 6
    clean = tmp_path / "clean"
    index_paths([doc], PageStore(clean, create=True), Counting(model), progress=False)
    assert rows(clean) == now  # a resumed run ends where a clean run does
    assert Index(db).status()["incomplete"] == []


def test_paths_are_relative_and_survive_moving_the_project(tmp_path, model):
    proj = tmp_path / "proj"
    a = make_pdf(proj / "docs" / "a.pdf", 2, seed=1)
    outside = make_pdf(tmp_path / "elsewhere" / "b.pdf", 1, seed=2)
    index_paths([proj / "docs", outside], PageStore(proj / ".ragvl", create=True), Counting(model), progress=False)
    stored = set(PageStore(proj / ".ragvl").documents())
    assert stored == {"docs/a.pdf", str(outside)}
    hits = Index(proj / ".ragvl", embedder=model.folder).search("revenue", k=3)

    moved = tmp_path / "moved"
    shutil.move(proj, moved)
    emb = Counting(model)
    s = index_paths([moved / "docs", outside], PageStore(moved / ".ragvl"), emb, progress=False)
    assert emb.calls == 0 and len(s.unchanged) == 2 and not s.removed  # no re-embedding after the move
    again = Index(moved / ".ragvl", embedder=model.folder).search("revenue", k=3)
    assert [(h.path.replace(str(moved), str(proj)), h.page, h.score) for h in again] == \
        [(h.path, h.page, h.score) for h in hits]
    assert all(Path(h.path).exists() for h in again)
    assert a.name in {Path(h.path).name for h in again}


def test_unchanged_files_are_not_hashed_and_touched_files_are(tmp_path, model, monkeypatch):
    docs, db = tmp_path / "docs", tmp_path / "db"
    a = make_pdf(docs / "a.pdf", 1, seed=1)
    make_pdf(docs / "b.pdf", 1, seed=2)
    index_paths([docs], PageStore(db, create=True), Counting(model), progress=False)
    hashed = []
    real = indexer.sha256_file
    monkeypatch.setattr(indexer, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    s = index_paths([docs], PageStore(db), Counting(model), progress=False)
    assert hashed == [] and len(s.unchanged) == 2
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))  # same bytes, new mtime
    emb = Counting(model)
    s = index_paths([docs], PageStore(db), emb, progress=False)
    assert hashed == ["a.pdf"] and emb.calls == 0 and len(s.unchanged) == 2
    hashed.clear()
    index_paths([docs], PageStore(db), emb, progress=False)
    assert hashed == []  # the new mtime was recorded


def test_a_bad_page_is_skipped_named_and_the_rest_indexed(tmp_path, model):
    doc, db = make_pdf(tmp_path / "d.pdf", 3, seed=1, broken_pages=(2,)), tmp_path / "db"
    s = index_paths([doc], PageStore(db, create=True), Counting(model), progress=False)
    assert s.new == [str(doc)] and s.pages == 2 and not s.ok
    assert [(p, n) for p, n, _ in s.skipped_pages] == [(str(doc), 2)]
    assert "content stream is not a stream" in s.skipped_pages[0][2]
    assert sorted(n for _, n in rows(db)) == [1, 3]
    st = Index(db).status()
    assert [(x["path"], x["page"]) for x in st["skipped_pages"]] == [(str(doc), 2)]
    emb = Counting(model)
    assert len(index_paths([doc], PageStore(db), emb, progress=False).unchanged) == 1 and emb.calls == 0


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_embedder):
    """A small project with metadata, indexed through the command line."""
    root = tmp_path_factory.mktemp("lib")
    docs = root / "docs"
    make_pdf(docs / "2023" / "q1.pdf", 2, seed=1, metadata={"title": "Q1 results", "author": "Alice Smith",
                                                              "creationDate": "D:20230110120000Z"})
    make_pdf(docs / "2024" / "q2.pdf", 2, seed=2, metadata={"title": "Q2 results", "author": "Bob",
                                                              "subject": "sales", "creationDate": "D:20240405"})
    make_pdf(docs / "2024" / "notes.pdf", 1, seed=3)
    r = ragvl("index", docs, "--db", root / ".ragvl", "--embedder", tiny_embedder, "-q")
    assert r.returncode == 0, r.stderr
    return root


def test_filters_apply_before_ranking(library, tiny_embedder):
    idx = Index(library / ".ragvl", embedder=tiny_embedder)
    everything = idx.search("revenue", k=10)
    assert len(everything) == 5
    score = {(h.path, h.page): h.score for h in everything}
    cases = {
        "in": dict(in_paths=[library / "docs" / "2024"]),
        "in file": dict(in_paths=[library / "docs" / "2023" / "q1.pdf"]),
        "glob": dict(globs="*q?.pdf"),
        "author": dict(where="author~smith"),
        "created": dict(where=["created>=2024", "subject=SALES"]),
    }
    expect = {"in": {"q2.pdf", "notes.pdf"}, "in file": {"q1.pdf"}, "glob": {"q1.pdf", "q2.pdf"},
              "author": {"q1.pdf"}, "created": {"q2.pdf"}}
    for name, kw in cases.items():
        hits = idx.search("revenue", k=10, **kw)
        assert {Path(h.path).name for h in hits} == expect[name], name
        assert all(h.score == score[(h.path, h.page)] for h in hits)  # exact, same as unfiltered
        assert len(hits) == sum(1 for p, _ in score if Path(p).name in expect[name])  # min(k, allowed)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    one = idx.search("revenue", k=1, where="author=bob")
    assert len(one) == 1 and Path(one[0].path).name == "q2.pdf"
    assert idx.search("revenue", k=3, where="title=nothing like this") == []
    with pytest.raises(RagvlError, match="unknown field 'colour'"):
        idx.search("revenue", where="colour=red")
    r = ragvl("search", "revenue", "--db", library / ".ragvl", "--in", library / "docs" / "2023", "--json")
    assert r.returncode == 0, r.stderr  # the index remembers its embedder: no --embedder needed
    assert {Path(h["path"]).name for h in json.loads(r.stdout)} == {"q1.pdf"}
    store = PageStore(library / ".ragvl")
    from ragvl.retrieval.filters import Filters, filter_sql

    sql = filter_sql(store, Filters.of(where="author=bob"))
    assert {p for p in store.scan(["doc_path"], where=sql)["doc_path"].to_pylist()} == {"docs/2024/q2.pdf"}


def test_ls_rm_status(tmp_path, library):
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    db = lib / ".ragvl"
    r = ragvl("ls", "--db", db, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["total_documents"], out["total_pages"]) == (3, 5)
    q1 = next(d for d in out["documents"] if d["path"].endswith("q1.pdf"))
    assert q1["pages"] == 2 and q1["title"] == "Q1 results" and q1["created"] == "2023-01-10T12:00:00+00:00"
    assert q1["path"] == str(lib / "docs" / "2023" / "q1.pdf") and q1["indexed_at"]
    r = ragvl("ls", "--db", db)
    assert r.stdout.strip().splitlines()[-1] == "3 documents, 5 pages"

    version = PageStore(db).version
    r = ragvl("rm", lib / "docs" / "2023" / "q1.pdf", lib / "docs" / "nope.pdf", "--db", db)
    assert r.returncode == 1 and "nope.pdf: not in the index" in r.stderr.strip().splitlines()[-1]
    assert PageStore(db).version == version  # nothing removed
    r = ragvl("rm", lib / "docs" / "2024", "--db", db)  # a folder: everything under it, one commit
    assert r.returncode == 0, r.stderr
    assert PageStore(db).version == version + 1
    assert set(PageStore(db).documents()) == {"docs/2023/q1.pdf"}

    (lib / "docs" / "2023" / "q1.pdf").unlink()
    r = ragvl("status", "--db", db, "--json")
    s = json.loads(r.stdout)
    assert s["missing"] == [str(lib / "docs" / "2023" / "q1.pdf")] and s["documents"] == 1 and s["pages"] == 2
    assert s["embedder"]["found"] and s["size_bytes"] > 0 and not s["needs_reembed"] and s["dpi"] == 120
    r = ragvl("status", "--db", db)
    assert "missing: " in r.stdout and "--prune" in r.stdout
    r = ragvl("index", "--prune", "--db", db, "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(ragvl("status", "--db", db, "--json").stdout)["documents"] == 0


def test_recorded_embedder_moved_gone_and_other(tmp_path, tiny_embedder):
    doc = make_pdf(tmp_path / "d.pdf", 1, seed=1)
    emb = tmp_path / "models" / "emb"
    shutil.copytree(tiny_embedder, emb)
    db, home = tmp_path / "db", tmp_path / "home"
    env = {"RAGVL_HOME": str(home), "RAGVL_EMBEDDER": "", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert ragvl("index", doc, "--db", db, "--embedder", emb, "-q", env=env).returncode == 0
    r = ragvl("search", "revenue", "--db", db, "--json", env=env)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)

    (home / "models").mkdir(parents=True)
    shutil.move(emb, home / "models" / "renamed")  # moved: found in the model home by its id
    r = ragvl("search", "revenue", "--db", db, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == first and "renamed" in r.stderr

    shutil.rmtree(home / "models" / "renamed")  # gone: one line with the id, the folder and the fix
    r = ragvl("search", "revenue", "--db", db, env=env)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert PageStore(db).embedder in last and str(emb) in last and "--embedder DIR" in last \
        and "ragvl models pull" in last

    other = tmp_path / "other"
    shutil.copytree(tiny_embedder, other)
    m = json.loads((other / "ragvl.json").read_text())
    m["dtype"] = "fp32x"  # another id for the same weights
    (other / "ragvl.json").write_text(json.dumps(m))
    r = ragvl("search", "revenue", "--db", db, "--embedder", other, env=env)
    assert r.returncode == 1 and "built with embedder" in r.stderr


def test_recorded_dpi_is_the_default_and_another_rerenders(tmp_path, model):
    doc, db = make_pdf(tmp_path / "d.pdf", 1, seed=1), tmp_path / "db"
    index_paths([doc], PageStore(db, create=True), Counting(model), dpi=60, progress=False)
    w60 = PageStore(db).scan(["width"])["width"][0].as_py()
    emb = Counting(model)
    assert len(index_paths([doc], PageStore(db), emb, progress=False).unchanged) == 1 and emb.calls == 0
    notes = []
    s = index_paths([doc], PageStore(db), emb, dpi=90, progress=False, log=notes.append)
    assert s.changed == [str(doc)] and emb.calls == 1
    assert any("re-rendered at 90 dpi" in n for n in notes)
    store = PageStore(db)
    assert store.dpi == 90 and store.scan(["width"])["width"][0].as_py() == w60 * 90 // 60


def test_format1_index_is_migrated_in_place_without_reembedding(tmp_path, model):
    from format1_index import build_format1_index

    proj = tmp_path / "proj"
    make_pdf(proj / "docs" / "a.pdf", 2, seed=1)
    make_pdf(proj / "docs" / "b.pdf", 1, seed=2)
    old_db = proj / ".ragvl"
    build_format1_index(old_db, [proj / "docs"], model)
    assert (old_db / "ragvl-index.json").exists()
    import lancedb

    v1 = lancedb.connect(str(old_db)).open_table("pages").to_arrow()
    v1_vectors = {(p, n): v for p, n, v in zip(v1["doc_path"].to_pylist(), v1["page"].to_pylist(),
                                              v1["vectors"].to_pylist())}

    store = PageStore(old_db)  # opening migrates
    assert not (old_db / "ragvl-index.json").exists() and store.meta["format_version"] == 2
    assert store.embedder == model.id and store.dpi == 120
    assert set(store.documents()) == {"docs/a.pdf", "docs/b.pdf"}
    t = store.scan(["key", "page_id", "doc_path", "page", "vectors", "n_pages", "generation", "doc_sha256"]).to_pylist()
    from ragvl.store.schema import generation

    for r in t:
        assert r["generation"] == generation(r["doc_sha256"], 120, model.id)  # what a fresh index writes
        assert r["vectors"] == v1_vectors[(str(proj / r["doc_path"]), r["page"])]
        assert r["page_id"] == f"{PageStore(old_db).documents()[r['doc_path']].sha256[:16]}-{r['page']}"
        assert r["key"].startswith(r["doc_path"] + "#")
    assert {(r["doc_path"], r["n_pages"]) for r in t} == {("docs/a.pdf", 2), ("docs/b.pdf", 1)}

    new_db = tmp_path / "new"
    index_paths([proj / "docs"], PageStore(new_db, create=True), Counting(model), progress=False)
    q = model.embed_queries(["revenue"])[0]
    migrated = [(Path(h.path).name, h.page, h.score) for h in PageSearch(PageStore(old_db)).search(q, 3)]
    fresh = [(Path(h.path).name, h.page, h.score) for h in PageSearch(PageStore(new_db)).search(q, 3)]
    assert migrated == fresh
    emb = Counting(model)
    s = index_paths([proj / "docs"], PageStore(old_db), emb, progress=False)
    assert emb.calls == 0 and len(s.unchanged) == 2


def test_converter_change_needs_reembed(tmp_path, tiny_embedder):
    emb = tmp_path / "emb"
    shutil.copytree(tiny_embedder, emb)
    doc, db = make_pdf(tmp_path / "d.pdf", 2, seed=1), tmp_path / "db"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert ragvl("index", doc, "--db", db, "--embedder", emb, "-q", env=env).returncode == 0
    old_id = PageStore(db).embedder
    m = json.loads((emb / "ragvl.json").read_text())
    m["dtype"] = "fp32-v2"  # what a converter change does: the folder's model gets another id
    (emb / "ragvl.json").write_text(json.dumps(m))
    s = json.loads(ragvl("status", "--db", db, "--json", env=env).stdout)
    assert s["needs_reembed"] and "now makes" in s["reembed_reasons"][0]
    r = ragvl("search", "revenue", "--db", db, env=env)
    assert r.returncode == 1 and "--reembed" in r.stderr
    r = ragvl("index", "--reembed", "--db", db, "--json", "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pages"] == 2
    store = PageStore(db)
    assert store.embedder != old_id and set(store.scan(["embedder"])["embedder"].to_pylist()) == {store.embedder}
    assert not json.loads(ragvl("status", "--db", db, "--json", env=env).stdout)["needs_reembed"]
    assert ragvl("search", "revenue", "--db", db, env=env).returncode == 0


def test_lock_is_released_when_its_holder_dies(tmp_path):
    db = tmp_path / "db"
    code = ("import sys, time; from ragvl.store.lock import writer_lock\n"
            "with writer_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(RagvlError, match=rf"another writer holds the index \(pid {p.pid} on "):
        with writer_lock(db, wait=False):
            pass
    p.kill()
    p.wait()
    with writer_lock(db, wait=False):  # the kernel dropped the dead holder's lock
        pass
