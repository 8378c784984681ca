"""RoI Align (Mask R-CNN): bilinearly interpolated samples, averaged per bin.

:func:`roi_align` returns the same values and input gradients as ``torchvision.ops.roi_align``
(up to the order of floating-point additions), in plain PyTorch. Interpolation is linear and
separable, so for one RoI and one channel the output is a product of three matrices,
``A_y @ X @ A_x.T``, where ``A_y`` (``[h, H]``) and ``A_x`` (``[w, W]``) hold the summed
interpolation weights of each bin's samples along one axis.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from detlib.roi import _common
from detlib.roi._common import _empty_output, _prepare

__all__ = ["roi_align"]


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
    input, rois, output_size, spatial_scale = _prepare(fn, input, rois, output_size, spatial_scale)
    if not isinstance(sampling_ratio, numbers.Integral) or isinstance(sampling_ratio, bool):
        raise TypeError(f"{fn}: sampling_ratio must be an int, got {sampling_ratio!r}")
    if not isinstance(aligned, bool):
        raise TypeError(f"{fn}: aligned must be a bool, got {aligned!r}")
    return _roi_align(input, rois, output_size, spatial_scale, int(sampling_ratio), aligned)


def _roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """:func:`roi_align` without its checks, for callers that checked their arguments once.

    ``rois`` is a detached ``Tensor[K, 5]`` in the compute dtype. Under ``torch.autocast`` the
    work runs in float32 (float64 for float64 input) with autocast off, and the result has the
    dtype of ``input``, as torchvision's autocast rule for ``roi_align`` does.
    """
    if rois.shape[0] == 0 or input.shape[1] == 0:
        return _empty_output(input, rois.shape[0], output_size)
    with _common.autocast_off(input.device):
        return _align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _align(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """The arithmetic of :func:`_roi_align`, for at least one RoI and one channel."""
    (out_h, out_w), (_, _, height, width) = output_size, input.shape
    start_y, bin_h, grid_h = _align_bins(
        rois[:, 2], rois[:, 4], out_h, spatial_scale, sampling_ratio, aligned
    )
    start_x, bin_w, grid_w = _align_bins(
        rois[:, 1], rois[:, 3], out_w, spatial_scale, sampling_ratio, aligned
    )
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
            _align_rois_backward(
                grad_output[rois], weights_y[rois], weights_x[rois], grad_features[image]
            )
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
    chunk = max(1, _common._CHUNK_ELEMENTS // (out_w * channels * height))
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
