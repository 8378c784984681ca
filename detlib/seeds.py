"""The algorithms of the book's sources (the study notes it grew from; see its introduction),
re-implemented with the same arithmetic (bugs included).

The book grew from study notes built on yhenon/pytorch-retinanet (RetinaNet), bubbliiiing's
efficientdet-pytorch (EfficientDet) and a Faster R-CNN walkthrough. The chapters compare detlib
with what that code computes, so this module reproduces it: NumPy, the same operations in the
same order, the same coordinate orders and the same quirks. It is a reference for comparisons and
benchmarks, not something to build on; every function says what is wrong with it.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

__all__ = [
    "efficientdet_anchors",
    "efficientdet_calc_iou",
    "faster_rcnn_anchors",
    "iou_double_loop",
    "nms_plus_one",
    "retinanet_anchors",
    "retinanet_cell_anchors",
    "retinanet_shift",
    "roi_pool_loop",
]

RETINANET_RATIOS = np.array([0.5, 1.0, 2.0])
RETINANET_SCALES = np.array([2**0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)])


# --------------------------------------------------------------------------- RetinaNet (sources 000, 003)
def retinanet_cell_anchors(
    base_size: float, ratios: np.ndarray = RETINANET_RATIOS, scales: np.ndarray = RETINANET_SCALES
) -> np.ndarray:
    """The RetinaNet source's cell anchors, ``[len(ratios) * len(scales), 4]`` (x1, y1, x2, y2).

    The trick: ``tile`` repeats the whole list of scales once per ratio, ``repeat`` repeats each
    ratio once per scale, so row ``k`` pairs ``ratios[k // S]`` with ``scales[k % S]``. Each row
    starts as a ``size x size`` square; dividing its area by the ratio and taking the square root
    gives the width, and the width times the ratio the height (ratio = h / w).
    """
    count = len(ratios) * len(scales)
    cells = np.zeros((count, 4))
    cells[:, 2:] = base_size * np.tile(scales, (2, len(ratios))).T  # square sides, [A, 2]
    areas = cells[:, 2] * cells[:, 3]
    cells[:, 2] = np.sqrt(areas / np.repeat(ratios, len(scales)))  # widths
    cells[:, 3] = cells[:, 2] * np.repeat(ratios, len(scales))  # heights
    # From (0, 0, w, h) to a box centred on the origin: subtract half the size from both corners.
    cells[:, 0::2] -= np.tile(cells[:, 2] * 0.5, (2, 1)).T
    cells[:, 1::2] -= np.tile(cells[:, 3] * 0.5, (2, 1)).T
    return cells


def retinanet_shift(grid_shape: tuple[int, int], stride: int, cells: np.ndarray) -> np.ndarray:
    """Place the cell anchors at every cell centre ``(i + 0.5) * stride``: ``[H * W * A, 4]``.

    ``meshgrid`` in its default "xy" indexing gives row-major centres (x varies fastest), and the
    ``(K, 1, 4) + (1, A, 4)`` broadcast keeps the ``A`` anchors of a cell together.
    """
    xs = (np.arange(grid_shape[1]) + 0.5) * stride
    ys = (np.arange(grid_shape[0]) + 0.5) * stride
    xs, ys = np.meshgrid(xs, ys)
    centres = np.stack((xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()), axis=1)
    return (cells[None, :, :] + centres[:, None, :]).reshape(-1, 4)


def retinanet_anchors(
    image_size: tuple[int, int], levels: tuple[int, ...] = (3, 4, 5, 6, 7)
) -> np.ndarray:
    """All RetinaNet source anchors for an image of ``(height, width)``: ``[N, 4]`` float32.

    Grids are ``ceil(size / 2**l)``; everything is float64 until the final cast. The original
    wraps this in an ``nn.Module`` that builds the anchors in NumPy on every forward pass and then
    copies them to the GPU (the cost that chapter 1 measures).
    """
    shape = np.array(image_size)
    out = [np.zeros((0, 4))]
    for level in levels:
        stride = 2**level
        grid = (shape + stride - 1) // stride
        out.append(retinanet_shift(grid, stride, retinanet_cell_anchors(2 ** (level + 2))))
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------- EfficientDet (source 001)
EFFICIENTDET_SHAPES = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def efficientdet_anchors(image_size: tuple[int, int], anchor_scale: float = 4.0) -> np.ndarray:
    """The EfficientDet source's anchors, ``[N, 4]`` float64 in (y1, x1, y2, x2) order.

    Base size ``anchor_scale * stride * scale``; each shape stretches it by a (width, height)
    multiplier; scales in the outer loop. Like the original, raises unless the width is a multiple
    of every stride (it does not check the height).
    """
    height, width = image_size
    levels = []
    for stride in (8, 16, 32, 64, 128):
        if width % stride != 0:
            raise ValueError("input size must be divided by the stride.")
        per_shape = []
        for scale, (mult_x, mult_y) in itertools.product(RETINANET_SCALES, EFFICIENTDET_SHAPES):
            base = anchor_scale * stride * scale
            half_x = base * mult_x / 2.0
            half_y = base * mult_y / 2.0
            xs, ys = np.meshgrid(
                np.arange(stride / 2, width, stride), np.arange(stride / 2, height, stride)
            )
            xs, ys = xs.reshape(-1), ys.reshape(-1)
            boxes = np.stack((ys - half_y, xs - half_x, ys + half_y, xs + half_x), axis=1)
            per_shape.append(boxes[:, None, :])
        levels.append(np.concatenate(per_shape, axis=1).reshape(-1, 4))
    return np.concatenate(levels)


def efficientdet_calc_iou(anchors_yxyx: torch.Tensor, gt_xyxy: torch.Tensor) -> torch.Tensor:
    """The EfficientDet source's IoU: anchors in (y1, x1, y2, x2), ground truth in (x1, y1, x2, y2).

    It is correct only because its indices swap x and y for the first argument; handing it boxes
    in the same order on both sides (or handing these anchors to an ordinary xyxy IoU) silently
    gives wrong overlaps for every non-square anchor. Returns ``[N, G]``.
    """
    area_gt = (gt_xyxy[:, 2] - gt_xyxy[:, 0]) * (gt_xyxy[:, 3] - gt_xyxy[:, 1])
    iw = torch.min(anchors_yxyx[:, 3, None], gt_xyxy[:, 2]) - torch.max(
        anchors_yxyx[:, 1, None], gt_xyxy[:, 0]
    )
    ih = torch.min(anchors_yxyx[:, 2, None], gt_xyxy[:, 3]) - torch.max(
        anchors_yxyx[:, 0, None], gt_xyxy[:, 1]
    )
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    area_anchor = (anchors_yxyx[:, 2] - anchors_yxyx[:, 0]) * (
        anchors_yxyx[:, 3] - anchors_yxyx[:, 1]
    )
    union = torch.clamp(area_anchor[:, None] + area_gt - inter, min=1e-8)
    return inter / union


# --------------------------------------------------------------------------- Faster R-CNN (source 002)
def faster_rcnn_anchors(
    image_size: int = 800, stride: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Faster R-CNN source's anchors on a square image, (y1, x1, y2, x2) float64.

    Sizes ``8, 16, 32`` times the stride, ratios 0.5, 1, 2 (ratio outer, size inner). The cell
    centres are enumerated with x in the OUTER loop, i.e. column by column, whereas the RPN head's
    output, permuted to (H, W, A), runs row by row: anchor ``k`` and prediction ``k`` are in
    different cells (transposed) everywhere off the diagonal.

    Returns:
        ``(anchors [G*G*9, 4], inside_anchors [M, 4], inside_index [M])`` where "inside" means
        entirely within the image, the only anchors the source trains on.
    """
    ratios, sizes = (0.5, 1, 2), (8, 16, 32)
    cells = image_size // stride
    centres = (np.arange(cells) + 1) * stride - stride / 2
    anchors = np.zeros((cells * cells * len(ratios) * len(sizes), 4))
    k = 0
    for cx in centres:  # x outer: column by column
        for cy in centres:
            for ratio in ratios:
                for size in sizes:
                    length = size * stride
                    h = length * np.sqrt(ratio)
                    w = length * np.sqrt(1.0 / ratio)
                    anchors[k] = (cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0)
                    k += 1
    inside = np.where(
        (anchors[:, 0] >= 0)
        & (anchors[:, 1] >= 0)
        & (anchors[:, 2] <= image_size)
        & (anchors[:, 3] <= image_size)
    )[0]
    return anchors, anchors[inside], inside


def iou_double_loop(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """The Faster R-CNN source's IoU: a Python loop over every pair, ``[N, M]`` float32.

    Works for any coordinate order used consistently on both sides. One Python iteration per
    pair: chapter 2 times it against the broadcast version.
    """
    out = np.zeros((len(boxes_a), len(boxes_b)), dtype=np.float32)
    for i, (a0, a1, a2, a3) in enumerate(boxes_a):
        area_a = (a2 - a0) * (a3 - a1)
        for j, (b0, b1, b2, b3) in enumerate(boxes_b):
            area_b = (b2 - b0) * (b3 - b1)
            lo0, lo1 = max(a0, b0), max(a1, b1)
            hi0, hi1 = min(a2, b2), min(a3, b3)
            if lo0 < hi0 and lo1 < hi1:
                inter = (hi0 - lo0) * (hi1 - lo1)
                out[i, j] = inter / (area_a + area_b - inter)
    return out


def nms_plus_one(boxes_yxyx: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """The Faster R-CNN source's NumPy NMS, with the legacy "+1" pixel convention.

    Widths are ``x2 - x1 + 1``, so every box is one pixel larger in each direction than in
    detlib's and torchvision's convention: overlaps of small boxes come out higher and more of
    them are suppressed. Keeps a box when its overlap is ``<= threshold``. Returns kept indices in
    decreasing score order.
    """
    y1, x1, y2, x2 = (np.ascontiguousarray(boxes_yxyx[:, i]) for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return keep


def roi_pool_loop(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int = 7,
    spatial_scale: float = 1.0 / 16,
) -> torch.Tensor:
    """The Faster R-CNN source's RoI pooling: one adaptive max pool per RoI, in a Python loop.

    ``rois`` is ``[K, 5]`` of (batch index, x1, y1, x2, y2), the order the loop's indexing assumes
    (the source itself feeds it (y1, x1, y2, x2) proposals, which transposes every crop).
    Coordinates are scaled and truncated to ints, the crop includes its end row and column, and
    ``adaptive_max_pool2d`` splits it into bins that differ from RoI Pool's. Inside the loop the
    feature map is replaced by a one-image slice of itself (``narrow`` on the variable it reads
    from), so it only works when every RoI belongs to image 0. Returns ``[K, C, s, s]``.
    """
    boxes = rois.clone()
    boxes[:, 1:] = boxes[:, 1:] * spatial_scale
    boxes = boxes.long()
    outputs = []
    for idx, x1, y1, x2, y2 in boxes.tolist():
        features = features.narrow(0, idx, 1)  # the bug: overwrites the map it reads from
        crop = features[..., y1 : y2 + 1, x1 : x2 + 1]
        outputs.append(torch.nn.functional.adaptive_max_pool2d(crop, output_size)[0])
    return torch.stack(outputs)
