"""Drawing helpers for the chapters (matplotlib). They copy boxes to the host to draw them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

__all__ = ["book_style", "draw_boxes", "draw_grid", "image_axes"]


# The book's column is about 634 CSS px wide at 1280 px (7 inches at 90 dpi): a figure of that
# width is shown at its own size, so 11 pt text is about 14 px on screen. Wider figures are
# shrunk to the column, their text with them: keep figures at most TEXT_WIDTH wide.
TEXT_WIDTH = 7.0  # inches
BOOK_RC = {
    "figure.figsize": (TEXT_WIDTH, 4.0),
    "figure.dpi": 90,
    "savefig.dpi": 180,  # files written with savefig; the inline PNGs use figure.dpi
    "figure.constrained_layout.use": True,  # titles and labels never overlap a neighbour
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.framealpha": 0.9,  # a legend stands out from the lines behind it
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def book_style() -> dict:
    """Set matplotlib's defaults for the book's figures (text legible at the column width).

    Call it once, after importing matplotlib, at the top of a chapter. Returns the settings it
    applied (a dict of rcParams).
    """
    import matplotlib as mpl

    mpl.rcParams.update(BOOK_RC)
    return dict(BOOK_RC)


def _as_numpy(boxes: torch.Tensor | np.ndarray | Sequence) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        return boxes.detach().to("cpu", torch.float64).numpy().reshape(-1, 4)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def draw_boxes(
    ax: Axes,
    boxes: torch.Tensor | np.ndarray | Sequence,
    color: str | Sequence[str] = "C0",
    linewidth: float = 1.5,
    linestyle: str = "-",
    alpha: float = 1.0,
    labels: Sequence[str] | None = None,
    fill: bool = False,
) -> None:
    """Draw ``(x1, y1, x2, y2)`` boxes, ``[N, 4]``, as rectangles (copies them to the host).

    Args:
        ax: the axes to draw on (use :func:`image_axes` for y pointing down).
        boxes: ``[N, 4]`` tensor, array or nested list.
        color: one colour, or one per box.
        linewidth: edge width in points.
        linestyle: matplotlib line style.
        alpha: opacity.
        labels: optional text drawn at each box's top-left corner.
        fill: fill the boxes with a translucent colour.
    """
    array = _as_numpy(boxes)
    colors = [color] * len(array) if isinstance(color, str) else list(color)
    for i, (x1, y1, x2, y2) in enumerate(array):
        ax.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=fill,
                edgecolor=colors[i],
                facecolor=colors[i] if fill else "none",
                linewidth=linewidth,
                linestyle=linestyle,
                alpha=alpha,
            )
        )
        if labels is not None:
            ax.text(x1, y1, labels[i], color=colors[i], fontsize=8, va="bottom")


def image_axes(
    ax: Axes, image_size: tuple[int, int], margin: float = 0.0, title: str | None = None
) -> Axes:
    """Set up axes in image coordinates: x to the right, y down, equal aspect, image outline.

    Args:
        ax: the axes.
        image_size: ``(height, width)``.
        margin: extra room around the image, in pixels (anchors often stick out of it).
        title: optional title.
    """
    height, width = image_size
    ax.set_xlim(-margin, width + margin)
    ax.set_ylim(height + margin, -margin)
    ax.set_aspect("equal")
    ax.add_patch(Rectangle((0, 0), width, height, fill=False, edgecolor="black", linewidth=1.0))
    if title:
        ax.set_title(title)
    return ax


def draw_grid(ax: Axes, image_size: tuple[int, int], stride: int, color: str = "0.85") -> None:
    """Draw the cells of a feature map of the given stride over an image of ``(height, width)``."""
    height, width = image_size
    for x in np.arange(0, width + 1e-9, stride):
        ax.axvline(x, color=color, linewidth=0.6, zorder=0)
    for y in np.arange(0, height + 1e-9, stride):
        ax.axhline(y, color=color, linewidth=0.6, zorder=0)
