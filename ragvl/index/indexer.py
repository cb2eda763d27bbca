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
from ..ingest import DEFAULT_DPI, Renderer, find_documents
from ..progress import Progress
from .store import PageRow, PageStore


class PageEmbedder(Protocol):
    """What indexing needs from an embedder (ragvl.models.runtime.colqwen2.ColQwen2)."""

    id: str

    def embed_images(self, images: Sequence[Image.Image]) -> list[np.ndarray]: ...


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


def index_paths(paths: Iterable[str | Path], store: PageStore, embedder: PageEmbedder, dpi: int = DEFAULT_DPI,
                log: Callable[[str], None] | None = None, progress: bool = True,
                on_progress: Callable[[Progress], None] | None = None) -> IndexSummary:
    """Bring the index up to date with the PDFs and image files under `paths`; returns what happened.

    `on_progress(bar)` is called once the plan is made and after every page (the web server's jobs)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    pdfs = find_documents(paths)  # a missing path is an error before any work
    store.check_embedder(embedder.id)
    if not store.embedder:
        store.write_meta(embedder=embedder.id, dpi=dpi)
    indexed = store.documents()
    summary = IndexSummary()

    # Rendering happens in ragvl.ingest's worker process (a time limit per page; a page that hangs
    # or crashes MuPDF is skipped and named, never the run).
    with Renderer() as renderer:
        # Plan: hash every file, open the ones that need work (page counts give the progress total).
        todo = []
        for pdf in pdfs:
            key = str(pdf)
            try:
                sha = sha256_file(pdf)
                if key in indexed and indexed[key][0] == sha:
                    summary.unchanged.append(key)
                    continue
                n_pages = renderer.open(pdf).page_count  # validated now; reopened when rendered
            except RagvlError as e:
                summary.failed.append((key, str(e)))
                log(f"skipped: {e}")
                continue
            todo.append((key, sha, n_pages, key in indexed))

        bar = Progress(sum(n for _, _, n, _ in todo), enabled=progress)
        pages_seen = 0
        report = on_progress or (lambda b: None)
        report(bar)
        for key, sha, _, was_indexed in todo:
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
                        vectors = embedder.embed_images([page.image()])[0]
                        rows.append(PageRow(page.number, page.width, page.height, page.png, vectors,
                                            text=page.text or None))
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
            (summary.changed if was_indexed else summary.new).append(key)
        bar.close()

    # Documents that vanished from a folder we were asked to index.
    found = {str(p) for p in pdfs}
    folders = [p.resolve() for p in paths if p.is_dir()]
    gone = sorted(p for p in indexed if p not in found and any(_under(p, f) for f in folders))
    store.remove_documents(gone)
    if summary.new or summary.changed or gone:
        from .maintain import maintain

        maintain(store)  # compact, drop old versions, text index, trim the search cache
    summary.removed = gone
    summary.seconds = time.perf_counter() - t0
    return summary
