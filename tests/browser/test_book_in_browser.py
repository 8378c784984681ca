"""The built HTML book in a real browser (Debian's Chromium driven by Playwright), offline.

`make test-browser` runs these after the strict book build: it serves _build/html on localhost
and opens every page. A page passes when nothing is logged as an error, no request leaves
localhost, the maths is typeset, every image loads and the sidebar lists every chapter. Search
must find "anchor", and on chapter 1 moving a slider of the anchor explorer must redraw it.
Screenshots of every page land in _build/screenshots/.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"


def _pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    return [f"{name}.html" for name in files]


def _chapter_titles() -> list[str]:
    import nbformat

    titles = []
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        first = nbformat.read(path, as_version=4).cells[0].source
        titles.append(first.splitlines()[0].lstrip("# ").strip())
    return titles


class PageReport:
    """Console errors and outside requests collected while a page loads and runs."""

    def __init__(self, page, base_url: str):
        self.errors: list[str] = []
        self.outside: list[str] = []
        host = urlparse(base_url).netloc
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        page.on(
            "response",
            lambda r: self.errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
        )

        def request(r):
            parsed = urlparse(r.url)
            if parsed.scheme in ("http", "https", "ws", "wss") and parsed.netloc != host:
                self.outside.append(r.url)

        page.on("request", request)


def _open(browser, server, path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    report = PageReport(page, server)
    page.goto(f"{server}/{path}", wait_until="networkidle")
    page.wait_for_timeout(1500)  # MathJax and the widget manager finish after network idle
    return page, report


@pytest.mark.parametrize("path", _pages())
def test_page_loads_cleanly_offline(browser, server, path):
    page, report = _open(browser, server, path)
    try:
        assert report.outside == [], f"requests left localhost: {report.outside}"
        assert report.errors == [], f"console errors: {report.errors}"
        broken = page.evaluate(
            "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
        )
        assert broken == [], f"images that did not load: {broken}"
        if page.locator(".math").count():
            assert page.locator("mjx-container").count() >= page.locator(".math").count(), (
                "maths not typeset"
            )
        sidebar = page.locator(".bd-sidebar-primary nav").first.inner_text()
        for title in _chapter_titles():
            assert title in sidebar, f"the sidebar does not list {title!r}"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(SCREENSHOTS / (path.replace("/", "_").replace(".html", ".png"))),
            full_page=True,
        )
    finally:
        page.close()


def test_search_finds_anchor(browser, server):
    page, report = _open(browser, server, "search.html?q=anchor")
    try:
        page.wait_for_selector("#search-results li", timeout=15000)
        results = page.locator("#search-results li").all_inner_texts()
        assert any("Anchors" in text for text in results), results
        assert report.outside == [] and report.errors == []
    finally:
        page.close()


def test_anchor_explorer_redraws_when_a_slider_moves(browser, server):
    page, report = _open(browser, server, "chapters/01_anchors.html")
    try:
        explorer = page.locator(".detlib-anchor-explorer")
        # The widget manager renders after the page's load event; on a busy machine, late.
        page.wait_for_selector(".detlib-anchor-explorer", timeout=20000)
        assert explorer.count() == 1, "the anchor explorer did not render in the static page"
        explorer.scroll_into_view_if_needed()
        report_text = explorer.locator(".detlib-ae-report")
        anchors = explorer.locator("svg .anchors rect")
        before_text, before_count = report_text.inner_text(), anchors.count()
        before_svg = explorer.locator("svg:has(.anchors)").inner_html()
        assert before_text.startswith("49,104 anchors") and before_count == 9

        scales = explorer.locator('input[name="scales_per_octave"]')
        scales.fill("2")
        scales.dispatch_event("input")
        page.wait_for_timeout(300)
        assert anchors.count() == 6, "3 ratios x 2 scales anchors per cell after the move"
        assert report_text.inner_text().startswith("32,736 anchors")

        size = explorer.locator('input[name="image_size"]')
        size.fill("256")
        size.dispatch_event("input")
        page.wait_for_timeout(300)
        assert explorer.locator("svg:has(.anchors)").inner_html() != before_svg
        assert report_text.inner_text() != before_text
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        explorer.screenshot(path=str(SCREENSHOTS / "anchor_explorer_after_moving_sliders.png"))
        assert report.outside == [] and report.errors == []
    finally:
        page.close()
