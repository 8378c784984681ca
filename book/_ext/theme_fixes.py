"""Make sphinx-book-theme 1.3.0 and pydata-sphinx-theme 0.17.1 work together on a phone.

pydata-sphinx-theme 0.17.1 fills ``navbar_persistent`` with a search field when the user has not
set it (sphinx-book-theme's own empty default does not count). That renders the pydata header:
a second search field across the top, and hidden copies of the sidebar toggles *before* the
visible ones in the page, so the theme's script, which wires the first ``.primary-toggle`` and
``.secondary-toggle`` it finds, wires the hidden copies and the visible ☰ does nothing. Setting
``navbar_persistent`` to an empty list keeps the header empty, as sphinx-book-theme intends.
tests/browser/test_phone.py checks the result.
"""

from __future__ import annotations


def _empty_header(app, config):
    options = dict(config.html_theme_options or {})
    options.setdefault("navbar_persistent", [])
    config.html_theme_options = options


def setup(app):
    app.connect("config-inited", _empty_header)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
