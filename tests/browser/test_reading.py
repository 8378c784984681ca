"""Reading a chapter page: it opens with prose, its figures are captioned and described, and
visible code takes at most 30% of it (plotting, checking, timing and set-up code is folded).

These check what ``tools/tidy_notebooks.py`` writes into the chapters (and what trimming the
import cells and formatting the code to the page width add): they pass once the tool has been
run on ``chapters/*.ipynb`` and the book rebuilt from them.
"""

from __future__ import annotations

import pytest

from tests.browser.test_book_in_browser import _pages

# `server` and `browser` are the fixtures of tests/browser/conftest.py.

CHAPTERS = [p for p in _pages() if p.startswith("chapters/")]
MAX_CODE_SHARE = 0.30  # of a chapter page's height, at most this is visible code
LAPTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def pages(browser, server):
    """Each chapter page opened once at 1280 px, shared by the tests below."""
    opened = {}
    for path in CHAPTERS:
        page = browser.new_page(viewport=LAPTOP)
        page.goto(f"{server}/{path}", wait_until="networkidle")
        page.wait_for_timeout(800)
        opened[path] = page
    yield opened
    for page in opened.values():
        page.close()


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_opens_with_prose(pages, path):
    first = pages[path].evaluate(
        """() => { const section = document.querySelector('article.bd-article section');
             for (const e of section.children) {
               if (e.matches('h1, span, .toctree-wrapper') || e.getBoundingClientRect().height === 0)
                 continue;
               return {tag: e.tagName, cls: e.className, text: e.innerText.trim().slice(0, 80)};
             }
             return null; }"""
    )
    assert first is not None, "the chapter page is empty"
    assert first["tag"] == "P" and len(first["text"]) >= 40, (
        f"the first thing after the title is not a paragraph of prose: {first}"
    )
    text = pages[path].locator("article.bd-article").inner_text()
    assert "running on" not in text.split("\n\n", 3)[0], "the set-up's output opens the page"


@pytest.mark.parametrize("path", CHAPTERS)
def test_figures_are_numbered_captioned_and_described(pages, path):
    figures = pages[path].evaluate(
        """() => [...document.querySelectorAll('article .cell_output img')].map(i => ({
             src: i.src.split('/').pop(), alt: i.alt || '',
             caption: i.closest('figure')?.querySelector('figcaption')?.innerText || '',
           }))"""
    )
    assert figures, "no figures found on a chapter page"
    for figure in figures:
        alt = figure["alt"].strip()
        assert alt and not alt.lower().endswith((".png", ".svg", ".jpg", ".jpeg")), (
            f"{figure['src']}: alt text is a file name or empty: {alt!r}"
        )
        assert len(alt.split()) >= 5, f"{figure['src']}: alt text says too little: {alt!r}"
        assert figure["caption"].startswith("Fig"), (
            f"{figure['src']}: no numbered caption ({figure['caption']!r})"
        )


def _visible_code_share(page) -> float:
    """Height of the visible (not collapsed) code cells over the article's height."""
    return page.evaluate(
        """() => { const article = document.querySelector('article.bd-article');
             let code = 0;
             for (const c of article.querySelectorAll('.cell_input')) {
               if (c.closest('details:not([open])')) continue;  // collapsed: one click away
               code += c.getBoundingClientRect().height;
             }
             return code / article.getBoundingClientRect().height; }"""
    )


@pytest.mark.parametrize("path", CHAPTERS)
def test_visible_code_is_at_most_30_percent_of_the_page(pages, path):
    share = _visible_code_share(pages[path])
    assert share <= MAX_CODE_SHARE, f"visible code is {100 * share:.1f}% of {path}"


@pytest.mark.parametrize("path", CHAPTERS)
def test_figures_are_not_shrunk_out_of_legibility(pages, path):
    # A wide figure spans the page's margin (cell tag `full-width`) instead of being shrunk to
    # the text column, so its 10-12 pt labels stay readable at 1280 px.
    scales = pages[path].evaluate(
        """() => [...document.querySelectorAll('article .cell_output img')]
                 .filter(i => i.naturalWidth > 0)
                 .map(i => i.getBoundingClientRect().width / i.naturalWidth)"""
    )
    assert scales, f"{path} has no figure"
    assert min(scales) >= 0.75, f"a figure of {path} is drawn at {min(scales):.2f} of its size"
