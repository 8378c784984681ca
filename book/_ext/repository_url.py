"""The repository URL of ``_config.yml`` as MyST substitutions, so pages never copy it.

``repository.url`` in ``_config.yml`` is the one place the URL lives (tests/test_book.py checks
that no other file holds it); Jupyter Book passes it to the theme as ``repository_url``. Pages
write ``{{ repository_link }}`` (a link to it) or ``{{ clone_command }}`` (``git clone URL``).
"""

from __future__ import annotations


def _substitutions(app, config):
    url = (config.html_theme_options or {}).get("repository_url", "").rstrip("/")
    if not url:
        return
    subs = dict(getattr(config, "myst_substitutions", None) or {})
    subs.setdefault("repository_link", f"[{url.split('://', 1)[-1]}]({url})")
    subs.setdefault("clone_command", f"`git clone {url}.git`")
    config.myst_substitutions = subs


def setup(app):
    app.connect("config-inited", _substitutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
