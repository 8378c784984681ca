"""Losses of one-stage detectors: the focal loss for classes, smooth L1 for boxes, and both
together for a batch of anchors and ground truths (:func:`detection_loss`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from detlib._checks import (
    check_box_shape,
    check_box_values,
    check_boxes,
    check_floating,
    check_positive,
    check_real,
    check_reduction,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)
from detlib.boxes import _box_iou
from detlib.coder import BoxCoder
from detlib.matching import Matcher

__all__ = ["detection_loss", "DetectionLoss", "sigmoid_focal_loss", "smooth_l1_loss"]


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _power(base: Tensor, gamma: float) -> Tensor:
    """``base ** gamma`` for ``base >= 0``, with a finite gradient where ``base`` is 0.

    At a saturated logit ``1 - p_t`` is exactly 0, and the derivative of ``x ** gamma`` there is
    infinite for ``0 < gamma < 1``: multiplied by the 0 of the sigmoid's derivative it makes the
    gradient NaN (torchvision's focal loss has this NaN). The loss is flat there (its true
    gradient tends to 0), so the power is taken of 1 instead where ``base`` is 0 and replaced by
    its value, ``0`` (or ``1`` when ``gamma`` is 0). Elsewhere values and gradients are unchanged.
    """
    if gamma == 0:
        return torch.ones_like(base)
    is_zero = base == 0
    return torch.where(is_zero, 0.0, torch.where(is_zero, 1.0, base).pow(gamma))


def _check_alpha(fn: str, alpha: object) -> float:
    """``alpha`` in ``[0, 1]``, or negative to disable the weighting; NaN and bools refused."""
    alpha = check_real(fn, "alpha", alpha)
    if alpha > 1:
        raise ValueError(
            f"{fn}: alpha must be in [0, 1] (or negative to disable it), got {alpha!r}"
        )
    return alpha


def _check_pair(fn: str, first: str, a: object, second: str, b: object) -> tuple[Tensor, Tensor]:
    a = check_floating(fn, first, check_tensor(fn, first, a))
    b = check_tensor(fn, second, b)
    check_same_device(fn, **{first: a, second: b})
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: {first} and {second} must have the same shape, got {list(a.shape)} and {list(b.shape)}"
        )
    return a, b


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Focal loss of Lin et al. (2017) for independent sigmoid classifiers.

    ``FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)``, where ``p_t`` is the predicted
    probability of the true label. Computed from logits with ``binary_cross_entropy_with_logits``,
    so it needs no clamping of probabilities and stays finite for any logit.

    Args:
        inputs: ``Tensor[*]`` of logits.
        targets: ``Tensor[*]`` of the same shape, 1 for the positive class and 0 otherwise
            (values in between are allowed, as soft labels).
        alpha: weight of positives in ``[0, 1]``; negatives get ``1 - alpha``. A negative value
            disables the weighting.
        gamma: focusing exponent (2 in RetinaNet, 1.5 in EfficientDet; 0 gives cross-entropy).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        The loss, ``Tensor[*]`` for ``"none"``, a scalar otherwise. Same values and gradients
        as ``torchvision.ops.sigmoid_focal_loss``.
    """
    fn = "sigmoid_focal_loss"
    inputs, targets = _check_pair(fn, "inputs", inputs, "targets", targets)
    check_reduction(fn, reduction)
    _check_alpha(fn, alpha)
    gamma = check_positive(fn, "gamma", gamma, allow_zero=True)
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * _power(1 - p_t, gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def smooth_l1_loss(
    input: Tensor, target: Tensor, beta: float = 1.0 / 9.0, reduction: str = "none"
) -> Tensor:
    """Smooth L1 (Huber-like) loss of Fast R-CNN, with the transition point ``beta``.

    ``0.5 * d**2 / beta`` where ``|d| < beta``, ``|d| - 0.5 * beta`` elsewhere: quadratic near zero
    (a gradient that vanishes at the optimum), linear far away (a gradient bounded by 1, robust to
    outliers). ``beta = 1/9`` is the value of the RetinaNet code bases; ``beta = 0`` is plain L1.

    Args:
        input: ``Tensor[*]`` of predictions.
        target: ``Tensor[*]`` of targets, same shape.
        beta: where the quadratic part ends (>= 0).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        The loss, ``Tensor[*]`` for ``"none"``, a scalar otherwise. Same values as
        ``torch.nn.functional.smooth_l1_loss(input, target, beta=beta)``.
    """
    fn = "smooth_l1_loss"
    input, target = _check_pair(fn, "input", input, "target", target)
    check_reduction(fn, reduction)
    beta = check_positive(fn, "beta", beta, allow_zero=True)
    return _reduce(_smooth_l1(input, target, beta), reduction)


def _smooth_l1(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Elementwise :func:`smooth_l1_loss` without checks."""
    diff = torch.abs(input - target)
    if beta == 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)


# --------------------------------------------------------------------------- a one-stage detector
class DetectionLoss(NamedTuple):
    """The losses of one batch, as returned by :func:`detection_loss`, on the predictions' device."""

    classification: Tensor
    regression: Tensor
    total: Tensor
    num_positive: Tensor


DetectionLoss.classification.__doc__ = "The focal loss, a scalar."
DetectionLoss.regression.__doc__ = (
    "The box loss of the positive anchors, a scalar, normalised like the classification loss."
)
DetectionLoss.total.__doc__ = "``classification + regression``, the quantity to back-propagate."
DetectionLoss.num_positive.__doc__ = "``Tensor[B]`` (int64): the positive anchors of each image."


NORMALIZATIONS = ("batch", "image")


def detection_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    gt_boxes: Tensor | Sequence[Tensor],
    gt_labels: Tensor | Sequence[Tensor],
    matcher: Matcher | None = None,
    box_coder: BoxCoder | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    beta: float = 1.0 / 9.0,
    normalize: str = "batch",
) -> DetectionLoss:
    """Focal loss and smooth L1 box loss of a one-stage detector (RetinaNet), for a whole batch.

    Every anchor is matched to the ground truths of its image (``matcher`` on their IoU):
    positive anchors learn the class of their ground truth and the offsets that move them onto
    it (``box_coder.encode``), negative anchors learn "no class", anchors between the thresholds are
    ignored. The classification loss is :func:`sigmoid_focal_loss` summed over the classes and
    the anchors that are not ignored; the regression loss is :func:`smooth_l1_loss` summed over
    the four offsets of the positive anchors. Both are divided by the number of positive
    anchors (at least 1): over the whole batch (``normalize="batch"``, as Detectron2 and
    mmdetection do), or image by image and then averaged over the images
    (``normalize="image"``, as torchvision and the RetinaNet seeds do).

    The anchors are matched image by image (one IoU matrix ``[G_i, N]`` at a time, so memory
    does not grow with the batch times the largest box count); the losses are computed for the
    whole batch at once: the focal loss as if every entry were negative, then corrected at the
    one labelled entry of each positive anchor (no one-hot target tensor is built), and the boxes
    are encoded for the positive anchors only. An image without ground truth has only negative
    anchors and no regression loss.

    With ``matcher=Matcher(0.5, 0.4, allow_low_quality_matches=True)``, ``box_coder=BoxCoder()``,
    ``beta=0`` (L1) and ``normalize="image"``, the losses are those of torchvision's
    ``RetinaNetHead.compute_loss``. The RetinaNet seeds (no low-quality matches,
    ``BoxCoder((10, 10, 5, 5))``, ``beta=1/9``) give the same classification loss with
    ``normalize="image"`` and a quarter of the regression loss: they average the smooth L1 over
    the four offsets instead of summing it.

    Args:
        cls_logits: ``Tensor[B, N, C]``, one logit per anchor and class (no background class),
            anchors in the order of ``anchors``.
        box_deltas: ``Tensor[B, N, 4]``, the predicted ``(tx, ty, tw, th)`` of each anchor.
        anchors: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, with a positive width and height.
        gt_boxes: ``Tensor[B, G, 4]`` in ``(x1, y1, x2, y2)``, padded to ``G`` boxes per image
            (padding rows may hold anything), or a sequence of ``B`` tensors ``[G_i, 4]``.
            Real boxes must have a positive width and height.
        gt_labels: ``Tensor[B, G]`` of class indices in ``[0, C)`` with ``-1`` marking the
            padding, or a sequence of ``B`` integer tensors ``[G_i]``.
        matcher: assigns anchors to ground truths; by default
            ``Matcher(0.5, 0.4, allow_low_quality_matches=True)``: RetinaNet's thresholds, and
            every box keeps its best anchor (as in torchvision and Detectron2).
        box_coder: turns matched boxes into regression targets; by default ``BoxCoder()`` (unit
            weights, as in torchvision and Detectron).
        alpha: focal loss weight of the positives (negatives get ``1 - alpha``); a negative
            value disables the weighting.
        gamma: focal loss exponent (2 in RetinaNet, 1.5 in EfficientDet, 0 for cross-entropy).
        beta: smooth L1 transition point (default 1/9, the seeds' value; Detectron's RetinaNet
            uses 0.11); ``0`` gives the L1 loss.
        normalize: ``"batch"`` or ``"image"``, see above.

    Returns:
        A :class:`DetectionLoss` ``(classification, regression, total, num_positive)``.
        float16 and bfloat16 predictions are computed in float32 (a sum of a million loss terms
        overflows float16), and their losses are float32.
    """
    fn = "detection_loss"
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True) if matcher is None else matcher
    box_coder = BoxCoder() if box_coder is None else box_coder
    _check_settings(fn, matcher, box_coder, alpha, gamma, beta, normalize)
    cls_logits, box_deltas, anchors = _check_predictions(fn, cls_logits, box_deltas, anchors)
    batch_size, _, num_classes = cls_logits.shape
    gt_boxes, gt_labels = _padded_targets(fn, gt_boxes, gt_labels, batch_size, cls_logits.device)
    is_real = gt_labels >= 0  # [B, G]
    # values last, once every type, shape and device is known to be right
    check_box_values(fn, "anchors", anchors, strict=True)
    _check_target_values(fn, gt_boxes, gt_labels, is_real, num_classes)

    wide = cls_logits.dtype in (torch.float16, torch.bfloat16)
    logits = cls_logits.float() if wide else cls_logits
    dtype = logits.dtype
    # Everything was checked above: the steps below call unchecked internals.
    matched = _match_batch(anchors.to(dtype), gt_boxes.to(dtype), is_real, matcher)
    positive = matched >= 0  # [B, N]
    keep = matched != Matcher.BETWEEN_THRESHOLDS  # not ignored
    gt_index = matched.clamp(min=0)
    labels = torch.where(positive, gt_labels.gather(1, gt_index), 0)  # [B, N]
    cls_sums = _classification_sums(logits, labels, positive, keep, alpha, gamma)
    box_sums = _regression_sums(
        box_deltas.to(dtype), anchors.to(dtype), gt_boxes.to(dtype), gt_index, positive, box_coder,
        beta,
    )  # fmt: skip

    num_positive = positive.sum(dim=1)  # [B]
    if normalize == "batch":
        divisor = num_positive.sum().clamp(min=1).to(dtype)
        classification, regression = cls_sums.sum() / divisor, box_sums.sum() / divisor
    else:
        divisor = num_positive.clamp(min=1).to(dtype)
        # sum / B rather than mean(): an empty batch gives 0, not NaN
        classification = (cls_sums / divisor).sum() / max(batch_size, 1)
        regression = (box_sums / divisor).sum() / max(batch_size, 1)
    return DetectionLoss(classification, regression, classification + regression, num_positive)


def _focal_term(logits: Tensor, gamma: float) -> Tensor:
    """``sigmoid(x) ** gamma * softplus(x)``: the focal loss of logit ``x`` for target 0
    without its ``alpha`` weight, ``p ** gamma * -log(1 - p)`` computed from the logit.

    For target 1 the loss is the same function of ``-x``: ``(1 - p) ** gamma * -log(p)``.
    """
    return _power(torch.sigmoid(logits), gamma) * F.softplus(logits)


def _classification_sums(
    logits: Tensor, labels: Tensor, positive: Tensor, keep: Tensor, alpha: float, gamma: float
) -> Tensor:
    """Focal loss of each image, summed over classes and kept anchors: ``Tensor[B]``.

    The targets are one-hot rows for positive anchors and zero rows for the others: nearly every
    entry is a negative. So the loss is computed as if every entry were negative, and then the
    one entry of each positive anchor (its labelled class, gathered: ``[B, N]``, not
    ``[B, N, C]``) is switched from its negative to its positive loss. No one-hot target tensor
    is built; this saves about half the work of ``sigmoid_focal_loss(logits, one_hot)``.
    """
    weight_pos, weight_neg = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
    as_negative = _focal_term(logits, gamma).sum(dim=2)  # [B, N]
    as_negative = torch.where(keep, as_negative, 0.0).sum(dim=1)
    label_logits = logits.gather(2, labels.unsqueeze(2)).squeeze(2)  # [B, N]
    switch = weight_pos * _focal_term(-label_logits, gamma) - weight_neg * _focal_term(
        label_logits, gamma
    )
    return weight_neg * as_negative + torch.where(positive, switch, 0.0).sum(dim=1)


def _regression_sums(
    deltas: Tensor,
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_index: Tensor,
    positive: Tensor,
    box_coder: BoxCoder,
    beta: float,
) -> Tensor:
    """Box loss of each image, summed over the offsets of its positive anchors: ``Tensor[B]``.

    Only the positive anchors are encoded (a few hundred of the ``B * N``); finding them reads
    the mask back to the host once.
    """
    image, anchor = positive.nonzero(as_tuple=True)  # [P] each
    boxes = gt_boxes[image, gt_index[image, anchor]]  # [P, 4]
    targets = box_coder._encode(boxes, anchors[anchor])
    per_anchor = _smooth_l1(deltas[image, anchor], targets, beta).sum(dim=1)  # [P]
    return per_anchor.new_zeros(len(positive)).index_add(0, image, per_anchor)


def _match_batch(anchors: Tensor, gt_boxes: Tensor, is_real: Tensor, matcher: Matcher) -> Tensor:
    """``matcher``'s decisions for every image: ``Tensor[B, N]`` (int64), ground-truth indices
    into the padded ``G`` dimension.

    Image by image, on that image's real boxes only: the IoU matrix of one image is
    ``[G_i, N]``, so memory grows with the boxes of the largest image, not with
    ``B * G * N`` (8 images at 512 x 512, one of them with 300 boxes: 1.35 GB at once). Finding
    the real rows reads the padding mask back to the host once per batch.
    """
    batch_size, num_gt, _ = gt_boxes.shape
    image, row = is_real.nonzero(as_tuple=True)  # real boxes, image by image, rows in order
    rows_of_image = row.split(torch.bincount(image, minlength=batch_size).tolist())
    matched = []
    for b, rows in enumerate(rows_of_image):
        if len(rows) == 0:  # no ground truth: every anchor is background
            matched.append(anchors.new_full((len(anchors),), -1, dtype=torch.int64))
            continue
        matches = matcher._match(_box_iou(gt_boxes[b, rows], anchors))  # [N], indices into rows
        matched.append(torch.where(matches >= 0, rows[matches.clamp(min=0)], matches))
    if not matched:
        return torch.empty((0, len(anchors)), dtype=torch.int64, device=anchors.device)
    return torch.stack(matched)


def _check_settings(
    fn: str,
    matcher: object,
    box_coder: object,
    alpha: float,
    gamma: float,
    beta: float,
    normalize: str,
) -> None:
    if not isinstance(matcher, Matcher):
        raise TypeError(f"{fn}: matcher must be a detlib.Matcher, got {type(matcher).__name__}")
    if not isinstance(box_coder, BoxCoder):
        raise TypeError(
            f"{fn}: box_coder must be a detlib.BoxCoder, got {type(box_coder).__name__}"
        )
    _check_alpha(fn, alpha)
    check_positive(fn, "gamma", gamma, allow_zero=True)
    check_positive(fn, "beta", beta, allow_zero=True)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"{fn}: normalize must be 'batch' or 'image', got {normalize!r}")


def _check_predictions(
    fn: str, cls_logits: object, box_deltas: object, anchors: object
) -> tuple[Tensor, Tensor, Tensor]:
    cls_logits = check_floating(fn, "cls_logits", check_tensor(fn, "cls_logits", cls_logits))
    box_deltas = check_floating(fn, "box_deltas", check_tensor(fn, "box_deltas", box_deltas))
    anchors = check_floating(fn, "anchors", check_box_shape(fn, "anchors", anchors))
    check_same_device(fn, cls_logits=cls_logits, box_deltas=box_deltas, anchors=anchors)
    if cls_logits.dim() != 3 or cls_logits.shape[2] == 0:
        raise ValueError(
            f"{fn}: cls_logits must have shape [B, N, C] with C >= 1 classes, "
            f"got {list(cls_logits.shape)}"
        )
    batch_size, num_anchors, _ = cls_logits.shape
    if box_deltas.shape != (batch_size, num_anchors, 4):
        raise ValueError(
            f"{fn}: box_deltas must have shape [B, N, 4] = {[batch_size, num_anchors, 4]} like "
            f"cls_logits {list(cls_logits.shape)}, got {list(box_deltas.shape)}"
        )
    if anchors.shape[0] != num_anchors:
        raise ValueError(
            f"{fn}: anchors must have shape [N, 4] with N = {num_anchors} (the N of cls_logits "
            f"[B, N, C]), got {list(anchors.shape)}"
        )
    return cls_logits, box_deltas, anchors


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _padded_targets(
    fn: str, gt_boxes: object, gt_labels: object, batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Ground truths as ``Tensor[B, G, 4]`` boxes and ``Tensor[B, G]`` int64 labels (-1: padding).

    ``G`` is at least 1 (a padding row when no image has a box), so that the steps after it need
    no special case.
    """
    if isinstance(gt_boxes, Tensor) and isinstance(gt_labels, Tensor):
        boxes, labels = gt_boxes, gt_labels
        if boxes.dim() != 3 or boxes.shape[0] != batch_size or boxes.shape[2] != 4:
            raise ValueError(
                f"{fn}: gt_boxes must have shape [B, G, 4] with B = {batch_size} (the B of "
                f"cls_logits), got {list(boxes.shape)}"
            )
        if labels.shape != boxes.shape[:2]:
            raise ValueError(
                f"{fn}: gt_labels must have shape [B, G] = {list(boxes.shape[:2])} like gt_boxes, "
                f"got {list(labels.shape)}"
            )
        check_floating(fn, "gt_boxes", boxes)
        if not _is_integer(labels):
            raise TypeError(f"{fn}: gt_labels must have an integer dtype, got {labels.dtype}")
    elif isinstance(gt_boxes, Sequence) and isinstance(gt_labels, Sequence):
        boxes, labels = _pad(fn, gt_boxes, gt_labels, batch_size, device)
    else:
        raise TypeError(
            f"{fn}: gt_boxes and gt_labels must both be padded tensors or both be sequences of "
            f"tensors (one per image), got {type(gt_boxes).__name__} and "
            f"{type(gt_labels).__name__}"
        )
    for name, t in (("gt_boxes", boxes), ("gt_labels", labels)):
        if t.device != device:
            raise ValueError(
                f"{fn}: cls_logits is on {device} but {name} is on {t.device}; "
                "move them to the same device"
            )
    labels = labels.long()
    if boxes.shape[1] == 0:
        boxes = boxes.new_zeros((batch_size, 1, 4))
        labels = labels.new_full((batch_size, 1), -1)
    return boxes, labels


def _pad(
    fn: str,
    gt_boxes: Sequence[object],
    gt_labels: Sequence[object],
    batch_size: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Stack per-image ``[G_i, 4]`` boxes and ``[G_i]`` labels into padded tensors."""
    if len(gt_boxes) != batch_size or len(gt_labels) != batch_size:
        raise ValueError(
            f"{fn}: gt_boxes and gt_labels must hold one tensor per image ({batch_size} images "
            f"in cls_logits), got {len(gt_boxes)} and {len(gt_labels)}"
        )
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        check_floating(fn, f"gt_boxes[{i}]", check_tensor(fn, f"gt_boxes[{i}]", boxes))
        check_tensor(fn, f"gt_labels[{i}]", labels)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{fn}: gt_boxes[{i}] must have shape [G, 4], got {list(boxes.shape)}")
        if labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"{fn}: gt_labels[{i}] must have shape [G] = {list(boxes.shape[:1])} like "
                f"gt_boxes[{i}], got {list(labels.shape)}"
            )
        if not _is_integer(labels):
            raise TypeError(f"{fn}: gt_labels[{i}] must have an integer dtype, got {labels.dtype}")
        check_same_device(fn, **{f"gt_boxes[{i}]": boxes, f"gt_labels[{i}]": labels})
    if batch_size == 0:
        return torch.zeros((0, 0, 4), device=device), torch.zeros((0, 0), device=device).long()
    boxes = pad_sequence(list(gt_boxes), batch_first=True)  # [B, G, 4], zeros as padding
    labels = pad_sequence([l.long() for l in gt_labels], batch_first=True, padding_value=-1)
    return boxes, labels


def _check_target_values(
    fn: str, gt_boxes: Tensor, gt_labels: Tensor, is_real: Tensor, num_classes: int
) -> None:
    """Real boxes valid with a positive size, labels in ``[-1, C)`` (when value checks are on)."""
    if not value_checks_enabled() or gt_labels.numel() == 0:
        return
    low, high = torch.aminmax(gt_labels)
    low, high = torch.stack((low, high)).tolist()
    if low < -1 or high >= num_classes:
        raise ValueError(
            f"{fn}: gt_labels must be class indices in [0, {num_classes}) (C = {num_classes} "
            f"classes in cls_logits) or -1 for padding, got values from {low} to {high}"
        )
    placeholder = gt_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    real_boxes = torch.where(is_real.unsqueeze(2), gt_boxes, placeholder)
    check_boxes(fn, "gt_boxes", real_boxes, batched=True, strict=True)
