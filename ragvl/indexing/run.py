"""`ragvl index`: documents -> page images -> multi-vectors -> the LanceDB page table.

One run, whoever embeds (this process or Ray actors, see embedding.py), under the writer lock:
- plan (plan.py): new, changed, unchanged, copies of stored documents, failed, gone;
- every page is rendered in ragvl.ingest's worker process, with a time limit: a page that is
  corrupt, hangs or crashes MuPDF is stored as skipped with its cause (named in the summary and
  by `ragvl status`), and the others are still indexed;
- a new or changed document is embedded page by page and committed in bounded batches
  (BATCH_PAGES pages or BATCH_BYTES bytes) as a new generation that searches do not see, then
  switched live in one commit (store.switch); a run killed mid-document resumes at its last
  committed batch;
- a document identical to one already embedded (the same content, dpi and embedder) gets a copy
  of its rows: embedded once, listed under every path;
- each embedded page's vision features go to the VisionCache (unless its cap is 0);
- at the end, the documents gone are removed and the tables maintained.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import RagvlError, short
from ..fsutil import sha256_file
from ..ingest import Renderer
from ..progress import Progress
from ..retrieval import ensure_text_index
from ..store import PageRow, PageStore, Producer, VisionCache, page_id
from .embedding import PageEmbedding, as_embedding
from .maintain import maintain
from .plan import IndexPlan, IndexSummary, Work, plan_index
from .source import open_source

__all__ = ["index_paths", "BATCH_PAGES", "BATCH_BYTES"]

BATCH_PAGES = 32
BATCH_BYTES = 256 << 20  # PNG + float16 vectors of one batch
# Stored vision features are written every this many pages (float32 until then: ~5 MB a page at
# the 2B shape), not per document, so a long document never holds them all in memory.
VISION_FLUSH_PAGES = 16


def _test_pause(pages_seen: int) -> None:
    """Test hook: with RAGVL_TEST_PAUSE_AFTER_PAGES=N, stop for good after the N-th page is embedded
    (before its batch is committed) and say so on stderr, so that a test kills the run at a
    known point instead of guessing one with a timer."""
    if os.environ.get("RAGVL_TEST_PAUSE_AFTER_PAGES") == str(pages_seen):
        print(f"ragvl-test: paused after {pages_seen} pages", file=sys.stderr, flush=True)
        time.sleep(3600)


def index_paths(paths: Iterable[str | Path], store: PageStore, embedder, *, dpi: int | None = None,
                prune: bool = False, reembed: bool = False, log: Callable[[str], None] | None = None,
                progress: bool = True, batch_pages: int = BATCH_PAGES, batch_bytes: int = BATCH_BYTES,
                on_progress: Callable[[Progress], None] | None = None,
                vision: VisionCache | None = None, check: Callable[[], None] = lambda: None) -> IndexSummary:
    """Bring the index up to date with the PDFs and image files under `paths`; returns what happened.

    `embedder`: a model (embedded in this process) or a PageEmbedding (e.g. Ray actors, started
    only when there are pages to embed). The caller holds the index's writer lock
    (ragvl.store.writer_lock), as Index.index does. `on_progress(bar)` is called once the plan
    is made and after every page (the web server's jobs). With `vision`, each embedded page's
    vision tower output is kept there for the answer model (unless its cap is 0), and the
    features of pages no longer indexed are dropped. `check()` runs before every commit (the
    writer lock's: it raises once an object-storage lease was lost).
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    embedding = as_embedding(embedder)
    report = on_progress or (lambda b: None)
    with Renderer() as renderer:
        plan = plan_index(paths, store, embedding.meta, renderer=renderer, dpi=dpi, prune=prune, reembed=reembed,
                          log=log)
        summary = plan.summary
        if plan.work:
            if plan.total_pages:
                embedding.start()
            keep = vision is not None and vision.max_bytes > 0 and plan.total_pages > 0
            producer = Producer(embedding.vision_hash, embedding.image_key, embedding.meta["max_pixels"]) \
                if keep else None
            run = _Run(store, embedding, plan, Progress(plan.total_pages, enabled=progress), log, report,
                       vision if keep else None, producer, batch_pages, batch_bytes, check)
            report(run.bar)
            try:
                for w in plan.work:
                    run.document(w, renderer)
            finally:
                run.bar.close()
                run.flush_vision()
    store.remove_documents(plan.gone)
    summary.removed = [str(store.resolve(d)) for d in plan.gone]
    if summary.new or summary.changed or plan.gone:
        maintain(store)
    else:
        ensure_text_index(store)  # an index from before full-text search gets one from its next writer
    if vision is not None:
        t = store.scan(["doc_sha256", "page"])
        _vision_safely(log, vision.prune, {page_id(s, p) for s, p in zip(t["doc_sha256"].to_pylist(),
                                                                         t["page"].to_pylist())})
    summary.seconds = time.perf_counter() - t0
    return summary


def _vision_safely(log, call, *args) -> None:
    """Stored vision features are a cache: a failure to write them costs that cache, never the run."""
    try:
        call(*args)
    except Exception as e:  # noqa: BLE001 - whatever LanceDB raises, the pages are committed already
        log(f"note: the stored vision features were not updated ({short(e, 200)}); `ask` encodes those pages")


@dataclass
class _Run:
    """One run's document loop: copy or embed, batch, commit, count, report."""

    store: PageStore
    embedding: PageEmbedding
    plan: IndexPlan
    bar: Progress
    log: Callable[[str], None]
    report: Callable[[Progress], None]
    vision: VisionCache | None
    producer: Producer | None
    batch_pages: int
    batch_bytes: int
    check: Callable[[], None]
    pages_seen: int = 0
    pending_vision: list = field(default_factory=list)  # (page_id, ImageFeatures) not yet stored

    def flush_vision(self) -> None:
        if self.vision is not None and self.pending_vision:
            _vision_safely(self.log, self.vision.put, self.pending_vision, self.producer)
        self.pending_vision = []

    def document(self, w: Work, renderer: Renderer) -> None:
        """Write one planned document (a failure is counted in the summary and logged)."""
        try:
            source = self.plan.copies.get(w.fields.generation)
            if source is not None and not w.done:
                self._copy(w, source)
            else:
                self._embed(w, renderer)
        except RagvlError as e:
            self.plan.summary.failed.append((str(w.path), str(e)))
            self.log(f"skipped: {e}")
            return
        w.record(self.plan.summary)
        self.plan.copies.setdefault(w.fields.generation, w.stored)  # later identical documents copy it

    def _copy(self, w: Work, source: str) -> None:
        """The rows of the identical document stored at `source`, under `w`'s path: no rendering
        or embedding (its vision features, keyed by page id, are the same pages')."""
        rows = self.store.generation_rows(source, w.fields.generation)
        self._commit(w, rows, marked=False, last=True)
        self.plan.summary.copied += sum(1 for r in rows if r.skip_reason is None)
        self._count_skipped(w, rows)

    def _embed(self, w: Work, renderer: Renderer) -> None:
        summary = self.plan.summary
        src = open_source(w.info, renderer)
        if w.done:
            self.log(f"resuming {w.path} after {len(w.done)} of {src.n_pages} pages committed by an earlier run")
        marked = w.fields.generation in (w.doc.pending if w.doc else {})  # resuming: the marker is there
        batch: list[PageRow] = []
        nbytes = 0
        self.bar.note = w.path.name
        for page, vectors, feats in self.embedding.embed_pages(src.pages(self.plan.dpi, skip=w.done),
                                                               vision=self.vision is not None):
            if page.skip_reason is not None:
                row = PageRow(page.number, text=page.text, skip_reason=page.skip_reason)
                self.log(f"skipped: {w.path}: page {page.number}: {page.skip_reason}")
                self._count_skipped(w, [row])
            else:
                row = PageRow(page.number, page.width, page.height, page.png, vectors, page.text)
                summary.pages += 1
                if feats is not None:
                    self.pending_vision.append((page_id(w.sha256, page.number), feats))
                    if len(self.pending_vision) >= VISION_FLUSH_PAGES:
                        self.flush_vision()
            batch.append(row)
            nbytes += len(row.image_png) + (row.vectors.nbytes if row.vectors is not None else 0)
            self.bar.update()
            self.report(self.bar)
            self.pages_seen += 1
            _test_pause(self.pages_seen)
            if len(batch) >= self.batch_pages or nbytes >= self.batch_bytes:
                marked = self._commit(w, batch, marked=marked, last=False)  # resumable from here
                batch, nbytes = [], 0
        self._commit(w, batch, marked=marked, last=True)

    def _commit(self, w: Work, rows: list[PageRow], *, marked: bool, last: bool) -> bool:
        """Commit some of `w`'s rows; `last`: they complete it, and it becomes the searched version.

        A document new to the index and written in one go is one commit, searchable at once;
        otherwise the first batch opens a pending generation (`marked` once it has) and the
        switch is the commit point. Returns `marked`.
        """
        if last and sha256_file(w.path) != w.sha256:
            raise RagvlError(f"{w.path}: changed while being indexed; run again")
        self.check()
        if last and w.doc is None and not marked:
            self.store.add_pages(w.stored, w.fields, rows)
            return marked
        self.store.add_pages(w.stored, w.fields, rows, start_pending=not marked)
        if last:
            self.store.switch(w.stored, w.fields.generation)
        return True

    def _count_skipped(self, w: Work, rows: list[PageRow]) -> None:
        self.plan.summary.skipped_pages += [(str(w.path), r.page, r.skip_reason) for r in rows if r.skip_reason]
