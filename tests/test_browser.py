"""The web page in a real browser: Playwright driving Debian's chromium (`apt-get install -y chromium`).

It asks a question, sees the streamed answer and the source cards, toggles a similarity map,
opens a page large, adds a document and watches its progress finish; it saves screenshots at
desktop and phone widths (into $RAGVL_SCREENSHOTS when set, else the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servers import Served
from tiny_pdfs import make_pdf

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium package")]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_embedder, tiny_answerer):
    root = tmp_path_factory.mktemp("browser")
    make_pdf(root / "docs" / "annual-report.pdf", 3, seed=60, title="Annual report")
    make_pdf(root / "docs" / "budget.pdf", 2, seed=61, title="Budget")
    make_pdf(root / "new" / "memo.pdf", 2, seed=62, title="Memo")
    r = subprocess.run([sys.executable, "-m", "ragvl.cli", "index", root / "docs", "--db", root / "db",
                        "--embedder", tiny_embedder, "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = Served("--db", root / "db", "--root", root, "--embedder", tiny_embedder, "--answerer", tiny_answerer,
               "-n", "40", "--token", "browser-test-token")
    yield s, root
    log = s.stop()
    assert "Traceback" not in log, log


def test_page_ask_map_and_add_document(served, tmp_path):
    server, root = served
    shots = Path(os.environ.get("RAGVL_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            sync_api.expect.set_options(timeout=60_000)  # a shared 2-core machine: first requests load LanceDB
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url)  # ?token=..., then the cookie and a clean URL
            assert page.url == server.base + "/"
            sync_api.expect(page.locator("#status")).to_contain_text("5 pages")
            sync_api.expect(page.locator("#doc-list li")).to_have_count(2)

            page.fill("#question", "Which region grew the most?")
            page.click("#ask-btn")
            sync_api.expect(page.locator(".card")).to_have_count(3)
            sync_api.expect(page.locator("#timings")).to_contain_text("first token", timeout=60_000)
            answer = page.locator("#answer")
            assert answer.is_visible() and answer.inner_text().strip()
            assert page.locator(".card img").first.evaluate("img => img.naturalWidth") > 100
            page.screenshot(path=shots / "desktop-answer.png")

            first = page.locator(".card").first
            first.locator(".map-toggle").check()
            img = first.locator("img")
            page.wait_for_function("() => { const i = document.querySelector('.card img');"
                                   " return i.src.includes('/map.png?q=') && i.complete && i.naturalWidth > 100; }")
            page.screenshot(path=shots / "desktop-map.png")
            img.click()
            sync_api.expect(page.locator("#lightbox")).to_be_visible()
            page.screenshot(path=shots / "desktop-lightbox.png")
            page.keyboard.press("Escape")
            sync_api.expect(page.locator("#lightbox")).to_be_hidden()

            page.fill("#add-path", str(root / "new"))
            page.click("#add-form button")
            sync_api.expect(page.locator("#job-text")).to_contain_text("done: 1 new", timeout=120_000)
            assert page.locator("#job-fill").evaluate("e => e.style.width") == "100%"
            sync_api.expect(page.locator("#doc-list li")).to_have_count(3)
            sync_api.expect(page.locator("#status")).to_contain_text("7 pages")
            page.screenshot(path=shots / "desktop-added.png")

            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=shots / "phone.png", full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
            assert errors == []
        finally:
            browser.close()
    for name in ("desktop-answer", "desktop-map", "desktop-lightbox", "desktop-added", "phone"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
