"""Detection metrics: VOC-style average precision and COCO-style mAP@[.5:.95].

A detector's output is ranked by score and walked down from the most confident detection: each
detection is a true positive if it overlaps a not-yet-claimed ground truth of its class enough, a
false positive otherwise. Precision and recall after each step trace the precision-recall curve;
average precision (AP) is the area under its upper envelope. Two conventions matter:

* **VOC (2010 onwards)**: IoU strictly above 0.5, each detection compared with its best-overlapping
  ground truth (if that one is already claimed, the detection is a false positive), AP as the exact
  area under the envelope ("all-point interpolation").
* **COCO**: IoU at least t for ten thresholds t = 0.50, 0.55, ..., 0.95, each detection takes the
  best still-unclaimed ground truth, at most 100 detections per image and class, AP sampled at 101
  recall points and averaged over thresholds and classes. :func:`coco_evaluate` reproduces
  pycocotools' ``COCOeval`` (bounding boxes, area range "all", no crowd annotations) number for
  number.

Inputs are per image: predictions ``{"boxes": Tensor[D, 4], "scores": Tensor[D], "labels":
Tensor[D]}`` and targets ``{"boxes": Tensor[G, 4], "labels": Tensor[G]}``, boxes in
``(x1, y1, x2, y2)``. Evaluation runs on the host in float64 (the tensors are copied there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from detlib._checks import check_boxes, check_positive_int, check_tensor

__all__ = ["coco_evaluate", "COCOResult", "voc_average_precision", "voc_evaluate", "VOCResult"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # exactly pycocotools' values
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class _Image:
    """One image's detections and ground truths on the host, in float64."""

    det_boxes: np.ndarray  # [D, 4]
    det_scores: np.ndarray  # [D]
    det_labels: np.ndarray  # [D]
    gt_boxes: np.ndarray  # [G, 4]
    gt_labels: np.ndarray  # [G]


def _host(fn: str, name: str, value: object) -> np.ndarray:
    """A checked tensor as a float64 NumPy array on the host."""
    tensor = check_tensor(fn, name, value)
    return tensor.detach().to("cpu", torch.float64).numpy()


def _images(fn: str, predictions: Sequence[Mapping], targets: Sequence[Mapping]) -> list[_Image]:
    if not isinstance(predictions, Sequence) or not isinstance(targets, Sequence):
        raise TypeError(f"{fn}: predictions and targets must be sequences with one dict per image")
    if len(predictions) != len(targets):
        raise ValueError(
            f"{fn}: predictions has {len(predictions)} images but targets has {len(targets)}"
        )
    images = []
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        for key, source, where in (
            ("boxes", pred, "predictions"),
            ("scores", pred, "predictions"),
            ("labels", pred, "predictions"),
            ("boxes", target, "targets"),
            ("labels", target, "targets"),
        ):
            if key not in source:
                raise ValueError(f"{fn}: {where}[{i}] has no {key!r}")
        check_boxes(fn, f"predictions[{i}]['boxes']", pred["boxes"])
        check_boxes(fn, f"targets[{i}]['boxes']", target["boxes"])
        image = _Image(
            det_boxes=_host(fn, f"predictions[{i}]['boxes']", pred["boxes"]).reshape(-1, 4),
            det_scores=_host(fn, f"predictions[{i}]['scores']", pred["scores"]).reshape(-1),
            det_labels=_host(fn, f"predictions[{i}]['labels']", pred["labels"]).reshape(-1),
            gt_boxes=_host(fn, f"targets[{i}]['boxes']", target["boxes"]).reshape(-1, 4),
            gt_labels=_host(fn, f"targets[{i}]['labels']", target["labels"]).reshape(-1),
        )
        if not len(image.det_boxes) == len(image.det_scores) == len(image.det_labels):
            raise ValueError(
                f"{fn}: predictions[{i}] has boxes, scores and labels of different lengths"
            )
        if len(image.gt_boxes) != len(image.gt_labels):
            raise ValueError(f"{fn}: targets[{i}] has boxes and labels of different lengths")
        if np.isnan(image.det_scores).any():
            raise ValueError(f"{fn}: predictions[{i}]['scores'] holds NaN")
        _check_labels(fn, f"predictions[{i}]['labels']", pred["labels"], image.det_labels)
        _check_labels(fn, f"targets[{i}]['labels']", target["labels"], image.gt_labels)
        images.append(image)
    return images


def _check_labels(fn: str, name: str, tensor: Tensor, values: np.ndarray) -> None:
    """Class labels: an integer dtype, or floating whole numbers (bools refused)."""
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{fn}: {name} must hold integer class labels, got {tensor.dtype}")
    if (
        tensor.is_floating_point()
        and not (np.isfinite(values) & (values == np.round(values))).all()
    ):
        raise ValueError(
            f"{fn}: {name} must hold whole-number class labels, got non-integer values"
        )


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[len(a), len(b)]`` of xyxy boxes, in float64 (no "+1").

    Not :func:`detlib.box_iou`: evaluation runs on host arrays already checked, and a pair with
    zero union must give IoU 0 as in pycocotools (``box_iou`` gives NaN, which ``argmax`` in the
    VOC matching would pick)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    w = np.minimum(a[:, None, 2], b[:, 2]) - np.maximum(a[:, None, 0], b[:, 0])
    h = np.minimum(a[:, None, 3], b[:, 3]) - np.maximum(a[:, None, 1], b[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


# --------------------------------------------------------------------------- VOC
def voc_average_precision(recall: np.ndarray | Tensor, precision: np.ndarray | Tensor) -> float:
    """Area under the upper envelope of a precision-recall curve ("all-point interpolation").

    The curve is extended to recall 0 and 1 with precision 0, precision is replaced by its running
    maximum from the right (the best precision reachable at this recall or beyond), and the area is
    summed over the steps where recall changes.

    Args:
        recall: ``[D]`` non-decreasing recall after each ranked detection.
        precision: ``[D]`` precision after each ranked detection.

    Returns:
        AP in ``[0, 1]``.
    """
    recall = _curve("recall", recall)
    precision = _curve("precision", precision)
    if recall.shape != precision.shape:
        raise ValueError(
            f"voc_average_precision: recall and precision must have the same length, got "
            f"{len(recall)} and {len(precision)}"
        )
    if (np.diff(recall) < 0).any():
        raise ValueError("voc_average_precision: recall must be non-decreasing")
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def _curve(name: str, values: object) -> np.ndarray:
    """One side of a precision-recall curve: ``[D]`` float64 values in ``[0, 1]``."""
    fn = "voc_average_precision"
    if isinstance(values, Tensor):
        values = values.detach().cpu()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a 1-D array of numbers") from None
    if array.ndim != 1:
        raise ValueError(f"{fn}: {name} must have shape [D], got {list(array.shape)}")
    if not ((array >= 0) & (array <= 1)).all():  # NaN fails too
        raise ValueError(f"{fn}: {name} must hold values in [0, 1] (no NaN)")
    return array


@dataclass(frozen=True)
class VOCResult:
    """Per-class AP (classes without ground truth are absent) and their mean."""

    ap_per_class: dict[int, float]
    mean_ap: float
    curves: dict[int, tuple[np.ndarray, np.ndarray]]  # class -> (recall, precision)


def voc_evaluate(
    predictions: Sequence[Mapping], targets: Sequence[Mapping], iou_threshold: float = 0.5
) -> VOCResult:
    """VOC-style mean average precision at one IoU threshold.

    For every class, the detections of all images are ranked by score (ties in input order); a
    detection is a true positive when its best-overlapping ground truth of the same class and image
    has IoU strictly above ``iou_threshold`` and was not claimed by a higher-ranked detection.

    Args:
        predictions: one dict per image with ``boxes`` ``[D, 4]``, ``scores`` ``[D]``, ``labels`` ``[D]``.
        targets: one dict per image with ``boxes`` ``[G, 4]`` and ``labels`` ``[G]``.
        iou_threshold: the overlap a true positive must exceed.

    Returns:
        :class:`VOCResult`.
    """
    fn = "voc_evaluate"
    if (
        isinstance(iou_threshold, bool)
        or not isinstance(iou_threshold, (int, float))
        or not 0 < iou_threshold <= 1
    ):
        raise ValueError(f"{fn}: iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
    images = _images(fn, predictions, targets)
    classes = sorted({int(c) for image in images for c in image.gt_labels})
    ap, curves = {}, {}
    for cls in classes:
        scores, hits, num_gt = [], [], 0
        for image in images:
            gt = image.gt_boxes[image.gt_labels == cls]
            det = image.det_labels == cls
            boxes, image_scores = image.det_boxes[det], image.det_scores[det]
            num_gt += len(gt)
            order = np.argsort(-image_scores, kind="stable")
            scores.append(image_scores[order])
            hits.append(_voc_hits(boxes[order], gt, iou_threshold))
        scores, hits = np.concatenate(scores), np.concatenate(hits)
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(hits[order])
        fp = np.cumsum(~hits[order])
        recall = tp / num_gt
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[cls] = voc_average_precision(recall, precision)
        curves[cls] = (recall, precision)
    mean = float(np.mean(list(ap.values()))) if ap else 0.0
    return VOCResult(ap, mean, curves)


def _voc_hits(boxes: np.ndarray, gt: np.ndarray, threshold: float) -> np.ndarray:
    """True positives ``[D]`` of one image's score-sorted detections of one class (VOC rule)."""
    hits = np.zeros(len(boxes), dtype=bool)
    claimed = np.zeros(len(gt), dtype=bool)
    ious = _iou(boxes, gt)
    for d in range(len(boxes)):
        if len(gt) == 0:
            break
        best = int(np.argmax(ious[d]))
        if ious[d, best] > threshold and not claimed[best]:
            hits[d] = claimed[best] = True
    return hits


# --------------------------------------------------------------------------- COCO
@dataclass(frozen=True)
class COCOResult:
    """COCO-style results: ``precision[t, r, k]`` is the interpolated precision at IoU threshold
    ``t``, recall point ``r`` and class ``k`` (-1 for classes without ground truth)."""

    map: float  # mAP@[.5:.95], pycocotools' stats[0]
    map_50: float  # stats[1]
    map_75: float  # stats[2]
    ap_per_class: dict[int, float]  # averaged over the ten thresholds
    precision: np.ndarray  # [10, 101, K]
    classes: list[int]


def coco_evaluate(
    predictions: Sequence[Mapping], targets: Sequence[Mapping], max_detections: int = 100
) -> COCOResult:
    """COCO-style mAP@[.5:.95], AP50 and AP75 for bounding boxes, as pycocotools computes them.

    Per image and class: detections sorted by score (ties in input order) and cut to
    ``max_detections``; at each IoU threshold ``t`` a detection takes the still-unclaimed ground
    truth with the highest IoU, provided that IoU is at least ``t`` (ties go to the later ground
    truth, as in pycocotools). Per class: detections of all images ranked by score (ties in image
    order), precision made monotone, sampled at the 101 recall points ``0, 0.01, ..., 1``. mAP is
    the mean over thresholds, recall points and classes that have ground truth. Area ranges and
    crowd annotations are not modelled (every box counts, as in the "all" row of COCOeval).

    Args:
        predictions: one dict per image with ``boxes`` ``[D, 4]``, ``scores`` ``[D]``, ``labels`` ``[D]``.
        targets: one dict per image with ``boxes`` ``[G, 4]`` and ``labels`` ``[G]``.
        max_detections: detections kept per image and class.

    Returns:
        :class:`COCOResult`.
    """
    fn = "coco_evaluate"
    max_detections = check_positive_int(fn, "max_detections", max_detections)
    images = _images(fn, predictions, targets)
    classes = sorted(
        {int(c) for image in images for c in np.concatenate((image.gt_labels, image.det_labels))}
    )
    precision = -np.ones((len(COCO_IOU_THRESHOLDS), len(COCO_RECALL_POINTS), len(classes)))
    for k, cls in enumerate(classes):
        curve = _coco_class_precision(images, cls, max_detections)
        if curve is not None:
            precision[:, :, k] = curve
    valid = precision > -1

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    t50 = int(np.argmin(np.abs(COCO_IOU_THRESHOLDS - 0.5)))
    t75 = int(np.argmin(np.abs(COCO_IOU_THRESHOLDS - 0.75)))
    per_class = {
        cls: mean(precision[:, :, k]) for k, cls in enumerate(classes) if valid[:, :, k].any()
    }
    return COCOResult(
        map=mean(precision),
        map_50=mean(precision[t50]),
        map_75=mean(precision[t75]),
        ap_per_class=per_class,
        precision=precision,
        classes=classes,
    )


def _coco_matches(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[T, D]`` true-positive flags of one image's sorted detections of one class."""
    matched = np.zeros((len(COCO_IOU_THRESHOLDS), len(boxes)), dtype=bool)
    if len(boxes) == 0 or len(gt) == 0:
        return matched
    ious = _iou(boxes, gt)
    for t, threshold in enumerate(COCO_IOU_THRESHOLDS):
        claimed = np.zeros(len(gt), dtype=bool)
        for d in range(len(boxes)):
            best, best_iou = -1, min(threshold, 1 - 1e-10)
            for g in range(len(gt)):
                if not claimed[g] and ious[d, g] >= best_iou:
                    best, best_iou = g, ious[d, g]
            if best >= 0:
                claimed[best] = matched[t, d] = True
    return matched


def _coco_class_precision(images: list[_Image], cls: int, max_detections: int) -> np.ndarray | None:
    """``[T, 101]`` interpolated precision of one class, or None if it has no ground truth."""
    scores, matches, num_gt = [], [], 0
    for image in images:
        gt = image.gt_boxes[image.gt_labels == cls]
        det = image.det_labels == cls
        order = np.argsort(-image.det_scores[det], kind="mergesort")[:max_detections]
        boxes, image_scores = image.det_boxes[det][order], image.det_scores[det][order]
        num_gt += len(gt)
        scores.append(image_scores)
        matches.append(_coco_matches(boxes, gt))
    if num_gt == 0:
        return None
    scores = np.concatenate(scores)
    order = np.argsort(-scores, kind="mergesort")
    hits = np.concatenate(matches, axis=1)[:, order]
    curve = np.zeros((len(COCO_IOU_THRESHOLDS), len(COCO_RECALL_POINTS)))
    for t in range(len(COCO_IOU_THRESHOLDS)):
        tp = np.cumsum(hits[t]).astype(float)
        fp = np.cumsum(~hits[t]).astype(float)
        recall = tp / num_gt
        precision = tp / (fp + tp + np.spacing(1))
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        positions = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
        inside = positions < len(envelope)
        curve[t, inside] = envelope[positions[inside]]
    return curve
