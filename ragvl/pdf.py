"""Compatibility names: the PDF code now lives in `ragvl.ingest` (one module per job)."""

from .ingest import (DEFAULT_DPI, MAX_SIDE, PNG_COMPRESS_LEVEL, PdfDocument, find_documents, find_pdfs,
                     open_document, open_pdf, png_bytes)

__all__ = ["DEFAULT_DPI", "MAX_SIDE", "PNG_COMPRESS_LEVEL", "PdfDocument", "find_documents", "find_pdfs",
           "open_document", "open_pdf", "png_bytes"]
