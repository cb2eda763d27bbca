#!/usr/bin/env python3
"""Generate the sample report PDFs in sample_pdfs/ (all companies and numbers are fictional).

    python sample_pdfs/make_samples.py [OUT_DIR]      # OUT_DIR defaults to this folder

Every chart, diagram, image table and the scanned page is drawn with Pillow and inserted with
`page.insert_image`, so the numbers that the questions in questions.json ask about exist only in
the pictures, never in the PDF text layer. Fonts come from inside PyMuPDF (Nimbus Sans / Courier
for Latin text, Droid Sans Fallback for Japanese), so the output does not depend on the fonts
installed on the machine. The random noise of the scanned page uses fixed seeds and the PDF
metadata carries fixed dates, so with the same PyMuPDF / Pillow / numpy versions a re-run writes
byte-identical files; the versions used for the committed files are in manifest.json.

Dependencies: pymupdf, pillow, numpy (no matplotlib).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent

# Fixed metadata dates: the PDFs must not change when regenerated.
PDF_DATE = "D:20241115090000Z"
CREATOR = "ragvl sample_pdfs/make_samples.py"

A4 = (595.0, 842.0)
MARGIN = 62.0
CONTENT_W = A4[0] - 2 * MARGIN

# Colours (0-255 for Pillow; the PDF helpers convert).
NAVY = (31, 78, 121)
BLUE = (46, 134, 193)
ORANGE = (230, 140, 25)
GREEN = (39, 164, 96)
RED = (192, 57, 43)
GREY = (120, 120, 120)
LIGHT = (225, 225, 225)
INK = (35, 35, 35)
WHITE = (255, 255, 255)


def rgb01(c):
    return tuple(v / 255 for v in c)


# --------------------------------------------------------------------------------------------
# Fonts: the buffers shipped inside PyMuPDF, loaded into Pillow with the BASIC layout engine so
# the rasterization does not depend on whether libraqm is installed.

_FONT_BYTES: dict[str, bytes] = {}
_PIL_FONTS: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}


def font_bytes(name: str) -> bytes:
    if name not in _FONT_BYTES:
        _FONT_BYTES[name] = bytes(pymupdf.Font(name).buffer)
    return _FONT_BYTES[name]


def pil_font(name: str, px: int) -> ImageFont.FreeTypeFont:
    key = (name, px)
    if key not in _PIL_FONTS:
        _PIL_FONTS[key] = ImageFont.truetype(io.BytesIO(font_bytes(name)), px,
                                             layout_engine=ImageFont.Layout.BASIC)
    return _PIL_FONTS[key]


# --------------------------------------------------------------------------------------------
# A Pillow canvas measured in PDF points. It draws at `scale * ss` pixels per point and is
# downsampled by `ss` at the end, which anti-aliases the lines and pie slices.


class Canvas:
    def __init__(self, w_pt: float, h_pt: float, scale: float = 3.0, ss: int = 2, bg=WHITE):
        self.w, self.h, self.scale, self.ss = w_pt, h_pt, scale, ss
        self.k = scale * ss
        self.im = Image.new("RGB", (round(w_pt * self.k), round(h_pt * self.k)), bg)
        self.d = ImageDraw.Draw(self.im)

    def P(self, x, y):
        return (round(x * self.k), round(y * self.k))

    def font(self, size, bold=False, jp=False, mono=False):
        name = "japan" if jp else ("cobo" if bold else "cour") if mono else ("hebo" if bold else "helv")
        return pil_font(name, max(1, round(size * self.k)))

    def text(self, x, y, s, size=9, bold=False, fill=INK, anchor="la", jp=False, mono=False):
        self.d.text(self.P(x, y), s, font=self.font(size, bold, jp, mono), fill=fill, anchor=anchor)

    def text_w(self, s, size=9, bold=False, jp=False, mono=False):
        return self.d.textlength(s, font=self.font(size, bold, jp, mono)) / self.k

    def vtext(self, x, y, s, size=9, bold=False, fill=INK, jp=False):
        """Text rotated 90 degrees counter-clockwise, centred on (x, y)."""
        f = self.font(size, bold, jp)
        l, t, r, b = f.getbbox(s)
        tile = Image.new("L", (r + 4, b + 4), 0)
        ImageDraw.Draw(tile).text((2, 2), s, font=f, fill=255)
        tile = tile.rotate(90, expand=True)
        cx, cy = self.P(x, y)
        self.im.paste(Image.new("RGB", tile.size, fill), (cx - tile.width // 2, cy - tile.height // 2), tile)

    def line(self, pts, fill=INK, width=1.0):
        self.d.line([self.P(x, y) for x, y in pts], fill=fill, width=max(1, round(width * self.k)), joint="curve")

    def dashed(self, pts, fill=GREY, width=1.0, dash=4.0, gap=3.0):
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            n = math.hypot(x1 - x0, y1 - y0)
            t = 0.0
            while t < n:
                t1 = min(n, t + dash)
                self.line([(x0 + (x1 - x0) * t / n, y0 + (y1 - y0) * t / n),
                           (x0 + (x1 - x0) * t1 / n, y0 + (y1 - y0) * t1 / n)], fill, width)
                t = t1 + gap

    def rect(self, x0, y0, x1, y1, fill=None, outline=None, width=1.0, radius=0.0):
        box = [self.P(x0, y0), self.P(x1, y1)]
        w = max(1, round(width * self.k)) if outline else 0
        if radius:
            self.d.rounded_rectangle(box, radius=round(radius * self.k), fill=fill, outline=outline, width=w)
        else:
            self.d.rectangle(box, fill=fill, outline=outline, width=w)

    def poly(self, pts, fill=None, outline=None, width=1.0):
        self.d.polygon([self.P(x, y) for x, y in pts], fill=fill, outline=outline,
                       width=max(1, round(width * self.k)) if outline else 0)

    def circle(self, x, y, r, fill=None, outline=None, width=1.0):
        self.d.ellipse([self.P(x - r, y - r), self.P(x + r, y + r)], fill=fill, outline=outline,
                       width=max(1, round(width * self.k)) if outline else 0)

    def arrow(self, pts, fill=INK, width=1.2, head=7.0):
        """A polyline ending in a filled arrowhead at its last point."""
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
        a = math.atan2(y1 - y0, x1 - x0)
        bx, by = x1 - head * math.cos(a), y1 - head * math.sin(a)
        self.line(list(pts[:-1]) + [(bx, by)], fill, width)
        w = head * 0.45
        self.poly([(x1, y1), (bx + w * math.sin(a), by - w * math.cos(a)),
                   (bx - w * math.sin(a), by + w * math.cos(a))], fill=fill)

    def wrapped(self, cx, cy, s, size=9, bold=False, fill=INK, jp=False, spacing=1.2):
        """Centre the lines of `s` (split on newlines) around (cx, cy)."""
        lines = s.split("\n")
        top = cy - (len(lines) - 1) * size * spacing / 2
        for i, ln in enumerate(lines):
            self.text(cx, top + i * size * spacing, ln, size, bold, fill, "mm", jp)

    def png(self) -> bytes:
        """The picture as a 256-colour palette PNG (see insert_png for why a palette)."""
        im = self.im.resize((round(self.w * self.scale), round(self.h * self.scale)), Image.LANCZOS)
        im = im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
        return buf.getvalue()


def insert_png(page: pymupdf.Page, rect: pymupdf.Rect, png: bytes) -> int:
    """Insert a palette PNG as an /Indexed image whose stream is the PNG's own zlib data.

    `page.insert_image` decodes a PNG and stores it as flate-compressed RGB without a predictor,
    which makes an anti-aliased chart 2-3x larger than the PNG file. A PNG's IDAT data *is* a
    valid /FlateDecode stream with /Predictor 15, so it is placed in the PDF as it is.
    """
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    i, idat, plte, ihdr = 8, [], None, None
    while i < len(png):
        (n,) = struct.unpack(">I", png[i:i + 4])
        kind, data = png[i + 4:i + 8], png[i + 8:i + 8 + n]
        i += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data)
        elif kind == b"PLTE":
            plte = data
        elif kind == b"IDAT":
            idat.append(data)
    w, _, bits, color_type, _, _, interlace = ihdr
    assert color_type == 3 and interlace == 0 and plte, "expected a non-interlaced palette PNG"
    xref = page.insert_image(rect, stream=png)
    doc = page.parent
    doc.update_stream(xref, b"".join(idat), compress=0)
    doc.xref_set_key(xref, "Filter", "/FlateDecode")
    doc.xref_set_key(xref, "DecodeParms", f"<</Predictor 15/Colors 1/BitsPerComponent {bits}/Columns {w}>>")
    doc.xref_set_key(xref, "ColorSpace", f"[/Indexed/DeviceRGB {len(plte) // 3 - 1}<{plte.hex()}>]")
    doc.xref_set_key(xref, "BitsPerComponent", str(bits))
    return xref


def legend(c: Canvas, x, y, items, size=8, jp=False, gap=16.0, dashed_idx=()):
    """A one-row legend starting at (x, y): coloured swatch + name per item; returns end x."""
    for i, (name, color) in enumerate(items):
        if i in dashed_idx:
            c.dashed([(x, y), (x + 16, y)], color, 1.6, 4, 2.5)
        else:
            c.rect(x, y - 4, x + 10, y + 4, fill=color)
        tx = x + (19 if i in dashed_idx else 14)
        c.text(tx, y, name, size, anchor="lm", jp=jp)
        x = tx + c.text_w(name, size, jp=jp) + gap
    return x


def y_axis(c: Canvas, x0, x1, y_of, ticks, fmt=str, size=8, grid=True):
    for t in ticks:
        y = y_of(t)
        if grid:
            c.line([(x0, y), (x1, y)], LIGHT, 0.6)
        c.line([(x0 - 3, y), (x0, y)], GREY, 0.8)
        c.text(x0 - 5, y, fmt(t), size, fill=(70, 70, 70), anchor="rm")
    c.line([(x0, y_of(ticks[0])), (x0, y_of(ticks[-1]))], GREY, 0.8)


# --------------------------------------------------------------------------------------------
# Charts, diagram, table


def grouped_bar_chart(title, groups, series, values, ymax, ystep, ylabel, *, w=CONTENT_W, h=300.0,
                      jp=False, decimals=1) -> bytes:
    """values[s][g]: series s, group g. Value labels on every bar."""
    c = Canvas(w, h)
    c.text(w / 2, 12, title, 10.5, bold=not jp, anchor="mm", jp=jp)
    # legend centred under the title
    lw = sum(14 + c.text_w(n, 8, jp=jp) + 16 for n, _ in series) - 16
    legend(c, (w - lw) / 2, 30, series, 8, jp=jp)
    x0, x1, yt, yb = 52.0, w - 10, 48.0, h - 34
    y_of = lambda v: yb - (yb - yt) * v / ymax  # noqa: E731
    ticks = [i * ystep for i in range(int(round(ymax / ystep)) + 1)]
    y_axis(c, x0, x1, y_of, ticks, lambda t: f"{t:g}")
    c.vtext(14, (yt + yb) / 2, ylabel, 8.5, jp=jp)
    gw = (x1 - x0) / len(groups)
    bw = gw * 0.78 / len(series)
    for g, gname in enumerate(groups):
        gx = x0 + g * gw + gw * 0.11
        for s, (_, color) in enumerate(series):
            v = values[s][g]
            bx = gx + s * bw
            c.rect(bx + 1, y_of(v), bx + bw - 1, yb, fill=color)
            c.text(bx + bw / 2, y_of(v) - 2.5, f"{v:.{decimals}f}", 7.2, fill=INK, anchor="md")
        c.text(x0 + (g + 0.5) * gw, yb + 11, gname, 9, anchor="mm", jp=jp)
    c.line([(x0, yb), (x1, yb)], INK, 1.0)
    return c.png()


def line_chart(title, xlabels, series, ymin, ymax, ystep, ylabel, *, labelled=0, w=CONTENT_W, h=270.0,
               jp=False, xlabel=None) -> bytes:
    """series: [(name, colour, values, dashed)]; series[labelled] gets value labels."""
    c = Canvas(w, h)
    c.text(w / 2, 12, title, 10.5, bold=not jp, anchor="mm", jp=jp)
    items = [(n, col) for n, col, _, _ in series]
    dashed_idx = [i for i, s in enumerate(series) if s[3]]
    lw = sum(14 + c.text_w(n, 8, jp=jp) + 16 + (5 if i in dashed_idx else 0) for i, (n, _) in enumerate(items)) - 16
    legend(c, (w - lw) / 2, 30, items, 8, jp=jp, dashed_idx=dashed_idx)
    x0, x1, yt, yb = 52.0, w - 14, 50.0, h - (44 if xlabel else 30)
    y_of = lambda v: yb - (yb - yt) * (v - ymin) / (ymax - ymin)  # noqa: E731
    ticks = [ymin + i * ystep for i in range(int(round((ymax - ymin) / ystep)) + 1)]
    y_axis(c, x0, x1, y_of, ticks, lambda t: f"{t:g}")
    c.vtext(14, (yt + yb) / 2, ylabel, 8.5, jp=jp)
    n = len(xlabels)
    x_of = lambda i: x0 + 14 + (x1 - x0 - 28) * i / (n - 1)  # noqa: E731
    for i, lab in enumerate(xlabels):
        c.line([(x_of(i), yb), (x_of(i), yb + 3)], GREY, 0.8)
        c.text(x_of(i), yb + 11, lab, 8.5, anchor="mm", jp=jp)
    if xlabel:
        c.text((x0 + x1) / 2, yb + 27, xlabel, 8.5, anchor="mm", jp=jp)
    c.line([(x0, yb), (x1, yb)], INK, 1.0)
    for k, (_, color, vals, dashed) in enumerate(series):
        pts = [(x_of(i), y_of(v)) for i, v in enumerate(vals)]
        if dashed:
            c.dashed(pts, color, 1.4, 4.5, 3)
        else:
            c.line(pts, color, 1.8)
        for x, y in pts:
            c.circle(x, y, 2.6 if k == labelled else 1.8, fill=color, outline=WHITE, width=0.6)
        if k == labelled:
            for i, ((x, y), v) in enumerate(zip(pts, vals)):
                c.text(x, y - 6, f"{v:g}", 7.4, bold=True, fill=color, anchor="md")
    return c.png()


def pie_chart(title, slices, *, w=CONTENT_W, h=285.0) -> bytes:
    """slices: [(name, percent, colour)], drawn clockwise from 12 o'clock."""
    assert abs(sum(p for _, p, _ in slices) - 100) < 1e-9
    c = Canvas(w, h)
    c.text(w / 2, 12, title, 10.5, bold=True, anchor="mm")
    cx, cy, r = 160.0, 152.0, 112.0
    a = -90.0
    for name, pct, color in slices:
        b = a + 360 * pct / 100
        c.d.pieslice([c.P(cx - r, cy - r), c.P(cx + r, cy + r)], a, b, fill=color, outline=WHITE,
                     width=round(1.5 * c.k))
        mid = math.radians((a + b) / 2)
        c.text(cx + 0.66 * r * math.cos(mid), cy + 0.66 * r * math.sin(mid), f"{pct:g}%", 11,
               bold=True, fill=WHITE, anchor="mm")
        a = b
    lx, ly = 318.0, 100.0
    c.text(lx, ly - 22, "Vendor (share of unit shipments)", 8.5, bold=True, anchor="lm")
    for i, (name, pct, color) in enumerate(slices):
        y = ly + i * 22
        c.rect(lx, y - 6, lx + 12, y + 6, fill=color)
        c.text(lx + 19, y, f"{name}", 9.5, anchor="lm")
    return c.png()


def table_image(headers, rows, widths, aligns, *, title=None, header_fill=NAVY, size=8.8,
                row_h=21.0, jp=False) -> bytes:
    w = sum(widths) + 2
    top = 24.0 if title else 1.0
    h = top + row_h * (len(rows) + 1) + 2
    c = Canvas(w, h)
    if title:
        c.text(1, 10, title, 10, bold=not jp, anchor="lm", jp=jp)
    y = top
    c.rect(1, y, w - 1, y + row_h, fill=header_fill)

    def cells(y, vals, bold, fill):
        x = 1.0
        for v, cw, al in zip(vals, widths, aligns):
            if al == "r":
                c.text(x + cw - 7, y + row_h / 2, v, size, bold, fill, "rm", jp)
            elif al == "c":
                c.text(x + cw / 2, y + row_h / 2, v, size, bold, fill, "mm", jp)
            else:
                c.text(x + 7, y + row_h / 2, v, size, bold, fill, "lm", jp)
            x += cw

    cells(y, headers, not jp, WHITE)
    for i, row in enumerate(rows):
        y = top + row_h * (i + 1)
        if i % 2 == 1:
            c.rect(1, y, w - 1, y + row_h, fill=(240, 244, 248))
        c.line([(1, y + row_h), (w - 1, y + row_h)], (200, 205, 210), 0.6)
        cells(y, row, False, INK)
    c.rect(1, top, w - 1, h - 1, outline=(150, 160, 170), width=0.8)
    return c.png()


def incident_flow() -> bytes:
    w, h = CONTENT_W, 468.0
    c = Canvas(w, h)
    cx = 165.0
    box_fill, box_line = (232, 240, 250), NAVY

    def box(x0, y0, x1, y1, label, fill=box_fill, radius=5.0):
        c.rect(x0, y0, x1, y1, fill=fill, outline=box_line, width=1.3, radius=radius)
        c.wrapped((x0 + x1) / 2, (y0 + y1) / 2, label, 9.5)

    def stadium(y0, y1, label):
        box(cx - 105, y0, cx + 105, y1, label, fill=(212, 236, 221), radius=(y1 - y0) / 2)

    stadium(8, 46, "Alert received\n(monitoring or customer report)")
    c.arrow([(cx, 46), (cx, 76)])
    box(cx - 105, 76, cx + 105, 116, "Triage: confirm impact\nand affected services")
    c.arrow([(cx, 116), (cx, 140)])
    dy, dh, dw = 184.0, 44.0, 100.0  # decision diamond
    c.poly([(cx, dy - dh), (cx + dw, dy), (cx, dy + dh), (cx - dw, dy)], fill=(255, 243, 214),
           outline=(196, 130, 20), width=1.3)
    c.wrapped(cx, dy, "Customer-facing\noutage?", 9.5, bold=True)
    # Yes: down
    c.arrow([(cx, dy + dh), (cx, 262)])
    c.text(cx + 6, dy + dh + 10, "Yes", 9, bold=True, fill=GREEN, anchor="lm")
    box(cx - 105, 262, cx + 105, 306, "Declare SEV-1 and page\nthe incident commander", fill=(250, 224, 220))
    # No: right
    rx0, rx1 = 320.0, 462.0
    c.arrow([(cx + dw, dy), (rx0, dy)])
    c.text(cx + dw + 10, dy - 8, "No", 9, bold=True, fill=RED, anchor="lm")
    box(rx0, dy - 24, rx1, dy + 24, "Log ticket and assign\non-call engineer")
    c.arrow([(cx, 306), (cx, 336)])
    box(cx - 105, 336, cx + 105, 376, "Mitigate and restore\nservice")
    c.arrow([((rx0 + rx1) / 2, dy + 24), ((rx0 + rx1) / 2, 356), (cx + 105, 356)])
    c.arrow([(cx, 376), (cx, 406)])
    stadium(406, 450, "Post-incident review\nwithin 5 business days")
    # a small key on the right
    kx, ky = 340.0, 392.0
    c.text(kx, ky, "Key", 8.5, bold=True, anchor="lm")
    c.rect(kx, ky + 12, kx + 22, ky + 24, fill=(212, 236, 221), outline=box_line, radius=6)
    c.text(kx + 28, ky + 18, "start / end", 8, anchor="lm")
    c.rect(kx, ky + 32, kx + 22, ky + 44, fill=box_fill, outline=box_line, radius=2)
    c.text(kx + 28, ky + 38, "action", 8, anchor="lm")
    c.poly([(kx + 11, ky + 51), (kx + 22, ky + 58), (kx + 11, ky + 65), (kx, ky + 58)],
           fill=(255, 243, 214), outline=(196, 130, 20))
    c.text(kx + 28, ky + 58, "decision", 8, anchor="lm")
    return c.png()


# --------------------------------------------------------------------------------------------
# The scanned page: a typed memo laid out with PyMuPDF, rendered to pixels, then degraded.


def scanned_memo_jpeg(seed: int = 1729) -> bytes:
    src = pymupdf.open()
    p = src.new_page(width=A4[0], height=A4[1])
    x = 72.0
    p.insert_text((x, 80), "BLUEFIN PAYMENTS LTD.", fontname="hebo", fontsize=15)
    p.insert_text((x, 97), "Platform Reliability Group  -  Internal", fontname="helv", fontsize=9.5)
    p.draw_line((x, 106), (A4[0] - 72, 106), width=1.2)
    p.insert_text((x, 136), "POST-INCIDENT REVIEW  INC-2024-0917", fontname="cobo", fontsize=13)
    fields = [
        ("Service:", "Card payment gateway (EU region)"),
        ("Incident date:", "17 September 2024"),
        ("Severity:", "SEV-1 (customer-facing)"),
        ("Impact window:", "14:02 - 14:49 UTC (47 minutes)"),
        ("Failed payments:", "approx. 3,860 card transactions"),
        ("Incident commander:", "M. Okafor"),
    ]
    y = 166.0
    for k, v in fields:
        p.insert_text((x, y), k, fontname="cobo", fontsize=10.5)
        p.insert_text((x + 150, y), v, fontname="cour", fontsize=10.5)
        y += 17
    body = [
        ("Summary", "Card payments in the EU region failed for all merchants. Requests from "
                    "the payment API were rejected at the internal load balancer."),
        ("Root cause", "The TLS certificate on the internal load balancer expired at "
                       "14:00 UTC. The renewal job had been disabled during the August "
                       "migration and no expiry alert existed."),
        ("Resolution", "A new certificate was issued and deployed at 14:46 UTC. Traffic "
                       "recovered fully by 14:49 UTC; queued retries were replayed."),
    ]
    y += 14
    for head, txt in body:
        p.insert_text((x, y), head.upper(), fontname="cobo", fontsize=10.5)
        rc = p.insert_textbox(pymupdf.Rect(x, y + 6, A4[0] - 72, y + 90), txt, fontname="cour",
                              fontsize=10.5, lineheight=1.25)
        y += 6 + (84 - rc) + 20
    p.insert_text((x, y), "ACTION ITEMS", fontname="cobo", fontsize=10.5)
    y += 8
    rows = [("1", "Automate certificate renewal", "Platform team", "15 Oct 2024"),
            ("2", "Alert 30 days before any expiry", "SRE on-call", "04 Oct 2024"),
            ("3", "Add gateway synthetic check", "Payments team", "31 Oct 2024")]
    cols = [x, x + 24, x + 262, x + 372, A4[0] - 72]
    for i, row in enumerate([("#", "Action", "Owner", "Due")] + rows):
        p.draw_rect(pymupdf.Rect(x, y, A4[0] - 72, y + 19), width=0.7)
        for j, v in enumerate(row):
            p.insert_text((cols[j] + 5, y + 13.5), v, fontname="cobo" if i == 0 else "cour", fontsize=10)
        for cxp in cols[1:-1]:
            p.draw_line((cxp, y), (cxp, y + 19), width=0.7)
        y += 19
    y += 40
    p.insert_text((x, y), "Reviewed and approved:", fontname="cour", fontsize=10.5)
    p.draw_line((x, y + 42), (x + 190, y + 42), width=0.7)
    p.insert_text((x, y + 56), "M. Okafor, Incident Commander", fontname="cour", fontsize=9.5)
    p.draw_line((x + 260, y + 42), (x + 420, y + 42), width=0.7)
    p.insert_text((x + 260, y + 56), "Date: 24 Sep 2024", fontname="cour", fontsize=9.5)
    # a handwritten-looking signature: a deterministic scribble
    t = np.linspace(0, 1, 120)
    sx = x + 10 + 160 * t
    sy = y + 32 - 10 * np.sin(t * 19) * np.exp(-1.5 * t) - 6 * np.sin(t * 5)
    p.draw_polyline(list(zip(sx.tolist(), sy.tolist())), color=(0.1, 0.15, 0.45), width=1.1)
    p.insert_text((A4[0] - 150, 800), "Page 1 of 1", fontname="cour", fontsize=9)
    # a rubber stamp
    stamp = pymupdf.Rect(A4[0] - 206, 44, A4[0] - 72, 86)
    p.draw_rect(stamp, color=(0.75, 0.1, 0.1), width=2)
    p.insert_textbox(stamp + (0, 6, 0, 0), "REVIEWED\n25 SEP 2024", fontname="hebo", fontsize=11.5,
                     color=(0.75, 0.1, 0.1), align=pymupdf.TEXT_ALIGN_CENTER)
    pix = p.get_pixmap(dpi=150, colorspace=pymupdf.csGRAY)
    src.close()
    im = Image.frombytes("L", (pix.width, pix.height), pix.samples)

    rng = np.random.default_rng(seed)
    g = np.asarray(im, dtype=np.float32)
    g = 255 - (255 - g) * 0.86  # toner is never quite black
    im = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))
    # page fed slightly crooked and off-centre
    im = im.rotate(-1.9, resample=Image.BICUBIC, expand=False, fillcolor=255, translate=(9, 6))
    im = im.filter(ImageFilter.GaussianBlur(0.8))
    a = np.asarray(im, dtype=np.float32)
    hgt, wid = a.shape
    # uneven illumination + a shadow along the spine edge
    yy, xx = np.mgrid[0:hgt, 0:wid].astype(np.float32)
    a *= 1 - 0.05 * ((xx / wid - 0.55) ** 2 + (yy / hgt - 0.45) ** 2)
    a *= 1 - 0.22 * np.exp(-xx / 18.0)
    a += rng.normal(0, 4.0, a.shape).astype(np.float32)
    # speckle: dust and toner dots
    n = 900
    ys, xs = rng.integers(0, hgt, n), rng.integers(0, wid, n)
    a[ys, xs] = rng.uniform(40, 140, n)
    for _ in range(14):
        y0, x0 = int(rng.integers(0, hgt - 4)), int(rng.integers(0, wid - 4))
        a[y0:y0 + int(rng.integers(2, 4)), x0:x0 + int(rng.integers(2, 4))] = rng.uniform(60, 120)
    a = np.clip(a, 0, 255)
    im = Image.fromarray(a.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.45))
    # off-white paper tone
    g = np.asarray(im, dtype=np.float32)[..., None] / 255.0
    paper = np.array([244, 239, 226], dtype=np.float32)
    ink = np.array([38, 36, 44], dtype=np.float32)
    rgb = ink + (paper - ink) * g
    out = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=52, subsampling=2, optimize=False, progressive=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# PDF page helpers


class Report:
    """An A4 report: header band, body helpers and footers added at save time."""

    def __init__(self, short_title: str, org: str, accent=NAVY, jp: bool = False):
        self.doc = pymupdf.open()
        self.short_title, self.org, self.accent, self.jp = short_title, org, rgb01(accent), jp
        self.page: pymupdf.Page | None = None
        self.y = 0.0

    # ---- structure
    def new_page(self):
        self.page = self.doc.new_page(width=A4[0], height=A4[1])
        if self.jp:
            self.page.insert_font(fontname="JP", fontbuffer=font_bytes("japan"))
        pg = self.page
        pg.draw_rect(pymupdf.Rect(0, 0, A4[0], 6), color=None, fill=self.accent)
        self._t((MARGIN, 30), self.org, 8.5, bold=True, color=self.accent)
        right = self.short_title
        self._t((A4[0] - MARGIN - self._w(right, 8.5), 30), right, 8.5, color=(0.4, 0.4, 0.4))
        pg.draw_line((MARGIN, 38), (A4[0] - MARGIN, 38), color=(0.8, 0.8, 0.8), width=0.6)
        self.y = 70.0
        return pg

    def _font(self, bold=False, italic=False):
        if self.jp:
            return "JP"
        return "hebo" if bold else ("heit" if italic else "helv")

    def _w(self, s, size, bold=False):
        if self.jp:
            return pymupdf.Font("japan").text_length(s, fontsize=size)
        return pymupdf.get_text_length(s, fontname=self._font(bold), fontsize=size)

    def _t(self, xy, s, size, bold=False, italic=False, color=(0.1, 0.1, 0.1)):
        self.page.insert_text(xy, s, fontname=self._font(bold, italic), fontsize=size, color=color)

    def title(self, s, sub=None):
        self._t((MARGIN, self.y), s, 19 if not self.jp else 17, bold=True, color=self.accent)
        self.y += 20
        if sub:
            self._t((MARGIN, self.y), sub, 10.5, color=(0.35, 0.35, 0.35))
            self.y += 12
        self.y += 8

    def heading(self, s):
        self.y += 14
        self._t((MARGIN, self.y), s, 12.5 if not self.jp else 12, bold=True, color=self.accent)
        self.y += 12

    def para(self, s, size=10.2):
        if self.jp:
            return self._jp_para(s, size)
        r = pymupdf.Rect(MARGIN, self.y, A4[0] - MARGIN, A4[1] - 60)
        rc = self.page.insert_textbox(r, s, fontname="helv", fontsize=size, lineheight=1.35,
                                      align=pymupdf.TEXT_ALIGN_JUSTIFY, color=(0.1, 0.1, 0.1))
        assert rc >= 0, f"paragraph does not fit: {s[:40]}"
        self.y = r.y1 - rc + 8

    def bullets(self, items, size=10.2):
        for it in items:
            if self.jp:
                self._t((MARGIN + 4, self.y + size * 1.15), "・", size)
                self._jp_para(it, size, indent=size + 4)
                self.y -= 4
                continue
            self.page.draw_circle((MARGIN + 8, self.y + size * 0.62), 1.8, color=None, fill=self.accent)
            r = pymupdf.Rect(MARGIN + 18, self.y, A4[0] - MARGIN, A4[1] - 60)
            rc = self.page.insert_textbox(r, it, fontname="helv", fontsize=size, lineheight=1.35)
            assert rc >= 0
            self.y = r.y1 - rc + 4
        self.y += 4

    def _jp_para(self, s, size, indent=0.0):
        """Japanese has no spaces to break at: wrap by glyph widths, with basic kinsoku
        (no line may start with closing punctuation or a small kana)."""
        f = pymupdf.Font("japan")
        width = CONTENT_W - indent
        no_start = set("、。，．）」』】〕・ーぁぃぅぇぉっゃゅょァィゥェォッャュョ％")
        lines, cur = [], ""
        for ch in s:
            if cur and f.text_length(cur + ch, fontsize=size) > width and ch not in no_start:
                lines.append(cur)
                cur = ""
            cur += ch
        if cur:
            lines.append(cur)
        lh = size * 1.75
        for ln in lines:
            self.y += lh
            self.page.insert_text((MARGIN + indent, self.y - lh + size * 1.15), ln, fontname="JP",
                                  fontsize=size, color=(0.1, 0.1, 0.1))
        self.y += 8

    def figure(self, png: bytes, caption: str, width=CONTENT_W):
        im = Image.open(io.BytesIO(png))
        h = width * im.height / im.width
        x0 = MARGIN + (CONTENT_W - width) / 2
        r = pymupdf.Rect(x0, self.y + 4, x0 + width, self.y + 4 + h)
        insert_png(self.page, r, png)
        self.page.draw_rect(r + (-1, -1, 1, 1), color=(0.85, 0.85, 0.85), width=0.5)
        self.y = r.y1 + 14
        self._t((MARGIN, self.y), caption, 9 if not self.jp else 8.8, italic=True, color=(0.3, 0.3, 0.3))
        self.y += 16

    def full_page_image(self, jpeg: bytes):
        self.page = self.doc.new_page(width=A4[0], height=A4[1])
        self.page.insert_image(self.page.rect, stream=jpeg, keep_proportion=False)

    # ---- output
    def save(self, path: Path, *, title: str, subject: str, keywords: str, author: str,
             footer: str, scanned_pages=()):
        n = self.doc.page_count
        for i, pg in enumerate(self.doc):
            if i in scanned_pages:
                continue  # a scan carries no text layer at all
            self.page = pg
            pg.draw_line((MARGIN, A4[1] - 44), (A4[0] - MARGIN, A4[1] - 44), color=(0.8, 0.8, 0.8), width=0.6)
            self._t((MARGIN, A4[1] - 30), footer, 8, color=(0.45, 0.45, 0.45))
            num = f"{i + 1} / {n}" if self.jp else f"Page {i + 1} of {n}"
            self._t((A4[0] - MARGIN - self._w(num, 8), A4[1] - 30), num, 8, color=(0.45, 0.45, 0.45))
        self.doc.set_metadata({
            "title": title, "author": author, "subject": subject, "keywords": keywords,
            "creator": CREATOR, "producer": "PyMuPDF", "creationDate": PDF_DATE, "modDate": PDF_DATE,
        })
        if self.jp:
            self.doc.subset_fonts()
        # A fixed document ID (the default one is random), derived from the file name.
        fid = hashlib.md5(path.name.encode()).hexdigest()
        self.doc.xref_set_key(-1, "ID", f"[<{fid}><{fid}>]")
        self.doc.save(path, garbage=4, deflate=True, no_new_id=True)
        self.doc.close()


# --------------------------------------------------------------------------------------------
# The documents (fictional companies and numbers)

REGIONS = [("North America", NAVY), ("Europe", BLUE), ("Asia-Pacific", ORANGE), ("Latin America", GREEN)]
REVENUE = [  # USD millions, Q1..Q4 FY2024
    [18.4, 19.1, 20.6, 23.8],
    [14.7, 16.2, 21.7, 19.5],
    [9.8, 11.4, 12.9, 15.1],
    [4.2, 4.9, 5.6, 6.3],
]
VISITORS_2024 = [182, 176, 205, 221, 238, 229, 214, 226, 251, 273, 318, 296]  # thousands
VISITORS_2023 = [150, 148, 166, 171, 185, 180, 172, 179, 193, 207, 241, 228]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
PRODUCTS = [  # product, category, units, revenue USD M, gross margin
    ("Trail Runner X", "Footwear", "126,400", "16.4", "38.2%"),
    ("Summit 2 Tent", "Camping", "48,200", "14.9", "41.5%"),
    ("Glacier Down Jacket", "Apparel", "61,750", "13.3", "52.7%"),
    ("Ridge 45L Pack", "Packs", "57,300", "8.0", "44.9%"),
    ("AquaPure Filter", "Accessories", "203,900", "6.1", "63.4%"),
]


def northwind(out: Path):
    r = Report("FY2024 Annual Performance Review", "NORTHWIND OUTFITTERS")
    r.new_page()
    r.title("FY2024 Annual Performance Review", "Northwind Outfitters Inc.  |  Prepared by Group Finance  |  January 2025")
    r.heading("Executive summary")
    r.para("FY2024 was a year of broad-based growth for Northwind Outfitters. Every region grew "
           "revenue compared with the prior year, helped by a stronger outdoor season, a refreshed "
           "footwear range and the expansion of our direct-to-consumer web shop. Gross margin "
           "improved as we reduced promotional discounting in the second half and renegotiated "
           "freight contracts with our two largest carriers.")
    r.para("This review summarises revenue by region and quarter, traffic to the online store, and "
           "the performance of our five best-selling products. Detailed figures are shown in the "
           "charts and tables on the following pages; all amounts are in US dollars unless noted.")
    r.heading("Highlights")
    r.bullets([
        "Double-digit growth in the direct-to-consumer channel, which is now our fastest-growing "
        "route to market.",
        "Opening of a second distribution centre near Rotterdam, cutting average delivery time for "
        "European customers to under three days.",
        "Launch of the Trail Runner X, which became the best-selling product in its first full year.",
        "Inventory turns improved for the third consecutive year while stock-outs fell.",
    ])
    r.heading("Outlook")
    r.para("For FY2025 we expect growth to moderate as comparisons become tougher. Our priorities are "
           "to scale the web shop in Asia-Pacific, widen the apparel range, and keep operating costs "
           "flat in real terms. Management will present the FY2025 budget to the board in March.")
    r.heading("Contents")
    r.bullets(["Page 2 - Revenue by region and quarter", "Page 3 - Online store traffic",
               "Page 4 - Top products"])

    r.new_page()
    r.title("Revenue by region and quarter")
    r.para("Revenue rose steadily through the year in most regions. The third quarter saw an unusual "
           "shift in the regional ranking, driven by an early autumn season and a large wholesale "
           "order from a sporting-goods chain. Latin America remains our smallest market but grew "
           "in every quarter. The chart below compares the four regions quarter by quarter.")
    r.figure(grouped_bar_chart("Quarterly revenue by region, FY2024", ["Q1", "Q2", "Q3", "Q4"], REGIONS,
                               REVENUE, 25, 5, "Revenue (USD millions)"),
             "Figure 1: Quarterly revenue by region, FY2024 (USD millions).")
    r.para("Regional revenue is reported by the customer's delivery address. Wholesale orders are "
           "recognised on shipment; web-shop orders on delivery. Currency effects have not been "
           "removed: a weaker euro in the first half reduced reported European revenue slightly.")

    r.new_page()
    r.title("Online store traffic")
    r.para("Traffic to northwind-outfitters.example grew throughout the year, with the usual dip "
           "after the New Year and a strong peak around the holiday promotions. The redesigned "
           "product pages launched in the spring improved conversion on mobile devices. The chart "
           "compares monthly unique visitors with the previous year.")
    r.figure(line_chart("Monthly unique visitors to the web shop", MONTHS,
                        [("FY2023", (150, 150, 150), VISITORS_2023, True), ("FY2024", BLUE, VISITORS_2024, False)],
                        100, 350, 50, "Visitors (thousands)", labelled=1),
             "Figure 2: Monthly unique visitors to the online store, FY2024 vs FY2023 (thousands).")
    r.para("Visitors are counted as unique browsers per calendar month, after bot filtering. "
           "Paid search accounted for roughly a quarter of sessions; organic search and email "
           "campaigns made up most of the remainder.")

    r.new_page()
    r.title("Top products")
    r.para("Five products accounted for a large part of FY2024 revenue. Footwear led by revenue, "
           "while accessories delivered the best margins. The table lists units sold, revenue and "
           "gross margin for each of the five.")
    r.figure(table_image(["Product", "Category", "Units sold", "Revenue (USD M)", "Gross margin"],
                         [list(p) for p in PRODUCTS], [140, 92, 80, 100, 88], "llrrr",
                         title="Top five products by revenue, FY2024"),
             "Table 1: Top five products by revenue, FY2024.", width=CONTENT_W)
    r.para("Gross margin is revenue less cost of goods sold, freight-in and duties, divided by "
           "revenue. Units include wholesale and web-shop sales, net of returns.")
    r.save(out / "northwind_fy2024_review.pdf", title="FY2024 Annual Performance Review",
           subject="Northwind Outfitters annual performance review (fictional sample data)",
           keywords="revenue, regions, web traffic, products, sample", author="Northwind Outfitters Group Finance",
           footer="Northwind Outfitters - FY2024 Annual Performance Review - fictional sample data")


SHARES = [("Helio Systems", 31, NAVY), ("Nestra", 24, BLUE), ("ThermaCore", 18, ORANGE),
          ("Vantage Home", 11, GREEN), ("Others", 16, (150, 150, 150))]


def market(out: Path):
    r = Report("Smart Thermostat Market Landscape 2024", "CLEARVIEW MARKET INSIGHTS", accent=(0, 105, 92))
    r.new_page()
    r.title("Smart Thermostat Market Landscape 2024", "Analyst brief  |  Clearview Market Insights  |  December 2024")
    r.heading("Market overview")
    r.para("The smart thermostat market continued to consolidate in 2024. Energy-price volatility "
           "and utility rebate programmes kept demand healthy, while the arrival of the Matter "
           "standard lowered the barrier for smaller brands to work with every major voice "
           "assistant. Even so, the two leading vendors together still ship close to half of all "
           "units, and the long tail of regional brands is shrinking.")
    r.figure(pie_chart("Global smart thermostat shipments by vendor, 2024", SHARES),
             "Figure 1: Share of global smart thermostat unit shipments by vendor, 2024.")
    r.para("Shares are based on sell-in unit shipments to retailers, installers and utilities, and "
           "exclude line-voltage thermostats for electric baseboard heating. The Others category "
           "combines more than forty vendors, none of which holds a meaningful share on its own.")

    r.new_page()
    r.title("Competitive comparison")
    r.para("The table compares the flagship model of each leading vendor. Prices are manufacturer "
           "list prices in the United States at the end of the year; street prices during "
           "promotions were often lower.")
    pg = r.page
    cols = ["Vendor", "Flagship model", "List price", "Matter", "Warranty"]
    rows = [["Helio Systems", "Helio Sense 4", "USD 249", "Yes", "3 years"],
            ["Nestra", "Nestra Learning Pro", "USD 279", "Yes", "2 years"],
            ["ThermaCore", "TC Smart 700", "USD 199", "Yes", "5 years"],
            ["Vantage Home", "Vantage Dial", "USD 149", "No", "2 years"]]
    xs = [MARGIN, MARGIN + 115, MARGIN + 250, MARGIN + 330, MARGIN + 395, A4[0] - MARGIN]
    y = r.y + 6
    pg.draw_rect(pymupdf.Rect(MARGIN, y, A4[0] - MARGIN, y + 20), color=None, fill=rgb01((0, 105, 92)))
    for j, h in enumerate(cols):
        pg.insert_text((xs[j] + 6, y + 14), h, fontname="hebo", fontsize=9.5, color=(1, 1, 1))
    for i, row in enumerate(rows):
        y += 20
        if i % 2:
            pg.draw_rect(pymupdf.Rect(MARGIN, y, A4[0] - MARGIN, y + 20), color=None, fill=(0.94, 0.96, 0.95))
        for j, v in enumerate(row):
            pg.insert_text((xs[j] + 6, y + 14), v, fontname="helv", fontsize=9.5)
        pg.draw_line((MARGIN, y + 20), (A4[0] - MARGIN, y + 20), color=(0.75, 0.75, 0.75), width=0.5)
    r.y = y + 34
    r._t((MARGIN, r.y), "Table 1: Flagship models of the leading vendors, December 2024.", 9, italic=True,
         color=(0.3, 0.3, 0.3))
    r.y += 16
    r.heading("Differentiation")
    r.para("Hardware features have largely converged: all four flagships offer occupancy sensing, "
           "remote sensors and energy reports. Vendors now compete on installation support, "
           "utility partnerships and subscription services such as filter reminders and HVAC "
           "fault detection. ThermaCore's long warranty has made it a favourite of professional "
           "installers, while Vantage Home targets renters with a low price and simple setup.")
    r.heading("Channel trends")
    r.para("Utility-sponsored programmes, in which the thermostat is given away or heavily "
           "discounted in exchange for participation in demand-response events, grew faster than "
           "retail. We expect this channel to account for a larger part of shipments next year.")

    r.new_page()
    r.title("Methodology and definitions")
    r.para("Clearview estimates shipments from vendor disclosures, distributor panel data, import "
           "records and interviews with retailers and installers. Estimates are reconciled each "
           "quarter against the sell-out data of a panel of retailers in North America and Europe.")
    r.heading("Definitions")
    r.bullets([
        "Smart thermostat: a wall-mounted thermostat that can be controlled remotely over a network "
        "and that adjusts its schedule automatically or through an app.",
        "Unit shipments: devices shipped by the vendor to the first point of sale (sell-in), net of returns.",
        "Vendor: the brand owner, whether or not it manufactures the device itself.",
        "Others: all vendors outside the four named leaders, reported together.",
    ])
    r.heading("Limitations")
    r.para("Private-label products sold by retailers are attributed to the contract manufacturer "
           "where it can be identified. Figures for markets with little public data are modelled "
           "and carry a wider margin of error. This brief uses fictional vendors and numbers and "
           "is provided as sample material only.")
    r.save(out / "thermostat_market_brief_2024.pdf", title="Smart Thermostat Market Landscape 2024",
           subject="Analyst brief on smart thermostat market share (fictional sample data)",
           keywords="market share, pie chart, smart home, sample", author="Clearview Market Insights",
           footer="Clearview Market Insights - Smart Thermostat Market Landscape 2024 - fictional sample data")


def runbook(out: Path):
    r = Report("Incident Response Runbook v3.2", "BLUEFIN PAYMENTS", accent=(120, 40, 90))
    r.new_page()
    r.title("Incident Response Runbook", "Platform Reliability Group  |  Version 3.2  |  Effective 1 October 2024")
    r.heading("1. Purpose and scope")
    r.para("This runbook describes how Bluefin Payments detects, escalates and resolves production "
           "incidents affecting the payment platform. It applies to every engineer who joins an "
           "on-call rotation. Follow the flow below from the moment an alert fires or a merchant "
           "reports a problem; when in doubt, escalate rather than wait.")
    r.figure(incident_flow(), "Figure 1: Incident response flow.")
    r.para("Each box is owned by the person currently on call unless the flow hands it to someone "
           "else. Record every decision and its time in the incident channel.")

    r.new_page()
    r.title("2. Severity levels and response targets")
    r.para("The severity decides how fast we respond, how often we report progress, and who is "
           "told. Assign it during triage and revise it as soon as the impact becomes clearer. "
           "The targets below are measured from the moment the alert is acknowledged.")
    r.figure(table_image(["Severity", "Definition", "First response", "Status updates", "Escalate to"],
                         [["SEV-1", "Customer-facing outage", "5 min", "Every 30 min", "VP Engineering"],
                          ["SEV-2", "Major feature degraded", "20 min", "Every 2 hours", "Engineering manager"],
                          ["SEV-3", "Minor issue, workaround exists", "4 hours", "Daily", "Team lead"],
                          ["SEV-4", "Cosmetic or internal only", "2 business days", "Weekly", "None"]],
                         [58, 150, 84, 84, 116], "lllll", header_fill=(120, 40, 90),
                         title="Response targets by severity"),
             "Table 1: Severity levels, response targets and escalation contacts.")
    r.heading("3. Communication")
    r.para("Open a dedicated incident channel for every incident of the two highest severities and "
           "post status updates there and on the public status page at the cadence shown in the "
           "table. Customer support must be told before the first public update so that agents can "
           "answer merchants consistently.")
    r.heading("4. Hand-over and closure")
    r.para("An incident is closed only when the service has been stable for an agreed period and "
           "the owner of the follow-up review has been named. Appendix A shows a completed review "
           "from a recent incident as an example of the expected level of detail.")

    r.full_page_image(scanned_memo_jpeg())
    r.save(out / "incident_response_runbook.pdf", title="Incident Response Runbook v3.2",
           subject="Incident response flow, severity levels and a scanned post-incident review (fictional)",
           keywords="incident response, runbook, SLA, flowchart, scan, sample", author="Bluefin Payments Platform Reliability Group",
           footer="Bluefin Payments - Incident Response Runbook v3.2 - fictional sample data",
           scanned_pages=(2,))


JP_SEGMENTS = ["国内", "北米", "欧州", "アジア"]
JP_SALES = [[378, 196, 154, 221], [412, 233, 149, 264]]  # 億円: 前年同期, 当期
JP_QUARTERS = ["23/Q1", "23/Q2", "23/Q3", "23/Q4", "24/Q1", "24/Q2", "24/Q3"]
JP_PROFIT = [38, 41, 45, 52, 47, 55, 63]  # 億円


def sakura(out: Path):
    r = Report("2024年度 第3四半期 決算概要", "さくら精機株式会社", accent=(176, 48, 96), jp=True)
    r.new_page()
    r.title("2024年度 第3四半期 決算概要", "さくら精機株式会社　経営企画部　2025年1月")
    r.heading("1. 業績の概要")
    r.para("当第3四半期の連結業績は、国内における設備投資需要の回復と北米向け出荷の増加により、"
           "売上高・営業利益ともに前年同期を上回りました。欧州では景気の先行きに対する不透明感から"
           "受注がやや伸び悩みましたが、アジアでは半導体関連の需要が引き続き堅調に推移しました。")
    r.para("地域セグメント別の売上高を前年同期と比較すると、下図のとおりです。為替の影響は"
           "各セグメントの数値に含まれています。")
    r.figure(grouped_bar_chart("セグメント別売上高（第3四半期）", JP_SEGMENTS,
                               [("前年同期", (160, 160, 160)), ("当期", (176, 48, 96))], JP_SALES,
                               500, 100, "売上高（億円）", jp=True, decimals=0, h=270),
             "図1：地域セグメント別売上高の前年同期比較（単位：億円）")
    r.para("なお、欧州セグメントには一部製品の出荷時期が第4四半期にずれ込んだ影響が含まれて"
           "おります。")

    r.new_page()
    r.title("2. 利益の推移と今後の見通し")
    r.para("営業利益は、高付加価値製品の販売比率の上昇と生産効率の改善により、四半期ごとに"
           "おおむね増加傾向を続けています。第1四半期には部材価格の上昇により一時的に減少しました"
           "が、その後は価格改定の効果もあり回復しました。")
    r.figure(line_chart("四半期別 営業利益の推移", JP_QUARTERS,
                        [("営業利益（億円）", (176, 48, 96), JP_PROFIT, False)], 0, 80, 20,
                        "営業利益（億円）", labelled=0, jp=True, h=240, xlabel="年度／四半期"),
             "図2：四半期別営業利益の推移（単位：億円）")
    r.heading("今後の見通し")
    r.para("通期の業績予想は、前回発表の数値を据え置きます。第4四半期は、北米での新工場の"
           "立ち上げ費用が発生する見込みですが、国内の受注残が高い水準にあることから、"
           "計画どおりの着地を見込んでおります。")
    r.bullets(["本資料に記載の数値はすべて架空のものであり、サンプルとしてのみ使用してください。",
               "将来の見通しに関する記述は、現時点で入手可能な情報に基づいています。"])
    r.save(out / "sakura_q3_fy2024_summary_ja.pdf", title="2024年度 第3四半期 決算概要",
           subject="さくら精機株式会社 第3四半期決算概要（架空のサンプルデータ）",
           keywords="決算, 売上高, 営業利益, sample", author="さくら精機株式会社 経営企画部",
           footer="さくら精機株式会社 ― 2024年度 第3四半期 決算概要（架空のサンプル）")


DOCUMENTS = {
    "northwind_fy2024_review.pdf": northwind,
    "thermostat_market_brief_2024.pdf": market,
    "incident_response_runbook.pdf": runbook,
    "sakura_q3_fy2024_summary_ja.pdf": sakura,
}


def versions() -> dict:
    """The library versions that decide the bytes written (recorded in manifest.json)."""
    import PIL
    from PIL import features
    return {"pymupdf": pymupdf.__version__, "mupdf": pymupdf.mupdf_version, "pillow": PIL.__version__,
            "numpy": np.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"),
            "zlib": features.version("zlib"), "freetype": features.version("freetype2")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?", default=str(HERE), help="output folder (default: this folder)")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, build in DOCUMENTS.items():
        build(out)
        data = (out / name).read_bytes()
        with pymupdf.open(out / name) as d:
            files[name] = {"pages": d.page_count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        print(f"{name}: {files[name]['pages']} pages, {len(data) / 1024:.0f} KiB")
    (out / "manifest.json").write_text(json.dumps({"generated_with": versions(), "files": files},
                                                  indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
