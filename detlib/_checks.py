"""Input checks shared by detlib's functions.

Every public function checks what it is given and raises an error that names the argument and
says what was expected. Two kinds of checks exist:

* structural checks (type, number of dimensions, last dimension, dtype, device) read only tensor
  metadata and always run;
* value checks (finite coordinates, x1 <= x2 and y1 <= y2) have to look at the data. On a GPU that
  means one small device-to-host copy (a single bool) per call. They run by default and can be
  switched off with :func:`detlib.set_value_checks` once a pipeline is known to be sound.

The switch is per thread: turning the checks off in one thread leaves them on in every other
thread (a data-loading thread, a server's request threads), and detlib itself never toggles it.
Its own pipelines skip the repeated checks by calling unchecked internals instead.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["set_value_checks", "value_checks", "value_checks_enabled"]


class _Switch(threading.local):
    """The value-check setting of the current thread; every thread starts with checks on."""

    enabled = True


_SWITCH = _Switch()


def set_value_checks(enabled: bool) -> bool:
    """Turn detlib's data-dependent input checks on or off in the calling thread; returns the
    previous setting of that thread.

    The checks (finite coordinates, ``x1 <= x2`` and ``y1 <= y2``) cost one reduction and, on a
    GPU, one synchronisation per call. Structural checks (types, shapes, devices) always run.
    The setting belongs to the calling thread: other threads keep their own (on by default).
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_value_checks: enabled must be True or False, got {enabled!r}")
    previous, _SWITCH.enabled = _SWITCH.enabled, enabled
    return previous


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_value_checks` (for the calling thread)."""
    previous = set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def value_checks_enabled() -> bool:
    """Whether data-dependent input checks are on in the calling thread."""
    return _SWITCH.enabled


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(fn: str, name: str, value: object) -> Tensor:
    """Raise ``TypeError`` unless ``value`` is a tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(fn: str, name: str, value: Tensor) -> Tensor:
    """Raise ``TypeError`` unless ``value`` has a floating-point dtype."""
    if not value.is_floating_point():
        raise TypeError(f"{fn}: {name} must have a floating-point dtype, got {value.dtype}")
    return value


def check_boxes(
    fn: str,
    name: str,
    boxes: object,
    fmt: str = "xyxy",
    batched: bool = False,
    strict: bool = False,
) -> Tensor:
    """Check a box tensor: shape ``[N, 4]`` (``[..., 4]`` if ``batched``) and, when value checks are
    on, finite coordinates with a non-negative extent in the given format (a positive one if
    ``strict``, for boxes that will be divided by their size).

    This is :func:`check_box_shape` then :func:`check_box_values`. A function of several tensors
    that must share a device calls the two apart, with ``check_same_device`` in between, so that
    a tensor on the wrong device is reported as such (not as a failed value check).
    """
    boxes = check_box_shape(fn, name, boxes, batched=batched)
    check_box_values(fn, name, boxes, fmt=fmt, strict=strict)
    return boxes


def check_box_shape(fn: str, name: str, boxes: object, batched: bool = False) -> Tensor:
    """The structural half of :func:`check_boxes`: a tensor ``[N, 4]`` (``[..., 4]`` if
    ``batched``) of real coordinates (bool and complex refused). Reads no data."""
    boxes = check_tensor(fn, name, boxes)
    if batched:
        if boxes.dim() < 1 or boxes.shape[-1] != 4:
            raise ValueError(f"{fn}: {name} must have shape [..., 4], got {_shape(boxes)}")
    elif boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{fn}: {name} must have shape [N, 4], got {_shape(boxes)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(
            f"{fn}: {name} must hold real coordinates (a floating or integer dtype), "
            f"got {boxes.dtype}"
        )
    return boxes


def check_box_values(
    fn: str, name: str, boxes: Tensor, fmt: str = "xyxy", strict: bool = False
) -> Tensor:
    """The data half of :func:`check_boxes` (when value checks are on): finite coordinates and a
    non-negative extent (positive if ``strict``) in the format ``fmt``."""
    if _SWITCH.enabled and boxes.numel() > 0:
        _check_box_values(fn, name, boxes, fmt, strict)
    return boxes


def _extent(boxes: Tensor, fmt: str) -> Tensor:
    """Width and height of boxes in the given format, ``[..., 2]`` (for validation only)."""
    if not boxes.is_floating_point():
        boxes = boxes.long()  # uint8 differences would wrap around: 1 - 5 = 252
    if fmt in ("xyxy", "yxyx"):
        return torch.diff(boxes.reshape(-1, 2, 2), dim=1).reshape(*boxes.shape[:-1], 2)
    return boxes[..., 2:]  # xywh and cxcywh store the size directly


def _min_max(t: Tensor) -> tuple[float, float]:
    """Smallest and largest element as Python floats, with one synchronisation."""
    low, high = torch.aminmax(t)
    return tuple(torch.stack((low, high)).tolist())


def _all_finite_and_nonnegative(boxes: Tensor, extent: Tensor, fmt: str, strict: bool) -> bool:
    """Fast path: one reduction and one synchronisation for corner formats.

    A difference ``x2 - x1`` is NaN or infinite whenever either coordinate is, so the smallest and
    largest extents tell at once whether every coordinate is finite and every size non-negative.
    Formats that store the size directly need a second look at their x and y.
    """
    low, high = _min_max(extent)
    if not ((low > 0 if strict else low >= 0) and high < math.inf):
        return False
    if fmt in ("xywh", "cxcywh"):
        low, high = _min_max(boxes)
        return low > -math.inf and high < math.inf
    return True


def _check_box_values(fn: str, name: str, boxes: Tensor, fmt: str, strict: bool) -> None:
    extent = _extent(boxes, fmt)
    if _all_finite_and_nonnegative(boxes, extent, fmt, strict):
        return
    # Slow path, only taken when something is wrong: find and describe the first bad box.
    finite = torch.isfinite(boxes).all(-1)
    too_small = (extent <= 0) if strict else (extent < 0)
    bad = (~finite | too_small.any(-1)).reshape(-1)
    if not bool(bad.any()):  # float16 extents can overflow although every box is fine
        return
    first = int(bad.nonzero()[0, 0])
    row = boxes.reshape(-1, 4)[first].tolist()
    count = int(bad.sum())
    where = f"row {first}" if boxes.dim() == 2 else f"flat index {first}"
    if not bool(finite.reshape(-1)[first]):
        raise ValueError(
            f"{fn}: {name} has {count} box(es) with NaN or infinite coordinates "
            f"(first at {where}: {row})"
        )
    hint = {
        # A (y1, x1, y2, x2) box always passes this check, so the hint names the formats that fail it.
        "xyxy": "expected (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2; are these (x, y, w, h) "
        "or (cx, cy, w, h) boxes? convert them with detlib.box_convert",
        "yxyx": "expected (y1, x1, y2, x2) with y1 <= y2 and x1 <= x2",
    }.get(fmt, "expected a non-negative width and height")
    size = "zero or negative" if strict else "negative"
    if strict:
        hint += "; boxes used as a reference must have a positive width and height"
    raise ValueError(
        f"{fn}: {name} has {count} box(es) of {size} size (first at {where}: {row}); {hint}"
    )


def check_same_device(fn: str, **tensors: Tensor) -> None:
    """Raise ``ValueError`` unless all named tensors live on one device."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{fn}: {first_name} is on {first.device} but {name} is on {t.device}; "
                "move them to the same device"
            )


def check_positive(fn: str, name: str, value: float, *, allow_zero: bool = False) -> float:
    """Raise ``ValueError`` unless ``value`` is a (strictly) positive finite number (bools are
    refused with a ``TypeError``)."""
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}") from None
    ok = number >= 0 if allow_zero else number > 0
    if not ok or number != number or number in (float("inf"), float("-inf")):
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")
    return number


def check_positive_int(fn: str, name: str, value: object) -> int:
    """Raise ``ValueError`` unless ``value`` is an int >= 1 (bools refused); returns it as int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}")
    return int(value)


def check_real(fn: str, name: str, value: object) -> float:
    """Any real number but NaN (infinities allowed), as a Python float; bools are refused."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{fn}: {name} must not be NaN")
    return number


def check_image_size(fn: str, name: str, size: object) -> tuple[int, int]:
    """Normalise an image size given as ``(height, width)``; raise if it is not two positive ints."""
    if isinstance(size, torch.Size):
        size = tuple(size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"{fn}: {name} must be (height, width) as two ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"{fn}: {name} must be positive, got (height={height}, width={width})")
    return height, width


def check_finite(fn: str, name: str, value: Tensor) -> Tensor:
    """When value checks are on, raise ``ValueError`` if ``value`` holds NaN or infinity."""
    if _SWITCH.enabled and value.numel() > 0 and value.is_floating_point():
        low, high = _min_max(value)
        if not (low > -math.inf and high < math.inf):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{fn}: {name} has {bad} NaN or infinite value(s)")
    return value


def check_reduction(fn: str, reduction: str) -> str:
    """Raise ``ValueError`` unless ``reduction`` is ``"none"``, ``"mean"`` or ``"sum"``."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{fn}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction
