"""`ragvl index`: PDFs -> page images -> ColQwen2 multi-vectors -> the LanceDB page table.

Incremental by content: a document whose sha256 is already indexed under its path is skipped
with no model work; a changed one has all its pages replaced in one commit; documents gone from
an indexed folder are removed. A file that cannot be read is reported and skipped, and the
others are still indexed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
from PIL import Image

from ..errors import RagvlError
from ..fsutil import sha256_file
from ..pdf import DEFAULT_DPI, find_pdfs, open_pdf, png_bytes
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
    pages: int = 0  # pages embedded in this run
    seconds: float = 0.0

    def line(self) -> str:
        return (f"documents: {len(self.new)} new, {len(self.changed)} changed, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed, {len(self.failed)} failed; {self.pages} pages embedded "
                f"in {self.seconds:.1f}s")

    def as_dict(self) -> dict:
        return {"new": self.new, "changed": self.changed, "unchanged": self.unchanged, "removed": self.removed,
                "failed": [{"path": p, "reason": r} for p, r in self.failed], "pages": self.pages,
                "seconds": round(self.seconds, 3)}


def _under(path: str, folder: Path) -> bool:
    try:
        Path(path).relative_to(folder)
        return True
    except ValueError:
        return False


def embed_page(doc, index: int, dpi: int, embedder: PageEmbedder) -> PageRow:
    """Render the page at 0-based `index` and embed exactly that image (every indexer's one way)."""
    image = doc.render_page(index, dpi)
    vectors = embedder.embed_images([image])[0]  # (n, 128)
    return PageRow(index + 1, image.width, image.height, png_bytes(image), vectors)


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
               log: Callable[[str], None]) -> IndexPlan:
    """Check the embedder, record the metadata, hash every file and sort the documents."""
    paths = [Path(p) for p in paths]
    pdfs = find_pdfs(paths)  # a missing path is an error before any work
    store.check_embedder(embedder_id)
    if not store.embedder:
        store.write_meta(embedder=embedder_id, dpi=dpi)
    indexed = store.documents()
    summary = IndexSummary()

    # Hash every file, open the ones that need work (page counts give the progress total).
    todo = []
    for pdf in pdfs:
        key = str(pdf)
        try:
            sha = sha256_file(pdf)
            if key in indexed and indexed[key][0] == sha:
                summary.unchanged.append(key)
                continue
            with open_pdf(pdf) as doc:  # validated now; reopened when rendered (file handles are finite)
                n_pages = doc.page_count
        except RagvlError as e:
            summary.failed.append((key, str(e)))
            log(f"skipped: {e}")
            continue
        todo.append(PlannedDocument(key, sha, n_pages, key in indexed))

    # Documents that vanished from a folder we were asked to index.
    found = {str(p) for p in pdfs}
    folders = [p.resolve() for p in paths if p.is_dir()]
    gone = sorted(p for p in indexed if p not in found and any(_under(p, f) for f in folders))
    return IndexPlan(todo, gone, summary)


def finish_index(plan: IndexPlan, store: PageStore) -> None:
    """Remove the documents that vanished (one commit), after every new page is in."""
    store.remove_documents(plan.gone)
    plan.summary.removed = plan.gone


def index_paths(paths: Iterable[str | Path], store: PageStore, embedder: PageEmbedder, dpi: int = DEFAULT_DPI,
                log: Callable[[str], None] | None = None, progress: bool = True) -> IndexSummary:
    """Bring the index up to date with the PDFs under `paths`; returns what happened."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    plan = plan_index(paths, store, embedder.id, dpi, log)
    summary = plan.summary

    bar = Progress(plan.total_pages, enabled=progress)
    for d in plan.todo:
        key, sha = d.key, d.sha256
        try:
            if sha256_file(Path(key)) != sha:
                raise RagvlError(f"{key}: changed while being indexed; run again")
            with open_pdf(Path(key)) as doc:
                rows = []
                for i in range(doc.page_count):
                    bar.note = Path(key).name
                    rows.append(embed_page(doc, i, dpi, embedder))
                    bar.update()
            store.put_document(key, sha, rows, embedder.id)  # the commit point for this document
        except RagvlError as e:
            summary.failed.append((key, str(e)))
            log(f"skipped: {e}")
            continue
        summary.pages += len(rows)
        (summary.changed if d.was_indexed else summary.new).append(key)
    bar.close()

    finish_index(plan, store)
    summary.seconds = time.perf_counter() - t0
    return summary
