"""The region proposal network (RPN) of Faster R-CNN: head, anchor labels, loss and proposals.

Faster R-CNN (Ren et al., 2015) detects in two stages that share one backbone. The first, the
RPN, slides a small head over the feature map(s) and, for every anchor, predicts an objectness
logit and four box offsets (:class:`RPNHead`). During training, anchors are labelled object /
background / ignored by their IoU with the ground truth (:func:`label_anchors`), a balanced
mini-batch of them is drawn (:func:`detlib.balanced_sample`) and :func:`rpn_loss` scores it. At all
times the offsets are decoded into boxes and filtered into a few hundred **proposals**
(:func:`generate_proposals`), which the second stage (:mod:`detlib.second_stage`) pools
(:mod:`detlib.roi`), classifies and refines.

Every step gives the numbers of its torchvision counterpart (``torchvision.models.detection``'s
``RPNHead`` and ``RegionProposalNetwork``); the differences, all at edge cases, are listed in each
docstring. Everything is batched over the images of a batch, and works on any device and floating
dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlib._checks import (
    _min_max,
    check_boxes,
    check_finite,
    check_floating,
    check_positive,
    check_real,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)
from detlib._twostage import (
    check_box_coder,
    check_box_list,
    check_box_values,
    check_flag,
    check_image_sizes,
    check_int,
    check_list_devices,
)
from detlib.boxes import _box_iou
from detlib.coder import BoxCoder
from detlib.matching import Matcher, check_match_thresholds
from detlib.sampling import labels_from_matches
from detlib.suppression import _greedy_nms, split_by_image

__all__ = ["RPNHead", "generate_proposals", "label_anchors", "rpn_loss"]


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
        in_channels = check_int(fn, "in_channels", in_channels, 1)
        num_anchors = check_int(fn, "num_anchors", num_anchors, 1)
        conv_depth = check_int(fn, "conv_depth", conv_depth, 0)
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
        gt_boxes: one ``Tensor[G_i, 4]`` per image, in ``(x1, y1, x2, y2)``, each with a positive
            width and height.
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
    check_floating(fn, "anchors", check_tensor(fn, "anchors", anchors))
    if anchors.dim() != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"{fn}: anchors must have shape [N, 4], got {list(anchors.shape)}")
    gt_boxes = check_box_list(fn, "gt_boxes", gt_boxes)
    check_list_devices(fn, "gt_boxes", gt_boxes, "anchors", anchors)
    check_match_thresholds(fn, "fg_iou_thresh", fg_iou_thresh, "bg_iou_thresh", bg_iou_thresh)
    check_flag(fn, "allow_low_quality_matches", allow_low_quality_matches)
    if ignore is not None:
        check_tensor(fn, "ignore", ignore)
        if ignore.dtype != torch.bool or ignore.shape != anchors.shape[:1]:
            raise ValueError(
                f"{fn}: ignore must be a bool Tensor[N] with N = {len(anchors)} anchors, got "
                f"{ignore.dtype} of shape {list(ignore.shape)}"
            )
        check_same_device(fn, anchors=anchors, ignore=ignore)
    # Values last, once every structure and device is known to be right.
    check_boxes(fn, "anchors", anchors)
    # A box of zero width or height overlaps no anchor: as a low-quality match every anchor
    # would tie at IoU 0 and become its positive.
    check_box_values(fn, "gt_boxes", gt_boxes, strict=True)
    matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches)
    num_anchors = len(anchors)
    labels = anchors.new_zeros((len(gt_boxes), num_anchors))
    matched = anchors.new_zeros((len(gt_boxes), num_anchors, 4))
    for image, boxes in enumerate(gt_boxes):
        if len(boxes) == 0:
            matched[image] = anchors
        else:
            boxes = boxes.to(anchors.dtype)
            iou = _box_iou(boxes, anchors)  # [G, N], inputs checked above
            if ignore is not None:
                iou = iou.masked_fill(ignore, -1.0)  # never matched, never a box's best anchor
            matches = matcher._match(iou)  # inputs checked above
            matched[image] = boxes[matches.clamp(min=0)]
            labels[image] = labels_from_matches(matches).to(labels.dtype)
        if ignore is not None:
            labels[image, ignore] = -1.0
    return labels, matched


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
    nms_threshold: float = 0.7,
    min_size: float = 1e-3,
    score_threshold: float = 0.0,
    box_coder: BoxCoder | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Turn the RPN's outputs into proposals, for all images at once.

    For every image:

    1. on every pyramid level, keep the ``pre_nms_top_n`` anchors with the highest objectness
       (ranking before decoding: decoding thousands of boxes that NMS would drop costs time);
    2. decode their offsets into boxes (``box_coder``, default weights ``(1, 1, 1, 1)``);
    3. clip the boxes to the image;
    4. drop boxes narrower or lower than ``min_size`` pixels, and scores below
       ``score_threshold``;
    5. non-maximum suppression at ``nms_threshold``, level by level (one :func:`detlib.batched_nms`
       call for the whole batch: each (image, level) pair is a category);
    6. keep the ``post_nms_top_n`` best boxes of the image.

    The order of torchvision's ``RegionProposalNetwork.filter_proposals`` (which the tests
    check, box for box); the original Faster R-CNN drops small boxes (``min_size = 16``) before
    its top-k. The outputs are detached: no gradient flows through the proposals. NMS ranks by
    the logits, which keeps their order where the sigmoid rounds several of them to 1.0;
    torchvision ranks by the probabilities, so the two may order such ties differently.

    The inputs are checked once, here, with one device-to-host copy for all their values
    (finite anchors with ``x1 <= x2`` and ``y1 <= y2``, finite logits and offsets; skipped when
    value checks are off); the steps then run unchecked.

    Args:
        anchors: ``Tensor[N, 4]``, the anchors of one image, in the order of the predictions.
        objectness: ``Tensor[B, N]`` of logits.
        deltas: ``Tensor[B, N, 4]`` of predicted offsets.
        image_size: ``(height, width)`` of every image, or a list of one per image.
        num_anchors_per_level: anchors of each level, in order (default: a single level).
        pre_nms_top_n: anchors kept per level and image before NMS.
        post_nms_top_n: proposals kept per image after NMS.
        nms_threshold: IoU above which NMS suppresses a box (any number but NaN).
        min_size: smallest width and height, in pixels.
        score_threshold: smallest objectness probability kept (any number but NaN).
        box_coder: how offsets are decoded (default ``BoxCoder((1, 1, 1, 1))``).

    Returns:
        ``(boxes, scores)``: for each image a ``Tensor[K_i, 4]`` of proposals and a
        ``Tensor[K_i]`` of their objectness probabilities, best first.
    """
    fn = "generate_proposals"
    anchors, objectness, deltas = _check_rpn_outputs(fn, anchors, objectness, deltas)
    num_images, num_anchors = objectness.shape
    sizes = check_image_sizes(fn, image_size, num_images)
    levels = _check_levels(fn, num_anchors_per_level, num_anchors)
    pre_nms_top_n = check_int(fn, "pre_nms_top_n", pre_nms_top_n, 0)
    post_nms_top_n = check_int(fn, "post_nms_top_n", post_nms_top_n, 0)
    min_size = check_positive(fn, "min_size", min_size, allow_zero=True)
    nms_threshold = check_real(fn, "nms_threshold", nms_threshold)
    score_threshold = check_real(fn, "score_threshold", score_threshold)
    box_coder = check_box_coder(fn, box_coder, default_weights=(1.0, 1.0, 1.0, 1.0))
    device = objectness.device
    if num_images == 0:
        return [], []

    # 1. Top-k per level and image, on the logits.
    index, level = _top_n_per_level(objectness, levels, pre_nms_top_n)  # [B, K] each
    logits = objectness.gather(1, index)
    picked = deltas.gather(1, index[..., None].expand(-1, -1, 4))
    # 2. Decode (element by element, so decoding only the kept anchors gives the same numbers).
    boxes = box_coder._decode(picked.reshape(-1, 4), anchors[index.reshape(-1)])
    boxes = boxes.reshape(num_images, -1, 4)
    # 3. Clip to each image.
    limits = torch.tensor([[w, h] for h, w in sizes], dtype=boxes.dtype, device=device)
    xy = boxes.view(num_images, -1, 2, 2).clamp(min=0)
    boxes = torch.minimum(xy, limits[:, None, None, :]).view(num_images, -1, 4)
    # 4. Small boxes and low scores.
    scores = torch.sigmoid(logits)
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    keep = (widths >= min_size) & (heights >= min_size) & (scores >= score_threshold)
    image = torch.arange(num_images, device=device)[:, None].expand_as(keep)
    boxes, logits, scores, image = boxes[keep], logits[keep], scores[keep], image[keep]
    # 5. NMS within each (image, level).
    category = image * len(levels) + level[keep]
    kept = _greedy_nms(boxes, logits, category, nms_threshold)
    # 6. Best post_nms_top_n per image (NMS orders by score).
    per_image = split_by_image(kept, image[kept], num_images, post_nms_top_n)
    return [boxes[rows] for rows in per_image], [scores[rows] for rows in per_image]


def _check_rpn_outputs(
    fn: str, anchors: object, objectness: object, deltas: object
) -> tuple[Tensor, Tensor, Tensor]:
    """Anchors ``[N, 4]``, objectness ``[B, N]`` and deltas ``[B, N, 4]``, detached; their values
    are checked with one device-to-host copy in all (see :func:`_check_rpn_values`)."""
    check_tensor(fn, "anchors", anchors)
    if anchors.dim() != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"{fn}: anchors must have shape [N, 4], got {list(anchors.shape)}")
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
    anchors, objectness, deltas = anchors.detach(), objectness.detach(), deltas.detach()
    _check_rpn_values(fn, anchors, objectness, deltas)
    return anchors, objectness, deltas


def _check_rpn_values(fn: str, anchors: Tensor, objectness: Tensor, deltas: Tensor) -> None:
    """When value checks are on: finite anchors with a non-negative size, finite logits and
    offsets, read with one device-to-host copy for the three.

    The anchors' sizes and the absolute logits and offsets are all ``>= 0`` and finite exactly
    when the inputs are sound (NaN fails both comparisons), so the smallest and largest of them
    decide. Only if they fail do the detailed checks run, to name the culprit.
    """
    if not value_checks_enabled() or objectness.numel() + anchors.numel() == 0:
        return
    sizes = (anchors[:, 2:] - anchors[:, :2]).flatten()
    values = torch.cat((sizes, objectness.flatten().abs(), deltas.flatten().abs()))
    low, high = _min_max(values.to(torch.promote_types(values.dtype, torch.float32)))
    if low >= 0 and high < math.inf:
        return
    check_boxes(fn, "anchors", anchors)
    check_finite(fn, "objectness", objectness)
    check_finite(fn, "deltas", deltas)


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
