"""The search cache and search modes on real LanceDB folders, without a model: documents are
stored with random unit vectors (and a text layer) straight through PageStore, and searched
with random query matrices. Scores are checked against the reference MaxSim of each page alone."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest

from ragvl.retrieval import cache as cache_mod
from ragvl.retrieval.cache import cache_root, open_view
from ragvl.retrieval.cache_cleanup import cleanup
from ragvl.indexing.maintain import maintain
from ragvl.retrieval.maxsim import maxsim_scores
from ragvl.retrieval.page_search import PageSearch
from ragvl.store.page_store import PageRow, PageStore

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

D = 128
WORDS = ["revenue", "region", "chart", "thermostat", "incident", "runbook", "sakura", "market", "growth",
         "europe", "visitors", "quarter", "summary", "brief", "latency", "pager"]


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_doc(seed: int, n_pages: int, *, lens=(3, 40), text=True):
    """A fake document: (sha256, [PageRow]) with random vectors and a few words per page."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pages):
        words = " ".join(rng.choice(WORDS, size=6)) if text else None
        rows.append(PageRow(i + 1, 10, 10, b"", _unit(rng.standard_normal((int(rng.integers(*lens)), D))),
                            text=words))
    return hashlib.sha256(f"doc-{seed}-{n_pages}".encode()).hexdigest(), rows


def new_store(path, docs):
    store = PageStore(path, create=True)
    store.write_meta(embedder="fake-embedder")
    for name, (sha, rows) in docs.items():
        store.put_document(name, sha, rows, "fake-embedder")
    return store


def put(store, name, doc):
    store.put_document(name, doc[0], doc[1], "fake-embedder")


def reference(store):
    """{(path, page): vectors} of the current version, read straight from the table."""
    from ragvl.store.page_store import vectors_from_column

    t = store.scan(["doc_path", "page", "vectors"])
    flat, offs = vectors_from_column(t["vectors"])
    return {(p, n): flat[offs[i]:offs[i + 1]] for i, (p, n) in
            enumerate(zip(t["doc_path"].to_pylist(), t["page"].to_pylist()))}


def all_scores(search: PageSearch, q):
    hits = search.search(q, len(search))
    return {(h.path, h.page): h.score for h in hits}


@pytest.fixture
def docs():
    return {f"d{i}.pdf": make_doc(i, 4 + i % 3) for i in range(6)}


def test_scores_are_exact_and_independent_of_the_rest_of_the_index(tmp_path, docs):
    """The same page's score before and after adding, removing and compacting other documents."""
    store = new_store(tmp_path / "db", docs)
    q = _unit(np.random.default_rng(99).standard_normal((20, D)))
    s0 = all_scores(PageSearch(store), q)
    ref = reference(store)
    assert set(s0) == set(ref)
    for key, vec in ref.items():        # exact: the reference MaxSim of the page alone (fp16 storage)
        assert s0[key] == pytest.approx(float(maxsim_scores(q, [vec])[0]), abs=1e-4)
    put(store, "new.pdf", make_doc(50, 7, lens=(1, 3)))  # short pages: no effect on others
    store.remove_documents(["d1.pdf"])
    store.table.optimize()
    s1 = all_scores(PageSearch(store), q)
    for key, s in s1.items():
        if key in s0:
            assert s == s0[key]                                   # bit-identical
    assert ("d1.pdf", 1) not in s1 and ("new.pdf", 7) in s1


def test_incremental_view_reads_only_new_pages_and_equals_a_full_rebuild(tmp_path, docs):
    store = new_store(tmp_path / "db", docs)
    v0 = open_view(store)
    assert not v0.built["loaded"] and v0.built["new_pages"] == sum(len(r) for _, r in docs.values())
    assert open_view(store).built["loaded"]                       # the same version: loaded, not built
    put(store, "added.pdf", make_doc(77, 3))
    store.remove_documents(["d0.pdf"])
    v1 = open_view(store)
    assert v1.built["new_pages"] == 3 and len(v1.segments) == 2   # base + one delta, d0 tombstoned
    assert int(v1.live.sum()) == v1.n_rows == store.count()
    fresh = PageSearch(store, cache_root=tmp_path / "other-cache")  # a full rebuild elsewhere
    inc = PageSearch(store)
    for seed in range(3):
        q = _unit(np.random.default_rng(seed).standard_normal((16, D)))
        assert [(h.path, h.page, h.score) for h in inc.search(q, 8)] == \
               [(h.path, h.page, h.score) for h in fresh.search(q, 8)]
    # Enough churn merges the deltas into one base segment, same results.
    for i in range(5):
        put(store, f"more{i}.pdf", make_doc(200 + i, 3))
    v2 = open_view(store)
    assert v2.built.get("merged") and len(v2.segments) == 1 and v2.live.all()
    q = _unit(np.random.default_rng(7).standard_normal((16, D)))
    ref = reference(store)
    got = all_scores(PageSearch(store), q)
    assert set(got) == set(ref)
    for key, vec in ref.items():
        assert got[key] == pytest.approx(float(maxsim_scores(q, [vec])[0]), abs=1e-4)


def test_cache_is_keyed_by_table_identity_not_just_version(tmp_path):
    """A table deleted and recreated restarts its versions: the old cache must not be reused."""
    import shutil

    db = tmp_path / "db"
    store = new_store(db, {"a.pdf": make_doc(1, 3)})
    v = store.version
    PageSearch(store)
    shutil.rmtree(db / "pages.lance")
    store2 = new_store(db, {"b.pdf": make_doc(2, 3)})
    assert store2.version == v and store2.table_id != store.table_id
    hits = PageSearch(store2).search(_unit(np.ones((4, D))), 10)
    assert {h.path for h in hits} == {"b.pdf"}


def test_view_is_pinned_to_its_version(tmp_path, docs):
    store = new_store(tmp_path / "db", docs)
    v = store.version
    put(store, "later.pdf", make_doc(300, 2))
    view = open_view(store, version=v)
    assert view.version == v and "later.pdf" not in set(view.doc_path.tolist())
    assert view.n_rows == sum(len(r) for _, r in docs.values())


def test_torn_and_stale_files_are_ignored_then_cleaned_by_age(tmp_path, docs):
    store = new_store(tmp_path / "db", docs)
    root = cache_root(store)
    assert root == tmp_path / "db" / "cache" / "search"
    (root / ".tmp-deadbeef").mkdir(parents=True)                  # a build killed midway
    (root / "views").mkdir(exist_ok=True)
    first = open_view(store)
    torn = cache_mod._view_path(root, cache_mod._id_key(store, "fake-embedder"), store.version)
    torn.write_bytes(torn.read_bytes()[:100])                     # a torn view (never made by ragvl)
    again = open_view(store)                                      # rebuilt, not read torn
    assert not again.built["loaded"] and again.n_rows == first.n_rows
    put(store, "x.pdf", make_doc(400, 2))
    open_view(store)
    segs = sorted(p.name for p in root.iterdir() if p.name.startswith("seg-"))
    assert len(segs) >= 2
    cleanup(root)                                                 # everything is young: nothing goes
    assert (root / ".tmp-deadbeef").exists() and sorted(p.name for p in root.iterdir()
                                                        if p.name.startswith("seg-")) == segs
    old = time.time() - 2 * cache_mod.GRACE_S
    for p in list(root.iterdir()) + list((root / "views").iterdir()):
        os.utime(p, (old, old))
    cleanup(root)
    assert not (root / ".tmp-deadbeef").exists()
    assert len(list((root / "views").iterdir())) == 1             # the newest view stays
    newest = open_view(store)
    assert newest.built["loaded"]                                 # and its segments with it
    referenced = {s.id for s in newest.segments}
    assert {p.name[4:] for p in root.iterdir() if p.name.startswith("seg-")} == referenced


def test_read_only_index_caches_under_the_user_cache_home(tmp_path, docs, monkeypatch):
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to make a read-only bind mount")
    db = tmp_path / "db"
    new_store(db, docs)
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(db), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        store = PageStore(ro)
        root = cache_root(store)
        assert root.is_relative_to(tmp_path / "xdg" / "ragvl" / "search")
        hits = PageSearch(store).search(_unit(np.ones((4, D))), 3)
        assert len(hits) == 3 and any(p.name.startswith("seg-") for p in root.iterdir())
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_filters_apply_before_ranking_and_return_min_k_allowed(tmp_path, docs):
    store = new_store(tmp_path / "db", docs)
    s = PageSearch(store)
    rows = s.rows()
    allowed = np.array([p == "d3.pdf" for p in rows["doc_path"].to_pylist()])
    q = _unit(np.random.default_rng(5).standard_normal((16, D)))
    hits = s.search(q, 10, allowed=allowed)
    assert len(hits) == int(allowed.sum()) and {h.path for h in hits} == {"d3.pdf"}
    full = all_scores(s, q)
    assert [h.score for h in hits] == sorted((full[("d3.pdf", h.page)] for h in hits), reverse=True)
    assert s.search(q, 2, allowed=allowed)[1].score == hits[1].score
    assert s.search(q, 5, allowed=np.zeros(len(rows), bool)) == []
    with pytest.raises(ValueError):
        s.search(q, 5, allowed=np.ones(3, bool))


def test_first_stage_is_extended_for_new_pages_and_filters_stay_exact(tmp_path):
    """A big index (>= EXACT_BELOW pages) gets the centroid stage; a small delta is assigned to
    its centroids (no retraining); a small filtered subset is scored exactly."""
    big = {f"b{i}.pdf": make_doc(1000 + i, 50, lens=(8, 16)) for i in range(42)}   # 2100 pages
    store = new_store(tmp_path / "db", big)
    v0 = open_view(store)
    base = v0.segments[0]
    assert base.matrix.stage is not None and base.info["trained_pages"] == 2100
    put(store, "small.pdf", make_doc(5000, 5, lens=(8, 16)))
    v1 = open_view(store)
    assert len(v1.segments) == 2 and not v1.built.get("retrained")
    np.testing.assert_array_equal(v1.segments[1].matrix.stage.centroids, base.matrix.stage.centroids)
    s = PageSearch(store)
    rows = s.rows()
    allowed = np.array([p in ("small.pdf", "b7.pdf") for p in rows["doc_path"].to_pylist()])
    q = _unit(np.random.default_rng(3).standard_normal((16, D)))
    hits = s.search(q, 100, allowed=allowed)
    ref = reference(store)
    exact = sorted(((float(maxsim_scores(q, [ref[k]])[0]), k) for k in ref if k[0] in ("small.pdf", "b7.pdf")),
                   reverse=True)
    assert len(hits) == 55
    np.testing.assert_allclose([h.score for h in hits], [e for e, _ in exact], atol=1e-4)
    # exhaustive: every page scored, equal to the reference top 5 over the whole index
    best = sorted((float(maxsim_scores(q, [v])[0]) for v in ref.values()), reverse=True)[:5]
    np.testing.assert_allclose([sc for _, sc in s.visual(q, 5, exhaustive=True)], best, atol=1e-4)


def test_text_and_hybrid_modes(tmp_path):
    docs = {"a.pdf": make_doc(1, 3), "scan.pdf": make_doc(2, 2, text=False)}
    _, rows = docs["a.pdf"]
    rows[1].text = "Quarterly revenue by region: Europe led with USD 21.7 million"
    store = new_store(tmp_path / "db", docs)
    maintain(store)
    s = PageSearch(store)
    hits = s.search(None, 3, mode="text", text="revenue Europe")
    assert hits[0].path == "a.pdf" and hits[0].page == 2 and hits[0].mode == "text" and hits[0].text_rank == 1
    assert all(h.path != "scan.pdf" for h in s.search(None, 10, mode="text", text="revenue region chart"))
    q = _unit(np.random.default_rng(1).standard_normal((8, D)))
    hy = s.search(q, 5, mode="hybrid", text="revenue Europe")
    assert len(hy) == 5 and all(h.mode == "hybrid" for h in hy)
    top = next(h for h in hy if (h.path, h.page) == ("a.pdf", 2))
    assert top.text_rank == 1 and top.visual_rank is not None
    assert any(h.path == "scan.pdf" and h.text_rank is None and h.visual_rank for h in hy)
    vis = {(h.path, h.page): h.rank for h in s.search(q, 5)}
    for h in hy:                                                  # fused score = RRF of the two ranks
        expected = sum(1 / (60 + r) for r in (h.visual_rank, h.text_rank) if r is not None)
        assert h.score == pytest.approx(expected)
        assert h.visual_rank == vis[(h.path, h.page)]


def test_maintain_compacts_and_bounds_the_folder(tmp_path):
    store = new_store(tmp_path / "db", {"a.pdf": make_doc(1, 4)})
    maintain(store, grace_s=0)
    size1 = _du(tmp_path / "db")
    for i in range(10):                                           # a changed document, ten times
        put(store, "a.pdf", make_doc(100 + i, 4))
        PageSearch(store)
        maintain(store, grace_s=0, cache_grace_s=0)
    assert _du(tmp_path / "db") <= 1.2 * size1 + 64 * 1024
    assert store.count() == 4


def _du(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_concurrent_builders_and_readers(tmp_path, docs):
    """Processes building the same cache at once all succeed and agree (unique temp names,
    whole-folder renames); none deletes what the others use."""
    import json
    import subprocess
    import sys

    store = new_store(tmp_path / "db", docs)
    code = ("import json, sys, numpy as np; from ragvl.store.page_store import PageStore; "
            "from ragvl.retrieval.page_search import PageSearch; s = PageSearch(PageStore(sys.argv[1])); "
            "q = np.ones((4, 128), np.float32) / np.sqrt(128); "
            "print(json.dumps([[h.path, h.page, h.score] for h in s.search(q, 5)]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({o for o in outs}) == 1 and len(json.loads(outs[0])) == 5
    root = cache_root(store)
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
