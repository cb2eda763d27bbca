"""Start `ragvl serve` / read its URL, for the server tests (a real uvicorn on a free 127.0.0.1 port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx


class Served:
    """A `ragvl serve` subprocess; `url` is what it printed (with ?token= when it has one)."""

    def __init__(self, *args, cwd=None, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "ragvl.cli", "serve", "--port", "0", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            raise AssertionError(f"ragvl serve did not start: {line!r} {self.stop()}")
        self.url = line.split()[-1]
        self.base = self.url.split("?")[0].rstrip("/")
        self.port = int(self.base.rsplit(":", 1)[1])
        deadline = time.time() + 30
        while True:
            try:
                httpx.get(self.base + "/api/status", timeout=5)
                break
            except httpx.TransportError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=120, **kw)

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.stderr.read()


def sse_events(response: httpx.Response) -> list[tuple[str, object]]:
    """The (event, data) pairs of a server-sent event stream, read to its end."""
    import json

    out, name, data = [], "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line == "" and data:
            out.append((name, json.loads("\n".join(data))))
            name, data = "message", []
    return out
