"""Ingestion: documents (PDFs and image files) -> validated, page-by-page rendered page images.

- `files`: finding documents under folders (`find_documents`).
- `validate`: checks on a file's bytes before MuPDF sees it (header, truncation).
- `document`: open documents (`open_pdf`, `open_document`) and rendering one page in-process.
- `metadata`: title, author, subject, dates as ISO 8601.
- `pages`: what the indexer gets per document and per page (DocumentInfo, RenderedPage,
  SkippedPage).
- `worker`: rendering in a child process with a time limit (`Renderer`, `iter_pages`).

Page *indexes* are 0-based (`render_page(0)` is the first page); page *numbers* are 1-based
(what users see: "page 1"). Every failure a user can fix is a RagvlError whose one-line message
names the file (and the page) and the cause; a page that cannot be rendered costs only that page.
"""

from .document import DEFAULT_DPI, MAX_SIDE, ImageDocument, PageError, PdfDocument, fit_zoom, open_document, open_pdf
from .files import IMAGE_SUFFIXES, find_documents, find_pdfs, is_image_path
from .metadata import DocumentMetadata, document_metadata, pdf_date_iso
from .pages import (PNG_COMPRESS_LEVEL, DocumentInfo, PageResult, RenderedPage, SkippedPage, describe, png_bytes,
                    render_result)
from .worker import Renderer, iter_pages, page_timeout

__all__ = [
    "DEFAULT_DPI", "MAX_SIDE", "PNG_COMPRESS_LEVEL", "IMAGE_SUFFIXES",
    "PdfDocument", "ImageDocument", "PageError", "DocumentInfo", "DocumentMetadata",
    "RenderedPage", "SkippedPage", "PageResult", "Renderer",
    "find_documents", "find_pdfs", "is_image_path", "open_pdf", "open_document", "fit_zoom",
    "describe", "render_result", "iter_pages", "page_timeout", "png_bytes",
    "document_metadata", "pdf_date_iso",
]
