"""`ragvl index`: PDFs and image files -> page images -> ColQwen2 multi-vectors -> the LanceDB page table.

Planning (one process, under the writer lock, see lock.py):
- a document whose size and mtime equal the stored ones is unchanged without being read;
  otherwise it is hashed, and it is unchanged if its sha256, dpi and embedder are the stored ones;
- a new or changed document is rendered and embedded page by page, committed in bounded
  batches (BATCH_PAGES pages or BATCH_BYTES bytes) as a new generation that searches do not
  see, then switched live in one commit (store.switch); the old generation stays searchable
  until then. A run killed mid-document resumes at its last committed batch;
- documents gone from a folder being indexed are removed; `prune` also removes every indexed
  document whose file is gone; `reembed` redoes every document not embedded by this embedder.
A file that cannot be read is reported and skipped; a page that cannot be rendered (corrupt, or it
hangs or crashes MuPDF in the render worker) is stored as skipped (named in the summary and by
`ragvl status`); the others are still indexed. The Ray driver (ragvl.indexing.distributed) plans with
`plan_index` and commits with `commit_document`, so both indexers decide and write alike.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
from PIL import Image

from ..errors import RagvlError
from ..fsutil import sha256_file
from ..ingest import DEFAULT_DPI, Renderer, find_documents, open_document, png_bytes
from ..progress import Progress
from ..store import DocFields, Document, K_DPI, K_EMBEDDER, PageRow, PageStore, Producer, VisionCache, page_id
from .source import open_source

BATCH_PAGES = 32
BATCH_BYTES = 256 << 20  # PNG + float16 vectors of one batch
# Stored vision features are written every this many pages (float32 until then: ~5 MB a page at
# the 2B shape), not per document, so a long document never holds them all in memory.
VISION_FLUSH_PAGES = 16


class PageEmbedder(Protocol):
    """What indexing needs from an embedder (ragvl.models.runtime.colqwen2.ColQwen2)."""

    id: str
    vision_hash: str
    image_key: str
    max_pixels: int

    def embed_images(self, images: Sequence[Image.Image], *, vision_out: list | None = None) -> list[np.ndarray]: ...


@dataclass
class IndexSummary:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped_pages: list[tuple[str, int, str]] = field(default_factory=list)  # (path, page, reason)
    pages: int = 0  # pages embedded in this run
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped_pages

    def line(self) -> str:
        skipped = f", {len(self.skipped_pages)} pages skipped" if self.skipped_pages else ""
        return (f"documents: {len(self.new)} new, {len(self.changed)} changed, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed, {len(self.failed)} failed; {self.pages} pages embedded{skipped} "
                f"in {self.seconds:.1f}s")

    def as_dict(self) -> dict:
        return {"new": self.new, "changed": self.changed, "unchanged": self.unchanged, "removed": self.removed,
                "failed": [{"path": p, "reason": r} for p, r in self.failed],
                "skipped_pages": [{"path": p, "page": n, "reason": r} for p, n, r in self.skipped_pages],
                "pages": self.pages, "seconds": round(self.seconds, 3)}


@dataclass
class _Work:
    """One document to embed: the file, how the index stores it, and what the index has of it."""

    path: Path  # the file
    stored: str  # its path in the index
    sha256: str
    doc: Document | None  # what the index has under `stored`
    explicit: bool
    size: int
    mtime_ns: int
    fields: DocFields | None = None  # every row's fields (set by plan_index)
    done: set = field(default_factory=set)  # pages committed by an earlier, interrupted run
    n_todo: int = 0  # pages left to embed


def _embedder_meta(embedder) -> dict:
    folder = getattr(embedder, "folder", None)
    return {"id": embedder.id, "folder": str(Path(folder).resolve()) if folder else None,
            "max_pixels": getattr(embedder, "max_pixels", None)}


def _test_pause(pages_seen: int) -> None:
    """Test hook: with RAGVL_TEST_PAUSE_AFTER_PAGES=N, stop for good after the N-th page is embedded
    (before its batch is committed) and say so on stderr, so that a test kills the run at a
    known point instead of guessing one with a timer."""
    if os.environ.get("RAGVL_TEST_PAUSE_AFTER_PAGES") == str(pages_seen):
        print(f"ragvl-test: paused after {pages_seen} pages", file=sys.stderr, flush=True)
        time.sleep(3600)


def embed_page(doc, index: int, dpi: int, embedder: PageEmbedder) -> PageRow:
    """Render the page at 0-based `index` in this process and embed exactly the stored pixels (a
    Ray worker's way; the single-process indexer renders in ragvl.ingest's worker process)."""
    import io

    png = png_bytes(doc.render_page(index, dpi))
    with Image.open(io.BytesIO(png)) as im:
        image = im.convert("RGB")
    vectors = embedder.embed_images([image])[0]  # (n, 128)
    return PageRow(index + 1, image.width, image.height, png, vectors.astype(np.float16),
                   doc.page_text(index) or None)


@dataclass
class IndexPlan:
    """What a run will do: the documents to embed (with their page counts) and the indexed
    documents to remove at the end. Both indexers (this process, the Ray driver) plan with
    `plan_index`, so they decide alike what is unchanged, changed, new, failed and removed."""

    work: list[_Work]
    gone: list[str]  # stored paths
    summary: IndexSummary
    dpi: int
    embedder_id: str

    @property
    def total_pages(self) -> int:
        return sum(w.n_todo for w in self.work)


def plan_index(paths: Iterable[str | Path], store: PageStore, embedder_meta: dict, *, dpi: int | None = None,
               prune: bool = False, reembed: bool = False, log: Callable[[str], None],
               renderer: Renderer | None = None) -> IndexPlan:
    """Check the embedder, record the index's metadata, and sort the documents under `paths`.

    `embedder_meta`: {"id", "folder", "max_pixels"} of the embedder. `renderer`: open documents
    in the render worker (a file that crashes MuPDF costs nothing); else in this process.
    """
    paths = [Path(p) for p in paths]
    docs = find_documents(paths)  # a missing path is an error before any work
    explicit = {Path(os.path.abspath(p)).resolve() for p in paths if not p.is_dir()}
    embedder_id = embedder_meta["id"]
    if not reembed:
        store.check_embedder(embedder_id)
    target_dpi = int(dpi or store.dpi or DEFAULT_DPI)
    if dpi and store.dpi and int(dpi) != store.dpi:
        log(f"note: {store.name} was rendered at {store.dpi} dpi; documents indexed now are re-rendered at "
            f"{dpi} dpi, which becomes the index's default")
    meta = {}
    if store.embedder != embedder_id or not (store.meta.get(K_EMBEDDER) or {}).get("folder"):
        meta[K_EMBEDDER] = embedder_meta
    if store.dpi != target_dpi:
        meta[K_DPI] = target_dpi
    store.write_meta(**meta)

    indexed = store.documents()
    summary = IndexSummary()
    work = _plan(docs, explicit, indexed, store, embedder_id, target_dpi, summary, log)
    if reembed:  # also every indexed document outside `paths` that another embedder made
        planned = {w.stored for w in work} | {store.stored_path(p) for p in summary.unchanged}
        for d in list(indexed.values()):
            if d.sha256 and d.path not in planned and d.embedders != {embedder_id}:
                _plan_file(store.resolve(d.path), d.explicit, indexed, store, embedder_id, target_dpi, summary,
                           log, work, force=True)

    # Page counts and metadata first: they are the progress bar's total and every row's fields.
    for w in list(work):
        try:
            if renderer is not None:
                src = open_source(w.path, renderer)
                n_pages, metadata = src.n_pages, src.metadata
            else:
                with open_document(w.path) as doc:
                    n_pages, metadata = doc.page_count, doc.metadata.as_dict()
        except RagvlError as e:
            work.remove(w)
            summary.failed.append((str(w.path), str(e)))
            log(f"skipped: {e}")
            continue
        metadata = {k: metadata.get(k) for k in ("title", "author", "subject", "created", "modified")}
        w.fields = DocFields(w.sha256, n_pages, embedder_id, target_dpi, w.size, w.mtime_ns, w.explicit, metadata)
        w.done = set(w.doc.pending.get(w.fields.generation, ())) if w.doc else set()
        w.n_todo = n_pages - len(w.done)

    # Documents that vanished from a folder we were asked to index, or (prune) from anywhere.
    found = {store.stored_path(p) for p in docs}
    folders = [p.resolve() for p in paths if p.is_dir()]
    gone = sorted(d for d in indexed if d not in found and not store.resolve(d).exists()
                  and (prune or any(store.resolve(d).is_relative_to(f) for f in folders)))
    return IndexPlan(work, gone, summary, target_dpi, embedder_id)


def finish_index(plan: IndexPlan, store: PageStore) -> None:
    """Remove the documents that vanished (one commit) after every new page is in; then, if
    anything changed, maintain the table (compaction, old versions, the full-text index)."""
    store.remove_documents(plan.gone)
    plan.summary.removed = [str(store.resolve(d)) for d in plan.gone]
    if plan.summary.new or plan.summary.changed or plan.gone:
        from .maintain import maintain

        maintain(store)


def commit_document(store: PageStore, w: _Work, rows: list[PageRow], summary: IndexSummary) -> None:
    """Commit a whole document's rows at once (the Ray driver's way): one commit for a new
    document, else its batch and then the switch that makes it the searched version."""
    if sha256_file(w.path) != w.sha256:
        raise RagvlError(f"{w.path}: changed while being indexed; run again")
    marked = bool(w.doc) and w.fields.generation in w.doc.pending
    if w.doc is None:
        store.add_pages(w.stored, w.fields, rows)
    else:
        store.add_pages(w.stored, w.fields, rows, start_pending=not marked)
        store.switch(w.stored, w.fields.generation)
    summary.pages += sum(1 for r in rows if r.skip_reason is None)
    summary.skipped_pages += [(str(w.path), r.page, r.skip_reason) for r in rows if r.skip_reason]
    (summary.changed if w.doc and w.doc.sha256 else summary.new).append(str(w.path))


def index_paths(paths: Iterable[str | Path], store: PageStore, embedder: PageEmbedder, *, dpi: int | None = None,
                prune: bool = False, reembed: bool = False, log: Callable[[str], None] | None = None,
                progress: bool = True, batch_pages: int = BATCH_PAGES, batch_bytes: int = BATCH_BYTES,
                on_progress: Callable[[Progress], None] | None = None,
                vision: VisionCache | None = None) -> IndexSummary:
    """Bring the index up to date with the PDFs and image files under `paths`; returns what happened.

    The caller holds the index's writer lock (ragvl.store.lock.writer_lock), as Index.index does.
    `on_progress(bar)` is called once the plan is made and after every page (the web server's jobs).
    With `vision`, each embedded page's vision tower output is kept there for the answer model
    (unless its cap is 0), and the features of pages no longer indexed are dropped.
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    report = on_progress or (lambda b: None)
    # Rendering happens in ragvl.ingest's worker process: a time limit per page; a page that hangs
    # or crashes MuPDF is skipped and named, never the run.
    with Renderer() as renderer:
        plan = plan_index(paths, store, _embedder_meta(embedder), dpi=dpi, prune=prune, reembed=reembed, log=log,
                          renderer=renderer)
        summary = plan.summary
        keep = vision is not None and vision.max_bytes > 0
        producer = Producer(embedder.vision_hash, embedder.image_key, embedder.max_pixels) if keep else None
        run = _Run(store, embedder, Progress(plan.total_pages, enabled=progress), summary, log, report,
                   vision if keep else None, producer, batch_pages, batch_bytes)
        report(run.bar)
        for w in plan.work:
            try:
                run.document(w, open_source(w.path, renderer), plan.dpi)
            except RagvlError as e:
                summary.failed.append((str(w.path), str(e)))
                log(f"skipped: {e}")
                continue
            (summary.changed if w.doc and w.doc.sha256 else summary.new).append(str(w.path))
        run.bar.close()
        run.flush_vision()

    finish_index(plan, store)
    if vision is not None:
        t = store.scan(["doc_sha256", "page"])
        vision.prune({page_id(s, p) for s, p in zip(t["doc_sha256"].to_pylist(), t["page"].to_pylist())})
    summary.seconds = time.perf_counter() - t0
    return summary


@dataclass
class _Run:
    """One single-process run's page loop: embed, batch, commit, report."""

    store: PageStore
    embedder: PageEmbedder
    bar: Progress
    summary: IndexSummary
    log: Callable[[str], None]
    report: Callable[[Progress], None]
    vision: VisionCache | None
    producer: Producer | None
    batch_pages: int
    batch_bytes: int
    pages_seen: int = 0
    pending_vision: list = field(default_factory=list)  # (page_id, ImageFeatures) not yet stored

    def flush_vision(self) -> None:
        if self.vision is not None and self.pending_vision:
            self.vision.put(self.pending_vision, self.producer)
        self.pending_vision = []

    def embed(self, w: _Work, page) -> PageRow:
        feats: list = []
        image = page.image  # the stored pixels, decoded: embedded exactly as stored
        vectors = (self.embedder.embed_images([image], vision_out=feats) if self.vision is not None
                   else self.embedder.embed_images([image]))[0]
        if feats:
            self.pending_vision.append((page_id(w.sha256, page.number), feats[0]))
            if len(self.pending_vision) >= VISION_FLUSH_PAGES:
                self.flush_vision()
        return PageRow(page.number, page.width, page.height, page.png, vectors.astype(np.float16), page.text)

    def document(self, w: _Work, src, dpi: int) -> None:
        store, fields, summary = self.store, w.fields, self.summary
        if w.done:
            self.log(f"resuming {w.path} after {len(w.done)} of {src.n_pages} pages committed by an earlier run")
        fresh = w.doc is None  # no rows at all under this path: a single batch may be searchable at once
        marked = fields.generation in (w.doc.pending if w.doc else {})  # resuming: the marker is there
        batch: list[PageRow] = []
        nbytes = 0
        self.bar.note = w.path.name
        for page in src.pages(dpi, skip=w.done):
            if page.skip_reason is not None:
                row = PageRow(page.number, text=page.text, skip_reason=page.skip_reason)
                summary.skipped_pages.append((str(w.path), page.number, page.skip_reason))
                self.log(f"skipped: {w.path}: page {page.number}: {page.skip_reason}")
            else:
                row = self.embed(w, page)
                summary.pages += 1
            batch.append(row)
            nbytes += len(row.image_png) + (row.vectors.nbytes if row.vectors is not None else 0)
            self.bar.update()
            self.report(self.bar)
            self.pages_seen += 1
            _test_pause(self.pages_seen)
            if len(batch) >= self.batch_pages or nbytes >= self.batch_bytes:
                store.add_pages(w.stored, fields, batch, start_pending=not marked)  # a commit: resumable from here
                batch, nbytes, marked = [], 0, True
        if sha256_file(w.path) != w.sha256:
            raise RagvlError(f"{w.path}: changed while being indexed; run again")
        if fresh and not marked:
            store.add_pages(w.stored, fields, batch)  # the whole document in one commit
            return
        store.add_pages(w.stored, fields, batch, start_pending=not marked)
        store.switch(w.stored, fields.generation)  # the commit point: this generation is now the searched one


def _plan(docs, explicit, indexed, store, embedder_id, dpi, summary, log) -> list[_Work]:
    work: list[_Work] = []
    for pdf in docs:
        _plan_file(pdf, pdf in explicit, indexed, store, embedder_id, dpi, summary, log, work)
    return work


def _plan_file(pdf: Path, explicit: bool, indexed: dict, store: PageStore, embedder_id: str, dpi: int,
               summary: IndexSummary, log, work: list, force: bool = False) -> None:
    stored = store.stored_path(pdf)
    d = indexed.get(stored)
    try:
        st = os.stat(pdf)
        current = d is not None and d.sha256 and d.dpi == dpi and d.embedders == {embedder_id} \
            and d.pages == d.n_pages and not force
        if current and d.file_size == st.st_size and d.file_mtime_ns == st.st_mtime_ns and d.explicit >= explicit:
            summary.unchanged.append(str(pdf))  # size + mtime: not even read
            return
        sha = sha256_file(pdf)
    except RagvlError as e:
        summary.failed.append((str(pdf), str(e)))
        log(f"skipped: {e}")
        return
    except OSError as e:
        from ..errors import os_error_cause

        summary.failed.append((str(pdf), f"{pdf}: {os_error_cause(e)}"))
        log(f"skipped: {pdf}: {os_error_cause(e)}")
        return
    if current and d.sha256 == sha:
        store.touch(stored, st.st_size, st.st_mtime_ns, explicit or d.explicit)
        summary.unchanged.append(str(pdf))
        return
    work.append(_Work(pdf, stored, sha, d, explicit or bool(d and d.explicit), st.st_size, st.st_mtime_ns))
