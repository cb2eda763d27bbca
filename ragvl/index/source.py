"""The seam between ingestion (ragvl.pdf) and the indexer: one call per document.

`open_source(path)` opens a document and gives its page count and metadata; `pages(dpi,
skip=...)` yields `SourcePage`s one at a time: an image (the exact pixels to store and embed)
and the page's text layer, or a skip reason for a page that cannot be rendered. The indexer
never holds more than one batch of pages, so a 1,000-page PDF costs the memory of a batch.

This adapter uses today's ragvl.pdf API; the ingestion rework (per-page failures, bounded
images, render time limits in a worker process, image files) replaces its body, not its shape.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

from PIL import Image

from ..errors import RagvlError
from ..pdf import open_pdf


@dataclass
class SourcePage:
    number: int  # 1-based
    image: Image.Image | None = None
    text: str | None = None
    skip_reason: str | None = None  # set: the page could not be rendered (and image is None)


@dataclass
class SourceDocument:
    """An open document: page count, metadata, and its pages on demand."""

    path: str
    n_pages: int
    metadata: dict = field(default_factory=dict)  # title, author, subject, created, modified (ISO)
    _pdf: object = None

    def pages(self, dpi: int, *, skip: set[int] = frozenset()) -> Iterator[SourcePage]:
        """Each page not in `skip` (1-based numbers), rendered at `dpi`, in order."""
        for i in range(self.n_pages):
            if i + 1 in skip:
                continue
            try:
                image = self._pdf.render_page(i, dpi)
            except RagvlError as e:
                yield SourcePage(i + 1, skip_reason=_page_reason(str(e)))
                continue
            yield SourcePage(i + 1, image=image, text=_page_text(self._pdf, i))


def _page_reason(message: str) -> str:
    """"x.pdf: page 3: corrupt page (...)" -> "corrupt page (...)"."""
    return re.sub(r"^.*?: page \d+: ", "", message)


def _page_text(pdf, index: int) -> str | None:
    try:
        return pdf._doc.load_page(index).get_text() or None
    except Exception:  # the text layer is an extra: a page that renders but has no readable text
        return None


def pdf_date(raw: str | None) -> str | None:
    """PDF date "D:20240131120000+01'00'" -> "2024-01-31T12:00:00"; None if unreadable."""
    m = re.match(r"^(?:D:)?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?", raw or "")
    if not m:
        return None
    y, mo, d, h, mi, s = (g or dflt for g, dflt in zip(m.groups(), ("", "01", "01", "00", "00", "00")))
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}"


@contextlib.contextmanager
def open_source(path: str | os.PathLike) -> Iterator[SourceDocument]:
    """Open one document for indexing (RagvlError naming the file if it cannot be read)."""
    with open_pdf(path) as pdf:
        raw = pdf._doc.metadata or {}
        meta = {"title": raw.get("title") or None, "author": raw.get("author") or None,
                "subject": raw.get("subject") or None, "created": pdf_date(raw.get("creationDate")),
                "modified": pdf_date(raw.get("modDate"))}
        yield SourceDocument(str(path), pdf.page_count, meta, pdf)
