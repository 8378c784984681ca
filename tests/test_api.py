"""The API reference (book/api/*.md) and ``detlib.__all__`` stay in step; no module of detlib
shares its name with a function detlib exports; every module declares ``__all__``."""

import importlib
import pkgutil
import re
from pathlib import Path

import detlib

PAGES = sorted((Path(__file__).parent.parent / "book" / "api").glob("*.md"))
DIRECTIVE = re.compile(r"^\.\. auto(?:function|class):: (detlib[\w.]*)", re.M)
MEMBERS = re.compile(r"^\.\. automodule:: (detlib[\w.]*)\n\s+:members: (.+)$", re.M)


def submodules():
    return [m.name for m in pkgutil.walk_packages(detlib.__path__, "detlib.")]


def documented():
    """``{name: module}`` for every name the pages document."""
    names = {}
    for page in PAGES:
        text = page.read_text()
        for module, members in MEMBERS.findall(text):
            for name in members.split(","):
                names[name.strip()] = module
        for target in DIRECTIVE.findall(text):
            module, _, name = target.rpartition(".")
            if module == "detlib":  # autofunction:: detlib.name
                names[name] = module
    return names


def test_every_exported_name_is_documented():
    missing = sorted(set(detlib.__all__) - set(documented()))
    assert not missing, f"exported but not on any book/api page: {missing}"


def test_every_documented_name_is_exported():
    wrong = []
    for name, module in documented().items():
        exported = importlib.import_module(module).__all__ if module != "detlib" else detlib.__all__
        if name not in exported:
            wrong.append(f"{module}.{name}")
    assert not wrong, f"documented but not in the module's __all__: {sorted(wrong)}"


def test_value_check_switches_are_documented():
    assert {"set_value_checks", "value_checks", "value_checks_enabled"} <= set(documented())


def test_every_page_is_in_the_table_of_contents():
    toc = (Path(__file__).parent.parent / "_toc.yml").read_text()
    for page in PAGES:
        assert f"file: book/api/{page.stem}\n" in toc, page.name


def test_every_module_declares_all():
    lacking = [
        name for name in submodules() if not hasattr(importlib.import_module(name), "__all__")
    ]
    assert not lacking


def test_top_level_exports_resolve():
    for name in detlib.__all__:
        assert hasattr(detlib, name), name


def test_no_module_shadows_an_export():
    # `import detlib` binds each exported function to its name in the package; a submodule of the
    # same name (detlib/nms.py and detlib.nms) would be hidden: detlib.nms.soft_nms would fail.
    clashes = [name for name in submodules() if name.rpartition(".")[2] in detlib.__all__]
    assert not clashes, f"modules named like an exported function: {clashes}"
    for name in submodules():
        module = importlib.import_module(name)
        parent, _, leaf = name.rpartition(".")
        assert getattr(importlib.import_module(parent), leaf) is module, name
