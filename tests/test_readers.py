"""Readers only read: searching, listing, status, asking and the server's read endpoints leave
every table of the index at the version its last writer left (local and on the S3 server)."""

from __future__ import annotations

import json

import lancedb
import pytest

from servers import Served
from scale_helpers import ragvl, s3_server
from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

TABLES = ("pages", "meta", "vision")


def versions(db) -> dict:
    """{table: its number of versions}: a write of any kind adds one."""
    from ragvl.store.objstore import connect, is_uri

    conn = connect(str(db)) if is_uri(db) else lancedb.connect(str(db))
    return {t: len(conn.open_table(t).list_versions()) for t in TABLES}


@pytest.fixture(scope="module")
def local(tmp_path_factory, tiny_embedder):
    tmp = tmp_path_factory.mktemp("readers")
    for i in range(2):
        make_pdf(tmp / "docs" / f"r{i}.pdf", 2, seed=60 + i)
    r = ragvl("index", tmp / "docs", "--db", tmp / "db", "--embedder", tiny_embedder, "-q")
    assert r.returncode == 0, r.stderr
    return tmp


def _reads(db, embedder, answerer) -> None:
    for mode in ("visual", "text", "hybrid"):
        r = ragvl("search", "revenue in region 1", "--db", db, "--embedder", embedder, "--mode", mode, "--json")
        assert r.returncode == 0 and json.loads(r.stdout), (mode, r.stderr)
    assert ragvl("ls", "--db", db, "--json").returncode == 0
    assert ragvl("status", "--db", db, "--json").returncode == 0
    r = ragvl("ask", "What grew in region 1?", "-k", "2", "--db", db, "--embedder", embedder, "--answerer", answerer,
              "-n", "4", "--json")
    assert r.returncode == 0, r.stderr


def test_cli_reads_write_nothing(local, tiny_embedder, tiny_answerer):
    db = local / "db"
    before = versions(db)
    _reads(db, tiny_embedder, tiny_answerer)
    assert versions(db) == before


def test_server_reads_write_nothing(local, tiny_embedder, tiny_answerer):
    db = local / "db"
    before = versions(db)
    s = Served("--db", db, "--root", local, "--embedder", tiny_embedder, "--answerer", tiny_answerer)
    try:
        with s.client() as c:
            assert c.get("/api/status").json()["documents"] == 2
            assert len(c.get("/api/documents").json()) == 2
            hits = c.get("/api/search", params={"q": "revenue", "k": 2}).json()
            assert len(hits) == 2, hits
            assert c.get(f"/api/pages/{hits[0]['id']}.png").status_code == 200
    finally:
        log = s.stop()
    assert "Traceback" not in log, log
    assert versions(db) == before


@pytest.mark.s3
def test_s3_index_reads_write_nothing_and_serve_works_on_it(local, tiny_embedder, tiny_answerer):
    with s3_server():
        uri = "s3://bkt/readers"
        r = ragvl("index", local / "docs", "--db", uri, "--embedder", tiny_embedder, "-q")
        assert r.returncode == 0, r.stderr
        before = versions(uri)
        _reads(uri, tiny_embedder, tiny_answerer)
        s = Served("--db", uri, "--root", local, "--embedder", tiny_embedder, "--answerer", tiny_answerer)
        try:
            with s.client() as c:
                st = c.get("/api/status")
                assert st.status_code == 200 and st.json()["documents"] == 2, st.text
                assert len(c.get("/api/documents").json()) == 2
                hits = c.get("/api/search", params={"q": "revenue", "k": 2}).json()
                assert len(hits) == 2
                png = c.get(f"/api/pages/{hits[0]['id']}.png")
                assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        finally:
            log = s.stop()
        assert "Traceback" not in log, log
        assert versions(uri) == before


def test_a_missing_full_text_index_is_built_by_the_next_writer_not_by_a_search(tmp_path, tiny_embedder):
    make_pdf(tmp_path / "docs" / "a.pdf", 2, seed=70)
    db = tmp_path / "db"
    assert ragvl("index", tmp_path / "docs", "--db", db, "--embedder", tiny_embedder, "-q").returncode == 0
    table = lancedb.connect(str(db)).open_table("pages")
    for i in table.list_indices():  # as an index written before full-text search had none
        table.drop_index(i.name)
    before = versions(db)
    r = ragvl("search", "revenue", "--db", db, "--embedder", tiny_embedder, "--mode", "text")
    assert r.returncode == 1 and "no full-text index yet" in r.stderr and "run `ragvl index`" in r.stderr
    assert versions(db) == before
    r = ragvl("index", tmp_path / "docs", "--db", db, "--embedder", tiny_embedder, "-q")  # nothing changed
    assert r.returncode == 0, r.stderr
    r = ragvl("search", "revenue", "--db", db, "--embedder", tiny_embedder, "--mode", "text", "--json")
    assert r.returncode == 0 and json.loads(r.stdout), r.stderr
