"""ragvl.ingest: finding documents, rejecting bad files with one-line errors, rendering pages.

Every PDF here is built in a tmp folder with PyMuPDF (text, a drawn chart, an embedded image),
then broken in each way a user's folder can hold: encrypted, truncated, garbage, empty, another
format renamed .pdf, a directory, a broken symlink, a page whose content is gone.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pymupdf
import pytest
from PIL import Image

import ragvl.ingest as ingest
import ragvl.ingest.files as rfiles
import ragvl.ingest.validate as rvalidate
from ragvl.errors import RagvlError
from ragvl import fsutil
from ragvl.fsutil import sha256_file
from ragvl.ingest import DEFAULT_DPI, MAX_SIDE, find_pdfs, open_pdf, png_bytes

A4 = (595, 842)
LETTER = (612, 792)
RED = (1, 0, 0)


def _png(color=(0, 128, 255), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _build(**save) -> bytes:
    """A 3-page PDF: A4 text, A4 bar chart, Letter page with an embedded image."""
    doc = pymupdf.open()
    p = doc.new_page(width=A4[0], height=A4[1])
    p.insert_text((72, 72), "Quarterly report", fontsize=24)
    p.insert_textbox(pymupdf.Rect(72, 100, 520, 400), "Revenue grew 12% on the year. " * 20, fontsize=10)
    p = doc.new_page(width=A4[0], height=A4[1])
    p.draw_line((80, 700), (520, 700))  # axes
    p.draw_line((80, 700), (80, 300))
    for k, h in enumerate((120, 260, 180, 340)):
        p.draw_rect(pymupdf.Rect(110 + k * 100, 700 - h, 170 + k * 100, 700), color=(0, 0, 0), fill=RED)
        p.insert_text((120 + k * 100, 720), f"Q{k + 1}", fontsize=12)
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((72, 72), "Figure 1", fontsize=14)
    p.insert_image(pymupdf.Rect(100, 200, 400, 425), stream=_png())
    data = doc.tobytes(**save)
    doc.close()
    return data


@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    return _build()


@pytest.fixture
def good(tmp_path, good_bytes):
    path = tmp_path / "report.pdf"
    path.write_bytes(good_bytes)
    return path


def _one_line_error(path, cause: str) -> str:
    """open_pdf(path) must raise a one-line RagvlError naming the file and matching `cause`."""
    with pytest.raises(RagvlError) as info:
        with open_pdf(path) as doc:  # also render, in case a bad file got through open
            list(doc.iter_pages(dpi=10))
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    assert os.path.basename(path) in msg
    assert re.search(cause, msg, re.IGNORECASE), msg
    return msg


# ---------------------------------------------------------------------------------------------
# Good files and rendering


def test_good_pdf_renders_every_page(good):
    with open_pdf(good) as doc:
        assert doc.page_count == 3
        assert not doc.repaired
        pages = list(doc.iter_pages())
        assert doc.warnings == []
    assert doc.closed
    assert [n for n, _ in pages] == [1, 2, 3]  # page numbers are 1-based
    for _, image in pages:
        assert isinstance(image, Image.Image) and image.mode == "RGB"
    text, chart, figure = (np.asarray(im) for _, im in pages)
    assert (text.min(axis=-1) < 64).sum() > 1000  # dark glyphs on white
    red = (chart[..., 0] > 200) & (chart[..., 1] < 60) & (chart[..., 2] < 60)
    assert red.sum() > 0.02 * red.size  # the bars
    z = DEFAULT_DPI / 72
    patch = figure[int(250 * z):int(375 * z), int(150 * z):int(350 * z)].reshape(-1, 3)
    assert np.abs(patch.astype(int) - (0, 128, 255)).max() <= 2  # the embedded image


def _expected_size(w_pt, h_pt, dpi):
    # PyMuPDF scales the page rectangle by dpi/72 and rounds fractional edges outwards.
    irect = (pymupdf.Rect(0, 0, w_pt, h_pt) * pymupdf.Matrix(dpi / 72, dpi / 72)).irect
    return irect.width, irect.height


@pytest.mark.parametrize("dpi", [DEFAULT_DPI, 72, 150, 97.5])
def test_render_size_is_points_times_dpi_over_72(good, dpi):
    with open_pdf(good) as doc:
        sizes = [doc.render_page(i, dpi, max_side=None).size for i in range(doc.page_count)]
        assert doc.page_size(0) == A4 and doc.page_size(2) == LETTER
    assert sizes == [_expected_size(*A4, dpi), _expected_size(*A4, dpi), _expected_size(*LETTER, dpi)]


def test_render_size_numbers(good):
    with open_pdf(good) as doc:
        assert DEFAULT_DPI == 120
        # A4 at 120 DPI: 595 * 120/72 = 991.7 -> 992, 842 * 120/72 = 1403.3 -> 1404 (rounded out)
        assert doc.render_page(0).size == (992, 1404)
        assert doc.render_page(2).size == (1020, 1320)  # Letter: exact
        assert doc.render_page(0, 72).size == A4
        assert doc.render_page(0, 144, max_side=None).size == (1190, 1684)
        assert doc.render_page(0, 144).size == (1131, 1600)  # the stored-image bound, MAX_SIDE
        # enough for Qwen2-VL's ~1280-token budget (smart_resize keeps 840x1176 of an A4 page)
        w, h = doc.render_page(0).size
        assert w >= 840 and h >= 1176 and w * h > 1280 * 28 * 28


def test_rotated_page_size(tmp_path):
    doc = pymupdf.open()
    doc.new_page(width=A4[0], height=A4[1]).set_rotation(90)
    doc.save(tmp_path / "rot.pdf")
    with open_pdf(tmp_path / "rot.pdf") as pdf:
        assert pdf.page_size(0) == (A4[1], A4[0])
        assert pdf.render_page(0).size == (1404, 992)


def test_huge_page_is_capped(tmp_path):
    doc = pymupdf.open()
    doc.new_page(width=14400, height=7200)  # the largest page PDF allows is 200 x 200 inches
    doc.new_page(width=A4[0], height=A4[1])
    doc.save(tmp_path / "poster.pdf")
    with open_pdf(tmp_path / "poster.pdf") as pdf:
        assert MAX_SIDE == 1600
        assert pdf.render_page(0).size == (1600, 800)  # the default bound: 8 DPI
        w, h = pdf.render_page(0, max_side=500).size
        assert max(w, h) == 500 and abs(w / h - 2) < 0.01
        assert pdf.render_page(1, max_side=500).size == (354, 500)  # A4 at ~42.8 DPI
        assert pdf.render_page(1, max_side=None).size == (992, 1404)
        assert pdf.render_page(1).size == (992, 1404)  # ordinary pages are not touched by the bound
        for side in (1600, 999, 37):
            z = ingest.fit_zoom(pdf._load(0).rect, DEFAULT_DPI / 72, side)
            irect = (pdf._load(0).rect * pymupdf.Matrix(z, z)).irect
            assert side - 2 <= max(irect.width, irect.height) <= side


def test_page_conventions_are_documented(good):
    assert "0-based" in ingest.PdfDocument.render_page.__doc__
    assert "1-based" in ingest.PdfDocument.iter_pages.__doc__
    assert "0-based" in ingest.__doc__ and "1-based" in ingest.__doc__
    with open_pdf(good) as doc:
        with pytest.raises(IndexError, match="0-based"):
            doc.render_page(3)
        with pytest.raises(IndexError):
            doc.render_page(-1)  # no Python-style negative indexes
        with pytest.raises(TypeError):
            doc.render_page(1.0)
        assert doc.render_page(np.int64(2), 10).size == (85, 110)
        with pytest.raises(ValueError):
            doc.render_page(0, dpi=0)
    with pytest.raises(ValueError, match="closed"):
        doc.render_page(0)


def test_owner_password_only_pdf_opens(tmp_path):
    # Permission-restricted PDFs (owner password, empty user password) are common and readable.
    doc = pymupdf.open(stream=_build(), filetype="pdf")
    doc.save(tmp_path / "restricted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner",
             permissions=0)
    with open_pdf(tmp_path / "restricted.pdf") as pdf:
        assert pdf.page_count == 3 and pdf.render_page(0, 20).size == (166, 234)


def _render_page_2(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with open_pdf(path) as doc:
        return doc.render_page(1, 30)


def test_junk_after_eof_is_accepted(tmp_path, good_bytes):
    ref = np.asarray(_render_page_2(tmp_path, "ref.pdf", good_bytes))
    small = np.asarray(_render_page_2(tmp_path, "junk.pdf", good_bytes + b"\0" * 500))
    assert np.array_equal(ref, small)
    # More than 1 KiB of junk hides startxref from MuPDF, which repairs the file; ragvl accepts it.
    path = tmp_path / "bigjunk.pdf"
    path.write_bytes(good_bytes + b"\r\n<html>signature</html>" * 100)
    with open_pdf(path) as doc:
        assert doc.repaired and doc.page_count == 3
        assert np.array_equal(np.asarray(doc.render_page(1, 30)), ref)


# ---------------------------------------------------------------------------------------------
# Bad files: each one RagvlError, one line, naming the file and the cause


def test_encrypted(tmp_path):
    doc = pymupdf.open(stream=_build(), filetype="pdf")
    doc.save(tmp_path / "secret.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    _one_line_error(tmp_path / "secret.pdf", r"encrypted.*password")


@pytest.mark.parametrize("save", [{}, {"garbage": 3, "deflate": True}, {"garbage": 3, "use_objstms": 1}],
                         ids=["plain", "deflate", "objstm"])
def test_truncated_in_half(tmp_path, save):
    data = _build(**save)
    path = tmp_path / "half.pdf"
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(path, r"truncated")


def test_truncated_trailer(tmp_path, good_bytes):
    path = tmp_path / "notrailer.pdf"
    path.write_bytes(good_bytes[: good_bytes.rindex(b"trailer")])
    _one_line_error(path, r"truncated")
    path.write_bytes(good_bytes[: good_bytes.rindex(b"startxref")])
    _one_line_error(path, r"truncated")
    # Cut after startxref: the xref table and every object are there; MuPDF reads it as is.
    path.write_bytes(good_bytes[: good_bytes.rindex(b"%%EOF")])
    with open_pdf(path) as doc:
        assert doc.page_count == 3


def test_truncated_at_every_point(tmp_path, good_bytes):
    """A sweep: each cut is rejected (as truncated, or as not a PDF when the header is cut)."""
    path = tmp_path / "cut.pdf"
    for cut in range(1, len(good_bytes) - 8, len(good_bytes) // 40):
        path.write_bytes(good_bytes[:cut])
        with pytest.raises(RagvlError, match=r"truncated|not a PDF"):
            open_pdf(path).close()


def test_truncated_incremental_update(tmp_path, good_bytes):
    # MuPDF opens a file cut inside its last incremental update *without* repair, as the
    # previous revision: the edits silently vanish. ragvl sees the object after startxref.
    path = tmp_path / "edited.pdf"
    path.write_bytes(good_bytes)
    doc = pymupdf.open(path)
    doc[0].insert_text((72, 500), "added later", fontsize=30)
    doc.saveIncr()
    doc.close()
    data = path.read_bytes()
    with open_pdf(path) as pdf:
        assert pdf.page_count == 3
    cut = (len(good_bytes) + len(data)) // 2
    path.write_bytes(data[:cut])
    raw = pymupdf.open(path)
    assert raw.page_count == 3 and not raw.is_repaired  # what PyMuPDF does
    raw.close()
    _one_line_error(path, r"truncated")


def test_pymupdf_opens_truncated_files(tmp_path, good_bytes):
    """Why ragvl checks truncation itself: PyMuPDF opens a half file, repairs it, renders it."""
    path = tmp_path / "half.pdf"
    path.write_bytes(good_bytes[: len(good_bytes) // 2])
    raw = pymupdf.open(path)
    assert raw.is_repaired and raw.page_count >= 1
    raw[raw.page_count - 1].get_pixmap(dpi=10)  # no exception: a blank or partial page
    raw.close()
    pymupdf.TOOLS.mupdf_warnings()


@pytest.mark.parametrize("content, cause", [
    (os.urandom(4096), r"not a PDF"),
    (b"%PDF-1.7\n" + bytes(range(256)) * 8, r"truncated or corrupt"),
    (b"", r"empty"),
    (_png(), r"not a PDF \(a PNG image\)"),
    (b"Meeting notes\nnothing to see here\n", r"not a PDF \(a text file\)"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", r"not a PDF \(an HTML page"),
    (b"PK\x03\x04" + b"\0" * 100, r"not a PDF \(a ZIP"),
], ids=["garbage", "pdf-header-garbage", "empty", "png", "text", "html", "zip"])
def test_not_a_pdf(tmp_path, content, cause):
    path = tmp_path / "bad.pdf"
    path.write_bytes(content)
    _one_line_error(path, cause)


def test_no_pages(tmp_path):
    # PyMuPDF refuses to save a 0-page document, so write one by hand (a valid file).
    body = b"%PDF-1.4\n"
    offsets = []
    objects = (b"1 0 obj <</Type/Catalog/Pages 2 0 R>> endobj\n", b"2 0 obj <</Type/Pages/Kids[]/Count 0>> endobj\n")
    for obj in objects:
        offsets.append(len(body))
        body += obj
    xref = len(body)
    body += b"xref\n0 3\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    body += b"trailer <</Size 3/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % xref
    path = tmp_path / "nopages.pdf"
    path.write_bytes(body)
    msg = _one_line_error(path, r"no pages")
    assert "corrupt" not in msg


def test_directory_named_pdf(tmp_path):
    (tmp_path / "x.pdf").mkdir()
    _one_line_error(tmp_path / "x.pdf", r"is a directory")


def test_broken_symlink(tmp_path):
    (tmp_path / "link.pdf").symlink_to(tmp_path / "gone.pdf")
    msg = _one_line_error(tmp_path / "link.pdf", r"broken symbolic link")
    assert "gone.pdf" in msg


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "nothere.pdf", r"no such file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.pdf")  # opening it for reading would block forever
    _one_line_error(tmp_path / "pipe.pdf", r"not a regular file")


def test_permission_denied(tmp_path, good, monkeypatch):
    good.chmod(0)
    try:
        if os.access(good, os.R_OK):  # root reads anyway: simulate what open() would raise
            def denied(path, *a, **k):
                raise PermissionError(13, "Permission denied", str(path))

            monkeypatch.setattr(rvalidate, "open", denied, raising=False)
            monkeypatch.setattr(fsutil, "open", denied, raising=False)
        _one_line_error(good, r"permission denied")
        with pytest.raises(RagvlError, match=r"report\.pdf: permission denied"):
            sha256_file(good)
    finally:
        good.chmod(0o644)


def test_unreadable_folder(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()

    def walk(top, onerror=None, followlinks=False):
        onerror(PermissionError(13, "Permission denied", str(top)))
        return iter(())

    monkeypatch.setattr(rfiles.os, "walk", walk)
    with pytest.raises(RagvlError, match=r"locked: cannot read folder \(permission denied\)"):
        find_pdfs([tmp_path / "locked"])


def test_page_with_lost_content(tmp_path, good_bytes):
    # A structurally valid file (no repair) whose page 2 content points at a non-stream object:
    # MuPDF only warns and draws nothing, ragvl says which page is broken.
    doc = pymupdf.open(stream=good_bytes, filetype="pdf")
    page = doc[1]
    doc.xref_set_key(page.xref, "Contents", f"[{page.get_contents()[0]} 0 R {doc.pdf_catalog()} 0 R]")
    doc.xref_set_key(doc[2].xref, "Contents", f"{doc.pdf_catalog()} 0 R")
    doc.save(tmp_path / "lost.pdf")
    with open_pdf(tmp_path / "lost.pdf") as pdf:
        assert not pdf.repaired
        assert pdf.render_page(0, 20).size == (166, 234)  # page 1 is fine
        for index, number in ((1, 2), (2, 3), (2, 3)):  # twice: MuPDF's de-duplication must not hide it
            with pytest.raises(RagvlError) as info:
                pdf.render_page(index, 20)
            msg = str(info.value)
            assert "\n" not in msg and "lost.pdf" in msg
            assert f"page {number}: corrupt page" in msg


def test_render_exception_names_file_and_page(good, monkeypatch):
    def boom(self, *a, **k):
        raise RuntimeError("code=2: out of memory")

    with open_pdf(good) as doc:
        monkeypatch.setattr(pymupdf.Page, "get_pixmap", boom)
        with pytest.raises(RagvlError, match=r"report\.pdf: page 2: cannot render \(.*out of memory"):
            doc.render_page(1)


_QUIET_SCRIPT = """
import sys, pymupdf
from ragvl.errors import RagvlError
from ragvl.ingest import open_pdf
# PyMuPDF prints "MuPDF error: ..." / "MuPDF warning: ..." when these are on (the default of
# older versions); ragvl turns them off again on every open.
pymupdf.TOOLS.mupdf_display_errors(True)
if hasattr(pymupdf.TOOLS, "mupdf_display_warnings"):
    pymupdf.TOOLS.mupdf_display_warnings(True)
for path in sys.argv[1:]:
    try:
        with open_pdf(path) as doc:
            for _ in doc.iter_pages(dpi=10):
                pass
    except RagvlError:
        pass
pymupdf.open(sys.argv[1]).close()  # PyMuPDF itself, after ragvl quieted it
"""


def test_mupdf_stays_quiet(tmp_path, good_bytes):
    # In a subprocess: PyMuPDF binds sys.stdout at import, which pytest's capture cannot see.
    paths = []
    for name, data in [("half.pdf", good_bytes[: len(good_bytes) // 2]), ("hdr.pdf", b"%PDF-1.4\nxx"),
                       ("tail.pdf", good_bytes + b" " * 2000)]:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(ingest.__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYMUPDF_MESSAGE", None)
    proc = subprocess.run([sys.executable, "-c", _QUIET_SCRIPT, *paths], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


# ---------------------------------------------------------------------------------------------
# find_pdfs


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "docs"
    for rel in ["a.pdf", "sub/B.PDF", "sub/deeper/c.Pdf", "sub/notes.txt", "sub/pdf", "e.pdfx",
                ".git/objects/x.pdf", ".ragvl/cache.pdf", "sub/.hidden/h.pdf", "sub/._a.pdf",
                "folder.pdf/inner.pdf"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"%PDF-1.4\n")
    return root


def test_find_pdfs_recursive_case_insensitive_hidden_skipped(tree):
    found = find_pdfs([tree])
    rel = [p.relative_to(tree.resolve()).as_posix() for p in found]
    assert rel == ["a.pdf", "folder.pdf/inner.pdf", "sub/B.PDF", "sub/deeper/c.Pdf"]
    assert all(p.is_absolute() for p in found)


def test_find_pdfs_sorted_dedup_resolved(tree, monkeypatch):
    monkeypatch.chdir(tree)
    found = find_pdfs(["sub", "a.pdf", tree / "a.pdf", "./sub/../a.pdf", tree, "sub/deeper"])
    assert found == sorted(found) and len(found) == len(set(found)) == 4
    assert tree.resolve() / "a.pdf" in found
    assert find_pdfs("a.pdf") == [tree.resolve() / "a.pdf"]  # one path, not its characters


def test_find_pdfs_explicit_files_are_taken(tree):
    # Named explicitly, a non-.pdf or hidden file is kept; open_pdf reports what it really is.
    found = find_pdfs([tree / "sub" / "notes.txt", tree / ".ragvl" / "cache.pdf", tree / ".git"])
    assert [p.name for p in found] == ["x.pdf", "cache.pdf", "notes.txt"]


def test_find_pdfs_symlinks(tree, tmp_path):
    (tree / "sub" / "loop").symlink_to(tree, target_is_directory=True)  # a cycle
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "linked.pdf").write_bytes(b"%PDF-1.4\n")
    (tree / "more").symlink_to(other, target_is_directory=True)
    (tree / "dangling.pdf").symlink_to(tmp_path / "missing.pdf")
    found = find_pdfs([tree])
    names = [p.name for p in found]
    assert names.count("a.pdf") == 1 and "linked.pdf" in names
    assert (other / "linked.pdf").resolve() in found
    assert tree.resolve() / "dangling.pdf" in found  # kept, so open_pdf can report it
    _one_line_error(tree.resolve() / "dangling.pdf", r"broken symbolic link")
    with pytest.raises(RagvlError, match=r"dangling\.pdf: broken symbolic link"):
        find_pdfs([tree / "dangling.pdf"])


def test_find_pdfs_missing_path(tree):
    with pytest.raises(RagvlError, match=r"nope/x\.pdf: no such file or folder"):
        find_pdfs([tree, tree / "nope" / "x.pdf"])
    assert find_pdfs([tree / "sub" / "deeper" / ".."]) and find_pdfs([]) == []


def test_find_pdfs_empty_folder(tmp_path):
    assert find_pdfs([tmp_path]) == []


# ---------------------------------------------------------------------------------------------
# sha256_file, png_bytes


def test_sha256_file(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "big.bin").write_bytes(data)
    assert sha256_file(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(tmp_path / "big.bin"), chunk_size=1000) == hashlib.sha256(data).hexdigest()
    with pytest.raises(RagvlError, match=r"gone\.pdf: no such file"):
        sha256_file(tmp_path / "gone.pdf")
    (tmp_path / "d.pdf").mkdir()
    with pytest.raises(RagvlError, match=r"d\.pdf: is a directory"):
        sha256_file(tmp_path / "d.pdf")


def test_png_bytes_roundtrip(good):
    with open_pdf(good) as doc:
        image = doc.render_page(1, 50)
    data = png_bytes(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    back = Image.open(io.BytesIO(data))
    assert back.mode == "RGB" and back.size == image.size
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_ingest_imports_only_errors_and_fsutil_from_ragvl():
    # ingest is the bottom layer: nothing above it (models, index, answer, api, cli) is imported.
    folder = os.path.dirname(ingest.__file__)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            src = open(os.path.join(folder, name)).read()
            imports = re.findall(r"^\s*(?:from|import)\s+(\.\S*|ragvl\S*)", src, re.MULTILINE)
            outside = {i for i in imports if i.startswith("..") or i.startswith("ragvl")}
            assert outside <= {"..errors", "..fsutil"}, (name, imports)
