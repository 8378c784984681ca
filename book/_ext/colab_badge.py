"""Serve the chapters' "Open in Colab" badge from the book's own static files.

A chapter's badge cell links its image by absolute URL (``tools/sync_notebooks.py``), because
Colab and GitHub render notebook images from absolute URLs only. The HTML book must read offline,
so before a chapter is parsed its source has that URL replaced by the local copy in
``book/_static``; Sphinx then copies the image into the built book like any other.
"""

from __future__ import annotations

from pathlib import Path

REMOTE_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_BADGE = Path("book/_static/colab-badge.svg")


def _local_badge(app, docname: str, source: list[str]) -> None:
    if REMOTE_BADGE not in source[0]:
        return
    document = Path(app.env.doc2path(docname, False))
    relative = Path(*[".."] * (len(document.parents) - 1), LOCAL_BADGE)
    source[0] = source[0].replace(REMOTE_BADGE, relative.as_posix())


def setup(app):
    app.connect("source-read", _local_badge)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
