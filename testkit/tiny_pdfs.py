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


def break_page_content(path, numbers):
    """Rewrite the PDF at `path` so that the pages `numbers` (1-based) lose their content stream
    (it points at the catalog, not a stream): MuPDF draws nothing for them and warns."""
    import pymupdf

    doc = pymupdf.open(path)
    for number in numbers:
        doc.xref_set_key(doc[number - 1].xref, "Contents", f"{doc.pdf_catalog()} 0 R")
    data = doc.tobytes()
    doc.close()
    path.write_bytes(data)
    return path


def make_image(path, size=(300, 200), color=(10, 200, 30), **save):
    """A small real image file; the format follows the suffix (.png, .jpg, .tif, ...)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 40):  # some structure, so the picture is not flat
        image.paste((255, 255, 255), (x, 0, x + 10, size[1]))
    image.save(path, **save)
    return path
