"""From a one-stage detector's head outputs to detections: scores, top-k, boxes, per-class NMS.

A RetinaNet-style head predicts, for every anchor, one logit per class and four box offsets.
Turning that into a short list of detections takes five steps, done here for a whole batch:

1. **score**: ``sigmoid`` of every logit, one independent score per (anchor, class) pair, so one
   anchor may produce detections of several classes;
2. **threshold and top-k**: keep the pairs scoring above ``score_threshold`` and, of those, the
   ``topk_candidates`` best, per pyramid level (as torchvision's RetinaNet does) or over all
   anchors;
3. **decode** only those candidates against their anchors (:class:`detlib.BoxCoder`) and clip
   them to the image;
4. **per-class NMS** (:func:`detlib.batched_nms`), all images in one call: a candidate's category
   is the pair (image, class), so boxes of different images or classes never suppress each other;
5. keep the ``max_detections`` best of each image.

With the same settings and inputs this gives the detections of
``torchvision.models.detection.RetinaNet.postprocess_detections``, with two differences, both in
cases that torchvision leaves to chance or to rounding:

* Ties. When several candidates have the score of the ``k``-th best, torchvision keeps whichever
  ``Tensor.topk`` returns; here the lower (anchor, class) index wins, and equal scores stay in
  that order, so the result does not depend on the device or the kernel.
* NMS. torchvision's ``batched_nms`` shifts each class's boxes by an offset when there are at
  most 1,000 candidates on the CPU (25,000 on a GPU). The shifted coordinates are rounded, which
  can flip a decision whose IoU is within a rounding error of the threshold.
  :func:`detlib.batched_nms` never shifts: its result is per-class NMS on the boxes themselves.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from detlib._checks import (
    check_boxes,
    check_floating,
    check_image_size,
    check_real,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)
from detlib.boxes import clip_boxes_to_image
from detlib.coder import BoxCoder
from detlib.suppression import _greedy_nms, split_by_image

__all__ = ["Detections", "postprocess_detections"]


class Detections(NamedTuple):
    """The detections of one image, by decreasing score (equal scores by candidate order)."""

    boxes: Tensor
    """``Tensor[K, 4]`` in ``(x1, y1, x2, y2)``, in the dtype of the box deltas."""
    scores: Tensor
    """``Tensor[K]``, the sigmoid of the class logit, in the dtype of the logits."""
    labels: Tensor
    """``Tensor[K]`` (int64), the class index, ``0 <= label < C``."""


class _Candidates(NamedTuple):
    """The (anchor, class) pairs that survive the threshold and the top-k, for all images."""

    image: Tensor  # [M] int64: which image
    anchor: Tensor  # [M] int64: which anchor
    label: Tensor  # [M] int64: which class
    score: Tensor  # [M]


def postprocess_detections(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    image_size: tuple[int, int] | Sequence[tuple[int, int]],
    *,
    num_anchors_per_level: Sequence[int] | None = None,
    score_threshold: float = 0.05,
    topk_candidates: int | None = 1000,
    nms_threshold: float = 0.5,
    max_detections: int | None = 300,
    box_coder: BoxCoder | None = None,
) -> list[Detections]:
    """Detections of a batch of images from the outputs of a one-stage (RetinaNet-style) head.

    The defaults are those of torchvision's RetinaNet. Steps: sigmoid scores for every (anchor,
    class) pair; pairs with a score ``> score_threshold``; the ``topk_candidates`` best of them
    per level (or overall); decode against the anchors and clip to the image; per-class NMS;
    the ``max_detections`` best per image.

    Args:
        cls_logits: ``Tensor[B, N, C]``, one logit per image, anchor and class.
        box_deltas: ``Tensor[B, N, 4]``, the offsets ``(tx, ty, tw, th)`` of each anchor.
        anchors: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, the same for every image, in the order
            of the predictions (:class:`detlib.AnchorGenerator` gives that order).
        image_size: ``(height, width)`` to clip the boxes to, for all images, or a sequence of
            ``B`` such pairs, one per image (the sizes before padding to a batch).
        num_anchors_per_level: how many of the ``N`` anchors each pyramid level has (for example
            ``[len(a) for a in generator.per_level(size)]``). With it the top-k is taken per
            level, as torchvision's RetinaNet does (up to ``L * topk_candidates`` candidates);
            without it, over all anchors at once.
        score_threshold: keep the pairs whose score is strictly greater than this (compared, as
            in torchvision, in the dtype of the logits).
        topk_candidates: at most this many candidates per level (or overall) go on to NMS;
            ``None`` for no limit.
        nms_threshold: IoU above which a box suppresses a lower-scoring box of its class.
        max_detections: at most this many detections per image; ``None`` for no limit.
        box_coder: decodes the deltas; default ``BoxCoder()`` (weights ``(1, 1, 1, 1)``, as in
            torchvision's RetinaNet).

    Returns:
        A list of ``B`` :class:`Detections` ``(boxes, scores, labels)``, on the device of the
        inputs, each by decreasing score.
    """
    fn = "postprocess_detections"
    batch, num_anchors, num_classes = _check_head_outputs(fn, cls_logits, box_deltas, anchors)
    sizes = _check_image_sizes(fn, image_size, batch)
    levels = _check_levels(fn, num_anchors_per_level, num_anchors)
    score_threshold = check_real(fn, "score_threshold", score_threshold)
    nms_threshold = check_real(fn, "nms_threshold", nms_threshold)
    topk_candidates = _check_count(fn, "topk_candidates", topk_candidates)
    max_detections = _check_count(fn, "max_detections", max_detections)
    if box_coder is None:
        box_coder = BoxCoder()
    elif not isinstance(box_coder, BoxCoder):
        raise TypeError(
            f"{fn}: box_coder must be a detlib.BoxCoder, got {type(box_coder).__name__}"
        )

    if batch == 0:
        return []
    candidates = _top_candidates(cls_logits, levels, score_threshold, topk_candidates)
    deltas = box_deltas[candidates.image, candidates.anchor]
    boxes = box_coder.decode(deltas, anchors[candidates.anchor])
    boxes = _clip_per_image(boxes, candidates.image, sizes)
    # One NMS for the whole batch: (image, class) pairs as categories.
    # Unchecked: the inputs were checked above, and NaN logits never become candidates.
    categories = candidates.image * num_classes + candidates.label
    keep = _greedy_nms(boxes, candidates.score, categories, nms_threshold)
    per_image = split_by_image(keep, candidates.image[keep], batch, max_detections)
    return [
        Detections(boxes[rows], candidates.score[rows], candidates.label[rows])
        for rows in per_image
    ]


# --- input checks -------------------------------------------------------------------------------


def _check_head_outputs(
    fn: str, cls_logits: object, box_deltas: object, anchors: object
) -> tuple[int, int, int]:
    """``cls_logits [B, N, C]``, ``box_deltas [B, N, 4]``, ``anchors [N, 4]`` on one device."""
    check_floating(fn, "cls_logits", check_tensor(fn, "cls_logits", cls_logits))
    if cls_logits.dim() != 3:
        raise ValueError(
            f"{fn}: cls_logits must have shape [B, N, C] (images, anchors, classes), "
            f"got {list(cls_logits.shape)}"
        )
    batch, num_anchors, num_classes = cls_logits.shape
    check_floating(fn, "box_deltas", check_tensor(fn, "box_deltas", box_deltas))
    if box_deltas.shape != (batch, num_anchors, 4):
        raise ValueError(
            f"{fn}: box_deltas must have shape [B, N, 4] = [{batch}, {num_anchors}, 4] to match "
            f"cls_logits, got {list(box_deltas.shape)}"
        )
    check_floating(fn, "anchors", check_boxes(fn, "anchors", anchors))
    if anchors.shape[0] != num_anchors:
        raise ValueError(
            f"{fn}: anchors must have shape [N, 4] with N = {num_anchors} (one per prediction), "
            f"got {list(anchors.shape)}"
        )
    check_same_device(fn, cls_logits=cls_logits, box_deltas=box_deltas, anchors=anchors)
    _check_no_nan(fn, "cls_logits", cls_logits)
    _check_no_nan(fn, "box_deltas", box_deltas)
    return batch, num_anchors, num_classes


def _check_no_nan(fn: str, name: str, values: Tensor) -> None:
    """When value checks are on, raise ``ValueError`` if ``values`` holds NaN (infinite logits
    are scores of 0 or 1, and infinite offsets are clipped by the box coder)."""
    # One reduction: the largest element is NaN exactly when some element is.
    if value_checks_enabled() and values.numel() > 0 and bool(torch.isnan(values.max())):
        count = int(torch.isnan(values).sum())
        raise ValueError(f"{fn}: {name} must not contain NaN, found {count} NaN value(s)")


def _check_image_sizes(fn: str, image_size: object, batch: int) -> list[tuple[int, int]]:
    """One ``(height, width)`` per image, from one pair or a sequence of ``batch`` pairs."""
    sequences = (tuple, list, torch.Size)
    if isinstance(image_size, sequences):
        if len(image_size) == 2 and all(isinstance(s, numbers.Number) for s in image_size):
            return [check_image_size(fn, "image_size", image_size)] * batch
        if all(isinstance(size, sequences) for size in image_size):
            if len(image_size) != batch:
                raise ValueError(
                    f"{fn}: image_size must be one (height, width) or one per image ({batch}), "
                    f"got {len(image_size)} sizes"
                )
            return [check_image_size(fn, "image_size", size) for size in image_size]
    raise TypeError(
        f"{fn}: image_size must be (height, width) or a sequence of them, got {image_size!r}"
    )


def _check_levels(fn: str, num_anchors_per_level: object, num_anchors: int) -> list[int]:
    """Anchors per level: non-negative ints that add up to ``num_anchors``."""
    if num_anchors_per_level is None:
        return [num_anchors]
    if not isinstance(num_anchors_per_level, Sequence) or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0
        for n in num_anchors_per_level
    ):
        raise TypeError(
            f"{fn}: num_anchors_per_level must be a sequence of non-negative ints, "
            f"got {num_anchors_per_level!r}"
        )
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(
            f"{fn}: num_anchors_per_level must add up to N = {num_anchors} anchors, "
            f"got {list(num_anchors_per_level)} (sum {sum(num_anchors_per_level)})"
        )
    return [int(n) for n in num_anchors_per_level]


def _check_count(fn: str, name: str, value: object) -> int | None:
    """``None`` (no limit) or a non-negative int."""
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be an int or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {value}")
    return int(value)


# --- the steps ----------------------------------------------------------------------------------


def _top_candidates(
    cls_logits: Tensor, levels: list[int], score_threshold: float, k: int | None
) -> _Candidates:
    """The (anchor, class) pairs scoring above the threshold, at most ``k`` per level and image,
    each level by decreasing score (equal scores by increasing index): ``M`` candidates, grouped
    by image, then level.

    As in torchvision's RetinaNet, the top-k of an image and level runs over the pairs above
    the threshold only (with a trained head, a small share of them).
    """
    batch, _, num_classes = cls_logits.shape
    scores = torch.sigmoid(cls_logits)
    chosen = [[] for _ in range(batch)]  # per image: (values, positions in [N * C]) per level
    start = 0
    for count in levels:
        flat = scores[:, start : start + count].reshape(batch, count * num_classes)
        rows, columns = (flat > score_threshold).nonzero(as_tuple=True)  # NaN is never above
        values = flat[rows, columns]  # row-major: by image, positions increasing
        per_image = torch.bincount(rows, minlength=batch).tolist()
        for image, (v, c) in enumerate(zip(values.split(per_image), columns.split(per_image))):
            v, order = _top_k(v[None], v.shape[0] if k is None else k)
            chosen[image].append((v[0], c.index_select(0, order[0]) + start * num_classes))
        start += count
    counts = [sum(len(v) for v, _ in levels_of_image) for levels_of_image in chosen]
    values = torch.cat([v for levels_of_image in chosen for v, _ in levels_of_image])
    positions = torch.cat([p for levels_of_image in chosen for _, p in levels_of_image])
    image = torch.repeat_interleave(
        torch.arange(batch, device=scores.device),
        torch.tensor(counts, device=scores.device),
    )
    anchor = torch.div(positions, num_classes, rounding_mode="floor")
    return _Candidates(image, anchor, positions % num_classes, values)


def _top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of each row of ``scores`` (``[B, P]``): values and positions, ``[B, k]``,
    by decreasing value, equal values by increasing position; of several values equal to the
    ``k``-th largest, the ones at the lowest positions."""
    k = min(k, scores.shape[1])
    values, positions = scores.topk(k, dim=1)
    if 0 < k < scores.shape[1]:
        kth = values[:, -1:]
        # A value equal to the k-th that topk left out means a tie across the cut.
        ties_left_out = (scores >= kth).sum(1, dtype=torch.int32) > k
        if bool((ties_left_out & (kth[:, 0] > -math.inf)).any()):
            positions = _first_k_of_largest(scores, kth, k)
    # Put the k chosen in position order, then stably by decreasing value.
    positions = positions.sort(dim=1).values
    values = scores.gather(1, positions)
    order = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, order), positions.gather(1, order)


def _first_k_of_largest(scores: Tensor, kth: Tensor, k: int) -> Tensor:
    """Positions ``[B, k]`` of the values above ``kth`` (``[B, 1]``) and of as many of the values
    equal to it as needed to make ``k``, the lowest positions first."""
    above = scores > kth
    tied = scores == kth
    needed = k - above.sum(1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(1) <= needed))
    return chosen.nonzero()[:, 1].reshape(scores.shape[0], k)


def _clip_per_image(boxes: Tensor, image: Tensor, sizes: list[tuple[int, int]]) -> Tensor:
    """``boxes`` (``[M, 4]``, grouped by ``image``) clipped to the size of their image."""
    if len(set(sizes)) == 1:
        return clip_boxes_to_image(boxes, sizes[0])
    counts = torch.bincount(image, minlength=len(sizes)).tolist()
    groups = boxes.split(counts)
    return torch.cat([clip_boxes_to_image(g, s) for g, s in zip(groups, sizes, strict=True)])
