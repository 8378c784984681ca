"""Choosing which anchors a two-stage detector trains on: balanced positive/negative sampling.

An image gives an RPN tens of thousands of anchors, of which a few dozen are positive. Faster
R-CNN does not average its loss over all of them: it draws a mini-batch of 256 anchors per image,
at most half of them positive, and fills the rest with negatives (its RoI heads draw 512 proposals,
at most a quarter positive). Ignored anchors are never drawn.

Labels follow torchvision's convention: ``>= 1`` positive (a class index or 1), ``0`` negative,
anything else (``-1``) ignored. :func:`labels_from_matches` turns a :class:`~detlib.Matcher`'s
output into such labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detlib._checks import check_tensor
from detlib.matching import Matcher

__all__ = ["BalancedPositiveNegativeSampler", "balanced_sample", "labels_from_matches"]


def _check_labels(fn: str, name: str, labels: object, batched: bool = False) -> Tensor:
    labels = check_tensor(fn, name, labels)
    if labels.dim() != 1 and not (batched and labels.dim() == 2):
        shape = "[N] or [B, N]" if batched else "[N]"
        raise ValueError(f"{fn}: {name} must have shape {shape}, got {list(labels.shape)}")
    if labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{fn}: {name} must hold integer or floating labels, got {labels.dtype}")
    return labels


def labels_from_matches(matches: Tensor) -> Tensor:
    """Turn a matcher's output into sampling labels: 1 positive, 0 negative, -1 ignored.

    Args:
        matches: ``Tensor[N]`` (integer) of matched ground-truth indices, ``-1`` for background
            (``Matcher.BELOW_LOW_THRESHOLD``) and ``-2`` for ignored (``Matcher.BETWEEN_THRESHOLDS``).

    Returns:
        ``Tensor[N]`` (int64) on the same device: ``1`` where ``matches >= 0``, ``0`` where it is
        ``-1``, ``-1`` elsewhere. The RPN of torchvision computes the same labels (as floats).
    """
    fn = "labels_from_matches"
    matches = _check_labels(fn, "matches", matches)
    if matches.is_floating_point():
        raise TypeError(f"{fn}: matches must hold integer indices, got {matches.dtype}")
    positive = torch.ones_like(matches, dtype=torch.int64)
    labels = torch.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, -1)
    return torch.where(matches >= 0, positive, labels)


def _check_sampler_settings(
    fn: str, batch_size_per_image: object, positive_fraction: object
) -> None:
    if isinstance(batch_size_per_image, bool) or not isinstance(batch_size_per_image, int):
        raise TypeError(
            f"{fn}: batch_size_per_image must be an int, got {type(batch_size_per_image).__name__}"
        )
    if batch_size_per_image < 0:
        raise ValueError(f"{fn}: batch_size_per_image must be >= 0, got {batch_size_per_image}")
    if (
        isinstance(positive_fraction, bool)
        or not isinstance(positive_fraction, (int, float))
        or not 0.0 <= positive_fraction <= 1.0
    ):
        raise ValueError(
            f"{fn}: positive_fraction must be a number in [0, 1], got {positive_fraction!r}"
        )


def _random_permutation(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``randperm(n)`` on ``device``, drawn from ``generator`` (on its own device) if given."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def balanced_sample(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw at most ``batch_size_per_image`` labelled examples, at most a fraction of them positive.

    The number of positives is ``min(P, int(batch_size_per_image * positive_fraction))`` (rounded
    down, as in torchvision), the number of negatives ``min(Q, batch_size_per_image - positives)``
    where ``P`` and ``Q`` are the numbers available: negatives fill the places that positives leave
    free. Both are drawn uniformly without replacement; ignored examples are never drawn.

    The random draws are the ones of torchvision's ``BalancedPositiveNegativeSampler`` (one
    ``randperm`` over the positives, then one over the negatives), so with the same seed the two
    pick the same examples. Counting the positives reads their number on the host (one
    synchronisation on a GPU, as in torchvision).

    A batch ``Tensor[B, N]`` (one row per image, e.g. the labels of :func:`detlib.label_anchors`)
    is drawn in one go, with the same rule in every row but other random draws: every element
    gets a random key, and the elements with the smallest keys among the positives (and among
    the negatives) of a row are drawn, so there is no loop over images and no device-to-host
    copy. A row of a batch is therefore not drawn like the same labels given alone as ``[N]``.

    Args:
        labels: ``Tensor[N]`` or ``Tensor[B, N]``: ``>= 1`` positive, ``0`` negative, anything
            else ignored (use :func:`labels_from_matches` for a matcher's output).
        batch_size_per_image: the most examples to draw (256 for the RPN, 512 for RoI heads).
        positive_fraction: the largest share of positives (0.5 for the RPN, 0.25 for RoI heads).
        generator: random generator; ``None`` uses PyTorch's global one on the labels' device.
            A generator on another device (a CPU generator for CUDA labels) draws the permutations
            there and copies them to the labels' device, so the picks are the same on every device.

    Returns:
        ``(positive, negative)``: two bool masks of the shape of ``labels``, on its device,
        disjoint.
    """
    fn = "balanced_sample"
    labels = _check_labels(fn, "labels", labels, batched=True)
    _check_sampler_settings(fn, batch_size_per_image, positive_fraction)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{fn}: generator must be a torch.Generator, got {type(generator).__name__}"
        )
    if labels.dim() == 2:
        return _balanced_sample_rows(labels, batch_size_per_image, positive_fraction, generator)
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_positive = min(positive.numel(), int(batch_size_per_image * positive_fraction))
    num_negative = min(negative.numel(), batch_size_per_image - num_positive)
    pick_positive = _random_permutation(positive.numel(), generator, labels.device)[:num_positive]
    pick_negative = _random_permutation(negative.numel(), generator, labels.device)[:num_negative]
    positive_mask = torch.zeros_like(labels, dtype=torch.bool)
    negative_mask = torch.zeros_like(labels, dtype=torch.bool)
    positive_mask[positive[pick_positive]] = True
    negative_mask[negative[pick_negative]] = True
    return positive_mask, negative_mask


def _balanced_sample_rows(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """:func:`balanced_sample` of every row of ``labels`` (``[B, N]``) at once, by random keys.

    The keys are drawn on the generator's device (the CPU for a CPU generator, so that CPU and
    GPU runs draw the same elements) and copied to the device of ``labels``.
    """
    is_positive, is_negative = labels >= 1, labels == 0
    num_positive = is_positive.sum(dim=1).clamp(max=int(batch_size_per_image * positive_fraction))
    num_negative = torch.minimum(is_negative.sum(dim=1), batch_size_per_image - num_positive)
    key_device = generator.device if generator is not None else labels.device
    keys = torch.rand(labels.shape, generator=generator, device=key_device).to(labels.device)
    # Positives sort first, negatives second, the rest last; ranks then count within each group.
    keys = keys + torch.where(is_positive, 0.0, torch.where(is_negative, 2.0, 4.0))
    order = keys.argsort(dim=1)
    position = torch.arange(labels.shape[1], device=labels.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, position)
    positives_in_row = is_positive.sum(dim=1, keepdim=True)
    positive = is_positive & (rank < num_positive[:, None])
    negative = is_negative & (rank - positives_in_row < num_negative[:, None])
    return positive, negative


class BalancedPositiveNegativeSampler:
    """:func:`balanced_sample` for a batch of images, with torchvision's interface.

    Args:
        batch_size_per_image: the most examples to draw per image.
        positive_fraction: the largest share of positives per image.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        _check_sampler_settings(
            "BalancedPositiveNegativeSampler", batch_size_per_image, positive_fraction
        )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = float(positive_fraction)

    def __repr__(self) -> str:
        return (
            f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def __call__(
        self, labels: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Sample every image in turn.

        Args:
            labels: one ``Tensor[N_i]`` of labels per image.
            generator: as in :func:`balanced_sample`, shared by the images in order.

        Returns:
            ``(positive, negative)``: two lists with one ``Tensor[N_i]`` bool mask per image
            (torchvision returns ``uint8`` masks with the same ones).
        """
        if isinstance(labels, Tensor) or not isinstance(labels, Sequence):
            raise TypeError(
                "BalancedPositiveNegativeSampler: labels must be a list of Tensor[N_i], one per "
                f"image, got {type(labels).__name__}"
            )
        positives, negatives = [], []
        for per_image in labels:
            positive, negative = balanced_sample(
                per_image, self.batch_size_per_image, self.positive_fraction, generator
            )
            positives.append(positive)
            negatives.append(negative)
        return positives, negatives
