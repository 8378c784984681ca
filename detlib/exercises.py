"""Exercises that check themselves: ``check("2.1", my_giou)``.

Each exercise names a function the reader writes. :func:`check` calls it on random and edge-case
inputs (empty, degenerate boxes, ties, large values, float32 and float64), compares every result
with detlib's own function, and either prints a one-line success message or raises
:class:`ExerciseFailed` saying, in plain words, which input went wrong, what was expected and what
came back. :func:`list_exercises` lists them; :func:`describe` prints one exercise's task.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["EXERCISES", "Exercise", "ExerciseFailed", "check", "describe", "list_exercises"]


class ExerciseFailed(AssertionError):
    """An answer disagreed with detlib; the message says on which input and how."""


@dataclass(frozen=True)
class Case:
    """One input of an exercise: a short label and the positional arguments."""

    label: str
    args: tuple


@dataclass(frozen=True)
class Exercise:
    """A code exercise: what to write, the inputs it is tried on, and detlib's answer."""

    id: str
    title: str
    signature: str
    task: str
    cases: Callable[[], list[Case]]
    reference: Callable[..., object]


# --------------------------------------------------------------------------- inputs
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _boxes(n: int, seed: int, dtype=torch.float32, scale: float = 100.0, offset: float = 0.0):
    """``n`` random boxes ``[n, 4]`` with corners in ``[offset, offset + scale]``, widths > 0."""
    g = _gen(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale * 0.8 + offset
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale * 0.4 + scale * 0.01
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def _box_pair_cases() -> list[Case]:
    nested = torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.tensor([[20.0, 20.0, 30.0, 40.0]])
    apart = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[100.0, 200.0, 120.0, 230.0]])
    flat = torch.tensor([[5.0, 5.0, 5.0, 25.0], [0.0, 0.0, 10.0, 10.0]])  # zero width, then a box
    return [
        Case("random float32 boxes", (_boxes(7, 0), _boxes(5, 1))),
        Case("random float64 boxes", (_boxes(6, 2, torch.float64), _boxes(8, 3, torch.float64))),
        Case("identical boxes", (_boxes(3, 4), _boxes(3, 4))),
        Case("one box inside the other", nested),
        Case("boxes far apart", apart),
        Case("a zero-width box", (flat, _boxes(4, 5))),
        Case(
            "large coordinates (around 10,000)",
            (_boxes(4, 6, offset=1e4), _boxes(5, 7, offset=1e4)),
        ),
        Case("no boxes in the first set", (torch.zeros(0, 4), _boxes(3, 8))),
        Case(
            "no boxes in the second set",
            (_boxes(3, 9, torch.float64), torch.zeros(0, 4, dtype=torch.float64)),
        ),
    ]


# --------------------------------------------------------------------------- chapter 1
def _ref_cell_anchors(sizes, ratios):
    from detlib.anchors import AnchorGenerator

    return AnchorGenerator(
        strides=[16], sizes=[list(sizes)], aspect_ratios=list(ratios)
    ).cell_anchors(0)


def _cases_cell_anchors():
    return [
        Case(
            "RetinaNet's P3 sizes and ratios",
            ([32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)], [0.5, 1.0, 2.0]),
        ),
        Case("one size, one ratio", ([64.0], [1.0])),
        Case("tall and wide ratios", ([16.0, 40.0], [0.25, 1 / 3, 3.0, 4.0])),
        Case("a large anchor", ([2048.0], [0.5, 2.0])),
        Case("a fractional size", ([5.5, 11.25], [1.0, 2.0])),
    ]


def _ref_grid_anchors(cell, stride, grid):
    from detlib.anchors import AnchorGenerator

    rows, cols = grid
    if rows * cols == 0:
        return cell.new_zeros(0, 4)
    gen = AnchorGenerator(strides=[stride], sizes=[[1.0]], aspect_ratios=[1.0])
    centres = gen.per_level((rows * stride, cols * stride), dtype=torch.float64)[0]  # [K, 4]
    centres = (centres[:, :2] + centres[:, 2:]) / 2
    return (centres.repeat(1, 2)[:, None, :] + cell[None]).reshape(-1, 4)


def _cases_grid_anchors():
    cell = _ref_cell_anchors([32.0, 50.0], [0.5, 1.0, 2.0])
    return [
        Case("a 3 x 4 grid, stride 8, 6 anchors per cell", (cell, 8, (3, 4))),
        Case("a single cell", (cell, 16, (1, 1))),
        Case("one anchor per cell on a 5 x 2 grid", (_ref_cell_anchors([20.0], [1.0]), 32, (5, 2))),
        Case("a tall grid with stride 128", (cell, 128, (7, 1))),
        Case("an empty grid (0 rows)", (cell, 8, (0, 3))),
    ]


def _ref_num_anchors(image_size, strides, anchors_per_cell):
    from detlib.anchors import AnchorGenerator

    sizes = [[float(k + 1) for k in range(a)] for a in anchors_per_cell]
    return AnchorGenerator(strides=list(strides), sizes=sizes, aspect_ratios=[1.0]).num_anchors(
        tuple(image_size)
    )


def _cases_num_anchors():
    return [
        Case("RetinaNet on 512 x 512", ((512, 512), [8, 16, 32, 64, 128], [9] * 5)),
        Case(
            "RetinaNet on 600 x 1000 (sizes not multiples of the strides)",
            ((600, 1000), [8, 16, 32, 64, 128], [9] * 5),
        ),
        Case("Faster R-CNN's single level on 800 x 800", ((800, 800), [16], [9])),
        Case("a 1 x 1 image", ((1, 1), [8, 16], [3, 6])),
        Case(
            "different anchors per level",
            ((300, 300), [8, 16, 32, 64, 100, 300], [4, 6, 6, 6, 4, 4]),
        ),
    ]


# --------------------------------------------------------------------------- chapter 2
def _ref_giou(a, b):
    from detlib.boxes import generalized_box_iou

    return generalized_box_iou(a, b)


def _ref_iou(a, b):
    from detlib.boxes import box_iou

    return box_iou(a, b)


def _ref_diou(a, b):
    from detlib.boxes import distance_box_iou

    return distance_box_iou(a, b)


# --------------------------------------------------------------------------- chapter 3
def _ref_encode(gt, anchors):
    from detlib.coder import BoxCoder

    return BoxCoder().encode(gt, anchors)


def _cases_encode():
    a32, a64 = _boxes(10, 20), _boxes(6, 21, torch.float64)
    return [
        Case("random float32 boxes", (_boxes(10, 22), a32)),
        Case("random float64 boxes", (_boxes(6, 23, torch.float64), a64)),
        Case("each box equal to its anchor (all offsets 0)", (a32.clone(), a32)),
        Case(
            "a box 100 times its anchor",
            (torch.tensor([[0.0, 0.0, 1000.0, 500.0]]), torch.tensor([[0.0, 0.0, 10.0, 5.0]])),
        ),
        Case(
            "large coordinates (around 10,000)",
            (_boxes(4, 24, offset=1e4), _boxes(4, 25, offset=1e4)),
        ),
        Case("no anchors", (torch.zeros(0, 4), torch.zeros(0, 4))),
    ]


def _ref_decode(deltas, anchors):
    from detlib.coder import BoxCoder

    return BoxCoder().decode(deltas, anchors)


def _cases_decode():
    g = _gen(30)
    return [
        Case(
            "small random offsets, float32", (torch.randn(10, 4, generator=g) * 0.3, _boxes(10, 31))
        ),
        Case(
            "random offsets, float64",
            (torch.randn(6, 4, generator=g, dtype=torch.float64), _boxes(6, 32, torch.float64)),
        ),
        Case("zero offsets (the anchors themselves)", (torch.zeros(5, 4), _boxes(5, 33))),
        Case(
            "huge size offsets (dw = dh = 20, must be clipped before exp)",
            (torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.5, -0.5, -3.0, 8.0]]), _boxes(2, 34)),
        ),
        Case("no anchors", (torch.zeros(0, 4), torch.zeros(0, 4))),
    ]


def _ref_match(iou, high, low):
    from detlib.matching import Matcher

    return Matcher(high, low)(iou)


def _cases_match():
    g = _gen(40)
    ties = torch.tensor([[0.6, 0.2, 0.45, 0.0], [0.6, 0.2, 0.45, 0.9]])
    return [
        Case("random IoUs, thresholds 0.5 / 0.4", (torch.rand(4, 30, generator=g), 0.5, 0.4)),
        Case(
            "random IoUs, thresholds 0.7 / 0.3",
            (torch.rand(6, 40, generator=g, dtype=torch.float64), 0.7, 0.3),
        ),
        Case("two boxes tie for an anchor (the first wins)", (ties, 0.5, 0.4)),
        Case("IoU exactly at the thresholds", (torch.tensor([[0.5, 0.4, 0.39, 0.49]]), 0.5, 0.4)),
        Case("equal thresholds (no ignored band)", (torch.rand(3, 12, generator=g), 0.5, 0.5)),
        Case("no ground-truth boxes", (torch.zeros(0, 5), 0.5, 0.4)),
        Case("no anchors", (torch.zeros(3, 0), 0.5, 0.4)),
    ]


# --------------------------------------------------------------------------- chapter 4
def _logit_cases(seed: int) -> list[Case]:
    g = _gen(seed)
    logits = torch.randn(50, generator=g) * 3
    targets = (torch.rand(50, generator=g) < 0.2).float()
    big = torch.tensor([-60.0, -20.0, 0.0, 20.0, 60.0] * 2)
    big_t = torch.tensor([0.0] * 5 + [1.0] * 5)
    return [
        Case("random logits, alpha 0.25, gamma 2", (logits, targets, 0.25, 2.0)),
        Case(
            "random float64 logits, alpha 0.5, gamma 0 (plain cross-entropy)",
            (logits.double(), targets.double(), 0.5, 0.0),
        ),
        Case("gamma 5, alpha 0.75", (logits, targets, 0.75, 5.0)),
        Case("very large logits (|x| up to 60: sigmoid saturates)", (big, big_t, 0.25, 2.0)),
        Case("soft targets (0.3, 0.7)", (logits[:6], torch.tensor([0.3, 0.7] * 3), 0.25, 2.0)),
        Case("no anchors", (torch.zeros(0), torch.zeros(0), 0.25, 2.0)),
    ]


def _ref_focal(logits, targets, alpha, gamma):
    from detlib.losses import sigmoid_focal_loss

    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")


def _ref_focal_grad(logits, targets, alpha, gamma):
    from detlib.losses import sigmoid_focal_loss

    x = logits.detach().clone().requires_grad_(True)
    sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma, reduction="sum").backward()
    return x.grad


def _cases_focal_grad():
    # Hard targets only: the closed form of the exercise is written for t in {0, 1}.
    return [c for c in _logit_cases(50) if "soft" not in c.label]


def _ref_smooth_l1(x, y, beta):
    from detlib.losses import smooth_l1_loss

    return smooth_l1_loss(x, y, beta=beta)


def _cases_smooth_l1():
    g = _gen(60)
    x, y = torch.randn(40, generator=g), torch.randn(40, generator=g)
    return [
        Case("random, beta 1/9", (x, y, 1 / 9)),
        Case("random float64, beta 1", (x.double(), y.double(), 1.0)),
        Case("differences exactly at beta", (torch.tensor([0.5, -0.5, 0.0]), torch.zeros(3), 0.5)),
        Case("beta 0 (plain L1: no division by zero)", (torch.cat((y[:1], x[1:])), y, 0.0)),
        Case("large differences (1e6)", (x * 1e6, y, 1 / 9)),
        Case("empty", (torch.zeros(0), torch.zeros(0), 1 / 9)),
    ]


# --------------------------------------------------------------------------- chapter 5
def _fusion_ref(kind):
    def reference(inputs, weights):
        from detlib.bifpn import WeightedFusion

        fusion = WeightedFusion(len(inputs), kind=kind).to(inputs[0].dtype)
        with torch.no_grad():
            fusion.weight.copy_(weights)
            return fusion(inputs)

    return reference


def _cases_fusion():
    g = _gen(70)
    two = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(2)]
    three = [torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    return [
        Case("two maps, weights (1, 1)", (two, torch.tensor([1.0, 1.0]))),
        Case(
            "three float64 maps, weights (0.2, 3, 1.5)",
            (three, torch.tensor([0.2, 3.0, 1.5], dtype=torch.float64)),
        ),
        Case("a negative weight (-2, 1)", (two, torch.tensor([-2.0, 1.0]))),
        Case("all weights zero", (two, torch.tensor([0.0, 0.0]))),
        Case(
            "large weights (80, 100, 90)",
            ([t.float() for t in three], torch.tensor([80.0, 100.0, 90.0])),
        ),
    ]


# --------------------------------------------------------------------------- chapter 6
def _feature(seed: int, c: int = 2, h: int = 7, w: int = 9, dtype=torch.float64) -> Tensor:
    return torch.randn(c, h, w, generator=_gen(seed), dtype=dtype)


def _ref_bilinear(feature, y, x):
    from detlib import roi_align

    roi = torch.tensor([[0.0, x - 0.5, y - 0.5, x + 0.5, y + 0.5]], dtype=feature.dtype)
    return roi_align(feature[None], roi, 1, sampling_ratio=1, aligned=False)[0, :, 0, 0]


def _cases_bilinear():
    f = _feature(80)
    return [
        Case("inside the map, between pixels", (f, 2.25, 3.7)),
        Case("exactly on a pixel", (f, 4.0, 1.0)),
        Case("on the last row and column (y = H - 1, x = W - 1)", (f, 6.0, 8.0)),
        Case(
            "just outside the top-left corner (-0.5, -0.75): clamped to the edge", (f, -0.5, -0.75)
        ),
        Case("beyond the bottom edge (y = H - 0.6): clamped", (f, 6.4, 2.5)),
        Case("further than one pixel outside (y = -1.5): zero", (f, -1.5, 3.0)),
        Case("float32 map", (f.float(), 3.5, 5.25)),
    ]


def _ref_roi_align_one(feature, box, output_size, sampling_ratio, aligned):
    from detlib import roi_align

    return roi_align(
        feature[None], [box[None]], output_size, sampling_ratio=sampling_ratio, aligned=aligned
    )[0]


def _cases_roi_align_one():
    f = _feature(81, h=12, w=14)
    box = torch.tensor([1.3, 2.2, 9.6, 8.1], dtype=torch.float64)
    return [
        Case("2 x 2 bins, 2 x 2 samples, aligned", (f, box, (2, 2), 2, True)),
        Case("3 x 2 bins, 1 sample, not aligned", (f, box, (3, 2), 1, False)),
        Case("adaptive sampling (sampling_ratio = -1)", (f, box, (2, 3), -1, True)),
        Case(
            "a RoI smaller than a pixel, not aligned (width clamped to 1)",
            (f, torch.tensor([4.0, 4.0, 4.3, 4.2], dtype=torch.float64), (2, 2), 2, False),
        ),
        Case(
            "a RoI reaching outside the map",
            (f, torch.tensor([-3.0, 8.0, 6.0, 15.0], dtype=torch.float64), (2, 2), 2, True),
        ),
        Case("float32", (f.float(), box.float(), (4, 4), 2, True)),
    ]


def _ref_roi_pool_one(feature, box, output_size):
    from detlib import roi_pool

    return roi_pool(feature[None], [box[None]], output_size)[0]


def _cases_roi_pool_one():
    f = _feature(82, h=12, w=14)
    return [
        Case(
            "a 7 x 5 RoI into 2 x 2 bins",
            (f, torch.tensor([1.0, 2.0, 8.0, 6.0], dtype=torch.float64), (2, 2)),
        ),
        Case(
            "fractional corners (rounded to pixels)",
            (f, torch.tensor([1.4, 2.6, 9.5, 7.49], dtype=torch.float64), (3, 2)),
        ),
        Case(
            "more bins than pixels (some bins empty: 0)",
            (f, torch.tensor([3.0, 3.0, 4.0, 5.0], dtype=torch.float64), (4, 4)),
        ),
        Case(
            "a RoI reaching outside the map",
            (f, torch.tensor([-4.0, 9.0, 5.0, 16.0], dtype=torch.float64), (2, 3)),
        ),
        Case("float32", (f.float(), torch.tensor([0.0, 0.0, 13.0, 11.0]), (3, 3))),
    ]


# --------------------------------------------------------------------------- chapter 7
def _nms_cases() -> list[Case]:
    g = _gen(90)
    crowd = _boxes(40, 91, scale=60.0)
    scores = torch.rand(40, generator=g)
    tied = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    return [
        Case("40 crowded boxes, threshold 0.5", (crowd, scores, 0.5)),
        Case("float64, threshold 0.3", (crowd.double(), scores.double(), 0.3)),
        Case(
            "equal scores (visit by increasing index)", (tied, torch.tensor([0.9, 0.9, 0.9]), 0.5)
        ),
        Case("threshold 0 (any overlap suppresses)", (crowd, scores, 0.0)),
        Case("threshold 1 (nothing suppressed)", (crowd[:8], scores[:8], 1.0)),
        Case("no boxes", (torch.zeros(0, 4), torch.zeros(0), 0.5)),
    ]


def _ref_nms(boxes, scores, threshold):
    from detlib import nms

    return nms(boxes, scores, threshold)


def _ref_batched_nms(boxes, scores, labels, threshold):
    from detlib import batched_nms

    return batched_nms(boxes, scores, labels, threshold)


def _cases_batched_nms():
    g = _gen(92)
    crowd = _boxes(40, 93, scale=60.0)
    scores = torch.rand(40, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    return [
        Case("40 crowded boxes of 3 classes", (crowd, scores, labels, 0.5)),
        Case("one class only", (crowd, scores, torch.zeros(40, dtype=torch.int64), 0.5)),
        Case(
            "the same box in 3 classes (all kept)",
            (same, torch.tensor([0.5, 0.9, 0.7]), torch.tensor([0, 1, 2]), 0.5),
        ),
        Case("class ids far apart (0 and 1000)", (crowd[:10], scores[:10], labels[:10] * 500, 0.4)),
        Case(
            "no boxes", (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
        ),
    ]


def _ref_soft_nms(boxes, scores, sigma, score_threshold):
    from detlib import soft_nms

    return soft_nms(boxes, scores, sigma=sigma, score_threshold=score_threshold, method="gaussian")


def _cases_soft_nms():
    g = _gen(94)
    crowd = _boxes(30, 95, scale=60.0)
    scores = torch.rand(30, generator=g) * 0.9 + 0.1
    return [
        Case("30 crowded boxes, sigma 0.5", (crowd, scores, 0.5, 0.001)),
        Case(
            "float64, sigma 0.1, score threshold 0.2", (crowd.double(), scores.double(), 0.1, 0.2)
        ),
        Case(
            "equal scores",
            (
                torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [30.0, 0, 40, 10]]),
                torch.tensor([0.8, 0.8, 0.8]),
                0.5,
                0.001,
            ),
        ),
        Case("a score threshold above every score", (crowd[:5], scores[:5] * 0.5, 0.5, 0.99)),
        Case("no boxes", (torch.zeros(0, 4), torch.zeros(0), 0.5, 0.001)),
    ]


# --------------------------------------------------------------------------- chapter 8
def _ref_voc_ap(recall, precision):
    from detlib.metrics import voc_average_precision

    return voc_average_precision(recall, precision)


def _pr_curve(seed: int, n: int, num_gt: int):
    rng = np.random.default_rng(seed)
    hits = rng.random(n) < 0.6
    tp = np.cumsum(hits)
    return tp / num_gt, tp / np.arange(1, n + 1)


def _cases_voc_ap():
    return [
        Case("a random ranking of 30 detections, 25 objects", _pr_curve(100, 30, 25)),
        Case("recall reaches 1", _pr_curve(101, 12, 5)),
        Case(
            "precision rises again after a dip (the envelope matters)",
            (np.array([0.2, 0.2, 0.4, 0.6]), np.array([1.0, 0.5, 0.67, 0.75])),
        ),
        Case("every detection wrong", (np.zeros(4), np.zeros(4))),
        Case("no detections", (np.zeros(0), np.zeros(0))),
    ]


def precision_recall(
    scores: np.ndarray, is_tp: np.ndarray, num_gt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall ``[D]`` after each detection ranked by decreasing score (stable)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.cumsum(np.asarray(is_tp, dtype=bool)[order])
    ranks = np.arange(1, len(order) + 1)
    return tp / ranks, tp / num_gt


def _cases_precision_recall():
    rng = np.random.default_rng(110)
    scores, hits = rng.random(20), rng.random(20) < 0.5
    return [
        Case("20 detections, 15 objects", (scores, hits, 15)),
        Case(
            "equal scores (keep the given order)",
            (np.array([0.9, 0.5, 0.5, 0.5, 0.1]), np.array([True, False, True, True, False]), 4),
        ),
        Case(
            "already sorted, all correct",
            (np.array([0.9, 0.8, 0.7]), np.array([True, True, True]), 3),
        ),
        Case(
            "scores in increasing order",
            (np.linspace(0, 1, 6), np.array([0, 0, 1, 1, 0, 1], dtype=bool), 5),
        ),
        Case("no detections", (np.zeros(0), np.zeros(0, dtype=bool), 3)),
    ]


def _ref_voc_hits(boxes, gt, threshold):
    from detlib.metrics import _voc_hits

    return _voc_hits(
        np.asarray(boxes, dtype=np.float64), np.asarray(gt, dtype=np.float64), threshold
    )


def _cases_voc_hits():
    gt = _boxes(4, 120, torch.float64).numpy()
    rng = np.random.default_rng(121)
    near = np.repeat(gt, 3, axis=0) + rng.normal(0, 4, (12, 4))
    return [
        Case("12 detections around 4 objects", (near, gt, 0.5)),
        Case(
            "duplicates of one object (only the first is a hit)",
            (np.repeat(gt[:1], 3, axis=0), gt, 0.5),
        ),
        Case(
            "two close objects, two detections on the first (the second is a duplicate)",
            (
                np.array([[0.0, 0, 10, 10], [0, 0, 10, 10]]),
                np.array([[0.0, 0, 10, 10], [1, 0, 11, 10]]),
                0.5,
            ),
        ),
        Case("a strict threshold 0.9", (near, gt, 0.9)),
        Case("no objects in the image", (near[:3], np.zeros((0, 4)), 0.5)),
        Case("no detections", (np.zeros((0, 4)), gt, 0.5)),
    ]


# --------------------------------------------------------------------------- the catalogue
_BOXES_ARGS = "boxes1 ``Tensor[N, 4]``, boxes2 ``Tensor[M, 4]`` (x1, y1, x2, y2)"

EXERCISES: dict[str, Exercise] = {
    e.id: e
    for e in [
        Exercise(
            "1.1",
            "cell anchors",
            "cell_anchors(sizes, ratios) -> Tensor[A, 4]",
            (
                "The anchors of one cell, centred on (0, 0), float64, ratio by ratio and within a ratio "
                "size by size; a ratio is h / w and each anchor keeps the area size * size."
            ),
            _cases_cell_anchors,
            _ref_cell_anchors,
        ),
        Exercise(
            "1.2",
            "anchors over a grid",
            "grid_anchors(cell, stride, grid) -> Tensor[rows * cols * A, 4]",
            (
                "Shift the cell anchors ``cell`` (``[A, 4]``) to the centre ``((j + 0.5) * stride, (i + "
                "0.5) * stride)`` of every cell of a ``grid = (rows, cols)``: row by row, column by column,"
                " anchor by anchor."
            ),
            _cases_grid_anchors,
            _ref_grid_anchors,
        ),
        Exercise(
            "1.3",
            "counting anchors",
            "num_anchors(image_size, strides, anchors_per_cell) -> int",
            (
                "How many anchors a pyramid puts on an image of ``image_size = (height, width)``: level "
                "``l`` has a ``ceil(height / stride) x ceil(width / stride)`` grid with "
                "``anchors_per_cell[l]`` anchors per cell."
            ),
            _cases_num_anchors,
            _ref_num_anchors,
        ),
        Exercise(
            "2.1",
            "GIoU",
            "giou(boxes1, boxes2) -> Tensor[N, M]",
            (
                f"Generalised IoU of every pair, from the IoU and the smallest box enclosing both: IoU - (C "
                f"- U) / C. Inputs: {_BOXES_ARGS}."
            ),
            _box_pair_cases,
            _ref_giou,
        ),
        Exercise(
            "2.2",
            "IoU by broadcasting",
            "pairwise_iou(boxes1, boxes2) -> Tensor[N, M]",
            f"IoU of every pair without a Python loop. Inputs: {_BOXES_ARGS}.",
            _box_pair_cases,
            _ref_iou,
        ),
        Exercise(
            "2.3",
            "DIoU",
            "diou(boxes1, boxes2) -> Tensor[N, M]",
            (
                f"Distance IoU: IoU - d**2 / (c**2 + 1e-7), d the distance between the centres, c the "
                f"diagonal of the enclosing box. Inputs: {_BOXES_ARGS}."
            ),
            _box_pair_cases,
            _ref_diou,
        ),
        Exercise(
            "3.1",
            "encoding",
            "encode(gt_boxes, anchors) -> Tensor[N, 4]",
            (
                "The regression targets (tx, ty, tw, th) that turn each anchor into its box: centre offsets"
                " divided by the anchor's width / height, log of the size ratios."
            ),
            _cases_encode,
            _ref_encode,
        ),
        Exercise(
            "3.2",
            "decoding",
            "decode(deltas, anchors) -> Tensor[N, 4]",
            (
                "The boxes (x1, y1, x2, y2) that offsets (tx, ty, tw, th) give; clamp tw and th at log(1000"
                " / 16) before exp, as torchvision does."
            ),
            _cases_decode,
            _ref_decode,
        ),
        Exercise(
            "3.3",
            "a matching rule",
            "match(iou, high, low) -> Tensor[N] (int64)",
            (
                "For an IoU matrix ``[G, N]`` (boxes x anchors): each anchor's best box, or -1 when its "
                "best IoU < low, or -2 when low <= best IoU < high (RetinaNet's Matcher without low-quality"
                " matches)."
            ),
            _cases_match,
            _ref_match,
        ),
        Exercise(
            "4.1",
            "the focal loss",
            "focal_loss(logits, targets, alpha, gamma) -> Tensor[*]",
            "The sigmoid focal loss of each element (no reduction), stable for large logits.",
            lambda: _logit_cases(50),
            _ref_focal,
        ),
        Exercise(
            "4.2",
            "the focal loss's gradient",
            "focal_grad(logits, targets, alpha, gamma) -> Tensor[*]",
            "d loss / d logit of each element, written in closed form (targets 0 or 1), without autograd.",
            _cases_focal_grad,
            _ref_focal_grad,
        ),
        Exercise(
            "4.3",
            "smooth L1",
            "smooth_l1(input, target, beta) -> Tensor[*]",
            (
                "0.5 * d**2 / beta where |d| < beta, |d| - 0.5 * beta elsewhere (d = input - target); beta "
                "= 0 is plain L1."
            ),
            _cases_smooth_l1,
            _ref_smooth_l1,
        ),
        Exercise(
            "5.1",
            "fast normalised fusion",
            "fast_fusion(inputs, weights) -> Tensor",
            (
                "sum_i relu(w_i) / (sum_j relu(w_j) + 1e-4) * inputs[i] for a list of same-shaped maps and "
                "raw weights ``Tensor[n]``."
            ),
            _cases_fusion,
            _fusion_ref("fast"),
        ),
        Exercise(
            "5.2",
            "softmax fusion",
            "softmax_fusion(inputs, weights) -> Tensor",
            "sum_i softmax(w)_i * inputs[i], stable for large weights.",
            _cases_fusion,
            _fusion_ref("softmax"),
        ),
        Exercise(
            "6.1",
            "a bilinear sample",
            "bilinear(feature, y, x) -> Tensor[C]",
            (
                "The value of a ``[C, H, W]`` map at a real point (y, x), as RoI Align samples it: zero "
                "further than one pixel outside the map, clamped to the edge within that pixel."
            ),
            _cases_bilinear,
            _ref_bilinear,
        ),
        Exercise(
            "6.2",
            "RoI Align for one RoI",
            "roi_align_one(feature, box, output_size, sampling_ratio, aligned) -> Tensor[C, ph, pw]",
            (
                "RoI Align of one box (x1, y1, x2, y2) on a ``[C, H, W]`` map (spatial scale 1): average of"
                " sampling_ratio x sampling_ratio bilinear samples per bin (adaptive when -1); aligned "
                "shifts the box by -0.5."
            ),
            _cases_roi_align_one,
            _ref_roi_align_one,
        ),
        Exercise(
            "6.3",
            "RoI Pool for one RoI",
            "roi_pool_one(feature, box, output_size) -> Tensor[C, ph, pw]",
            (
                "RoI Pool of one box: corners rounded to pixels, the RoI cut into bins with floor / ceil, "
                "the maximum of each bin (0 for an empty bin)."
            ),
            _cases_roi_pool_one,
            _ref_roi_pool_one,
        ),
        Exercise(
            "7.1",
            "greedy NMS",
            "my_nms(boxes, scores, iou_threshold) -> Tensor[K] (int64)",
            (
                "The indices of the boxes greedy NMS keeps, by decreasing score (equal scores by increasing"
                " index); a box is suppressed when its IoU with a kept box is > iou_threshold."
            ),
            _nms_cases,
            _ref_nms,
        ),
        Exercise(
            "7.2",
            "class-aware NMS with one call",
            "class_aware_nms(boxes, scores, labels, iou_threshold) -> Tensor[K]",
            "NMS in which boxes of different classes never suppress each other, with a single call to detlib.nms.",
            _cases_batched_nms,
            _ref_batched_nms,
        ),
        Exercise(
            "7.3",
            "Gaussian Soft-NMS",
            "soft_nms_gaussian(boxes, scores, sigma, score_threshold) -> (keep, kept_scores)",
            (
                "Pick the highest score, keep it, multiply every other remaining score by exp(-IoU**2 / "
                "sigma), drop scores below score_threshold, repeat; equal scores by increasing index."
            ),
            _cases_soft_nms,
            _ref_soft_nms,
        ),
        Exercise(
            "8.1",
            "all-point VOC AP",
            "voc_ap(recall, precision) -> float",
            (
                "The area under the precision envelope (the best precision at this recall or beyond), "
                "summed over the steps where recall changes; the curve starts at recall 0."
            ),
            _cases_voc_ap,
            _ref_voc_ap,
        ),
        Exercise(
            "8.2",
            "precision and recall of a ranking",
            "precision_recall(scores, is_tp, num_gt) -> (precision, recall)",
            (
                "Rank the detections by decreasing score (equal scores keep their order); after each one, "
                "precision = hits so far / detections so far, recall = hits so far / num_gt (numpy arrays)."
            ),
            _cases_precision_recall,
            precision_recall,
        ),
        Exercise(
            "8.3",
            "true positives, the VOC rule",
            "voc_hits(boxes, gt, threshold) -> np.ndarray[D] (bool)",
            (
                "For detections already sorted by decreasing score: each one is a hit when the object it "
                "overlaps most has IoU > threshold and no earlier detection has claimed it."
            ),
            _cases_voc_hits,
            _ref_voc_hits,
        ),
    ]
}


# --------------------------------------------------------------------------- checking
def _show(value: object) -> str:
    if isinstance(value, Tensor):
        head = f"Tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
        if value.numel() == 0:
            return head + " (empty)"
        if value.numel() <= 24:
            return f"{head} {value.tolist()}"
        return f"{head}, first values {value.flatten()[:8].tolist()} ..."
    if isinstance(value, np.ndarray):
        head = f"array{list(value.shape)} {value.dtype}"
        if value.size <= 24:
            return f"{head} {value.tolist()}"
        return f"{head}, first values {value.flatten()[:8].tolist()} ..."
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (Tensor, np.ndarray)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _tolerances(dtype) -> tuple[float, float]:
    if dtype in (torch.float64, np.float64):
        return 1e-9, 1e-9
    return 1e-5, 1e-5


def _difference(got: object, expected: object) -> str | None:
    """``None`` when ``got`` matches ``expected``, else what is wrong, in words."""
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} results, got {type(got).__name__}"
        for k, (g, e) in enumerate(zip(got, expected)):
            problem = _difference(g, e)
            if problem:
                return f"result {k + 1} of the tuple: {problem}"
        return None
    if isinstance(expected, (bool, int)) and not isinstance(expected, np.ndarray):
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.item()
        return None if got == expected else f"expected {expected}, got {got!r}"
    if isinstance(expected, float):
        try:
            value = float(got)
        except (TypeError, ValueError):
            return f"expected a number, got {type(got).__name__}"
        return (
            None
            if math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)
            else f"expected {expected!r}, got {value!r}"
        )
    if isinstance(expected, np.ndarray):
        try:
            got = np.asarray(got.cpu() if isinstance(got, Tensor) else got)
        except Exception:  # noqa: BLE001 - anything that is not array-like
            return f"expected an array, got {type(got).__name__}"
        return _array_difference(
            torch.from_numpy(np.ascontiguousarray(got)), torch.from_numpy(expected)
        )
    if not isinstance(got, Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    return _array_difference(got, expected)


def _array_difference(got: Tensor, expected: Tensor) -> str | None:
    if tuple(got.shape) != tuple(expected.shape):
        return f"expected shape {list(expected.shape)}, got shape {list(got.shape)}"
    if expected.dtype.is_floating_point != got.dtype.is_floating_point or (
        expected.dtype == torch.bool and got.dtype != torch.bool
    ):
        return f"expected dtype {expected.dtype}, got {got.dtype}"
    if expected.dtype.is_floating_point and got.dtype != expected.dtype:
        return f"expected dtype {expected.dtype} (that of the inputs), got {got.dtype}"
    if got.numel() == 0:
        return None
    got = got.detach().cpu()
    if not expected.dtype.is_floating_point:
        if torch.equal(got.to(expected.dtype), expected):
            return None
        where = (got.to(expected.dtype) != expected).nonzero()[0].tolist()
        e, g = expected[tuple(where)].item(), got[tuple(where)].item()
        return f"first difference at index {where}: expected {e}, got {g}"
    rtol, atol = _tolerances(expected.dtype)
    close = torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    where = (~close).nonzero()[0].tolist()
    e, g = expected[tuple(where)].item(), got[tuple(where)].item()
    extra = (
        " (a NaN or infinity: is something divided by zero, or exp overflowing?)"
        if not math.isfinite(g)
        else ""
    )
    return f"first difference at index {where}: expected {e!r}, got {g!r}{extra}"


def _copy(value: object) -> object:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _arguments(exercise: Exercise, case: Case) -> str:
    names = exercise.signature.split("(", 1)[1].split(")", 1)[0].split(", ")
    return "\n".join(f"    {name} = {_show(value)}" for name, value in zip(names, case.args))


def check(exercise_id: str, answer: Callable[..., object]) -> None:
    """Run ``answer`` on every input of exercise ``exercise_id`` and compare it with detlib.

    Prints a one-line success message, or raises :class:`ExerciseFailed` naming the input, the
    expected result and the returned one. ``answer`` gets copies of the inputs.
    """
    if exercise_id not in EXERCISES:
        raise ValueError(
            f"check: exercise_id must be one of {', '.join(EXERCISES)}, got {exercise_id!r}"
        )
    if not callable(answer):
        raise TypeError(
            f"check: answer must be the function you wrote, got {type(answer).__name__}"
        )
    exercise = EXERCISES[exercise_id]
    cases = exercise.cases()
    for case in cases:
        expected = exercise.reference(*_copy(list(case.args)))
        try:
            got = answer(*_copy(list(case.args)))
        except Exception as error:  # noqa: BLE001 - reported to the reader in words
            raise ExerciseFailed(
                f"Exercise {exercise.id} ({exercise.title}): your function raised "
                f"{type(error).__name__}: {error}\n  on the input '{case.label}':\n"
                f"{_arguments(exercise, case)}"
            ) from error
        problem = _difference(got, expected)
        if problem:
            raise ExerciseFailed(
                f"Exercise {exercise.id} ({exercise.title}): wrong result on '{case.label}'.\n"
                f"  input:\n{_arguments(exercise, case)}\n"
                f"  expected: {_show(expected)}\n  returned: {_show(got)}\n  {problem}"
            )
    print(
        f"Exercise {exercise.id} ({exercise.title}) passed: your function agrees with detlib on "
        f"all {len(cases)} inputs ({', '.join(c.label for c in cases[:3])}, ...)."
    )


def describe(exercise_id: str) -> None:
    """Print what exercise ``exercise_id`` asks for."""
    if exercise_id not in EXERCISES:
        raise ValueError(
            f"describe: exercise_id must be one of {', '.join(EXERCISES)}, got {exercise_id!r}"
        )
    e = EXERCISES[exercise_id]
    print(f"Exercise {e.id}, {e.title}: write {e.signature}\n{e.task}")


def list_exercises(chapter: int | None = None) -> list[str]:
    """The exercise ids, of one chapter or of all."""
    return [k for k in EXERCISES if chapter is None or k.split(".")[0] == str(chapter)]
