"""Embedding on a Ray cluster: the run stays in this process, the model runs on actors.

`RayEmbedding` is a PageEmbedding (ragvl.indexing.embedding): the one index run (run.py) plans,
renders every page in ragvl.ingest's worker process (page time limit, a MuPDF crash survived, a
bad page stored as skipped with its cause), commits, counts and stores vision features here, under
the index's writer lock; only the embedding of each rendered page is farmed out. So a run with
`--workers` writes what a single run writes, with every option (--prune, --reembed, the vision
cache, --no-wait) meaning the same.

Why the driver renders: rendering costs ~0.1 s a page against seconds of embedding, so one
process keeps up with many workers, and a page crosses the network once as its PNG (~200 KB)
rather than the whole document going to every worker. The alternative, workers rendering and
writing Lance fragments, would need every worker to reach the storage with credentials and
would split a document's commit across processes.

Faults: workers are actors with unlimited restarts, each task retried TASK_RETRIES times, so a
killed worker is replaced by Ray and its pages are embedded again; a page whose retries run out
fails its document (not committed: the next run embeds it again). A killed driver leaves every
committed batch, and the next run resumes as after any interrupted run.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ...errors import RagvlError, short
from ...models.contract import KIND_EMBEDDER, read_manifest
from ...models.runtime import ImageFeatures, embedder_id
from ..embedding import Embedded
from ..source import SourcePage
from .cluster import local_threads, ray_session
from .options import RayOptions

__all__ = ["RayEmbedding", "TASK_RETRIES"]

TASK_RETRIES = 3  # a page that kills this many workers in a row fails its document
IN_FLIGHT_PER_WORKER = 2  # one computing, one queued: workers never wait on the driver
# Test hook: RAGVL_TEST_KILL_WORKER_AT_PAGE=N makes the worker given the run's N-th page kill
# itself (once), so a test loses a worker mid-task at a known point instead of a polled one.
_KILL_ENV = "RAGVL_TEST_KILL_WORKER_AT_PAGE"


class RayEmbedding:
    """Pages embedded by Ray actors that each load the model at `folder` (on their own node).

    The embedder id comes from the manifest, so planning needs no cluster: Ray starts only when
    a run has pages to embed (`start`), and every worker must load a model with that id.
    """

    def __init__(self, folder: str | Path, opts: RayOptions, *, max_pixels: int, log: Callable[[str], None]):
        self.folder, self.opts, self.log = Path(folder), opts, log
        self.meta = {"id": embedder_id(read_manifest(self.folder, kind=KIND_EMBEDDER)),
                     "folder": str(self.folder.resolve()), "max_pixels": int(max_pixels)}
        self._stack: ExitStack | None = None
        self._pool: list = []
        self._info: dict = {}
        self._pids: list[int] = []  # each worker's process, to notice a restart
        self._next = 0
        raw = os.environ.get(_KILL_ENV, "")
        self._kill_at = int(raw) if raw.isdigit() else None

    # -- PageEmbedding ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._stack is not None:
            return
        self._stack = ExitStack()
        try:
            self._ray = self._stack.enter_context(ray_session(self.opts, self.log))
            self._start_workers()
        except BaseException:
            self.close()
            raise

    @property
    def vision_hash(self) -> str:
        return self._info["vision_hash"]

    @property
    def image_key(self) -> str:
        return self._info["image_key"]

    def embed_pages(self, pages: Iterable[SourcePage], *, vision: bool) -> Iterator[Embedded]:
        """Each page, in order: up to IN_FLIGHT_PER_WORKER pages per worker are in flight while
        the next ones render."""
        window: deque = deque()  # (page, ObjectRef or None for a skipped page, worker)
        limit = IN_FLIGHT_PER_WORKER * len(self._pool)
        for page in pages:
            ref, w = None, self._next % len(self._pool)
            if page.skip_reason is None:
                self._next += 1
                ref = self._pool[w].embed.remote(page.png, vision, self._next == self._kill_at)
            window.append((page, ref, w))
            while len(window) > limit:
                yield self._result(*window.popleft())
        while window:
            yield self._result(*window.popleft())

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._pool = self._stack, None, []
            stack.close()

    # -- the actors ------------------------------------------------------------------------------
    def _result(self, page: SourcePage, ref, w: int) -> Embedded:
        if ref is None:
            return page, None, None
        try:
            vectors, feats, grid, pid = self._ray.get(ref)
        except Exception as e:  # the task's retries ran out (workers kept dying on it)
            raise RagvlError(f"{page.path}: page {page.number}: the embedding worker died "
                             f"{TASK_RETRIES + 1} times ({short(e, 120)})") from None
        if pid != self._pids[w]:
            self.log(f"ray: embedding worker {w + 1} was restarted (pid {self._pids[w]} -> {pid}); "
                     "its pages were embedded again")
            self._pids[w] = pid
        return page, vectors, None if feats is None else ImageFeatures(feats, tuple(grid))

    def _start_workers(self) -> None:
        from .actor import PageWorker

        ray, opts = self._ray, self.opts
        threads = local_threads(opts)
        cpus = ray.cluster_resources().get("CPU", 0)
        workers = opts.workers if opts.workers is not None else max(1, int(cpus // threads))
        if workers * threads > cpus:
            raise RagvlError(f"the Ray cluster has {cpus:g} CPUs; {workers} workers x {threads} threads need "
                             f"{workers * threads}")
        gpus = ray.cluster_resources().get("GPU", 0)
        if opts.gpus_per_worker and workers * opts.gpus_per_worker > gpus:
            raise RagvlError(f"the Ray cluster has {gpus:g} GPUs; {workers} workers x {opts.gpus_per_worker:g} GPUs "
                             "are needed")
        actor = ray.remote(PageWorker).options(num_cpus=threads, num_gpus=opts.gpus_per_worker, max_restarts=-1,
                                               max_task_retries=TASK_RETRIES)
        device = "cuda" if opts.gpus_per_worker else None
        self._pool = [actor.remote(str(self.folder), threads, self.meta["max_pixels"], device)
                      for _ in range(workers)]
        try:
            infos = ray.get([w.info.remote() for w in self._pool])
        except Exception as e:  # the model folder is missing on a node, a bad model...
            raise RagvlError(f"embedding workers could not start: {short(getattr(e, 'cause', None) or e, 300)}") \
                from None
        ids = {i["embedder_id"] for i in infos}
        if ids != {self.meta["id"]}:
            raise RagvlError(f"the Ray workers loaded embedder {', '.join(sorted(ids))}, not {self.meta['id']} (the "
                             f"model at {self.folder} on this machine): install the same model on every node")
        self._info = infos[0]
        self._pids = [i["pid"] for i in infos]
        self.log(f"ray: {workers} embedding workers x {threads} threads ready")

