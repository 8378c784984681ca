"""Synthetic data: nothing in the book downloads a dataset."""

from __future__ import annotations

import hashlib
import math
import numbers
import struct

import torch
from torch import Tensor

from detlib._checks import check_image_size, check_positive

__all__ = ["collate_detection", "sample_boxes", "ShapesDataset"]


def _is_int(value: object) -> bool:
    """An int, but not a bool (``True`` is an int to Python, never a count or a size here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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
    if not _is_int(n) or n < 0:
        raise ValueError(f"{fn}: n must be a non-negative int, got {n!r}")
    check_positive(fn, "min_size", min_size)
    check_positive(fn, "max_size", max_size)
    if max_size < min_size:
        raise ValueError(f"{fn}: max_size ({max_size}) must be >= min_size ({min_size})")
    if check_positive(fn, "max_aspect", max_aspect) < 1:
        raise ValueError(f"{fn}: max_aspect must be >= 1 and finite, got {max_aspect}")
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    size = torch.exp(math.log(min_size) + u[:, 0] * (math.log(max_size) - math.log(min_size)))
    ratio = torch.exp((2 * u[:, 1] - 1) * math.log(max_aspect))
    w = (size / ratio.sqrt()).clamp(max=width)
    h = (size * ratio.sqrt()).clamp(max=height)
    x1 = u[:, 2] * (width - w)
    y1 = u[:, 3] * (height - h)
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=1).to(dtype)


# --------------------------------------------------------------------------- a detection dataset
SHAPE_CLASSES = ("ellipse", "rectangle", "triangle")


class ShapesDataset(torch.utils.data.Dataset):
    """Synthetic detection images: ellipses, rectangles and triangles on textured backgrounds.

    Every item is generated on the fly from its own seed (``seed``, ``index``), so a dataset is
    reproducible, needs no storage and no download, and two datasets with different seeds (a
    training and a held-out split) never share an image. Objects vary in size (log-uniform),
    aspect ratio, colour and position. Objects may overlap, but no more than ``max_overlap`` of the
    smaller one's box is covered by another (so a later object never hides an earlier one). The box
    of an object is the exact bounding box of its pixels, ``(x1, y1, x2, y2)`` with ``x2`` one past
    the last column (so a 1-pixel object is 1 pixel wide).

    Args:
        num_images: length of the dataset.
        image_size: images are ``image_size x image_size``.
        seed: the split's seed.
        min_objects: fewest objects per image (an object that finds no free place after 20
            attempts is skipped, so an image can rarely hold fewer).
        max_objects: most objects per image.
        min_size: smallest object size (square root of its box area), pixels.
        max_size: largest object size, pixels.
        max_aspect: largest ratio between the long and short side of an object's box.
        max_overlap: largest fraction of the smaller of two objects' boxes that their
            intersection may cover.

    Items are ``(image, target)``: ``image`` a ``Tensor[3, H, W]`` in ``[0, 1]`` and ``target`` a
    dict with ``boxes`` ``Tensor[G, 4]`` (float32) and ``labels`` ``Tensor[G]`` (int64, an index
    into :data:`SHAPE_CLASSES`), all on the CPU.
    """

    classes = SHAPE_CLASSES

    def __init__(
        self,
        num_images: int,
        image_size: int = 128,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 4,
        min_size: float = 12.0,
        max_size: float = 56.0,
        max_aspect: float = 2.0,
        max_overlap: float = 0.3,
    ) -> None:
        fn = "ShapesDataset"
        if not _is_int(num_images) or num_images < 0:
            raise ValueError(f"{fn}: num_images must be a non-negative int, got {num_images!r}")
        if not _is_int(image_size) or image_size < 16:
            raise ValueError(f"{fn}: image_size must be an int >= 16, got {image_size!r}")
        if not _is_int(seed):
            raise TypeError(f"{fn}: seed must be an int, got {seed!r}")
        for name, value in (("min_objects", min_objects), ("max_objects", max_objects)):
            if not _is_int(value):
                raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(
                f"{fn}: need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}"
            )
        min_size = check_positive(fn, "min_size", min_size)
        max_size = check_positive(fn, "max_size", max_size)
        if not 2 <= min_size <= max_size <= image_size:
            raise ValueError(
                f"{fn}: need 2 <= min_size <= max_size <= image_size, got {min_size}, {max_size}"
            )
        if check_positive(fn, "max_aspect", max_aspect) < 1:  # NaN and infinity refused
            raise ValueError(f"{fn}: max_aspect must be >= 1 and finite, got {max_aspect}")
        if check_positive(fn, "max_overlap", max_overlap, allow_zero=True) > 1:
            raise ValueError(f"{fn}: max_overlap must be in [0, 1], got {max_overlap}")
        self.num_images, self.image_size, self.seed = num_images, image_size, seed
        self.min_objects, self.max_objects = min_objects, max_objects
        self.min_size, self.max_size, self.max_aspect = (
            float(min_size),
            float(max_size),
            float(max_aspect),
        )
        self.max_overlap = float(max_overlap)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(
                f"ShapesDataset: index {index} out of range for {self.num_images} images"
            )
        index %= self.num_images
        gen = _item_generator(self.seed, index)
        image = _background(self.image_size, gen)
        boxes, labels = [], []
        count = int(torch.randint(self.min_objects, self.max_objects + 1, (1,), generator=gen))
        for _ in range(count):
            placed = self._place_object(image, boxes, gen)
            if placed is not None:
                boxes.append(placed[0])
                labels.append(placed[1])
        return image.clamp_(0, 1), {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }

    def _place_object(self, image: Tensor, boxes: list, gen: torch.Generator, tries: int = 20):
        """Draw one object that overlaps earlier ones by at most ``max_overlap``; returns
        ``(box, label)`` or None when no placement was found in ``tries`` attempts."""
        for _ in range(tries):
            label = int(torch.randint(len(SHAPE_CLASSES), (1,), generator=gen))
            mask = _shape_mask(
                label, self.image_size, self.min_size, self.max_size, self.max_aspect, gen
            )
            rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
            if len(rows) == 0:
                continue
            box = [float(cols[0]), float(rows[0]), float(cols[-1]) + 1, float(rows[-1]) + 1]
            if boxes and _largest_cover(box, boxes) > self.max_overlap:
                continue
            _paint(image, mask, gen)
            return box, label
        return None


_MT_STATE_WORDS = 624  # mt19937's state
_GENERATOR_STATE_BYTES = 5056  # torch's CPU generator state (its legacy layout, stable since 1.x)
_STATE_WORDS_OFFSET = 24  # after int64 initial seed, int32 left, int32 seeded, uint64 next


def _item_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator whose random stream belongs to the pair ``(seed, index)`` alone.

    ``torch.Generator.manual_seed`` keeps only 32 bits of its seed, so no arithmetic on
    ``(seed, index)`` fed to it can give every pair its own stream (``seed * 1_000_003 + index``
    made item 1,000,003 of seed 0 equal to item 0 of seed 1). Instead the generator's mt19937
    state (624 words of 32 bits) is written directly: words 1 to 4 hold the two 64-bit numbers
    themselves, so different pairs always start from different states, and the other words are
    SHAKE-256 of the pair, so that nearby pairs give unrelated streams.
    """
    key = struct.pack("<QQ", seed % 2**64, index % 2**64)
    filler = hashlib.shake_256(b"detlib.ShapesDataset" + key).digest(4 * _MT_STATE_WORDS)
    words = list(struct.unpack(f"<{_MT_STATE_WORDS}I", filler))
    words[1:5] = struct.unpack("<4I", key)
    gen = torch.Generator().manual_seed(0)  # a valid state to start from: left = 1, next = 0
    state = bytearray(gen.get_state().numpy().tobytes())
    if len(state) != _GENERATOR_STATE_BYTES:
        raise RuntimeError(
            f"ShapesDataset: this torch's generator state has {len(state)} bytes, expected "
            f"{_GENERATOR_STATE_BYTES}; please report it"
        )
    struct.pack_into(f"<{_MT_STATE_WORDS}Q", state, _STATE_WORDS_OFFSET, *words)
    gen.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
    return gen


def _largest_cover(box: list[float], boxes: list[list[float]]) -> float:
    """Largest intersection of ``box`` with one of ``boxes``, as a fraction of the smaller box."""
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    largest = 0.0
    for a1, b1, a2, b2 in boxes:
        inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
        largest = max(largest, inter / min(area, (a2 - a1) * (b2 - b1)))
    return largest


def _background(size: int, gen: torch.Generator) -> Tensor:
    """A smooth random texture: a base colour, two sinusoidal gratings and a little noise."""
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32),
        torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )
    base = 0.2 + 0.6 * torch.rand(3, 1, 1, generator=gen)
    image = base.expand(3, size, size).clone()
    for _ in range(2):
        angle, frequency, phase = (
            torch.rand(3, generator=gen) * torch.tensor([3.1416, 0.25, 6.2832])
        ).tolist()
        wave = torch.sin(
            (xs * torch.cos(torch.tensor(angle)) + ys * torch.sin(torch.tensor(angle))) * frequency
            + phase
        )
        image += 0.08 * wave * (torch.rand(3, 1, 1, generator=gen) - 0.5) * 2
    return image + 0.03 * torch.randn(3, size, size, generator=gen)


def _shape_mask(
    label: int, size: int, min_size: float, max_size: float, max_aspect: float, gen: torch.Generator
) -> Tensor:
    """``Tensor[size, size]`` of bools: one ellipse (0), rectangle (1) or triangle (2)."""
    u = torch.rand(4, generator=gen, dtype=torch.float64)
    extent = math.exp(math.log(min_size) + float(u[0]) * (math.log(max_size) - math.log(min_size)))
    aspect = math.exp((2 * float(u[1]) - 1) * math.log(max_aspect))
    w, h = min(extent / math.sqrt(aspect), size - 2), min(extent * math.sqrt(aspect), size - 2)
    cx = w / 2 + 1 + float(u[2]) * (size - w - 2)
    cy = h / 2 + 1 + float(u[3]) * (size - h - 2)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float64) + 0.5,
        torch.arange(size, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    dx, dy = (xs - cx) / (w / 2), (ys - cy) / (h / 2)  # in [-1, 1] inside the shape's box
    if label == 0:
        return dx**2 + dy**2 <= 1
    if label == 1:
        return (dx.abs() <= 1) & (dy.abs() <= 1)
    # An upright triangle: apex at the top centre, base along the bottom edge.
    return (dy <= 1) & (dy >= -1) & (dx.abs() <= (dy + 1) / 2)


def _paint(image: Tensor, mask: Tensor, gen: torch.Generator) -> None:
    """Fill ``mask`` with a random colour that contrasts with the background under it."""
    under = image[:, mask].mean(dim=1)
    colour = torch.rand(3, generator=gen)
    if float((colour - under).abs().sum()) < 0.6:  # too close to the background: use its opposite
        colour = 1 - under
    shading = 1 + 0.05 * torch.randn(1, int(mask.sum()), generator=gen)
    image[:, mask] = colour[:, None] * shading


def collate_detection(
    batch: list[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[Tensor, Tensor, Tensor]:
    """Stack a list of ``(image, target)`` items into padded batch tensors.

    Returns:
        ``images`` ``Tensor[B, 3, H, W]``, ``boxes`` ``Tensor[B, G, 4]`` and ``labels``
        ``Tensor[B, G]``, where ``G`` is the largest number of objects in the batch; padding
        rows have label ``-1`` and box ``(0, 0, 0, 0)``.
    """
    if not batch:
        raise ValueError("collate_detection: batch is empty")
    images = torch.stack([image for image, _ in batch])
    most = max(len(target["labels"]) for _, target in batch)
    boxes = torch.zeros(len(batch), most, 4)
    labels = torch.full((len(batch), most), -1, dtype=torch.int64)
    for i, (_, target) in enumerate(batch):
        count = len(target["labels"])
        boxes[i, :count] = target["boxes"]
        labels[i, :count] = target["labels"]
    return images, boxes, labels
