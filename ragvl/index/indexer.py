"""`ragvl index`: PDFs and image files -> page images -> ColQwen2 multi-vectors -> the LanceDB page table.

Incremental by content: a document whose sha256 is already indexed under its path is skipped
with no model work; a changed one has all its pages replaced in one commit; documents gone from
an indexed folder are removed. A file that cannot be read is reported and skipped, and the
others are still indexed. A page that cannot be rendered (corrupt, or it hangs or crashes MuPDF)
is skipped and named; the document's other pages are indexed.
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
from .store import PageRow, PageStore, page_id
from .vision_store import Producer, VisionStore

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
    skipped_pages: list[tuple[str, int, str]] = field(default_factory=list)  # (path, page number, reason)
    pages: int = 0  # pages embedded in this run
    seconds: float = 0.0

    def line(self) -> str:
        return (f"documents: {len(self.new)} new, {len(self.changed)} changed, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed, {len(self.failed)} failed; {self.pages} pages embedded, "
                f"{len(self.skipped_pages)} skipped in {self.seconds:.1f}s")

    def as_dict(self) -> dict:
        return {"new": self.new, "changed": self.changed, "unchanged": self.unchanged, "removed": self.removed,
                "failed": [{"path": p, "reason": r} for p, r in self.failed], "pages": self.pages,
                "skipped_pages": [{"path": p, "page": n, "reason": r} for p, n, r in self.skipped_pages],
                "seconds": round(self.seconds, 3)}


def _under(path: str, folder: Path) -> bool:
    try:
        Path(path).relative_to(folder)
        return True
    except ValueError:
        return False



def _test_pause(pages_seen: int) -> None:
    """Test hook: with RAGVL_TEST_PAUSE_AFTER_PAGES=N, stop for good after the N-th page is embedded
    (before its document is committed) and say so on stderr, so that a test kills the run at a
    known point instead of guessing one with a timer."""
    if os.environ.get("RAGVL_TEST_PAUSE_AFTER_PAGES") == str(pages_seen):
        print(f"ragvl-test: paused after {pages_seen} pages", file=sys.stderr, flush=True)
        time.sleep(3600)


def embed_page(doc, index: int, dpi: int, embedder: PageEmbedder) -> PageRow:
    """Render the page at 0-based `index` in this process and embed exactly that image (a Ray
    worker's way; the single-process indexer renders in ragvl.ingest's worker process)."""
    image = doc.render_page(index, dpi)
    vectors = embedder.embed_images([image])[0]  # (n, 128)
    return PageRow(index + 1, image.width, image.height, png_bytes(image), vectors,
                   text=doc.page_text(index) or None)


@dataclass
class PlannedDocument:
    """A document that needs embedding: its stored key, sha256, page count, and whether an older
    version of it is in the index."""

    key: str
    sha256: str
    n_pages: int
    was_indexed: bool


@dataclass
class IndexPlan:
    """What a run will do: the documents to embed and the indexed documents to remove at the end.

    The single-process indexer and the Ray driver both plan with `plan_index`, so both decide the
    same way what is unchanged, changed, new, failed and removed.
    """

    todo: list[PlannedDocument]
    gone: list[str]
    summary: IndexSummary

    @property
    def total_pages(self) -> int:
        return sum(d.n_pages for d in self.todo)


def plan_index(paths: Iterable[str | Path], store: PageStore, embedder_id: str, dpi: int,
               log: Callable[[str], None], renderer: Renderer | None = None) -> IndexPlan:
    """Check the embedder, record the metadata, hash every file and sort the documents."""
    paths = [Path(p) for p in paths]
    docs = find_documents(paths)  # a missing path is an error before any work
    store.check_embedder(embedder_id)
    if not store.embedder:
        store.write_meta(embedder=embedder_id, dpi=dpi)
    indexed = store.documents()
    summary = IndexSummary()

    todo = []
    for path in docs:
        key = str(path)
        try:
            sha = sha256_file(path)
            if key in indexed and indexed[key][0] == sha:
                summary.unchanged.append(key)
                continue
            if renderer is not None:  # validated in the render worker: a file that crashes MuPDF costs nothing
                n_pages = renderer.open(path).page_count
            else:
                with open_document(path) as doc:
                    n_pages = doc.page_count
        except RagvlError as e:
            summary.failed.append((key, str(e)))
            log(f"skipped: {e}")
            continue
        todo.append(PlannedDocument(key, sha, n_pages, key in indexed))

    # Documents that vanished from a folder we were asked to index.
    found = {str(p) for p in docs}
    folders = [p.resolve() for p in paths if p.is_dir()]
    gone = sorted(p for p in indexed if p not in found and any(_under(p, f) for f in folders))
    return IndexPlan(todo, gone, summary)


def finish_index(plan: IndexPlan, store: PageStore) -> None:
    """Remove the documents that vanished (one commit), after every new page is in; then maintain
    the table (compaction, old versions, the full-text index) if anything changed."""
    store.remove_documents(plan.gone)
    plan.summary.removed = plan.gone
    if plan.summary.new or plan.summary.changed or plan.gone:
        from .maintain import maintain

        maintain(store)


def index_paths(paths: Iterable[str | Path], store: PageStore, embedder: PageEmbedder, dpi: int = DEFAULT_DPI,
                log: Callable[[str], None] | None = None, progress: bool = True,
                on_progress: Callable[[Progress], None] | None = None,
                vision: VisionStore | None = None) -> IndexSummary:
    """Bring the index up to date with the PDFs and image files under `paths`; returns what happened.

    `on_progress(bar)` is called once the plan is made and after every page (the web server's jobs).
    With `vision`, each embedded page's vision tower output is kept there for the answer model
    (unless its cap is 0), and the features of pages no longer indexed are dropped."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    report = on_progress or (lambda b: None)
    # Rendering happens in ragvl.ingest's worker process (a time limit per page; a page that hangs
    # or crashes MuPDF is skipped and named, never the run).
    with Renderer() as renderer:
        plan = plan_index(paths, store, embedder.id, dpi, log, renderer)
        summary = plan.summary
        bar = Progress(plan.total_pages, enabled=progress)
        report(bar)
        pages_seen = 0
        keep = vision is not None and vision.max_bytes > 0
        producer = Producer(embedder.vision_hash, embedder.image_key, embedder.max_pixels) if keep else None
        pending: list = []  # (page_id, ImageFeatures) not yet stored
        for d in plan.todo:
            key, sha = d.key, d.sha256
            try:
                if sha256_file(Path(key)) != sha:
                    raise RagvlError(f"{key}: changed while being indexed; run again")
                rows = []
                bar.note = Path(key).name
                info = renderer.open(key)  # ingest.DocumentInfo: page count, kind, metadata (title, dates)
                for page in renderer.pages(info, dpi):  # RenderedPage (png, size, text) or SkippedPage
                    if page.skipped:
                        summary.skipped_pages.append((key, page.number, page.reason))
                        log(f"skipped: {page.message(key)}")
                    else:  # embed exactly the stored image
                        feats: list = []
                        vectors = (embedder.embed_images([page.image()], vision_out=feats) if keep
                                   else embedder.embed_images([page.image()]))[0]
                        rows.append(PageRow(page.number, page.width, page.height, page.png, vectors,
                                            text=page.text or None))
                        if feats:
                            pending.append((page_id(sha, page.number), feats[0]))
                            if len(pending) >= VISION_FLUSH_PAGES:
                                vision.put(pending, producer)
                                pending = []
                    bar.update()
                    report(bar)
                    pages_seen += 1
                    _test_pause(pages_seen)
                if not rows:
                    raise RagvlError(f"{key}: no page could be rendered")
                store.put_document(key, sha, rows, embedder.id)  # the commit point for this document
            except RagvlError as e:
                summary.failed.append((key, str(e)))
                log(f"skipped: {e}")
                continue
            summary.pages += len(rows)
            (summary.changed if d.was_indexed else summary.new).append(key)
        bar.close()

        if keep:
            vision.put(pending, producer)

    finish_index(plan, store)
    if vision is not None:
        t = store.scan(["doc_sha256", "page"])
        vision.prune({page_id(s, p) for s, p in zip(t["doc_sha256"].to_pylist(), t["page"].to_pylist())})
    summary.seconds = time.perf_counter() - t0
    return summary
