"""Anchor boxes for feature pyramids.

An anchor generator places the same small set of boxes (the *cell anchors*) at the centre of every
cell of every feature map. The anchors come out in the order in which a detection head emits its
predictions: level by level, then row by row, then column by column, then anchor by anchor within
the cell. Keeping that order is what lets ``predictions[k]`` be compared with ``anchors[k]``.

Aspect ratios are height / width throughout.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from detlib._checks import (
    check_boxes,
    check_floating,
    check_image_size,
    check_positive,
    check_same_device,
    check_tensor,
    value_checks_enabled,
)
from detlib.boxes import box_iou

__all__ = [
    "AnchorGenerator",
    "anchors_inside_image",
    "best_anchor_iou",
    "kmeans_anchor_shapes",
    "shape_iou",
]

CELL_ORDERS = ("ratio_major", "size_major")

_RETINANET_SCALES = (2**0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0))
_EFFICIENTDET_SHAPES = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def _per_level(name: str, value: object, num_levels: int) -> list[tuple[float, ...]]:
    """Normalise ``value`` to one tuple of positive numbers per level.

    Accepts a number (same single value on every level), a flat sequence of numbers (the same
    sequence on every level, or - for ``sizes`` - one number per level) or one sequence per level.
    """
    fn = "AnchorGenerator"
    if isinstance(value, numbers.Real):
        levels = [(value,)] * num_levels
    elif isinstance(value, Sequence) and value and all(isinstance(v, numbers.Real) for v in value):
        if name == "sizes":
            if len(value) != num_levels:
                raise ValueError(
                    f"{fn}: sizes must give one size per level ({num_levels} levels), or one "
                    f"sequence of sizes per level; got {len(value)} numbers"
                )
            levels = [(v,) for v in value]
        else:
            levels = [tuple(value)] * num_levels
    elif isinstance(value, Sequence) and all(isinstance(v, Sequence) and v for v in value):
        if len(value) != num_levels:
            raise ValueError(f"{fn}: {name} has {len(value)} levels but strides has {num_levels}")
        levels = [tuple(v) for v in value]
    else:
        raise TypeError(
            f"{fn}: {name} must be a number, a sequence of numbers, or one sequence per level; "
            f"got {value!r}"
        )
    for level in levels:
        for v in level:
            check_positive(fn, name, v)
    return [tuple(float(v) for v in level) for level in levels]


class AnchorGenerator:
    """Anchors over a feature pyramid, in the order the heads emit predictions.

    Each level ``l`` has a stride ``s_l`` (pixels per feature-map cell) and a set of cell anchors
    made from sizes and aspect ratios: an anchor of size ``S`` and ratio ``r = h / w`` has the area
    of an ``S x S`` square, ``w = sqrt(S * S / r)`` and ``h = w * r`` (that is ``w = S / sqrt(r)``,
    ``h = S * sqrt(r)``). The cell anchors are centred on ``((j + offset) * s_l, (i + offset) * s_l)``
    for every row ``i`` and column ``j`` of the level's grid, which has
    ``ceil(height / s_l) x ceil(width / s_l)`` cells.

    Args:
        strides: one stride per pyramid level, in pixels.
        sizes: anchor sizes in pixels: one number per level, or one sequence per level (a
            level's sizes are its base size times its octave scales).
        aspect_ratios: height / width ratios, one sequence for all levels or one per level.
        shapes: instead of ``aspect_ratios``, explicit ``(width, height)`` multipliers of the size
            (EfficientDet's ``(1.4, 0.7)``, which is not area-preserving).
        offset: where the centre sits inside a cell, as a fraction of the stride: 0.5 is the cell
            centre (RetinaNet, SSD, EfficientDet); 0 its top-left corner (torchvision).
        order: order of the cell anchors: ``"ratio_major"`` loops over ratios, then sizes
            (RetinaNet, Faster R-CNN, torchvision); ``"size_major"`` the other way (EfficientDet).
        round_base: round the centred cell anchors to whole pixels, as torchvision does.

    Anchors are computed in float64 and cast once at the end, so presets reproduce the reference
    implementations bit for bit.
    """

    def __init__(
        self,
        strides: Sequence[int],
        sizes: object,
        aspect_ratios: object = (0.5, 1.0, 2.0),
        *,
        shapes: Sequence[tuple[float, float]] | None = None,
        offset: float = 0.5,
        order: str = "ratio_major",
        round_base: bool = False,
    ) -> None:
        fn = "AnchorGenerator"
        if (
            not isinstance(strides, Sequence)
            or not strides
            or not all(
                isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                for s in strides
            )
        ):
            raise ValueError(
                f"{fn}: strides must be a non-empty sequence of positive ints, got {strides!r}"
            )
        if order not in CELL_ORDERS:
            raise ValueError(f"{fn}: order must be one of {CELL_ORDERS}, got {order!r}")
        if not 0.0 <= float(offset) <= 1.0:
            raise ValueError(
                f"{fn}: offset must be in [0, 1] (a fraction of the stride), got {offset!r}"
            )
        self.strides = tuple(int(s) for s in strides)
        self.sizes = _per_level("sizes", sizes, len(self.strides))
        if shapes is not None:
            if not shapes or not all(isinstance(p, Sequence) and len(p) == 2 for p in shapes):
                raise ValueError(
                    f"{fn}: shapes must be a sequence of (width, height) multipliers, got {shapes!r}"
                )
            for w, h in shapes:
                check_positive(fn, "shapes", w)
                check_positive(fn, "shapes", h)
            self.shapes: tuple[tuple[float, float], ...] | None = tuple(
                (float(w), float(h)) for w, h in shapes
            )
            self.aspect_ratios = [tuple(h / w for w, h in self.shapes)] * len(self.strides)
        else:
            self.shapes = None
            self.aspect_ratios = _per_level("aspect_ratios", aspect_ratios, len(self.strides))
        self.offset = float(offset)
        self.order = order
        self.round_base = bool(round_base)
        # Set by torchvision_compatible(): strides per axis from the image and grid sizes
        # (image_size // grid_size), and cell anchors rounded from torchvision's own arithmetic.
        self._torchvision = False
        self._cache: dict[tuple, Tensor | list[Tensor]] = {}

    # ------------------------------------------------------------------ presets
    @classmethod
    def retinanet(
        cls,
        levels: Sequence[int] = (3, 4, 5, 6, 7),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = _RETINANET_SCALES,
    ) -> AnchorGenerator:
        """RetinaNet (Lin et al., 2017): levels P3-P7, stride ``2**l``, base size ``2**(l + 2)``
        (32 to 512), ratios 1:2, 1:1, 2:1 times octave scales ``2**0, 2**(1/3), 2**(2/3)``:
        9 anchors per cell centred at ``(i + 0.5) * stride``. 49,104 anchors on 512 x 512."""
        return cls(
            strides=[2**level for level in levels],
            sizes=[[2 ** (level + 2) * scale for scale in scales] for level in levels],
            aspect_ratios=aspect_ratios,
            offset=0.5,
            order="ratio_major",
        )

    @classmethod
    def efficientdet(
        cls,
        anchor_scale: float = 4.0,
        levels: Sequence[int] = (3, 4, 5, 6, 7),
        scales: Sequence[float] = _RETINANET_SCALES,
        shapes: Sequence[tuple[float, float]] = _EFFICIENTDET_SHAPES,
    ) -> AnchorGenerator:
        """EfficientDet (Tan et al., 2020): base size ``anchor_scale * stride * scale`` and the
        (width, height) multipliers (1, 1), (1.4, 0.7), (0.7, 1.4), sizes in the outer loop.
        The boxes of the reference code, which stores them as (y1, x1, y2, x2)."""
        check_positive("AnchorGenerator.efficientdet", "anchor_scale", anchor_scale)
        return cls(
            strides=[2**level for level in levels],
            sizes=[[anchor_scale * 2**level * scale for scale in scales] for level in levels],
            shapes=shapes,
            offset=0.5,
            order="size_major",
        )

    @classmethod
    def faster_rcnn(
        cls,
        stride: int = 16,
        sizes: Sequence[float] = (128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> AnchorGenerator:
        """Faster R-CNN (Ren et al., 2015) on a single stride-16 map: sizes 128, 256, 512 and
        ratios 0.5, 1, 2, 9 anchors per cell. 22,500 anchors on 800 x 800."""
        return cls(strides=[stride], sizes=[list(sizes)], aspect_ratios=aspect_ratios, offset=0.5)

    @classmethod
    def torchvision_compatible(
        cls,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
    ) -> AnchorGenerator:
        """The anchors of ``torchvision.models.detection.anchor_utils.AnchorGenerator(sizes,
        aspect_ratios)`` for feature maps of the given strides: centres on the cells' top-left
        corners (offset 0) and cell anchors rounded to whole pixels.

        Like torchvision, each level's stride is taken per axis as ``image_size // grid_size``:
        when the image size is not a multiple of a stride, the grid has
        ``ceil(image_size / stride)`` cells and the actual stride is smaller (at 800 x 1344 with
        strides 64 and 128: ``(61, 64)`` and ``(114, 122)`` pixels)."""
        generator = cls(
            strides=strides, sizes=sizes, aspect_ratios=aspect_ratios, offset=0.0, round_base=True
        )
        generator._torchvision = True
        return generator

    # ------------------------------------------------------------------ geometry
    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def num_anchors_per_location(self) -> list[int]:
        """Number of cell anchors ``A_l`` on each level."""
        return [len(sizes) * len(ratios) for sizes, ratios in zip(self.sizes, self.aspect_ratios)]

    def grid_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map size ``(ceil(height / stride), ceil(width / stride))`` of each level: the size
        a stack of stride-2, padding-1 convolutions produces."""
        height, width = check_image_size("AnchorGenerator.grid_sizes", "image_size", image_size)
        return [(-(-height // s), -(-width // s)) for s in self.strides]

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        """Total number of anchors for an image of ``image_size = (height, width)``."""
        grids = self.grid_sizes(image_size)
        return sum(h * w * a for (h, w), a in zip(grids, self.num_anchors_per_location()))

    def _cell_widths_heights(self, level: int) -> list[tuple[float, float]]:
        sizes, ratios = self.sizes[level], self.aspect_ratios[level]
        if self.shapes is not None:
            pairs = [(size, shape) for size in sizes for shape in self.shapes]
            if self.order == "ratio_major":
                pairs = [(size, shape) for shape in self.shapes for size in sizes]
            return [(size * mw, size * mh) for size, (mw, mh) in pairs]
        if self.order == "ratio_major":
            pairs = [(size, ratio) for ratio in ratios for size in sizes]
        else:
            pairs = [(size, ratio) for size in sizes for ratio in ratios]
        shapes = []
        for size, ratio in pairs:
            width = math.sqrt(size * size / ratio)  # keeps the area of a size x size square
            shapes.append((width, width * ratio))
        return shapes

    def cell_anchors(self, level: int, device: torch.device | str | None = None) -> Tensor:
        """The ``A_l`` anchors of one cell of ``level``, centred on (0, 0).

        Returns:
            ``Tensor[A_l, 4]`` (float64, or float32 on devices without float64) in
            ``(x1, y1, x2, y2)``.
        """
        if not 0 <= level < self.num_levels:
            raise ValueError(
                f"AnchorGenerator.cell_anchors: level must be in [0, {self.num_levels}), got {level}"
            )
        wh = torch.tensor(self._cell_widths_heights(level), dtype=torch.float64)
        half = wh * 0.5
        base = torch.cat((-half, half), dim=1)
        if self.round_base:
            base = base.round()
        device = torch.device(device) if device is not None else torch.device("cpu")
        return base.to(device=device, dtype=_work_dtype(device))

    def _torchvision_cell_anchors(self, level: int, dtype: torch.dtype) -> Tensor:
        """The cell anchors as torchvision computes them, in ``dtype`` (float32 or float64, the
        dtype of its feature maps), rounded: ``Tensor[A, 4]`` (float64).

        A half-size that is a whole number and a half in float64 may be just below or above it
        in float32 (``90 * sqrt(0.49) / 2``), and then rounds the other way.
        """
        sizes = torch.tensor(self.sizes[level], dtype=dtype)
        h_ratios = torch.sqrt(torch.tensor(self.aspect_ratios[level], dtype=dtype))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round().double()

    def _level_anchors(
        self,
        level: int,
        grid: tuple[int, int],
        image_size: tuple[int, int],
        device: torch.device,
        cell_dtype: torch.dtype,
    ) -> Tensor:
        """All anchors of one level, ``Tensor[H * W * A, 4]`` in the work dtype."""
        dtype = _work_dtype(device)
        rows, cols = grid
        stride_y = stride_x = self.strides[level]
        if self._torchvision:
            stride_y, stride_x = image_size[0] // rows, image_size[1] // cols
        ys = (torch.arange(rows, dtype=dtype, device=device) + self.offset) * stride_y
        xs = (torch.arange(cols, dtype=dtype, device=device) + self.offset) * stride_x
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # row-major: x varies fastest
        centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # [K, 1, 4]
        if self._torchvision:
            cell = self._torchvision_cell_anchors(level, cell_dtype).to(device, dtype)
        else:
            cell = self.cell_anchors(level, device)
        cell = cell.reshape(1, -1, 4)  # [1, A, 4]
        return (centres + cell).reshape(-1, 4)  # [K * A, 4]: cell by cell, A anchors each

    def per_level(
        self,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """Anchors of each level separately: a list of ``Tensor[H_l * W_l * A_l, 4]``."""
        levels = self._levels(image_size, device, dtype)
        return [anchors.to(dtype, copy=True) for anchors in levels]

    def _levels(
        self, image_size: tuple[int, int], device: torch.device | str | None, dtype: torch.dtype
    ) -> list[Tensor]:
        """Each level's anchors in the work dtype for a result in ``dtype`` (cached: callers
        must not modify them)."""
        grids = self.grid_sizes(image_size)
        image_size = check_image_size("AnchorGenerator", "image_size", image_size)
        device = torch.device(device) if device is not None else torch.device("cpu")
        # Only torchvision's rounding depends on the dtype (it computes in its feature maps').
        cell_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return self._cached(
            ("levels", image_size, device, cell_dtype if self._torchvision else None),
            lambda: [
                self._level_anchors(level, grid, image_size, device, cell_dtype)
                for level, grid in enumerate(grids)
            ],
        )

    def _cached(self, key: tuple, compute):
        """``compute()``, remembered under ``key`` for the last ``_CACHE_SIZE`` keys: a detector
        asks for the anchors of the same image size at every step."""
        if key not in self._cache:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # the oldest
            self._cache[key] = compute()
        return self._cache[key]

    def __call__(
        self,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """All anchors for an image of ``image_size = (height, width)``.

        Args:
            image_size: ``(height, width)`` of the (padded) input image in pixels.
            device: where to build the anchors (default CPU); they are made there, not copied.
            dtype: floating dtype of the result.

        Returns:
            ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` with ``N = sum_l H_l * W_l * A_l``, ordered by
            level, row, column, then cell anchor.
        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"AnchorGenerator: dtype must be a floating torch.dtype, got {dtype!r}")
        levels = self._levels(image_size, device, dtype)  # checks image_size
        device = levels[0].device
        key = ("all", tuple(image_size), device, dtype)
        # One cast, at the end; a copy of the cached tensor, which the caller may modify.
        return self._cached(key, lambda: torch.cat(levels, dim=0).to(dtype)).clone()

    def __repr__(self) -> str:
        ratios = self.shapes if self.shapes is not None else self.aspect_ratios[0]
        kind = "shapes" if self.shapes is not None else "aspect_ratios"
        return (
            f"AnchorGenerator(strides={self.strides}, anchors_per_location={self.num_anchors_per_location()}, "
            f"{kind}={ratios}, offset={self.offset}, order={self.order!r}, round_base={self.round_base})"
        )


# How many (image size, device, dtype) results an AnchorGenerator remembers.
_CACHE_SIZE = 8


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def anchors_inside_image(anchors: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Which anchors lie entirely inside the image (Faster R-CNN trains only on those).

    Args:
        anchors: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.
        image_size: ``(height, width)``.

    Returns:
        ``Tensor[N]`` of bools.
    """
    check_boxes("anchors_inside_image", "anchors", anchors)
    height, width = check_image_size("anchors_inside_image", "image_size", image_size)
    return (
        (anchors[:, 0] >= 0)
        & (anchors[:, 1] >= 0)
        & (anchors[:, 2] <= width)
        & (anchors[:, 3] <= height)
    )


def best_anchor_iou(boxes: Tensor, anchors: Tensor, chunk_size: int = 4096) -> Tensor:
    """For each box, the IoU of the anchor that overlaps it most: the anchor set's *coverage*.

    A box whose best IoU is below the matcher's positive threshold (0.5 for RetinaNet) gets no
    positive anchor and is invisible to training.

    Args:
        boxes: ``Tensor[G, 4]`` ground-truth boxes in ``(x1, y1, x2, y2)``.
        anchors: ``Tensor[N, 4]`` anchors, on the same device.
        chunk_size: boxes processed at once, to bound memory at ``chunk_size x N``.

    Returns:
        ``Tensor[G]`` best IoU per box (0 for an empty anchor set).
    """
    check_boxes("best_anchor_iou", "boxes", boxes)
    check_boxes("best_anchor_iou", "anchors", anchors)
    if anchors.shape[0] == 0:
        return boxes.new_zeros(
            boxes.shape[0], dtype=torch.promote_types(boxes.dtype, torch.float32)
        )
    parts = [box_iou(part, anchors).amax(dim=1) for part in boxes.split(chunk_size)]
    if not parts:
        return box_iou(boxes, anchors[:1]).amax(dim=1)
    return torch.cat(parts)


def kmeans_anchor_shapes(
    box_sizes: Tensor,
    k: int,
    iterations: int = 100,
    generator: torch.Generator | None = None,
    update: str = "mean",
) -> Tensor:
    """YOLO v2's dimension clusters: k-means on box (width, height) with ``1 - IoU`` as distance.

    Boxes and centroids are compared as if they shared a centre, so only their shapes matter.
    Centroids are initialised with k distinct boxes drawn by ``generator``; each step assigns
    every box to the centroid it overlaps most and moves each centroid to the mean (width,
    height) of its members, as YOLO v2 does. ``update="median"`` is the k-medians variant, which
    a long tail of very large boxes pulls less.

    Args:
        box_sizes: ``Tensor[N, 2]`` of positive (width, height).
        k: number of anchor shapes (``1 <= k <= N``).
        iterations: maximum number of k-means steps.
        generator: CPU random generator for the initial draw (for reproducibility).
        update: ``"mean"`` (k-means, YOLO v2) or ``"median"`` (k-medians).

    Returns:
        ``Tensor[k, 2]`` of (width, height), sorted by area.
    """
    fn = "kmeans_anchor_shapes"
    check_tensor(fn, "box_sizes", box_sizes)
    if box_sizes.dim() != 2 or box_sizes.shape[1] != 2:
        raise ValueError(f"{fn}: box_sizes must have shape [N, 2], got {list(box_sizes.shape)}")
    if not isinstance(k, numbers.Integral) or not 1 <= k <= box_sizes.shape[0]:
        raise ValueError(f"{fn}: k must be an int in [1, N={box_sizes.shape[0]}], got {k!r}")
    if not bool((box_sizes > 0).all()):
        raise ValueError(f"{fn}: box_sizes must be positive (width, height) pairs")
    if update not in ("mean", "median"):
        raise ValueError(f"{fn}: update must be 'mean' or 'median', got {update!r}")
    sizes = box_sizes.double()
    pick = torch.randperm(sizes.shape[0], generator=generator)[:k].to(sizes.device)
    centroids = sizes[pick]
    for _ in range(iterations):
        assignment = _shape_iou(sizes, centroids).argmax(dim=1)
        updated = torch.stack(
            [
                _cluster_centre(sizes[assignment == c], update)
                if bool((assignment == c).any())
                else centroids[c]
                for c in range(k)
            ]
        )
        if torch.equal(updated, centroids):
            break
        centroids = updated
    order = (centroids[:, 0] * centroids[:, 1]).argsort()
    return centroids[order].to(box_sizes.dtype)


def _cluster_centre(members: Tensor, update: str) -> Tensor:
    """The new centroid of one cluster's (width, height) rows: their mean or their median."""
    return members.mean(dim=0) if update == "mean" else members.median(dim=0).values


def shape_iou(sizes1: Tensor, sizes2: Tensor) -> Tensor:
    """IoU of boxes given only by (width, height), as if they shared a centre.

    Args:
        sizes1: ``Tensor[N, 2]`` of positive, finite (width, height), floating point.
        sizes2: ``Tensor[M, 2]``, the same, on the same device.

    Returns:
        ``Tensor[N, M]``.
    """
    fn = "shape_iou"
    _check_sizes(fn, "sizes1", sizes1, "N")
    _check_sizes(fn, "sizes2", sizes2, "M")
    check_same_device(fn, sizes1=sizes1, sizes2=sizes2)
    return _shape_iou(sizes1, sizes2)


def _check_sizes(fn: str, name: str, sizes: object, rows: str) -> None:
    """``sizes``: a floating ``Tensor[rows, 2]`` whose values (when value checks are on) are
    positive and finite."""
    check_tensor(fn, name, sizes)
    if sizes.dim() != 2 or sizes.shape[1] != 2:
        raise ValueError(f"{fn}: {name} must have shape [{rows}, 2], got {list(sizes.shape)}")
    check_floating(fn, name, sizes)
    if value_checks_enabled() and sizes.numel() > 0:
        if not bool(((sizes > 0) & (sizes < math.inf)).all()):
            raise ValueError(
                f"{fn}: {name} must be positive, finite (width, height) pairs; got "
                f"{int((~((sizes > 0) & (sizes < math.inf))).any(1).sum())} bad row(s)"
            )


def _shape_iou(sizes1: Tensor, sizes2: Tensor) -> Tensor:
    """:func:`shape_iou` without the checks: ``[N, 2]`` and ``[M, 2]`` -> ``Tensor[N, M]``."""
    inter = torch.minimum(sizes1[:, None, 0], sizes2[:, 0]) * torch.minimum(
        sizes1[:, None, 1], sizes2[:, 1]
    )
    area1 = sizes1[:, 0] * sizes1[:, 1]
    area2 = sizes2[:, 0] * sizes2[:, 1]
    return inter / (area1[:, None] + area2 - inter)
