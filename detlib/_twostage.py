"""Argument checks shared by the two-stage modules (RPN, multi-scale pooler, second stage)."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from detlib._checks import check_boxes, check_image_size, check_same_device, check_tensor
from detlib.coder import BoxCoder

__all__: list[str] = []


def check_int(fn: str, name: str, value: object, minimum: int) -> int:
    """Raise unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_fraction(fn: str, name: str, value: object) -> float:
    """Raise unless ``value`` is a number in ``[0, 1]``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{fn}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_box_list(fn: str, name: str, boxes: object) -> list[Tensor]:
    """Raise unless ``boxes`` is a list or tuple of ``Tensor[L_i, 4]``; reads no values (see
    :func:`check_box_values`), so that device checks can come first."""
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(
            f"{fn}: {name} must be a list with one Tensor[L, 4] of (x1, y1, x2, y2) boxes per "
            f"image, got {type(boxes).__name__}"
        )
    for i, b in enumerate(boxes):
        check_tensor(fn, f"{name}[{i}]", b)
        if b.dim() != 2 or b.shape[-1] != 4:
            raise ValueError(f"{fn}: {name}[{i}] must have shape [N, 4], got {list(b.shape)}")
    return list(boxes)


def check_box_values(fn: str, name: str, boxes: list[Tensor], strict: bool = False) -> None:
    """The value checks of :func:`detlib._checks.check_boxes` on every tensor of a checked list."""
    for i, b in enumerate(boxes):
        check_boxes(fn, f"{name}[{i}]", b, strict=strict)


def check_list_devices(fn: str, name: str, boxes: list[Tensor], like: str, tensor: Tensor) -> None:
    """Raise unless every tensor of ``boxes`` is on the device of ``tensor`` (named ``like``)."""
    for i, b in enumerate(boxes):
        check_same_device(fn, **{like: tensor, f"{name}[{i}]": b})


def check_image_sizes(fn: str, image_size: object, num_images: int) -> list[tuple[int, int]]:
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


def check_flag(fn: str, name: str, value: object) -> bool:
    """Raise unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")
    return value


def check_box_coder(
    fn: str, box_coder: object, default_weights: tuple[float, float, float, float]
) -> BoxCoder:
    """``box_coder``, or a new ``BoxCoder(default_weights)`` for ``None``."""
    if box_coder is None:
        return BoxCoder(default_weights)
    if not isinstance(box_coder, BoxCoder):
        raise TypeError(
            f"{fn}: box_coder must be a detlib.BoxCoder, got {type(box_coder).__name__}"
        )
    return box_coder
