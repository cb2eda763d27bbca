"""What every `ragvl` command shares: one-line errors (unexpected ones too), one meaning per short
flag, the vision-features cap in GiB, and the model home under XDG_CACHE_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tiny_pdfs import make_pdf


def ragvl(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def too_deep(path):
    """Valid JSON that Python's parser cannot read (RecursionError: neither OSError nor ValueError,
    so no code path expects it): a stand-in for any bug."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


@pytest.fixture
def unexpected(tmp_path, tiny_answerer):
    """One command per group that hits an unexpected exception: eval, chat, models."""
    answerer = tmp_path / "answerer"
    shutil.copytree(tiny_answerer, answerer)
    too_deep(answerer / "ragvl.json")
    home = tmp_path / "home"
    too_deep(home / "models" / "broken" / "ragvl.json")
    return {
        "eval": (("eval", too_deep(tmp_path / "questions.json"), "--db", tmp_path / "db"), {}, str(tmp_path / "db")),
        "chat": (("chat", "Hi", "--answerer", answerer), {}, "chat"),
        "models": (("models", "list"), {"RAGVL_HOME": str(home)}, "models list"),
    }


@pytest.mark.parametrize("command", ["eval", "chat", "models"])
def test_an_unexpected_error_is_one_line_naming_its_cause(unexpected, command):
    args, env, where = unexpected[command]
    r = ragvl(*args, env={**env, "RAGVL_DEBUG": ""})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == f"ragvl: error: {where}: RecursionError: maximum recursion depth exceeded while decoding " \
                        "a JSON array from a unicode string (RAGVL_DEBUG=1 shows the traceback)", r.stderr
    assert "Traceback" not in r.stderr and all(not ln.startswith("ragvl: error") for ln in lines[:-1])
    debug = ragvl(*args, env={**env, "RAGVL_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "RecursionError" in debug.stderr


def test_each_short_flag_means_one_thing():
    from typer.main import get_command

    from ragvl.cli import app

    meaning: dict[str, set[str]] = {}

    def walk(cmd):
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)
        for p in getattr(cmd, "params", []):
            names = [*p.opts, *p.secondary_opts]
            longs = sorted(n for n in names if n.startswith("--"))
            for short in (n for n in names if len(n) == 2 and n[0] == "-" and n[1] != "-"):
                meaning.setdefault(short, set()).add(longs[0] if longs else short)

    walk(get_command(app))
    assert {s: ls for s, ls in meaning.items() if len(ls) > 1} == {}
    assert meaning["-i"] == {"--interactive"} and meaning["-k"] == {"--top-k"}


@pytest.mark.slow  # over 5 s: left out of the fast loop
def test_vision_cache_cap_is_in_gib(tmp_path, tiny_embedder):
    from ragvl.store.page_store import PageStore

    make_pdf(tmp_path / "docs" / "a.pdf", 1, seed=5)
    db = tmp_path / "db"
    r = ragvl("index", tmp_path / "docs", "--db", db, "--embedder", tiny_embedder, "--vision-cache-gib", "0.5", "-q")
    assert r.returncode == 0, r.stderr
    assert PageStore(db).meta["vision_cache"]["max_bytes"] == 512 * 1024 ** 2
    old = ragvl("index", tmp_path / "docs", "--db", db, "--embedder", tiny_embedder, "--vision-cache-gb", "1")
    assert old.returncode == 2 and "No such option: --vision-cache-gb" in old.stderr


def test_model_home_follows_xdg_cache_home(tmp_path, tiny_embedder, monkeypatch):
    from ragvl.fsutil import cache_home
    from ragvl.models.contract import models_dir

    xdg = tmp_path / "xdg"
    monkeypatch.delenv("RAGVL_HOME", raising=False)
    monkeypatch.delenv("RAGVL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert models_dir() == xdg / "ragvl" / "models" and cache_home() == xdg / "ragvl"
    monkeypatch.setenv("RAGVL_HOME", str(tmp_path / "home"))
    assert models_dir() == tmp_path / "home" / "models" and cache_home() == xdg / "ragvl"
    monkeypatch.delenv("RAGVL_HOME")
    shutil.copytree(tiny_embedder, xdg / "ragvl" / "models" / "colqwen2-tiny")
    r = ragvl("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert [(m["name"], m["path"]) for m in json.loads(r.stdout)] == \
        [("colqwen2-tiny", str(xdg / "ragvl" / "models" / "colqwen2-tiny"))]
