"""The search snapshot (ragvl.retrieval.snapshot): a visual search answered without LanceDB, exactly
as the full path answers it, and never once the index changed. Real LanceDB folders; the
model-free tests store random vectors straight through PageStore (as test_search_cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ragvl.retrieval.cache import local_cache_root
from ragvl.retrieval.page_search import PageSearch
from ragvl.retrieval.snapshot import FILE, fingerprint, newest_version, read_snapshot, record_snapshot

from test_search_cache import D, _unit, make_doc, new_store, put
from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

Q = _unit(np.random.default_rng(7).standard_normal((5, D)))


def recorded(db):
    """Open the store, build its search, record the snapshot: what Index.searcher() does."""
    from ragvl.store.page_store import PageStore

    before = fingerprint(db)
    store = PageStore(db).pin()
    search = PageSearch(store)
    assert record_snapshot(store, search.view, before)
    return store, search


def snapshot_hits(db, k=100):
    snap = read_snapshot(db)
    assert snap is not None
    return [(h.path, h.page, h.score) for h in PageSearch(snap, view=snap.view).search(Q, k)]


def test_snapshot_ranks_exactly_as_the_full_path(tmp_path):
    db = tmp_path / "db"
    new_store(db, {f"d{i}.pdf": make_doc(i, 3 + i % 2) for i in range(5)})
    store, full = recorded(db)
    snap = read_snapshot(db)
    assert snap.version == store.version == newest_version(db)
    assert snap.meta == store.meta and snap.embedder == "fake-embedder" and snap.root == db.resolve().parent
    assert snapshot_hits(db) == [(h.path, h.page, h.score) for h in full.search(Q, 100)]


def test_any_write_makes_the_snapshot_unused(tmp_path):
    db = tmp_path / "db"
    store = new_store(db, {"a.pdf": make_doc(1, 3)})
    recorded(db)
    put(store, "b.pdf", make_doc(2, 2))                          # a page write
    assert read_snapshot(db) is None
    recorded(db)
    assert {p for p, _, _ in snapshot_hits(db)} == {"a.pdf", "b.pdf"}
    store.write_meta(dpi=99)                                     # a metadata write
    assert read_snapshot(db) is None
    recorded(db)
    store.remove_documents(["a.pdf"])
    assert read_snapshot(db) is None
    recorded(db)
    assert {p for p, _, _ in snapshot_hits(db)} == {"b.pdf"}


def test_a_recreated_index_with_the_same_versions_is_not_mistaken(tmp_path):
    db = tmp_path / "db"
    new_store(db, {"a.pdf": make_doc(1, 3)})
    recorded(db)
    versions = newest_version(db)
    shutil.rmtree(db / "pages.lance")
    shutil.rmtree(db / "meta.lance")
    new_store(db, {"b.pdf": make_doc(2, 3)})
    assert newest_version(db) == versions                       # same numbers, new files
    assert read_snapshot(db) is None


def test_not_recorded_when_a_commit_lands_while_building(tmp_path):
    from ragvl.store.page_store import PageStore

    db = tmp_path / "db"
    store = new_store(db, {"a.pdf": make_doc(1, 3)})
    before = fingerprint(db)
    reader = PageStore(db).pin()
    put(store, "b.pdf", make_doc(2, 2))                          # lands after the reader opened
    search = PageSearch(reader)
    assert not record_snapshot(reader, search.view, before)
    assert not (local_cache_root(db) / FILE).exists() and read_snapshot(db) is None


def test_damaged_or_foreign_snapshots_are_unused(tmp_path):
    db = tmp_path / "db"
    new_store(db, {"a.pdf": make_doc(1, 3)})
    _, search = recorded(db)
    path = local_cache_root(db) / FILE
    good = path.read_text()
    for bad in (good[:40], "[]", json.dumps({**json.loads(good), "index_format": 1}),
                json.dumps({**json.loads(good), "view": "views/none.npz"})):
        path.write_text(bad)
        assert read_snapshot(db) is None, bad[:60]
    path.write_text(good)
    assert read_snapshot(db) is not None
    os.unlink(search.view.path)                                  # the view went (cleanup)
    assert read_snapshot(db) is None


# A `ragvl search` process that reports, last on stderr, whether it imported lancedb.
_PROBE = """
import runpy, sys
sys.argv = ["ragvl", "search", *sys.argv[1:], "--json"]
try:
    runpy.run_module("ragvl.cli", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("lancedb" in sys.modules, file=sys.stderr)
"""


def test_cli_search_skips_lancedb_while_the_snapshot_is_exact(tmp_path, tiny_embedder):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, seed=1)
    make_pdf(docs / "b.pdf", 2, seed=2)
    env = {**os.environ, "RAGVL_CACHE": str(tmp_path / "cache")}
    db = tmp_path / "db"

    def index(*paths):
        subprocess.run([sys.executable, "-m", "ragvl.cli", "index", *map(str, paths), "--db", str(db),
                        "--embedder", str(tiny_embedder), "-q"], check=True, env=env, capture_output=True)

    def search(*args) -> tuple[list, bool]:
        r = subprocess.run([sys.executable, "-c", _PROBE, "revenue", "--db", str(db), "-k", "10", *args],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout), r.stderr.strip().splitlines()[-1] == "True"

    index(docs)
    full, used_lancedb = search()
    assert used_lancedb and {h["path"] for h in full} == {str(docs / "a.pdf"), str(docs / "b.pdf")}
    fast, used_lancedb = search()
    assert not used_lancedb and fast == full
    assert search("--mode", "hybrid")[1] and search("--in", str(docs / "a.pdf"))[1]  # these read the table

    make_pdf(docs / "c.pdf", 2, seed=3)
    index(docs)                                                  # the index changed
    after, used_lancedb = search()
    assert used_lancedb and str(docs / "c.pdf") in {h["path"] for h in after}
    again, used_lancedb = search()
    assert not used_lancedb and again == after
