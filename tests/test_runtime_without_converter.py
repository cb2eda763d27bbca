"""The runtime never imports the converter: run time needs only model folders converted beforehand.

Checked by running `ragvl index`, `search` and `ask` in a process where importing the converter
raises (tests/test_layers.py checks the sources statically).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

ROOT = Path(__file__).resolve().parents[1]
CONVERTER = "ragvl.models.converter"

# Runs `python -m ragvl.cli ARGS...` with an import hook that refuses the converter package. The hook
# also leaves a line on stderr, so an import attempt swallowed by an `except ImportError` still shows.
BLOCKED_CLI = textwrap.dedent(f"""
    import runpy, sys

    class BlockConverter:
        def find_spec(self, name, path=None, target=None):
            if name == {CONVERTER!r} or name.startswith({CONVERTER + "."!r}):
                print(f"BLOCKED IMPORT {{name}}", file=sys.stderr, flush=True)
                raise ImportError(f"{{name}} is blocked: the runtime must not import the converter")
            return None

    sys.meta_path.insert(0, BlockConverter())
    sys.argv = ["ragvl", *sys.argv[1:]]
    runpy.run_module("ragvl.cli", run_name="__main__", alter_sys=True)
""")


def test_index_search_ask_with_the_converter_blocked(tmp_path, np_embedder, np_answerer):
    """Model folders converted beforehand (the session fixtures); then every run-time command, in a
    process that cannot import the converter."""
    docs = tmp_path / "docs"
    for i in range(2):
        make_pdf(docs / f"r{i}.pdf", 2, seed=30 + i)
    env = {**os.environ, "RAGVL_HOME": str(tmp_path / "home")}

    def ragvl(*args):
        r = subprocess.run([sys.executable, "-c", BLOCKED_CLI, *map(str, args)], capture_output=True, text=True,
                           env=env, timeout=600)
        assert "BLOCKED IMPORT" not in r.stderr, r.stderr
        assert r.returncode == 0, r.stderr
        return r

    db = tmp_path / "db"
    ragvl("index", docs, "--db", db, "--embedder", np_embedder, "-q")
    hits = json.loads(ragvl("search", "revenue", "-k", 3, "--db", db, "--embedder", np_embedder, "--json").stdout)
    assert len(hits) == 3 and {Path(h["path"]).name for h in hits} <= {"r0.pdf", "r1.pdf"}
    out = json.loads(ragvl("ask", "What grew?", "-k", 2, "--db", db, "--embedder", np_embedder,
                           "--answerer", np_answerer, "-n", 4, "--json").stdout)
    assert len(out["sources"]) == 2 and isinstance(out["answer"], str)

    # The hook does block: the same process refuses `models convert`.
    r = subprocess.run([sys.executable, "-c", BLOCKED_CLI, "models", "convert", np_answerer.parent / "ckpt",
                        tmp_path / "out"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and f"BLOCKED IMPORT {CONVERTER}" in r.stderr
