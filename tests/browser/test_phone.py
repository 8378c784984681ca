"""The built book on a phone (390 x 844) and on a laptop (1280 px): navigation and width.

* The visible sidebar toggle (☰) opens the chapter list, and the "on this page" toggle opens the
  page's contents, on a phone. (With sphinx-book-theme 1.3.0 + pydata-sphinx-theme 0.17.1 the
  theme's script wired hidden copies of both buttons and the visible ones did nothing.)
* One search field, the whole logo.
* No page is wider than the phone's screen, and no code or output block scrolls sideways: code
  and outputs wrap; only API signatures, wide maths and tables may scroll inside their own box.
"""

from __future__ import annotations

import pytest

from tests.browser.test_book_in_browser import SCREENSHOTS, _chapter_titles, _pages

# `server` and `browser` are the fixtures of tests/browser/conftest.py.

PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 900}

# Blocks that must wrap rather than scroll: code cells, their outputs, literal blocks.
WRAPPING_BLOCKS = "article pre"
# Wide things that may scroll inside their own box (never the page).
OWN_BOX = "article dl.py > dt, article mjx-container, article div.math-wrapper, article table"


def _open(browser, server, path, viewport):
    page = browser.new_page(viewport=viewport)
    page.goto(f"{server}/{path}", wait_until="networkidle")
    page.wait_for_timeout(800)
    return page


def _visible_box(page, selector):
    return page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].filter(e => {
             const r = e.getBoundingClientRect(), s = getComputedStyle(e);
             return r.width > 0 && r.height > 0 && s.visibility !== 'hidden'
               && r.right > 0 && r.left < window.innerWidth;
           }).length""",
        selector,
    )


@pytest.mark.parametrize("path", ["chapters/01_anchors.html", "book/intro.html"])
def test_phone_sidebar_toggle_opens_the_chapter_list(browser, server, path):
    page = _open(browser, server, path, PHONE)
    try:
        toggles = page.locator(".primary-toggle:visible")
        assert toggles.count() == 1, "exactly one visible ☰ toggle on a phone"
        nav = page.locator(".bd-sidebar-primary nav.bd-links").first
        assert not nav.is_visible() or nav.bounding_box()["x"] + nav.bounding_box()["width"] <= 0
        toggles.first.click()
        page.wait_for_timeout(600)
        box = page.locator(".bd-sidebar-primary").first.bounding_box()
        assert box and box["x"] >= 0 and box["x"] < PHONE["width"], "the sidebar did not slide in"
        visible = page.locator(".bd-sidebar-primary").first.inner_text()
        for title in _chapter_titles():
            assert title in visible, f"the opened sidebar does not list {title!r}"
        link = page.locator(".bd-sidebar-primary a", has_text=_chapter_titles()[1]).first
        assert link.is_visible()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "phone_sidebar_open.png"))
    finally:
        page.close()


def test_phone_on_this_page_toggle_opens_the_contents(browser, server):
    page = _open(browser, server, "chapters/01_anchors.html", PHONE)
    try:
        toggles = page.locator(".secondary-toggle:visible")
        assert toggles.count() == 1, "exactly one visible 'on this page' toggle on a phone"
        toggles.first.click()
        page.wait_for_timeout(600)
        box = page.locator(".bd-sidebar-secondary").first.bounding_box()
        assert box and box["x"] < PHONE["width"] and box["x"] + box["width"] > 0
        assert page.locator(".bd-sidebar-secondary .toc-entry a").first.is_visible()
    finally:
        page.close()


def test_one_search_field_and_the_whole_logo(browser, server):
    page = _open(browser, server, "chapters/01_anchors.html", LAPTOP)
    try:
        fields = _visible_box(page, ".search-button-field, form.bd-search input")
        assert fields == 1, f"{fields} search fields are visible at 1280 px"
        logo = page.locator(".bd-sidebar-primary img.logo__image").first
        box = logo.bounding_box()
        natural = logo.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert box["y"] >= 0, "the logo starts above the top of the page"
        clipped = logo.evaluate(
            """i => { let a = i.parentElement; const r = i.getBoundingClientRect();
                 while (a && a !== document.body) { const o = getComputedStyle(a).overflow;
                   const ar = a.getBoundingClientRect();
                   if (o !== 'visible' && (r.top < ar.top - 1 || r.bottom > ar.bottom + 1)) return true;
                   a = a.parentElement; } return false; }"""
        )
        assert not clipped and natural[0] > 0, "the logo is cut off by its container"
    finally:
        page.close()


@pytest.mark.parametrize("path", _pages())
def test_no_page_wider_than_a_phone_and_no_sideways_scrolling(browser, server, path):
    page = _open(browser, server, path, PHONE)
    try:
        page.wait_for_timeout(700)  # MathJax
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide on a 390 px screen"
        scrolling = page.evaluate(
            """([blocks, own]) => [...document.querySelectorAll(blocks)]
                 .filter(b => !b.closest(own) && b.scrollWidth > b.clientWidth + 1)
                 .map(b => b.textContent.slice(0, 60))""",
            [WRAPPING_BLOCKS, OWN_BOX],
        )
        assert scrolling == [], f"{len(scrolling)} block(s) scroll sideways: {scrolling[:3]}"
        # Whatever is wide scrolls inside its own box, never past the screen's edge.
        beyond = page.evaluate(
            """(own) => [...document.querySelectorAll(own)]
                 .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
                   && !e.parentElement.closest(own))
                 .map(e => e.tagName + ' ' + e.textContent.slice(0, 40))""",
            OWN_BOX,
        )
        assert beyond == [], f"wide elements reach past the screen: {beyond[:3]}"
    finally:
        page.close()


@pytest.mark.parametrize("path", [p for p in _pages() if p.startswith("chapters/")])
def test_code_and_outputs_wrap_at_1280(browser, server, path):
    page = _open(browser, server, path, LAPTOP)
    try:
        scrolling = page.evaluate(
            """(blocks) => [...document.querySelectorAll(blocks)]
                 .filter(b => b.scrollWidth > b.clientWidth + 1).length""",
            WRAPPING_BLOCKS,
        )
        assert scrolling == 0, f"{scrolling} code/output block(s) scroll sideways at 1280 px"
    finally:
        page.close()


def test_search_lists_each_page_once_without_the_set_up(browser, server):
    page = _open(browser, server, "search.html?q=focal", LAPTOP)
    try:
        page.wait_for_selector("#search-results li", timeout=20000)
        page.wait_for_timeout(1500)  # summaries arrive after the list
        results = page.locator("#search-results li").all_inner_texts()
        focal = [r for r in results if r.split("\n")[0].strip().endswith("Focal loss")]
        assert len(focal) == 1, f"chapter 4 is listed {len(focal)} times: {focal}"
        assert not any("DETLIB_SOURCE" in r or "Set-up." in r for r in results)
    finally:
        page.close()
