"""Identical documents: embedded once, listed under every path, found once with the other paths.

Six byte-identical copies of one PDF used to stop `ragvl index` with "damaged index files
(... Ambiguous merge inserts ...)": the vision-features table got several rows per key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ragvl import Index
from ragvl.cli._common import describe_failure
from ragvl.models.runtime import ImageFeatures
from ragvl.store import Producer, VisionCache
from scale_helpers import ragvl
from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_pdfs" / "northwind_fy2024_review.pdf"
N_COPIES = 10


def _copies(folder: Path, n: int) -> list[Path]:
    names = ["report.pdf"] + [f"report ({i}).pdf" for i in range(1, n)]
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(SAMPLE, folder / name)) for name in names]


def _vision_keys(db) -> list[str]:
    return VisionCache(db).table.to_arrow()["key"].to_pylist()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_embedder):
    tmp = tmp_path_factory.mktemp("dups")
    docs, db = tmp / "docs", tmp / "db"
    copies = _copies(docs, N_COPIES)
    make_pdf(docs / "other.pdf", 2, seed=5)
    r = ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "--json", "-q")
    return docs, db, copies, r


def _pages(pdf: Path) -> int:
    import pymupdf

    with pymupdf.open(pdf) as d:
        return d.page_count


def test_ten_copies_index_once_and_are_all_listed(indexed, tiny_embedder):
    docs, db, copies, r = indexed
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    n = _pages(SAMPLE)
    assert summary["pages"] == n + 2  # one copy and other.pdf embedded, nothing else
    assert summary["copied"] == (N_COPIES - 1) * n
    assert len(summary["new"]) == N_COPIES + 1 and summary["failed"] == []
    ls = ragvl("ls", "--db", db, "--json")
    listed = {Path(d["path"]).name for d in json.loads(ls.stdout)["documents"]}
    assert listed == {p.name for p in copies} | {"other.pdf"}
    keys = _vision_keys(db)
    assert len(keys) == len(set(keys)) == n + 2  # one row per distinct page


def test_search_returns_each_page_once_with_the_other_paths(indexed, tiny_embedder):
    docs, db, copies, _ = indexed
    n = _pages(SAMPLE)
    for mode in ("visual", "text", "hybrid"):
        r = ragvl("search", "revenue by region", "--db", db, "--embedder", tiny_embedder, "-k", str(n + 2),
                  "--mode", mode, "--json")
        assert r.returncode == 0, r.stderr
        hits = json.loads(r.stdout)
        ids = [h["id"] for h in hits]
        assert len(ids) == len(set(ids)), mode
        for h in hits:
            if Path(h["path"]).name == "other.pdf":
                assert h["also"] == []
            else:  # a copy's page: the other nine paths hold it too
                assert sorted(Path(p).name for p in h["also"] + [h["path"]]) == sorted(p.name for p in copies)
    r = ragvl("search", "revenue by region", "--db", db, "--embedder", tiny_embedder, "-k", str(n + 2))
    assert "also in" in r.stdout and "+7" in r.stdout  # two paths shown, seven more counted
    visual = json.loads(ragvl("search", "q", "--db", db, "--embedder", tiny_embedder, "-k", "100",
                              "--json").stdout)
    assert len(visual) == n + 2  # every distinct page once: -k counts distinct pages


def test_a_filter_picks_the_copy_it_allows(indexed, tiny_embedder):
    docs, db, copies, _ = indexed
    idx = Index(db, embedder=tiny_embedder, log=lambda m: None)
    hits = idx.search("revenue", k=3, in_paths=[copies[3]])
    assert len(hits) == 3 and {Path(h.path).name for h in hits} == {copies[3].name}
    assert all(h.also == () for h in hits)  # the other copies are filtered out


def test_ask_reads_each_page_once(indexed, tiny_embedder, tiny_answerer):
    docs, db, copies, _ = indexed
    idx = Index(db, embedder=tiny_embedder, answerer=tiny_answerer, log=lambda m: None)
    answer = idx.ask("What was the revenue?", k=4)
    answer.consume()
    ids = [h.id for h in answer.sources]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_a_copy_added_later_is_copied_not_embedded(tmp_path, tiny_embedder):
    docs, db = tmp_path / "docs", tmp_path / "db"
    make_pdf(docs / "a.pdf", 3, seed=9)
    assert ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "-q").returncode == 0
    shutil.copyfile(docs / "a.pdf", docs / "a copy.pdf")
    r = ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "--json", "-q")
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["pages"] == 0 and s["copied"] == 3 and [Path(p).name for p in s["new"]] == [
        "a copy.pdf"]
    keys = _vision_keys(db)
    assert len(keys) == len(set(keys)) == 3


def test_vision_features_never_hold_two_rows_for_a_key(tmp_path, tiny_embedder):
    """Rows duplicated by an earlier release are replaced, and a batch naming a page twice stores it once."""
    docs, db = tmp_path / "docs", tmp_path / "db"
    make_pdf(docs / "a.pdf", 2, seed=11)
    assert ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "-q").returncode == 0
    vc = VisionCache(db)
    t = vc.table.to_arrow()
    vc.table.add(t)  # what the bug left: every key twice
    assert len(_vision_keys(db)) == 4
    row = t.to_pylist()[0]
    feats = ImageFeatures(np.frombuffer(row["features"], "<f2").reshape(row["n_tokens"], row["hidden"]),
                          tuple(row["grid"]))
    producer = Producer(row["vision_hash"], row["preprocess"], row["max_pixels"])
    vc.put([(row["page_id"], feats), (row["page_id"], feats)], producer)
    keys = _vision_keys(db)
    assert keys.count(row["key"]) == 1 and len(keys) == 3  # the other key is still doubled: untouched
    vc.put([(r["page_id"], feats) for r in t.to_pylist()], producer)
    assert sorted(_vision_keys(db)) == sorted(set(t["key"].to_pylist()))


def test_a_failing_vision_table_never_aborts_a_run(tmp_path, tiny_embedder):
    docs, db = tmp_path / "docs", tmp_path / "db"
    make_pdf(docs / "a.pdf", 1, seed=12)
    assert ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "-q").returncode == 0
    for f in (db / "vision.lance" / "data").iterdir():
        f.write_bytes(b"garbage")  # its files are damaged: writes to it fail
    make_pdf(docs / "b.pdf", 2, seed=13)
    r = ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "--json", "-q")
    assert r.returncode == 0, r.stderr
    assert [Path(p).name for p in json.loads(r.stdout)["new"]] == ["b.pdf"]
    assert "stored vision features were not updated" in r.stderr
    ls = json.loads(ragvl("ls", "--db", db, "--json").stdout)["documents"]
    assert sorted(Path(d["path"]).name for d in ls) == ["a.pdf", "b.pdf"]


def test_only_storage_damage_is_called_damage():
    constraint = ValueError("Invalid input, Ambiguous merge inserts are prohibited: multiple source rows match")
    assert "damaged" not in describe_failure(constraint) and describe_failure(constraint).startswith("ValueError: ")
    io = RuntimeError("lance error: LanceError(IO): Generic memory error: Invalid range 0..633 for object of size 7")
    assert describe_failure(io).startswith("damaged index files (")

