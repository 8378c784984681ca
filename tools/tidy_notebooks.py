"""Tidy the chapters for reading: captions and alt text, collapsed plotting and checking code,
and the set-up kept out of the HTML page.

Four rules, each decided from the notebook alone, so that running the tool twice changes
nothing the second time:

* **Figures.** Every code cell listed in ``tools/figures.yml`` (by the cell's ``id``) gets a
  numbered, captioned figure and alt text, through the cell metadata myst-nb reads:
  ``mystnb: {figure: {caption, name}, image: {alt}}``.
* **Plotting cells** (a cell with an image output, or one that calls ``plt``/``matplotlib``)
  are tagged ``hide-input``: the figure shows, its code is one click away.
* **Checking cells**, whose every statement is an ``assert``, a call of an ``assert...``
  function (``torch.testing.assert_close``) or a ``print`` (at least one being a check), and
  **import cells** (every statement an import) are tagged ``hide-input`` too. Their outputs stay.
  A derivation cell that *ends* in checks spanning at least ``MIN_CHECK_LINES`` lines is split
  in two first: the derivation stays visible, the trailing checks (with the comments just above
  them) move to a new cell right after it, ``<id>-check``, which is a checking cell. Checks print
  nothing and are not the cell's last expression, so the outputs stay with the derivation.
* **The set-up.** The Colab badge (``colab-badge``) and the bootstrap cell (``bootstrap``) keep
  their place at the top of the notebook, where ``tools/sync_notebooks.py`` expects them and
  where Colab runs them first, and are tagged ``remove-cell``: the HTML page opens with the
  chapter's idea, the downloaded notebook still starts with its set-up, and the search index no
  longer holds the set-up's text.

Usage: ``python tools/tidy_notebooks.py [--check] [--figures tools/figures.yml] NOTEBOOK...``.
With ``--check`` nothing is written; the exit status says whether every notebook is tidy.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "tools" / "figures.yml"
HIDE_INPUT = "hide-input"
REMOVE_CELL = "remove-cell"
SETUP_TAGS = ("colab-badge", "bootstrap")
PLOTTING_ROOTS = {"plt", "matplotlib"}
MIN_CHECK_LINES = 3


def load_figures(path: Path = FIGURES) -> dict[str, dict[str, dict[str, str]]]:
    """``{notebook file name: {cell id: {"caption", "alt", "name"}}}`` from the YAML file."""
    figures = yaml.safe_load(path.read_text()) or {}
    for notebook, cells in figures.items():
        for cell_id, entry in cells.items():
            if not isinstance(cell_id, str):  # YAML reads 01234567 as an octal number
                raise ValueError(f"{path}: {notebook}: quote the cell id {cell_id!r}")
            missing = {"caption", "alt", "name"} - set(entry)
            if missing:
                raise ValueError(f"{path}: {notebook} cell {cell_id} lacks {sorted(missing)}")
    return figures


def _statements(source: str) -> list[ast.stmt] | None:
    """The cell's top-level statements, or None when it is not plain Python (magics)."""
    try:
        return ast.parse(source).body
    except SyntaxError:
        return None


def _call_name(node: ast.AST) -> str:
    """``a.b.c(...)`` -> ``"a.b.c"``; anything else -> ``""``."""
    if not isinstance(node, ast.Call):
        return ""
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
        return ".".join(reversed(parts))
    return ""


def _is_check(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Assert):
        return True
    name = _call_name(statement.value) if isinstance(statement, ast.Expr) else ""
    return name.rsplit(".", 1)[-1].startswith("assert")


def _is_print(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and _call_name(statement.value) == "print"


def is_checking_cell(source: str) -> bool:
    """Every statement an assert, an ``assert...()`` call or a print, and at least one check."""
    body = _statements(source)
    if not body:
        return False
    return all(_is_check(s) or _is_print(s) for s in body) and any(_is_check(s) for s in body)


def is_import_cell(source: str) -> bool:
    body = _statements(source)
    return bool(body) and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body)


def is_plotting_cell(cell: nbformat.NotebookNode) -> bool:
    """A cell that shows an image, or calls ``plt``/``matplotlib`` (imports do not count)."""
    if any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
        return True
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:
        return False
    return any(_call_name(node).split(".")[0] in PLOTTING_ROOTS for node in ast.walk(tree))


def trailing_checks_start(source: str) -> int | None:
    """The 0-based line where a derivation cell's trailing checks begin (comments just above
    them included), or None when the cell does not end in checks spanning ``MIN_CHECK_LINES``
    lines or has nothing before them."""
    body = _statements(source)
    if not body or not _is_check(body[-1]):
        return None
    k = len(body)
    while k > 0 and _is_check(body[k - 1]):
        k -= 1
    if k == 0:
        return None
    lines = source.splitlines()
    start = body[k].lineno - 1  # ast lines are 1-based
    if len(lines) - start < MIN_CHECK_LINES:
        return None
    while start > body[k - 1].end_lineno and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return start


def split_trailing_checks(nb: nbformat.NotebookNode) -> list[str]:
    """Move the trailing checks of derivation cells into cells of their own (see the module
    docstring); returns what was split."""
    done, cells = [], []
    for cell in nb.cells:
        cells.append(cell)
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or HIDE_INPUT in tags or any(t in tags for t in SETUP_TAGS):
            continue
        if is_plotting_cell(cell) or is_checking_cell(cell.source):
            continue
        start = trailing_checks_start(cell.source)
        if start is None:
            continue
        lines = cell.source.splitlines()
        checks = nbformat.v4.new_code_cell("\n".join(lines[start:]).strip("\n"))
        checks.id = f"{cell.get('id')}-check"[:64]
        checks.metadata["tags"] = [HIDE_INPUT]
        cell.source = "\n".join(lines[:start]).rstrip()
        cells.append(checks)
        done.append(f"cell {cell.get('id')}: trailing checks moved to {checks.id}")
    nb.cells = cells
    return done


def _add_tag(cell: nbformat.NotebookNode, tag: str) -> None:
    tags = cell.metadata.setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def tidy(nb: nbformat.NotebookNode, figures: dict[str, dict[str, str]]) -> list[str]:
    """Apply the four rules to one notebook in place; returns what each rule did, in words."""
    done = split_trailing_checks(nb)
    seen = set()
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if any(tag in tags for tag in SETUP_TAGS):
            if REMOVE_CELL not in tags:
                _add_tag(cell, REMOVE_CELL)
                done.append(f"set-up cell {cell.get('id')}: {REMOVE_CELL}")
            continue
        if cell.cell_type != "code":
            continue
        entry = figures.get(cell.get("id"))
        if entry is not None:
            seen.add(cell.get("id"))
            wanted = {
                "figure": {"caption": entry["caption"], "name": entry["name"]},
                "image": {"alt": entry["alt"]},
            }
            mystnb = cell.metadata.setdefault("mystnb", {})
            if {k: mystnb.get(k) for k in wanted} != wanted:
                mystnb.update(wanted)
                done.append(f"figure {entry['name']}: caption and alt text")
        reason = (
            "plotting"
            if is_plotting_cell(cell)
            else "checking"
            if is_checking_cell(cell.source)
            else "imports"
            if is_import_cell(cell.source)
            else None
        )
        if reason and HIDE_INPUT not in tags and "remove-input" not in tags:
            _add_tag(cell, HIDE_INPUT)
            done.append(f"{reason} cell {cell.get('id')}: {HIDE_INPUT}")
    missing = sorted(set(figures) - seen)
    if missing:
        raise ValueError(f"tools/figures.yml names cells this notebook does not have: {missing}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, do not write")
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    figures = load_figures(args.figures)
    untidy = 0
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        done = tidy(nb, figures.get(path.name, {}))
        untidy += bool(done)
        if done and not args.check:
            nbformat.write(nb, path)
        verb = "would change" if args.check else "changed"
        print(f"{path}: {f'{verb} {len(done)} cell(s)' if done else 'already tidy'}")
        for line in done:
            print(f"  {line}")
    return 1 if args.check and untidy else 0


if __name__ == "__main__":
    sys.exit(main())
