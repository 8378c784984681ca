"""The in-browser anchor explorer computes what detlib computes: run its module under node.

detlib/static/anchor_explorer.js does the anchor arithmetic in the browser (the static HTML book
has no kernel). These tests import that very file in node and compare its anchors, counts and
coverage with detlib's, bit for bit.
"""

import json
import shutil
import subprocess

import pytest
import torch

from detlib import best_anchor_iou
from detlib.widgets import (
    coverage_summary,
    explorer_boxes,
    explorer_module,
    octave_scale_table,
    pyramid_from_settings,
)

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed (the book's build needs it too)"
)

SETTINGS = [
    dict(
        size_factor=4.0,
        level_low=3,
        level_high=7,
        ratios=[0.5, 1.0, 2.0],
        scales_per_octave=3,
        image_size=512,
    ),
    dict(
        size_factor=2.5,
        level_low=2,
        level_high=5,
        ratios=[1 / 3, 1.0, 4.0],
        scales_per_octave=4,
        image_size=320,
    ),
    dict(
        size_factor=7.0,
        level_low=4,
        level_high=4,
        ratios=[0.25],
        scales_per_octave=1,
        image_size=1024,
    ),
    dict(
        size_factor=1.0,
        level_low=6,
        level_high=7,
        ratios=[3.0, 0.5],
        scales_per_octave=2,
        image_size=192,
    ),
]


def run_module(tmp_path, settings, boxes):
    module = tmp_path / "anchor_explorer.mjs"  # .mjs: node loads it as an ES module
    module.write_text(explorer_module("anchor_explorer"))
    script = tmp_path / "run.mjs"
    script.write_text(
        "import * as ae from './anchor_explorer.mjs';\n"
        "const input = JSON.parse(process.argv[2]);\n"
        "const out = input.settings.map((s) => {\n"
        "  const levels = ae.pyramid(s, input.scales);\n"
        "  const boxes = ae.scaleBoxes(input.boxes, s.image_size);\n"
        "  const cov = ae.coverage(boxes, levels, s.image_size);\n"
        "  return { anchors: levels.map((l) => ae.levelAnchors(l, s.image_size)),\n"
        "           counts: ae.countAnchors(levels, s.image_size), best: cov.best,\n"
        "           coverage: cov.coverage, mean: cov.meanBestIoU,\n"
        "           text: ae.describe(ae.countAnchors(levels, s.image_size), cov) };\n"
        "});\n"
        "process.stdout.write(JSON.stringify(out));\n"
    )
    payload = json.dumps({"settings": settings, "scales": octave_scale_table(), "boxes": boxes})
    result = subprocess.run(
        [NODE, str(script), payload], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    return json.loads(result.stdout)


def _generator(s):
    return pyramid_from_settings(
        s["size_factor"], (s["level_low"], s["level_high"]), s["ratios"], s["scales_per_octave"]
    )


def test_browser_anchors_equal_detlib_bit_for_bit(tmp_path):
    results = run_module(tmp_path, SETTINGS, explorer_boxes(20).tolist())
    for s, result in zip(SETTINGS, results):
        size = (s["image_size"], s["image_size"])
        expected = _generator(s).per_level(size, dtype=torch.float64)
        assert len(result["anchors"]) == len(expected)
        for ours, theirs in zip(result["anchors"], expected):
            assert torch.equal(torch.tensor(ours, dtype=torch.float64).reshape(-1, 4), theirs)
        assert result["counts"] == [len(a) for a in expected]


def test_browser_coverage_equals_detlib(tmp_path):
    fractions = explorer_boxes(300)
    results = run_module(tmp_path, SETTINGS, fractions.tolist())
    for s, result in zip(SETTINGS, results):
        size = (s["image_size"], s["image_size"])
        boxes = fractions * s["image_size"]
        best = best_anchor_iou(boxes, _generator(s)(size, dtype=torch.float64))
        assert torch.equal(torch.tensor(result["best"], dtype=torch.float64), best)
        summary = coverage_summary(_generator(s), size, boxes)
        assert result["coverage"] == summary.coverage
        assert result["mean"] == pytest.approx(summary.mean_best_iou, abs=1e-12)
        count_part = summary.describe().split(";")[0]
        assert result["text"].split(";")[0] == count_part


def test_explorer_widget_state_round_trips():
    from detlib.widgets import AnchorExplorer

    explorer = AnchorExplorer(image_size=256, ratios=[0.5, 1.0])
    assert explorer.generator().num_anchors((256, 256)) == explorer.summary().num_anchors
    assert len(explorer.boxes) == 300 and set(explorer.scale_table) == {"1", "2", "3", "4"}
    state = explorer.get_state()
    assert state["image_size"] == 256 and state["ratios"] == [0.5, 1.0]
    assert "export default" in explorer._esm


def _node_eval(tmp_path, body: str):
    """Run ``body`` (which prints JSON) with the explorer's module imported as ``ae``."""
    (tmp_path / "anchor_explorer.mjs").write_text(explorer_module("anchor_explorer"))
    script = tmp_path / "eval.mjs"
    script.write_text(f"import * as ae from './anchor_explorer.mjs';\n{body}\n")
    result = subprocess.run(
        [NODE, str(script)], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    return json.loads(result.stdout)


def test_reset_returns_to_the_python_defaults(tmp_path):
    from detlib.widgets import AnchorExplorer

    defaults = _node_eval(tmp_path, "process.stdout.write(JSON.stringify(ae.DEFAULTS));")
    explorer = AnchorExplorer()
    for name, value in defaults.items():
        assert getattr(explorer, name) == value, name


def test_level_bounds_cannot_cross(tmp_path):
    cases = [
        (name, v, lo, hi)
        for name in ("level_low", "level_high")
        for v in range(2, 8)
        for lo in range(2, 8)
        for hi in range(lo, 8)
    ]
    results = _node_eval(
        tmp_path,
        f"const cases = {json.dumps(cases)};\n"
        "process.stdout.write(JSON.stringify(cases.map(([n, v, lo, hi]) => "
        "ae.clampLevel(n, v, lo, hi))));",
    )
    for (name, value, low, high), result in zip(cases, results):
        new_low, new_high = (result, high) if name == "level_low" else (low, result)
        assert new_low <= new_high, (name, value, low, high, result)
        if (name == "level_low" and value <= high) or (name == "level_high" and value >= low):
            assert result == value  # a move that does not cross is kept as it is


def test_legend_styles_tell_ratios_and_scales_apart(tmp_path):
    styles = _node_eval(
        tmp_path,
        "process.stdout.write(JSON.stringify(ae.RATIO_CHOICES.map((r) => "
        "[0, 1, 2, 3].map((k) => ae.anchorStyle(r, k)))));",
    )
    colours = [row[0]["colour"] for row in styles]
    assert len(set(colours)) == len(colours), "two ratios share a colour"
    for row in styles:
        assert len({s["colour"] for s in row}) == 1, "a ratio's scales change colour"
        assert len({s["dash"] for s in row}) == 4, "two scales share a dash"
