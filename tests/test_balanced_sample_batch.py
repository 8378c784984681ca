"""detlib.balanced_sample on a batch [B, N]: quotas, uniform draws, reproducibility, errors
(the one-image form and its parity with torchvision are in test_sampling.py)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detlib.sampling import balanced_sample

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------- balanced_sample
@given(
    counts=st.lists(
        st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 20)),
        min_size=1,
        max_size=4,
    ),
    batch_size=st.integers(0, 80),
    fraction=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_balanced_sample_quotas(counts, batch_size, fraction, seed):
    length = max(p + n + i for p, n, i in counts)
    labels = torch.full((len(counts), length), -1)
    for row, (p, n, _) in enumerate(counts):
        labels[row, :p] = torch.randint(1, 5, (p,))
        labels[row, p : p + n] = 0
    shuffle = torch.argsort(torch.rand(labels.shape, generator=torch.Generator().manual_seed(seed)))
    labels = labels.gather(1, shuffle)
    positive, negative = balanced_sample(
        labels, batch_size, fraction, torch.Generator().manual_seed(seed)
    )
    assert not bool((positive & negative).any())
    assert bool((labels[positive] >= 1).all()) and bool((labels[negative] == 0).all())
    for row, (p, n, _) in enumerate(counts):
        num_positive = min(p, int(batch_size * fraction))
        assert int(positive[row].sum()) == num_positive
        assert int(negative[row].sum()) == min(n, batch_size - num_positive)


def test_balanced_sample_is_uniform():
    # 2,000 images with 10 positives and room for 5: each positive is drawn about half the time.
    labels = torch.ones(2000, 10)
    positive, _ = balanced_sample(labels, 10, 0.5, torch.Generator().manual_seed(0))
    assert bool((positive.sum(dim=1) == 5).all())
    frequency = positive.float().mean(dim=0)
    assert bool(((frequency - 0.5).abs() < 0.05).all())


def test_balanced_sample_batch_reproducible_and_empty():
    labels = torch.tensor([[1, 0, 0, -1, 2, 0, 0, 0, 1, 0]] * 2)
    first = balanced_sample(labels, 4, 0.5, torch.Generator().manual_seed(3))
    second = balanced_sample(labels, 4, 0.5, torch.Generator().manual_seed(3))
    assert first[0].shape == (2, 10)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    positive, negative = balanced_sample(torch.zeros(2, 0), 256, 0.5)
    assert positive.shape == negative.shape == (2, 0)


def test_balanced_sample_errors():
    with pytest.raises(ValueError, match="balanced_sample: positive_fraction must be a number"):
        balanced_sample(torch.zeros(5), 4, 1.5)
    with pytest.raises(ValueError, match="balanced_sample: batch_size_per_image must be >= 0"):
        balanced_sample(torch.zeros(5), -1, 0.5)
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] or \[B, N\]"):
        balanced_sample(torch.zeros(2, 2, 2), 4, 0.5)
