"""Drop duplicate <script> entries from every page.

Jupyter Book 1.x registers sphinx-thebe's configuration script twice, and the second copy
re-declares a `const`, which is an error in every browser console. This keeps the first copy of
each script (same file, same attributes, same inline body; an inline
script may be registered with the file name None or "", which count as the same).
"""

from __future__ import annotations


def _unique(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        key = (
            str(getattr(script, "filename", script) or ""),
            tuple(sorted((k, str(v)) for k, v in attributes.items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: handlers that run later still add to this very list


def setup(app):
    # Early: Sphinx stops calling html-page-context handlers once one returns a template name.
    app.connect("html-page-context", _unique, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
