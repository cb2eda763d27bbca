"""ragvl.ingest: image files as documents, per-page skips, the stored-image bound, metadata and the
text layer, and the time-limited render worker (hangs and crashes cost a page, not the run).

Real files built here with PyMuPDF and PIL; real worker processes.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pymupdf
import pytest
from PIL import Image

from ragvl.errors import RagvlError
from ragvl.ingest import (MAX_SIDE, DocumentMetadata, Renderer, RenderedPage, SkippedPage, find_documents,
                          iter_pages, open_document, pdf_date_iso, render_result)
from tiny_pdfs import break_page_content, make_image, make_pdf


@pytest.fixture(scope="module")
def renderer():
    with Renderer(timeout=60) as r:
        yield r


def _pages(renderer, path, **kw):
    return list(renderer.pages(renderer.open(path), **kw))


# ---------------------------------------------------------------------------------------------
# Finding documents


def test_find_documents_takes_pdfs_and_images_recursively(tmp_path):
    root = tmp_path / "docs"
    for rel in ["a.pdf", "scan.PNG", "sub/photo.jpg", "sub/deeper/fax.tiff", "sub/x.JPEG", "sub/bmp.bmp",
                "notes.txt", "anim.webp", ".hidden/h.png", "sub/._x.png", "vector.svg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    rel = [p.relative_to(root.resolve()).as_posix() for p in find_documents([root])]
    assert rel == ["a.pdf", "scan.PNG", "sub/bmp.bmp", "sub/deeper/fax.tiff", "sub/photo.jpg", "sub/x.JPEG"]


# ---------------------------------------------------------------------------------------------
# Image files are one-page documents


@pytest.mark.parametrize("name, save", [("p.png", {}), ("p.jpg", {"quality": 95}), ("p.tif", {}),
                                        ("p.bmp", {}), ("p.gif", {}), ("hires.png", {"dpi": (300, 300)})])
def test_image_file_is_a_one_page_document_at_its_own_size(tmp_path, renderer, name, save):
    path = make_image(tmp_path / name, size=(300, 200), **save)
    info = renderer.open(path)
    assert (info.kind, info.page_count, info.metadata) == ("image", 1, DocumentMetadata())
    (page,) = list(renderer.pages(info, dpi=50))  # the dpi does not resize a picture
    assert isinstance(page, RenderedPage) and (page.number, page.width, page.height) == (1, 300, 200)
    got = np.asarray(page.image()).astype(int)
    want = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert got.shape == want.shape and np.abs(got - want).mean() < 3


def test_large_image_is_downscaled(tmp_path, renderer):
    (page,) = _pages(renderer, make_image(tmp_path / "wide.png", size=(4000, 1000)))
    assert (page.width, page.height) == (MAX_SIDE, 400)


@pytest.mark.parametrize("name, content, cause", [
    ("fake.png", b"just text, not a picture\n", r"fake\.png: not an image MuPDF can read \(a text file"),
    ("empty.jpg", b"", r"empty\.jpg: empty file"),
])
def test_bad_image_file_is_one_line_error(tmp_path, renderer, name, content, cause):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RagvlError, match=cause) as info:
        renderer.open(tmp_path / name)
    assert "\n" not in str(info.value)


def test_truncated_png_is_an_error_or_a_page(tmp_path, renderer):
    data = make_image(tmp_path / "full.png", size=(400, 300)).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    try:
        pages = _pages(renderer, tmp_path / "cut.png")
    except RagvlError as e:
        assert "cut.png" in str(e) and "\n" not in str(e)
    else:
        assert len(pages) == 1 and isinstance(pages[0], (RenderedPage, SkippedPage))


# ---------------------------------------------------------------------------------------------
# Per-page failures, poster pages, metadata, text


def test_corrupt_page_is_skipped_and_named_the_others_render(tmp_path, renderer):
    path = break_page_content(make_pdf(tmp_path / "r.pdf", 4), [2, 4])
    pages = _pages(renderer, path)
    assert [p.number for p in pages] == [1, 2, 3, 4]
    assert [p.skipped for p in pages] == [False, True, False, True]
    assert "corrupt page" in pages[1].reason and "content stream" in pages[1].reason
    assert pages[1].message(str(path)) == f"{path}: page 2: {pages[1].reason}"
    assert "page 3" in pages[2].text  # make_pdf writes "... - page 3" on it


def test_poster_page_is_rendered_downscaled(tmp_path, renderer):
    doc = pymupdf.open()
    page = doc.new_page(width=5000, height=5000)
    page.draw_rect(pymupdf.Rect(0, 0, 2500, 2500), color=(1, 0, 0), fill=(1, 0, 0))
    doc.new_page(width=14400, height=3000)  # 200 inches wide
    doc.save(tmp_path / "poster.pdf")
    square, banner = _pages(renderer, tmp_path / "poster.pdf")
    assert (square.width, square.height) == (1600, 1600)
    assert max(banner.width, banner.height) == 1600 and banner.height == 334
    red = np.asarray(square.image())[:800, :800]
    assert (red[..., 0] > 200).mean() > 0.99 and (red[..., 1] < 50).mean() > 0.99


def test_metadata_and_text_layer(tmp_path, renderer):
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Revenue grew 12%")
    doc.new_page()  # no text: ""
    doc.set_metadata({"title": "  Annual\n report ", "author": "Ada", "subject": "",
                      "creationDate": "D:20240301093000+01'00'", "modDate": "D:2024"})
    doc.save(tmp_path / "m.pdf")
    info = renderer.open(tmp_path / "m.pdf")
    assert info.metadata == DocumentMetadata(title="Annual report", author="Ada", subject=None, keywords=None,
                                             created="2024-03-01T09:30:00+01:00", modified="2024-01-01T00:00:00")
    first, blank = renderer.pages(info)
    assert first.text.strip() == "Revenue grew 12%" and blank.text == ""


@pytest.mark.parametrize("raw, iso", [
    ("D:20240301093000+01'00'", "2024-03-01T09:30:00+01:00"), ("D:20240301093000Z", "2024-03-01T09:30:00+00:00"),
    ("20240301093000-05'30'", "2024-03-01T09:30:00-05:30"), ("D:202403", "2024-03-01T00:00:00"),
    ("D:20241301", None), ("yesterday", None), ("", None), (None, None), ("D:20240230", None),
])
def test_pdf_dates_to_iso(raw, iso):
    assert pdf_date_iso(raw) == iso


def test_in_process_render_result_is_what_the_worker_sends(tmp_path, renderer):
    path = make_pdf(tmp_path / "r.pdf", 1)
    with open_document(path) as doc:
        local = render_result(doc, 0)
    (remote,) = _pages(renderer, path)
    assert local == remote


# ---------------------------------------------------------------------------------------------
# The worker: time limit, crashes, refusals, abandoned iterations


def test_hanging_page_is_skipped_with_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGVL_TEST_RENDER_HANG", "2")
    path = make_pdf(tmp_path / "r.pdf", 3)
    t0 = time.monotonic()
    # 5 s: the other pages must render within it even on a loaded machine (they take ~20 ms of CPU)
    with Renderer(timeout=5) as r:
        pages = _pages(r, path)
        assert r.restarts == 1
    assert time.monotonic() - t0 < 60
    assert [p.skipped for p in pages] == [False, True, False]
    assert pages[1] == SkippedPage(2, "rendering took longer than 5 s")


def test_crashing_page_is_skipped_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGVL_TEST_RENDER_CRASH", "1")
    with Renderer(timeout=30) as r:
        pages = _pages(r, make_pdf(tmp_path / "r.pdf", 2))
        assert pages[0] == SkippedPage(1, "MuPDF crashed while rendering (killed by SIGSEGV)")
        assert not pages[1].skipped
        # page 1 of the next document crashes again; its page 2 still comes back
        assert [p.skipped for p in _pages(r, make_pdf(tmp_path / "s.pdf", 2))] == [True, False]


def test_refused_document_and_then_the_next_one(tmp_path, renderer):
    enc = pymupdf.open(make_pdf(tmp_path / "plain.pdf", 1))
    enc.save(tmp_path / "secret.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    with pytest.raises(RagvlError, match=r"secret\.pdf: encrypted PDF"):
        renderer.open(tmp_path / "secret.pdf")
    assert len(_pages(renderer, tmp_path / "plain.pdf")) == 1


def test_abandoned_iteration_does_not_leak_into_the_next(tmp_path, renderer):
    a, b = make_pdf(tmp_path / "a.pdf", 3, seed=1), make_pdf(tmp_path / "b.pdf", 2, seed=2)
    first = next(iter(renderer.pages(renderer.open(a))))  # page 2's request is left in flight
    assert first.number == 1 and "seed" not in first.text
    pages = _pages(renderer, b)
    assert [p.number for p in pages] == [1, 2] and all("Report 2 - page" in p.text for p in pages)


def test_iter_pages_one_call(tmp_path):
    pages = list(iter_pages(make_pdf(tmp_path / "r.pdf", 2), dpi=36, timeout=30))
    assert [(p.number, p.width, p.height) for p in pages] == [(1, 150, 200), (2, 150, 200)]
    png = pages[0].png
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (150, 200)
    with pytest.raises(RagvlError, match=r"nothere\.pdf: no such file"):
        list(iter_pages(tmp_path / "nothere.pdf"))


def test_bad_timeout_setting_is_one_line(monkeypatch):
    monkeypatch.setenv("RAGVL_PAGE_TIMEOUT", "soon")
    with pytest.raises(RagvlError, match=r"RAGVL_PAGE_TIMEOUT='soon': not a number"):
        Renderer()
    assert os.environ["RAGVL_PAGE_TIMEOUT"] == "soon"


def test_hanging_open_is_a_one_line_refusal(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGVL_TEST_RENDER_HANG", "0")
    path = make_pdf(tmp_path / "r.pdf", 1)
    with Renderer(timeout=1.5) as r:
        with pytest.raises(RagvlError, match=r"r\.pdf: opening it took longer than 1\.5 s$"):
            r.open(path)
