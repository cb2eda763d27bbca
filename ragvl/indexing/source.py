"""The seam between ingestion (ragvl.ingest) and the indexer: one call per document.

`open_source(info, renderer)` takes a document the render worker has opened (planning opens
each one, for its page count and metadata); `pages(dpi, skip=...)` yields `SourcePage`s one at
a time: the stored image (PNG bytes, the exact pixels that are embedded) and the page's text
layer, or a skip reason for a page that cannot be rendered (corrupt, or it hung or crashed MuPDF). The indexer never holds
more than one batch of pages, so a 1,000-page PDF costs the memory of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from PIL import Image

from ..ingest import DEFAULT_DPI, DocumentInfo, Renderer


@dataclass
class SourcePage:
    number: int  # 1-based
    png: bytes = b""
    width: int = 0
    height: int = 0
    text: str | None = None
    skip_reason: str | None = None  # set: the page could not be rendered (and png is empty)
    path: str = ""  # the document's file
    _image: Image.Image | None = None

    @property
    def image(self) -> Image.Image:
        """The stored pixels, decoded (what the embedder sees)."""
        if self._image is None:
            import io

            with Image.open(io.BytesIO(self.png)) as im:
                self._image = im.convert("RGB")
        return self._image


@dataclass
class SourceDocument:
    """An open document: page count, metadata, and its pages on demand."""

    path: str
    n_pages: int
    _info: DocumentInfo
    _renderer: Renderer

    def pages(self, dpi: int = DEFAULT_DPI, *, skip: set[int] = frozenset()) -> Iterator[SourcePage]:
        """Each page not in `skip` (1-based numbers), rendered at `dpi`, in order."""
        for page in self._renderer.pages(self._info, dpi, skip=skip):
            if page.skipped:
                yield SourcePage(page.number, skip_reason=page.reason, path=self.path)
            else:
                yield SourcePage(page.number, page.png, page.width, page.height, page.text or None, path=self.path)


def open_source(info: DocumentInfo, renderer: Renderer) -> SourceDocument:
    """The pages of a document `renderer` has opened (`info`, from Renderer.open), on demand."""
    return SourceDocument(info.path, info.page_count, info, renderer)
