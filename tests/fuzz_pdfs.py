"""Fuzzing ingestion: mutated real PDFs (and images) through validation and rendering.

Shared by the short deterministic test (tests/test_fuzz_ingest.py, hypothesis) and the long run
(scripts/fuzz_ingest.py). The rule: a mutated file either renders, or is refused whole with a
one-line RagvlError naming it, or has pages skipped with a one-line cause. Anything else (any
other exception, a message on several lines or without the file name, an oversized page) is a
bug, reported by `check_file` as an AssertionError.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

# Mutations are lists of (op, where, number, payload) tuples: `where` in [0, 1] is a position as
# a fraction of the file, `number` picks a token or a length, `payload` is raw bytes. A list of
# tuples shrinks well under hypothesis, and a seeded random source can draw the same tuples.
OPS = ("flip", "set", "delete", "insert", "token", "number", "duplicate", "splice")
TOKENS = [b"obj", b"endobj", b"stream", b"endstream", b"xref", b"trailer", b"startxref", b"%%EOF", b"/Length",
          b"/Contents", b"/Pages", b"/Kids", b"/Count", b"/Type", b"/Page", b"/Parent", b"/Resources", b"/Font",
          b"/XObject", b"/Filter", b"/FlateDecode", b"/DCTDecode", b"/Width", b"/Height", b"/BitsPerComponent",
          b"/MediaBox", b"/Rotate", b"/ObjStm", b"/XRef", b"/Encrypt", b" 0 R", b"<<", b">>", b"[", b"]", b"(", b")",
          b"-1", b"0", b"4294967296", b"99999999999", b"1e308", b"-0.0", b"null", b"BT", b"ET", b"Tj", b"Do", b"cm",
          b"q", b"Q", b"re f", b"\x00", b"\xff" * 4]
NUMBERS = [b"0", b"1", b"-1", b"2", b"255", b"65535", b"2147483647", b"2147483648", b"4294967295", b"-2147483649",
           b"99999999999999999999", b"1e30", b"0.000001", b"14400", b"3"]
_NUMBER = re.compile(rb"\d+")


def apply_mutations(data: bytes, mutations) -> bytes:
    """`data` with each (op, where, number, payload) applied in turn; deterministic."""
    buf = bytearray(data)
    for op, where, number, payload in mutations:
        n = len(buf)
        pos = min(int(where * n), max(n - 1, 0))
        if op == "flip" and n:
            buf[pos] ^= 1 << (number % 8)
        elif op == "set" and n:
            buf[pos] = number % 256
        elif op == "delete":
            del buf[pos:pos + 1 + number % 64]
        elif op == "insert":
            buf[pos:pos] = payload
        elif op == "token":
            token = TOKENS[number % len(TOKENS)]
            buf[pos:pos + len(token)] = token
        elif op == "number":  # replace the next number at or after pos: counts, lengths, offsets, sizes
            m = _NUMBER.search(buf, pos)
            if m:
                buf[m.start():m.end()] = NUMBERS[number % len(NUMBERS)]
        elif op == "duplicate":
            buf[pos:pos] = buf[pos:pos + 1 + number % 512]
        elif op == "splice" and n:  # a chunk of the file moved elsewhere
            other = min(int((number % 1000) / 1000 * n), n - 1)
            buf[pos:pos] = buf[other:other + 1 + len(payload) * 16]
    return bytes(buf)


def seed_corpus(root: Path) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the seed files: sample_pdfs/ and PDFs/images built here with PyMuPDF."""
    import pymupdf
    from PIL import Image

    seeds = [(p.name, p.read_bytes()) for p in sorted((root / "sample_pdfs").glob("*.pdf"))]
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 72), "Quarterly report", fontsize=24)
    page.insert_textbox(pymupdf.Rect(72, 100, 520, 400), "Revenue grew 12% on the year. " * 20, fontsize=10)
    page = doc.new_page(width=400, height=300)
    for k, h in enumerate((120, 260, 180)):
        page.draw_rect(pymupdf.Rect(50 + k * 100, 280 - h, 100 + k * 100, 280), color=(0, 0, 0), fill=(1, 0, 0))
    png = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 128, 255)).save(png, "PNG")
    page = doc.new_page(width=612, height=792)
    page.insert_image(pymupdf.Rect(100, 200, 400, 425), stream=png.getvalue())
    page.set_rotation(90)
    seeds.append(("plain.pdf", doc.tobytes(no_new_id=True)))
    seeds.append(("deflate.pdf", doc.tobytes(garbage=3, deflate=True, no_new_id=True)))
    seeds.append(("objstm.pdf", doc.tobytes(garbage=3, deflate=True, use_objstms=1, no_new_id=True)))
    doc.close()
    seeds.append(("picture.png", png.getvalue()))
    jpg = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 20, 20)).save(jpg, "JPEG")
    seeds.append(("picture.jpg", jpg.getvalue()))
    return seeds


def check_file(path: Path, *, dpi: float = 20, max_side: int = 256, causes: list | None = None) -> str:
    """Validate and render `path` in-process; the outcome ("rendered", "refused", "pages skipped").

    Raises AssertionError (a bug) for anything outside the rule in the module docstring. The
    causes of a refusal or of skipped pages are appended to `causes`, as `cause_kind` words.
    """
    causes = [] if causes is None else causes
    from ragvl.errors import RagvlError
    from ragvl.ingest import RenderedPage, SkippedPage, describe, open_document, render_result

    try:
        with open_document(path) as doc:
            info = describe(doc)
            results = [render_result(doc, i, dpi, max_side=max_side) for i in range(info.page_count)]
    except RagvlError as e:
        _one_line(str(e), path)
        causes.append(cause_kind(str(e).removeprefix(f"{path}: ")))
        return "refused"
    assert info.page_count >= 1
    for number, r in enumerate(results, 1):
        assert r.number == number
        if isinstance(r, SkippedPage):
            _one_line(r.message(str(path)), path)
            causes.append("page: " + cause_kind(r.reason))
        else:
            assert isinstance(r, RenderedPage) and r.png.startswith(b"\x89PNG")
            assert 1 <= r.width <= max_side and 1 <= r.height <= max_side, (r.width, r.height)
            assert isinstance(r.text, str)
    return "pages skipped" if any(r.skipped for r in results) else "rendered"


def _one_line(message: str, path: Path) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message, message


def cause_kind(message: str) -> str:
    """A message's kind for counting: its words before any parenthesis, colon or number."""
    return re.split(r"[(:;0-9]", message, maxsplit=1)[0].strip()
