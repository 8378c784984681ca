"""Link the names of detlib's functions and classes in the chapters' prose to the API reference.

The chapters write ``AnchorGenerator``, ``detlib.box_iou`` or ``FasterRCNN.losses`` as inline
code. After Sphinx has resolved every document, each such inline code span whose text names one
documented detlib object, and only one, becomes a link to that object's entry on its API page.
Code cells are left alone, and so are names that several objects share (``forward``) and names
outside detlib (``torchvision.ops.box_iou``). Doing it here rather than with ``{py:func}`` roles
in the notebooks keeps the notebooks plain Markdown for Jupyter and Colab, and a name added to the
prose is linked without anyone remembering to.
"""

from __future__ import annotations

import re

# `name`, `name()`, `detlib.name`, `Class.method`, `detlib.module.name(...)`.
_NAME = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(\(.*\))?$")
_LINKED_TYPES = {"function", "class", "method", "classmethod", "staticmethod", "exception"}
# Pages whose inline code is linked: the chapters and the book's own pages, not the API pages.
_LINKED_DOCS = re.compile(r"^(chapters/|book/(?!api/))")


def api_targets(objects: dict) -> dict[str, str]:
    """Each name a reader may write for a documented detlib object, mapped to its full name.

    ``objects`` maps full names (``detlib.anchors.AnchorGenerator``) to objects with an
    ``objtype``, as in the Python domain's ``objects``. Each object answers to its full name, to
    ``detlib.<name>`` and to ``<name>``, where ``<name>`` is its name inside its module
    (``AnchorGenerator``, ``AnchorGenerator.retinanet``). A name that two objects share is left
    out.
    """
    candidates: dict[str, set[str]] = {}
    for full_name, entry in objects.items():
        if not full_name.startswith("detlib.") or entry.objtype not in _LINKED_TYPES:
            continue
        module_and_name = full_name.split(".")
        # detlib.<module>.<name...>, or detlib.<subpackage>.<module>.<name...> (detlib.roi.align)
        inside = _name_inside_module(module_and_name, objects)
        for alias in {full_name, f"detlib.{inside}", inside}:
            candidates.setdefault(alias, set()).add(full_name)
    return {alias: next(iter(names)) for alias, names in candidates.items() if len(names) == 1}


def _name_inside_module(parts: list[str], objects: dict) -> str:
    """The part of a full name after its module: the shortest tail that starts with an object
    that is not a method, e.g. ``AnchorGenerator.retinanet`` for
    ``detlib.anchors.AnchorGenerator.retinanet``."""
    for start in range(1, len(parts)):
        head = ".".join(parts[: start + 1])
        entry = objects.get(head)
        if entry is not None and entry.objtype in {"class", "function", "exception"}:
            return ".".join(parts[start:])
    return parts[-1]


def target_of(text: str, targets: dict[str, str]) -> str | None:
    """The full name of the object that inline code ``text`` names, or None."""
    match = _NAME.match(text.strip())
    if match is None:
        return None
    return targets.get(match.group("name"))


def _link_names(app, doctree, docname: str) -> None:
    from docutils import nodes  # here, so that the functions above import without Sphinx

    if not _LINKED_DOCS.match(docname):
        return
    domain = app.env.get_domain("py")
    targets = api_targets(domain.objects)
    for literal in list(doctree.findall(nodes.literal)):
        if isinstance(literal.parent, nodes.reference):
            continue
        full_name = target_of(literal.astext(), targets)
        if full_name is None:
            continue
        entry = domain.objects[full_name]
        uri = app.builder.get_relative_uri(docname, entry.docname) + "#" + entry.node_id
        reference = nodes.reference(
            "", "", internal=True, refuri=uri, reftitle=full_name, classes=["api-link"]
        )
        literal.replace_self(reference)
        reference.append(literal)


def setup(app):
    app.connect("doctree-resolved", _link_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
