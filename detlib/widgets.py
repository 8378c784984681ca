"""Interactive explorers for the chapters.

* :class:`AnchorExplorer` computes and draws in the browser (anywidget): it works in Jupyter,
  Colab, VS Code and in the static HTML book, where no kernel runs.
* :func:`anchor_explorer` is the kernel-backed version (ipywidgets + matplotlib), in which detlib
  itself computes every redraw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from detlib.anchors import AnchorGenerator, best_anchor_iou
from detlib.data import sample_boxes

__all__ = [
    "anchor_explorer",
    "coverage_summary",
    "CoverageSummary",
    "explorer_boxes",
    "octave_scale_table",
    "pyramid_from_settings",
]

RATIO_CHOICES = (0.25, 1 / 3, 0.5, 1.0, 2.0, 3.0, 4.0)


def pyramid_from_settings(
    size_factor: float,
    levels: tuple[int, int],
    aspect_ratios: Sequence[float],
    scales_per_octave: int,
) -> AnchorGenerator:
    """A RetinaNet-style pyramid from the explorer's settings.

    Level ``l`` has stride ``2**l`` and base size ``size_factor * 2**l``, multiplied by the octave
    scales ``2**(k / scales_per_octave)`` for ``k = 0 .. scales_per_octave - 1``. RetinaNet is
    ``size_factor = 4``, ``levels = (3, 7)``, ratios ``(0.5, 1, 2)``, 3 scales per octave.
    """
    low, high = levels
    if not 0 <= low <= high:
        raise ValueError(
            f"pyramid_from_settings: levels must be (low, high) with 0 <= low <= high, got {levels!r}"
        )
    if scales_per_octave < 1:
        raise ValueError(
            f"pyramid_from_settings: scales_per_octave must be >= 1, got {scales_per_octave!r}"
        )
    scales = [2 ** (k / scales_per_octave) for k in range(scales_per_octave)]
    level_ids = range(low, high + 1)
    return AnchorGenerator(
        strides=[2**level for level in level_ids],
        sizes=[[size_factor * 2**level * s for s in scales] for level in level_ids],
        aspect_ratios=tuple(aspect_ratios),
    )


@dataclass(frozen=True)
class CoverageSummary:
    """What the explorer reports for one setting."""

    num_anchors: int
    anchors_per_level: tuple[int, ...]
    coverage: float  # fraction of boxes whose best anchor has IoU >= threshold
    mean_best_iou: float
    threshold: float

    def describe(self) -> str:
        return (
            f"{self.num_anchors:,} anchors ({' + '.join(f'{n:,}' for n in self.anchors_per_level)}); "
            f"{100 * self.coverage:.1f}% of the boxes have an anchor with IoU >= {self.threshold}, "
            f"mean best IoU {self.mean_best_iou:.3f}"
        )


def coverage_summary(
    generator: AnchorGenerator,
    image_size: tuple[int, int],
    boxes: torch.Tensor,
    threshold: float = 0.5,
) -> CoverageSummary:
    """Anchor count and coverage of ``boxes`` (``[G, 4]``) by the generator's anchors."""
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    per_level = generator.per_level(image_size, device=boxes.device, dtype=dtype)
    best = best_anchor_iou(boxes, torch.cat(per_level))
    return CoverageSummary(
        num_anchors=sum(len(a) for a in per_level),
        anchors_per_level=tuple(len(a) for a in per_level),
        coverage=int((best >= threshold).sum()) / len(best) if len(best) else 0.0,
        mean_best_iou=float(best.double().mean()) if len(best) else 0.0,
        threshold=threshold,
    )


def anchor_explorer(num_boxes: int = 300, seed: int = 0, device: torch.device | str | None = None):
    """An ipywidgets explorer of anchor pyramids (needs a running kernel).

    Sliders set the base size (as a multiple of the stride), the pyramid levels, the aspect ratios,
    the scales per octave and the image size; the figure shows the anchors of the centre cell of
    the chosen level over its grid, and the text reports the anchor count and how well the anchors
    cover ``num_boxes`` random boxes (see :func:`detlib.data.sample_boxes`).

    Returns:
        an ``ipywidgets.VBox``; display it as the last expression of a cell.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from detlib.viz import draw_boxes, draw_grid, image_axes

    style = {"description_width": "150px"}
    layout = widgets.Layout(width="480px")
    size_factor = widgets.FloatSlider(
        value=4.0,
        min=1.0,
        max=8.0,
        step=0.5,
        description="size / stride",
        style=style,
        layout=layout,
    )
    levels = widgets.IntRangeSlider(
        value=(3, 7), min=2, max=7, description="levels P_l", style=style, layout=layout
    )
    shown = widgets.IntSlider(
        value=5, min=2, max=7, description="level drawn", style=style, layout=layout
    )
    ratios = widgets.SelectMultiple(
        options=[(f"{r:.3g}", r) for r in RATIO_CHOICES],
        value=(0.5, 1.0, 2.0),
        rows=7,
        description="ratios h/w",
        style=style,
    )
    scales = widgets.IntSlider(
        value=3, min=1, max=4, description="scales per octave", style=style, layout=layout
    )
    image = widgets.IntSlider(
        value=512, min=128, max=1024, step=64, description="image size", style=style, layout=layout
    )
    report = widgets.HTML()
    canvas = widgets.Output()

    def redraw(_change=None) -> None:
        shown.min, shown.max = levels.value
        size = (image.value, image.value)
        if not ratios.value:
            report.value = "<b>Select at least one ratio.</b>"
            return
        generator = pyramid_from_settings(
            size_factor.value, levels.value, ratios.value, scales.value
        )
        gen = torch.Generator().manual_seed(seed)
        boxes = sample_boxes(
            num_boxes, size, min_size=8, max_size=image.value / 2, generator=gen
        ).to(device or "cpu")
        summary = coverage_summary(generator, size, boxes)
        report.value = f"<b>{summary.describe()}</b>"
        level = shown.value - levels.value[0]
        stride = generator.strides[level]
        rows, cols = generator.grid_sizes(size)[level]
        cell = generator.cell_anchors(level) + torch.tensor(
            [(cols // 2 + 0.5) * stride, (rows // 2 + 0.5) * stride] * 2
        )
        with canvas:
            canvas.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5, 5))
            image_axes(
                ax,
                size,
                margin=image.value * 0.25,
                title=f"P{shown.value}: stride {stride}, {len(cell)} anchors per cell",
            )
            draw_grid(ax, size, stride)
            draw_boxes(ax, boxes[:40], color="0.6", linewidth=0.8)
            draw_boxes(ax, cell, color=[f"C{i % 10}" for i in range(len(cell))], linewidth=1.6)
            plt.show()

    for control in (size_factor, levels, shown, ratios, scales, image):
        control.observe(redraw, names="value")
    redraw()
    controls = widgets.HBox([widgets.VBox([size_factor, levels, shown, scales, image]), ratios])
    return widgets.VBox([controls, report, canvas])


_STATIC = Path(__file__).parent / "static"


def explorer_module(name: str) -> str:
    """The JavaScript module of the explorer ``name`` (``"nms_explorer"``): the helpers that all
    explorers share (``static/explorer_kit.js``) followed by ``static/<name>.js``. anywidget loads
    a widget's module from a string, which cannot import a neighbouring file."""
    return (_STATIC / "explorer_kit.js").read_text() + (_STATIC / f"{name}.js").read_text()


EXPLORER_REFERENCE_SIZE = 1024  # the explorer's boxes are drawn at this size, stored as fractions


def explorer_boxes(num_boxes: int = 300, seed: int = 0) -> torch.Tensor:
    """The explorer's random boxes as fractions of the image side, ``[num_boxes, 4]`` (float64).

    Sizes from 8 to 512 pixels on a 1024-pixel image (1/128 to 1/2 of the side), aspect ratios up
    to 4:1; multiplied by the image size they give the boxes whose coverage the explorer reports.
    """
    size = EXPLORER_REFERENCE_SIZE
    boxes = sample_boxes(
        num_boxes,
        (size, size),
        min_size=8,
        max_size=size / 2,
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64,
    )
    return boxes / size


def octave_scale_table(max_scales: int = 4) -> dict[str, list[float]]:
    """``{"n": [2**(k/n) for k < n]}``: the octave scales, computed once by Python for the browser."""
    return {str(n): [2 ** (k / n) for k in range(n)] for n in range(1, max_scales + 1)}


def _anywidget_base():
    try:
        import anywidget
    except ImportError as error:  # pragma: no cover - anywidget is in requirements.txt
        raise ImportError("AnchorExplorer needs anywidget: pip install anywidget") from error
    return anywidget.AnyWidget


def _make_anchor_explorer_class():
    import traitlets

    class AnchorExplorer(_anywidget_base()):
        """Anchor-pyramid explorer that computes and draws in the browser.

        The same settings as :func:`pyramid_from_settings`; the browser computes the anchors with
        detlib's arithmetic (checked bit for bit by the tests) and reports the anchor count and
        the coverage of :func:`explorer_boxes` scaled to the image. Display it as the last
        expression of a cell; :meth:`generator` and :meth:`summary` give the same results in
        Python for the current settings.
        """

        _esm = explorer_module("anchor_explorer")
        _css = _STATIC / "anchor_explorer.css"
        size_factor = traitlets.Float(4.0).tag(sync=True)
        level_low = traitlets.Int(3).tag(sync=True)
        level_high = traitlets.Int(7).tag(sync=True)
        shown_level = traitlets.Int(5).tag(sync=True)
        ratios = traitlets.List(traitlets.Float(), default_value=[0.5, 1.0, 2.0]).tag(sync=True)
        scales_per_octave = traitlets.Int(3).tag(sync=True)
        image_size = traitlets.Int(512).tag(sync=True)
        boxes = traitlets.List().tag(sync=True)
        scale_table = traitlets.Dict().tag(sync=True)

        def __init__(self, num_boxes: int = 300, seed: int = 0, **settings):
            super().__init__(**settings)
            self.boxes = explorer_boxes(num_boxes, seed).tolist()
            self.scale_table = octave_scale_table()

        def generator(self) -> AnchorGenerator:
            """detlib's generator for the current settings."""
            return pyramid_from_settings(
                self.size_factor,
                (self.level_low, self.level_high),
                self.ratios,
                self.scales_per_octave,
            )

        def summary(self) -> CoverageSummary:
            """What the browser reports, computed by detlib in the kernel."""
            size = (self.image_size, self.image_size)
            boxes = torch.tensor(self.boxes, dtype=torch.float64) * self.image_size
            return coverage_summary(self.generator(), size, boxes)

    return AnchorExplorer


def __getattr__(name: str):
    # Built on first use, so that importing detlib does not import anywidget.
    if name == "AnchorExplorer":
        cls = _make_anchor_explorer_class()
        globals()["AnchorExplorer"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
