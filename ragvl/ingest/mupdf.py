"""MuPDF's message store: silence its printing, collect what it said, pick the telling line."""

from __future__ import annotations

import pymupdf

from ..errors import short

# MuPDF's warnings (pdf_open_contents_stream) when a page's content stream, or one part of it,
# is missing or not a stream: it draws nothing for it and the page renders blank or incomplete.
CONTENT_LOST = ("cannot load content stream", "content stream is not a stream")


def quiet_mupdf() -> None:
    """Stop PyMuPDF printing MuPDF's errors and warnings (to stdout); they are still stored."""
    pymupdf.TOOLS.mupdf_display_errors(False)
    display_warnings = getattr(pymupdf.TOOLS, "mupdf_display_warnings", None)
    if display_warnings is not None:
        display_warnings(False)


def take_mupdf_messages() -> list[str]:
    """MuPDF's stored warnings and errors since the last call, without its "... repeated" lines."""
    text = pymupdf.TOOLS.mupdf_warnings()  # flushes pending repeats, then resets the store
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("... repeated")]


def first_detail(messages: list[str]) -> str:
    """The most telling MuPDF message, skipping its "trying to repair" narration."""
    skip = ("trying to repair", "repairing PDF document")
    for m in messages:
        if not any(s in m for s in skip):
            return short(m)
    return ""


quiet_mupdf()
