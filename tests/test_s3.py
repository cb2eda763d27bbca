"""An index on object storage: s3:// against moto's S3 server on 127.0.0.1, started by the test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragvl.errors import RagvlError
from ragvl.store.objstore import LOCK_NAME, ObjectLock
from ragvl.store.page_store import PageStore
from scale_helpers import all_rows, ragvl, s3_server
from tiny_pdfs import make_pdf

pytestmark = [pytest.mark.s3, pytest.mark.slow]

pytest.importorskip("moto")
pytest.importorskip("boto3")

URI = "s3://bkt/team/index"


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        yield env


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3docs")
    for i in range(3):
        make_pdf(tmp / "docs" / f"r{i}.pdf", 2, seed=30 + i)
    return tmp / "docs"


@pytest.fixture(scope="module")
def indexed(s3, docs, tiny_embedder, tmp_path_factory):
    """The same documents indexed into s3:// and into a local folder."""
    local = tmp_path_factory.mktemp("s3local") / "db"
    r = ragvl("index", docs, "--db", URI, "--embedder", tiny_embedder, "-q", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["db"] == URI
    assert ragvl("index", docs, "--db", local, "--embedder", tiny_embedder, "-q").returncode == 0
    return local


def _keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket="bkt", Prefix=prefix)
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


def test_remote_index_equals_local_and_describes_itself(s3, indexed, docs, tiny_embedder):
    remote = all_rows(URI)
    assert remote == all_rows(indexed) and len(remote) == 6
    assert all(r["doc_path"].startswith(str(docs.resolve())) for r in remote.values())  # paths as given (absolute)
    keys = _keys("team/index/")
    assert any(k.startswith("team/index/meta.lance/") for k in keys)
    assert not any(k.endswith("ragvl-index.json") or k.endswith(LOCK_NAME) for k in keys)  # lock released
    meta = PageStore(URI).meta
    assert meta["embedder"] == PageStore(indexed).meta["embedder"] and meta["dpi"] == 120 and meta["index_id"]
    again = ragvl("index", docs, "--db", URI, "--embedder", tiny_embedder, "-q", "--json")
    assert json.loads(again.stdout)["unchanged"] == sorted(str(p.resolve()) for p in docs.glob("*.pdf"))


def test_search_from_two_machines(s3, indexed, tiny_embedder, tmp_path):
    """A second machine (a fresh cache home) reads the same index; both match a local index."""
    query = ("search", "revenue in region 1", "-k", 4, "--embedder", tiny_embedder, "--json")
    local = json.loads(ragvl(*query, "--db", indexed).stdout)
    for machine in ("a", "b"):
        cache = tmp_path / machine
        r = ragvl(*query, "--db", URI, env={"RAGVL_CACHE": str(cache)})
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == local
        assert len(list((cache / "search").glob("*/v*"))) == 1  # the cache lives on the reading machine
    assert not [k for k in _keys("team/index/") if "/cache/" in k]


def test_ask_on_s3(s3, indexed, tiny_embedder, tiny_answerer):
    answerer = tiny_answerer
    args = ("ask", "What grew in region 1?", "-k", 2, "--embedder", tiny_embedder, "--answerer", answerer, "-n", 8,
            "--json")
    remote = ragvl(*args, "--db", URI)
    assert remote.returncode == 0, remote.stderr
    local = json.loads(ragvl(*args, "--db", indexed).stdout)
    out = json.loads(remote.stdout)
    assert out["answer"] == local["answer"] and out["sources"] == local["sources"]


def test_two_writers_on_s3_store_every_page_once(s3, docs, tiny_embedder):
    uri = "s3://bkt/concurrent"
    cmd = [sys.executable, "-m", "ragvl.cli", "index", str(docs), "--db", uri, "--embedder", str(tiny_embedder), "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(all_rows(uri)) == 6  # all_rows fails on a page stored twice


def test_ls_rm_status_on_s3(s3, docs, tiny_embedder):
    uri = "s3://bkt/managed"
    assert ragvl("index", docs, "--db", uri, "--embedder", tiny_embedder, "-q").returncode == 0
    listed = json.loads(ragvl("ls", "--db", uri, "--json").stdout)
    paths = sorted(d["path"] for d in listed["documents"])
    assert len(paths) == 3 and all(Path(p).is_absolute() for p in paths)  # stored as given: absolute
    assert json.loads(ragvl("status", "--db", uri, "--json").stdout)["documents"] == 3
    r = ragvl("rm", paths[0], "--db", uri)
    assert r.returncode == 0, r.stderr
    assert [d["path"] for d in json.loads(ragvl("ls", "--db", uri, "--json").stdout)["documents"]] == paths[1:]
    r = ragvl("rm", paths[0], "--db", uri)  # gone now: named, exit 1, nothing removed
    assert r.returncode == 1 and paths[0] in r.stderr


def test_lock_object_conditional_put_and_lease(s3):
    db = "s3://bkt/locktest"
    said: list[str] = []
    a = ObjectLock(db, lease_s=1.0, poll_s=0.2, log=said.append)
    a.acquire()
    b = ObjectLock(db, lease_s=1.0, poll_s=0.2, log=said.append)
    with pytest.raises(RagvlError, match=r"another writer holds the index \(.* pid \d+\)"):
        b.acquire(timeout=1.5)  # a renews its lease: b waits, naming the holder
    assert any("waiting for the writer lock held by" in m for m in said)
    a.release()
    b.acquire(timeout=5)  # released: taken at once
    # b dies without releasing (its renewal stops): after its lease, c takes the lock over.
    b._stop.set()
    b._thread.join()
    t0 = time.monotonic()
    c = ObjectLock(db, lease_s=1.0, poll_s=0.2, log=said.append)
    c.acquire(timeout=10)
    assert time.monotonic() - t0 >= 0.5 and any("took over the writer lock" in m for m in said)
    assert not b.renew() and b.lost  # the overtaken holder finds out before its next commit
    with pytest.raises(RagvlError, match="lost the writer lock"):
        b.check()
    c.release()
    assert not [k for k in _keys("locktest/") if k.endswith(LOCK_NAME)]


def test_unreachable_object_store_is_one_line(tiny_embedder):
    from scale_helpers import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    r = ragvl("search", "revenue", "--db", URI, "--embedder", tiny_embedder,
              env={"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                   "AWS_REGION": "us-east-1"})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"ragvl: error: {URI}: cannot open (cannot reach the object store at {endpoint})"


def test_uris_and_storage_options(monkeypatch):
    from pathlib import Path

    from ragvl.store.objstore import is_uri, normalize_db, storage_options

    assert [is_uri(x) for x in ("s3://b/p", "gs://b/p", "az://c/p", ".ragvl", "/tmp/x", Path("s3:/b"), "file:///x")] \
        == [True, True, True, False, False, False, False]
    assert normalize_db("s3://b/p/") == "s3://b/p" and normalize_db(".ragvl") == Path(".ragvl")
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ALLOW_HTTP", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)
    assert storage_options() == {}
    monkeypatch.setenv("AWS_ENDPOINT", "http://127.0.0.1:9000")  # object_store's spelling
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert storage_options() == {"aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true",
                                 "aws_region": "eu-west-1"}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")  # boto's spelling wins
    assert storage_options() == {"aws_endpoint": "https://s3.example.com", "aws_region": "eu-west-1"}
