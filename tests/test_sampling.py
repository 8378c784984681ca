"""Balanced positive/negative sampling: counts by hand, properties, exact parity with torchvision."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection._utils import (
    BalancedPositiveNegativeSampler as TorchvisionSampler,
)

from detlib.matching import Matcher
from detlib.sampling import BalancedPositiveNegativeSampler, balanced_sample, labels_from_matches


def make_labels(num_positive, num_negative, num_ignored, seed=0, dtype=torch.int64):
    """A shuffled label vector with the given counts of 1, 0 and -1."""
    labels = torch.cat(
        [
            torch.ones(num_positive, dtype=dtype),
            torch.zeros(num_negative, dtype=dtype),
            -torch.ones(num_ignored, dtype=dtype),
        ]
    )
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def test_labels_from_matches():
    matches = torch.tensor([3, 0, -1, -2, 1, -1])
    assert labels_from_matches(matches).tolist() == [1, 1, 0, -1, 1, 0]
    iou = torch.tensor([[0.9, 0.45, 0.1], [0.2, 0.3, 0.35]])
    assert labels_from_matches(Matcher(0.5, 0.4)(iou)).tolist() == [1, -1, 0]


@pytest.mark.parametrize(
    ("counts", "batch", "fraction", "expected"),
    [
        ((300, 8000, 50), 256, 0.5, (128, 128)),  # enough of both: half and half
        ((18, 8000, 50), 256, 0.5, (18, 238)),  # few positives: negatives fill the batch
        ((300, 40, 50), 256, 0.5, (128, 40)),  # few negatives: a smaller batch
        ((300, 8000, 0), 512, 0.25, (128, 384)),  # the RoI heads' setting
        ((0, 100, 5), 16, 0.5, (0, 16)),
        ((10, 0, 5), 16, 0.5, (8, 0)),
        ((50, 100, 0), 100, 0.29, (28, 72)),  # int(100 * 0.29) = int(28.999...) = 28
        ((5, 5, 5), 0, 0.5, (0, 0)),
    ],
)
def test_counts_by_hand(counts, batch, fraction, expected):
    labels = make_labels(*counts)
    positive, negative = balanced_sample(labels, batch, fraction, torch.Generator().manual_seed(1))
    assert (int(positive.sum()), int(negative.sum())) == expected
    assert positive.dtype == torch.bool and positive.shape == labels.shape


@given(
    st.integers(0, 300),
    st.integers(0, 300),
    st.integers(0, 100),
    st.integers(0, 300),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_properties(num_positive, num_negative, num_ignored, batch, fraction, seed):
    labels = make_labels(num_positive, num_negative, num_ignored, seed)
    positive, negative = balanced_sample(
        labels, batch, fraction, torch.Generator().manual_seed(seed)
    )
    assert (labels[positive] == 1).all() and (labels[negative] == 0).all()  # never ignored
    assert not (positive & negative).any()
    picked_positive, picked_negative = int(positive.sum()), int(negative.sum())
    assert picked_positive == min(num_positive, int(batch * fraction))
    assert picked_negative == min(num_negative, batch - picked_positive)
    assert picked_positive + picked_negative <= batch


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize(
    ("counts", "batch", "fraction"),
    [((300, 8000, 50), 256, 0.5), ((18, 8000, 50), 256, 0.5), ((700, 3000, 0), 512, 0.25)],
)
def test_same_picks_as_torchvision(seed, counts, batch, fraction):
    images = [make_labels(*counts, seed=seed), make_labels(*counts, seed=seed + 100)]
    torch.manual_seed(seed)
    theirs_positive, theirs_negative = TorchvisionSampler(batch, fraction)(images)
    ours_positive, ours_negative = BalancedPositiveNegativeSampler(batch, fraction)(
        images, generator=torch.Generator().manual_seed(seed)
    )
    for a, b in zip(theirs_positive + theirs_negative, ours_positive + ours_negative):
        assert torch.equal(a.bool(), b)
    # Without a generator, both use the global one.
    torch.manual_seed(seed)
    positive, negative = balanced_sample(images[0], batch, fraction)
    assert torch.equal(positive, theirs_positive[0].bool())
    assert torch.equal(negative, theirs_negative[0].bool())


def test_float_and_class_labels():
    # torchvision's RPN gives float labels 1.0 / 0.0 / -1.0, its RoI heads class indices >= 1.
    labels = torch.tensor([1.0, 0.0, -1.0, 1.0, 0.0, 0.0])
    positive, negative = balanced_sample(labels, 4, 0.5, torch.Generator().manual_seed(0))
    assert positive.tolist() == [True, False, False, True, False, False]
    assert int(negative.sum()) == 2 and not negative[2]
    classes = torch.tensor([3, 0, 7, -1, 0])
    positive, negative = balanced_sample(classes, 10, 0.5, torch.Generator().manual_seed(0))
    assert positive.tolist() == [True, False, True, False, False]
    assert negative.tolist() == [False, True, False, False, True]


def test_reproducible_and_random():
    labels = make_labels(500, 5000, 0)
    draw = [
        balanced_sample(labels, 256, 0.5, torch.Generator().manual_seed(s))[0] for s in (3, 3, 4)
    ]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2])


def test_every_example_can_be_drawn():
    labels = make_labels(20, 20, 0)
    generator = torch.Generator().manual_seed(0)
    seen_positive = torch.zeros(40, dtype=torch.bool)
    seen_negative = torch.zeros(40, dtype=torch.bool)
    for _ in range(50):
        positive, negative = balanced_sample(labels, 4, 0.5, generator)
        seen_positive |= positive
        seen_negative |= negative
    assert torch.equal(seen_positive, labels == 1) and torch.equal(seen_negative, labels == 0)


def test_empty():
    positive, negative = balanced_sample(torch.zeros(0, dtype=torch.int64), 256, 0.5)
    assert positive.shape == (0,) and negative.shape == (0,) and positive.dtype == torch.bool
    assert labels_from_matches(torch.zeros(0, dtype=torch.int64)).shape == (0,)
    assert BalancedPositiveNegativeSampler(8, 0.5)([]) == ([], [])


def test_errors_name_the_argument():
    labels = torch.tensor([1, 0, -1])
    with pytest.raises(TypeError, match="balanced_sample: labels must be a torch.Tensor"):
        balanced_sample([1, 0], 4, 0.5)
    with pytest.raises(
        ValueError, match=r"balanced_sample: labels must have shape \[N\] or \[B, N\]"
    ):
        balanced_sample(labels[None, None], 4, 0.5)
    with pytest.raises(TypeError, match="balanced_sample: labels must hold integer or floating"):
        balanced_sample(labels > 0, 4, 0.5)
    with pytest.raises(TypeError, match="balanced_sample: batch_size_per_image must be an int"):
        balanced_sample(labels, 128.0, 0.5)  # the seed's float
    with pytest.raises(ValueError, match="balanced_sample: batch_size_per_image must be >= 0"):
        balanced_sample(labels, -1, 0.5)
    with pytest.raises(ValueError, match=r"balanced_sample: positive_fraction must be .* \[0, 1\]"):
        balanced_sample(labels, 4, 1.5)
    with pytest.raises(TypeError, match="balanced_sample: generator must be a torch.Generator"):
        balanced_sample(labels, 4, 0.5, generator=0)
    with pytest.raises(TypeError, match="labels_from_matches: matches must hold integer indices"):
        labels_from_matches(torch.tensor([0.0, -1.0]))
    with pytest.raises(ValueError, match="BalancedPositiveNegativeSampler: positive_fraction"):
        BalancedPositiveNegativeSampler(256, -0.5)
    with pytest.raises(TypeError, match="BalancedPositiveNegativeSampler: labels must be a list"):
        BalancedPositiveNegativeSampler(256, 0.5)(labels)
