"""What RoI Pool and RoI Align share: argument checks, the RoI format and the chunk size.

RoIs are ``(batch_index, x1, y1, x2, y2)`` rows in input-image pixels, or a list with one
``Tensor[L, 4]`` of ``(x1, y1, x2, y2)`` boxes per image; ``spatial_scale`` maps them onto the
feature map. RoIs are constants: gradients flow to ``input`` only.
"""

from __future__ import annotations

import contextlib
import numbers

import torch
from torch import Tensor

from detlib._checks import (
    check_boxes,
    check_floating,
    check_positive,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)

__all__: list[str] = []

# Upper bound on the elements of each large temporary tensor (sparse tables and look-ups in
# roi_pool, interpolated rows in roi_align): it bounds memory, and it keeps blocks small enough
# (16 MiB in float32) for the CPU allocator to reuse them instead of mapping fresh memory from the
# operating system, whose page faults would otherwise cost more than the arithmetic.
_CHUNK_ELEMENTS = 2**22
# ...except that roi_pool handles at least this many channels at a time: on large maps, chunks of
# one or two channels would spend more time in per-operation overhead than in arithmetic.
_MIN_CHUNK_CHANNELS = 8


# --------------------------------------------------------------------------------------------
# Argument checks, shared by both functions
# --------------------------------------------------------------------------------------------


def _check_input(fn: str, input: object, name: str = "input") -> Tensor:
    """Check that ``input`` is a floating ``Tensor[B, C, H, W]`` with ``H, W > 0``."""
    input = check_tensor(fn, name, input)
    if input.dim() != 4:
        raise ValueError(
            f"{fn}: {name} must be a 4-D tensor [B, C, H, W], got shape {list(input.shape)}"
        )
    check_floating(fn, name, input)
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(
            f"{fn}: {name} must have a non-empty height and width, got shape {list(input.shape)}"
        )
    return input


def _check_output_size(fn: str, output_size: object) -> tuple[int, int]:
    """Normalise ``output_size`` (an int or ``(h, w)``) to a pair of positive ints."""

    def is_int(value: object) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    size = (output_size, output_size) if is_int(output_size) else output_size
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(map(is_int, size)):
        raise TypeError(
            f"{fn}: output_size must be an int or a pair of ints (height, width), "
            f"got {output_size!r}"
        )
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"{fn}: output_size must be positive, got {output_size!r}")
    return height, width


def _check_batch_indices(fn: str, indices: Tensor, batch_size: int) -> None:
    """Raise unless every batch index is an integer in ``[0, batch_size)`` (one synchronisation)."""
    bad = (indices < 0) | (indices >= batch_size) | (indices != indices.trunc())
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{fn}: rois[:, 0] must hold integer batch indices in [0, {batch_size}) for an input "
            f"of batch size {batch_size}, got {indices[first].item()} at row {first}"
        )


def _check_rois(fn: str, rois: object, input: Tensor) -> Tensor:
    """Check ``rois`` in either accepted form and return them as ``Tensor[K, 5]``.

    Coordinates are checked like every box in detlib (finite, ``x1 <= x2``, ``y1 <= y2``) and the
    batch indices against the batch size, when value checks are on.
    """
    batch_size = input.shape[0]
    if isinstance(rois, Tensor):
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise ValueError(
                f"{fn}: rois must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2) rows or a "
                f"list of Tensor[L, 4], got a tensor of shape {list(rois.shape)}"
            )
        check_same_device(fn, input=input, rois=rois)
        check_boxes(fn, "rois[:, 1:]", rois[:, 1:])
        if value_checks_enabled() and rois.shape[0] > 0:
            _check_batch_indices(fn, rois[:, 0], batch_size)
        return rois
    if isinstance(rois, (list, tuple)):
        if len(rois) > batch_size:
            raise ValueError(
                f"{fn}: rois as a list must hold one Tensor[L, 4] per image, got {len(rois)} "
                f"tensors for an input of batch size {batch_size}"
            )
        for i, boxes in enumerate(rois):
            name = f"rois[{i}]"
            check_same_device(fn, input=input, **{name: check_tensor(fn, name, boxes)})
        for i, boxes in enumerate(rois):  # values last, after every device
            check_boxes(fn, f"rois[{i}]", boxes)
        return _boxes_to_rois(rois, input)
    raise TypeError(
        f"{fn}: rois must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(rois).__name__}"
    )


def _boxes_to_rois(boxes: list[Tensor] | tuple[Tensor, ...], input: Tensor) -> Tensor:
    """Turn one ``Tensor[L_i, 4]`` per image into ``Tensor[K, 5]`` rows ``(i, x1, y1, x2, y2)``."""
    dtype = _compute_dtype(input)
    rows = [input.new_zeros((0, 5), dtype=dtype)]
    for i, image_boxes in enumerate(boxes):
        image_index = image_boxes.new_full((len(image_boxes), 1), i, dtype=dtype)
        rows.append(torch.cat((image_index, image_boxes.to(dtype)), dim=1))
    return torch.cat(rows)


def _compute_dtype(input: Tensor) -> torch.dtype:
    """Dtype of the coordinate arithmetic: that of ``input``, float32 for float16/bfloat16."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _empty_output(input: Tensor, num_rois: int, output_size: tuple[int, int]) -> Tensor:
    """A zero-size ``Tensor[num_rois, C, h, w]`` that still depends on ``input`` for autograd."""
    height, width = output_size
    return input[:1, :, :1, :1].expand(num_rois, input.shape[1], height, width).contiguous()


def _prepare(
    fn: str, input: object, rois: object, output_size: object, spatial_scale: object
) -> tuple[Tensor, Tensor, tuple[int, int], float]:
    """Run the checks common to both functions; return ``rois`` as a detached ``[K, 5]`` tensor
    in the compute dtype."""
    input = _check_input(fn, input)
    rois = _check_rois(fn, rois, input)
    size = _check_output_size(fn, output_size)
    scale = check_positive(fn, "spatial_scale", spatial_scale)
    return input, rois.detach().to(_compute_dtype(input)), size, scale


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which autocast is off on ``device``'s type (a no-op where autocast does not
    exist). RoI pooling computes in float32 or float64 itself, like torchvision's kernels, whose
    autocast rule casts the inputs to float32 and runs the kernel with autocast off."""
    is_available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if is_available(device.type) if is_available else device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
