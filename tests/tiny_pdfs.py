"""Small real PDFs for index tests, drawn with PyMuPDF."""

from __future__ import annotations


def make_pdf(path, n_pages: int = 2, seed: int = 0, title: str = "Report", metadata: dict | None = None,
             broken_pages: tuple[int, ...] = ()):
    """A small real PDF: a title, a paragraph, a bar chart drawn with vector graphics, per page.

    `metadata`: the PDF document info (title, author, subject, creationDate, modDate).
    `broken_pages`: 1-based pages whose /Contents points at a non-stream object, so MuPDF
    cannot draw them ("content stream is not a stream").
    """
    import numpy as np
    import pymupdf

    rng = np.random.default_rng(seed)
    doc = pymupdf.open()
    for i in range(n_pages):
        pg = doc.new_page(width=300, height=400)
        pg.insert_text((30, 40), f"{title} {seed} - page {i + 1}", fontsize=14)
        pg.insert_text((30, 70), f"Revenue grew {int(rng.integers(1, 99))}% in region {i}.", fontsize=10)
        for j, h in enumerate(rng.integers(20, 200, 5)):
            color = tuple(float(c) for c in rng.random(3))
            pg.draw_rect(pymupdf.Rect(40 + 45 * j, 360 - int(h), 70 + 45 * j, 360), color=color, fill=color)
    if metadata:
        doc.set_metadata(metadata)
    for n in broken_pages:
        doc.xref_set_key(doc[n - 1].xref, "Contents", f"{doc.pdf_catalog()} 0 R")
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path
