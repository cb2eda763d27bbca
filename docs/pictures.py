"""Make README's pictures: docs/screenshot.png (the web page) and docs/similarity-map.png.

They come from sample_pdfs/ with tiny random models (tests/tiny_*.py; needs the test extra and
Debian's chromium): the answer text is noise and the heat shows what random weights match,
but the page and the pipeline are the real ones. Run: python docs/pictures.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def small_png(src: Path, dst: Path, width: int) -> None:
    from PIL import Image

    im = Image.open(src).convert("RGB")
    im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def main() -> None:
    import subprocess

    from playwright.sync_api import expect, sync_playwright

    from ragvl import Index
    from ragvl.models.converter.convert import convert
    from servers import Served
    from tiny_checkpoints import make_checkpoint
    from tiny_colqwen2 import make_colqwen2_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="ragvl-pictures-"))
    embedder = convert(make_colqwen2_checkpoint(tmp / "e", variant="a"), tmp / "colqwen2-tiny", log=lambda m: None)
    answerer = convert(make_checkpoint(tmp / "a", variant="a", seed=4), tmp / "qwen2-vl-tiny", log=lambda m: None)
    subprocess.run([sys.executable, "-m", "ragvl.cli", "index", REPO / "sample_pdfs", "--db", tmp / "db",
                    "--embedder", embedder, "-q"], check=True)
    question = "How did revenue change by region?"
    idx = Index(tmp / "db", embedder=embedder, log=lambda m: None)
    hit = idx.search(question, k=1)[0]
    idx.explain(question, [hit.id])[0].image().save(tmp / "map.png")
    small_png(tmp / "map.png", REPO / "docs" / "similarity-map.png", 480)

    server = Served("--db", tmp / "db", "--root", REPO / "sample_pdfs", "--embedder", embedder,
                    "--answerer", answerer, "-n", "24")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(server.url)
            page.fill("#question", question)
            page.click("#ask-btn")
            expect(page.locator("#timings")).to_contain_text("first token", timeout=120_000)
            page.locator(".card .map-toggle").first.check()
            page.wait_for_function("() => { const i = document.querySelector('.card img');"
                                   " return i.src.includes('/map.png') && i.complete && i.naturalWidth > 0; }")
            page.screenshot(path=tmp / "page.png")
            browser.close()
    finally:
        server.stop()
    small_png(tmp / "page.png", REPO / "docs" / "screenshot.png", 960)
    print(f"wrote docs/screenshot.png and docs/similarity-map.png (work folder {tmp})")


if __name__ == "__main__":
    main()
