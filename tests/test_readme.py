"""Every `ragvl` command in README.md's shell blocks, run as a newcomer would, with tiny converted
models standing in for the pulled ones (`models pull` itself needs the network: it must fail fast)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_numpy import make_numpy_checkpoint, make_numpy_lora

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def readme_commands() -> list[str]:
    cmds = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("ragvl "):
                cmds.append(line)
    return cmds


def test_readme_has_the_three_commands():
    cmds = readme_commands()
    assert any(c.startswith("ragvl index sample_pdfs/") for c in cmds)
    assert any(c.startswith("ragvl ask ") for c in cmds)
    install = [ln for b in blocks("bash") for ln in b.splitlines() if "pip install" in ln]
    ci = (ROOT / ".ci" / "run").read_text()
    assert install and all(ln in ci for ln in install)
    test = re.search(r"## Test\n\n```bash\n(.*?)```", README, flags=re.S).group(1).strip()
    assert test == "scripts/test" and test in ci.split("# README: test", 1)[1]


def test_readme_walkthrough(tmp_path):
    """HOME is a temporary folder holding tiny stand-ins for the hub downloads."""
    home = tmp_path / "home"
    dl = home / "Downloads"
    make_numpy_checkpoint(dl / "Qwen2-VL-2B-Instruct", variant="a", max_pixels=28 * 28 * 256)
    base = make_numpy_checkpoint(dl / "colqwen2-base", variant="a", kind="colqwen2")
    make_numpy_lora(base, dl / "colqwen2-v1.0")
    work = tmp_path / "work"
    work.mkdir()
    (work / "sample_pdfs").symlink_to(ROOT / "sample_pdfs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGVL_")}
    # Offline, even on a connected machine: the hub client told so, and a proxy where nothing listens.
    env.update(HOME=str(home), HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1", HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    ragvl = [sys.executable, "-m", "ragvl.cli"]

    ran = []
    # the offline conversions first: they install what `pull` would have
    for cmd in sorted(readme_commands(), key=lambda c: ("convert" not in c, "index" not in c)):
        args = [str(home) + a[1:] if a.startswith("~") else a for a in shlex.split(cmd)[1:]]
        r = subprocess.run(ragvl + args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        ran.append(cmd)
        if args[:2] == ["models", "pull"]:
            assert r.returncode != 0 and "ragvl models convert" in r.stderr, r.stderr
            continue
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
        if args[0] == "ask":
            assert "Sources:" in r.stdout and ".pdf, page " in r.stdout
        if args[0] == "index":
            assert "4 new" in r.stderr.strip().splitlines()[-1]
    assert len(ran) == len(readme_commands())

    listed = json.loads(subprocess.run(ragvl + ["models", "list", "--json"], cwd=work, env=env,
                                       capture_output=True, text=True).stdout)
    assert {m["kind"] for m in listed if m["default"]} == {"qwen2-vl", "colqwen2"}

    # the Python API example, verbatim
    code = blocks("python")[0]
    r = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "sample_pdfs" in r.stdout
