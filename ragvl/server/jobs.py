"""Indexing jobs started from the web page: one at a time in a background thread, progress by id."""

from __future__ import annotations

import queue
import secrets
import threading
import time
import traceback
from pathlib import Path

from ..errors import RagvlError
from .service import Service

KEEP = 50  # finished jobs remembered


class Jobs:
    """`submit(paths)` -> a job id; `get(id)` -> its state: queued, running, done or failed."""

    def __init__(self, service: Service):
        self.service = service
        self._jobs: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._todo: queue.Queue = queue.Queue()
        # A daemon thread: stopping the server does not wait for a job (each document is its own
        # commit, so an interrupted job leaves a consistent index; indexing again finishes it).
        threading.Thread(target=self._worker, name="ragvl-index", daemon=True).start()

    def _worker(self) -> None:
        while True:
            self._run(*self._todo.get())

    def submit(self, paths: list[Path]) -> dict:
        job = {"id": secrets.token_hex(6), "paths": [str(p) for p in paths], "state": "queued", "done": 0,
               "total": None, "pages_per_min": None, "eta_s": None, "note": "", "summary": None, "error": None,
               "started": time.time()}
        with self._lock:
            self._jobs[job["id"]] = job
            for old in [j for j in self._jobs.values() if j["state"] in ("done", "failed")][:-KEEP]:
                del self._jobs[old["id"]]
        self._todo.put((job, paths))
        return dict(job)

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return dict(job) if job else None

    def active(self) -> list[dict]:
        with self._lock:
            return [dict(j) for j in self._jobs.values() if j["state"] in ("queued", "running")]

    def _update(self, job: dict, **fields) -> None:
        with self._lock:
            job.update(fields)

    def _run(self, job: dict, paths: list[Path]) -> None:
        self._update(job, state="running")

        def progress(bar) -> None:
            rate = bar.rate()
            eta = (bar.total - bar.done) / rate if rate > 0 else None
            self._update(job, done=bar.done, total=bar.total, note=bar.note,
                         pages_per_min=round(rate * 60, 1) if rate else None,
                         eta_s=round(eta, 1) if eta is not None else None)

        try:
            summary = self.service.index_paths(paths, progress)
            self._update(job, state="done", summary=summary.as_dict(), eta_s=0)
        except RagvlError as e:
            self._update(job, state="failed", error=str(e))
        except Exception:
            self.service.log(traceback.format_exc())
            self._update(job, state="failed", error="internal error while indexing (see the server log)")
