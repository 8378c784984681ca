"""Assigning anchors to ground-truth boxes.

A matcher reads an IoU matrix ``[G, N]`` (ground truths by anchors) and decides, for every anchor,
which ground truth it must learn to predict, or that it is background, or that it is ignored.

* :class:`Matcher`: thresholds, optionally with low-quality matches (RetinaNet: 0.5 / 0.4 with
  them; the RPN of Faster R-CNN: 0.7 / 0.3 with them; torchvision's RoI heads: 0.5 / 0.5 without).
* :func:`ssd_match`: each ground truth takes its best anchor, then a threshold (SSD).
* :func:`greedy_match`: a greedy one-to-one assignment, then a threshold (Dive into Deep Learning,
  Caffe SSD); :func:`greedy_bipartite_match` is its first phase alone.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from detlib._checks import check_floating, check_tensor, value_checks_enabled

__all__ = ["greedy_bipartite_match", "greedy_match", "Matcher", "ssd_match"]


def check_match_thresholds(
    fn: str, high_name: str, high: object, low_name: str, low: object
) -> tuple[float, float]:
    """Check a pair of IoU thresholds for :class:`Matcher` in the words of the public function
    ``fn`` that received them (``label_anchors`` names ``fg_iou_thresh``, not ``high_threshold``).

    Returns ``(high, low)`` as floats; raises unless both are numbers in ``[0, 1]`` (bools and NaN
    refused) with ``low <= high``.
    """
    high = _check_threshold(fn, high_name, high)
    low = _check_threshold(fn, low_name, low)
    if low > high:
        raise ValueError(f"{fn}: {low_name} ({low}) must not exceed {high_name} ({high})")
    return high, low


class Matcher:
    """Threshold matching of anchors to ground truths, as in Faster R-CNN and RetinaNet.

    Each anchor takes the ground truth it overlaps most. If that IoU is at least
    ``high_threshold`` the anchor is matched to it; below ``low_threshold`` it is background
    (``BELOW_LOW_THRESHOLD = -1``); in between it is ignored (``BETWEEN_THRESHOLDS = -2``).

    With ``allow_low_quality_matches``, each ground truth also keeps the anchor(s) that overlap
    it most, even below ``high_threshold``: otherwise a small or oddly shaped box that no anchor
    covers well would get no positive anchor at all. Ties keep every anchor with that IoU.
    A ground truth whose best IoU is 0 (it overlaps no anchor) forces no match.

    The same decisions as ``torchvision.models.detection._utils.Matcher``, with two deliberate
    differences:

    * an image without ground truth returns all ``-1`` (every anchor is background) instead of
      raising;
    * a forced (low-quality) match needs an IoU above 0. torchvision forces a match on every
      anchor that ties with a ground truth's best IoU, also when that IoU is 0: a box outside
      every anchor (or of zero size) then makes *every* anchor positive (3,069 of 3,069 for a
      128 x 128 RetinaNet image), each learning to predict a box it does not touch.

    Args:
        high_threshold: IoU from which an anchor is positive (0.5 RetinaNet, 0.7 RPN).
        low_threshold: IoU below which an anchor is negative (0.4 RetinaNet, 0.3 RPN).
        allow_low_quality_matches: also match every ground truth to its best anchor(s).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ):
        self.high_threshold, self.low_threshold = check_match_thresholds(
            "Matcher", "high_threshold", high_threshold, "low_threshold", low_threshold
        )
        if not isinstance(allow_low_quality_matches, bool):
            raise TypeError(
                "Matcher: allow_low_quality_matches must be True or False, "
                f"got {allow_low_quality_matches!r}"
            )
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Match every anchor (column) to a ground truth (row).

        Args:
            match_quality_matrix: ``Tensor[G, N]``, e.g. ``box_iou(gt_boxes, anchors)``.

        Returns:
            ``Tensor[N]`` (int64): the matched ground-truth index in ``[0, G)``, or ``-1`` (below
            ``low_threshold``), or ``-2`` (between the thresholds).
        """
        fn = "Matcher"
        quality = check_floating(
            fn,
            "match_quality_matrix",
            check_tensor(fn, "match_quality_matrix", match_quality_matrix),
        )
        if quality.dim() != 2:
            raise ValueError(
                f"{fn}: match_quality_matrix must have shape [G, N], got {list(quality.shape)}"
            )
        if value_checks_enabled() and quality.numel() > 0:
            # max propagates NaN: the anchors' best IoUs hold one wherever the matrix does
            _check_no_nan(fn, quality.amax(dim=0))
        return self._match(quality)

    def _match(self, quality: Tensor) -> Tensor:
        """:meth:`__call__` without checks, for pipelines that computed ``quality`` themselves."""
        num_gt, num_anchors = quality.shape
        if num_gt == 0:
            return torch.full(
                (num_anchors,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device
            )
        if num_anchors == 0:
            return torch.empty((0,), dtype=torch.int64, device=quality.device)

        best_iou, matches = quality.max(dim=0)  # best ground truth of each anchor
        best_matches = matches.clone() if self.allow_low_quality_matches else None
        matches[best_iou < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low_threshold) & (best_iou < self.high_threshold)] = (
            self.BETWEEN_THRESHOLDS
        )
        if best_matches is not None:
            self._restore_best_anchor_of_each_gt(matches, best_matches, quality)
        return matches

    @staticmethod
    def _restore_best_anchor_of_each_gt(
        matches: Tensor, best_matches: Tensor, quality: Tensor
    ) -> None:
        """Give back their match to the anchors that are some ground truth's best (in place).

        The anchor keeps its own best ground truth (not necessarily the one it is best for), as
        in Detectron and torchvision.
        """
        best_iou_of_gt = quality.max(dim=1, keepdim=True).values  # [G, 1]
        # A ground truth that overlaps nothing ties with every anchor at 0: it forces no match.
        is_best = (quality == best_iou_of_gt) & (best_iou_of_gt > 0)
        _, anchor_idx = torch.nonzero(is_best, as_tuple=True)
        matches[anchor_idx] = best_matches[anchor_idx]


# --------------------------------------------------------------------------- other strategies
# SSD's matching and the greedy (bipartite) assignment of Dive into Deep Learning and of the
# original Caffe SSD. Both return what Matcher returns: ``Tensor[N]`` of ground-truth indices,
# with ``-1`` for background; neither has an ignored zone.


def _check_quality_matrix(fn: str, match_quality_matrix: object) -> Tensor:
    """A floating ``[G, N]`` tensor (structure only; see :func:`_check_no_nan`)."""
    quality = check_floating(
        fn,
        "match_quality_matrix",
        check_tensor(fn, "match_quality_matrix", match_quality_matrix),
    )
    if quality.dim() != 2:
        raise ValueError(
            f"{fn}: match_quality_matrix must have shape [G, N] (ground truths x anchors), "
            f"got {list(quality.shape)}"
        )
    return quality


def _check_no_nan(fn: str, row_max: Tensor) -> None:
    """Raise if the matrix held NaN, seen in its row maxima (``max`` and ``topk`` propagate it),
    which the strategies compute anyway: a check on ``G`` numbers, not ``G * N``."""
    if value_checks_enabled() and bool(torch.isnan(row_max).any()):
        raise ValueError(f"{fn}: match_quality_matrix holds NaN")


def _check_threshold(fn: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{fn}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _background(num_anchors: int, device: torch.device) -> Tensor:
    return torch.full((num_anchors,), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=device)


def _threshold_matches(quality: Tensor, threshold: float) -> Tensor:
    """Each anchor's best ground truth (the first one on ties) if it reaches ``threshold``."""
    best_quality, best_gt = quality.max(dim=0)
    return torch.where(best_quality >= threshold, best_gt, Matcher.BELOW_LOW_THRESHOLD)


def ssd_match(match_quality_matrix: Tensor, threshold: float = 0.5) -> Tensor:
    """SSD's matching: thresholds first, then every ground truth takes its best anchor.

    1. Every anchor whose best IoU reaches ``threshold`` is matched to that ground truth (the
       first one if several tie); the others are background (``-1``).
    2. Every ground truth with a positive best IoU then *takes* its best anchor (the one with the
       lowest index if several tie), whatever that IoU and whatever the anchor chose in step 1.
       When several ground truths have the same best anchor, the last of them (highest index)
       keeps it and the others lose it; they may then have no anchor at all
       (:func:`greedy_match` gives them their next best instead).

    This is the matching of the SSD paper as ssd.pytorch implements it (a loop over the ground
    truths, so the last one wins), and of ``torchvision.models.detection._utils.SSDMatcher``,
    whose vectorised write does the same on the CPU but is undefined on CUDA when two ground
    truths share a best anchor; here the result is the same on every device. One deliberate
    difference with both: a ground truth whose best IoU is 0 (outside every anchor, or of zero
    size) takes nothing, where they would give it anchor 0, which it does not overlap.

    Args:
        match_quality_matrix: ``Tensor[G, N]``, e.g. ``box_iou(gt_boxes, anchors)``.
        threshold: IoU from which an anchor is matched in step 1 (SSD uses 0.5).

    Returns:
        ``Tensor[N]`` (int64): the matched ground-truth index, or ``-1`` (background).
    """
    fn = "ssd_match"
    quality = _check_quality_matrix(fn, match_quality_matrix)
    threshold = _check_threshold(fn, "threshold", threshold)
    num_gt, num_anchors = quality.shape
    if num_gt == 0 or num_anchors == 0:
        return _background(num_anchors, quality.device)
    taken_by = _best_anchor_claims(fn, quality)
    return torch.where(taken_by >= 0, taken_by, _threshold_matches(quality, threshold))


def _best_anchor_claims(fn: str, quality: Tensor) -> Tensor:
    """``[N]``: the ground truth that takes each anchor in SSD's second step, or ``-1``.

    Every ground truth with a positive best IoU claims its best anchor; an anchor claimed by
    several goes to the highest index. One scatter reduction, no loop and no synchronisation:
    ground truths that claim nothing write into an extra slot ``N``, dropped at the end.
    """
    num_gt, num_anchors = quality.shape
    best_quality, best_anchor = quality.max(dim=1)  # [G]: first best anchor of each ground truth
    _check_no_nan(fn, best_quality)
    slot = torch.where(best_quality > 0, best_anchor, num_anchors)
    gt_index = torch.arange(num_gt, device=quality.device)
    taken_by = torch.full(
        (num_anchors + 1,), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device
    )
    return taken_by.scatter_reduce(0, slot, gt_index, reduce="amax")[:num_anchors]


def greedy_bipartite_match(match_quality_matrix: Tensor) -> Tensor:
    """One anchor per ground truth, largest IoU first (the first phase of :func:`greedy_match`).

    Repeatedly take the largest remaining entry of the matrix, match its anchor to its ground
    truth, and discard its row and its column, until every ground truth has an anchor or no
    positive entry remains. Ties are broken as a scan of the ``[N, G]`` matrix would break them
    (Dive into Deep Learning's ``argmax``, Caffe SSD's loops): lowest anchor index first, then
    lowest ground-truth index. Pairs with IoU 0 are never made: a ground truth that overlaps no
    free anchor stays unmatched (d2l would pair it with an anchor it does not touch).

    Each ground truth gets at most one anchor and each anchor at most one ground truth. When a
    ground truth stays unmatched, every anchor it overlaps has gone to another ground truth.

    Only the ``min(G, N)`` best anchors of each ground truth can ever be taken (at most ``G - 1``
    columns are discarded before its turn), so the loop runs on a ``[G, min(G, N)]`` matrix of
    candidates: ``O(G N)`` to find them, then ``O(G^3)`` at most, without waiting for the device
    (apart from the NaN check, which :func:`detlib.set_value_checks` switches off).

    Args:
        match_quality_matrix: ``Tensor[G, N]``, e.g. ``box_iou(gt_boxes, anchors)``.

    Returns:
        ``Tensor[N]`` (int64): the ground truth matched to each anchor, or ``-1``.
    """
    fn = "greedy_bipartite_match"
    return _greedy_first_phase(fn, _check_quality_matrix(fn, match_quality_matrix))


def _greedy_first_phase(fn: str, quality: Tensor) -> Tensor:
    """:func:`greedy_bipartite_match` on a checked matrix (``fn`` names the caller in errors)."""
    num_gt, num_anchors = quality.shape
    matches = _background(num_anchors, quality.device)
    if num_gt == 0 or num_anchors == 0:
        return matches
    k = min(num_gt, num_anchors)
    candidate_anchor = _best_k_anchors(fn, quality, k)  # [G, k]
    value = quality.gather(1, candidate_anchor)
    gt_index = torch.arange(num_gt, device=quality.device)[:, None].expand(num_gt, k)
    order_key = candidate_anchor * num_gt + gt_index  # scan order of the [N, G] matrix
    past_end = num_anchors * num_gt
    for _ in range(k):
        best = value.max()
        first = torch.where(value == best, order_key, past_end).min()
        anchor, gt = first // num_gt, first % num_gt
        slot = anchor.view(1)  # a 1-element index: no conversion to a Python int, no sync
        matches.index_put_((slot,), torch.where(best > 0, gt, matches[slot]).view(1))
        value = value.masked_fill((gt_index == gt) | (candidate_anchor == anchor), -math.inf)
    return matches


def _best_k_anchors(fn: str, quality: Tensor, k: int) -> Tensor:
    """``[G, k]``: the ``k`` best anchors of each row, the lowest indices among ties at the k-th.

    ``topk`` returns an unspecified subset of the entries that tie at the ``k``-th place, and the
    greedy scan needs the lowest-indexed ones. The entries strictly above the ``k``-th value come
    first in ``topk``'s sorted output and are right; the places left are filled with the
    lowest-indexed tied entries, found by a second ``topk`` on their (distinct) column indices.
    """
    values, index = quality.topk(k, dim=1)  # sorted, largest first
    _check_no_nan(fn, values[:, 0])
    kth = values[:, -1:]
    num_above = (values > kth).sum(dim=1, keepdim=True)  # [G, 1]
    num_anchors = quality.shape[1]
    column = torch.arange(num_anchors, device=quality.device).expand_as(quality)
    first_tied = torch.where(quality == kth, column, num_anchors).topk(k, dim=1, largest=False)
    place = torch.arange(k, device=quality.device)[None]  # [1, k]
    tied_pick = first_tied.values.gather(1, (place - num_above).clamp(min=0))
    return torch.where(place < num_above, index, tied_pick)


def greedy_match(match_quality_matrix: Tensor, threshold: float = 0.5) -> Tensor:
    """Dive into Deep Learning's assignment: a greedy one-to-one phase, then a threshold.

    1. :func:`greedy_bipartite_match`: largest remaining IoU first, one anchor per ground truth.
    2. Every other anchor is matched to its best ground truth (the first one on ties) if that
       IoU reaches ``threshold``, and is background (``-1``) otherwise.

    This is also what the original (Caffe) SSD does, its ``BIPARTITE`` then ``PER_PREDICTION``
    steps. Unlike :func:`ssd_match`, two ground truths with the same best anchor both get one:
    the one that overlaps it less takes its next best free anchor, whatever the order of the
    ground truths.

    Args:
        match_quality_matrix: ``Tensor[G, N]``, e.g. ``box_iou(gt_boxes, anchors)``.
        threshold: IoU from which an anchor is matched in the second phase (0.5 in d2l and SSD).

    Returns:
        ``Tensor[N]`` (int64): the matched ground-truth index, or ``-1`` (background).
    """
    fn = "greedy_match"
    quality = _check_quality_matrix(fn, match_quality_matrix)
    threshold = _check_threshold(fn, "threshold", threshold)
    num_gt, num_anchors = quality.shape
    if num_gt == 0 or num_anchors == 0:
        return _background(num_anchors, quality.device)
    first_phase = _greedy_first_phase(fn, quality)
    return torch.where(first_phase >= 0, first_phase, _threshold_matches(quality, threshold))
