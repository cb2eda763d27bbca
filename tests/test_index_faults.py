"""Writers, readers and faults on real index folders: concurrent `ragvl index` runs, searches
during a run, a full disk (a real tmpfs), damaged table files, interrupted runs, and model
folders that fail verification or are replaced while in use."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ragvl.api import Index
from ragvl.errors import RagvlError
from ragvl.store.page_store import PageStore
from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop



def ragvl(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


def page_keys(db: Path, where: str | None = None) -> list[tuple[str, int]]:
    t = PageStore(db).scan(["doc_path", "page"], where=where)
    return sorted(zip(t["doc_path"].to_pylist(), t["page"].to_pylist()))


def test_two_index_runs_started_together_store_every_page_once(tmp_path, tiny_embedder):
    docs = tmp_path / "docs"
    for i in range(3):
        make_pdf(docs / f"d{i}.pdf", 2, seed=i)
    cmd = [sys.executable, "-m", "ragvl.cli", "index", str(docs), "--db", str(tmp_path / "db"),
           "--embedder", str(tiny_embedder), "-q", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    keys = page_keys(tmp_path / "db")  # every row, live or not
    assert keys == sorted({(f"docs/d{i}.pdf", n) for i in range(3) for n in (1, 2)})
    summaries = sorted((json.loads(o[0]) for o in outs), key=lambda s: len(s["new"]))
    assert (len(summaries[0]["new"]), len(summaries[0]["unchanged"]), len(summaries[1]["new"])) == (0, 3, 3)
    assert any("waiting for another writer" in o[1] and "pid " in o[1] for o in outs)


def test_no_wait_fails_at_once_naming_the_holder(tmp_path, tiny_embedder):
    from ragvl.store.lock import writer_lock

    make_pdf(tmp_path / "d.pdf", 1)
    with writer_lock(tmp_path / "db"):
        r = ragvl("index", tmp_path / "d.pdf", "--db", tmp_path / "db", "--embedder", tiny_embedder, "--no-wait")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and f"another writer holds the index (pid {os.getpid()} on " in last
    assert not (tmp_path / "db" / "pages.lance").exists()


def test_search_while_a_run_commits_reads_committed_versions(tmp_path, tiny_embedder):
    docs, db = tmp_path / "docs", tmp_path / "db"
    make_pdf(docs / "first.pdf", 2, seed=0)
    assert ragvl("index", docs, "--db", db, "--embedder", tiny_embedder, "-q").returncode == 0
    for i in range(4):
        make_pdf(docs / f"more{i}.pdf", 2, seed=10 + i)
    make_pdf(docs / "first.pdf", 3, seed=99)  # a new version of an indexed document
    p = subprocess.Popen([sys.executable, "-m", "ragvl.cli", "index", str(docs), "--db", str(db), "--embedder",
                          str(tiny_embedder), "-q"], stderr=subprocess.PIPE, text=True)
    idx = Index(db, embedder=tiny_embedder, log=lambda m: None)
    seen, errors = [], []
    while p.poll() is None:
        try:
            hits = idx.search("revenue", k=20)
        except Exception as e:  # noqa: BLE001 - any failure is the bug this test looks for
            errors.append(repr(e))
            continue
        pages = {}
        for h in hits:
            pages.setdefault(Path(h.path).name, set()).add(h.page)
        seen.append(pages)
    assert p.wait() == 0 and errors == []
    assert len(seen) >= 2
    for pages in seen:  # every document whole: the old or the new version of first.pdf, never a mix
        assert pages["first.pdf"] in ({1, 2}, {1, 2, 3})
        assert all(v == {1, 2} for k, v in pages.items() if k != "first.pdf")


def test_interrupted_run_is_one_line_and_resumable(tmp_path, tiny_embedder):
    docs = tmp_path / "docs"
    for i in range(6):
        make_pdf(docs / f"d{i}.pdf", 2, seed=i)
    # The indexer's test hook holds the run after its 3rd page (the first document is committed by
    # then): the interrupt lands mid-run however fast the machine is.
    p = subprocess.Popen([sys.executable, "-m", "ragvl.cli", "index", str(docs), "--db", str(tmp_path / "db"),
                          "--embedder", str(tiny_embedder), "-q"], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "RAGVL_TEST_PAUSE_AFTER_PAGES": "3"},
                         # A run started in the background by a non-interactive shell (as CI may
                         # be) inherits SIGINT ignored; a terminal's Ctrl-C is what is tested here.
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in p.stderr:  # blocks until the hook speaks, or the run ends without it
        seen.append(line)
        if "ragvl-test: paused after 3 pages" in line:
            break
    assert PageStore(tmp_path / "db").count() == 2, "".join(seen)
    p.send_signal(signal.SIGINT)
    err = "".join(seen) + p.communicate(timeout=120)[1]
    assert p.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "interrupted" in last and str(tmp_path / "db") in last and "Traceback" not in err
    r = ragvl("index", docs, "--db", tmp_path / "db", "--embedder", tiny_embedder, "-q")
    assert r.returncode == 0 and len(page_keys(tmp_path / "db")) == 12


def test_damaged_table_is_one_line_and_debug_shows_the_traceback(tmp_path, tiny_embedder):
    make_pdf(tmp_path / "d.pdf", 1)
    db = tmp_path / "db"
    assert ragvl("index", tmp_path / "d.pdf", "--db", db, "--embedder", tiny_embedder, "-q").returncode == 0
    for f in (db / "pages.lance" / "data").iterdir():
        f.write_bytes(b"garbage")
    r = ragvl("search", "revenue", "--db", db, "--embedder", tiny_embedder)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ragvl: error: {db}: ") and "RAGVL_DEBUG=1" in last
    r = ragvl("search", "revenue", "--db", db, "--embedder", tiny_embedder, env={"RAGVL_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.fixture
def small_fs(tmp_path):
    """A real 8 MB tmpfs, mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_and_the_index_still_searches(tmp_path, tiny_embedder, small_fs):
    db = small_fs / "db"
    make_pdf(tmp_path / "first.pdf", 1, seed=0)
    assert ragvl("index", tmp_path / "first.pdf", "--db", db, "--embedder", tiny_embedder, "-q").returncode == 0
    before = ragvl("search", "revenue", "--db", db, "--json")
    assert before.returncode == 0
    st = os.statvfs(small_fs)
    (small_fs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 300_000))  # ~300 KB left
    big = make_pdf(tmp_path / "big" / "big.pdf", 40, seed=1)
    r = ragvl("index", big, "--db", db, "--embedder", tiny_embedder, "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"ragvl: error: {db}: disk full (no space left on device) (RAGVL_DEBUG=1 shows the traceback)"
    after = ragvl("search", "revenue", "--db", db, "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_model_folder_is_verified_once_and_paths_cannot_escape(tmp_path, tiny_embedder, monkeypatch):
    from ragvl.models.contract import manifest as mf

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "emb"
    shutil.copytree(tiny_embedder, folder)
    hashed = []
    real = mf.sha256_file
    monkeypatch.setattr(mf, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    m = mf.read_manifest(folder)
    assert sorted(hashed) == sorted(m["files"]) and (tmp_path / "cache" / "ragvl" / "verified-models.json").exists()
    assert not any(p.name.startswith("verified") for p in folder.iterdir())  # nothing written in the model folder
    hashed.clear()
    mf.read_manifest(folder)
    assert hashed == []  # cached by size and mtime

    graph = folder / "embed.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    graph.write_bytes(bytes(data))
    with pytest.raises(RagvlError, match="embed.onnx: contents differ from the manifest's sha256"):
        mf.read_manifest(folder)

    evil = tmp_path / "evil"
    shutil.copytree(tiny_embedder, evil)
    man = json.loads((evil / "ragvl.json").read_text())
    man["files"]["../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (evil / "ragvl.json").write_text(json.dumps(man))
    (tmp_path / "secret").write_bytes(b"x")
    with pytest.raises(RagvlError, match="points outside the model folder"):
        mf.read_manifest(evil)


def test_convert_force_replaces_atomically(tmp_path, tiny_embedder):
    from tiny_numpy import make_numpy_checkpoint

    from ragvl.fsutil import replace_dir

    ckpt = make_numpy_checkpoint(tmp_path / "ckpt", variant="a", kind="colqwen2")
    out = tmp_path / "home" / "emb"
    shutil.copytree(tiny_embedder, out)
    old_manifest = (out / "ragvl.json").read_text()
    stale = out.with_name(f".{out.name}.partial-999999999")  # a killed conversion's leftovers
    stale.mkdir()
    stop, seen = threading.Event(), []

    def reader():  # the folder is always a complete model: old or new, never missing or partial
        while not stop.is_set():
            try:
                seen.append(json.loads((out / "ragvl.json").read_text())["dtype"])
            except (OSError, ValueError) as e:
                seen.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    r = ragvl("models", "convert", ckpt, out, "--dtype", "int8", "--force")
    stop.set()
    t.join()
    assert r.returncode == 0, r.stderr
    assert set(seen) <= {"fp32", "int8"} and "int8" in seen and "fp32" in seen
    assert (out / "ragvl.json").read_text() != old_manifest
    assert sorted(p.name for p in out.parent.iterdir()) == ["emb"]  # no .partial-* / .old-* left

    new = tmp_path / "new"
    new.mkdir()
    (new / "x").write_text("new")
    replace_dir(new, out)
    assert (out / "x").read_text() == "new" and not new.exists()


def test_read_only_folder_is_one_line_and_search_still_works(tmp_path, tiny_embedder, small_fs):
    db = small_fs / "db"
    make_pdf(tmp_path / "a.pdf", 1, seed=0)
    make_pdf(tmp_path / "b.pdf", 1, seed=1)
    assert ragvl("index", tmp_path / "a.pdf", "--db", db, "--embedder", tiny_embedder, "-q").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    r = ragvl("index", tmp_path / "b.pdf", "--db", db, "--embedder", tiny_embedder, "-q")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last == f"ragvl: error: {db}: cannot write the index (read-only file system)"
    r = ragvl("search", "revenue", "--db", db, "--json")  # reads need no write access
    assert r.returncode == 0, r.stderr
    assert [Path(h["path"]).name for h in json.loads(r.stdout)] == ["a.pdf"]
