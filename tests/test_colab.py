"""A fresh Colab runtime, simulated: a chapter alone in an empty directory, a kernel without detlib.

The kernel's Python sees the project's packages (torch, torchvision, matplotlib, ipywidgets...)
through a path file, as Colab's runtime has them preinstalled, but detlib is not importable.
The chapter's bootstrap cell must install detlib (from this checkout, via DETLIB_SOURCE) into that
Python, leave torch alone, and the chapter must then run to the end.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "chapters" / "01_anchors.ipynb"


def _fresh_runtime(tmp_path: Path) -> Path:
    """A virtual environment that sees the project's site-packages but not detlib."""
    runtime = tmp_path / "runtime"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(runtime)], check=True)
    python = runtime / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A plain path line: the directory is searched, but the .pth files inside it are not run, so
    # the project's editable install of detlib stays invisible, as on a fresh Colab runtime.
    (Path(purelib) / "preinstalled.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    probe = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('detlib'))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        # Where the tests import a copy of detlib through PYTHONPATH (tools/compat.py), the
        # fresh runtime must not see it either.
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert probe.stdout.strip() == "None", "detlib must not be importable before the bootstrap"
    return python


def _kernelspec(tmp_path: Path, python: Path) -> Path:
    kernels = tmp_path / "jupyter" / "kernels" / "fresh-runtime"
    kernels.mkdir(parents=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh runtime",
        "language": "python",
    }
    (kernels / "kernel.json").write_text(json.dumps(spec))
    return tmp_path / "jupyter"


@pytest.mark.slow
def test_chapter_bootstraps_detlib_in_a_fresh_runtime(tmp_path, monkeypatch):
    python = _fresh_runtime(tmp_path)
    workdir = tmp_path / "colab"
    workdir.mkdir()
    notebook = workdir / CHAPTER.name
    shutil.copy(CHAPTER, notebook)  # the chapter alone: no detlib/ next to it

    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path, python)))
    monkeypatch.setenv("DETLIB_SOURCE", str(ROOT))
    monkeypatch.setenv(
        "PIP_NO_BUILD_ISOLATION", "0"
    )  # build with the runtime's setuptools, offline
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing may be downloaded: everything else is there
    monkeypatch.delenv("PYTHONPATH", raising=False)

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="fresh-runtime", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    check = subprocess.run(
        [python, "-c", "import detlib, torch; print(detlib.__file__); print(torch.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ},
    )
    detlib_file, torch_file = check.stdout.split()
    runtime_root = str(tmp_path / "runtime")
    assert detlib_file.startswith(runtime_root), "the bootstrap installed detlib into the runtime"
    assert not torch_file.startswith(runtime_root), "torch is the runtime's own, never reinstalled"
    bootstrap_output = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "running on" in bootstrap_output


def _bootstrap_source() -> str:
    from tools import sync_notebooks

    url, branch = sync_notebooks.repository()
    return sync_notebooks.expected_cells(CHAPTER, url, branch)[1]


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python >= 3.11")
def test_bootstrap_floors_are_pyprojects():
    from tools import sync_notebooks

    floors = sync_notebooks.runtime_floors()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [f"{name}>={version}" for name, version in floors.items()] == dependencies
    calls = [
        node
        for node in ast.walk(ast.parse(_bootstrap_source()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_floors"
    ]
    assert [ast.literal_eval(call.args[0]) for call in calls] == [floors]


def test_bootstrap_stops_on_a_torch_below_the_floor(monkeypatch, capsys):
    import importlib.metadata

    from tools import sync_notebooks

    floors = sync_notebooks.runtime_floors()
    real_version = importlib.metadata.version
    old = {"torch": "2.1.2+cu121", "torchvision": "0.16.2+cu121"}
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: old.get(name) or real_version(name)
    )
    with pytest.raises(RuntimeError) as raised:
        exec(_bootstrap_source(), {})
    message = str(raised.value)
    assert f"torch >= {floors['torch']}" in message and "torch 2.1.2+cu121" in message
    assert f"torchvision >= {floors['torchvision']}" in message and "0.16.2+cu121" in message
    assert f'pip install --upgrade "torch>={floors["torch"]}"' in message
    assert "restart the runtime" in message
    assert "numpy" not in message  # only what is too old is named
    assert "running on" not in capsys.readouterr().out  # it stopped before the rest of the cell


def test_bootstrap_passes_at_the_floor_and_above(monkeypatch, capsys):
    import importlib.metadata

    from tools import sync_notebooks

    floors = sync_notebooks.runtime_floors()
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: floors.get(name) or real_version(name)
    )
    exec(_bootstrap_source(), {})  # detlib is importable here: nothing is installed
    assert "running on" in capsys.readouterr().out
