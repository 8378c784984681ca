"""RoI pooling on a feature pyramid: each RoI reads the level that suits its size.

An FPN (Lin et al., 2017) gives the second stage several maps, ``P2`` (stride 4) to ``P5``
(stride 32). A RoI of ``224 x 224`` pixels is pooled from ``P4``, one half as large from ``P3``,
and so on (:func:`assign_fpn_levels`, equation (1) of the paper); :func:`multiscale_roi_align`
groups the RoIs by level and runs :func:`detlib.roi_align` once per level. The same numbers as
torchvision's ``LevelMapper`` and ``MultiScaleRoIAlign``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detlib._checks import check_boxes, check_floating, check_positive, check_same_device
from detlib._twostage import (
    check_box_list,
    check_box_values,
    check_flag,
    check_int,
    check_list_devices,
)
from detlib.roi import _common
from detlib.roi.align import _roi_align

__all__ = ["assign_fpn_levels", "multiscale_roi_align"]


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
        eps: added before the floor, a finite number >= 0.

    Returns:
        ``Tensor[K]`` (int64) of levels ``k`` in ``[k_min, k_max]``.
    """
    fn = "assign_fpn_levels"
    check_floating(fn, "boxes", check_boxes(fn, "boxes", boxes))
    k_min = check_int(fn, "k_min", k_min, -(2**31))
    k_max = check_int(fn, "k_max", k_max, k_min)
    canonical_level = check_int(fn, "canonical_level", canonical_level, -(2**31))
    canonical_scale = check_positive(fn, "canonical_scale", canonical_scale)
    eps = check_positive(fn, "eps", eps, allow_zero=True)  # NaN would give level -2**63
    return _fpn_levels(boxes, k_min, k_max, canonical_scale, canonical_level, eps)


def _fpn_levels(
    boxes: Tensor, k_min: int, k_max: int, canonical_scale: float, canonical_level: int, eps: float
) -> Tensor:
    """:func:`assign_fpn_levels` without its checks."""
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

    The arguments are checked once, here (the boxes with one device-to-host copy per image when
    value checks are on); the levels are then pooled unchecked.
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
    features = [_common._check_input(fn, f, f"features[{i}]") for i, f in enumerate(features)]
    output_size = _common._check_output_size(fn, output_size)
    check_int(fn, "sampling_ratio", sampling_ratio, -(2**31))
    check_flag(fn, "aligned", aligned)
    canonical_scale = check_positive(fn, "canonical_scale", canonical_scale)
    canonical_level = check_int(fn, "canonical_level", canonical_level, -(2**31))
    boxes = check_box_list(fn, "boxes", boxes)
    check_list_devices(fn, "boxes", boxes, "features[0]", features[0])
    if len(boxes) > features[0].shape[0]:
        raise ValueError(
            f"{fn}: boxes must hold one Tensor[L, 4] per image, got {len(boxes)} tensors for "
            f"features of batch size {features[0].shape[0]}"
        )
    for i, f in enumerate(features):
        check_same_device(fn, **{"features[0]": features[0], f"features[{i}]": f})
    check_box_values(fn, "boxes", boxes)  # values last, after every structure and device
    rois = _common._boxes_to_rois(boxes, features[0]).detach()

    def pool(level: int, rois: Tensor) -> Tensor:
        return _roi_align(
            features[level], rois, output_size, scales[level], sampling_ratio, aligned
        )

    if len(features) == 1:
        return pool(0, rois)
    k_min = round(k_min)
    k_max = k_min + len(features) - 1
    levels = _fpn_levels(rois[:, 1:], k_min, k_max, canonical_scale, canonical_level, 1e-6) - k_min
    pooled = [pool(level, rois[levels == level]) for level in range(len(features))]
    out = pooled[0].new_zeros((len(rois), *pooled[0].shape[1:]))
    for level, result in enumerate(pooled):
        out[levels == level] = result.to(out.dtype)
    return out
