"""RoI Pool (Fast R-CNN): the maximum of each bin, answered from a sparse table.

:func:`roi_pool` returns the same values and input gradients as ``torchvision.ops.roi_pool``, in
plain PyTorch. All bins are answered at once from a *sparse table*, the maxima of every
``2**i x 2**j`` rectangle of the map: any bin is covered by four such rectangles anchored at its
corners, so its maximum is the largest of four looked-up values.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from detlib.roi import _common
from detlib.roi._common import _empty_output, _prepare

__all__ = ["roi_pool"]

# torchvision starts each bin's maximum at -FLT_MAX (also for float64): values at or below it never
# win, and a bin holding nothing larger outputs -FLT_MAX and passes no gradient back.
_LOWEST_MAXIMUM = -torch.finfo(torch.float32).max


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
    with _common.autocast_off(input.device):  # max pooling needs no lower precision
        return _pool(input, rois, output_size, spatial_scale)


def _pool(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float
) -> Tensor:
    """The arithmetic of :func:`roi_pool`, for at least one RoI and one channel; ``rois`` is a
    checked, detached ``Tensor[K, 5]`` in the compute dtype."""
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
    plan = _TablePlan.for_levels(level_y, level_x)
    corner_rows = _corner_rows(
        batch, y_start, y_end, level_y, x_start, x_end, level_x, plan, input.shape
    )

    num_bins = num_rois * out_h * out_w
    output = input.new_empty(num_rois, channels, out_h, out_w)
    argmax = input.new_empty(num_bins, channels, dtype=torch.int32) if track_argmax else None
    # Channels last: a table look-up then copies C contiguous values instead of gathering each.
    channels_last = input.permute(0, 2, 3, 1)
    table_rows = plan.num_planes * batch_size * height * width + 1
    step = max(_common._MIN_CHUNK_CHANNELS, _common._CHUNK_ELEMENTS // max(table_rows, num_bins))
    step = min(step, channels)
    # All channel chunks share one workspace: fresh memory for each would be page-faulted anew.
    workspace = input.new_empty(table_rows * step)
    index_workspace = None
    if track_argmax:
        index_workspace = workspace.new_empty(table_rows * step, dtype=torch.int32)
    for chunk in [slice(first, first + step) for first in range(0, channels, step)]:
        values, index = _sparse_tables(channels_last[..., chunk], plan, workspace, index_workspace)
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


# Window levels are below 63 (a window of 2**L cells fits in an int64 length).
_MAX_LEVELS = 64


class _TablePlan(NamedTuple):
    """Which ``2**i x 2**j`` window tables to keep, and how to build them with little memory.

    The bins only ever read the levels ``(i, j)`` their heights and widths need (one RoI of the
    whole map needs a single one), so only those are kept, each in a *plane* of
    ``B * H * W`` rows; the levels between are built in a few scratch planes that are reused.

    * ``plane_of``: ``Tensor[2, 64]`` (int64, on the device), ``plane_of[0, i] * len(used_x) +
      plane_of[1, j]`` is the plane of level ``(i, j)``;
    * ``steps``: ``(source, target, axis, half)`` merges in build order (``source`` -1: the map
      itself, floored), see :func:`_sparse_tables`;
    * ``num_planes``: kept planes first, then the scratch planes.
    """

    plane_of: Tensor
    steps: list[tuple[int, int, int, int]]
    num_planes: int

    @staticmethod
    def for_levels(level_y: Tensor, level_x: Tensor) -> _TablePlan:
        """The plan for the bins' levels (``Tensor[K, h]`` and ``Tensor[K, w]``, int64), read
        with one device-to-host copy."""
        present = level_y.new_zeros(2, _MAX_LEVELS, dtype=torch.bool)
        present[0, level_y.flatten()] = True
        present[1, level_x.flatten()] = True
        used_y, used_x = ([k for k, on in enumerate(row) if on] for row in present.tolist())
        plane_of = present.long().cumsum(dim=1) - 1
        kept = {
            (i, j): a * len(used_x) + b for a, i in enumerate(used_y) for b, j in enumerate(used_x)
        }
        scratch = iter(range(len(kept), len(kept) + 4))
        x_spare, y_spare = [next(scratch), next(scratch)], [next(scratch), next(scratch)]
        steps: list[tuple[int, int, int, int]] = []
        current_x = -1
        for j in range(used_x[-1] + 1):
            target = kept.get((0, j), x_spare[0] if x_spare[0] != current_x else x_spare[1])
            steps.append((current_x, target, 2, (1 << j) // 2))  # j = 0: the floored map
            current_x = target
            if j not in used_x:
                continue
            current_y = current_x
            for i in range(1, used_y[-1] + 1):
                spare = y_spare[0] if y_spare[0] != current_y else y_spare[1]
                target = kept.get((i, j), spare)
                steps.append((current_y, target, 1, 1 << (i - 1)))
                current_y = target
        planes = {plane for step in steps for plane in step[:2] if plane >= 0} | set(kept.values())
        # Renumber the scratch planes that are used so that they follow the kept ones.
        renumber = {p: n for n, p in enumerate(sorted(planes))}
        steps = [(renumber.get(a, -1), renumber[b], axis, half) for a, b, axis, half in steps]
        return _TablePlan(plane_of, steps, len(planes))


def _corner_rows(
    batch: Tensor,
    y_start: Tensor,
    y_end: Tensor,
    level_y: Tensor,
    x_start: Tensor,
    x_end: Tensor,
    level_x: Tensor,
    plan: _TablePlan,
    input_shape: torch.Size,
) -> Tensor:
    """Rows of the flattened sparse table that cover each bin with four corner windows.

    A bin of ``n >= 2`` rows is covered by two windows of ``2**L`` rows, ``n / 2 <= 2**L < n``
    (see :func:`_cover_level`), one starting at its first row and one ending at its last; their
    overlap does not matter for a maximum. Likewise for columns. The table is laid out as
    ``[planes, B, H, W]`` rows followed by one spare row, which empty bins read.

    Returns:
        ``Tensor[4, K * h * w]`` (int64), corners in the order top-left, top-right, bottom-left,
        bottom-right.
    """
    batch_size, _, height, width = input_shape
    tops, bottoms = y_start, y_end - (1 << level_y)
    lefts, rights = x_start, x_end - (1 << level_x)
    plane_y, plane_x = plan.plane_of[0][level_y], plan.plane_of[1][level_x]
    plane = plane_y[:, :, None] * (plan.plane_of[1, -1] + 1) + plane_x[:, None, :]  # [K, h, w]
    image_row = (plane * batch_size + batch[:, None, None]) * height
    corners = torch.stack(
        [
            (image_row + y[:, :, None]) * width + x[:, None, :]
            for y in (tops, bottoms)
            for x in (lefts, rights)
        ]
    )
    empty = ((y_end <= y_start)[:, :, None] | (x_end <= x_start)[:, None, :]).expand_as(plane)
    spare_row = plan.num_planes * batch_size * height * width
    return corners.masked_fill_(empty, spare_row).flatten(1)


def _sparse_tables(
    channels_last: Tensor,
    plan: _TablePlan,
    workspace: Tensor,
    index_workspace: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Maxima of the ``2**i x 2**j`` windows of the map that ``plan`` keeps.

    Row ``(p * B + b) * H * W + y * W + x`` of ``values``, for the plane ``p`` of level
    ``(i, j)``, is the maximum of ``channels_last[b, y:y + 2**i, x:x + 2**j]``, built by
    doubling: first the width within single rows, then the height. Values are floored at
    -FLT_MAX, NaN included, as torchvision's running maximum starts there. A last, spare row holds
    0 (and position ``H * W``) for empty bins.

    Args:
        channels_last: ``Tensor[B, H, W, C]``.
        plan: the levels to keep and the merges that build them.
        workspace: memory for ``values``, at least ``(num_planes * B * H * W + 1) * C`` elements.
        index_workspace: the same in int32 to also build ``index``, the position ``y' * W + x'``
            of each window's first maximum in row-major order (``H * W`` where the maximum is only
            the -FLT_MAX floor, as no gradient flows there); ``None`` not to.

    Returns:
        ``values`` as ``Tensor[num_planes * B * H * W + 1, C]`` and ``index`` (int32, same shape)
        or ``None``, views of the workspaces. Rows whose window would leave the map, and the
        scratch planes, hold no meaningful values.
    """
    batch_size, height, width, channels = channels_last.shape
    shape = (plan.num_planes, batch_size, height, width, channels)
    num_rows = math.prod(shape[:-1])
    flat_values = workspace[: (num_rows + 1) * channels].view(num_rows + 1, channels)
    flat_values[-1] = 0
    values = flat_values[:-1].view(shape)
    floor = channels_last.new_tensor(_LOWEST_MAXIMUM)

    index = flat_index = None
    if index_workspace is not None:
        flat_index = index_workspace[: (num_rows + 1) * channels].view(num_rows + 1, channels)
        flat_index[-1] = height * width
        index = flat_index[:-1].view(shape)

    for source, target, axis, half in plan.steps:
        if source < 0:
            # fmax ignores NaN: NaN becomes the floor.
            torch.fmax(channels_last, floor, out=values[target])
            if index is not None:
                positions = torch.arange(height * width, dtype=torch.int32, device=values.device)
                nowhere = positions.new_tensor(height * width)
                torch.where(
                    channels_last > floor,
                    positions.view(height, width, 1),
                    nowhere,
                    out=index[target],
                )
            continue
        _merge_halves(
            values[source],
            None if index is None else index[source],
            values[target],
            None if index is None else index[target],
            dim=axis,
            half=half,
        )
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
    step = max(1, _common._CHUNK_ELEMENTS // (2 * argmax[0].numel()))  # int64 targets: half as many
    for first in range(0, num_rois, step):
        rois = slice(first, first + step)
        target = planes[rois] * slots + argmax[rois]
        grad_planes.view(-1).scatter_add_(0, target.flatten(), grad[rois].flatten())
    return grad_planes[:, :-1].reshape(input_shape)
