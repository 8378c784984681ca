"""Box arithmetic: areas, IoU and its generalisations, format conversion, clipping.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels with ``x1 <= x2`` and ``y1 <= y2`` unless a
format says otherwise. There is no "+1" convention: a box from 0 to 10 is 10 pixels wide.
Every function works on any device and returns its result on the device of its input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detlib._checks import (
    check_box_shape,
    check_box_values,
    check_boxes,
    check_positive,
    check_real,
    check_same_device,
)

__all__ = [
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
    "remove_small_boxes",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh", "yxyx")


def _upcast(t: Tensor) -> Tensor:
    """Widen float16/bfloat16 to float32 (and small ints to int32) before multiplying coordinates,
    so that areas cannot overflow. This is also what torchvision does, which keeps results equal."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _widen_int(t: Tensor) -> Tensor:
    """Integer coordinates as int32 or int64 before they are subtracted: a difference of uint8
    coordinates would wrap around (1 - 5 = 252). Floating coordinates are left as they are, so
    that float16 results round as torchvision's do."""
    return t if t.is_floating_point() else _upcast(t)


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.

    Returns:
        ``Tensor[N]``; float16 and bfloat16 input gives float32 areas.
    """
    return _area(check_boxes("box_area", "boxes", boxes))


def _area(boxes: Tensor) -> Tensor:
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _pairwise_extent(lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
    """Length of the overlap of intervals ``[lo1, hi1]`` (``[N]``) and ``[lo2, hi2]`` (``[M]``),
    for every pair: ``Tensor[N, M]``, zero where they do not overlap.

    Working on one coordinate at a time keeps every temporary ``[N, M]`` (not ``[N, M, 2]``) and
    lets the subtraction and the clamp reuse the same memory.
    """
    overlap = torch.minimum(hi1[:, None], hi2)
    overlap -= torch.maximum(lo1[:, None], lo2)
    return _upcast(overlap).clamp_(min=0)


def _intersection_and_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas, both ``Tensor[N, M]``."""
    boxes1, boxes2 = _widen_int(boxes1), _widen_int(boxes2)
    area1 = _area(boxes1)
    area2 = _area(boxes2)
    x1a, y1a, x2a, y2a = boxes1.unbind(1)
    x1b, y1b, x2b, y2b = boxes2.unbind(1)
    inter = _pairwise_extent(x1a, x2a, x1b, x2b) * _pairwise_extent(y1a, y2a, y1b, y2b)
    union = area1[:, None] + area2
    union -= inter
    return inter, union


def _check_box_pair(fn: str, boxes1: object, boxes2: object) -> None:
    """Shapes first, then the device, then the values (which read the data)."""
    check_box_shape(fn, "boxes1", boxes1)
    check_box_shape(fn, "boxes2", boxes2)
    check_same_device(fn, boxes1=boxes1, boxes2=boxes2)
    check_box_values(fn, "boxes1", boxes1)
    check_box_values(fn, "boxes2", boxes2)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes.

    Args:
        boxes1: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]`` in ``(x1, y1, x2, y2)``, on the same device.

    Returns:
        ``Tensor[N, M]`` with values in ``[0, 1]``. A pair of zero-area boxes has no union and
        gives NaN, as in ``torchvision.ops.box_iou``; remove such boxes first
        (:func:`remove_small_boxes`).
    """
    _check_box_pair("box_iou", boxes1, boxes2)
    return _box_iou(boxes1, boxes2)


def _box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """:func:`box_iou` without its checks, for pipelines that checked their boxes once."""
    inter, union = _intersection_and_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al., 2019) of every pair of boxes.

    ``GIoU = IoU - (C - U) / C`` where ``U`` is the union and ``C`` the area of the smallest box
    enclosing both. Unlike IoU it keeps decreasing as disjoint boxes move apart.

    Args:
        boxes1: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]`` in ``(x1, y1, x2, y2)``, on the same device.

    Returns:
        ``Tensor[N, M]`` with values in ``[-1, 1]``.
    """
    _check_box_pair("generalized_box_iou", boxes1, boxes2)
    boxes1, boxes2 = _widen_int(boxes1), _widen_int(boxes2)
    inter, union = _intersection_and_union(boxes1, boxes2)
    iou = inter / union
    x1a, y1a, x2a, y2a = boxes1.unbind(1)
    x1b, y1b, x2b, y2b = boxes2.unbind(1)
    enclosing = _enclosing_extent(x1a, x2a, x1b, x2b) * _enclosing_extent(y1a, y2a, y1b, y2b)
    return iou - (enclosing - union) / enclosing


def _enclosing_extent(lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
    """Length of the smallest interval enclosing ``[lo1, hi1]`` and ``[lo2, hi2]``, ``[N, M]``."""
    hi, lo = torch.maximum(hi1[:, None], hi2), torch.minimum(lo1[:, None], lo2)
    return _upcast(_widen_int(hi) - _widen_int(lo)).clamp(min=0)


def _distance_iou_and_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """DIoU and IoU, both ``[N, M]``, for boxes already upcast."""
    inter, union = _intersection_and_union(boxes1, boxes2)
    iou = inter / union
    x1a, y1a, x2a, y2a = boxes1.unbind(1)
    x1b, y1b, x2b, y2b = boxes2.unbind(1)
    enclosing_w = _enclosing_extent(x1a, x2a, x1b, x2b)
    enclosing_h = _enclosing_extent(y1a, y2a, y1b, y2b)
    diagonal_squared = enclosing_w**2 + enclosing_h**2 + eps
    centre_dx = _upcast((x1a + x2a)[:, None] / 2 - (x1b + x2b) / 2)
    centre_dy = _upcast((y1a + y2a)[:, None] / 2 - (y1b + y2b) / 2)
    centre_distance_squared = centre_dx**2 + centre_dy**2
    return iou - centre_distance_squared / diagonal_squared, iou


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Distance IoU (Zheng et al., 2020) of every pair of boxes.

    ``DIoU = IoU - d**2 / c**2``, where ``d`` is the distance between the boxes' centres and ``c``
    the diagonal of the smallest box enclosing both: it keeps pulling the centres together even
    when the boxes do not overlap, or when one contains the other.

    Args:
        boxes1: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]`` in ``(x1, y1, x2, y2)``, on the same device.
        eps: added to ``c**2`` so that two identical points do not divide by zero.

    Returns:
        ``Tensor[N, M]`` with values in ``[-1, 1]``. Same values as
        ``torchvision.ops.distance_box_iou``.
    """
    fn = "distance_box_iou"
    _check_box_pair(fn, boxes1, boxes2)
    diou, _ = _distance_iou_and_iou(_upcast(boxes1), _upcast(boxes2), eps)
    return diou


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (Zheng et al., 2020) of every pair of boxes.

    ``CIoU = DIoU - alpha * v`` adds an aspect-ratio term
    ``v = 4 / pi**2 * (atan(w1 / h1) - atan(w2 / h2))**2``, weighted by
    ``alpha = v / (1 - IoU + v)``, which is treated as a constant for the gradient.

    Args:
        boxes1: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, with positive heights.
        boxes2: ``Tensor[M, 4]`` in ``(x1, y1, x2, y2)``, with positive heights, same device.
        eps: as in :func:`distance_box_iou`, also keeps ``alpha`` finite.

    Returns:
        ``Tensor[N, M]``. Same values as ``torchvision.ops.complete_box_iou``.
    """
    fn = "complete_box_iou"
    _check_box_pair(fn, boxes1, boxes2)
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    diou, iou = _distance_iou_and_iou(boxes1, boxes2, eps)
    w1 = (boxes1[:, 2] - boxes1[:, 0])[:, None]
    h1 = (boxes1[:, 3] - boxes1[:, 1])[:, None]
    w2 = boxes2[:, 2] - boxes2[:, 0]
    h2 = boxes2[:, 3] - boxes2[:, 1]
    v = (4 / (torch.pi**2)) * torch.pow(torch.atan(w1 / h1) - torch.atan(w2 / h2), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((a, b, a + c, b + d), dim=-1)
    if fmt == "cxcywh":
        return torch.stack((a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d), dim=-1)
    if fmt == "yxyx":
        return torch.stack((b, a, d, c), dim=-1)
    return boxes


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    if fmt == "cxcywh":
        return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)
    if fmt == "yxyx":
        return torch.stack((y1, x1, y2, x2), dim=-1)
    return boxes


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between formats.

    Formats: ``"xyxy"`` (x1, y1, x2, y2), ``"xywh"`` (x1, y1, width, height), ``"cxcywh"``
    (centre x, centre y, width, height) and ``"yxyx"`` (y1, x1, y2, x2, the TensorFlow order
    that EfficientDet code uses). The same arithmetic as ``torchvision.ops.box_convert``.

    Args:
        boxes: ``Tensor[..., 4]`` in ``in_fmt``.
        in_fmt: format of ``boxes``.
        out_fmt: format to return.

    Returns:
        ``Tensor[..., 4]`` in ``out_fmt`` (a copy, also when the formats are equal).
    """
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"box_convert: {name} must be one of {BOX_FORMATS}, got {fmt!r}")
    check_boxes("box_convert", "boxes", boxes, fmt=in_fmt, batched=True)
    if in_fmt == out_fmt:
        return boxes.clone()
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip boxes so that they lie inside an image of ``size = (height, width)``.

    Args:
        boxes: ``Tensor[..., 4]`` in ``(x1, y1, x2, y2)``.
        size: ``(height, width)`` of the image.

    Returns:
        ``Tensor[..., 4]``, x clamped to ``[0, width]`` and y to ``[0, height]``.
    """
    check_boxes("clip_boxes_to_image", "boxes", boxes, batched=True)
    fn = "clip_boxes_to_image"
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise TypeError(f"{fn}: size must be (height, width), got {size!r}")
    check_positive(fn, "size[0] (height)", size[0], allow_zero=True)
    check_positive(fn, "size[1] (width)", size[1], allow_zero=True)
    height, width = size  # as given: int bounds keep integer boxes integer
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.
        min_size: smallest width and height to keep, in pixels (not NaN, which would keep
            nothing).

    Returns:
        ``Tensor[K]`` (int64) of kept indices, in increasing order.
    """
    check_boxes("remove_small_boxes", "boxes", boxes)
    min_size = check_real("remove_small_boxes", "min_size", min_size)
    boxes = _widen_int(boxes)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    keep = (widths >= min_size) & (heights >= min_size)
    return torch.where(keep)[0]
