"""`ragvl index --workers / --ray-address`: a Ray cluster on this machine, started by the tests.

The cluster's processes run in a private mount namespace where the documents' folder is an empty
tmpfs, as on another machine: the workers can only have embedded the documents from the bytes the
driver sent through Ray's object store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scale_helpers import all_rows, free_port, ragvl, ray_head, s3_server
from tiny_pdfs import break_page_content, make_image, make_pdf

pytestmark = [pytest.mark.ray, pytest.mark.slow]

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
    # The run's test hook holds it after the first page of the second document, so the first
    # document is committed and the second is not: the kill lands there, not where a poll saw it.
    driver = subprocess.Popen(_index(head, docs, db, tiny_embedder), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **head.env, "RAGVL_TEST_PAUSE_AFTER_PAGES": str(N_PAGES + 1)})
    for line in driver.stderr:
        if line.startswith("ragvl-test: paused after"):
            break
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    got = all_rows(db)
    assert len(got) == N_PAGES  # exactly the first document
    by_doc: dict = {}
    for r in got.values():
        assert r == expected[r["key"]]
        by_doc.setdefault(r["doc_path"], []).append(r["page"])
    assert all(sorted(v) == list(range(1, N_PAGES + 1)) for v in by_doc.values())  # documents whole or absent
    r = subprocess.run(_index(head, docs, db, tiny_embedder), capture_output=True, text=True, timeout=600,
                       env={**os.environ, **head.env})
    assert r.returncode == 0, r.stderr
    assert all_rows(db) == expected and f"{len(by_doc)} unchanged" in r.stderr


def _vision_rows(db) -> list:
    from ragvl.store import VisionCache

    t = VisionCache(db).table
    return sorted(t.to_arrow().select(["key", "page_id", "grid", "n_tokens", "hidden", "features"]).to_pylist(),
                  key=lambda r: r["key"])


def _summary(r) -> tuple:
    """What a run reports, paths made relative to the folder of its documents."""
    s = json.loads(r.stdout)
    return (r.returncode, sorted(Path(p).name for p in s["new"]), sorted(Path(p).name for p in s["removed"]),
            sorted((Path(x["path"]).name, x["page"], x["reason"]) for x in s["skipped_pages"]), s["pages"])


def test_ray_run_writes_what_a_single_run_writes(head, tiny_embedder, tmp_path):
    """A corrupt page, an image file, stored vision features, then --prune: the same rows, skips,
    exit status and features, whoever embeds."""
    docs = tmp_path / "m"
    make_pdf(docs / "a.pdf", 2, seed=71)
    break_page_content(make_pdf(docs / "broken.pdf", 3, seed=72), [2])
    make_image(docs / "scan.png", size=(320, 240))
    gone = make_pdf(docs / "old.pdf", 1, seed=73)
    single, ray_db = tmp_path / "single", tmp_path / "ray"
    env = {**os.environ, **head.env}

    def both(folder, *extra):
        one = ragvl("index", folder, "--db", single, "--embedder", tiny_embedder, "--json", "-q", *extra,
                    env={"RAGVL_THREADS": "2"})
        many = subprocess.run(_index(head, folder, ray_db, tiny_embedder, "--json", "-q", *extra),
                              capture_output=True, text=True, timeout=600, env=env)
        return one, many

    one, many = both(docs)
    assert one.returncode == 1, one.stderr  # a skipped page: exit 1 so that scripts notice
    assert _summary(many) == _summary(one)
    assert ("broken.pdf", 2) in {(n, p) for n, p, _ in _summary(one)[3]}
    assert f"{docs / 'broken.pdf'}: page 2: corrupt page" in many.stderr  # the file named once
    assert "broken.pdf.pdf" not in many.stderr
    assert all_rows(ray_db) == all_rows(single)
    assert _vision_rows(ray_db) == _vision_rows(single) and len(_vision_rows(single)) == 2 + 2 + 1 + 1

    gone.unlink()
    other = tmp_path / "other"
    make_pdf(other / "b.pdf", 1, seed=74)
    one, many = both(other, "--prune")
    assert one.returncode == 0 and _summary(many) == _summary(one)
    assert _summary(one)[2] == ["old.pdf"]
    assert all_rows(ray_db) == all_rows(single)
    assert "old.pdf" not in {Path(r["doc_path"]).name for r in all_rows(ray_db).values()}
    assert _vision_rows(ray_db) == _vision_rows(single)


def test_no_wait_is_honoured_with_workers(docs, tiny_embedder, tmp_path):
    from ragvl.store import writer_lock

    with writer_lock(tmp_path / "db"):
        r = ragvl("index", docs, "--db", tmp_path / "db", "--embedder", tiny_embedder, "--workers", "2",
                  "--no-wait", timeout=120)
    assert r.returncode == 1 and "another writer holds the index" in r.stderr.strip().splitlines()[-1]


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
