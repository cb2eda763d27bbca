"""`ragvl index --ray-address 127.0.0.1:PORT` joins a cluster started by plain `ray start --head`.

Ray 2.60's `ray start` turns token authentication on when a token lies in Ray's default place
(~/.ray/auth_token: any local `ray.init()` leaves one there); a driver given an explicit address
must then use it as `ray.init(address="auto")` would, with no variable to set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragvl.store.page_store import PageStore
from scale_helpers import ray_head
from tiny_pdfs import make_pdf

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # starts a Ray cluster with `ray start --head`

pytest.importorskip("ray")

RAY = str(Path(sys.executable).with_name("ray"))


def test_explicit_address_joins_a_token_cluster_started_with_defaults(tmp_path, tiny_embedder):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    # The token where Ray keeps it, as a local ray.init() leaves it.
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    assert (home / ".ray" / "auth_token").is_file()
    make_pdf(tmp_path / "docs" / "a.pdf", 1, seed=3)
    db = tmp_path / "db"
    with ray_head(tmp_path, home=home) as head:
        assert b"Token authentication is enabled" in (tmp_path / "ray-head.log").read_bytes()
        assert head.address.startswith("127.0.0.1:")
        r = subprocess.run([sys.executable, "-m", "ragvl.cli", "index", str(tmp_path / "docs"), "--db", str(db),
                            "--embedder", str(tiny_embedder), "--ray-address", head.address, "--workers", "1",
                            "--threads-per-worker", "1", "-q"],
                           capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert f"joined cluster {head.address}" in r.stderr
    assert PageStore(db).count() == 1
