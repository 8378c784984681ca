"""tools/compat.py: the floors it tests are pyproject's, and its report says what happened."""

from __future__ import annotations

import pytest

from tools import compat

pytest.importorskip("tomllib", reason="tools/compat.py reads pyproject.toml with tomllib (3.11+)")


def test_floors_are_read_from_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nrequires-python = ">=3.10"\n'
        'dependencies = ["torch>=2.2.2", "torchvision>=0.17.2", "numpy>=1.24.4", '
        '"matplotlib>=3.7.5"]\n'
    )
    floors = compat.declared_floors(pyproject)
    assert floors == {
        "python": "3.10",
        "torch": "2.2.2",
        "torchvision": "0.17.2",
        "numpy": "1.24.4",
        "matplotlib": "3.7.5",
    }
    assert compat.declared_floors()["torch"]  # the project's own file parses too


def test_a_dependency_without_a_floor_is_refused(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nrequires-python = ">=3.10"\ndependencies = ["torch", "numpy>=1.24"]\n'
    )
    with pytest.raises(ValueError, match="name>=version"):
        compat.declared_floors(pyproject)


def test_junit_counts_and_failures(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="a" name="ok"/>'
        '<testcase classname="a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="b" name="err"><error message="y"/></testcase>'
        '<testcase classname="b" name="skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    assert compat._junit_counts(report) == {"passed": 1, "failed": 2, "skipped": 1}
    assert compat._failed_names(report) == ["a::bad", "b::err"]
    assert compat._junit_counts(tmp_path / "missing.xml")["failed"] == 1  # no report is a failure


def test_report_names_versions_counts_and_failed_chapters():
    versions = {"python": "3.10.13", "torch": "2.2.2", "torchvision": "0.17.2"}
    versions |= {"numpy": "1.24.4", "matplotlib": "3.7.5"}
    data = {
        "floor": {
            "date": "2026-12-07",
            "source": "commit 0123456789",
            "versions": versions,
            "unit": {
                "passed": 10,
                "failed": 1,
                "skipped": 0,
                "failures": ["tests/t.py::x"],
                "seconds": 300,
            },
            "chapters": {
                "chapters": {
                    "01_a": {"cells_failed": 0, "cells_passed": 5, "failures": []},
                    "02_b": {"cells_failed": 1, "cells_passed": 4, "failures": ["02_b::Cell 3"]},
                },
                "seconds": 600,
            },
            "seconds": 600,
        }
    }
    text = compat.render_markdown(data)
    row = "| floor | 2026-12-07 | commit 0123456789 | 3.10.13 | 2.2.2 | 0.17.2 | 1.24.4 | 3.7.5 |"
    assert row in text
    assert "10 passed, 1 failed" in text and "1 of 2 pass (failed: 02_b)" in text
    assert "`tests/t.py::x`" in text and "`02_b::Cell 3`" in text and "| 5 + 10 min |" in text
