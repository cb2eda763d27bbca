"""Helpers for the scale-out tests: a local S3 server, a local Ray head, the rows of an index."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ragvl.store.page_store import PageStore

COLUMNS = ["key", "doc_path", "doc_sha256", "page", "width", "height", "image_png", "n_vectors", "vectors",
           "embedder"]


def all_rows(db) -> dict:
    """{key: every stored column} of an index; fails on a duplicated page."""
    out: dict = {}
    for r in PageStore(db).scan(COLUMNS).to_pylist():
        assert r["key"] not in out, f"page stored twice: {r['key']}"
        out[r["key"]] = r
    return out


def ragvl(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server():
    """moto's S3 server on 127.0.0.1 (in this process) with a bucket "bkt"; yields the AWS_* env."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket="bkt")
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@dataclass
class RayHead:
    address: str
    env: dict  # what a driver needs to join (the cluster's auth token)
    pid: int  # the process group leader


@contextmanager
def ray_head(tmp: Path, hide: Path | None = None, home: Path | None = None):
    """`ray start --head` in its own process group (temp dir under /tmp: socket paths are short).

    `hide`: a folder the cluster's processes cannot see (a tmpfs mounted over it in a private
    mount namespace, as on another machine); needs root and unshare. `home`: instead of the token
    in the environment, Ray's defaults with HOME=home (token authentication is on when
    home/.ray/auth_token exists; RayHead.env is then just HOME). Yields a RayHead. Stopped by its
    pid, never `ray stop` (which ends every Ray on the machine).
    """
    port = free_port()
    temp = Path(f"/tmp/rg{uuid.uuid4().hex[:6]}")
    if home is None:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
               "RAY_USAGE_STATS_ENABLED": "0"}
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "start", "--head", "--block", "--port", str(port), "--temp-dir", str(temp), "--num-cpus", "2",
           "--include-dashboard=false", "--disable-usage-stats"]
    if hide is not None:
        cmd = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(hide), *cmd]
    log = open(tmp / "ray-head.log", "wb")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while b"Ray runtime started" not in (tmp / "ray-head.log").read_bytes():
            assert p.poll() is None and time.time() < deadline, (tmp / "ray-head.log").read_text()[-2000:]
            time.sleep(0.5)
        joins = ("HOME",) if home is not None else ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
        yield RayHead(f"127.0.0.1:{port}", {k: env[k] for k in joins}, p.pid)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
