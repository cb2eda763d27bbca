"""Planning an index run: which documents are new, changed, unchanged, failed, copies or gone.

- a document whose size and mtime equal the stored ones is unchanged without being read;
  otherwise it is hashed, and it is unchanged if its sha256, dpi and embedder are the stored ones;
- a document whose generation (content hash, dpi, embedder) is already complete under another
  path is a copy: its rows are copied, not embedded again (`IndexPlan.copies`);
- documents gone from a folder being indexed are removed; `prune` also removes every indexed
  document whose file is gone; `reembed` redoes every document not embedded by this embedder.

A file that cannot be read is reported in the summary and skipped; the others are planned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import RagvlError, os_error_cause
from ..fsutil import sha256_file
from ..ingest import DEFAULT_DPI, DocumentInfo, Renderer, find_documents
from ..store import METADATA_FIELDS, DocFields, Document, K_DPI, K_EMBEDDER, PageStore

__all__ = ["IndexSummary", "Work", "IndexPlan", "plan_index"]


@dataclass
class IndexSummary:
    """What a run did, as `ragvl index` prints it (`line`) and `--json` gives it (`as_dict`)."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped_pages: list[tuple[str, int, str]] = field(default_factory=list)  # (path, page, reason)
    pages: int = 0  # pages embedded in this run
    copied: int = 0  # pages taken from an identical document already embedded (not embedded again)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped_pages

    def line(self) -> str:
        skipped = f", {len(self.skipped_pages)} pages skipped" if self.skipped_pages else ""
        copied = f", {self.copied} copied from identical documents" if self.copied else ""
        return (f"documents: {len(self.new)} new, {len(self.changed)} changed, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed, {len(self.failed)} failed; {self.pages} pages embedded{copied}"
                f"{skipped} in {self.seconds:.1f}s")

    def as_dict(self) -> dict:
        return {"new": self.new, "changed": self.changed, "unchanged": self.unchanged, "removed": self.removed,
                "failed": [{"path": p, "reason": r} for p, r in self.failed],
                "skipped_pages": [{"path": p, "page": n, "reason": r} for p, n, r in self.skipped_pages],
                "pages": self.pages, "copied": self.copied, "seconds": round(self.seconds, 3)}


@dataclass
class Work:
    """One document to write: the file, how the index stores it, and what the index has of it."""

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
    info: DocumentInfo | None = None  # the document as the render worker opened it (set by plan_index)

    def record(self, summary: IndexSummary) -> None:
        """Count this document as new or changed: once it is committed, whoever committed it."""
        (summary.changed if self.doc and self.doc.sha256 else summary.new).append(str(self.path))


@dataclass
class IndexPlan:
    """What a run will do: the documents to write (with their page counts), the complete
    generations already stored (`copies`: generation -> stored path, for identical documents),
    and the indexed documents to remove at the end."""

    work: list[Work]
    gone: list[str]  # stored paths
    summary: IndexSummary
    dpi: int
    embedder_id: str
    copies: dict[str, str] = field(default_factory=dict)

    @property
    def total_pages(self) -> int:
        """Pages to embed: a copy of a stored or earlier document in this run embeds none."""
        seen = set(self.copies)
        total = 0
        for w in self.work:
            if w.fields.generation not in seen:
                total += w.n_todo
                seen.add(w.fields.generation)
        return total


def plan_index(paths: Iterable[str | Path], store: PageStore, embedder_meta: dict, *, renderer: Renderer,
               dpi: int | None = None, prune: bool = False, reembed: bool = False,
               log: Callable[[str], None]) -> IndexPlan:
    """Check the embedder, record the index's metadata, and sort the documents under `paths`.

    `embedder_meta`: {"id", "folder", "max_pixels"} of the embedder. Documents are opened in
    `renderer`'s worker process, so a file that crashes MuPDF costs nothing.
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
    work: list[Work] = []
    for doc in docs:
        _plan_file(doc, doc in explicit, indexed, store, embedder_id, target_dpi, summary, log, work)
    if reembed:  # also every indexed document outside `paths` that another embedder made
        planned = {w.stored for w in work} | {store.stored_path(p) for p in summary.unchanged}
        for d in list(indexed.values()):
            if d.sha256 and d.path not in planned and d.embedders != {embedder_id}:
                _plan_file(store.resolve(d.path), d.explicit, indexed, store, embedder_id, target_dpi, summary,
                           log, work, force=True)

    # Page counts and metadata first: they are the progress bar's total and every row's fields.
    for w in list(work):
        try:
            info = renderer.open(w.path)
        except RagvlError as e:
            work.remove(w)
            summary.failed.append((str(w.path), str(e)))
            log(f"skipped: {e}")
            continue
        metadata = info.metadata.as_dict()
        metadata = {k: metadata.get(k) for k in METADATA_FIELDS}
        w.fields = DocFields(w.sha256, info.page_count, embedder_id, target_dpi, w.size, w.mtime_ns, w.explicit,
                             metadata)
        w.done = set(w.doc.pending.get(w.fields.generation, ())) if w.doc else set()
        w.n_todo = info.page_count - len(w.done)
        w.info = info

    # Documents that vanished from a folder we were asked to index, or (prune) from anywhere.
    found = {store.stored_path(p) for p in docs}
    folders = [p.resolve() for p in paths if p.is_dir()]
    gone = sorted(d for d in indexed if d not in found and not store.resolve(d).exists()
                  and (prune or any(store.resolve(d).is_relative_to(f) for f in folders)))
    # Complete live generations that stay: an identical document planned now copies their rows.
    rewritten = {w.stored for w in work} | set(gone)
    copies = {d.generation: d.path for d in sorted(indexed.values(), key=lambda d: d.path)
              if d.sha256 and d.path not in rewritten and d.embedders == {embedder_id} and d.dpi == target_dpi
              and d.pages == d.n_pages}
    return IndexPlan(work, gone, summary, target_dpi, embedder_id, copies)


def _plan_file(doc: Path, explicit: bool, indexed: dict, store: PageStore, embedder_id: str, dpi: int,
               summary: IndexSummary, log, work: list, force: bool = False) -> None:
    stored = store.stored_path(doc)
    d = indexed.get(stored)
    try:
        st = os.stat(doc)
        current = d is not None and d.sha256 and d.dpi == dpi and d.embedders == {embedder_id} \
            and d.pages == d.n_pages and not force
        if current and d.file_size == st.st_size and d.file_mtime_ns == st.st_mtime_ns and d.explicit >= explicit:
            summary.unchanged.append(str(doc))  # size + mtime: not even read
            return
        sha = sha256_file(doc)
    except RagvlError as e:
        summary.failed.append((str(doc), str(e)))
        log(f"skipped: {e}")
        return
    except OSError as e:
        summary.failed.append((str(doc), f"{doc}: {os_error_cause(e)}"))
        log(f"skipped: {doc}: {os_error_cause(e)}")
        return
    if current and d.sha256 == sha:
        store.touch(stored, st.st_size, st.st_mtime_ns, explicit or d.explicit)
        summary.unchanged.append(str(doc))
        return
    work.append(Work(doc, stored, sha, d, explicit or bool(d and d.explicit), st.st_size, st.st_mtime_ns))
