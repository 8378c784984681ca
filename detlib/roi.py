"""Region-of-interest pooling: RoIPool (Fast R-CNN) and RoIAlign (Mask R-CNN).

Both functions cut a fixed ``h x w`` grid of features out of a feature map for every region of
interest (RoI), so that boxes of any size can feed the same detection head. They return the same
values and input gradients as ``torchvision.ops.roi_pool`` and ``torchvision.ops.roi_align`` (up
to the order of floating-point additions), but in plain PyTorch, so every step can be read,
printed and changed:

* :func:`roi_pool` takes the maximum of each bin. All bins are answered at once from a *sparse
  table*, the maxima of every ``2**i x 2**j`` rectangle of the map: any bin is covered by four such
  rectangles anchored at its corners, so its maximum is the largest of four looked-up values.
* :func:`roi_align` averages bilinearly interpolated samples. Interpolation is linear and
  separable, so for one RoI and one channel the output is a product of three matrices,
  ``A_y @ X @ A_x.T``, where ``A_y`` (``[h, H]``) and ``A_x`` (``[w, W]``) hold the summed
  interpolation weights of each bin's samples along one axis.

RoIs are ``(batch_index, x1, y1, x2, y2)`` rows in input-image pixels, or a list with one
``Tensor[L, 4]`` of ``(x1, y1, x2, y2)`` boxes per image; ``spatial_scale`` maps them onto the
feature map. RoIs are constants: gradients flow to ``input`` only. Results are on the device of
``input``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from detlib._checks import (
    check_boxes,
    check_floating,
    check_positive,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)

__all__ = ["roi_align", "roi_pool"]

# torchvision starts each bin's maximum at -FLT_MAX (also for float64): values at or below it never
# win, and a bin holding nothing larger outputs -FLT_MAX and passes no gradient back.
_LOWEST_MAXIMUM = -torch.finfo(torch.float32).max

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


def _check_input(fn: str, input: object) -> Tensor:
    """Check that ``input`` is a floating ``Tensor[B, C, H, W]`` with ``H, W > 0``."""
    input = check_tensor(fn, "input", input)
    if input.dim() != 4:
        raise ValueError(
            f"{fn}: input must be a 4-D tensor [B, C, H, W], got shape {list(input.shape)}"
        )
    check_floating(fn, "input", input)
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(
            f"{fn}: input must have a non-empty height and width, got shape {list(input.shape)}"
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
            check_boxes(fn, name, boxes)
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


# --------------------------------------------------------------------------------------------
# RoIPool
# --------------------------------------------------------------------------------------------


def roi_pool(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI max pooling, as in Fast R-CNN and ``torchvision.ops.roi_pool``.

    Each RoI is snapped to whole feature-map cells (its corners are multiplied by
    ``spatial_scale`` and rounded half away from zero), split into ``h x w`` bins of whole cells
    and every bin is reduced to its maximum. A bin that lies outside the map outputs 0. The
    gradient of each output goes to the first maximum of its bin in row-major order, so that ties
    (frequent after a ReLU) are resolved exactly as in torchvision.

    Two small device-to-host copies happen per call: the largest bin height and width (they
    decide how many sparse-table levels to build) and, with value checks on, the outcome of the
    checks on ``rois``.

    Args:
        input: ``Tensor[B, C, H, W]`` feature map, any floating dtype.
        rois: ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)`` rows, or a list with one
            ``Tensor[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes per image, in the coordinates of the
            input image, on the device of ``input``.
        output_size: ``h`` or ``(h, w)``, the number of bins per RoI.
        spatial_scale: size of the feature map relative to the input image, e.g. ``1 / 16``.

    Returns:
        ``Tensor[K, C, h, w]`` in the dtype of ``input``, RoIs in the order given.
    """
    input, rois, output_size, spatial_scale = _prepare(
        "roi_pool", input, rois, output_size, spatial_scale
    )
    if rois.shape[0] == 0 or input.shape[1] == 0:
        return _empty_output(input, rois.shape[0], output_size)
    _, _, height, width = input.shape
    y_start, y_end = _pool_bin_edges(rois[:, 2], rois[:, 4], output_size[0], height, spatial_scale)
    x_start, x_end = _pool_bin_edges(rois[:, 1], rois[:, 3], output_size[1], width, spatial_scale)
    batch = rois[:, 0].long()
    return _RoIPoolFunction.apply(input, batch, y_start, y_end, x_start, x_end)


def _round_half_away_from_zero(values: Tensor) -> Tensor:
    """Round half away from zero, as C's ``round``.

    ``torch.round`` rounds half to even, and ``floor(v + 0.5)`` rounds ``0.49999997`` up in
    float32, so split off the whole part (exactly) and look at what is left.
    """
    whole = values.trunc()
    return whole + values.sign() * ((values - whole).abs() >= 0.5)


def _pool_bin_edges(
    low: Tensor, high: Tensor, num_bins: int, size: int, spatial_scale: float
) -> tuple[Tensor, Tensor]:
    """First and one-past-last cell of every RoIPool bin along one axis.

    Args:
        low: ``Tensor[K]``, the RoIs' ``x1`` (or ``y1``) in image coordinates.
        high: ``Tensor[K]``, the RoIs' ``x2`` (or ``y2``).
        num_bins: bins along this axis.
        size: length of the feature map along this axis.
        spatial_scale: feature-map size relative to the image.

    Returns:
        Two int64 ``Tensor[K, num_bins]``, clamped to ``[0, size]``; a bin is empty where
        ``end <= start``.
    """
    first_cell = _round_half_away_from_zero(low * spatial_scale)
    last_cell = _round_half_away_from_zero(high * spatial_scale)
    # Both end cells belong to the RoI ("+1"); a RoI with last < first counts as one cell.
    length = (last_cell - first_cell + 1).clamp(min=1)
    bin_size = length / num_bins
    bins = torch.arange(num_bins, dtype=low.dtype, device=low.device)
    start = torch.floor(bins * bin_size[:, None]) + first_cell[:, None]
    end = torch.ceil((bins + 1) * bin_size[:, None]) + first_cell[:, None]
    return start.clamp(0, size).long(), end.clamp(0, size).long()


class _RoIPoolFunction(torch.autograd.Function):
    """RoIPool with torchvision's gradient: each output's gradient goes to its bin's argmax.

    Autograd through ``max`` would split the gradient between tied maxima, hence the explicit
    backward.
    """

    @staticmethod
    def forward(ctx, input, batch, y_start, y_end, x_start, x_end):
        track_argmax = ctx.needs_input_grad[0]
        output, argmax = _bin_maxima(input, batch, y_start, y_end, x_start, x_end, track_argmax)
        if track_argmax:
            ctx.save_for_backward(argmax, batch)
            ctx.input_shape = input.shape
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        argmax, batch = ctx.saved_tensors
        grad_input = _scatter_to_argmax(grad_output, argmax, batch, ctx.input_shape)
        return grad_input, None, None, None, None, None


def _bin_maxima(
    input: Tensor,
    batch: Tensor,
    y_start: Tensor,
    y_end: Tensor,
    x_start: Tensor,
    x_end: Tensor,
    track_argmax: bool,
) -> tuple[Tensor, Tensor | None]:
    """Maximum, and optionally first argmax, of every RoIPool bin.

    Args:
        input: ``Tensor[B, C, H, W]``.
        batch: ``Tensor[K]`` (int64), the image of each RoI.
        y_start: ``Tensor[K, h]`` (int64), first row of each bin.
        y_end: ``Tensor[K, h]`` (int64), one past the last row of each bin.
        x_start: ``Tensor[K, w]`` (int64), first column of each bin.
        x_end: ``Tensor[K, w]`` (int64), one past the last column of each bin.
        track_argmax: whether to find the argmax too (needed for the backward pass only).

    Returns:
        ``Tensor[K, C, h, w]`` of maxima, and ``Tensor[K * h * w, C]`` (int32) holding for each
        bin the position ``y * W + x`` of its first maximum, or ``H * W`` where no gradient flows
        (``None`` if not tracked).
    """
    batch_size, channels, height, width = input.shape
    num_rois, out_h, out_w = len(batch), y_start.shape[1], x_start.shape[1]
    level_y, level_x = _cover_level(y_end - y_start), _cover_level(x_end - x_start)
    top_y, top_x = torch.stack((level_y.max(), level_x.max())).tolist()
    levels = (top_y + 1, top_x + 1)
    corner_rows = _corner_rows(batch, y_start, y_end, level_y, x_start, x_end, level_x, levels,
                               input.shape)

    num_bins = num_rois * out_h * out_w
    output = input.new_empty(num_rois, channels, out_h, out_w)
    argmax = input.new_empty(num_bins, channels, dtype=torch.int32) if track_argmax else None
    # Channels last: a table look-up then copies C contiguous values instead of gathering each.
    channels_last = input.permute(0, 2, 3, 1)
    table_rows = levels[0] * levels[1] * batch_size * height * width + 1
    step = max(_MIN_CHUNK_CHANNELS, _CHUNK_ELEMENTS // max(table_rows, num_bins))
    step = min(step, channels)
    # All channel chunks share one workspace: fresh memory for each would be page-faulted anew.
    workspace = input.new_empty(table_rows * step)
    index_workspace = None
    if track_argmax:
        index_workspace = workspace.new_empty(table_rows * step, dtype=torch.int32)
    for chunk in [slice(first, first + step) for first in range(0, channels, step)]:
        values, index = _sparse_tables(channels_last[..., chunk], levels, workspace,
                                       index_workspace)
        bin_max, first_max = _corner_maxima(values, index, corner_rows)
        output[:, chunk] = bin_max.view(num_rois, out_h, out_w, -1).permute(0, 3, 1, 2)
        if track_argmax:
            argmax[:, chunk] = first_max
    return output, argmax


def _cover_level(lengths: Tensor) -> Tensor:
    """Smallest ``L >= 0`` such that two windows of ``2**L`` cells cover ``n`` cells.

    That is ``floor(log2(n - 1))`` for ``n >= 2`` and 0 for ``n <= 1`` (empty bins included);
    the exponent from ``frexp`` is exact for integers below ``2**24``.
    """
    exponent = torch.frexp((lengths - 1).clamp(min=0).float()).exponent
    return (exponent.long() - 1).clamp(min=0)


def _corner_rows(
    batch: Tensor,
    y_start: Tensor,
    y_end: Tensor,
    level_y: Tensor,
    x_start: Tensor,
    x_end: Tensor,
    level_x: Tensor,
    levels: tuple[int, int],
    input_shape: torch.Size,
) -> Tensor:
    """Rows of the flattened sparse table that cover each bin with four corner windows.

    A bin of ``n >= 2`` rows is covered by two windows of ``2**L`` rows, ``n / 2 <= 2**L < n``
    (see :func:`_cover_level`), one starting at its first row and one ending at its last; their
    overlap does not matter for a maximum. Likewise for columns. The table is laid out as
    ``[levels_y, levels_x, B, H, W]`` rows followed by one spare row, which empty bins read.

    Returns:
        ``Tensor[4, K * h * w]`` (int64), corners in the order top-left, top-right, bottom-left,
        bottom-right.
    """
    batch_size, _, height, width = input_shape
    tops, bottoms = y_start, y_end - (1 << level_y)
    lefts, rights = x_start, x_end - (1 << level_x)
    level = level_y[:, :, None] * levels[1] + level_x[:, None, :]  # [K, h, w]
    image_row = (level * batch_size + batch[:, None, None]) * height
    corners = torch.stack([
        (image_row + y[:, :, None]) * width + x[:, None, :]
        for y in (tops, bottoms)
        for x in (lefts, rights)
    ])
    empty = ((y_end <= y_start)[:, :, None] | (x_end <= x_start)[:, None, :]).expand_as(level)
    spare_row = levels[0] * levels[1] * batch_size * height * width
    return corners.masked_fill_(empty, spare_row).flatten(1)


def _sparse_tables(
    channels_last: Tensor,
    levels: tuple[int, int],
    workspace: Tensor,
    index_workspace: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Maxima of every ``2**i x 2**j`` window of the map, for ``i < levels[0]``, ``j < levels[1]``.

    Row ``((i * levels[1] + j) * B + b) * H * W + y * W + x`` of ``values`` is the maximum of
    ``channels_last[b, y:y + 2**i, x:x + 2**j]``, built by doubling: first the width within single
    rows, then the height. Values are floored at -FLT_MAX, NaN included, as torchvision's running
    maximum starts there. A last, spare row holds 0 (and position ``H * W``) for empty bins.

    Args:
        channels_last: ``Tensor[B, H, W, C]``.
        levels: number of levels along y and along x.
        workspace: memory for ``values``, at least ``(levels_y * levels_x * B * H * W + 1) * C``
            elements, flat.
        index_workspace: the same in int32 to also build ``index``, the position ``y' * W + x'``
            of each window's first maximum in row-major order (``H * W`` where the maximum is only
            the -FLT_MAX floor, as no gradient flows there); ``None`` not to.

    Returns:
        ``values`` as ``Tensor[levels_y * levels_x * B * H * W + 1, C]`` and ``index`` (int32,
        same shape) or ``None``, views of the workspaces. Rows whose window would leave the map
        are left uninitialised.
    """
    batch_size, height, width, channels = channels_last.shape
    shape = (*levels, batch_size, height, width, channels)
    num_rows = math.prod(shape[:-1])
    flat_values = workspace[: (num_rows + 1) * channels].view(num_rows + 1, channels)
    flat_values[-1] = 0
    values = flat_values[:-1].view(shape)
    floor = channels_last.new_tensor(_LOWEST_MAXIMUM)
    torch.fmax(channels_last, floor, out=values[0, 0])  # fmax ignores NaN: NaN becomes the floor

    index = flat_index = None
    if index_workspace is not None:
        flat_index = index_workspace[: (num_rows + 1) * channels].view(num_rows + 1, channels)
        flat_index[-1] = height * width
        index = flat_index[:-1].view(shape)
        positions = torch.arange(height * width, dtype=torch.int32, device=values.device)
        nowhere = positions.new_tensor(height * width)
        torch.where(channels_last > floor, positions.view(height, width, 1), nowhere,
                    out=index[0, 0])

    def level(i: int, j: int) -> tuple[Tensor, Tensor | None]:
        return values[i, j], None if index is None else index[i, j]

    for j in range(1, levels[1]):
        _merge_halves(*level(0, j - 1), *level(0, j), dim=2, half=1 << (j - 1))
    for i in range(1, levels[0]):
        for j in range(levels[1]):
            _merge_halves(*level(i - 1, j), *level(i, j), dim=1, half=1 << (i - 1))
    return flat_values, flat_index


def _merge_halves(
    values: Tensor,
    index: Tensor | None,
    out_values: Tensor,
    out_index: Tensor | None,
    dim: int,
    half: int,
) -> None:
    """Fill the next level: window ``[p, p + 2 * half)`` along ``dim`` is the better of
    ``[p, p + half)`` and ``[p + half, p + 2 * half)``.

    Within a row (``dim`` = x, first level) and between rows (``dim`` = y) every position of the
    first half comes before every position of the second, so the first half wins ties.
    """
    count = values.shape[dim] - 2 * half + 1
    first, second = values.narrow(dim, 0, count), values.narrow(dim, half, count)
    if index is not None:
        # index = first + (second - first) * second_wins: a select several times faster than
        # torch.where on the CPU.
        first_index, out = index.narrow(dim, 0, count), out_index.narrow(dim, 0, count)
        torch.sub(index.narrow(dim, half, count), first_index, out=out)
        out.mul_(second > first).add_(first_index)
    torch.maximum(first, second, out=out_values.narrow(dim, 0, count))


def _corner_maxima(
    values: Tensor, index: Tensor | None, corner_rows: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Maximum (and first argmax) of each bin from its four corner windows.

    Args:
        values: flattened sparse table, ``Tensor[R, C]`` (see :func:`_sparse_tables`).
        index: its positions of first maxima, or ``None``.
        corner_rows: ``Tensor[4, N]``, see :func:`_corner_rows`.

    Returns:
        ``Tensor[N, C]`` of maxima and ``Tensor[N, C]`` (int32) of positions, or ``None``.
    """
    bin_max = values.index_select(0, corner_rows[0])
    corner = torch.empty_like(bin_max)
    first_max = corner_index = None
    if index is not None:
        first_max = index.index_select(0, corner_rows[0])
        corner_index = torch.empty_like(first_max)
    for rows in corner_rows[1:]:
        torch.index_select(values, 0, rows, out=corner)
        if index is not None:
            torch.index_select(index, 0, rows, out=corner_index)
            _keep_earliest_maximum(bin_max, first_max, corner, corner_index)
        else:
            torch.maximum(bin_max, corner, out=bin_max)
    return bin_max, first_max


def _keep_earliest_maximum(
    best: Tensor, best_index: Tensor, candidate: Tensor, candidate_index: Tensor
) -> None:
    """Update ``best`` and ``best_index`` in place with a candidate window's maximum.

    The corner windows overlap, so their first maxima can tie in any order: the candidate wins if
    it is larger, or equal at an earlier position. ``candidate_index`` is overwritten.
    """
    wins = candidate > best
    wins |= (candidate == best) & (candidate_index < best_index)
    best_index.add_(candidate_index.sub_(best_index).mul_(wins))
    torch.maximum(best, candidate, out=best)


def _scatter_to_argmax(
    grad_output: Tensor, argmax: Tensor, batch: Tensor, input_shape: torch.Size
) -> Tensor:
    """Backward of RoIPool: add each output's gradient at its bin's argmax.

    Args:
        grad_output: ``Tensor[K, C, h, w]``.
        argmax: ``Tensor[K * h * w, C]`` (int32) of positions ``y * W + x``; ``H * W`` for none.
        batch: ``Tensor[K]`` (int64), the image of each RoI.
        input_shape: ``(B, C, H, W)``.

    Returns:
        ``Tensor[B, C, H, W]``, the gradient with respect to ``input``.
    """
    batch_size, channels, height, width = input_shape
    num_rois = len(batch)
    # One spare slot per channel plane collects, and drops, the gradient of bins without argmax.
    slots = height * width + 1
    grad_planes = grad_output.new_zeros(batch_size * channels, slots)
    grad = grad_output.permute(0, 2, 3, 1)  # [K, h, w, C], the layout of argmax
    argmax = argmax.view(grad.shape)
    planes = batch[:, None, None, None] * channels + torch.arange(channels, device=batch.device)
    step = max(1, _CHUNK_ELEMENTS // (2 * argmax[0].numel()))  # int64 targets: half as many
    for first in range(0, num_rois, step):
        rois = slice(first, first + step)
        target = planes[rois] * slots + argmax[rois]
        grad_planes.view(-1).scatter_add_(0, target.flatten(), grad[rois].flatten())
    return grad_planes[:, :-1].reshape(input_shape)


# --------------------------------------------------------------------------------------------
# RoIAlign
# --------------------------------------------------------------------------------------------


def roi_align(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI align, as in Mask R-CNN and ``torchvision.ops.roi_align``.

    Each RoI is split into ``h x w`` bins without any rounding; each bin is the average of a
    regular grid of bilinearly interpolated samples. Samples more than one cell outside the map
    count as 0 (but still count in the average). Because the interpolation weights factor into a
    y part and an x part, each RoI is computed as ``A_y @ X @ A_x.T`` per channel, with the weight
    matrices ``A_y`` (``[h, H]``) and ``A_x`` (``[w, W]``) built from the samples: a few matrix
    products instead of one gather per sample, and the backward pass is the same products
    transposed. Unlike in torchvision, a NaN or infinity in ``input`` spreads to every output of
    its image and channel, as the products multiply it by zero weights.

    Device-to-host copies per call: the number of RoIs of each image (to process the images one
    by one), the largest sampling grid when ``sampling_ratio <= 0`` (it sizes a padded grid), and,
    with value checks on, the outcome of the checks on ``rois``. float16 and bfloat16 inputs are
    computed in float32.

    Args:
        input: ``Tensor[B, C, H, W]`` feature map, any floating dtype.
        rois: ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)`` rows, or a list with one
            ``Tensor[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes per image, in the coordinates of the
            input image, on the device of ``input``.
        output_size: ``h`` or ``(h, w)``, the number of bins per RoI.
        spatial_scale: size of the feature map relative to the input image, e.g. ``1 / 16``.
        sampling_ratio: samples per bin along each axis; if ``<= 0``, ``ceil(roi_height / h)``
            by ``ceil(roi_width / w)`` samples, chosen per RoI.
        aligned: shift the RoI coordinates by -0.5 cell, so that they are measured like the
            cell centres (as in Detectron2). ``False`` keeps the original behaviour, including a
            minimum RoI size of one cell.

    Returns:
        ``Tensor[K, C, h, w]`` in the dtype of ``input``, RoIs in the order given.
    """
    fn = "roi_align"
    input, rois, output_size, spatial_scale = _prepare(
        fn, input, rois, output_size, spatial_scale
    )
    if not isinstance(sampling_ratio, numbers.Integral) or isinstance(sampling_ratio, bool):
        raise TypeError(f"{fn}: sampling_ratio must be an int, got {sampling_ratio!r}")
    if not isinstance(aligned, bool):
        raise TypeError(f"{fn}: aligned must be a bool, got {aligned!r}")
    if rois.shape[0] == 0 or input.shape[1] == 0:
        return _empty_output(input, rois.shape[0], output_size)

    (out_h, out_w), (_, _, height, width) = output_size, input.shape
    start_y, bin_h, grid_h = _align_bins(rois[:, 2], rois[:, 4], out_h, spatial_scale,
                                         sampling_ratio, aligned)
    start_x, bin_w, grid_w = _align_bins(rois[:, 1], rois[:, 3], out_w, spatial_scale,
                                         sampling_ratio, aligned)
    if sampling_ratio > 0:
        max_grid_h = max_grid_w = int(sampling_ratio)
    else:  # the padded sample grid is as large as the largest RoI's
        max_grid_h, max_grid_w = torch.stack((grid_h.max(), grid_w.max())).clamp(min=0).tolist()
    weights_y = _interpolation_weights(start_y, bin_h, grid_h, max_grid_h, out_h, height)
    weights_x = _interpolation_weights(start_x, bin_w, grid_w, max_grid_w, out_w, width)
    features = input.to(weights_y.dtype).contiguous()
    output = _RoIAlignFunction.apply(features, rois[:, 0].long(), weights_y, weights_x)
    return output.to(input.dtype)


def _align_bins(
    low: Tensor,
    high: Tensor,
    num_bins: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Start, bin size and sampling grid of every RoI along one axis, in feature-map cells.

    Args:
        low: ``Tensor[K]``, the RoIs' ``x1`` (or ``y1``) in image coordinates.
        high: ``Tensor[K]``, the RoIs' ``x2`` (or ``y2``).
        num_bins: bins along this axis.
        spatial_scale: feature-map size relative to the image.
        sampling_ratio: fixed samples per bin, or ``<= 0`` for ``ceil(bin_size)``.
        aligned: subtract half a cell from the coordinates; otherwise a RoI is at least one
            cell long.

    Returns:
        ``start`` and ``bin_size`` (``Tensor[K]``, compute dtype) and ``grid`` (``Tensor[K]``,
        int64; ``<= 0`` means no samples, which happens for inverted RoIs when ``aligned``).
    """
    offset = 0.5 if aligned else 0.0
    start = low * spatial_scale - offset
    length = high * spatial_scale - offset - start
    if not aligned:
        length = length.clamp(min=1.0)
    bin_size = length / num_bins
    if sampling_ratio > 0:
        grid = torch.full_like(start, sampling_ratio, dtype=torch.int64)
    else:
        grid = torch.ceil(bin_size).long()
    return start, bin_size, grid


def _interpolation_weights(
    start: Tensor, bin_size: Tensor, grid: Tensor, max_grid: int, num_bins: int, size: int
) -> Tensor:
    """Summed bilinear weights of each bin's samples along one axis, divided by the grid size.

    Sample ``s`` of bin ``p`` lies at ``start + p * bin_size + (s + 0.5) * bin_size / grid``
    (computed in this order, as torchvision does, so that boundary cases agree). It is dropped if
    it lies below -1 or above ``size``; otherwise it is clamped into ``[0, size - 1]`` and split
    between the two neighbouring cells. Dividing by the grid size along both axes makes the
    product of the two weight matrices the average over the bin's samples.

    Args:
        start: ``Tensor[K]``.
        bin_size: ``Tensor[K]``.
        grid: ``Tensor[K]`` (int64), samples per bin of each RoI.
        max_grid: ``grid.max()``, the padded number of samples.
        num_bins: bins along this axis.
        size: length of the feature map along this axis.

    Returns:
        ``Tensor[K, num_bins, size]``: row ``p`` of RoI ``k`` holds the weight of each cell in
        the average of bin ``p``.
    """
    dtype, device = start.dtype, start.device
    bins = torch.arange(num_bins, dtype=dtype, device=device)[:, None]  # [num_bins, 1]
    samples = torch.arange(max_grid, dtype=dtype, device=device)  # [max_grid]
    start, bin_size, grid = start[:, None, None], bin_size[:, None, None], grid[:, None, None]
    coords = start + bins * bin_size + (samples + 0.5) * bin_size / grid  # [K, num_bins, max_grid]

    used = (samples < grid) & (coords >= -1) & (coords <= size)
    # Unused samples (padding, or outside the map) get weight 0 and a harmless coordinate.
    coords = torch.where(used, coords, 0).clamp(min=0)
    low = coords.floor().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)  # on the last cell both neighbours are the last cell
    fraction = coords - low
    share = used.to(dtype) / grid.clamp(min=1)

    cells = torch.cat((low, high), dim=-1).long()
    weights = torch.cat(((1 - fraction) * share, fraction * share), dim=-1)
    matrix = weights.new_zeros(len(start), num_bins, size)
    return matrix.scatter_add_(2, cells, weights)


class _RoIAlignFunction(torch.autograd.Function):
    """``output[k, c] = weights_y[k] @ features[batch[k], c] @ weights_x[k].T`` for every RoI.

    RoIs are grouped by image, so that one matrix product serves many RoIs, and cut into chunks
    that bound the size of the intermediate ``[n, w, C, H]`` tensor. The map is linear, and its
    backward applies the transposed products in reverse order. Autograd would derive the same,
    but it would allocate a gradient as large as the image for every chunk; here the chunks add
    into one.
    """

    @staticmethod
    def forward(ctx, features, batch, weights_y, weights_x):
        chunks = _image_chunks(batch, features.shape, weights_x.shape[1])
        num_rois, channels = len(batch), features.shape[1]
        output = features.new_empty(num_rois, channels, weights_y.shape[1], weights_x.shape[1])
        for image, rois in chunks:
            output[rois] = _align_rois(features[image], weights_y[rois], weights_x[rois])
        ctx.save_for_backward(weights_y, weights_x)
        ctx.chunks, ctx.features_shape = chunks, features.shape
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        weights_y, weights_x = ctx.saved_tensors
        grad_features = grad_output.new_zeros(ctx.features_shape)
        for image, rois in ctx.chunks:
            _align_rois_backward(grad_output[rois], weights_y[rois], weights_x[rois],
                                 grad_features[image])
        return grad_features, None, None, None


def _image_chunks(
    batch: Tensor, features_shape: torch.Size, out_w: int
) -> list[tuple[int, Tensor]]:
    """Group the RoIs by image and cut each group into chunks (one device-to-host copy).

    Args:
        batch: ``Tensor[K]`` (int64), the image of each RoI.
        features_shape: ``(B, C, H, W)``.
        out_w: bins along x, which sets the size of the intermediate tensor per RoI.

    Returns:
        ``(image, rois)`` pairs, ``rois`` an int64 tensor of at most the chunk size.
    """
    batch_size, channels, height, _ = features_shape
    order = torch.argsort(batch, stable=True)
    rois_per_image = torch.bincount(batch, minlength=batch_size).tolist()
    chunk = max(1, _CHUNK_ELEMENTS // (out_w * channels * height))
    return [
        (image, rois)
        for image, image_rois in enumerate(order.split(rois_per_image))
        for rois in image_rois.split(chunk)
        if len(rois) > 0
    ]


def _align_rois(image: Tensor, weights_y: Tensor, weights_x: Tensor) -> Tensor:
    """RoIAlign of ``n`` RoIs of one image.

    Args:
        image: ``Tensor[C, H, W]``, contiguous.
        weights_y: ``Tensor[n, h, H]``.
        weights_x: ``Tensor[n, w, W]``.

    Returns:
        ``Tensor[n, C, h, w]`` (a permuted view).
    """
    channels, height, width = image.shape
    num_rois, out_h, out_w = len(weights_y), weights_y.shape[1], weights_x.shape[1]
    # Along x, for every row of every channel: [n * w, W] @ [W, C * H] -> [n, w * C, H].
    along_x = weights_x.reshape(num_rois * out_w, width) @ image.view(channels * height, width).T
    along_x = along_x.view(num_rois, out_w * channels, height)
    # Along y, one product per RoI: [n, h, H] @ [n, H, w * C] -> [n, h, w, C].
    pooled = torch.bmm(weights_y, along_x.transpose(1, 2))
    return pooled.view(num_rois, out_h, out_w, channels).permute(0, 3, 1, 2)


def _align_rois_backward(
    grad: Tensor, weights_y: Tensor, weights_x: Tensor, grad_image: Tensor
) -> None:
    """Add the gradient of :func:`_align_rois` with respect to ``image`` to ``grad_image``.

    Args:
        grad: ``Tensor[n, C, h, w]``, gradient of the output.
        weights_y: ``Tensor[n, h, H]``.
        weights_x: ``Tensor[n, w, W]``.
        grad_image: ``Tensor[C, H, W]``, contiguous, updated in place.
    """
    num_rois, channels, out_h, out_w = grad.shape
    height, width = weights_y.shape[2], weights_x.shape[2]
    # Transposed product along y: [n, w * C, h] @ [n, h, H] -> [n, w * C, H].
    grad = grad.permute(0, 3, 1, 2).reshape(num_rois, out_w * channels, out_h)
    grad_along_x = torch.bmm(grad, weights_y).view(num_rois * out_w, channels * height)
    # Transposed product along x, summed over the RoIs: [C * H, n * w] @ [n * w, W].
    grad_image.view(channels * height, width).addmm_(
        grad_along_x.T, weights_x.reshape(num_rois * out_w, width)
    )
