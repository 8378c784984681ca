"""The anchor explorer's controls, in Chromium: legend, covered/missed boxes, bounds, ratios, reset.

The explorer's module (detlib/static/anchor_explorer.js) is rendered on its own page with a
stand-in for the widget model, so these checks need neither a kernel nor a rebuilt book.
"""

from __future__ import annotations

import json

import pytest
import torch

from detlib import best_anchor_iou
from detlib.widgets import (
    _STATIC,
    explorer_boxes,
    explorer_module,
    octave_scale_table,
    pyramid_from_settings,
)

ORIGIN = "http://explorer.local"
DEFAULTS = dict(
    size_factor=4.0,
    level_low=3,
    level_high=7,
    shown_level=5,
    ratios=[0.5, 1.0, 2.0],
    scales_per_octave=3,
    image_size=512,
)
PAGE = """<!doctype html><meta charset="utf-8"><link rel="stylesheet" href="anchor_explorer.css">
<div id="el"></div><script id="state" type="application/json">{state}</script>
<script type="module">
import widget from "./anchor_explorer.js";
const state = JSON.parse(document.getElementById("state").textContent);
window.state = state;
const model = {{ get: (k) => state[k], set: (k, v) => {{ state[k] = v; }}, save_changes() {{}},
  on() {{}}, off() {{}} }};
widget.render({{ model, el: document.getElementById("el") }});
window.rendered = true;
</script>"""


@pytest.fixture
def explorer(browser):
    state = dict(DEFAULTS, boxes=explorer_boxes(300).tolist(), scale_table=octave_scale_table())
    files = {
        "/index.html": ("text/html", PAGE.format(state=json.dumps(state))),
        "/anchor_explorer.js": ("text/javascript", explorer_module("anchor_explorer")),
        "/anchor_explorer.css": ("text/css", (_STATIC / "anchor_explorer.css").read_text()),
    }
    page = browser.new_page(viewport={"width": 900, "height": 1200})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def serve(route):
        path = route.request.url[len(ORIGIN) :].split("?")[0]
        if path in files:
            kind, body = files[path]
            route.fulfill(status=200, content_type=kind, body=body)
        else:
            route.fulfill(status=404, body="")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/index.html")
    page.wait_for_function("window.rendered === true", timeout=10000)
    yield page
    assert errors == [], errors
    page.close()


def _move(page, name, value):
    control = page.locator(f'input[name="{name}"]')
    control.fill(str(value))
    control.dispatch_event("input")


def test_legend_ties_colours_to_ratios_and_dashes_to_scales(explorer):
    legend = explorer.locator(".detlib-ae-legend")
    assert legend.locator(".ratio").count() == 3 and legend.locator(".scale").count() == 3
    assert "0.5" in legend.inner_text() and "covered" in legend.inner_text()
    anchors = explorer.locator("svg .anchors rect")
    strokes = anchors.evaluate_all("rs => rs.map(r => r.getAttribute('stroke'))")
    dashes = anchors.evaluate_all("rs => rs.map(r => r.getAttribute('stroke-dasharray'))")
    assert len(strokes) == 9 and len(set(strokes)) == 3 and len(set(dashes)) == 3
    _move(explorer, "scales_per_octave", 2)
    assert legend.locator(".scale").count() == 2


def test_sample_boxes_are_coloured_covered_or_missed_as_detlib_says(explorer):
    covered = explorer.locator("svg .boxes rect.covered").count()
    missed = explorer.locator("svg .boxes rect.missed").count()
    assert covered + missed == 40
    s = DEFAULTS
    generator = pyramid_from_settings(
        s["size_factor"], (s["level_low"], s["level_high"]), s["ratios"], s["scales_per_octave"]
    )
    size = s["image_size"]
    boxes = explorer_boxes(300)[:40] * size
    best = best_anchor_iou(boxes, generator((size, size), dtype=torch.float64))
    assert covered == int((best >= 0.5).sum()) and 0 < covered < 40


def test_level_bounds_cannot_cross(explorer):
    _move(explorer, "level_high", 4)
    _move(explorer, "level_low", 7)  # past the highest level: stops at it
    low, high = explorer.evaluate("[window.state.level_low, window.state.level_high]")
    assert low <= high and low == 4
    assert explorer.locator('input[name="level_low"]').get_attribute("max") == "4"
    assert explorer.locator("svg .anchors rect").count() == 9
    drawn = explorer.locator('input[name="shown_level"]')
    assert drawn.input_value() == "4" and "P4" in explorer.locator(".detlib-ae-title").inner_text()


def test_the_last_ratio_cannot_be_unticked(explorer):
    boxes = explorer.locator(".detlib-ae-ratios input")
    for k in range(boxes.count()):
        if boxes.nth(k).is_checked():
            boxes.nth(k).click()  # the last click is undone by the explorer
    assert boxes.evaluate_all("bs => bs.filter(b => b.checked).length") == 1
    assert "At least one ratio" in explorer.locator(".detlib-ae-note").inner_text()
    assert explorer.locator("svg .anchors rect").count() == 3  # one ratio x three scales


def test_no_ratio_from_the_kernel_draws_nothing_and_says_so(explorer):
    explorer.evaluate("window.state.ratios = []")
    _move(explorer, "image_size", 256)  # any control redraws from the model
    assert explorer.locator("svg rect").count() == 0
    assert "no aspect ratio" in explorer.locator(".detlib-ae-report").inner_text()


def test_reset_returns_to_retinanet(explorer):
    before = explorer.locator(".detlib-ae-report").inner_text()
    _move(explorer, "scales_per_octave", 2)
    _move(explorer, "image_size", 256)
    assert explorer.locator(".detlib-ae-report").inner_text() != before
    explorer.locator("button.detlib-ae-reset").click()
    assert explorer.locator(".detlib-ae-report").inner_text() == before
    assert before.startswith("49,104 anchors")
