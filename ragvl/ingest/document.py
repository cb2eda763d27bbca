"""Open, validated documents (a PDF, or an image file as a document) and their pages as images.

Conventions: page *indexes* are 0-based (`render_page(0)` is the first page, like PyMuPDF and
Python sequences); page *numbers* are 1-based (everything a user sees says "page 1").

What MuPDF (1.28) does with damaged files, and what ragvl does about it:
- Truncated PDFs are refused whole before any rendering (see `validate`).
- Other repaired files (a sloppy producer's wrong xref offsets, more than 1 KiB of junk after
  `%%EOF`) are accepted: MuPDF's repair is reliable for those; `repaired` says so.
- A page whose content stream cannot be loaded (MuPDF warns "cannot load content stream part
  i/n" or "content stream is not a stream" and draws nothing for it) is a `PageError` for that
  page, even in a file that was not repaired. A page with no content at all is a valid blank page.
- Other MuPDF warnings while rendering (odd fonts, syntax errors in content streams, broken ICC
  profiles) are common in real-world PDFs that display fine; they go to `warnings`, not errors.
"""

from __future__ import annotations

import math
import operator
import os
from pathlib import Path

import pymupdf
from PIL import Image

from ..errors import RagvlError, short
from .files import is_image_path
from .metadata import DocumentMetadata, document_metadata
from .mupdf import CONTENT_LOST, first_detail, quiet_mupdf, take_mupdf_messages
from .validate import check_pdf_bytes, read_head, sniff

# Rasterization resolution for retrieval and answering.
#
# What the models consume: ColQwen2 downsizes a page to at most 768 visual tokens of 28x28 pixels
# = 602,112 pixels; Qwen2-VL answers with up to ~1280 tokens = 1,003,520 pixels. Its smart_resize
# shrinks an A4 page (595x842 pt) to 840x1176 pixels and a Letter page (612x792 pt) to 868x1120,
# which takes about 102 DPI to supply without upscaling. 120 DPI renders A4 at 992x1404 (1.39
# Mpx) and Letter at 1020x1320: ~18% more pixels per side than the answer model keeps and ~1.5x
# what ColQwen2 keeps, so both only ever downsample (no detail lost, clean anti-aliasing), with
# room for a somewhat larger answer budget. Going higher buys nothing the models can see, while
# the PNG stored per page grows with the square of the DPI (144 DPI would be +44%).
# Small pages (16:9 slides, 720x405 pt -> 1200x675) get fewer pixels than the models allow; that
# is the price of one fixed DPI.
DEFAULT_DPI = 120

# The stored page image's long side, at most. Ordinary pages at DEFAULT_DPI stay under it (A4 is
# 992x1404); larger pages (posters, maps, CAD sheets up to 200x200 inches, which at 120 DPI
# would be ~576 Mpx) are rendered at the DPI that fits, chosen from the page rectangle before
# rasterizing, so memory never grows with the page size. 1600 px keeps a square page at 2.56 Mpx,
# still ~2.5x what the answer model reads, and what is embedded, stored and read is one image.
MAX_SIDE = 1600

# Qwen2-VL's smart_resize (so the embedder and the answer model) refuses images whose long side
# is over 200 times the short one; such a page is skipped here, named, rather than failing its
# document at embedding. Real pages never come close (a 200-inch banner 1 inch high); damaged
# MediaBoxes (billions of points wide) do.
MAX_ASPECT_RATIO = 200


class PageError(RagvlError):
    """One page cannot be rendered; the rest of its document can. `number` is 1-based."""

    def __init__(self, path: str | os.PathLike, number: int, cause: str):
        super().__init__(f"{path}: page {number}: {cause}")
        self.number, self.cause = number, " ".join(cause.split())


class PdfDocument:
    """An open, validated PDF. Use `open_pdf(path)`; close it, or use it as a context manager.

    Attributes: `path` (as given), `kind` ("pdf"), `page_count` (>= 1), `repaired` (MuPDF had to
    rebuild the file's cross-reference table), `warnings` (MuPDF's messages about this file that
    were not fatal, "page N: ..." for rendering; for logging).
    """

    kind = "pdf"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.warnings: list[str] = []
        self.repaired = False
        self._doc: pymupdf.Document | None = None
        name = str(path)
        truncated = check_pdf_bytes(self.path)
        quiet_mupdf()
        take_mupdf_messages()  # drop anything left over from earlier documents
        try:
            doc = pymupdf.open(self.path, filetype="pdf")
        except Exception as e:  # FileDataError, RuntimeError: MuPDF found nothing usable
            messages = take_mupdf_messages()
            if truncated:
                raise RagvlError(f"{name}: truncated or corrupt PDF that cannot be opened (the end of "
                                 "the file is missing; an interrupted download or copy?)") from None
            detail = first_detail(messages) or short(e)
            raise RagvlError(f"{name}: corrupt PDF that MuPDF cannot open ({detail})") from None
        self._doc = doc
        try:
            self._validate(doc, name, truncated)
        except BaseException:
            self.close()
            raise

    def _validate(self, doc: pymupdf.Document, name: str, truncated: bool) -> None:
        if not doc.is_pdf:  # defensive: the header check should have caught it
            raise RagvlError(f"{name}: not a PDF (MuPDF reads it as {_format(doc)})")
        if doc.needs_pass:
            raise RagvlError(f"{name}: encrypted PDF (password-protected); ragvl cannot read it, "
                             "save a copy without the password")
        self.repaired = bool(doc.is_repaired)
        if truncated:
            raise RagvlError(f"{name}: truncated PDF (the end of the file is missing, so pages may be "
                             "missing or incomplete; an interrupted download or copy?)")
        count = self._count(doc, name)
        if count <= 0:
            if self.repaired:
                raise RagvlError(f"{name}: corrupt PDF (no pages could be recovered)")
            raise RagvlError(f"{name}: PDF has no pages")
        self.page_count = count
        self.warnings.extend(take_mupdf_messages())

    @staticmethod
    def _count(doc: pymupdf.Document, name: str, what: str = "PDF") -> int:
        try:
            return doc.page_count
        except Exception as e:
            detail = first_detail(take_mupdf_messages()) or short(e)
            raise RagvlError(f"{name}: corrupt {what} (cannot read its page tree: {detail})") from None

    # -- the handle ----------------------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file; idempotent."""
        if self._doc is not None:
            self._doc.close()
            self._doc = None

    @property
    def closed(self) -> bool:
        return self._doc is None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.page_count} pages"
        return f"{type(self).__name__}({str(self.path)!r}, {state})"

    @property
    def metadata(self) -> DocumentMetadata:
        """Title, author, subject, keywords and ISO dates (see `ingest.metadata`)."""
        if self._doc is None:
            raise ValueError(f"{self.path}: document is closed")
        try:
            raw = self._doc.metadata
        except Exception:  # a damaged Info dictionary: the pages may still be fine
            raw = None
        take_mupdf_messages()
        return document_metadata(raw)

    # -- pages ---------------------------------------------------------------------------------

    def page_size(self, index: int) -> tuple[float, float]:
        """(width, height) in points (1/72 inch) of the page at 0-based `index`, rotation applied."""
        page = self._load(index)
        return page.rect.width, page.rect.height

    def _zoom(self, dpi: float) -> float:
        """Pixels per point before the size bound: dpi / 72 (an image document overrides it)."""
        return dpi / 72.0

    def render_page(self, index: int, dpi: float = DEFAULT_DPI, *, max_side: int | None = MAX_SIDE) -> Image.Image:
        """Rasterize the page at 0-based `index` (0 = page 1) to an RGB PIL image.

        The size is PyMuPDF's: the page rectangle in points (rotation applied) times dpi / 72,
        with fractional edges rounded outwards (a 595 pt wide page at 120 DPI is 992 px, not
        991.7). A page whose long side would exceed `max_side` pixels is rendered at the highest
        DPI that fits (chosen before rasterizing). A page that cannot be rendered raises
        `PageError` naming its 1-based number: "x.pdf: page 3: ...".
        """
        if not dpi or dpi <= 0:
            raise ValueError(f"dpi must be positive, got {dpi!r}")
        page = self._load(index)
        try:
            zoom = fit_zoom(page.rect, self._zoom(dpi), max_side)
            _check_shape(self.path, index + 1, page.rect, zoom)
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
            image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples, "raw", "RGB", pix.stride)
        except PageError:
            raise
        except Exception as e:
            detail = first_detail(take_mupdf_messages()) or short(e)
            raise PageError(self.path, index + 1, f"cannot render ({detail})") from None
        self._check_page_messages(index)
        return image

    def page_text(self, index: int) -> str:
        """The text layer of the page at 0-based `index` (PyMuPDF's `get_text()`); "" when it has none
        or it cannot be extracted (then a warning says why)."""
        page = self._load(index)
        try:
            text = page.get_text()
        except Exception as e:
            self.warnings.append(f"page {index + 1}: no text layer ({short(e)})")
            text = ""
        take_mupdf_messages()
        return text.replace("\x00", "")

    def iter_pages(self, dpi: float = DEFAULT_DPI, *, max_side: int | None = MAX_SIDE):
        """Yield (page_number, image) for every page; page_number is 1-based (1..page_count).

        In-process and all-or-nothing (a bad page raises); `ragvl.ingest.iter_pages` is the
        per-page-fault-tolerant, time-limited version the indexer uses.
        """
        for index in range(self.page_count):
            yield index + 1, self.render_page(index, dpi, max_side=max_side)

    def _load(self, index: int) -> pymupdf.Page:
        if self._doc is None:
            raise ValueError(f"{self.path}: document is closed")
        index = operator.index(index)  # ints and numpy ints, not floats
        if not 0 <= index < self.page_count:
            raise IndexError(f"page index {index!r} out of range: 0-based, this document has "
                             f"{self.page_count} pages (0..{self.page_count - 1})")
        take_mupdf_messages()
        try:
            return self._doc.load_page(index)
        except Exception as e:
            detail = first_detail(take_mupdf_messages()) or short(e)
            raise PageError(self.path, index + 1, f"cannot load ({detail})") from None

    def _check_page_messages(self, index: int) -> None:
        messages = take_mupdf_messages()
        lost = [m for m in messages if any(marker in m for marker in CONTENT_LOST)]
        if lost:
            raise PageError(self.path, index + 1, f"corrupt page (MuPDF: {short(lost[0])}; it would render "
                                                  "blank or incomplete)")
        for m in dict.fromkeys(messages):
            self.warnings.append(f"page {index + 1}: {m}")


class ImageDocument(PdfDocument):
    """An image file (PNG, JPEG, TIFF, ...) opened as a document: one page (a multi-frame TIFF has
    one per frame), rendered at the image's own pixel size (bounded by `max_side`) whatever the
    dpi, so a page image is the picture as the user sees it, neither blown up nor shrunk.
    """

    kind = "image"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.warnings = []
        self.repaired = False
        self._doc = None
        name = str(path)
        head, _ = read_head(self.path, "an image")
        quiet_mupdf()
        take_mupdf_messages()
        try:
            doc = pymupdf.open(self.path, filetype=self.path.suffix.lower().lstrip(".") or None)
        except Exception as e:
            detail = first_detail(take_mupdf_messages()) or short(e)
            raise RagvlError(f"{name}: not an image MuPDF can read ({sniff(head)}; {detail})") from None
        self._doc = doc
        try:
            if doc.is_pdf:  # a PDF named .png: still readable, as what it is
                raise RagvlError(f"{name}: a PDF file named like an image; rename it to .pdf")
            count = self._count(doc, name, "image")
            if count <= 0:
                raise RagvlError(f"{name}: corrupt image ({sniff(head)}; MuPDF finds no picture in it)")
            self.page_count = count
            try:  # MuPDF opens any file named .png; it looks at the bytes when a page is loaded
                first = doc.load_page(0)
            except Exception as e:
                detail = first_detail(take_mupdf_messages()) or short(e)
                raise RagvlError(f"{name}: not an image MuPDF can read ({sniff(head)}; {detail})") from None
            self._native = self._native_zoom(first.rect)
            self.warnings.extend(take_mupdf_messages())
        except BaseException:
            self.close()
            raise

    def _native_zoom(self, rect: pymupdf.Rect) -> float:
        """Pixels per point at which page 1 (`rect`) renders at the image's own pixel size.

        MuPDF sizes an image page from the file's resolution (72 * pixels / dpi, 96 dpi when the
        file has none); PIL reads the pixel size from the header without decoding the picture.
        """
        try:
            with Image.open(self.path) as im:
                width = im.size[0]
            return width / rect.width if rect.width > 0 and width > 0 else 1.0
        except Exception:  # a format PIL does not know (JXR): MuPDF's 96-dpi default size
            return 96 / 72

    def _zoom(self, dpi: float) -> float:
        return self._native

    @property
    def metadata(self) -> DocumentMetadata:
        """Empty: image files carry no title/author that MuPDF reads."""
        return DocumentMetadata()


def _format(doc: pymupdf.Document) -> str:
    try:
        return (doc.metadata or {}).get("format") or "another format"
    except Exception:
        return "another format"


def fit_zoom(rect: pymupdf.Rect, zoom: float, max_side: int | None) -> float:
    """The largest zoom <= `zoom` at which the rounded-out pixmap's long side is <= `max_side`."""
    if max_side is None:
        return zoom

    def side(z: float) -> int:
        r = (rect * pymupdf.Matrix(z, z)).irect
        return max(r.width, r.height)

    # Computed in floats first: a damaged MediaBox can be billions of points wide, and its
    # rect at the full zoom would not even fit MuPDF's integer pixel coordinates.
    z = min(zoom, max_side / max(rect.width, rect.height, 1e-9))
    while side(z) > max_side and z > 1e-9:  # rounding outwards can add a row or column
        z *= 0.999
    return z


def _check_shape(path: Path, number: int, rect: pymupdf.Rect, zoom: float) -> None:
    """PageError unless the page renders to a non-empty image that the embedder can read."""
    w, h = rect.width, rect.height
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise PageError(path, number, f"invalid page size ({short(w)} x {short(h)} pt)")
    px = (rect * pymupdf.Matrix(zoom, zoom)).irect
    if px.width < 1 or px.height < 1 or max(px.width, px.height) / min(px.width, px.height) > MAX_ASPECT_RATIO:
        raise PageError(path, number, f"page is {w:.6g} x {h:.6g} pt, an aspect ratio over {MAX_ASPECT_RATIO} "
                                      "(a damaged page size? the models cannot read such a strip)")


def open_pdf(path: str | os.PathLike) -> PdfDocument:
    """Open and validate a PDF; RagvlError (one line, naming the file and the cause) if unusable.

    Causes: no such file, broken symbolic link, a directory, permission denied, empty file, not a
    PDF (with what it looks like instead), encrypted, truncated, corrupt, no pages.
    """
    return PdfDocument(path)


def open_document(path: str | os.PathLike) -> PdfDocument:
    """Open an image file (by its suffix, see IMAGE_SUFFIXES) as an ImageDocument, anything else
    as a PDF (`open_pdf`, which says what a non-PDF file looks like)."""
    return ImageDocument(path) if is_image_path(path) else PdfDocument(path)
