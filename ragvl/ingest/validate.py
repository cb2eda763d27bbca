"""Checks on a file's bytes before MuPDF sees it: is it a readable regular file, is it a PDF, is
it complete.

PyMuPDF opens images, EPUB, XPS, SVG ... as "documents", even with `filetype="pdf"` (a PNG
renamed .pdf opens as a 1-page image document), so the `%PDF-` header is checked here.

A truncated PDF (an interrupted download or copy) usually *opens* in MuPDF: it cannot find the
`startxref` at the end, "repairs" the file by scanning it for objects, and renders whatever it
recovered, often blank or partial pages with no warning at all. Cut inside an incremental
update, the file opens *without* repair as its previous revision, silently missing the later
edits. So `pdf_is_truncated` checks the bytes: a complete file ends with its last object, then
`startxref N %%EOF`; when an object starts or ends after the last `startxref` (or there is
none), the file is truncated. That includes a file that lost only its trailer, which MuPDF
renders perfectly: nobody can tell it from one that lost pages.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from pathlib import Path

from ..errors import RagvlError, os_error_cause

# A PDF's "%PDF-" header may follow up to 1 KiB of junk (Acrobat's and MuPDF's tolerance).
PDF_HEADER = b"%PDF-"
HEAD_BYTES = 1024
_OBJ_START = re.compile(rb"\d+\s+\d+\s+obj\b")

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


def sniff(head: bytes) -> str:
    """What a file looks like, from its first bytes ("a PNG image", "a text file", ...)."""
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


def read_head(path: Path, what: str) -> tuple[bytes, int]:
    """The first HEAD_BYTES of a regular, non-empty file and its size; RagvlError otherwise.

    `what` names the expected kind for the messages ("a PDF", "an image").
    """
    name = str(path)
    if not os.path.lexists(path):
        raise RagvlError(f"{name}: no such file")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RagvlError(f"{name}: broken symbolic link (its target {os.readlink(path)} does not exist)") from None
    except OSError as e:
        raise RagvlError(f"{name}: {os_error_cause(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise RagvlError(f"{name}: is a directory, not {what} file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
        raise RagvlError(f"{name}: not a regular file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise RagvlError(f"{name}: empty file (0 bytes), not {what}")
            return f.read(HEAD_BYTES), size
    except OSError as e:
        raise RagvlError(f"{name}: {os_error_cause(e)}") from None


def check_pdf_bytes(path: Path) -> bool:
    """Validate a PDF's bytes (see `read_head`, then the header); returns whether it is truncated."""
    head, _ = read_head(path, "a PDF")
    if PDF_HEADER not in head:
        raise RagvlError(f"{path}: not a PDF ({sniff(head)})")
    try:
        with open(path, "rb") as f:
            return pdf_is_truncated(f)
    except OSError as e:
        raise RagvlError(f"{path}: {os_error_cause(e)}") from None


def pdf_is_truncated(f) -> bool:
    """True when the open PDF file `f` stops before the end of its last revision.

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
