"""tools/tidy_notebooks.py: its rules decide as documented, and a second run changes nothing."""

import copy

import nbformat
import pytest

from tools import tidy_notebooks as tidy


def _nb():
    png = nbformat.v4.new_output(
        "display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"}
    )
    cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_markdown_cell("[badge](x)", metadata={"tags": ["colab-badge"]}),
        nbformat.v4.new_code_cell("import torch", metadata={"tags": ["bootstrap"]}),
        nbformat.v4.new_markdown_cell("The idea."),
        nbformat.v4.new_code_cell("import math\nfrom torch import nn"),
        nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.plot([1, 2])", outputs=[png]),
        nbformat.v4.new_code_cell(
            "x = 1 + 1\nprint(x)\n# the check\nassert x == 2\nassert x > 1\nassert x < 3"
        ),
        nbformat.v4.new_code_cell("assert 1 == 1\ntorch.testing.assert_close(a, a)\nprint('ok')"),
        nbformat.v4.new_code_cell("y = 2\nprint(y)"),
        nbformat.v4.new_code_cell("z = 3\nassert z == 3"),
    ]
    for k, cell in enumerate(cells):
        cell.id = f"cell{k}"
    return nbformat.v4.new_notebook(cells=cells)


FIGURES = {"cell5": {"caption": "A line.", "alt": "A rising line.", "name": "fig-test"}}


def _tags(nb, cell_id):
    return next(c for c in nb.cells if c.id == cell_id).metadata.get("tags", [])


def test_rules():
    nb = _nb()
    tidy.tidy(nb, FIGURES)
    assert "remove-cell" in _tags(nb, "cell1") and "remove-cell" in _tags(nb, "cell2")
    assert "hide-input" in _tags(nb, "cell4")  # imports
    assert "hide-input" in _tags(nb, "cell5")  # plotting
    assert "hide-input" in _tags(nb, "cell7")  # checks and prints only
    assert _tags(nb, "cell8") == []  # a derivation stays visible
    assert _tags(nb, "cell9") == []  # one short trailing check stays where it is
    derivation = next(c for c in nb.cells if c.id == "cell6")
    assert derivation.source == "x = 1 + 1\nprint(x)" and _tags(nb, "cell6") == []
    checks = nb.cells[nb.cells.index(derivation) + 1]
    assert checks.id == "cell6-check" and checks.source.startswith("# the check\nassert x == 2")
    assert checks.metadata["tags"] == ["hide-input"]
    meta = next(c for c in nb.cells if c.id == "cell5").metadata["mystnb"]
    assert meta == {
        "figure": {"caption": "A line.", "name": "fig-test"},
        "image": {"alt": "A rising line."},
    }


def test_second_run_changes_nothing():
    nb = _nb()
    assert tidy.tidy(nb, FIGURES)
    once = copy.deepcopy(nb)
    assert tidy.tidy(nb, FIGURES) == []
    assert nb == once


def test_unknown_figure_cell_is_an_error():
    with pytest.raises(ValueError, match="does not have"):
        tidy.tidy(_nb(), {"nope": FIGURES["cell5"]})


def test_figures_file_is_complete():
    figures = tidy.load_figures()
    names = [entry["name"] for cells in figures.values() for entry in cells.values()]
    assert len(names) == len(set(names)), "figure names must be unique in the book"
    assert all(name.startswith("fig-") for name in names)
