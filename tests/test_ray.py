"""`ragvl index --workers / --ray-address`: a Ray cluster on this machine, started by the tests.

The cluster's processes run in a private mount namespace where the documents' folder is an empty
tmpfs, as on another machine: the workers can only have embedded the pages the driver rendered
and sent through Ray's object store. A Ray run is the single run with its pages embedded by
actors, so the tests hold it to a single run: rows, skipped pages and their causes, exit status,
stored vision features. Faults happen at known points (test hooks), never where a poll saw them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scale_helpers import all_rows, free_port, ragvl, ray_head, s3_server
from ragvl.store import K_VISION_CACHE, PageStore
from tiny_pdfs import break_page_content, make_image, make_pdf

pytestmark = [pytest.mark.ray, pytest.mark.slow]

pytest.importorskip("ray")

N_DOCS, N_PAGES = 8, 3


def _can_hide() -> bool:
    return os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The folder the cluster cannot see: every test's documents are under it."""
    return tmp_path_factory.mktemp("raydocs")


@pytest.fixture(scope="module")
def docs(root):
    docs = root / "docs"
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
def head(root, docs, tmp_path_factory):
    if not _can_hide():
        pytest.skip("hiding the documents from the cluster needs root and unshare -m")
    with ray_head(tmp_path_factory.mktemp("rayhead"), hide=root) as h:
        yield h


def _index(head, docs, db, embedder, *extra):
    return [sys.executable, "-m", "ragvl.cli", "index", str(docs), "--db", str(db), "--embedder", str(embedder),
            "--ray-address", head.address, "--workers", "2", "--threads-per-worker", "1", *map(str, extra)]


def test_cluster_cannot_see_the_documents(head, root, docs):
    code = ("import os, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(ray.get(ray.remote(lambda p: sorted(os.listdir(p))).remote(%r)))" % (head.address, str(root)))
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


def test_killed_worker_is_replaced_and_its_pages_redone(head, docs, tiny_embedder, expected, tmp_path):
    """The driver's test hook has the worker given the 5th page kill itself mid-task (once)."""
    db = tmp_path / "db"
    r = subprocess.run(_index(head, docs, db, tiny_embedder), capture_output=True, text=True, timeout=600,
                       env={**os.environ, **head.env, "RAGVL_TEST_KILL_WORKER_AT_PAGE": "5"})
    assert r.returncode == 0, r.stderr
    assert "was restarted" in r.stderr and "its pages were embedded again" in r.stderr, r.stderr
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
    """The stored vision features, every column but `used` (a time); [] when none were stored."""
    from ragvl.store import VisionCache

    t = VisionCache(db).table
    if t is None:
        return []
    return sorted(t.to_arrow().select(["key", "page_id", "grid", "n_tokens", "hidden", "features"]).to_pylist(),
                  key=lambda r: r["key"])


def _summary(r) -> tuple:
    """What a run reports (exit status, new, removed, skipped pages with their causes, pages embedded),
    paths made relative to the folder of its documents."""
    s = json.loads(r.stdout)
    return (r.returncode, sorted(Path(p).name for p in s["new"]), sorted(Path(p).name for p in s["removed"]),
            sorted((Path(x["path"]).name, x["page"], x["reason"]) for x in s["skipped_pages"]), s["pages"])


def test_ray_run_writes_what_a_single_run_writes(head, root, tiny_embedder, tmp_path):
    """A corrupt page, a page that hangs past the time limit, a page that crashes MuPDF, an image
    file and stored vision features; then --prune (with --vision-cache-gib) after a deletion, and
    --no-vision-cache: the same rows, skips, exit status and features, whoever embeds."""
    docs, other = root / "mixed", root / "other"
    make_pdf(docs / "a.pdf", 2, seed=71)
    broken = break_page_content(make_pdf(docs / "broken.pdf", 3, seed=72), [2])
    odd = make_pdf(docs / "odd.pdf", 5, seed=75)  # the render hooks below: page 4 hangs, page 5 crashes MuPDF
    make_image(docs / "scan.png", size=(320, 240))
    gone = make_pdf(docs / "sub" / "old.pdf", 1, seed=73)
    make_pdf(other / "b.pdf", 1, seed=74)
    single, ray_db = tmp_path / "single", tmp_path / "ray"
    faults = {"RAGVL_TEST_RENDER_HANG": "4", "RAGVL_TEST_RENDER_CRASH": "5", "RAGVL_PAGE_TIMEOUT": "5"}

    def both(db_single, db_ray, folder, *extra, env=None):
        one = ragvl("index", folder, "--db", db_single, "--embedder", tiny_embedder, "--json", "-q", *extra,
                    env={"RAGVL_THREADS": "2", **(env or {})})
        many = subprocess.run(_index(head, folder, db_ray, tiny_embedder, "--json", "-q", *extra),
                              capture_output=True, text=True, timeout=600, env={**os.environ, **head.env, **(env or {})})
        return one, many

    one, many = both(single, ray_db, docs, env=faults)
    assert one.returncode == 1, one.stderr  # skipped pages: exit 1 so that scripts notice
    assert _summary(many) == _summary(one), many.stderr
    skipped = {(n, p): why for n, p, why in _summary(one)[3]}
    assert list(skipped) == [("broken.pdf", 2), ("odd.pdf", 4), ("odd.pdf", 5)]
    assert "corrupt page" in skipped[("broken.pdf", 2)]
    assert skipped[("odd.pdf", 4)] == "rendering took longer than 5 s"
    assert skipped[("odd.pdf", 5)].startswith("MuPDF crashed while rendering")
    assert f"skipped: {broken}: page 2: corrupt page" in many.stderr  # the file named once
    assert f"skipped: {odd}: page 4: rendering took longer than 5 s" in many.stderr
    assert ".pdf.pdf" not in many.stderr
    assert all_rows(ray_db) == all_rows(single)  # every column, vectors bitwise, skipped rows included
    assert len(_vision_rows(single)) == 2 + 2 + 3 + 1 + 1  # every embedded page's features
    assert _vision_rows(ray_db) == _vision_rows(single)

    gone.unlink()
    one, many = both(single, ray_db, other, "--prune", "--vision-cache-gib", "0.5")
    assert one.returncode == 0 and _summary(many) == _summary(one), many.stderr
    assert _summary(one)[2] == ["old.pdf"]
    assert all_rows(ray_db) == all_rows(single)
    assert _vision_rows(ray_db) == _vision_rows(single)
    assert PageStore(ray_db).meta[K_VISION_CACHE] == PageStore(single).meta[K_VISION_CACHE] == {"max_bytes": 2 ** 29}
    ls = ragvl("ls", "--db", ray_db, "--json")
    assert ls.returncode == 0 and "old.pdf" not in ls.stdout and "b.pdf" in ls.stdout

    one, many = both(tmp_path / "single-nv", tmp_path / "ray-nv", other, "--no-vision-cache")
    assert one.returncode == 0 and _summary(many) == _summary(one), many.stderr
    assert all_rows(tmp_path / "ray-nv") == all_rows(tmp_path / "single-nv")
    assert _vision_rows(tmp_path / "ray-nv") == _vision_rows(tmp_path / "single-nv") == []


def test_reembed_with_workers_is_the_single_runs(head, root, tiny_embedder, tmp_path):
    """After a converter change gives the embedder another id, --reembed re-embeds the same pages
    under the new id whoever embeds."""
    import shutil

    emb = tmp_path / "emb"  # outside `root`: every node has the model, as a cluster's install would
    shutil.copytree(tiny_embedder, emb)
    folder = root / "reembed"
    make_pdf(folder / "c.pdf", 2, seed=76)
    single, ray_db = tmp_path / "single", tmp_path / "ray"
    runs = {single: [], ray_db: ["--ray-address", head.address, "--workers", "2", "--threads-per-worker", "1"]}
    env = {**head.env, "RAGVL_THREADS": "2"}
    for db, extra in runs.items():
        assert ragvl("index", folder, "--db", db, "--embedder", emb, "-q", *extra, env=env).returncode == 0
    old_id = PageStore(single).embedder
    m = json.loads((emb / "ragvl.json").read_text())
    m["dtype"] = "fp32-v2"  # what a converter change does: the folder's model gets another id
    (emb / "ragvl.json").write_text(json.dumps(m))
    got = {db: ragvl("index", "--reembed", "--db", db, "--embedder", emb, "--json", "-q", *extra, env=env)
           for db, extra in runs.items()}
    assert [r.returncode for r in got.values()] == [0, 0], [r.stderr for r in got.values()]
    assert _summary(got[ray_db]) == _summary(got[single]) and _summary(got[single])[4] == 2
    assert PageStore(ray_db).embedder == PageStore(single).embedder != old_id
    assert all_rows(ray_db) == all_rows(single)


def test_no_wait_is_honoured_with_workers(docs, tiny_embedder, tmp_path):
    """A held writer lock and --no-wait: one line at once, before Ray is started or anything written."""
    from ragvl.store import writer_lock

    db = tmp_path / "db"
    with writer_lock(db):
        r = ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "--workers", "2", "--no-wait",
                  timeout=120)
    assert r.returncode == 1 and "another writer holds the index" in r.stderr.strip().splitlines()[-1]
    assert "ray:" not in r.stderr, r.stderr
    assert not (db / "pages.lance").exists()


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
