"""The Ray actor that renders and embeds pages: one model load, many pages.

A worker never opens the driver's files: a local document arrives as its bytes (resolved by Ray
from the object store, so a worker on another machine gets them over the network), is checked
against the driver's sha256, and is written to a temporary file on the worker's own disk for
PyMuPDF, so validation and rendering are exactly the single-process indexer's (`embed_page`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from ...errors import RagvlError


class PageWorker:
    """Embeds pages of documents; the actor class (wrapped with ray.remote by the driver)."""

    def __init__(self, embedder_folder: str, threads: int, device: str | None = None):
        from ...models.runtime import ColQwen2

        self.model = ColQwen2(embedder_folder, device=device, threads=threads)
        self.tmp = Path(tempfile.mkdtemp(prefix="ragvl-worker-"))
        self._open: tuple[str, object] | None = None  # (sha256, PdfDocument) of the last document

    def info(self) -> dict:
        """The embedder id (all workers must agree with each other), pid and host."""
        return {"embedder_id": self.model.id, "pid": os.getpid(), "host": socket.gethostname()}

    def embed(self, source: bytes, name: str, sha256: str, pages: list[int], dpi: int) -> tuple[str, object]:
        """Render and embed the 0-based `pages` of one document.

        Returns ("ok", [(page_number, width, height, png, vectors float16 (n, 128), text), ...]) or
        ("error", one-line message naming `name`): a bad page fails its document, as in one process.
        """
        from ..run import embed_page

        try:
            doc = self._document(source, name, sha256)
            rows = []
            for i in pages:
                row = embed_page(doc, i, dpi, self.model)
                rows.append((row.page, row.width, row.height, row.image_png, row.vectors.astype(np.float16), row.text))
            return "ok", rows
        except RagvlError as e:
            return "error", str(e).replace(str(self.tmp / sha256), name)

    def _document(self, source: bytes, name: str, sha256: str):
        from ...ingest import open_document

        if self._open is not None and self._open[0] == sha256:
            return self._open[1]
        self._close()
        if not isinstance(source, (bytes, bytearray, memoryview)):
            raise RagvlError(f"{name}: a worker was handed {type(source).__name__}, not the document's bytes")
        if hashlib.sha256(source).hexdigest() != sha256:
            raise RagvlError(f"{name}: the bytes a worker received do not match the planned sha256")
        path = self.tmp / (sha256 + Path(name).suffix.lower())  # the suffix tells a PDF from an image file
        path.write_bytes(source)
        self._open = (sha256, open_document(path))
        return self._open[1]

    def _close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open[1].path.unlink(missing_ok=True)
            self._open = None

    def __del__(self):
        try:
            self._close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        except Exception:
            pass
