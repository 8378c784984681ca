"""YOLO v2 / v3 box parametrisation and matching: one prior per box, centres inside their cell.

R-CNN's offsets (``detlib.BoxCoder``) move an anchor's centre by a fraction of its size, without
bound. YOLO v2 (Redmon and Farhadi, 2017) instead predicts the centre *inside the grid cell* that
makes the prediction and the size relative to a prior shape::

    b_x = (sigmoid(t_x) + c_x) * stride        b_w = p_w * exp(t_w)
    b_y = (sigmoid(t_y) + c_y) * stride        b_h = p_h * exp(t_h)

where ``(c_x, c_y)`` is the cell's column and row and ``(p_w, p_h)`` the prior's width and height
in pixels. The sigmoid keeps every centre inside its cell, which the paper credits for stabler
early training. Each ground-truth box is learned by exactly one prediction: the cell that holds
its centre and, in that cell, the prior whose shape overlaps it most (shapes compared as if they
shared a centre, as in the k-means of :func:`detlib.kmeans_anchor_shapes`).

Boxes are ``(x1, y1, x2, y2)`` in pixels; grids are ``[H, W]`` cells of ``stride`` pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from detlib._checks import check_boxes, check_finite, check_floating, check_positive, check_tensor
from detlib.anchors import shape_iou

__all__ = ["YoloTargets", "yolo_decode", "yolo_encode", "yolo_match"]


def _check_priors(fn: str, priors: object) -> Tensor:
    priors = check_floating(fn, "priors", check_tensor(fn, "priors", priors))
    if priors.dim() != 2 or priors.shape[1] != 2 or priors.shape[0] == 0:
        raise ValueError(
            f"{fn}: priors must have shape [A, 2] with A >= 1, got {list(priors.shape)}"
        )
    check_finite(fn, "priors", priors)
    if not bool((priors > 0).all()):
        raise ValueError(f"{fn}: priors must be positive (width, height) pairs in pixels")
    return priors


def yolo_decode(offsets: Tensor, priors: Tensor, stride: float) -> Tensor:
    """Boxes from a YOLO head's raw offsets on one grid.

    Args:
        offsets: ``Tensor[..., H, W, A, 4]`` of ``(t_x, t_y, t_w, t_h)``: for every cell (row, then
            column) and every prior.
        priors: ``Tensor[A, 2]`` of prior (width, height) in pixels.
        stride: the cell size in pixels.

    Returns:
        ``Tensor[..., H, W, A, 4]`` of ``(x1, y1, x2, y2)`` in pixels, on ``offsets``' device.
    """
    fn = "yolo_decode"
    offsets = check_floating(fn, "offsets", check_tensor(fn, "offsets", offsets))
    if offsets.dim() < 4 or offsets.shape[-1] != 4:
        raise ValueError(
            f"{fn}: offsets must have shape [..., H, W, A, 4], got {list(offsets.shape)}"
        )
    priors = _check_priors(fn, priors)
    if offsets.shape[-2] != priors.shape[0]:
        raise ValueError(
            f"{fn}: offsets has {offsets.shape[-2]} priors per cell but priors has {priors.shape[0]}"
        )
    stride = check_positive(fn, "stride", stride)
    height, width = offsets.shape[-4], offsets.shape[-3]
    rows = torch.arange(height, dtype=offsets.dtype, device=offsets.device)
    cols = torch.arange(width, dtype=offsets.dtype, device=offsets.device)
    cell_y, cell_x = torch.meshgrid(rows, cols, indexing="ij")  # [H, W]
    centre_x = (torch.sigmoid(offsets[..., 0]) + cell_x[..., None]) * stride  # [..., H, W, A]
    centre_y = (torch.sigmoid(offsets[..., 1]) + cell_y[..., None]) * stride
    prior = priors.to(offsets)
    half_w = prior[:, 0] * torch.exp(offsets[..., 2]) / 2
    half_h = prior[:, 1] * torch.exp(offsets[..., 3]) / 2
    return torch.stack(
        (centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=-1
    )


class YoloTargets(NamedTuple):
    """Where each ground-truth box is learned, and what the prediction there must output."""

    row: Tensor
    """``Tensor[G]`` (int64), the row of the cell that holds each box's centre."""
    col: Tensor
    """``Tensor[G]`` (int64), the column of that cell."""
    prior: Tensor
    """``Tensor[G]`` (int64), the prior whose shape overlaps the box most."""
    offsets: Tensor
    """``Tensor[G, 4]``: ``(sigmoid(t_x), sigmoid(t_y), t_w, t_h)``, the centre's position inside its
    cell in ``[0, 1)`` and the log size ratios (YOLO v3 trains the first two through the sigmoid,
    with a binary cross-entropy)."""


def _match(boxes: Tensor, priors: Tensor, stride: float, grid_size: tuple[int, int]) -> YoloTargets:
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 / stride
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 / stride
    col = centre_x.floor().clamp(0, grid_size[1] - 1)
    row = centre_y.floor().clamp(0, grid_size[0] - 1)
    sizes = boxes[:, 2:] - boxes[:, :2]  # [G, 2]
    prior = shape_iou(sizes, priors.to(sizes)).argmax(dim=1)  # one prior per box
    chosen = priors.to(sizes)[prior]
    offsets = torch.stack(
        (
            (centre_x - col).clamp(0, 1),
            (centre_y - row).clamp(0, 1),
            torch.log(sizes[:, 0] / chosen[:, 0]),
            torch.log(sizes[:, 1] / chosen[:, 1]),
        ),
        dim=1,
    )
    return YoloTargets(row.long(), col.long(), prior, offsets)


def yolo_match(
    boxes: Tensor, priors: Tensor, stride: float, grid_size: tuple[int, int]
) -> YoloTargets:
    """Assign every ground-truth box to one prediction: its centre's cell, its best prior.

    Args:
        boxes: ``Tensor[G, 4]`` ground truth ``(x1, y1, x2, y2)`` in pixels, positive width and
            height.
        priors: ``Tensor[A, 2]`` of prior (width, height) in pixels.
        stride: the cell size in pixels.
        grid_size: ``(H, W)`` cells. A centre on or beyond the image's far edge is given to the
            last cell.

    Returns:
        :class:`YoloTargets` with ``G`` rows (empty for ``G = 0``).
    """
    fn = "yolo_match"
    boxes = check_boxes(fn, "boxes", boxes, strict=True)
    boxes = check_floating(fn, "boxes", boxes)
    priors = _check_priors(fn, priors)
    stride = check_positive(fn, "stride", stride)
    if (
        not isinstance(grid_size, (tuple, list))
        or len(grid_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in grid_size)
    ):
        raise ValueError(f"{fn}: grid_size must be (H, W), two positive ints, got {grid_size!r}")
    return _match(boxes, priors, stride, (int(grid_size[0]), int(grid_size[1])))


def yolo_encode(boxes: Tensor, priors: Tensor, stride: float, grid_size: tuple[int, int]) -> Tensor:
    """The raw offsets ``(t_x, t_y, t_w, t_h)`` that :func:`yolo_decode` turns back into ``boxes``,
    each at the prediction :func:`yolo_match` assigns it to.

    Args:
        boxes: ``Tensor[G, 4]``, as for :func:`yolo_match`; centres strictly inside their cell
            (a centre on a cell edge needs an infinite ``t_x``).
        priors, stride, grid_size: as for :func:`yolo_match`.

    Returns:
        ``Tensor[G, 4]``.
    """
    targets = yolo_match(boxes, priors, stride, grid_size)
    inside = targets.offsets[:, :2]
    if bool(((inside <= 0) | (inside >= 1)).any()):
        raise ValueError(
            "yolo_encode: a box centre lies on a cell edge; its t_x or t_y is infinite"
        )
    return torch.cat((torch.logit(inside), targets.offsets[:, 2:]), dim=1)
