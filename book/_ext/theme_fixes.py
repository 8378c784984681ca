"""Make sphinx-book-theme 1.3.0 and pydata-sphinx-theme 0.17.1 work together on a phone.

pydata-sphinx-theme 0.17.1 fills ``navbar_persistent`` with a search field when the user has not
set it (sphinx-book-theme's own empty default does not count). That renders the pydata header:
a second search field across the top, and hidden copies of the sidebar toggles *before* the
visible ones in the page, so the theme's script, which wires the first ``.primary-toggle`` and
``.secondary-toggle`` it finds, wires the hidden copies and the visible ☰ does nothing. Setting
``navbar_persistent`` to an empty list keeps the header empty, as sphinx-book-theme intends.
tests/browser/test_phone.py checks the result.

Search: Sphinx lists a page once for its title and once more for its top section ("4. Focal
loss" and "4. Focal loss > Focal loss"), because the page title carries the chapter number and
the section title does not. The section entry that repeats the page's own title is dropped from
the search index.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"^\d+(\.\d+)*\.?\s+")


def _empty_header(app, config):
    options = dict(config.html_theme_options or {})
    options.setdefault("navbar_persistent", [])
    config.html_theme_options = options


def _plain(title: str) -> str:
    return _NUMBER.sub("", title).strip()


def _drop_repeated_titles(app):
    """Before the search index is written: forget section titles equal to their page's title."""
    indexer = getattr(app.builder, "indexer", None)
    all_titles = getattr(indexer, "_all_titles", None)
    if not all_titles:
        return []
    for docname, titles in all_titles.items():
        page = app.env.titles.get(docname)
        if page is None:
            continue
        page_title = _plain(page.astext())
        titles[:] = [(t, anchor) for t, anchor in titles if _plain(t) != page_title]
    return []


def setup(app):
    app.connect("config-inited", _empty_header)
    app.connect("html-collect-pages", _drop_repeated_titles)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
