"""What ingestion hands the indexer: a document's description and, per page, either a rendered
page (PNG bytes, size, text layer) or a skipped page (number and cause).

These are plain picklable values: the render worker builds them in its process and sends them
over a pipe; `describe` and `render_result` are what it runs, and they work in-process too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

from ..errors import RagvlError
from .document import DEFAULT_DPI, MAX_SIDE, PageError, PdfDocument
from .metadata import DocumentMetadata

# zlib level for the page PNGs stored in the index. Measured on 120-DPI renders: levels 1-3 use
# zlib's fast (non-lazy) matcher and leave text pages ~3x larger (21 KiB vs 7 KiB); 4 gets text
# pages as small as 6-9 do, and a photo-heavy page 13% smaller than 1 does (512 vs 588 KiB) at
# 58 ms, where 6 takes 142 ms and 9 over 700 ms for another 3-7%. Either way it is small next to
# rendering and embedding the page.
PNG_COMPRESS_LEVEL = 4


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes for storing in the index (zlib level PNG_COMPRESS_LEVEL)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


@dataclass(frozen=True)
class DocumentInfo:
    """An opened, validated document: `kind` "pdf" or "image", `page_count` >= 1."""

    path: str
    kind: str
    page_count: int
    metadata: DocumentMetadata = field(default_factory=DocumentMetadata)
    repaired: bool = False
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenderedPage:
    """A page as stored: `png` is the image the embedder embeds and the answer model reads."""

    number: int  # 1-based
    png: bytes
    width: int
    height: int
    text: str  # the PDF's text layer ("" for a scan or an image file)
    skipped = False

    def image(self) -> Image.Image:
        """The stored pixels as an RGB PIL image (PNG is lossless: exactly what was rendered)."""
        with Image.open(io.BytesIO(self.png)) as im:
            return im.convert("RGB")


@dataclass(frozen=True)
class SkippedPage:
    """A page that could not be rendered; `reason` is the cause, without the file or page."""

    number: int  # 1-based
    reason: str
    skipped = True

    def message(self, path: str) -> str:
        """One line naming the file, the page and the cause."""
        return f"{path}: page {self.number}: {self.reason}"


PageResult = RenderedPage | SkippedPage


def describe(doc: PdfDocument) -> DocumentInfo:
    """The DocumentInfo of an open document."""
    return DocumentInfo(path=str(doc.path), kind=doc.kind, page_count=doc.page_count, metadata=doc.metadata,
                        repaired=doc.repaired, warnings=tuple(doc.warnings))


def render_result(doc: PdfDocument, index: int, dpi: float = DEFAULT_DPI, *,
                  max_side: int | None = MAX_SIDE) -> PageResult:
    """Render the page at 0-based `index`: a RenderedPage, or a SkippedPage when it cannot be."""
    try:
        image = doc.render_page(index, dpi, max_side=max_side)
    except PageError as e:
        return SkippedPage(e.number, e.cause)
    except RagvlError as e:  # defensive: any other one-line failure still only costs this page
        return SkippedPage(index + 1, str(e))
    return RenderedPage(index + 1, png_bytes(image), image.width, image.height, doc.page_text(index))
