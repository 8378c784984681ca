"""The book's structure: every chapter listed, bootstrapped from the one repository URL, executed."""

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from tools import sync_notebooks

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [entry["file"] for entry in part["chapters"]]
    return files


def test_every_chapter_is_in_the_table_of_contents():
    listed = {f for f in _toc_files() if f.startswith("chapters/")}
    assert listed == {f"chapters/{p.stem}" for p in CHAPTERS}
    assert CHAPTERS, "no chapters found"


def test_every_toc_entry_exists():
    for entry in _toc_files():
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), entry


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_badge_and_bootstrap_come_from_the_configured_repository(path):
    url, branch = sync_notebooks.repository()
    assert sync_notebooks.problems(path, url, branch) == []


def test_the_repository_url_lives_in_one_place():
    url, _ = sync_notebooks.repository()
    sources = [
        p
        for p in ROOT.rglob("*")
        if p.suffix in {".py", ".ipynb", ".md", ".yml", ".toml", ".cfg"}
        and ".venv" not in p.parts
        and "_build" not in p.parts
    ]
    mentions = {
        p.relative_to(ROOT).as_posix() for p in sources if url in p.read_text(errors="ignore")
    }
    # _config.yml holds it; the chapters carry the rendered copy that `make sync` keeps in step.
    rendered = {f"chapters/{p.name}" for p in CHAPTERS}
    assert mentions - rendered == {"_config.yml"}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_device_is_picked_once_at_the_top(path):
    nb = nbformat.read(path, as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    assert "torch.device(" in code[0]
    for source in code[1:]:
        # The meta device (shapes only, for counting) is not a choice of where to compute.
        assert not re.search(r"""torch\.device\((?!["']meta["']\))""", source), source[:80]
        assert ".cuda()" not in source
        assert not re.search(r"""(device\s*=|\.to\()\s*["']cuda""", source), source[:80]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_executed_without_unexpected_errors(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        assert cell.get("execution_count") is not None, f"unexecuted cell: {cell.source[:60]!r}"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if "raises-exception" not in cell.metadata.get("tags", []):
            assert not errors, f"error in cell: {cell.source[:60]!r}"
        else:
            assert errors, f"cell tagged raises-exception did not raise: {cell.source[:60]!r}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_widget_state_is_saved_with_widget_outputs(path):
    nb = nbformat.read(path, as_version=4)
    views = [
        o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    state = (
        nb.metadata.get("widgets", {})
        .get("application/vnd.jupyter.widget-state+json", {})
        .get("state", {})
    )
    for model_id in views:
        assert model_id in state, (
            "a widget is shown but its state is not saved: it would vanish from the HTML"
        )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_network_at_run_time(path):
    text = path.read_text()
    for pattern in (
        r"pretrained\s*=\s*True",
        r"weights\s*=\s*(?!None\b)[\"'A-Z]",
        r"download\s*=\s*True",
        r"urlretrieve",
        r"requests\.get",
    ):
        assert not re.search(pattern, text), pattern


def test_notebooks_are_valid_json_with_python_kernel():
    for path in CHAPTERS:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"


def _sanitize(text: str) -> str:
    """Apply tests/nbval_sanitize.cfg the way nbval does: each regex replaced in turn."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "tests" / "nbval_sanitize.cfg")
    for section in config.sections():
        text = re.sub(config[section]["regex"], config[section]["replace"], text)
    return text


def test_a_tensor_printed_on_a_gpu_compares_equal_to_the_cpu_output():
    on_cpu = "tensor([[ 0.002, -0.105]])\ntensor([1, 2], dtype=torch.int32)"
    on_gpu = "tensor([[ 0.002, -0.105]], device='cuda:0')\ntensor([1, 2], device='cuda:1', dtype=torch.int32)"
    assert _sanitize(on_gpu) == _sanitize(on_cpu) == on_cpu
    assert _sanitize("tensor([1.5])") != _sanitize("tensor([2.5])")  # values still compared


def test_the_colab_badge_image_is_absolute_in_the_notebooks():
    # Colab renders notebook images from absolute URLs only; the book swaps in its local copy.
    for path in CHAPTERS:
        badge = nbformat.read(path, as_version=4).cells[1].source
        assert f"({sync_notebooks.BADGE_IMAGE})" in badge, path.name
