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


def index_paths(paths: Iterable[str | Path], store: PageStore, embedder: PageEmbedder, dpi: int = DEFAULT_DPI,
                log: Callable[[str], None] | None = None, progress: bool = True,
                vision: VisionStore | None = None) -> IndexSummary:
    """Bring the index up to date with the PDFs under `paths`; returns what happened.

    With `vision`, each embedded page's vision tower output is kept there for the answer model
    (unless its cap is 0), and the features of pages no longer indexed are dropped.
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    pdfs = find_pdfs(paths)  # a missing path is an error before any work
    store.check_embedder(embedder.id)
    if not store.embedder:
        store.write_meta(embedder=embedder.id, dpi=dpi)
    indexed = store.documents()
    summary = IndexSummary()

    # Plan: hash every file, open the ones that need work (page counts give the progress total).
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
        todo.append((key, sha, n_pages, key in indexed))

    bar = Progress(sum(n for _, _, n, _ in todo), enabled=progress)
    keep = vision is not None and vision.max_bytes > 0
    producer = Producer(embedder.vision_hash, embedder.image_key, embedder.max_pixels) if keep else None
    pending: list = []  # (page_id, ImageFeatures) not yet stored
    for key, sha, _, was_indexed in todo:
        try:
            if sha256_file(Path(key)) != sha:
                raise RagvlError(f"{key}: changed while being indexed; run again")
            with open_pdf(Path(key)) as doc:
                rows = []
                for i in range(doc.page_count):
                    bar.note = Path(key).name
                    image = doc.render_page(i, dpi)
                    feats: list = []
                    vectors = (embedder.embed_images([image], vision_out=feats) if keep
                               else embedder.embed_images([image]))[0]
                    rows.append(PageRow(i + 1, image.width, image.height, png_bytes(image), vectors))
                    if feats:
                        pending.append((page_id(sha, i + 1), feats[0]))
                        if len(pending) >= VISION_FLUSH_PAGES:
                            vision.put(pending, producer)
                            pending = []
                    bar.update()
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
    summary.removed = gone
    if vision is not None:
        if keep:
            vision.put(pending, producer)
        t = store.scan(["doc_sha256", "page"])
        vision.prune({page_id(s, p) for s, p in zip(t["doc_sha256"].to_pylist(), t["page"].to_pylist())})
    summary.seconds = time.perf_counter() - t0
    return summary
