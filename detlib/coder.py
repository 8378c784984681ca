"""Box encoding and decoding: ground-truth boxes as offsets from anchors, and back.

A head does not predict box corners; it predicts how to move and stretch its anchor:

    tx = wx * (x - xa) / wa        ty = wy * (y - ya) / ha
    tw = ww * log(w / wa)          th = wh * log(h / ha)

where ``(x, y, w, h)`` is the target box as centre and size, ``(xa, ya, wa, ha)`` the anchor, and
``(wx, wy, ww, wh)`` weights that scale the targets to roughly unit variance. The weights
``(10, 10, 5, 5)`` of torchvision's RoI heads are the "variances" ``(0.1, 0.1, 0.2, 0.2)`` of the
RetinaNet and SSD code bases, which divide instead of multiplying.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detlib._checks import (
    check_box_shape,
    check_box_values,
    check_finite,
    check_floating,
    check_positive,
    check_same_device,
    check_tensor,
)

__all__ = ["BoxCoder"]

DEFAULT_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes relative to anchors and decode predicted offsets back into boxes.

    The same arithmetic as torchvision's ``BoxCoder.encode_single`` / ``decode_single``, so the
    numbers agree bit for bit.

    Args:
        weights: ``(wx, wy, ww, wh)`` multiplying the four targets.
        bbox_xform_clip: upper bound on the decoded ``tw / ww`` and ``th / wh`` before ``exp``;
            the default ``log(1000 / 16)`` caps a box at 62.5 times its anchor and keeps ``exp``
            from overflowing to infinity.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = DEFAULT_XFORM_CLIP,
    ) -> None:
        if not isinstance(weights, Sequence) or len(weights) != 4:
            raise ValueError(
                f"BoxCoder: weights must be four numbers (wx, wy, ww, wh), got {weights!r}"
            )
        self.weights = tuple(check_positive("BoxCoder", "weights", w) for w in weights)
        self.bbox_xform_clip = check_positive("BoxCoder", "bbox_xform_clip", bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Regression targets that turn each anchor into its ground-truth box.

        Args:
            gt_boxes: ``Tensor[..., N, 4]`` in ``(x1, y1, x2, y2)``, the box matched to each anchor.
            anchors: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, each with a positive width and height.

        Returns:
            ``Tensor[..., N, 4]`` of ``(tx, ty, tw, th)`` in the dtype of ``gt_boxes``.
        """
        fn = "BoxCoder.encode"
        check_floating(fn, "gt_boxes", check_box_shape(fn, "gt_boxes", gt_boxes, batched=True))
        check_box_shape(fn, "anchors", anchors)
        check_same_device(fn, gt_boxes=gt_boxes, anchors=anchors)
        if gt_boxes.dim() < 2 or gt_boxes.shape[-2] != anchors.shape[0]:
            raise ValueError(
                f"{fn}: gt_boxes must have shape [..., N, 4] with N = {anchors.shape[0]} anchors, "
                f"got {list(gt_boxes.shape)}"
            )
        check_box_values(fn, "gt_boxes", gt_boxes, strict=True)
        check_box_values(fn, "anchors", anchors, strict=True)
        return self._encode(gt_boxes, anchors)

    def _encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """:meth:`encode` without its checks, for pipelines that checked their boxes once."""
        anchors = anchors.to(gt_boxes.dtype)
        wx, wy, ww, wh = torch.as_tensor(self.weights, dtype=gt_boxes.dtype, device=gt_boxes.device)

        anchor_w = anchors[:, 2] - anchors[:, 0]
        anchor_h = anchors[:, 3] - anchors[:, 1]
        anchor_cx = anchors[:, 0] + 0.5 * anchor_w
        anchor_cy = anchors[:, 1] + 0.5 * anchor_h

        gt_w = gt_boxes[..., 2] - gt_boxes[..., 0]
        gt_h = gt_boxes[..., 3] - gt_boxes[..., 1]
        gt_cx = gt_boxes[..., 0] + 0.5 * gt_w
        gt_cy = gt_boxes[..., 1] + 0.5 * gt_h

        tx = wx * (gt_cx - anchor_cx) / anchor_w
        ty = wy * (gt_cy - anchor_cy) / anchor_h
        tw = ww * torch.log(gt_w / anchor_w)
        th = wh * torch.log(gt_h / anchor_h)
        return torch.stack((tx, ty, tw, th), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes obtained by applying predicted offsets to anchors.

        Args:
            deltas: ``Tensor[..., N, 4 * K]`` of ``(tx, ty, tw, th)`` per anchor (``K`` boxes per
                anchor, e.g. one per class in a Fast R-CNN head; usually ``K = 1``).
            anchors: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.

        Returns:
            ``Tensor[..., N, 4 * K]`` boxes in ``(x1, y1, x2, y2)``, in the dtype of ``deltas``.
        """
        fn = "BoxCoder.decode"
        check_floating(fn, "deltas", check_tensor(fn, "deltas", deltas))
        check_box_shape(fn, "anchors", anchors)
        check_same_device(fn, deltas=deltas, anchors=anchors)
        if deltas.dim() < 2 or deltas.shape[-2] != anchors.shape[0] or deltas.shape[-1] % 4 != 0:
            raise ValueError(
                f"{fn}: deltas must have shape [..., N, 4 * K] with N = {anchors.shape[0]} anchors, "
                f"got {list(deltas.shape)}"
            )
        check_box_values(fn, "anchors", anchors)
        check_finite(fn, "deltas", deltas)
        return self._decode(deltas, anchors)

    def _decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """:meth:`decode` without its checks, for pipelines that checked their inputs once."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights

        widths = (anchors[:, 2] - anchors[:, 0])[:, None]  # [N, 1], broadcasts over K
        heights = (anchors[:, 3] - anchors[:, 1])[:, None]
        ctr_x = anchors[:, 0, None] + 0.5 * widths
        ctr_y = anchors[:, 1, None] + 0.5 * heights

        dx = deltas[..., 0::4] / wx
        dy = deltas[..., 1::4] / wy
        # Clamp before exp: an untrained head can output tw = 100, and exp(100) * w is inf.
        dw = torch.clamp(deltas[..., 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(deltas[..., 3::4] / wh, max=self.bbox_xform_clip)

        pred_cx = dx * widths + ctr_x
        pred_cy = dy * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        boxes = torch.stack(
            (pred_cx - half_w, pred_cy - half_h, pred_cx + half_w, pred_cy + half_h), dim=-1
        )
        return boxes.flatten(-2)  # [..., N, K, 4] -> [..., N, 4K]
