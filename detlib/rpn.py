"""Two-stage detection (Faster R-CNN): the region proposal network and the inputs of the second stage.

Faster R-CNN (Ren et al., 2015) detects in two stages that share one backbone:

1. the **region proposal network** (RPN) slides a small head over the feature map(s) and, for
   every anchor, predicts an objectness logit and four box offsets (:class:`RPNHead`). During
   training, anchors are labelled object / background / ignored by their IoU with the ground
   truth (:func:`label_anchors`), a balanced mini-batch of them is drawn
   (:func:`sample_balanced`) and :func:`rpn_loss` scores it. At all times the offsets are
   decoded into boxes and filtered into a few hundred **proposals** (:func:`generate_proposals`);
2. the **second stage** pools a fixed-size feature for each proposal (RoI pooling,
   :mod:`detlib.roi`; on a feature pyramid each RoI reads the level that suits its size,
   :func:`assign_fpn_levels` and :func:`multiscale_roi_align`) and classifies it and refines its
   box (:class:`FastRCNNHead`). During training the proposals are matched to the ground truth
   and sampled (:func:`sample_proposals`), and :func:`fast_rcnn_loss` scores the result.

Every step gives the numbers of its torchvision counterpart (``torchvision.models.detection``'s
``RPNHead``, ``RegionProposalNetwork``, ``RoIHeads``, ``fastrcnn_loss``, ``TwoMLPHead`` and
``FastRCNNPredictor``, and ``torchvision.ops.MultiScaleRoIAlign``); the differences, all at edge
cases, are listed in each docstring. Everything is batched over the images of a batch where the
shapes allow it, and works on any device and floating dtype.
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
    check_boxes,
    check_floating,
    check_image_size,
    check_positive,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)
from detlib.boxes import box_iou
from detlib.coder import BoxCoder
from detlib.matching import Matcher
from detlib.nms import batched_nms, split_by_image
from detlib.roi import roi_align
from detlib.sampling import labels_from_matches

__all__ = [
    "FastRCNNHead",
    "RPNHead",
    "RoISamples",
    "assign_fpn_levels",
    "fast_rcnn_loss",
    "generate_proposals",
    "label_anchors",
    "multiscale_roi_align",
    "rpn_loss",
    "sample_balanced",
    "sample_proposals",
]


# --------------------------------------------------------------------------------------------
# Small argument checks
# --------------------------------------------------------------------------------------------


def _check_int(fn: str, name: str, value: object, minimum: int) -> int:
    """Raise unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_fraction(fn: str, name: str, value: object) -> float:
    """Raise unless ``value`` is a number in ``[0, 1]``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{fn}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_box_list(fn: str, name: str, boxes: object, strict: bool = False) -> list[Tensor]:
    """Raise unless ``boxes`` is a list or tuple of ``Tensor[L_i, 4]`` boxes."""
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(
            f"{fn}: {name} must be a list with one Tensor[L, 4] of (x1, y1, x2, y2) boxes per "
            f"image, got {type(boxes).__name__}"
        )
    for i, b in enumerate(boxes):
        check_boxes(fn, f"{name}[{i}]", b, strict=strict)
    return list(boxes)


def _check_image_sizes(fn: str, image_size: object, num_images: int) -> list[tuple[int, int]]:
    """``(height, width)`` for every image, from one size or a list of ``num_images`` sizes."""
    if (
        isinstance(image_size, (tuple, list, torch.Size))
        and len(image_size) == 2
        and all(isinstance(s, numbers.Integral) for s in image_size)
    ):
        return [check_image_size(fn, "image_size", image_size)] * num_images
    if not isinstance(image_size, (tuple, list)) or len(image_size) != num_images:
        raise ValueError(
            f"{fn}: image_size must be one (height, width) or a list of {num_images} of them "
            f"(one per image), got {image_size!r}"
        )
    return [check_image_size(fn, f"image_size[{i}]", s) for i, s in enumerate(image_size)]


# --------------------------------------------------------------------------------------------
# The RPN head
# --------------------------------------------------------------------------------------------


class RPNHead(nn.Module):
    """The RPN's head: a 3x3 convolution and ReLU, then two sibling 1x1 convolutions.

    The 3x3 convolution looks at a small window around every cell; ``cls_logits`` gives one
    objectness logit per anchor (``A`` channels) and ``bbox_pred`` four offsets per anchor
    (``4A`` channels, anchor-major: channel ``4a + k`` is offset ``k`` of anchor ``a``). The same
    head runs on every level of a pyramid. The outputs are reshaped so that row ``n`` describes
    anchor ``n`` of :class:`detlib.AnchorGenerator` (level, row, column, anchor).

    One logit and a sigmoid per anchor, as in torchvision; the paper's two-way softmax is the
    same model (``softmax([a, b])[1] == sigmoid(b - a)``) with twice the output channels.
    Weights are initialised from ``N(0, 0.01)`` and biases to 0, as in the paper and
    torchvision; the parameter names match torchvision's ``RPNHead``, so its state dict loads.

    Args:
        in_channels: channels of the feature map(s).
        num_anchors: anchors per cell, ``A``.
        conv_depth: number of 3x3 convolution + ReLU blocks before the two 1x1 layers.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        fn = "RPNHead"
        in_channels = _check_int(fn, "in_channels", in_channels, 1)
        num_anchors = _check_int(fn, "num_anchors", num_anchors, 1)
        conv_depth = _check_int(fn, "conv_depth", conv_depth, 0)
        self.in_channels, self.num_anchors = in_channels, num_anchors
        self.conv = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True)
                )
                for _ in range(conv_depth)
            ]
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Objectness logits and box offsets for every anchor.

        Args:
            features: one ``Tensor[B, C, H, W]`` or a list of them, one per pyramid level.

        Returns:
            ``(objectness, deltas)``: ``Tensor[B, N]`` logits and ``Tensor[B, N, 4]`` offsets
            ``(tx, ty, tw, th)``, with ``N = sum_l H_l * W_l * A`` in anchor order.
        """
        maps = self._check_features(features)
        objectness, deltas = [], []
        for feature in maps:
            hidden = self.conv(feature)
            batch = feature.shape[0]
            # [B, A, H, W] -> [B, H, W, A] -> [B, H * W * A]: cells row by row, anchors innermost.
            objectness.append(self.cls_logits(hidden).permute(0, 2, 3, 1).reshape(batch, -1))
            deltas.append(self.bbox_pred(hidden).permute(0, 2, 3, 1).reshape(batch, -1, 4))
        return torch.cat(objectness, dim=1), torch.cat(deltas, dim=1)

    def _check_features(self, features: object) -> list[Tensor]:
        fn = "RPNHead"
        maps = [features] if isinstance(features, Tensor) else features
        if not isinstance(maps, (list, tuple)) or not maps:
            raise TypeError(
                f"{fn}: features must be a Tensor[B, C, H, W] or a non-empty list of them, "
                f"got {type(features).__name__}"
            )
        for i, feature in enumerate(maps):
            name = "features" if isinstance(features, Tensor) else f"features[{i}]"
            check_floating(fn, name, check_tensor(fn, name, feature))
            if feature.dim() != 4 or feature.shape[1] != self.in_channels:
                raise ValueError(
                    f"{fn}: {name} must have shape [B, {self.in_channels}, H, W], "
                    f"got {list(feature.shape)}"
                )
            if feature.shape[0] != maps[0].shape[0]:
                raise ValueError(
                    f"{fn}: every level must have the same batch size, got {maps[0].shape[0]} "
                    f"and {feature.shape[0]} ({name})"
                )
        return list(maps)


# --------------------------------------------------------------------------------------------
# RPN training targets
# --------------------------------------------------------------------------------------------


def label_anchors(
    anchors: Tensor,
    gt_boxes: Sequence[Tensor],
    fg_iou_thresh: float = 0.7,
    bg_iou_thresh: float = 0.3,
    allow_low_quality_matches: bool = True,
    ignore: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Label every anchor of every image object (1), background (0) or ignored (-1).

    The RPN rule of Faster R-CNN, through :class:`detlib.Matcher`: an anchor is an object if its
    IoU with some ground-truth box is at least ``fg_iou_thresh``, or if it is the best anchor
    of some box (ties included; ``allow_low_quality_matches``); background if its best IoU is
    below ``bg_iou_thresh``; ignored in between. Anchors marked in ``ignore`` (the original
    Faster R-CNN ignores the anchors that cross the image border) take no part in the matching,
    so they cannot be a box's best anchor either, and are labelled -1. An image without boxes
    has only background anchors.

    Same labels and matched boxes as ``RegionProposalNetwork.assign_targets_to_anchors`` of
    torchvision (which has no ``ignore``), except for images without boxes: there the matched
    boxes are the anchors themselves, whose regression targets are 0, instead of zero boxes,
    whose targets are infinite. Neither enters the loss.

    Args:
        anchors: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, the same for every image.
        gt_boxes: one ``Tensor[G_i, 4]`` per image, in ``(x1, y1, x2, y2)``.
        fg_iou_thresh: IoU from which an anchor is an object (0.7).
        bg_iou_thresh: IoU below which an anchor is background (0.3).
        allow_low_quality_matches: also make each box's best anchor(s) objects.
        ignore: optional ``Tensor[N]`` of bools, anchors to leave out.

    Returns:
        ``(labels, matched_boxes)``: ``Tensor[B, N]`` of 1, 0 and -1 in the dtype of
        ``anchors``, and ``Tensor[B, N, 4]``, the box each anchor is matched to (meaningful
        where the label is 1).
    """
    fn = "label_anchors"
    check_floating(fn, "anchors", check_boxes(fn, "anchors", anchors))
    gt_boxes = _check_box_list(fn, "gt_boxes", gt_boxes)
    for i, boxes in enumerate(gt_boxes):
        check_same_device(fn, anchors=anchors, **{f"gt_boxes[{i}]": boxes})
    if ignore is not None:
        check_tensor(fn, "ignore", ignore)
        if ignore.dtype != torch.bool or ignore.shape != anchors.shape[:1]:
            raise ValueError(
                f"{fn}: ignore must be a bool Tensor[N] with N = {len(anchors)} anchors, got "
                f"{ignore.dtype} of shape {list(ignore.shape)}"
            )
        check_same_device(fn, anchors=anchors, ignore=ignore)
    matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches)
    num_anchors = len(anchors)
    labels = anchors.new_zeros((len(gt_boxes), num_anchors))
    matched = anchors.new_zeros((len(gt_boxes), num_anchors, 4))
    for image, boxes in enumerate(gt_boxes):
        if len(boxes) == 0:
            matched[image] = anchors
        else:
            boxes = boxes.to(anchors.dtype)
            iou = box_iou(boxes, anchors)  # [G, N]
            if ignore is not None:
                iou = iou.masked_fill(ignore, -1.0)  # never matched, never a box's best anchor
            matches = matcher(iou)
            matched[image] = boxes[matches.clamp(min=0)]
            labels[image] = labels_from_matches(matches).to(labels.dtype)
        if ignore is not None:
            labels[image, ignore] = -1.0
    return labels, matched


def sample_balanced(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw a mini-batch of positives and negatives at random, for every row of ``labels``.

    Up to ``int(batch_size_per_image * positive_fraction)`` positives (labels >= 1) are drawn
    without replacement; negatives (labels == 0) fill the rest of the batch as far as they can;
    labels below 0 are never drawn. Faster R-CNN's RPN draws 256 anchors with up to half
    positives; its second stage 128 RoIs with up to a quarter positives. The same rule as
    torchvision's ``BalancedPositiveNegativeSampler``, with different random draws.

    All rows at once: every element gets a random key, and the elements with the smallest keys
    among the positives (and among the negatives) of a row are drawn, so there is no loop over
    images and no device-to-host copy. :func:`detlib.sampling.balanced_sample` applies the same
    rule to one image with torchvision's random draws (the same picks for the same seed); use it
    to compare with torchvision, and this one to sample a batch.

    Args:
        labels: ``Tensor[N]`` or ``Tensor[B, N]`` (one row per image), any real dtype.
        batch_size_per_image: elements drawn per row, at most.
        positive_fraction: largest share of positives in ``[0, 1]``.
        generator: random generator. The keys are drawn on its device (the CPU for a CPU
            generator, so that CPU and GPU runs draw the same elements) and copied to the device
            of ``labels``.

    Returns:
        ``(positive, negative)``: two bool tensors of the shape of ``labels``.
    """
    fn = "sample_balanced"
    check_tensor(fn, "labels", labels)
    if labels.dim() not in (1, 2) or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"{fn}: labels must be a real Tensor[N] or Tensor[B, N], got {labels.dtype} of shape "
            f"{list(labels.shape)}"
        )
    batch_size = _check_int(fn, "batch_size_per_image", batch_size_per_image, 0)
    fraction = _check_fraction(fn, "positive_fraction", positive_fraction)
    rows = labels if labels.dim() == 2 else labels[None]
    is_positive, is_negative = rows >= 1, rows == 0
    num_positive = is_positive.sum(dim=1).clamp(max=int(batch_size * fraction))
    num_negative = torch.minimum(is_negative.sum(dim=1), batch_size - num_positive)

    key_device = generator.device if generator is not None else rows.device
    keys = torch.rand(rows.shape, generator=generator, device=key_device).to(rows.device)
    # Positives sort first, negatives second, the rest last; ranks then count within each group.
    keys = keys + torch.where(is_positive, 0.0, torch.where(is_negative, 2.0, 4.0))
    order = keys.argsort(dim=1)
    position = torch.arange(rows.shape[1], device=rows.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, position)
    positives_in_row = is_positive.sum(dim=1, keepdim=True)
    positive = is_positive & (rank < num_positive[:, None])
    negative = is_negative & (rank - positives_in_row < num_negative[:, None])
    if labels.dim() == 1:
        return positive[0], negative[0]
    return positive, negative


def rpn_loss(
    objectness: Tensor,
    deltas: Tensor,
    regression_targets: Tensor,
    positive: Tensor,
    negative: Tensor,
    beta: float = 1.0 / 9.0,
) -> tuple[Tensor, Tensor]:
    """The RPN's two losses on a sampled mini-batch of anchors.

    * objectness: binary cross-entropy of the logits, target 1 for the sampled positives and 0 for
      the sampled negatives, **averaged over the sampled anchors**;
    * boxes: smooth L1 (``beta = 1/9``, i.e. the paper's ``sigma = 3``) between the predicted
      and target offsets of the sampled positives, summed over the four coordinates and the
      positives and **divided by the number of sampled anchors** (not of positives).

    These are torchvision's normalisations (``RegionProposalNetwork.compute_loss``), and those
    of the paper up to a constant: it divides the box term by the number of anchor positions
    (about 2,400) and weights it by ``lambda = 10``, which is ``1 / 240`` against ``1 / 256``
    here. Both losses come back separately; the total is their sum. Unsampled anchors take no
    part, also not through NaN or infinite values.

    Args:
        objectness: ``Tensor[...]`` of logits, e.g. ``[B, N]``.
        deltas: ``Tensor[..., 4]`` of predicted offsets.
        regression_targets: ``Tensor[..., 4]``, the offsets that turn each anchor into its box.
        positive: bool ``Tensor[...]``, the sampled positives.
        negative: bool ``Tensor[...]``, the sampled negatives.
        beta: where smooth L1 turns from quadratic to linear.

    Returns:
        ``(objectness_loss, box_loss)``, two scalars; both 0 (and still differentiable) when no
        anchor is sampled.
    """
    fn = "rpn_loss"
    check_floating(fn, "objectness", check_tensor(fn, "objectness", objectness))
    check_floating(fn, "deltas", check_tensor(fn, "deltas", deltas))
    check_floating(
        fn, "regression_targets", check_tensor(fn, "regression_targets", regression_targets)
    )
    for name, mask in (("positive", positive), ("negative", negative)):
        check_tensor(fn, name, mask)
        if mask.dtype != torch.bool or mask.shape != objectness.shape:
            raise ValueError(
                f"{fn}: {name} must be a bool tensor of the shape of objectness "
                f"{list(objectness.shape)}, got {mask.dtype} of shape {list(mask.shape)}"
            )
    expected = (*objectness.shape, 4)
    for name, t in (("deltas", deltas), ("regression_targets", regression_targets)):
        if t.shape != expected:
            raise ValueError(f"{fn}: {name} must have shape {list(expected)}, got {list(t.shape)}")
    check_same_device(
        fn,
        objectness=objectness,
        deltas=deltas,
        regression_targets=regression_targets,
        positive=positive,
        negative=negative,
    )
    if not beta >= 0:
        raise ValueError(f"{fn}: beta must be >= 0, got {beta!r}")

    sampled = positive | negative
    num_sampled = sampled.sum().clamp(min=1).to(objectness.dtype)
    # torch.where on the inputs and on the losses (not a product with the mask): NaN or infinite
    # values of unsampled anchors reach neither the losses nor the gradients.
    logits = torch.where(sampled, objectness, 0.0)
    bce = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
    objectness_loss = torch.where(sampled, bce, 0.0).sum() / num_sampled
    on_positives = positive[..., None]
    predicted = torch.where(on_positives, deltas, 0.0)
    targets = torch.where(on_positives, regression_targets.to(deltas.dtype), 0.0)
    box = F.smooth_l1_loss(predicted, targets, beta=beta, reduction="none")
    box_loss = box.sum() / num_sampled
    return objectness_loss, box_loss


# --------------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------------


def generate_proposals(
    anchors: Tensor,
    objectness: Tensor,
    deltas: Tensor,
    image_size: tuple[int, int] | Sequence[tuple[int, int]],
    num_anchors_per_level: Sequence[int] | None = None,
    pre_nms_top_n: int = 2000,
    post_nms_top_n: int = 2000,
    nms_thresh: float = 0.7,
    min_size: float = 1e-3,
    score_thresh: float = 0.0,
    box_coder: BoxCoder | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Turn the RPN's outputs into proposals, for all images at once.

    For every image:

    1. on every pyramid level, keep the ``pre_nms_top_n`` anchors with the highest objectness
       (ranking before decoding: decoding thousands of boxes that NMS would drop costs time);
    2. decode their offsets into boxes (``box_coder``, default weights ``(1, 1, 1, 1)``);
    3. clip the boxes to the image;
    4. drop boxes narrower or lower than ``min_size`` pixels, and scores below ``score_thresh``;
    5. non-maximum suppression at ``nms_thresh``, level by level (one :func:`detlib.batched_nms`
       call for the whole batch: each (image, level) pair is a category);
    6. keep the ``post_nms_top_n`` best boxes of the image.

    The order of torchvision's ``RegionProposalNetwork.filter_proposals`` (which the tests
    check, box for box); the original Faster R-CNN drops small boxes (``min_size = 16``) before
    its top-k. The outputs are detached: no gradient flows through the proposals. NMS ranks by
    the logits, which keeps their order where the sigmoid rounds several of them to 1.0;
    torchvision ranks by the probabilities, so the two may order such ties differently.

    Args:
        anchors: ``Tensor[N, 4]``, the anchors of one image, in the order of the predictions.
        objectness: ``Tensor[B, N]`` of logits.
        deltas: ``Tensor[B, N, 4]`` of predicted offsets.
        image_size: ``(height, width)`` of every image, or a list of one per image.
        num_anchors_per_level: anchors of each level, in order (default: a single level).
        pre_nms_top_n: anchors kept per level and image before NMS.
        post_nms_top_n: proposals kept per image after NMS.
        nms_thresh: IoU above which NMS suppresses a box.
        min_size: smallest width and height, in pixels.
        score_thresh: smallest objectness probability kept.
        box_coder: how offsets are decoded (default ``BoxCoder((1, 1, 1, 1))``).

    Returns:
        ``(boxes, scores)``: for each image a ``Tensor[K_i, 4]`` of proposals and a
        ``Tensor[K_i]`` of their objectness probabilities, best first.
    """
    fn = "generate_proposals"
    anchors, objectness, deltas = _check_rpn_outputs(fn, anchors, objectness, deltas)
    num_images, num_anchors = objectness.shape
    sizes = _check_image_sizes(fn, image_size, num_images)
    levels = _check_levels(fn, num_anchors_per_level, num_anchors)
    pre_nms_top_n = _check_int(fn, "pre_nms_top_n", pre_nms_top_n, 0)
    post_nms_top_n = _check_int(fn, "post_nms_top_n", post_nms_top_n, 0)
    min_size = check_positive(fn, "min_size", min_size, allow_zero=True)
    box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0)) if box_coder is None else box_coder
    device = objectness.device
    if num_images == 0:
        return [], []

    # 1. Top-k per level and image, on the logits.
    index, level = _top_n_per_level(objectness, levels, pre_nms_top_n)  # [B, K] each
    logits = objectness.gather(1, index)
    picked = deltas.gather(1, index[..., None].expand(-1, -1, 4))
    # 2. Decode (element by element, so decoding only the kept anchors gives the same numbers).
    boxes = box_coder.decode(picked.reshape(-1, 4), anchors[index.reshape(-1)])
    boxes = boxes.reshape(num_images, -1, 4)
    # 3. Clip to each image.
    limits = torch.tensor([[w, h] for h, w in sizes], dtype=boxes.dtype, device=device)
    xy = boxes.view(num_images, -1, 2, 2).clamp(min=0)
    boxes = torch.minimum(xy, limits[:, None, None, :]).view(num_images, -1, 4)
    # 4. Small boxes and low scores.
    scores = torch.sigmoid(logits)
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    keep = (widths >= min_size) & (heights >= min_size) & (scores >= score_thresh)
    image = torch.arange(num_images, device=device)[:, None].expand_as(keep)
    boxes, logits, scores, image = boxes[keep], logits[keep], scores[keep], image[keep]
    # 5. NMS within each (image, level).
    category = image * len(levels) + level[keep]
    kept = batched_nms(boxes, logits, category, nms_thresh)
    # 6. Best post_nms_top_n per image (batched_nms orders by score).
    per_image = split_by_image(kept, image[kept], num_images, post_nms_top_n)
    return [boxes[rows] for rows in per_image], [scores[rows] for rows in per_image]


def _check_rpn_outputs(
    fn: str, anchors: object, objectness: object, deltas: object
) -> tuple[Tensor, Tensor, Tensor]:
    """Anchors ``[N, 4]``, objectness ``[B, N]`` and deltas ``[B, N, 4]``, detached."""
    check_boxes(fn, "anchors", anchors)
    check_floating(fn, "objectness", check_tensor(fn, "objectness", objectness))
    check_floating(fn, "deltas", check_tensor(fn, "deltas", deltas))
    if objectness.dim() != 2 or objectness.shape[1] != len(anchors):
        raise ValueError(
            f"{fn}: objectness must have shape [B, N] with N = {len(anchors)} anchors, "
            f"got {list(objectness.shape)}"
        )
    if deltas.shape != (*objectness.shape, 4):
        raise ValueError(
            f"{fn}: deltas must have shape {[*objectness.shape, 4]}, got {list(deltas.shape)}"
        )
    check_same_device(fn, anchors=anchors, objectness=objectness, deltas=deltas)
    return anchors.detach(), objectness.detach(), deltas.detach()


def _check_levels(fn: str, num_anchors_per_level: object, num_anchors: int) -> list[int]:
    if num_anchors_per_level is None:
        return [num_anchors]
    if not isinstance(num_anchors_per_level, Sequence) or not all(
        isinstance(n, numbers.Integral) and n >= 0 for n in num_anchors_per_level
    ):
        raise TypeError(
            f"{fn}: num_anchors_per_level must be a sequence of non-negative ints, "
            f"got {num_anchors_per_level!r}"
        )
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(
            f"{fn}: num_anchors_per_level must add up to the {num_anchors} anchors, "
            f"got {list(num_anchors_per_level)} (sum {sum(num_anchors_per_level)})"
        )
    return [int(n) for n in num_anchors_per_level]


def _top_n_per_level(objectness: Tensor, levels: list[int], top_n: int) -> tuple[Tensor, Tensor]:
    """Indices (into all anchors) of the ``top_n`` best logits of each level, best first within
    a level, and the level of each: two int64 ``Tensor[B, K]``."""
    indices, level_of = [], []
    offset = 0
    for level, count in enumerate(levels):
        k = min(top_n, count)
        best = objectness[:, offset : offset + count].topk(k, dim=1).indices + offset
        indices.append(best)
        level_of.append(torch.full_like(best, level))
        offset += count
    return torch.cat(indices, dim=1), torch.cat(level_of, dim=1)


# --------------------------------------------------------------------------------------------
# Second stage: RoI sampling, level assignment, pooling, head and loss
# --------------------------------------------------------------------------------------------


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
    3. :func:`sample_balanced` draws ``batch_size_per_image`` candidates per image, up to
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
        generator: random generator for the draw, see :func:`sample_balanced`.

    Returns:
        :class:`RoISamples`, one tensor per image in each field.
    """
    fn = "sample_proposals"
    proposals = _check_box_list(fn, "proposals", proposals, strict=True)
    gt_boxes = _check_box_list(fn, "gt_boxes", gt_boxes, strict=True)
    gt_labels = _check_labels(fn, gt_labels, gt_boxes)
    if len(proposals) != len(gt_boxes):
        raise ValueError(
            f"{fn}: proposals and gt_boxes must have one tensor per image, got {len(proposals)} "
            f"and {len(gt_boxes)}"
        )
    for i, (p, g, lab) in enumerate(zip(proposals, gt_boxes, gt_labels)):
        check_same_device(fn, **{f"proposals[{i}]": p, f"gt_boxes[{i}]": g, f"gt_labels[{i}]": lab})
    box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0)) if box_coder is None else box_coder
    matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)

    candidates, labels, matches = [], [], []
    for boxes, gt, gt_class in zip(proposals, gt_boxes, gt_labels):
        gt = gt.to(boxes.dtype)
        boxes = torch.cat((boxes, gt)) if add_gt_boxes else boxes
        match = matcher(box_iou(gt, boxes)) if len(gt) else matcher(boxes.new_zeros(0, len(boxes)))
        label = gt_class[match.clamp(min=0)] if len(gt) else match.new_zeros(len(boxes))
        label = torch.where(match == Matcher.BELOW_LOW_THRESHOLD, 0, label)
        label = torch.where(match == Matcher.BETWEEN_THRESHOLDS, -1, label)
        candidates.append(boxes)
        labels.append(label)
        matches.append(match)

    positive, negative = sample_balanced(
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
        out.regression_targets.append(box_coder.encode(targets_of, rois))
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
        if value_checks_enabled() and len(labels) and bool((labels < 1).any()):
            raise ValueError(
                f"{fn}: gt_labels[{i}] must hold classes >= 1 (0 is the background), "
                f"got {labels.min().item()}"
            )
    return list(gt_labels)


def _pad_rows(rows: list[Tensor], value: int) -> Tensor:
    """Stack 1-D tensors of different lengths into ``[B, max_len]``, padding with ``value``."""
    if not rows:
        return torch.zeros(0, 0, dtype=torch.int64)
    longest = max(len(r) for r in rows)
    out = rows[0].new_full((len(rows), longest), value)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def assign_fpn_levels(
    boxes: Tensor,
    k_min: int = 2,
    k_max: int = 5,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """The pyramid level each RoI is pooled from: equation (1) of the FPN paper.

    ``k = floor(k0 + log2(sqrt(w * h) / 224))``, clamped to ``[k_min, k_max]``: a RoI of
    ``224 x 224`` pixels (the ImageNet size) reads level ``k0 = 4``, one half as large level 3,
    and so on. ``eps`` (1e-6) protects sizes that are exact powers of two times 224 from
    rounding down to the level below when ``sqrt(w * h)`` comes out a hair too small in floating
    point. The same arithmetic as torchvision's ``LevelMapper``, which returns ``k - k_min``.

    Args:
        boxes: ``Tensor[K, 4]`` in ``(x1, y1, x2, y2)``, image pixels.
        k_min: finest level available (2 for ``P2``, stride 4).
        k_max: coarsest level available (5 for ``P5``, stride 32).
        canonical_scale: RoI size that maps to ``canonical_level``.
        canonical_level: ``k0``.
        eps: added before the floor.

    Returns:
        ``Tensor[K]`` (int64) of levels ``k`` in ``[k_min, k_max]``.
    """
    fn = "assign_fpn_levels"
    check_floating(fn, "boxes", check_boxes(fn, "boxes", boxes))
    k_min = _check_int(fn, "k_min", k_min, -(2**31))
    k_max = _check_int(fn, "k_max", k_max, k_min)
    canonical_level = _check_int(fn, "canonical_level", canonical_level, -(2**31))
    canonical_scale = check_positive(fn, "canonical_scale", canonical_scale)
    boxes = boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(canonical_level + torch.log2(size / canonical_scale) + size.new_tensor(eps))
    return level.clamp(min=k_min, max=k_max).to(torch.int64)


def multiscale_roi_align(
    features: Sequence[Tensor],
    boxes: Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """RoI Align on a feature pyramid: each RoI is pooled from the level that suits its size.

    The levels must be consecutive, ``spatial_scales[l] = spatial_scales[0] / 2**l`` (e.g.
    ``1/4, 1/8, 1/16, 1/32`` for ``P2``-``P5``); level ``k`` of :func:`assign_fpn_levels` has scale
    ``2**-k``. Equal to ``torchvision.ops.MultiScaleRoIAlign`` (which infers the scales from the
    map and image sizes, and uses ``sampling_ratio = 2`` in Faster R-CNN) for the same scales.

    Args:
        features: one ``Tensor[B, C, H_l, W_l]`` per level, finest first.
        boxes: one ``Tensor[K_i, 4]`` per image, in image pixels.
        output_size: ``h`` or ``(h, w)``.
        spatial_scales: scale of each level relative to the image, powers of two.
        sampling_ratio: samples per bin along each axis, see :func:`detlib.roi_align`.
        aligned: see :func:`detlib.roi_align` (torchvision's pooler uses ``False``).
        canonical_scale: see :func:`assign_fpn_levels`.
        canonical_level: see :func:`assign_fpn_levels`.

    Returns:
        ``Tensor[sum K_i, C, h, w]``, the RoIs of image 0 first, each in its order.
    """
    fn = "multiscale_roi_align"
    if not isinstance(features, (list, tuple)) or not features:
        raise TypeError(
            f"{fn}: features must be a non-empty list of Tensor[B, C, H, W], one per "
            f"level, got {type(features).__name__}"
        )
    if not isinstance(spatial_scales, Sequence) or len(spatial_scales) != len(features):
        raise ValueError(
            f"{fn}: spatial_scales must give one scale per level ({len(features)} "
            f"levels), got {spatial_scales!r}"
        )
    scales = [check_positive(fn, "spatial_scales", s) for s in spatial_scales]
    k_min = -math.log2(scales[0])
    if k_min != round(k_min) or any(s != scales[0] / 2**i for i, s in enumerate(scales)):
        raise ValueError(
            f"{fn}: spatial_scales must be consecutive powers of two, finest first "
            f"(e.g. [0.25, 0.125, 0.0625]), got {list(spatial_scales)}"
        )
    boxes = _check_box_list(fn, "boxes", boxes)
    rois = (
        torch.cat([torch.cat((b.new_full((len(b), 1), i), b), dim=1) for i, b in enumerate(boxes)])
        if boxes
        else features[0].new_zeros(0, 5)
    )
    if len(features) == 1:
        return roi_align(features[0], rois, output_size, scales[0], sampling_ratio, aligned)
    k_min = round(k_min)
    levels = (
        assign_fpn_levels(
            rois[:, 1:], k_min, k_min + len(features) - 1, canonical_scale, canonical_level
        )
        - k_min
    )
    pooled = [
        roi_align(feature, rois[levels == level], output_size, scale, sampling_ratio, aligned)
        for level, (feature, scale) in enumerate(zip(features, scales))
    ]
    out = pooled[0].new_zeros((len(rois), *pooled[0].shape[1:]))
    for level, result in enumerate(pooled):
        out[levels == level] = result.to(out.dtype)
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
        in_channels = _check_int(fn, "in_channels", in_channels, 1)
        num_classes = _check_int(fn, "num_classes", num_classes, 2)
        representation_size = _check_int(fn, "representation_size", representation_size, 1)
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
