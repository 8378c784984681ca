"""Keep every chapter's Colab badge and bootstrap cell in step with the repository URL.

The URL lives in one place, ``repository.url`` in ``_config.yml`` (the book's launch buttons read
it too). A chapter opens with its title (a markdown cell starting with ``# ``); this script renders
the two cells that follow it from the URL:

* a markdown cell tagged ``colab-badge`` with an "Open in Colab" link to the chapter;
* a code cell tagged ``bootstrap`` (collapsed in the HTML book) that first stops, saying what it
  found, what is needed and how to upgrade, when the runtime's torch, torchvision, numpy or
  matplotlib is older than detlib's floors (read from ``pyproject.toml``: one place); then installs
  detlib when it is not importable (a fresh Colab runtime) from ``DETLIB_SOURCE`` (default: the
  repository), never reinstalling PyTorch, and picks the device once for the chapter.

Usage: ``python tools/sync_notebooks.py [--check] chapters/*.ipynb``. With ``--check`` nothing is
written and the exit status says whether every chapter is in step (tests/test_book.py uses it).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BADGE_TAG = "colab-badge"
BOOTSTRAP_TAG = "bootstrap"

BOOTSTRAP_TEMPLATE = """\
# Set-up. On a fresh runtime (Google Colab) this installs detlib from the
# book's repository and keeps the runtime's own PyTorch; locally, `make book`
# has installed it already. Set the environment variable DETLIB_SOURCE to
# install from elsewhere (a local checkout, a fork).
import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys

DETLIB_SOURCE = os.environ.get("DETLIB_SOURCE", "git+{url}.git@{branch}")
if importlib.util.find_spec("torch") is None:
    raise RuntimeError(
        "This notebook needs PyTorch: see https://pytorch.org/get-started/locally/"
    )


def release(version):  # "2.5.1+cu121" -> (2, 5, 1)
    return tuple(int(n) for n in re.findall(r"\\d+", version.split("+")[0])[:3])


# Stop, saying what to do, if the runtime's packages are too old.
def check_floors(floors):
    found = {{}}
    for name in floors:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass  # numpy and matplotlib are installed below, torch checked above
    old = [n for n in found if release(found[n]) < release(floors[n])]
    if old:
        raise RuntimeError(
            "detlib needs "
            + ", ".join(f"{{n}} >= {{floors[n]}}" for n in old)
            + "; this runtime has "
            + ", ".join(f"{{n}} {{found[n]}}" for n in old)
            + ". Upgrade with\\n    !pip install --upgrade "
            + " ".join(f'"{{n}}>={{floors[n]}}"' for n in old)
            + "\\nthen restart the runtime (Colab: Runtime > Restart session)"
            " and run it again."
        )


# The oldest releases detlib is tested with (pyproject.toml; make test-compat).
check_floors({floors})
if importlib.util.find_spec("detlib") is None:
    wanted = ("numpy", "matplotlib", "ipywidgets", "anywidget", "tqdm")
    needed = [
        n for n in wanted + ("pycocotools",) if importlib.util.find_spec(n) is None
    ]
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    if needed:
        subprocess.run(pip + needed, check=True)
    # --no-deps: the runtime's torch stays as it is
    subprocess.run(pip + ["--no-deps", DETLIB_SOURCE], check=True)
    importlib.invalidate_caches()

import torch

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"PyTorch {{torch.__version__}}, running on {{device}}")"""

# Colab and GitHub render a notebook's images from absolute URLs only; the HTML book serves the
# same badge from its own static files (book/_ext/colab_badge.py), so it still reads offline.
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_TEMPLATE = (
    "[![Open In Colab](" + BADGE_IMAGE + ")]"
    "(https://colab.research.google.com/github/{repo}/blob/{branch}/chapters/{name})"
)


def runtime_floors(pyproject_path: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """The floors the bootstrap checks, ``{"torch": "2.2.2", ...}``, from ``[project]
    dependencies`` (each ``name>=version``), in the order they are declared."""
    text = pyproject_path.read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.M | re.S)
    if block is None:
        raise ValueError(f"{pyproject_path}: no [project] dependencies list")
    floors = dict(re.findall(r'"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*"', block.group(1)))
    if "torch" not in floors or "torchvision" not in floors:
        raise ValueError(f"{pyproject_path}: dependencies must declare torch>= and torchvision>=")
    return floors


def repository(config_path: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """The repository URL (without a trailing ``.git`` or slash) and branch from ``_config.yml``."""
    config = yaml.safe_load(config_path.read_text())
    repo = config["repository"]
    url = repo["url"].rstrip("/")
    url = url[: -len(".git")] if url.endswith(".git") else url
    return url, repo.get("branch", "main")


def expected_cells(notebook_path: Path, url: str, branch: str) -> tuple[str, str]:
    """The badge markdown and the bootstrap code a chapter must start with."""
    github_repo = url.split("github.com/", 1)[1]
    badge = BADGE_TEMPLATE.format(repo=github_repo, branch=branch, name=notebook_path.name)
    floors = json.dumps(runtime_floors())
    bootstrap = BOOTSTRAP_TEMPLATE.format(url=url, branch=branch, floors=floors)
    return badge, _formatted(bootstrap)


def _formatted(code: str) -> str:
    """``code`` as ruff formats the chapters (``chapters/ruff.toml``), so that the bootstrap cell
    passes ``make lint`` whatever the repository URL's length."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--config",
            str(ROOT / "chapters" / "ruff.toml"),
            "--stdin-filename",
            "bootstrap.py",
            "-",
        ],
        input=code,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.rstrip("\n")


def _tagged(nb: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if tag in cell.get("metadata", {}).get("tags", [])]


def problems(notebook_path: Path, url: str, branch: str) -> list[str]:
    """What is out of step in one chapter (empty when all is well)."""
    nb = nbformat.read(notebook_path, as_version=4)
    badge, bootstrap = expected_cells(notebook_path, url, branch)
    name = notebook_path.name
    found = []
    cells = nb.cells + [nbformat.v4.new_raw_cell()] * 3  # so that short notebooks index safely
    if cells[0].cell_type != "markdown" or not cells[0].source.startswith("# "):
        found.append(f"{name}: the first cell must be the chapter's title ('# ...')")
    if BADGE_TAG not in cells[1].get("metadata", {}).get("tags", []) or cells[1].source != badge:
        found.append(f"{name}: the second cell must be the Colab badge for {url}")
    first_code = next((cell for cell in nb.cells if cell.cell_type == "code"), None)
    if (
        first_code is not cells[2]
        or BOOTSTRAP_TAG not in cells[2].metadata.get("tags", [])
        or cells[2].source != bootstrap
    ):
        found.append(
            f"{name}: the third cell, and first code cell, must be the bootstrap cell for {url}"
        )
    if nb.metadata.get("accelerator") != "GPU":
        found.append(f"{name}: metadata.accelerator must be 'GPU' (Colab opens it on a GPU)")
    return found


def sync(notebook_path: Path, url: str, branch: str) -> bool:
    """Rewrite (or insert) the badge and bootstrap cells of one chapter; returns whether anything
    changed. The chapter must already start with its title cell."""
    nb = nbformat.read(notebook_path, as_version=4)
    before = nbformat.writes(nb)
    badge, bootstrap = expected_cells(notebook_path, url, branch)
    badges, bootstraps = _tagged(nb, BADGE_TAG), _tagged(nb, BOOTSTRAP_TAG)
    if badges:
        badges[0].source = badge
    else:
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(badge, metadata={"tags": [BADGE_TAG]}))
    if bootstraps:
        bootstraps[0].source = bootstrap
    else:
        tags = [BOOTSTRAP_TAG, "hide-input", "nbval-ignore-output"]
        nb.cells.insert(2, nbformat.v4.new_code_cell(bootstrap, metadata={"tags": tags}))
    nb.metadata["accelerator"] = "GPU"
    nb.metadata.setdefault("colab", {})["provenance"] = []
    after = nbformat.writes(nb)
    if after != before:
        nbformat.write(nb, notebook_path)
    return after != before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, do not write")
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    url, branch = repository()
    if args.check:
        found = [p for path in args.notebooks for p in problems(path, url, branch)]
        print("\n".join(found) or f"all {len(args.notebooks)} chapter(s) in step with {url}")
        return 1 if found else 0
    for path in args.notebooks:
        print(f"{path}: {'updated' if sync(path, url, branch) else 'already in step'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
