"""`ragvl index`: documents -> page images -> ColQwen2 multi-vectors -> the LanceDB page table.

Planning (one process, under the writer lock, see lock.py):
- a document whose size and mtime equal the stored ones is unchanged without being read;
  otherwise it is hashed, and it is unchanged if its sha256, dpi and embedder are the stored ones;
- a new or changed document is rendered and embedded page by page, committed in bounded
  batches (BATCH_PAGES pages or BATCH_BYTES bytes) as a new generation that searches do not
  see, then switched live in one commit (store.switch); the old generation stays searchable
  until then. A run killed mid-document resumes at its last committed batch;
- documents gone from a folder being indexed are removed; `prune` also removes every indexed
  document whose file is gone; `reembed` redoes every document not embedded by this embedder.
A file that cannot be read is reported and skipped; a page that cannot be rendered is stored as
skipped (named in the summary and by `ragvl status`); the others are still indexed.
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
from ..pdf import DEFAULT_DPI, find_pdfs, png_bytes
from ..progress import Progress
from .schema import K_DPI, K_EMBEDDER, generation
from .source import open_source
from .store import DocFields, Document, PageRow, PageStore

BATCH_PAGES = 32
BATCH_BYTES = 256 << 20  # PNG + float16 vectors of one batch


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
    path: Path  # the file
    stored: str  # its path in the index
    sha256: str
    doc: Document | None  # what the index has under `stored`
    explicit: bool
    size: int
    mtime_ns: int


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _embedder_meta(embedder) -> dict:
    folder = getattr(embedder, "folder", None)
    return {"id": embedder.id, "folder": str(Path(folder).resolve()) if folder else None,
            "max_pixels": getattr(embedder, "max_pixels", None)}


def index_paths(paths: Iterable[str | Path], store: PageStore, embedder: PageEmbedder, *, dpi: int | None = None,
                prune: bool = False, reembed: bool = False, log: Callable[[str], None] | None = None,
                progress: bool = True, batch_pages: int = BATCH_PAGES,
                batch_bytes: int = BATCH_BYTES) -> IndexSummary:
    """Bring the index up to date with the PDFs under `paths`; returns what happened.

    The caller holds the index's writer lock (ragvl.index.lock.writer_lock), as Index.index does.
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    pdfs = find_pdfs(paths)  # a missing path is an error before any work
    explicit = {Path(os.path.abspath(p)).resolve() for p in paths if not p.is_dir()}
    if not reembed:
        store.check_embedder(embedder.id)
    target_dpi = int(dpi or store.dpi or DEFAULT_DPI)
    if dpi and store.dpi and int(dpi) != store.dpi:
        log(f"note: {store.path} was rendered at {store.dpi} dpi; documents indexed now are re-rendered at "
            f"{dpi} dpi, which becomes the index's default")
    meta = {}
    if store.embedder != embedder.id or not (store.meta.get(K_EMBEDDER) or {}).get("folder"):
        meta[K_EMBEDDER] = _embedder_meta(embedder)
    if store.dpi != target_dpi:
        meta[K_DPI] = target_dpi
    store.write_meta(**meta)

    indexed = store.documents()
    summary = IndexSummary()
    work = _plan(pdfs, explicit, indexed, store, embedder.id, target_dpi, summary, log)
    if reembed:  # also every indexed document outside `paths` that another embedder made
        planned = {w.stored for w in work} | {store.stored_path(p) for p in summary.unchanged}
        for d in list(indexed.values()):
            if d.sha256 and d.path not in planned and d.embedders != {embedder.id}:
                _plan_file(store.resolve(d.path), d.explicit, indexed, store, embedder.id, target_dpi, summary,
                           log, work, force=True)

    # Page counts first: they are the progress bar's total.
    counts = []
    for w in list(work):
        try:
            with open_source(w.path) as src:
                gen = generation(w.sha256, target_dpi, embedder.id)
                counts.append(src.n_pages - len(w.doc.pending.get(gen, ())) if w.doc else src.n_pages)
        except RagvlError as e:
            work.remove(w)
            summary.failed.append((str(w.path), str(e)))
            log(f"skipped: {e}")
    bar = Progress(sum(counts), enabled=progress)
    for w in work:
        try:
            _index_document(w, store, embedder, target_dpi, bar, summary, log, batch_pages, batch_bytes)
        except RagvlError as e:
            summary.failed.append((str(w.path), str(e)))
            log(f"skipped: {e}")
            continue
        (summary.changed if w.doc and w.doc.sha256 else summary.new).append(str(w.path))
    bar.close()

    # Documents that vanished from a folder we were asked to index, or (prune) from anywhere.
    found = {store.stored_path(p) for p in pdfs}
    folders = [p.resolve() for p in paths if p.is_dir()]
    gone = sorted(d for d in indexed if d not in found and not store.resolve(d).exists()
                  and (prune or any(_under(store.resolve(d), f) for f in folders)))
    store.remove_documents(gone)
    summary.removed = [str(store.resolve(d)) for d in gone]
    summary.seconds = time.perf_counter() - t0
    return summary


def _plan(pdfs, explicit, indexed, store, embedder_id, dpi, summary, log) -> list[_Work]:
    work: list[_Work] = []
    for pdf in pdfs:
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


def _index_document(w: _Work, store: PageStore, embedder: PageEmbedder, dpi: int, bar: Progress,
                    summary: IndexSummary, log, batch_pages: int, batch_bytes: int) -> None:
    with open_source(w.path) as src:
        fields = DocFields(w.sha256, src.n_pages, embedder.id, dpi, w.size, w.mtime_ns, w.explicit, src.metadata)
        done = set(w.doc.pending.get(fields.generation, ())) if w.doc else set()
        if done:
            log(f"resuming {w.path} after {len(done)} of {src.n_pages} pages committed by an earlier run")
        fresh = w.doc is None  # no rows at all under this path: a single batch may be searchable at once
        marked = fields.generation in (w.doc.pending if w.doc else {})  # resuming: the marker is there
        batch: list[PageRow] = []
        nbytes = 0
        bar.note = w.path.name
        for page in src.pages(dpi, skip=done):
            if page.skip_reason is not None:
                row = PageRow(page.number, text=page.text, skip_reason=page.skip_reason)
                summary.skipped_pages.append((str(w.path), page.number, page.skip_reason))
                log(f"skipped: {w.path}: page {page.number}: {page.skip_reason}")
            else:
                vectors = embedder.embed_images([page.image])[0]
                row = PageRow(page.number, page.image.width, page.image.height, png_bytes(page.image),
                              vectors.astype(np.float16), page.text)
                summary.pages += 1
            batch.append(row)
            nbytes += len(row.image_png) + (row.vectors.nbytes if row.vectors is not None else 0)
            bar.update()
            if len(batch) >= batch_pages or nbytes >= batch_bytes:
                store.add_pages(w.stored, fields, batch, start_pending=not marked)  # a commit: resumable from here
                batch, nbytes, marked = [], 0, True
        if sha256_file(w.path) != w.sha256:
            raise RagvlError(f"{w.path}: changed while being indexed; run again")
        if fresh and not marked:
            store.add_pages(w.stored, fields, batch)  # the whole document in one commit
            return
        store.add_pages(w.stored, fields, batch, start_pending=not marked)
        store.switch(w.stored, fields.generation)  # the commit point: this generation is now the searched one
