"""Losses of one-stage detectors: the focal loss for classes and smooth L1 for boxes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detlib._checks import check_floating, check_reduction, check_same_device, check_tensor


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


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
    if alpha > 1:
        raise ValueError(
            f"{fn}: alpha must be in [0, 1] (or negative to disable it), got {alpha!r}"
        )
    if gamma < 0:
        raise ValueError(f"{fn}: gamma must be >= 0, got {gamma!r}")
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
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
    if not beta >= 0:
        raise ValueError(f"{fn}: beta must be >= 0, got {beta!r}")
    diff = torch.abs(input - target)
    if beta == 0:
        return _reduce(diff, reduction)
    loss = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction)
