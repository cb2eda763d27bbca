"""PDF files -> page images: finding PDFs, validating them, rasterizing pages with PyMuPDF.

Conventions:

- Page *indexes* are 0-based: `PdfDocument.render_page(index)` takes 0 for the first page, like
  PyMuPDF and Python sequences.
- Page *numbers* are 1-based: everything a user sees (error messages, `iter_pages`, the index,
  citations) says "page 1" for the first page. `number = index + 1`.

Every failure a user can fix (a missing file, an encrypted, truncated, corrupt or non-PDF file, a
page that cannot be rendered) is a `RagvlError` whose one-line message names the file (and the
page) and the cause. PyMuPDF's own "MuPDF error: ..." lines (printed to stdout when enabled,
as older versions do by default, where they would corrupt `--json` output) are switched off;
those that matter are folded into the error, the rest are collected in
`PdfDocument.warnings` for whoever wants to log them.

What PyMuPDF (MuPDF 1.28) does with damaged files, and what ragvl does about it:

- A truncated PDF (an interrupted download or copy) usually *opens*: MuPDF cannot find the
  `startxref` at the end, "repairs" the file by scanning it for objects, and renders whatever it
  recovered. Pages come back blank or partial, often with no warning at all (a content stream cut
  mid-way is read as far as it goes), or the page count is 0, or `page_count` itself raises
  "Invalid number of pages". Cut inside an incremental update, the file opens *without* repair
  as its previous revision, silently missing the later edits. Only a few cuts fail to open.
  So ragvl checks the bytes itself: a complete file ends with its last object, then
  `startxref N %%EOF`; when an object starts or ends after the last `startxref` (or there is
  none), the file is rejected as truncated before any rendering. That includes a file that lost
  only its trailer, which MuPDF renders perfectly: ragvl cannot tell it from one that lost pages.
- Other repaired files (a sloppy producer's wrong xref offsets, more than 1 KiB of junk after
  `%%EOF`) are accepted: MuPDF's repair is reliable for those; `PdfDocument.repaired` says so.
- A page whose content stream cannot be loaded (MuPDF warns "cannot load content stream part
  i/n" or "content stream is not a stream" and draws nothing for it) is an error for that page,
  even in a file that was not repaired. A page with no content at all is a valid blank page.
- Other MuPDF warnings while rendering (odd fonts, syntax errors in content streams, broken ICC
  profiles) are common in real-world PDFs that display fine; they go to `warnings`, not errors.
- PyMuPDF opens images, EPUB, XPS, SVG ... as "documents", even with `filetype="pdf"`
  (a PNG renamed .pdf opens as a 1-page image document), so ragvl checks the `%PDF-` header
  itself and rejects anything that is not a PDF.
"""

from __future__ import annotations

import io
import math
import mmap
import operator
import os
import re
import stat
from pathlib import Path
from typing import Iterable, Iterator

import pymupdf
from PIL import Image

from .errors import RagvlError, os_error_cause

__all__ = [
    "DEFAULT_DPI",
    "MAX_PAGE_PIXELS",
    "PNG_COMPRESS_LEVEL",
    "PdfDocument",
    "find_pdfs",
    "open_pdf",
    "png_bytes",
]

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

# A ceiling on one rendered page. PDF pages may be up to 200x200 inches (posters, maps, CAD), which
# at 120 DPI would be ~576 Mpx (1.7 GB of RGB). Larger pages are rendered at a lower DPI so they fit
# in 2**24 pixels (4096x4096), still ~16x what the answer model consumes.
MAX_PAGE_PIXELS = 1 << 24

# zlib level for the page PNGs stored in the index. Measured on 120-DPI renders: levels 1-3 use
# zlib's fast (non-lazy) matcher and leave text pages ~3x larger (21 KiB vs 7 KiB); 4 gets text
# pages as small as 6-9 do, and a photo-heavy page 13% smaller than 1 does (512 vs 588 KiB) at
# 58 ms, where 6 takes 142 ms and 9 over 700 ms for another 3-7%. Either way it is small next to
# rendering and embedding the page.
PNG_COMPRESS_LEVEL = 4

# A PDF's "%PDF-" header may follow up to 1 KiB of junk (Acrobat's and MuPDF's tolerance).
_HEADER = b"%PDF-"
_HEAD_BYTES = 1024
_OBJ_START = re.compile(rb"\d+\s+\d+\s+obj\b")
# MuPDF's warnings (pdf_open_contents_stream) when a page's content stream, or one part of it,
# is missing or not a stream: it draws nothing for it and the page renders blank or incomplete.
_CONTENT_LOST = ("cannot load content stream", "content stream is not a stream")

_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"RIFF", "a RIFF (WebP/WAV/AVI) file"),
    (b"PK\x03\x04", "a ZIP archive (e.g. .docx, .epub)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office document"),
    (b"%!PS", "a PostScript file"),
    (b"{\\rtf", "an RTF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
]


def _quiet_mupdf() -> None:
    """Stop PyMuPDF printing MuPDF's errors and warnings (to stdout); they are still stored."""
    pymupdf.TOOLS.mupdf_display_errors(False)
    display_warnings = getattr(pymupdf.TOOLS, "mupdf_display_warnings", None)
    if display_warnings is not None:
        display_warnings(False)


_quiet_mupdf()


def _take_mupdf_messages() -> list[str]:
    """MuPDF's stored warnings and errors since the last call, without its "... repeated" lines."""
    text = pymupdf.TOOLS.mupdf_warnings()  # flushes pending repeats, then resets the store
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("... repeated")]


def _short(message: str, limit: int = 120) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# Finding files


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _result_path(p: Path) -> Path:
    """Resolved absolute path; a broken symlink stays itself (absolute) so its error can say so."""
    return p.resolve() if p.exists() else Path(os.path.abspath(p))


def find_pdfs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The PDF files named by `paths`: sorted, de-duplicated, resolved absolute paths.

    - A folder is searched recursively for files whose name ends in ".pdf" in any case (.PDF,
      .Pdf). Hidden entries below it (names starting with ".", such as .git, .ragvl or macOS's
      "._x.pdf" resource forks) are skipped. Symlinked folders are followed, each real folder
      once. A folder with no PDFs adds nothing; an unreadable folder is an error.
    - A file named explicitly is taken whatever its name (hidden, or not ending in .pdf): the
      user asked for it, so `open_pdf` will say what is wrong with it rather than it being
      silently ignored. A broken symlink named explicitly is an error here.
    - A path that does not exist raises RagvlError naming it, before any work is done.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for raw in paths:
        p = Path(os.path.expanduser(os.fspath(raw)))
        if not os.path.lexists(p):
            raise RagvlError(f"{raw}: no such file or folder")
        if p.is_symlink() and not p.exists():
            raise RagvlError(f"{raw}: broken symbolic link (its target {os.readlink(p)} does not exist)")
        if p.is_dir():
            found.update(_walk_pdfs(p))
        else:
            found.add(_result_path(p))
    return sorted(found)


def _walk_pdfs(root: Path) -> Iterator[Path]:
    seen_dirs: set[str] = set()

    def onerror(err: OSError) -> None:
        why = "permission denied" if isinstance(err, PermissionError) else _short(err.strerror or err)
        raise RagvlError(f"{err.filename or root}: cannot read folder ({why})")

    for folder, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a symlink cycle or a second link to the same folder
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in filenames:
            if not _is_hidden(name) and name.lower().endswith(".pdf"):
                yield _result_path(Path(folder, name))


# ----------------------------------------------------------------------------------------------
# Hashing and PNG


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes for storing in the index (zlib level PNG_COMPRESS_LEVEL)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Opening and rendering


def _sniff(head: bytes) -> str:
    """What a file that is not a PDF looks like, from its first bytes."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page (a failed download?)"
    if text.startswith(b"<?xml") or text.startswith(b"<svg"):
        return "an XML/SVG file"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sample is still text.
        try:
            decoded = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            decoded = None
    if decoded is not None and all(c.isprintable() or c in "\t\r\n\f" for c in decoded):
        return "a text file"
    return "no %PDF- header"


def _truncated(f) -> bool:
    """True when the file stops before the end of its last revision.

    Every complete revision ends "... endobj [xref table] trailer ... startxref N %%EOF" (with an
    xref stream, that stream is the last object, still followed by startxref), so in a whole file
    no object starts or ends after the last "startxref". A cut anywhere before the final
    startxref leaves one there (or no startxref at all). Junk after %%EOF is harmless.
    """
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        last_startxref = mm.rfind(b"startxref")
        if last_startxref < 0:
            return True
        return mm.rfind(b"endobj") > last_startxref or _OBJ_START.search(mm, last_startxref) is not None


class PdfDocument:
    """An open, validated PDF. Use `open_pdf(path)`; close it, or use it as a context manager.

    Attributes: `path` (as given), `page_count` (>= 1), `repaired` (MuPDF had to rebuild the
    file's cross-reference table), `warnings` (MuPDF's messages about this file that were not
    fatal, "page N: ..." for rendering; for logging).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.warnings: list[str] = []
        self._doc: pymupdf.Document | None = None
        name = str(path)

        # Everything the file system can say, before MuPDF sees the file.
        if not os.path.lexists(self.path):
            raise RagvlError(f"{name}: no such file")
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise RagvlError(f"{name}: broken symbolic link (its target {os.readlink(self.path)} "
                             "does not exist)") from None
        except OSError as e:
            raise RagvlError(f"{name}: {os_error_cause(e)}") from None
        if stat.S_ISDIR(st.st_mode):
            raise RagvlError(f"{name}: is a directory, not a PDF file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
            raise RagvlError(f"{name}: not a regular file")
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise RagvlError(f"{name}: empty file (0 bytes), not a PDF")
                head = f.read(_HEAD_BYTES)
                if _HEADER not in head:
                    raise RagvlError(f"{name}: not a PDF ({_sniff(head)})")
                truncated = _truncated(f)
        except OSError as e:
            raise RagvlError(f"{name}: {os_error_cause(e)}") from None

        _quiet_mupdf()
        _take_mupdf_messages()  # drop anything left over from earlier documents
        try:
            doc = pymupdf.open(self.path, filetype="pdf")
        except Exception as e:  # FileDataError, RuntimeError: MuPDF found nothing usable
            messages = _take_mupdf_messages()
            if truncated:
                raise RagvlError(f"{name}: truncated or corrupt PDF that cannot be opened (the end of "
                                 "the file is missing; an interrupted download or copy?)") from None
            detail = _first_detail(messages) or _short(e)
            raise RagvlError(f"{name}: corrupt PDF that MuPDF cannot open ({detail})") from None
        self._doc = doc
        try:
            self._validate(doc, name, truncated)
        except BaseException:
            self.close()
            raise

    def _validate(self, doc: pymupdf.Document, name: str, truncated: bool) -> None:
        if not doc.is_pdf:  # defensive: the header check above should have caught it
            fmt = (doc.metadata or {}).get("format") or "another format"
            raise RagvlError(f"{name}: not a PDF (MuPDF reads it as {fmt})")
        if doc.needs_pass:
            raise RagvlError(f"{name}: encrypted PDF (password-protected); ragvl cannot read it, "
                             "save a copy without the password")
        self.repaired = bool(doc.is_repaired)
        if truncated:
            raise RagvlError(f"{name}: truncated PDF (the end of the file is missing, so pages may be "
                             "missing or incomplete; an interrupted download or copy?)")
        try:
            count = doc.page_count
        except Exception as e:
            detail = _first_detail(_take_mupdf_messages()) or _short(e)
            raise RagvlError(f"{name}: corrupt PDF (cannot read its page tree: {detail})") from None
        if count <= 0:
            if self.repaired:
                raise RagvlError(f"{name}: corrupt PDF (no pages could be recovered)")
            raise RagvlError(f"{name}: PDF has no pages")
        self.page_count = count
        self.warnings.extend(_take_mupdf_messages())

    # -- the handle ----------------------------------------------------------------------------

    def __enter__(self) -> "PdfDocument":
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
        return f"PdfDocument({str(self.path)!r}, {state})"

    # -- pages ---------------------------------------------------------------------------------

    def page_size(self, index: int) -> tuple[float, float]:
        """(width, height) in points (1/72 inch) of the page at 0-based `index`, rotation applied."""
        page = self._load(index)
        return page.rect.width, page.rect.height

    def render_page(self, index: int, dpi: float = DEFAULT_DPI,
                    max_pixels: int | None = MAX_PAGE_PIXELS) -> Image.Image:
        """Rasterize the page at 0-based `index` (0 = page 1) to an RGB PIL image.

        The size is PyMuPDF's: the page rectangle in points (rotation applied) times dpi / 72,
        with fractional edges rounded outwards (a 595 pt wide page at 120 DPI is 992 px, not
        991.7). A page that would exceed `max_pixels` is rendered at the highest DPI that fits.
        Errors name the 1-based page number: "x.pdf: page 3: ...".
        """
        if not dpi or dpi <= 0:
            raise ValueError(f"dpi must be positive, got {dpi!r}")
        page = self._load(index)
        where = f"{self.path}: page {index + 1}"
        try:
            zoom = dpi / 72.0
            rect = page.rect
            if max_pixels is not None:
                zoom = _fit_zoom(rect, zoom, max_pixels)
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
            image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples, "raw", "RGB", pix.stride)
        except RagvlError:
            raise
        except Exception as e:
            detail = _first_detail(_take_mupdf_messages()) or _short(e)
            raise RagvlError(f"{where}: cannot render ({detail})") from None
        self._check_page_messages(where, index)
        return image

    def iter_pages(self, dpi: float = DEFAULT_DPI,
                   max_pixels: int | None = MAX_PAGE_PIXELS) -> Iterator[tuple[int, Image.Image]]:
        """Yield (page_number, image) for every page; page_number is 1-based (1..page_count)."""
        for index in range(self.page_count):
            yield index + 1, self.render_page(index, dpi, max_pixels)

    def page_text(self, index: int) -> str | None:
        """The page's text layer (PyMuPDF ``get_text``), whitespace-trimmed; None when it has
        none (a scanned page). 0-based `index`, like render_page."""
        try:
            text = self._load(index).get_text().strip()
        except RagvlError:
            return None
        finally:
            _take_mupdf_messages()
        return text or None

    def _load(self, index: int) -> pymupdf.Page:
        if self._doc is None:
            raise ValueError(f"{self.path}: document is closed")
        index = operator.index(index)  # ints and numpy ints, not floats
        if not 0 <= index < self.page_count:
            raise IndexError(f"page index {index!r} out of range: 0-based, this document has "
                             f"{self.page_count} pages (0..{self.page_count - 1})")
        _take_mupdf_messages()
        try:
            return self._doc.load_page(index)
        except Exception as e:
            detail = _first_detail(_take_mupdf_messages()) or _short(e)
            raise RagvlError(f"{self.path}: page {index + 1}: cannot load ({detail})") from None

    def _check_page_messages(self, where: str, index: int) -> None:
        messages = _take_mupdf_messages()
        lost = [m for m in messages if any(marker in m for marker in _CONTENT_LOST)]
        if lost:
            raise RagvlError(f"{where}: corrupt page (MuPDF: {_short(lost[0])}; it would render blank "
                             "or incomplete)")
        for m in dict.fromkeys(messages):
            self.warnings.append(f"page {index + 1}: {m}")


def _fit_zoom(rect: pymupdf.Rect, zoom: float, max_pixels: int) -> float:
    """The largest zoom <= `zoom` whose rounded-out pixmap has at most `max_pixels` pixels."""
    def pixels(z: float) -> int:
        r = (rect * pymupdf.Matrix(z, z)).irect
        return r.width * r.height

    if pixels(zoom) <= max_pixels:
        return zoom
    z = zoom * math.sqrt(max_pixels / pixels(zoom))
    while pixels(z) > max_pixels and z > 1e-6:  # rounding outwards can add a row or column
        z *= 0.999
    return z


def _first_detail(messages: list[str]) -> str:
    """The most telling MuPDF message, skipping its "trying to repair" narration."""
    skip = ("trying to repair", "repairing PDF document")
    for m in messages:
        if not any(s in m for s in skip):
            return _short(m)
    return ""


def open_pdf(path: str | os.PathLike) -> PdfDocument:
    """Open and validate a PDF; RagvlError (one line, naming the file and the cause) if unusable.

    Causes: no such file, broken symbolic link, a directory, permission denied, empty file, not a
    PDF (with what it looks like instead), encrypted, truncated, corrupt, no pages.
    """
    return PdfDocument(path)
