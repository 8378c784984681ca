"""In the built book, detlib's names in the chapters' prose link to their API entries
(``book/_ext/api_links.py``), and every such link lands on an existing entry."""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import urldefrag

import pytest
from bs4 import BeautifulSoup

from tests.browser.conftest import HTML

CHAPTER_PAGES = sorted((HTML / "chapters").glob("*.html"))


@functools.cache
def _ids(page: Path) -> frozenset[str]:
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    return frozenset(element["id"] for element in soup.find_all(id=True))


@pytest.mark.parametrize("page", CHAPTER_PAGES, ids=lambda p: p.stem)
def test_detlib_names_in_the_prose_link_to_their_api_entry(page):
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    links = soup.select("article a.api-link")
    assert links, f"{page.name}: no detlib name in the prose links to the API reference"
    for link in links:
        path, anchor = urldefrag(link["href"])
        target = (page.parent / path).resolve()
        assert target.exists(), f"{page.name}: {link['href']} points to no page"
        assert anchor in _ids(target), f"{page.name}: {link['href']} points to no API entry"
    # Code cells stay plain code: no link inside them.
    assert not soup.select("div.cell_input a.api-link")


def test_the_chapter_pages_were_found():
    assert len(CHAPTER_PAGES) >= 8, "the book is not built: run `make test-book` first"
