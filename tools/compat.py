"""Run detlib's tests and chapters in runtimes we do not choose: at the declared floors and newest.

Readers run the chapters in Colab, whose PyTorch, torchvision, numpy, matplotlib and Python change
under us, and the chapters' bootstrap cell installs detlib with ``--no-deps`` on top of whatever is
there. The floors in ``pyproject.toml`` are therefore a promise; this script checks it. For each
runtime it

1. builds a throwaway virtual environment outside the repository (``$DETLIB_COMPAT_DIR``, default
   ``/tmp/detlib-compat``), with the runtime's torch, torchvision, numpy and matplotlib
   "preinstalled", plus what the tests and chapters use (pytest, hypothesis, nbval, ipykernel,
   pycocotools, tqdm, ipywidgets, anywidget...);
2. exports the committed tree (``--rev``, default ``HEAD``; ``--worktree``: the work tree as it is,
   tracked and new files) beside it, and runs the unit tests there (``tests/``, without
   ``tests/browser``);
3. runs every chapter of the copy under nbval's lax mode (a cell fails only when it raises), one
   chapter at a time. detlib is not installed beforehand: the first chapter's bootstrap cell
   installs it, exactly as on Colab (``pip install --no-deps``, from the copy via
   ``DETLIB_SOURCE``), so nothing can upgrade torch, and the other chapters use that install;
4. writes ``book/_generated/compat.json`` (merged: a run of one runtime keeps the other's last
   result) and ``book/_generated/compat.md``, the table the book's Compatibility page includes.

The runtimes:

* ``floor``: the lowest Python that ``requires-python`` allows and that is installed here, with
  torch, torchvision, numpy and matplotlib pinned to the ``>=`` floors of ``[project]
  dependencies``: the floors are read from ``pyproject.toml``, never repeated here;
* ``newest``: the newest Python installed here, with the newest releases on PyPI.

Wheels come from PyPI (the machine's pip configuration, which may cap versions or add local
indexes, is ignored) and are kept in ``$DETLIB_COMPAT_DIR/wheels`` for the next run. PyTorch's
wheels are large: a first run downloads several GB.

Usage: ``python tools/compat.py [--runtime floor|newest ...] [--chapters-only|--tests-only]``
(``make test-compat`` runs both runtimes). The exit status is 1 if any test or chapter failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "book" / "_generated"
RUNTIME_PACKAGES = ("torch", "torchvision", "numpy", "matplotlib")
# What a Colab runtime has besides the above, and what the tests and chapters need.
TOOL_PACKAGES = (
    "pytest",
    "hypothesis",
    "nbval",
    "nbclient",
    "nbformat",
    "ipykernel",
    "pyyaml",
    "pycocotools",
    "tqdm",
    "ipywidgets",
    "anywidget",
    "setuptools",
    "wheel",
)
# Tools the unit tests run whose output must match the repository's: at requirements.txt's pin
# (the tests check that each chapter's bootstrap cell is what ruff formats it to).
PINNED_TOOLS = ("ruff",)
CELL_TIMEOUT_S = 3600


def declared_floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """The ``>=`` floors of ``requires-python`` (key ``python``) and of the runtime packages."""
    if tomllib is None:
        raise SystemExit("tools/compat.py runs on Python >= 3.11 (it reads pyproject.toml)")
    project = tomllib.loads(pyproject.read_text())["project"]
    floors = {}
    python = re.fullmatch(r"\s*>=\s*([0-9.]+)\s*", project["requires-python"])
    if python is None:
        raise ValueError(f"requires-python must read '>=X.Y', got {project['requires-python']!r}")
    floors["python"] = python.group(1)
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*", requirement)
        if match is None:
            raise ValueError(f"each dependency must read 'name>=version', got {requirement!r}")
        floors[match.group(1).lower()] = match.group(2)
    missing = [name for name in RUNTIME_PACKAGES if name not in floors]
    if missing:
        raise ValueError(f"pyproject.toml declares no floor for {missing}")
    return floors


def _installed_pythons() -> dict[tuple[int, int], str]:
    """``(major, minor) -> interpreter`` of the Pythons found here: ``python3.X`` on PATH and
    pyenv's versions (whose shims refuse to run a version that is not selected)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(8, 30)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob("3.*/bin/python3"))
    probe = "import sys, venv, ssl; print(sys.version_info[0], sys.version_info[1], sys.executable)"
    found = {}
    for candidate in filter(None, candidates):
        out = subprocess.run([candidate, "-c", probe], capture_output=True, text=True)
        if out.returncode == 0:
            major, minor, executable = out.stdout.split(maxsplit=2)
            found.setdefault((int(major), int(minor)), executable.strip())
    return found


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def runtime_plan(name: str, floors: dict[str, str]) -> dict:
    """The interpreter and pip requirements of the runtime ``floor`` or ``newest``."""
    pythons = _installed_pythons()
    if name == "floor":
        wanted = _version_tuple(floors["python"])
        allowed = sorted(v for v in pythons if v >= wanted)
        if not allowed:
            raise SystemExit(f"no Python >= {floors['python']} is installed (python3.X on PATH)")
        if allowed[0] != wanted:
            print(
                f"warning: Python {floors['python']} (requires-python's floor) is not installed; "
                f"using {'.'.join(map(str, allowed[0]))}, so the floor of Python is NOT tested"
            )
        python = pythons[allowed[0]]
        requirements = [f"{pkg}=={floors[pkg]}" for pkg in RUNTIME_PACKAGES]
    elif name == "newest":
        python = pythons[max(pythons)]
        requirements = list(RUNTIME_PACKAGES)
    else:
        raise ValueError(f"runtime must be 'floor' or 'newest', got {name!r}")
    return {"python": python, "requirements": requirements + list(TOOL_PACKAGES) + _pinned_tools()}


def _pinned_tools(path: Path = ROOT / "requirements.txt") -> list[str]:
    """``name==version`` of each of ``PINNED_TOOLS``, as requirements.txt pins it."""
    pins = dict(
        line.split("==", 1)
        for line in (raw.split("#", 1)[0].strip() for raw in path.read_text().splitlines())
        if "==" in line
    )
    return [f"{name}=={pins[name]}" for name in PINNED_TOOLS]


def _pip_env(wheels: Path) -> dict[str, str]:
    """Plain PyPI: this machine's pip configuration (caps, local indexes) is ignored."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["PIP_FIND_LINKS"] = str(wheels)
    return env


def _run(cmd: list, log, **kwargs) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), file=log, flush=True)
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kwargs)


def export_tree(dest: Path, rev: str | None) -> str:
    """Write the files of commit ``rev`` (or, when None, of the work tree as it is now: tracked
    and new files, not ignored ones) to ``dest``; returns what was exported, for the report."""
    if rev is not None:
        commit = subprocess.run(
            ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True)
        subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True)
        return f"commit {commit[:10]}"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():  # a tracked file may be deleted in the work tree
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    return "work tree"


def build_runtime(name: str, plan: dict, base: Path, wheels: Path, log, reuse: bool) -> Path:
    """A fresh virtual environment with the runtime's packages, without detlib. With ``reuse``,
    an environment left by an earlier run with the same interpreter and requirements is kept
    (detlib uninstalled from it): for pinned runtimes, it saves the install of several GB."""
    env_dir = base / name / "venv"
    python = env_dir / "bin" / "python"
    stamp, wanted = env_dir / "compat-requirements.json", json.dumps(plan, sort_keys=True)
    pip_env = _pip_env(wheels)
    pip = [python, "-m", "pip"]
    if reuse and stamp.exists() and stamp.read_text() == wanted:
        _run(pip + ["uninstall", "-q", "-y", "detlib"], log, env=pip_env)
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    subprocess.run([plan["python"], "-m", "venv", str(env_dir)], check=True)
    # Download first (kept for the next run), then install from the kept wheels only.
    download = pip + ["download", "-q", "--only-binary=:all:", "-d", wheels] + plan["requirements"]
    install = pip + ["install", "-q", "--no-index", "--only-binary=:all:"] + plan["requirements"]
    for cmd in (download, install):
        if _run(cmd, log, env=pip_env).returncode:
            raise SystemExit(f"[{name}] '{' '.join(map(str, cmd[3:5]))}' failed: see {log.name}")
    stamp.write_text(wanted)
    return python


def versions(python: Path) -> dict[str, str]:
    """The runtime's Python and package versions, and where detlib was imported from."""
    code = (
        "import json, platform, importlib.metadata as m; "
        f"v = {{p: m.version(p) for p in {RUNTIME_PACKAGES!r}}}; "
        "v['python'] = platform.python_version(); import importlib.util as u; "
        "s = u.find_spec('detlib'); v['detlib'] = s.origin if s else None; "
        "print(json.dumps(v))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    return json.loads(out.stdout)


def _junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / skipped counts of a pytest JUnit XML report."""
    if not path.exists():
        return {"passed": 0, "failed": 1, "skipped": 0}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def _failed_names(path: Path) -> list[str]:
    if not path.exists():
        return ["(no report: pytest did not run)"]
    names = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            names.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return names


def run_tests(python: Path, tree: Path, reports: Path, log, env: dict) -> dict:
    """The unit tests, before detlib is installed (tests/test_colab.py needs a runtime without
    it); they import the copy's detlib."""
    report = reports / "unit.xml"
    cmd = [
        python,
        "-m",
        "pytest",
        "tests",
        "-q",
        "--ignore=tests/browser",
        "-p",
        "no:cacheprovider",
    ]
    cmd += [f"--junitxml={report}"]
    start = time.monotonic()
    # Scripts the tests launch (examples/train_ddp.py under torchrun) import the copy's detlib too;
    # tests/test_colab.py removes PYTHONPATH for its fresh runtime.
    _run(cmd, log, cwd=tree, env={**env, "PYTHONPATH": str(tree)})
    counts = _junit_counts(report)
    return {**counts, "seconds": round(time.monotonic() - start), "failures": _failed_names(report)}


def run_chapters(python: Path, tree: Path, reports: Path, log, env: dict) -> dict:
    """Every chapter under nbval's lax mode, one at a time: pass when no cell raises."""
    results, start = {}, time.monotonic()
    for chapter in sorted((tree / "chapters").glob("*.ipynb")):
        report = reports / f"{chapter.stem}.xml"
        cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax"]
        cmd += ["--nbval-current-env", f"--nbval-cell-timeout={CELL_TIMEOUT_S}"]
        cmd += [f"--junitxml={report}", str(chapter.relative_to(tree))]
        began = time.monotonic()
        _run(cmd, log, cwd=tree, env=env)
        counts = _junit_counts(report)
        results[chapter.stem] = {
            "cells_failed": counts["failed"],
            "cells_passed": counts["passed"],
            "seconds": round(time.monotonic() - began),
            "failures": _failed_names(report),
        }
        state = "pass" if counts["failed"] == 0 else f"FAIL ({counts['failed']} cell(s))"
        print(f"    {chapter.stem}: {state}, {results[chapter.stem]['seconds']} s", flush=True)
    return {"chapters": results, "seconds": round(time.monotonic() - start)}


def render_markdown(data: dict) -> str:
    """The Compatibility page's table, from ``compat.json``."""
    lines = [
        "| runtime | date | tested | Python | torch | torchvision | numpy | matplotlib "
        "| unit tests | chapters (nbval lax) | time: tests + chapters |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for name in ("floor", "newest"):
        if name not in data:
            continue
        r = data[name]
        v = r["versions"]
        unit = r.get("unit")
        unit_text = "not run"
        if unit:
            unit_text = f"{unit['passed']} passed, {unit['failed']} failed"
            unit_text += f", {unit['skipped']} skipped" if unit["skipped"] else ""
        chapters = r.get("chapters", {}).get("chapters", {})
        failed = [stem for stem, c in chapters.items() if c["cells_failed"]]
        chapter_text = "not run"
        if chapters:
            chapter_text = f"{len(chapters) - len(failed)} of {len(chapters)} pass"
            chapter_text += f" (failed: {', '.join(failed)})" if failed else ""
        parts = [(unit or {}).get("seconds"), r.get("chapters", {}).get("seconds")]
        minutes = " + ".join(f"{round(p / 60)}" for p in parts if p is not None) or "0"
        lines.append(
            f"| {name} | {r['date']} | {r.get('source', '')} | {v['python']} | {v['torch']} "
            f"| {v['torchvision']} "
            f"| {v['numpy']} | {v['matplotlib']} | {unit_text} | {chapter_text} | {minutes} min |"
        )
        for failure in (unit or {}).get("failures", [])[:20]:
            notes.append(f"- {name}, unit test: `{failure}`")
        for stem in failed:
            for failure in chapters[stem]["failures"][:5]:
                notes.append(f"- {name}, {stem}: `{failure}`")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\nFailures:\n\n" + "\n".join(notes) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", action="append", choices=["floor", "newest"])
    parser.add_argument("--tests-only", action="store_true", help="skip the chapters")
    parser.add_argument("--chapters-only", action="store_true", help="skip the unit tests")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("DETLIB_COMPAT_DIR", "/tmp/detlib-compat")),
        help="where the throwaway environments and the wheel cache go (outside the repository)",
    )
    parser.add_argument("--results", type=Path, default=GENERATED / "compat.json")
    parser.add_argument("--rev", default="HEAD", help="the commit to test (default: HEAD)")
    parser.add_argument(
        "--worktree", action="store_true", help="test the work tree as it is, not a commit"
    )
    parser.add_argument(
        "--reuse-envs",
        action="store_true",
        help="keep an environment an earlier run built with the same requirements",
    )
    args = parser.parse_args(argv)
    base = args.dir.resolve()
    if base == ROOT or ROOT in base.parents:
        parser.error("--dir must lie outside the repository")
    wheels = base / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    floors = declared_floors()
    print(f"==> [compat] declared floors (pyproject.toml): {floors}")
    rev = None
    if not args.worktree:  # one commit for every runtime, even if HEAD moves during the run
        rev = subprocess.run(
            ["git", "rev-parse", "--verify", f"{args.rev}^{{commit}}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    ok = True
    for name in args.runtime or ["floor", "newest"]:
        plan = runtime_plan(name, floors)
        log_path = base / f"{name}.log"
        start = time.monotonic()
        with open(log_path, "w") as log:
            print(f"==> [compat] {name}: building the runtime ({plan['python']}), log {log_path}")
            python = build_runtime(name, plan, base, wheels, log, args.reuse_envs)
            found = versions(python)
            if found["detlib"] is not None:
                raise SystemExit(f"[{name}] detlib is importable before any bootstrap cell ran")
            print(f"==> [compat] {name}: {found}")
            tree, reports = base / name / "tree", base / name / "reports"
            for fresh in (tree, reports):
                shutil.rmtree(fresh, ignore_errors=True)
                fresh.mkdir(parents=True)
            source = export_tree(tree, rev)
            # The bootstrap cell's pip: from the copy, offline (all else is in the wheel cache).
            env = {**_pip_env(wheels), "PIP_NO_INDEX": "1", "DETLIB_SOURCE": str(tree)}
            env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
            result = {
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                "versions": {k: v for k, v in found.items() if k != "detlib"},
                "source": source,
            }
            if not args.chapters_only:
                print(f"==> [compat] {name}: unit tests")
                result["unit"] = run_tests(python, tree, reports, log, env)
                u = result["unit"]
                print(f"    {u['passed']} passed, {u['failed']} failed, {u['skipped']} skipped")
                ok &= result["unit"]["failed"] == 0
            if not args.tests_only:
                print(f"==> [compat] {name}: chapters (nbval --nbval-lax)")
                result["chapters"] = run_chapters(python, tree, reports, log, env)
                ok &= all(c["cells_failed"] == 0 for c in result["chapters"]["chapters"].values())
                installed = os.path.realpath(versions(python)["detlib"] or "/nowhere")
                if not installed.startswith(os.path.realpath(base / name / "venv")):
                    print(f"    detlib was not installed by the bootstrap cell ({installed})")
                    ok = False
                result["detlib_installed_by_bootstrap"] = installed.startswith(
                    os.path.realpath(base / name / "venv")
                )
        result["seconds"] = round(time.monotonic() - start)
        # Read again: a run of the other runtime, started beside this one, may have finished.
        data = json.loads(args.results.read_text()) if args.results.exists() else {}
        data[name] = result
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(data, indent=1) + "\n")
        args.results.with_suffix(".md").write_text(render_markdown(data))
        print(f"==> [compat] {name}: done in {result['seconds']} s; wrote {args.results}")
    print(f"==> [compat] {'all passed' if ok else 'FAILURES: see ' + str(args.results)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
