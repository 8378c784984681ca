"""Assigning anchors to ground-truth boxes.

A matcher reads an IoU matrix ``[G, N]`` (ground truths by anchors) and decides, for every anchor,
which ground truth it must learn to predict, or that it is background, or that it is ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detlib._checks import check_floating, check_tensor


class Matcher:
    """Threshold matching of anchors to ground truths, as in Faster R-CNN and RetinaNet.

    Each anchor takes the ground truth it overlaps most. If that IoU is at least
    ``high_threshold`` the anchor is matched to it; below ``low_threshold`` it is background
    (``BELOW_LOW_THRESHOLD = -1``); in between it is ignored (``BETWEEN_THRESHOLDS = -2``).

    With ``allow_low_quality_matches``, each ground truth also keeps the anchor(s) that overlap
    it most, even below ``high_threshold``: otherwise a small or oddly shaped box that no anchor
    covers well would get no positive anchor at all. Ties keep every anchor with that IoU.

    The same decisions as ``torchvision.models.detection._utils.Matcher``, except that an image
    without ground truth returns all ``-1`` (every anchor is background) instead of raising.

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
        for name, value in (("high_threshold", high_threshold), ("low_threshold", low_threshold)):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"Matcher: {name} must be a number in [0, 1], got {value!r}")
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

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
        best_iou_of_gt = quality.max(dim=1).values  # [G]
        _, anchor_idx = torch.nonzero(quality == best_iou_of_gt[:, None], as_tuple=True)
        matches[anchor_idx] = best_matches[anchor_idx]
