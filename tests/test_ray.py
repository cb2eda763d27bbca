"""`ragvl index --workers / --ray-address`: a Ray cluster on this machine, started by the tests.

The cluster's processes run in a private mount namespace where the documents' folder is an empty
tmpfs, as on another machine: the workers can only have embedded the documents from the bytes the
driver sent through Ray's object store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ragvl.errors import RagvlError
from ragvl.store.page_store import PageStore
from scale_helpers import all_rows, free_port, ragvl, ray_head, s3_server
from tiny_pdfs import make_pdf

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

N_DOCS, N_PAGES = 8, 3


def _can_hide() -> bool:
    return os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    docs = tmp_path_factory.mktemp("raydocs") / "docs"
    for i in range(N_DOCS):
        make_pdf(docs / f"doc{i}.pdf", N_PAGES, seed=40 + i)
    return docs


@pytest.fixture(scope="module")
def expected(docs, tiny_embedder, tmp_path_factory):
    """The rows a single process stores (2 threads)."""
    db = tmp_path_factory.mktemp("single") / "db"
    r = ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "-q", env={"RAGVL_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    return all_rows(db)


@pytest.fixture(scope="module")
def head(docs, tmp_path_factory):
    if not _can_hide():
        pytest.skip("hiding the documents from the cluster needs root and unshare -m")
    with ray_head(tmp_path_factory.mktemp("rayhead"), hide=docs) as h:
        yield h


def _index(head, docs, db, embedder, *extra):
    return [sys.executable, "-m", "ragvl.cli", "index", str(docs), "--db", str(db), "--embedder", str(embedder),
            "--ray-address", head.address, "--workers", "2", "--threads-per-worker", "1", *map(str, extra)]


def test_cluster_cannot_see_the_documents(head, docs):
    code = ("import os, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(ray.get(ray.remote(lambda p: sorted(os.listdir(p))).remote(%r)))" % (head.address, str(docs)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **head.env})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]" and len(os.listdir(docs)) == N_DOCS


def test_ray_run_equals_single_process(head, docs, tiny_embedder, expected, tmp_path):
    db = tmp_path / "db"
    r = subprocess.run(_index(head, docs, db, tiny_embedder), capture_output=True, text=True, timeout=600,
                       env={**os.environ, **head.env})
    assert r.returncode == 0, r.stderr
    assert all_rows(db) == expected  # every column, vectors bitwise, each page once
    assert f"{N_DOCS} new" in r.stderr and f"{N_DOCS * N_PAGES}/{N_DOCS * N_PAGES} pages" in r.stderr


def _page_workers(head) -> list:
    out = []
    for p in psutil.Process(head.pid).children(recursive=True):
        try:
            if "ray::PageWorker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_killed_worker_is_replaced_and_its_pages_redone(head, docs, tiny_embedder, expected, tmp_path):
    db = tmp_path / "db"
    driver = subprocess.Popen(_index(head, docs, db, tiny_embedder), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, **head.env})
    killed, before, after = None, set(), set()
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        for w in _page_workers(head):
            try:
                title = " ".join(w.cmdline())
            except psutil.Error:
                continue
            (after if killed else before).add(w.pid)
            if killed is None and "PageWorker.embed" in title:  # the first worker seen embedding a task
                w.send_signal(signal.SIGKILL)
                killed = w.pid
        time.sleep(0.05)
    _, err = driver.communicate(timeout=600)
    assert killed is not None, f"no worker was seen embedding\n{err}"
    assert driver.returncode == 0, err
    assert after - before, f"no replacement worker appeared after {killed} was killed\n{err}"
    assert all_rows(db) == expected  # the lost task was redone on the restarted worker, nothing stored twice


def test_killed_driver_leaves_a_consistent_index_that_the_next_run_completes(head, docs, tiny_embedder, expected,
                                                                               tmp_path):
    db = tmp_path / "db"
    driver = subprocess.Popen(_index(head, docs, db, tiny_embedder), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, **head.env})
    deadline, n = time.time() + 300, 0
    while time.time() < deadline and driver.poll() is None:
        try:
            n = PageStore(db).count()
        except (RagvlError, OSError, ValueError):
            n = 0
        if n >= N_PAGES:  # a document is committed: kill now
            break
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    got = all_rows(db)
    assert 0 < len(got) < len(expected), "the driver was not killed mid-run"
    by_doc: dict = {}
    for r in got.values():
        assert r == expected[r["key"]]
        by_doc.setdefault(r["doc_path"], []).append(r["page"])
    assert all(sorted(v) == list(range(1, N_PAGES + 1)) for v in by_doc.values())  # documents whole or absent
    r = subprocess.run(_index(head, docs, db, tiny_embedder), capture_output=True, text=True, timeout=600,
                       env={**os.environ, **head.env})
    assert r.returncode == 0, r.stderr
    assert all_rows(db) == expected and f"{len(by_doc)} unchanged" in r.stderr


def test_fresh_local_instance_writes_to_s3(docs, tiny_embedder, expected):
    """--workers starts its own Ray even when RAY_ADDRESS points elsewhere, and writes to s3://."""
    pytest.importorskip("moto")
    with s3_server():
        uri = "s3://bkt/ray"
        r = ragvl("index", docs, "--db", uri, "--embedder", tiny_embedder, "--workers", "2",
                  "--threads-per-worker", "1", "-q", env={"RAY_ADDRESS": f"127.0.0.1:{free_port()}"})
        assert r.returncode == 0, r.stderr
        assert all_rows(uri) == expected


def test_unreachable_cluster_is_one_line_and_no_ray_without_flags(docs, tiny_embedder, tmp_path):
    r = ragvl("index", docs, "--db", tmp_path / "db", "--embedder", tiny_embedder,
              "--ray-address", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "cannot be reached" in r.stderr
    code = ("import sys; from ragvl.api import Index; "
            "Index(%r, embedder=%r, log=lambda m: None).index([%r], progress=False); print('ray' in sys.modules)"
            % (str(tmp_path / "db"), str(tiny_embedder), str(docs / "doc0.pdf")))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
