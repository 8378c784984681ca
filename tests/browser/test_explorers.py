"""The chapter explorers in a real browser (Debian's Chromium driven by Playwright), offline.

Two kinds of test, for every explorer of ``detlib.explorers``:

* in the built book (``_build/html``, after ``make book``): the explorer renders in its chapter's
  static page (found by its CSS class), and moving one of its controls changes both the drawing
  and the number it reports;
* on its own: the explorer's module is rendered in a blank page with a stand-in for the widget
  model (what anywidget gives it), its Python state as the starting state, and the same control
  is moved. This one needs no book build and catches a broken module early.

Screenshots of each explorer after the move land in ``_build/screenshots/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from detlib.widgets import explorer_module
from tests.browser.conftest import serve

playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "_build" / "screenshots"
STATIC = ROOT / "detlib" / "static"


@dataclass(frozen=True)
class Explorer:
    name: str  # class in detlib.explorers
    module: str  # detlib/static/<module>.js
    page: str  # the chapter page that shows it
    css_class: str  # the explorer's root element
    control: str  # CSS selector of the control the test moves
    value: str  # the value it moves it to
    report: str  # CSS selector of the number / sentence that must change
    drawing: str  # CSS selector of the element whose content must change


EXPLORERS = [
    Explorer(
        "NMSExplorer",
        "nms_explorer",
        "chapters/07_nms.html",
        "detlib-nms-explorer",
        'input[name="iou_threshold"]',
        "0.3",
        ".detlib-nms-report",
        "svg.detlib-ex-canvas",
    ),
    Explorer(
        "IoUExplorer",
        "iou_explorer",
        "chapters/02_iou.html",
        "detlib-iou-explorer",
        'input[name="b_cx"]',
        "150",
        ".detlib-iou-report",
        "svg.detlib-iou-curves",
    ),
    Explorer(
        "MatchingExplorer",
        "matching_explorer",
        "chapters/03_encoding_matching.html",
        "detlib-matching-explorer",
        'select[name="strategy"]',
        "rpn",
        ".detlib-matching-report",
        "svg.detlib-ex-canvas",
    ),
    Explorer(
        "FocalLossExplorer",
        "focal_explorer",
        "chapters/04_focal_loss.html",
        "detlib-focal-explorer",
        'input[name="gamma"]',
        "0.5",
        ".detlib-focal-report",
        "svg.detlib-focal-shares",
    ),
    Explorer(
        "RoIExplorer",
        "roi_explorer",
        "chapters/06_rpn_roi.html",
        "detlib-roi-explorer",
        'input[name="output_size"]',
        "3",
        ".detlib-roi-report",
        "svg.detlib-roi-outputs",
    ),
    Explorer(
        "FusionExplorer",
        "fusion_explorer",
        "chapters/05_bifpn.html",
        "detlib-fusion-explorer",
        'input[name="w0"]',
        "3",
        ".detlib-fusion-report",
        "svg.detlib-fusion-plot",
    ),
    Explorer(
        "PRExplorer",
        "pr_explorer",
        "chapters/08_capstone.html",
        "detlib-pr-explorer",
        'input[name="score_threshold"]',
        "0.9",
        ".detlib-pr-report",
        "svg.detlib-pr-plot",
    ),
]


def _errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def _move_and_check(page, explorer: Explorer, root, screenshot: str) -> None:
    report, drawing = root.locator(explorer.report), root.locator(explorer.drawing).first
    before_text, before_drawing = report.inner_text(), drawing.inner_html()
    assert before_text.strip(), "the explorer reports nothing"
    control = root.locator(explorer.control)
    if control.evaluate("e => e.tagName") == "SELECT":
        control.select_option(explorer.value)
    else:
        control.fill(explorer.value)
        control.dispatch_event("input")
    page.wait_for_timeout(300)
    assert report.inner_text() != before_text, f"{explorer.name}: the report did not change"
    assert drawing.inner_html() != before_drawing, f"{explorer.name}: the drawing did not change"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    root.screenshot(path=str(SCREENSHOTS / screenshot))


def _pr_curves() -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    scores = np.sort(rng.random(60))[::-1]
    hits = rng.random(60) < 0.2 + 0.75 * scores  # higher scores are right more often
    return {"circle": (scores, hits, int(hits.sum()) + 3), "square": (scores, ~hits, 40)}


_HARNESS_ARGUMENTS = {"PRExplorer": {"curves": _pr_curves()}}


def _harness(tmp_path: Path, explorer: Explorer) -> Path:
    import detlib.explorers as explorers

    widget = getattr(explorers, explorer.name)(**_HARNESS_ARGUMENTS.get(explorer.name, {}))
    state = {k: v for k, v in widget.get_state().items() if not k.startswith("_")}
    (tmp_path / f"{explorer.module}.js").write_text(explorer_module(explorer.module))
    (tmp_path / "explorers.css").write_text((STATIC / "explorers.css").read_text())
    (tmp_path / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<link rel='icon' href='data:,'><link rel='stylesheet' href='explorers.css'></head><body><div id='root'></div>"
        f"<script id='state' type='application/json'>{json.dumps(state)}</script>"
        "<script type='module'>\n"
        f"import widget from './{explorer.module}.js';\n"
        "const state = JSON.parse(document.getElementById('state').textContent);\n"
        "const model = { get: (k) => state[k], set: (k, v) => { state[k] = v; },\n"
        "  save_changes() {}, on() {}, off() {} };\n"
        "widget.render({ model, el: document.getElementById('root') });\n"
        "window.rendered = true;\n"
        "</script></body></html>"
    )
    return tmp_path


def _drag_the_prediction(page, root) -> None:
    """Drag the IoU explorer's prediction box by its body, then resize it by its corner."""
    report = root.locator(".detlib-iou-report")
    for part in ("body", "corner"):
        before = report.inner_text()
        target = root.locator(f'g.box-b rect[data-part="{part}"]').bounding_box()
        x, y = target["x"] + target["width"] / 2, target["y"] + target["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 30, y + 20, steps=4)
        page.mouse.up()
        assert report.inner_text() != before, f"dragging the {part} changed nothing"


@pytest.mark.parametrize("explorer", EXPLORERS, ids=lambda e: e.name)
def test_explorer_module_renders_and_responds(browser, tmp_path, explorer):
    httpd, url = serve(_harness(tmp_path, explorer))
    page = browser.new_page(viewport={"width": 900, "height": 900})
    errors = _errors(page)
    try:
        page.goto(f"{url}/index.html", wait_until="networkidle")
        page.wait_for_function("window.rendered === true", timeout=10000)
        root = page.locator(f".{explorer.css_class}")
        assert root.count() == 1
        _move_and_check(page, explorer, root, f"{explorer.module}_standalone.png")
        if explorer.name == "IoUExplorer":
            _drag_the_prediction(page, root)
        assert errors == []
    finally:
        page.close()
        httpd.shutdown()


@pytest.mark.parametrize("explorer", EXPLORERS, ids=lambda e: e.name)
def test_explorer_in_the_built_book(browser, server, explorer):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = _errors(page)
    try:
        page.goto(f"{server}/{explorer.page}", wait_until="networkidle")
        # The widget manager renders after network idle; on a busy machine, seconds later.
        page.wait_for_selector(f".{explorer.css_class}", timeout=30000)
        root = page.locator(f".{explorer.css_class}")
        assert root.count() == 1, f"{explorer.name} did not render in {explorer.page}"
        root.scroll_into_view_if_needed()
        _move_and_check(page, explorer, root, f"{explorer.module}_after_moving_a_control.png")
        assert errors == []
    finally:
        page.close()
