"""The second stage of Faster R-CNN (Fast R-CNN): RoI sampling, the box head and its loss.

During training the proposals of the RPN are matched to the ground truth and a balanced set of
them is drawn (:func:`sample_proposals`); each RoI is pooled to a fixed size (:mod:`detlib.roi`),
then :class:`FastRCNNHead` classifies it and refines its box, and :func:`fast_rcnn_loss` scores
the result. The same numbers as torchvision's ``RoIHeads.select_training_samples``,
``TwoMLPHead``, ``FastRCNNPredictor`` and ``fastrcnn_loss``; the differences, all at edge cases,
are listed in each docstring.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlib._checks import (
    check_floating,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)
from detlib._twostage import (
    check_box_coder,
    check_box_list,
    check_box_values,
    check_flag,
    check_fraction,
    check_int,
)
from detlib.boxes import _box_iou
from detlib.coder import BoxCoder
from detlib.matching import Matcher, check_match_thresholds
from detlib.sampling import balanced_sample

__all__ = ["FastRCNNHead", "RoISamples", "fast_rcnn_loss", "sample_proposals"]


class RoISamples(NamedTuple):
    """The RoIs drawn for the second stage, one tensor per image in each field:

    * ``boxes``: ``Tensor[S_i, 4]``, the sampled RoIs (proposals, and ground-truth boxes if
      added);
    * ``labels``: ``Tensor[S_i]`` (int64), the class of the matched box, 0 for background;
    * ``regression_targets``: ``Tensor[S_i, 4]``, offsets from each RoI to its matched box
      (meaningful where the label is not 0);
    * ``matched_gt``: ``Tensor[S_i]`` (int64), index of the matched box, -1 for background.
    """

    boxes: list[Tensor]
    labels: list[Tensor]
    regression_targets: list[Tensor]
    matched_gt: list[Tensor]


def sample_proposals(
    proposals: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    batch_size_per_image: int = 128,
    positive_fraction: float = 0.25,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.5,
    add_gt_boxes: bool = True,
    box_coder: BoxCoder | None = None,
    generator: torch.Generator | None = None,
) -> RoISamples:
    """Proposal targets: match proposals to the ground truth and draw the second stage's RoIs.

    1. The ground-truth boxes are appended to each image's proposals (``add_gt_boxes``): early in
       training the proposals are poor, and this guarantees the second stage some positives.
    2. Every candidate takes the box it overlaps most (one ``[G, K]`` IoU matrix per image): with
       an IoU of at least ``fg_iou_thresh`` it gets that box's class, below ``bg_iou_thresh`` it
       is background (0), in between ignored.
    3. :func:`detlib.balanced_sample` draws ``batch_size_per_image`` candidates per image, up to
       ``positive_fraction`` of them positive (128 and 25 % in the Faster R-CNN code).
    4. Regression targets are encoded with ``box_coder`` (default weights ``(10, 10, 5, 5)``,
       i.e. the targets divided by ``(0.1, 0.1, 0.2, 0.2)``, roughly their standard deviations).

    Same candidates, labels, matches and targets as torchvision's
    ``RoIHeads.select_training_samples`` for the same draw (sampled RoIs in the order of the
    candidates, ground truths last), except that background RoIs report ``matched_gt = -1``
    rather than 0, and in images without boxes their targets are 0 instead of infinite.

    Args:
        proposals: one ``Tensor[K_i, 4]`` per image, with positive widths and heights.
        gt_boxes: one ``Tensor[G_i, 4]`` per image.
        gt_labels: one int64 ``Tensor[G_i]`` per image, classes from 1 (0 is background).
        batch_size_per_image: RoIs drawn per image, at most.
        positive_fraction: largest share of positive RoIs.
        fg_iou_thresh: IoU from which a RoI takes its box's class (0.5).
        bg_iou_thresh: IoU below which a RoI is background (0.5).
        add_gt_boxes: append the ground-truth boxes to the candidates.
        box_coder: encodes the targets (default ``BoxCoder((10, 10, 5, 5))``).
        generator: random generator for the draw, see :func:`detlib.balanced_sample`.

    Returns:
        :class:`RoISamples`, one tensor per image in each field.
    """
    fn = "sample_proposals"
    proposals = check_box_list(fn, "proposals", proposals)
    gt_boxes = check_box_list(fn, "gt_boxes", gt_boxes)
    gt_labels = _check_labels(fn, gt_labels, gt_boxes)
    if len(proposals) != len(gt_boxes):
        raise ValueError(
            f"{fn}: proposals and gt_boxes must have one tensor per image, got {len(proposals)} "
            f"and {len(gt_boxes)}"
        )
    for i, (p, g, lab) in enumerate(zip(proposals, gt_boxes, gt_labels)):
        check_same_device(fn, **{f"proposals[{i}]": p, f"gt_boxes[{i}]": g, f"gt_labels[{i}]": lab})
    # Values last, once every structure and device is known to be right.
    check_box_values(fn, "proposals", proposals, strict=True)
    check_box_values(fn, "gt_boxes", gt_boxes, strict=True)
    _check_label_values(fn, gt_labels)
    check_int(fn, "batch_size_per_image", batch_size_per_image, 0)
    check_fraction(fn, "positive_fraction", positive_fraction)
    check_match_thresholds(fn, "fg_iou_thresh", fg_iou_thresh, "bg_iou_thresh", bg_iou_thresh)
    check_flag(fn, "add_gt_boxes", add_gt_boxes)
    box_coder = check_box_coder(fn, box_coder, default_weights=(10.0, 10.0, 5.0, 5.0))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{fn}: generator must be a torch.Generator, got {type(generator).__name__}"
        )
    matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)

    candidates, labels, matches = [], [], []
    for boxes, gt, gt_class in zip(proposals, gt_boxes, gt_labels):
        gt = gt.to(boxes.dtype)
        boxes = torch.cat((boxes, gt)) if add_gt_boxes else boxes
        # Inputs checked above: the unchecked IoU, and the matcher on a matrix without NaN.
        match = matcher._match(_box_iou(gt, boxes) if len(gt) else boxes.new_zeros(0, len(boxes)))
        label = gt_class[match.clamp(min=0)] if len(gt) else match.new_zeros(len(boxes))
        label = torch.where(match == Matcher.BELOW_LOW_THRESHOLD, 0, label)
        label = torch.where(match == Matcher.BETWEEN_THRESHOLDS, -1, label)
        candidates.append(boxes)
        labels.append(label)
        matches.append(match)

    positive, negative = balanced_sample(
        _pad_rows(labels, -1), batch_size_per_image, positive_fraction, generator
    )
    sampled = positive | negative
    out = RoISamples([], [], [], [])
    for i, (boxes, gt, label, match) in enumerate(zip(candidates, gt_boxes, labels, matches)):
        index = torch.where(sampled[i, : len(boxes)])[0]
        rois, match = boxes[index], match[index]
        targets_of = gt.to(rois.dtype)[match.clamp(min=0)] if len(gt) else rois
        out.boxes.append(rois)
        out.labels.append(label[index])
        out.regression_targets.append(box_coder._encode(targets_of, rois))
        out.matched_gt.append(torch.where(match >= 0, match, -1))
    return out


def _check_labels(fn: str, gt_labels: object, gt_boxes: list[Tensor]) -> list[Tensor]:
    if not isinstance(gt_labels, (list, tuple)) or len(gt_labels) != len(gt_boxes):
        raise ValueError(
            f"{fn}: gt_labels must be a list with one int64 Tensor[G_i] per image "
            f"({len(gt_boxes)} images), got {type(gt_labels).__name__}"
        )
    for i, (labels, boxes) in enumerate(zip(gt_labels, gt_boxes)):
        check_tensor(fn, f"gt_labels[{i}]", labels)
        if labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"{fn}: gt_labels[{i}] must be an int64 Tensor[{len(boxes)}] (one class per box), "
                f"got {labels.dtype} of shape {list(labels.shape)}"
            )
    return list(gt_labels)


def _check_label_values(fn: str, gt_labels: list[Tensor]) -> None:
    """When value checks are on: classes >= 1 in every image (0 is the background)."""
    if not value_checks_enabled():
        return
    for i, labels in enumerate(gt_labels):
        if len(labels) and bool((labels < 1).any()):
            raise ValueError(
                f"{fn}: gt_labels[{i}] must hold classes >= 1 (0 is the background), "
                f"got {labels.min().item()}"
            )


def _pad_rows(rows: list[Tensor], value: int) -> Tensor:
    """Stack 1-D tensors of different lengths into ``[B, max_len]``, padding with ``value``."""
    if not rows:
        return torch.zeros(0, 0, dtype=torch.int64)
    longest = max(len(r) for r in rows)
    out = rows[0].new_full((len(rows), longest), value)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class FastRCNNHead(nn.Module):
    """The second stage's head: two fully connected layers, then class scores and boxes.

    ``fc6`` and ``fc7`` (with ReLU) turn each pooled RoI ``[C, h, w]`` into a vector; from it
    ``cls_score`` predicts ``num_classes`` logits (class 0 is the background) and ``bbox_pred``
    one set of offsets per class, ``4 * num_classes`` numbers: the box of the class that wins is
    refined with that class's offsets. torchvision's ``TwoMLPHead`` and ``FastRCNNPredictor``
    in one module, with the same parameter names (``fc6``, ``fc7``, ``cls_score``,
    ``bbox_pred``) and PyTorch's default initialisation.

    Args:
        in_channels: channels of the pooled features.
        pool_size: ``h`` or ``(h, w)`` of the pooled features.
        num_classes: classes including the background.
        representation_size: width of ``fc6`` and ``fc7`` (1024 in torchvision).
    """

    def __init__(
        self,
        in_channels: int,
        pool_size: int | tuple[int, int],
        num_classes: int,
        representation_size: int = 1024,
    ) -> None:
        super().__init__()
        fn = "FastRCNNHead"
        in_channels = check_int(fn, "in_channels", in_channels, 1)
        num_classes = check_int(fn, "num_classes", num_classes, 2)
        representation_size = check_int(fn, "representation_size", representation_size, 1)
        if isinstance(pool_size, numbers.Integral):
            pool_size = (pool_size, pool_size)
        if (
            not isinstance(pool_size, (tuple, list))
            or len(pool_size) != 2
            or not all(isinstance(s, numbers.Integral) and s >= 1 for s in pool_size)
        ):
            raise ValueError(f"{fn}: pool_size must be a positive int or (h, w), got {pool_size!r}")
        pool_size = (int(pool_size[0]), int(pool_size[1]))
        self.input_shape = (in_channels, *pool_size)
        self.fc6 = nn.Linear(math.prod(self.input_shape), representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.cls_score = nn.Linear(representation_size, num_classes)
        self.bbox_pred = nn.Linear(representation_size, 4 * num_classes)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits and class-specific offsets for every RoI.

        Args:
            pooled: ``Tensor[R, C, h, w]``, the pooled RoIs.

        Returns:
            ``(class_logits, box_regression)``: ``Tensor[R, num_classes]`` and
            ``Tensor[R, 4 * num_classes]``.
        """
        fn = "FastRCNNHead"
        check_floating(fn, "pooled", check_tensor(fn, "pooled", pooled))
        if pooled.dim() != 4 or tuple(pooled.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{fn}: pooled must have shape [R, {', '.join(map(str, self.input_shape))}], "
                f"got {list(pooled.shape)}"
            )
        x = F.relu(self.fc6(pooled.flatten(1)))
        x = F.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)


def fast_rcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    beta: float = 1.0 / 9.0,
) -> tuple[Tensor, Tensor]:
    """The Fast R-CNN multi-task loss on the sampled RoIs.

    * classification: cross-entropy over ``C`` classes (background included), averaged over
      the RoIs;
    * boxes: smooth L1 between the offsets predicted **for the RoI's true class** and the targets,
      for the foreground RoIs only (``[u >= 1]`` in the paper), summed and divided by the number
      of RoIs.

    The same numbers as torchvision's ``fastrcnn_loss``. Concatenate the RoIs of all images
    first (``torch.cat(samples.labels)``...).

    Args:
        class_logits: ``Tensor[R, C]``.
        box_regression: ``Tensor[R, 4 * C]``, offsets of every class.
        labels: ``Tensor[R]`` (int64) in ``[0, C)``.
        regression_targets: ``Tensor[R, 4]``.
        beta: smooth L1's transition point.

    Returns:
        ``(classification_loss, box_loss)``, two scalars; both 0 (differentiable) for ``R = 0``.
    """
    fn = "fast_rcnn_loss"
    check_floating(fn, "class_logits", check_tensor(fn, "class_logits", class_logits))
    check_floating(fn, "box_regression", check_tensor(fn, "box_regression", box_regression))
    check_tensor(fn, "labels", labels)
    check_floating(
        fn, "regression_targets", check_tensor(fn, "regression_targets", regression_targets)
    )
    if class_logits.dim() != 2:
        raise ValueError(
            f"{fn}: class_logits must have shape [R, C], got {list(class_logits.shape)}"
        )
    num_rois, num_classes = class_logits.shape
    shapes = {
        "box_regression": (box_regression, (num_rois, 4 * num_classes)),
        "labels": (labels, (num_rois,)),
        "regression_targets": (regression_targets, (num_rois, 4)),
    }
    for name, (t, shape) in shapes.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{fn}: labels must be int64 class indices, got {labels.dtype}")
    check_same_device(
        fn,
        class_logits=class_logits,
        box_regression=box_regression,
        labels=labels,
        regression_targets=regression_targets,
    )
    if not beta >= 0:
        raise ValueError(f"{fn}: beta must be >= 0, got {beta!r}")
    if value_checks_enabled() and num_rois and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(
            f"{fn}: labels must be in [0, {num_classes}), got values from "
            f"{labels.min().item()} to {labels.max().item()}"
        )
    if num_rois == 0:
        zero = class_logits.sum() * 0 + box_regression.sum() * 0
        return zero, zero.clone()
    classification = F.cross_entropy(class_logits, labels)
    per_class = box_regression.reshape(num_rois, num_classes, 4)
    own_class = per_class.gather(1, labels[:, None, None].expand(-1, 1, 4))[:, 0]
    foreground = (labels > 0)[:, None]  # masked with torch.where: background targets stay out
    predicted = torch.where(foreground, own_class, 0.0)
    targets = torch.where(foreground, regression_targets.to(own_class.dtype), 0.0)
    box_loss = F.smooth_l1_loss(predicted, targets, beta=beta, reduction="sum") / num_rois
    return classification, box_loss
