"""Synthetic data: nothing in the book downloads a dataset."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detlib._checks import check_image_size, check_positive


def sample_boxes(
    n: int,
    image_size: tuple[int, int],
    min_size: float = 8.0,
    max_size: float = 256.0,
    max_aspect: float = 4.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Random ground-truth-like boxes that lie inside an image.

    The size (square root of the area) is log-uniform in ``[min_size, max_size]`` and the aspect
    ratio ``h / w`` log-uniform in ``[1 / max_aspect, max_aspect]``, so small and large, wide and tall
    boxes are equally represented. Boxes larger than the image are shrunk to fit. Drawn on the CPU
    (with ``generator``, for reproducibility): move the result to your device.

    Args:
        n: number of boxes.
        image_size: ``(height, width)``.
        min_size: smallest size in pixels.
        max_size: largest size in pixels.
        max_aspect: largest ratio between the long and the short side.
        generator: CPU random generator.
        dtype: floating dtype of the result.

    Returns:
        ``Tensor[n, 4]`` in ``(x1, y1, x2, y2)``, on the CPU.
    """
    fn = "sample_boxes"
    height, width = check_image_size(fn, "image_size", image_size)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"{fn}: n must be a non-negative int, got {n!r}")
    check_positive(fn, "min_size", min_size)
    check_positive(fn, "max_size", max_size)
    if max_size < min_size:
        raise ValueError(f"{fn}: max_size ({max_size}) must be >= min_size ({min_size})")
    if check_positive(fn, "max_aspect", max_aspect) < 1:
        raise ValueError(f"{fn}: max_aspect must be >= 1, got {max_aspect}")
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    size = torch.exp(math.log(min_size) + u[:, 0] * (math.log(max_size) - math.log(min_size)))
    ratio = torch.exp((2 * u[:, 1] - 1) * math.log(max_aspect))
    w = (size / ratio.sqrt()).clamp(max=width)
    h = (size * ratio.sqrt()).clamp(max=height)
    x1 = u[:, 2] * (width - w)
    y1 = u[:, 3] * (height - h)
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=1).to(dtype)
