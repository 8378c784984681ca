"""Greedy non-maximum suppression (NMS), vectorised, with the results of ``torchvision.ops``.

A detector proposes many boxes around each object. Greedy NMS keeps the best of them:

1. visit the boxes by decreasing score;
2. keep a box unless it overlaps an already kept box with an IoU strictly above the threshold.

Written as a loop over boxes (chapter 7 starts there) this is slow in Python, and the loop cannot
simply be replaced by one ``[N, N]`` IoU matrix: for 20,000 boxes that matrix alone is 1.6 GB.
This module walks the boxes in score order in *blocks* of a few hundred instead:

* the boxes still in the running are never suppressed by a box kept so far (see the last step);
* inside a block, the greedy decisions are found exactly by a fixed-point iteration on the
  block's ``[B, B]`` "suppresses" matrix;
* the boxes kept in the block then remove every later box that they suppress, so the next block
  again starts from boxes that nothing kept has suppressed.

Each block costs a few small host synchronisations (to pick out the kept and the surviving
boxes, and one per round of the fixed-point iteration), never one per box. IoUs are computed
for at most about four million pairs at a time, whatever the number of boxes. With categories
(:func:`batched_nms`) the boxes are visited category by category, so that a block's kept boxes
only need to be compared with the later boxes of their own category.

:func:`soft_nms` (Bodla et al., 2017) lowers the scores of overlapping boxes instead of removing
them; each step depends on all the decays before it, so it walks the kept boxes one by one.

Parity with torchvision, down to the last bit:

* Boxes are visited by decreasing score, and boxes with equal scores by increasing index: a
  stable sort, as in torchvision's kernels. (A plain ``torch.sort(descending=True)`` is not
  stable on the CPU beyond 16 elements, so ties would be visited in an arbitrary order.)
* The IoU is ``inter / (area_i + area_j - inter)`` with ``area = (x2 - x1) * (y2 - y1)``, as in
  the kernels, so a pair whose IoU lands exactly on the threshold is decided the same way. A pair
  of zero-area boxes gives ``0 / 0 = NaN``, and NaN is never above the threshold.
* On the CPU, torchvision compares the IoU with the threshold as a float64 number; its GPU
  kernels first round the threshold to float32. Both are reproduced.
  float16 and bfloat16 boxes are handled as in torchvision's CUDA kernel: intersection widths
  and heights in the input dtype, products and the division in float32. (torchvision's CPU
  kernel accepts only float32 and float64.)
* One caveat on CUDA: the compiler may fuse a multiplication and an addition of torchvision's
  kernel into one step with a single rounding, so an IoU within a rounding error of the threshold
  can, rarely, be decided differently there. On the CPU the results agree bit for bit.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from detlib._checks import (
    check_boxes,
    check_floating,
    check_real,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)

__all__ = ["nms", "batched_nms", "soft_nms"]

# Boxes decided together in one round. Larger blocks mean fewer rounds but more wasted pairs: a
# round compares every box of its block with the later candidates, including the block's boxes
# that turn out to be suppressed.
_BLOCK_SIZE = 256

# Upper bound on the number of box pairs whose IoU is held in memory at once (4 MB in float32).
_MAX_PAIRS = 1 << 20

# How many candidates (the block included) one round compares with every box of its block; those
# further on are compared with the block's kept boxes only (see _greedy_nms_one_category). With
# bench/run.py's boxes on a 2-core CPU, 1,024 was the fastest of 768 to 2,048 at 1,000 to 20,000
# boxes.
_NEAR = 1024


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Visits the boxes by decreasing score and keeps each one unless its IoU with an already kept
    box is greater than ``iou_threshold``. Returns the same indices, in the same order, as
    ``torchvision.ops.nms``.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, floating point.
        scores: ``Tensor[N]``, floating point, one score per box, on the same device.
        iou_threshold: a box is suppressed when its IoU with a kept box is strictly greater than
            this. Any number but NaN: ``0`` suppresses every overlapping box, ``1`` none.

    Returns:
        ``Tensor[K]`` (int64) of the indices of the kept boxes, by decreasing score, on the
        device of ``boxes``.
    """
    fn = "nms"
    boxes, scores = _check_boxes_and_scores(fn, boxes, scores)
    threshold = check_real(fn, "iou_threshold", iou_threshold)
    return _outside_autocast(_greedy_nms, boxes, scores, None, threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression within each category: boxes of different categories never
    suppress each other.

    torchvision either shifts each category's boxes far apart and runs one :func:`nms` (the
    "coordinate trick") or runs :func:`nms` once per category. The shifted coordinates round
    differently, which can flip a decision whose IoU is within a rounding error of the threshold.
    Here the suppression simply ignores pairs of boxes from different categories, which gives
    exactly the per-category result of :func:`nms` on the original coordinates.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, floating point.
        scores: ``Tensor[N]``, floating point, one score per box.
        idxs: ``Tensor[N]``, integer, the category of each box.
        iou_threshold: a box is suppressed when its IoU with a kept box of its own category is
            strictly greater than this. Any number but NaN.

    Returns:
        ``Tensor[K]`` (int64) of the indices of the kept boxes, by decreasing score, on the
        device of ``boxes``; equal scores by increasing index.
    """
    fn = "batched_nms"
    if _all_empty(fn, boxes, scores, idxs):  # any dtype, as in torchvision
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes, scores = _check_boxes_and_scores(fn, boxes, scores)
    idxs = _check_categories(fn, idxs, boxes)
    threshold = check_real(fn, "iou_threshold", iou_threshold)
    return _outside_autocast(_greedy_nms, boxes, scores, idxs, threshold)


def _outside_autocast(run, boxes: Tensor, scores: Tensor, *args):
    """``run(boxes, scores, *args)`` with autocast off; under autocast, 16-bit boxes and scores
    are first widened to float32, which is what torchvision's autocast kernels for NMS do.
    (Inside autocast, the block's matrix products would otherwise run in 16 bits.)"""
    device_type = boxes.device.type
    if not _autocast_enabled(device_type):
        return run(boxes, scores, *args)
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    with torch.autocast(device_type, enabled=False):
        return run(boxes, scores, *args)


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (the signature changed in torch 2.4)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


# --- input checks -------------------------------------------------------------------------------


def _all_empty(fn: str, boxes: object, scores: object, idxs: object) -> bool:
    """Whether ``boxes``, ``scores`` and ``idxs`` are tensors without elements, of any dtype:
    ``torchvision.ops.batched_nms`` returns an empty result for those."""
    for name, value in (("boxes", boxes), ("scores", scores), ("idxs", idxs)):
        check_tensor(fn, name, value)
    return boxes.numel() == 0 and scores.numel() == 0 and idxs.numel() == 0


def _check_boxes_and_scores(fn: str, boxes: object, scores: object) -> tuple[Tensor, Tensor]:
    """``boxes`` ``[N, 4]`` and ``scores`` ``[N]``, both floating point and on one device;
    returned detached, since NMS has nothing to differentiate."""
    check_floating(fn, "boxes", check_tensor(fn, "boxes", boxes))
    if _autocast_enabled(boxes.device.type):  # the value checks' reductions refuse float16 there
        with torch.autocast(boxes.device.type, enabled=False):
            check_boxes(fn, "boxes", boxes)
    else:
        check_boxes(fn, "boxes", boxes)
    check_floating(fn, "scores", check_tensor(fn, "scores", scores))
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{fn}: scores must have shape [N] with one score per box (N = {boxes.shape[0]}), "
            f"got {list(scores.shape)}"
        )
    check_same_device(fn, boxes=boxes, scores=scores)
    if value_checks_enabled() and bool(torch.isnan(scores).any()):
        count = int(torch.isnan(scores).sum())
        raise ValueError(f"{fn}: scores must not contain NaN, found {count} NaN score(s)")
    return boxes.detach(), scores.detach()


def _check_categories(fn: str, idxs: object, boxes: Tensor) -> Tensor:
    """``idxs``: one integer category per box, on the device of ``boxes``."""
    check_tensor(fn, "idxs", idxs)
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise TypeError(f"{fn}: idxs must have an integer dtype, got {idxs.dtype}")
    if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{fn}: idxs must have shape [N] with one category per box (N = {boxes.shape[0]}), "
            f"got {list(idxs.shape)}"
        )
    check_same_device(fn, boxes=boxes, idxs=idxs)
    return idxs


def split_by_image(
    keep: Tensor, image_of_keep: Tensor, batch: int, max_detections: int | None
) -> list[Tensor]:
    """Group the indices ``keep`` that :func:`batched_nms` returned (by decreasing score) by
    image: one index tensor per image, in the same order, cut to ``max_detections`` (``None``:
    no limit). ``image_of_keep`` is the image of each kept index. Used by the one-stage
    post-processing and by the RPN's proposals, which both run one NMS for a whole batch."""
    order = torch.sort(image_of_keep, stable=True).indices
    keep, image_of_keep = keep[order], image_of_keep[order]
    counts = torch.bincount(image_of_keep, minlength=batch)
    if max_detections is not None:
        first_of_image = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(keep), device=keep.device) - first_of_image[image_of_keep]
        keep = keep[rank < max_detections]
        counts = counts.clamp(max=max_detections)
    return list(keep.split(counts.tolist()))


# --- the algorithm ------------------------------------------------------------------------------


class _Candidates(NamedTuple):
    """``P`` boxes still in the running, in the order in which greedy NMS visits them."""

    indices: Tensor  # [P] int64: row of each box in the caller's ``boxes``
    corners: Tensor  # [4, P]: rows x1, y1, x2, y2 in the boxes' dtype, each contiguous
    areas: Tensor  # [P] in the dtype the IoU is computed in
    labels: Tensor | None  # [P] category of each box, or None when there is one category

    @property
    def count(self) -> int:
        return self.indices.shape[0]

    def select(self, rows: Tensor | slice) -> _Candidates:
        """The candidates at ``rows`` (a slice, or an int64 index tensor), in that order."""
        if isinstance(rows, slice):
            labels = None if self.labels is None else self.labels[rows]
            return _Candidates(self.indices[rows], self.corners[:, rows], self.areas[rows], labels)
        # index_select: the same rows as advanced indexing, with less overhead per call.
        labels = None if self.labels is None else self.labels.index_select(0, rows)
        return _Candidates(
            self.indices.index_select(0, rows),
            self.corners.index_select(1, rows),
            self.areas.index_select(0, rows),
            labels,
        )


def _greedy_nms(boxes: Tensor, scores: Tensor, labels: Tensor | None, threshold: float) -> Tensor:
    """Indices ``Tensor[K]`` kept by greedy NMS, visiting ``boxes`` (``[N, 4]``) by decreasing
    ``scores`` (``[N]``); boxes with different ``labels`` (``[N]`` or None) never interact.

    Unchecked: the pipelines that have checked their inputs once (post-processing, proposals)
    call this directly. ``threshold`` is a Python float.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    threshold = _threshold_for(threshold, _iou_dtype(boxes.dtype), boxes.device.type)
    by_score = torch.sort(scores, descending=True, stable=True).indices
    candidates = _candidates_in_visiting_order(boxes, by_score, labels)
    if labels is not None:
        return _in_score_order(_greedy_nms_by_category(candidates, threshold), by_score)
    return _greedy_nms_one_category(candidates, threshold)


def _greedy_nms_one_category(candidates: _Candidates, threshold: float) -> Tensor:
    """Indices kept by greedy NMS of ``candidates`` (one category, in visiting order).

    Each round takes the first ``b`` candidates as a block and compares them with the candidates
    that follow, up to ``_NEAR`` in all, in one ``[b, F]`` matrix: its first ``b`` columns decide
    the block (:func:`_greedy_keep_within`), and the block's kept boxes then remove the later
    candidates they suppress. Candidates beyond the first ``F`` are compared with the kept boxes
    only, in a second matrix. One matrix instead of two wastes the pairs of the block's suppressed
    boxes but saves a comparison's twenty-odd tensor operations, whose fixed cost on a CPU is
    that of about 100,000 IoUs.
    """
    kept = []
    while True:
        size = _block_size(candidates.count)
        near = _first(candidates, max(size, min(_NEAR, _MAX_PAIRS // size)))
        block = _first(near, size)
        above = _above_threshold(block, near, threshold)  # [b, F]
        within = above[:, :size]
        keep = _greedy_keep_within(within.mul_(_later(size, within.device, within.dtype)))
        if size == candidates.count:
            kept.append(block.indices[keep > 0])
            return kept[0] if len(kept) == 1 else torch.cat(kept)
        # No kept box of the block suppresses its kept boxes (that is what deciding the block
        # means), nor the later candidates that stay in the running.
        survivors = (keep @ above) == 0
        if near.count < candidates.count:
            far = candidates.select(slice(near.count, None))
            block_kept = block.select(keep.nonzero().squeeze(1))
            survivors = torch.cat(
                (survivors, _suppressed_by(block_kept, far, threshold).logical_not_())
            )
        rows = survivors.nonzero().squeeze(1)  # the block's kept boxes first, then the rest
        kept_count = int(keep.sum())
        kept.append(candidates.indices.index_select(0, rows[:kept_count]))
        if kept_count == rows.shape[0]:
            return torch.cat(kept)
        candidates = candidates.select(rows[kept_count:])


def _first(candidates: _Candidates, count: int) -> _Candidates:
    """The first ``count`` of ``candidates`` (all of them if there are fewer)."""
    return candidates if count >= candidates.count else candidates.select(slice(0, count))


def _block_size(count: int) -> int:
    """How many of ``count`` candidates one round decides: ``_BLOCK_SIZE``, or all of them when
    they are at most a quarter more (a last round of a few boxes would cost as many tensor
    operations as a full one)."""
    return count if count <= _BLOCK_SIZE + _BLOCK_SIZE // 4 else _BLOCK_SIZE


def _greedy_nms_by_category(candidates: _Candidates, threshold: float) -> Tensor:
    """Indices kept by greedy NMS of ``candidates`` grouped by category (each category's boxes
    contiguous, by decreasing score), all categories at once.

    Each round takes the first ``b`` candidates of every category still in the running, decides
    them with one batched fixed-point iteration (``[G, b, b]``, one ``b x b`` block per category),
    and removes the later candidates of each category that its kept boxes suppress. Boxes of
    different categories are never compared, so with many small categories (per-class NMS, or
    NMS per image and class) almost no IoU is computed in vain.
    """
    kept = []
    while candidates.count > 0:
        _, group, rank, counts = _runs(candidates.labels)
        width = _category_block_width(counts)
        in_block = rank < width
        rows = in_block.nonzero().squeeze(1)
        block = candidates.select(rows)
        block_kept = _greedy_keep_within_categories(
            block, group[rows], rank[rows], len(counts), width, threshold
        )
        block = block.select(block_kept)
        kept.append(block.indices)
        rest = (~in_block).nonzero().squeeze(1)
        if rest.numel() == 0:
            break
        candidates = candidates.select(rest)
        candidates = _remove_suppressed_by_category(candidates, block, threshold)
    return kept[0] if len(kept) == 1 else torch.cat(kept)


def _runs(labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For ``labels`` (``[P]``) in which each value's elements are contiguous: the values
    (``[G]``), the run of each element (``[P]``), its rank in its run (``[P]``) and the length of
    each run (``[G]``)."""
    values, run, lengths = torch.unique_consecutive(labels, return_inverse=True, return_counts=True)
    rank = (
        torch.arange(len(labels), device=labels.device) - (torch.cumsum(lengths, 0) - lengths)[run]
    )
    return values, run, rank, lengths


def _in_grid(candidates: _Candidates, slot: Tensor, rows: int, width: int) -> _Candidates:
    """``candidates`` laid out in a ``[rows, width]`` grid, candidate ``i`` at the flat position
    ``slot[i]``, zero boxes in the other cells: corners ``[4, rows, width]`` and areas
    ``[rows, width]``; the indices are the slots."""
    cells = rows * width
    corners = candidates.corners.new_zeros((4, cells)).index_copy_(1, slot, candidates.corners)
    areas = candidates.areas.new_zeros(cells).index_copy_(0, slot, candidates.areas)
    return _Candidates(slot, corners.view(4, rows, width), areas.view(rows, width), None)


def _category_block_width(counts: Tensor) -> int:
    """How many candidates of each category one round decides, given the number of candidates of
    each category, ``counts`` (``[G]``): starting from 8, doubled (up to the largest count and
    ``_BLOCK_SIZE``) while the padded grid (every category padded to the width) holds at most four
    times the pairs that the categories need and at most ``_MAX_PAIRS`` pairs in all."""
    largest = min(int(counts.max()), _BLOCK_SIZE)
    width = min(8, largest)
    while width < largest:
        wider = min(2 * width, largest)
        padded = len(counts) * wider * wider
        needed = int((counts.clamp(max=wider) ** 2).sum())
        if padded > 4 * needed or padded > _MAX_PAIRS:
            break
        width = wider
    return width


def _greedy_keep_within_categories(
    block: _Candidates, group: Tensor, rank: Tensor, num_groups: int, width: int, threshold: float
) -> Tensor:
    """The rows of ``block`` that greedy NMS keeps (``Tensor[K]``, increasing), when ``block``
    holds at most ``width`` candidates of each of ``num_groups`` categories: candidate ``i`` is
    number ``rank[i]`` of category ``group[i]``, in visiting order, none suppressed by a box
    kept earlier.

    The candidates are laid out in a ``[G, width]`` grid, one row per category, and the
    fixed-point iteration of :func:`_greedy_keep_within` runs on all rows at once.
    """
    slot = group * width + rank
    cells = _in_grid(block, slot, num_groups, width)
    present = torch.zeros(num_groups * width, dtype=torch.bool, device=slot.device)
    present = present.index_fill_(0, slot, True).view(num_groups, width)
    # suppresses[g, i, j]: in category g, box i comes before box j and would suppress it.
    # The empty cells hold zero boxes. They are never kept (``keep`` starts at ``present``), so
    # they suppress nothing, whatever their IoU.
    suppresses = _above_threshold(cells, cells, threshold)
    suppresses *= _later(width, suppresses.device, suppresses.dtype)
    keep = present.to(suppresses.dtype)
    for _ in range(width + 1):
        next_keep = torch.bmm(keep[:, None, :], suppresses)[:, 0].eq_(0).mul_(present)
        if torch.equal(next_keep, keep):
            return keep.view(-1)[slot].nonzero().squeeze(1)
        keep = next_keep
    raise AssertionError("unreachable: the greedy decisions must settle within width + 1 rounds")


def _remove_suppressed_by_category(
    candidates: _Candidates, kept: _Candidates, threshold: float
) -> _Candidates:
    """The ``candidates`` that no box of ``kept`` of their own category suppresses (both grouped
    by category, in visiting order).

    Every category of ``candidates`` has kept boxes: candidates are left over only in the
    categories that filled their row of the round's grid, and the first box of a row is always
    kept.
    """
    categories, category, rank, per_category = _runs(kept.labels)
    # The kept boxes in a [C, width] grid, one row per category. The empty cells hold zero boxes,
    # which change nothing: an empty cell suppresses a candidate only when IoU 0 is above the
    # threshold, and then so does every kept box of the row (IoU >= 0; NaN counts for neither).
    width = int(per_category.max())
    grid = _in_grid(kept, category * width + rank, len(categories), width)
    row = torch.searchsorted(categories, candidates.labels)  # each candidate's row in the grid
    chunk = max(1, _MAX_PAIRS // width)
    suppressed = []
    for start in range(0, candidates.count, chunk):
        part = candidates.select(slice(start, start + chunk))
        rows = row[start : start + chunk]
        # [4, M, width]: the kept boxes of each candidate's category
        their_kept = _Candidates(
            rows, grid.corners.index_select(1, rows), grid.areas.index_select(0, rows), None
        )
        one_each = _Candidates(part.indices, part.corners[:, :, None], part.areas[:, None], None)
        above = _above_threshold(their_kept, one_each, threshold)[..., 0]  # [M, width]
        suppressed.append(above.any(1))
    suppressed = torch.cat(suppressed) if len(suppressed) > 1 else suppressed[0]
    return candidates.select(suppressed.logical_not_().nonzero().squeeze(1))


def _in_score_order(indices: Tensor, by_score: Tensor) -> Tensor:
    """``indices`` (``[K]``, distinct) in the order of ``by_score`` (``[N]``, every index by
    decreasing score, equal scores by increasing index): a mask and a gather, no sort."""
    chosen = torch.zeros(by_score.shape[0], dtype=torch.bool, device=by_score.device)
    chosen[indices] = True
    return by_score[chosen[by_score]]


@functools.lru_cache(maxsize=16)
def _later(width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[width, width]``, 1 where the column comes after the row (``j > i``), else 0. Multiplying
    by this mask is much faster than ``triu_`` on a batched matrix."""
    return torch.ones(width, width, dtype=dtype, device=device).triu_(diagonal=1)


def _iou_dtype(box_dtype: torch.dtype) -> torch.dtype:
    """dtype of areas, intersections and IoUs: float32 for 16-bit boxes, else the boxes' own."""
    return box_dtype if box_dtype in (torch.float32, torch.float64) else torch.float32


@functools.lru_cache(maxsize=256)
def _threshold_for(threshold: float, iou_dtype: torch.dtype, device_type: str) -> float:
    """The number ``t`` for which ``iou > t`` computed by PyTorch in ``iou_dtype`` decides like
    torchvision's kernel on a device of type ``device_type``.

    PyTorch compares a float32 tensor with a Python number after rounding the number to float32.
    torchvision's CPU kernel instead compares the float32 IoU with the float64 threshold, so a
    float32 IoU equal to ``float32(0.1)`` (which is slightly more than 0.1) counts as above 0.1.
    Rounding the threshold *down* to float32 reproduces that: for a float32 ``x``,
    ``x > t`` exactly when ``x > round_down(t)``. torchvision's GPU kernels round the threshold to
    the nearest float32 and compare with that, in every dtype. (Cached: it is called by every
    NMS and costs a few small tensor operations.)
    """
    as_float32 = torch.tensor(threshold, dtype=torch.float32)
    if device_type != "cpu":
        return float(as_float32)
    if iou_dtype == torch.float64:
        return threshold
    if float(as_float32) > threshold:
        as_float32 = torch.nextafter(as_float32, torch.tensor(-math.inf, dtype=torch.float32))
    return float(as_float32)


def _candidates_in_visiting_order(
    boxes: Tensor, by_score: Tensor, labels: Tensor | None
) -> _Candidates:
    """All boxes as candidates, in the order ``by_score`` (by decreasing score, equal scores by
    increasing index); with ``labels``, grouped by category first."""
    order = by_score
    if labels is not None:
        # Categories never interact, so visiting them one after the other changes no decision,
        # and then the later boxes of a block's categories are found together.
        order = order.index_select(
            0, torch.sort(labels.index_select(0, order), stable=True).indices
        )
    corners = boxes.index_select(0, order).T.contiguous()
    return _Candidates(
        indices=order,
        corners=corners,
        areas=_areas(corners, _iou_dtype(boxes.dtype)),
        labels=None if labels is None else labels.index_select(0, order),
    )


def _areas(corners: Tensor, iou_dtype: torch.dtype) -> Tensor:
    """``(x2 - x1) * (y2 - y1)`` of boxes given as ``corners`` ``[4, P]``: ``Tensor[P]``.

    The width is taken after and the height before widening to ``iou_dtype``, which is what
    torchvision's CUDA kernel does with float16 boxes. For float32 and float64 boxes both ways
    are the same.
    """
    x1, y1, x2, y2 = corners
    return (x2.to(iou_dtype) - x1.to(iou_dtype)) * (y2 - y1).to(iou_dtype)


def _greedy_keep_within(suppresses: Tensor) -> Tensor:
    """Which boxes of a block greedy NMS keeps, given ``suppresses`` (``[B, B]``, 1 where box
    ``i`` comes before box ``j`` and would suppress it, else 0), when no box kept earlier
    suppresses any of them: ``Tensor[B]``, 1 for kept, 0 for suppressed, in the matrix's dtype.

    Greedy NMS keeps box ``j`` exactly when no *kept* earlier box suppresses it. Starting from
    "keep everything" and applying that rule to all boxes at once, again and again, reaches a
    fixed point, and that fixed point is the greedy answer: after ``d`` rounds every box whose
    longest chain of earlier suppressing boxes is shorter than ``d`` has its final value. A chain
    has at most ``B`` boxes, so ``B + 1`` rounds always suffice; in practice it takes a handful.
    """
    # keep as 1.0 / 0.0: counting the kept suppressors with a matrix product is faster than a
    # boolean any(), and eq_ writes its answer back as 1.0 / 0.0.
    keep = suppresses.new_ones(suppresses.shape[0])
    for _ in range(suppresses.shape[0] + 1):
        next_keep = (keep @ suppresses).eq_(0)
        if torch.equal(next_keep, keep):
            return keep
        keep = next_keep
    raise AssertionError("unreachable: the greedy decisions must settle within B + 1 rounds")


def _suppressed_by(kept: _Candidates, candidates: _Candidates, threshold: float) -> Tensor:
    """Which ``candidates`` (``P >= 1`` boxes) some box of ``kept`` suppresses: ``Tensor[P]``
    (bool).

    The candidates are taken in chunks so that at most ``_MAX_PAIRS`` IoUs exist at once. Each
    candidate's suppressors are counted with a matrix product (``[K] @ [K, P]``), which is about
    three times faster than ``any`` down the columns of a boolean matrix.
    """
    ones = kept.areas.new_ones(kept.count)
    chunk = max(1, _MAX_PAIRS // max(1, kept.count))
    counts = [
        ones @ _above_threshold(kept, candidates.select(slice(start, start + chunk)), threshold)
        for start in range(0, candidates.count, chunk)
    ]
    return (counts[0] if len(counts) == 1 else torch.cat(counts)) > 0


def _above_threshold(rows: _Candidates, cols: _Candidates, threshold: float) -> Tensor:
    """1 where the IoU of ``rows[..., i]`` and ``cols[..., j]`` is above ``threshold``, else 0:
    ``Tensor[..., R, C]`` in the IoU's dtype (written over the IoUs, and ready for the matrix
    products that count suppressors). A pair of zero-area boxes has IoU ``0 / 0 = NaN``, which is
    never above the threshold."""
    return _pairwise_iou(rows, cols, exact_when_disjoint=threshold < 0).gt_(threshold)


def _pairwise_iou(rows: _Candidates, cols: _Candidates, exact_when_disjoint: bool = True) -> Tensor:
    """IoU of ``rows[..., i]`` and ``cols[..., j]``: ``Tensor[..., R, C]``, NaN for two zero-area
    boxes. The corners may carry leading batch dimensions (``[4, ..., R]``), which broadcast.

    ``inter / (area_i + area_j - inter)``, the formula of torchvision's kernels; in-place
    operations keep the number of ``[R, C]`` temporaries small. With ``exact_when_disjoint``
    False, the negative overlap of two boxes disjoint in ``y`` is not clamped to 0, so their IoU
    comes out negative (or NaN) instead of 0: no different for a comparison with a threshold of 0
    or more, and one pass over the ``[R, C]`` pairs fewer (of about a dozen).
    """
    iou_dtype = rows.areas.dtype
    x1r, y1r, x2r, y2r = rows.corners[..., :, None]
    x1c, y1c, x2c, y2c = cols.corners[..., None, :]
    inter = _overlap_length(x1r, x2r, x1c, x2c, iou_dtype)
    inter *= _overlap_length(y1r, y2r, y1c, y2c, iou_dtype, clamp=exact_when_disjoint)
    union = rows.areas[..., :, None] + cols.areas[..., None, :]
    union -= inter
    return inter.div_(union)


def _overlap_length(
    low_r: Tensor,
    high_r: Tensor,
    low_c: Tensor,
    high_c: Tensor,
    iou_dtype: torch.dtype,
    clamp: bool = True,
) -> Tensor:
    """Length of the overlap of intervals ``[low_r, high_r]`` (``[R, 1]``) and
    ``[low_c, high_c]`` (``[C]``): ``Tensor[R, C]``, zero where they are disjoint (negative if
    not ``clamp``).

    Computed in the boxes' dtype and only then widened to ``iou_dtype``, as torchvision's CUDA
    kernel does for float16.
    """
    length = torch.minimum(high_r, high_c)
    length -= torch.maximum(low_r, low_c)
    if clamp:
        length.clamp_(min=0)
    return length if length.dtype == iou_dtype else length.to(iou_dtype)


# --- soft-NMS -----------------------------------------------------------------------------------

SOFT_NMS_METHODS = ("gaussian", "linear")


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> tuple[Tensor, Tensor]:
    """Soft non-maximum suppression (Bodla et al., 2017): overlapping boxes lose score instead of
    being removed.

    Repeatedly picks the box with the highest current score, keeps it with that score, and
    multiplies the score of every remaining box ``b`` by a decay that depends on its IoU with the
    picked box ``M``:

    * ``"gaussian"``: ``exp(-IoU(M, b)**2 / sigma)``, for every remaining box (``iou_threshold``
      is not used);
    * ``"linear"``: ``1 - IoU(M, b)`` when ``IoU(M, b) > iou_threshold``, else 1 (no change).

    A box whose score is (or drops) below ``score_threshold`` is discarded. The paper writes the
    linear condition as ``IoU >= iou_threshold``; its authors' code, like :func:`nms`, uses a
    strict ``>``, and so does this function. With ``sigma -> 0`` the Gaussian decay removes every
    box that overlaps a kept one at all, which is greedy :func:`nms` with ``iou_threshold=0``.

    The IoU is computed as in :func:`nms` (a pair of zero-area boxes has IoU 0 here, no decay);
    the decays are applied one kept box after the other, in float32 or the scores' wider dtype.
    Equal scores are visited by increasing index.

    Complexity: the algorithm is sequential in the number ``K`` of kept boxes (which box comes
    next depends on every decay so far). Each step is vectorised over the ``P`` boxes still in
    the running: one IoU row, one decay, one compaction. Time ``O(N * K)``, memory ``O(N)``, and
    one host synchronisation per kept box (to learn how many boxes are left).

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, floating point.
        scores: ``Tensor[N]``, floating point, on the same device.
        iou_threshold: for ``method="linear"``, the IoU above which a score decays. Any number
            but NaN.
        sigma: for ``method="gaussian"``, the width of the decay; a finite number ``> 0``.
        score_threshold: boxes with a (decayed) score below this are discarded. Any number but
            NaN; ``-inf`` keeps every box.
        method: ``"gaussian"`` or ``"linear"``.

    Returns:
        ``(keep, kept_scores)``: ``Tensor[K]`` (int64) indices of the kept boxes in the order in
        which they were picked, and ``Tensor[K]`` their decayed scores (non-increasing), in the
        dtype of ``scores``, both on the device of ``boxes``.
    """
    fn = "soft_nms"
    boxes, scores = _check_boxes_and_scores(fn, boxes, scores)
    threshold = check_real(fn, "iou_threshold", iou_threshold)
    sigma = check_real(fn, "sigma", sigma)
    if not 0 < sigma < math.inf:
        raise ValueError(f"{fn}: sigma must be a finite number > 0, got {sigma!r}")
    score_threshold = check_real(fn, "score_threshold", score_threshold)
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"{fn}: method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    iou_dtype = _iou_dtype(boxes.dtype)
    if method == "gaussian":
        decay = _gaussian_decay(sigma)
    else:  # Compare like nms on the CPU: as if the IoU were compared with the float64 threshold.
        decay = _linear_decay(_threshold_for(threshold, iou_dtype, "cpu"))
    return _outside_autocast(_soft_nms, boxes, scores, decay, score_threshold)


def _gaussian_decay(sigma: float):
    """``iou -> exp(-iou**2 / sigma)``, elementwise."""

    def decay(iou: Tensor) -> Tensor:
        # In float64: a sigma below float32's range (1e-46) would round to 0 and give 0 / 0 =
        # NaN for a box that does not overlap; in float64 that decay is exp(-0) = 1.
        wide = iou.double()
        return torch.exp(-(wide * wide) / sigma).to(iou.dtype)

    return decay


def _linear_decay(threshold: float):
    """``iou -> 1 - iou`` where ``iou > threshold``, else 1, elementwise."""

    def decay(iou: Tensor) -> Tensor:
        return torch.where(iou > threshold, 1 - iou, torch.ones_like(iou))

    return decay


def _smallest_at_least(bound: float, dtype: torch.dtype) -> float:
    """The smallest number of ``dtype`` that is ``>= bound``, so that for ``x`` of that dtype
    ``x >= bound`` exactly when ``x >= result`` (PyTorch would round ``bound`` to nearest)."""
    if dtype == torch.float64 or math.isinf(bound):
        return bound
    rounded = torch.tensor(bound, dtype=dtype)
    if float(rounded) < bound:
        rounded = torch.nextafter(rounded, torch.tensor(math.inf, dtype=dtype))
    return float(rounded)


def _soft_nms(
    boxes: Tensor, scores: Tensor, decay, score_threshold: float
) -> tuple[Tensor, Tensor]:
    """The soft-NMS loop: one kept box per step, the rest decayed and compacted."""
    work_dtype = torch.promote_types(scores.dtype, torch.float32)
    lowest = _smallest_at_least(score_threshold, work_dtype)
    work = scores.to(work_dtype)
    alive = (work >= lowest).nonzero().squeeze(1)  # increasing index: argmax picks ties in order
    corners = boxes.index_select(0, alive).T.contiguous()
    candidates = _Candidates(alive, corners, _areas(corners, _iou_dtype(boxes.dtype)), None)
    work = work[alive]
    kept, kept_scores = [], []
    while candidates.count > 0:
        best = torch.argmax(work).reshape(1)  # the first of equal maxima
        kept.append(candidates.indices[best])
        kept_scores.append(work[best])
        iou = _pairwise_iou(candidates.select(best), candidates)[0].nan_to_num_(nan=0.0)
        work = work * decay(iou)
        survives = work >= lowest
        survives[best] = False
        rows = survives.nonzero().squeeze(1)
        candidates, work = candidates.select(rows), work[rows]
    if not kept:
        empty = torch.empty(0, dtype=torch.int64, device=boxes.device)
        return empty, torch.empty(0, dtype=scores.dtype, device=boxes.device)
    return torch.cat(kept), torch.cat(kept_scores).to(scores.dtype)
