"""The driver of a distributed index run: plan as one process does, farm pages out, commit here.

One writer per run. Workers return rows (PNG + float16 vectors) and the driver commits each
document through the same PageStore method the single-process indexer uses, under the index's
writer lock. The alternative, workers writing Lance fragments that the driver commits once, would
save the rows' trip through the driver but needs every worker to reach the storage (with
credentials), splits a document's commit semantics across processes, and leaves orphan fragments
when a worker dies; at ColQwen2's cost per page (seconds of compute for ~200 KB of rows) the trip
through the driver is noise.

Faults: workers are actors with unlimited restarts and each task retried `TASK_RETRIES` times,
so a killed worker is replaced by Ray and its in-flight pages are recomputed; rows are keyed by
(document, page) and a document is committed once, when all its pages are in, so redone pages
never duplicate. A killed driver leaves every committed document whole (each is one commit) and
the next run's plan skips them as unchanged.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ...errors import RagvlError, os_error_cause
from ..run import IndexSummary, _Work, commit_document, finish_index, plan_index
from ...store import PageRow, PageStore, writer_lock
from ...ingest import DEFAULT_DPI
from ...progress import Progress
from .cluster import local_threads, ray_session
from .options import RayOptions

TASK_RETRIES = 3  # a page range that kills this many workers in a row fails its document
IN_FLIGHT_PER_WORKER = 2  # one computing, one queued: workers never wait on the driver


@dataclass
class _Doc:
    plan: _Work
    ref: object = None  # the bytes in Ray's object store
    rows: dict = field(default_factory=dict)
    waiting: int = 0
    error: str | None = None


def _start_workers(ray, embedder_folder: Path, opts: RayOptions, log: Callable[[str], None]) -> tuple[list, str]:
    from .actor import PageWorker

    threads = local_threads(opts)
    workers = opts.workers
    cpus = ray.cluster_resources().get("CPU", 0)
    if workers is None:
        workers = max(1, int(cpus // threads))
    if workers * threads > cpus:
        raise RagvlError(f"the Ray cluster has {cpus:g} CPUs; {workers} workers x {threads} threads need "
                         f"{workers * threads}")
    if opts.gpus_per_worker and workers * opts.gpus_per_worker > ray.cluster_resources().get("GPU", 0):
        raise RagvlError(f"the Ray cluster has {ray.cluster_resources().get('GPU', 0):g} GPUs; {workers} workers x "
                         f"{opts.gpus_per_worker:g} GPUs are needed")
    actor = ray.remote(PageWorker).options(num_cpus=threads, num_gpus=opts.gpus_per_worker, max_restarts=-1,
                                           max_task_retries=TASK_RETRIES)
    device = "cuda" if opts.gpus_per_worker else None
    pool = [actor.remote(str(embedder_folder), threads, device) for _ in range(workers)]
    try:
        infos = ray.get([w.info.remote() for w in pool])
    except Exception as e:  # the model folder is missing on a node, a bad model...
        cause = getattr(e, "cause", None) or e
        raise RagvlError(f"embedding workers could not start: {' '.join(str(cause).split())[:300]}") from None
    ids = {i["embedder_id"] for i in infos}
    if len(ids) != 1:
        raise RagvlError(f"workers loaded different embedders ({', '.join(sorted(ids))}): install the same "
                         f"model at {embedder_folder} on every node")
    log(f"ray: {workers} embedding workers x {threads} threads ready")
    return pool, ids.pop()


def index_on_ray(paths: Iterable[str | Path], db: str | Path, embedder_folder: Path, opts: RayOptions, *,
                 dpi: int = DEFAULT_DPI, log: Callable[[str], None], progress: bool = True,
                 on_progress: Callable[[int, int], None] | None = None) -> IndexSummary:
    """Bring the index `db` up to date with the PDFs under `paths`, embedding on Ray workers.

    The plan comes first, from the embedder's manifest alone: a run with nothing to embed never
    starts Ray. The workers then must load an embedder with the planned id.
    """
    from ...models.contract import KIND_EMBEDDER, read_manifest
    from ...models.runtime import MAX_PIXELS, embedder_id

    t0 = time.perf_counter()
    planned_id = embedder_id(read_manifest(embedder_folder, kind=KIND_EMBEDDER))
    with writer_lock(db, log=log) as lock:
        store = PageStore(db, create=True)
        meta = {"id": planned_id, "folder": str(Path(embedder_folder).resolve()), "max_pixels": MAX_PIXELS}
        plan = plan_index(paths, store, meta, dpi=dpi, log=log)
        if plan.work:
            with ray_session(opts, log) as ray:
                pool, worker_id = _start_workers(ray, embedder_folder, opts, log)
                if worker_id != planned_id:
                    raise RagvlError(f"the Ray workers loaded embedder {worker_id}, not {planned_id} (the model at "
                                     f"{embedder_folder} on this machine): install the same model on every node")
                _run(ray, pool, plan.work, store, plan.summary, planned_id, plan.dpi, opts, log, progress, on_progress,
                     check=getattr(lock, "check", lambda: None))
        finish_index(plan, store)
    plan.summary.seconds = time.perf_counter() - t0
    return plan.summary


def _run(ray, pool, todo: list[_Work], store: PageStore, summary: IndexSummary, embedder_id: str,
         dpi: int, opts: RayOptions, log, progress: bool, on_progress, check) -> None:
    bar = Progress(sum(d.n_todo for d in todo), enabled=progress)
    load = {i: 0 for i in range(len(pool))}  # tasks in flight per worker
    inflight: dict = {}  # ObjectRef -> (doc, pages, worker index)
    tasks = _tasks(todo, opts.pages_per_task)
    docs_open = 0
    max_docs = 2 * len(pool)  # bounds the bytes held in the object store
    pending: list = []  # tasks of the document being loaded

    def fail(d: _Doc, message: str) -> None:
        if d.error is None:
            d.error = message
            summary.failed.append((str(d.plan.path), message))
            log(f"skipped: {message}")

    def finish(d: _Doc) -> None:
        nonlocal docs_open
        docs_open -= 1
        d.ref = None  # frees the bytes in the object store
        if d.error is not None:
            return
        rows = [PageRow(p, w, h, png, vec, text=text) for p, w, h, png, vec, text in (d.rows[k] for k in sorted(d.rows))]
        check()  # a writer that lost its lease stops: it commits nothing more
        try:
            commit_document(store, d.plan, rows, summary)  # the document's commit, as in one process
        except RagvlError as e:
            fail(d, str(e))

    try:
        while True:
            # Hand out work while workers have room.
            while min(load.values()) < IN_FLIGHT_PER_WORKER:
                if not pending:
                    if docs_open >= max_docs:
                        break
                    nxt = next(tasks, None)
                    if nxt is None:
                        break
                    d, ranges = nxt
                    try:
                        d.ref = ray.put(_read(d.plan))  # local bytes -> the object store, once per document
                    except RagvlError as e:
                        fail(d, str(e))
                        bar.update(d.plan.n_todo)  # its pages will not come: the total stays true
                        continue
                    docs_open += 1
                    d.waiting = len(ranges)
                    pending = [(d, r) for r in ranges]
                d, pages = pending.pop(0)
                w = min(load, key=load.get)
                ref = pool[w].embed.remote(d.ref, str(d.plan.path), d.plan.sha256, pages, dpi)
                inflight[ref] = (d, pages, w)
                load[w] += 1
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                d, pages, w = inflight.pop(ref)
                load[w] -= 1
                try:
                    status, value = ray.get(ref)
                except Exception as e:  # the task's retries ran out (workers kept dying on it)
                    status, value = "error", (f"{d.plan.path}: pages {pages[0] + 1}-{pages[-1] + 1}: embedding "
                                              f"worker died {TASK_RETRIES + 1} times ({type(e).__name__})")
                if status == "ok":
                    for row in value:
                        d.rows[row[0]] = row
                else:
                    fail(d, value)
                bar.note = d.plan.path.name
                bar.update(len(pages))
                if on_progress is not None:
                    on_progress(bar.done, bar.total)
                d.waiting -= 1
                if d.waiting == 0:
                    finish(d)
    finally:
        bar.close()


def _tasks(todo: list[_Work], per_task: int):
    for p in todo:
        left = [i for i in range(p.fields.n_pages) if i + 1 not in p.done]  # 0-based; resumes a cut-short run
        yield _Doc(p), [left[i:i + per_task] for i in range(0, len(left), per_task)]


def _read(p: _Work) -> bytes:
    """The document's bytes, checked against the planned hash (as the single-process run checks)."""
    try:
        data = p.path.read_bytes()
    except OSError as e:
        raise RagvlError(f"{p.path}: {os_error_cause(e)}") from None
    if hashlib.sha256(data).hexdigest() != p.sha256:
        raise RagvlError(f"{p.path}: changed while being indexed; run again")
    return data
