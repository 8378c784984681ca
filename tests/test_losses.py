"""Focal loss and smooth L1: hand values and parity with torchvision / torch."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvops

from detlib import sigmoid_focal_loss, smooth_l1_loss


def test_focal_by_hand():
    # Logit 0 -> p = 0.5. Positive: 0.25 * 0.5**2 * log(2); negative: 0.75 * 0.5**2 * log(2).
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    assert loss.tolist() == pytest.approx([0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)])


def test_focal_with_gamma_zero_and_no_alpha_is_cross_entropy(gen):
    x = torch.randn(50, 7, generator=gen)
    t = (torch.rand(50, 7, generator=gen) < 0.2).float()
    assert torch.allclose(
        sigmoid_focal_loss(x, t, alpha=-1, gamma=0),
        F.binary_cross_entropy_with_logits(x, t, reduction="none"),
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.25, 1.5), (-1.0, 2.0), (0.9, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_parity_values_and_gradients(gen, reduction, alpha, gamma, dtype):
    x = (torch.randn(64, 20, generator=gen, dtype=dtype) * 4).requires_grad_()
    t = (torch.rand(64, 20, generator=gen) < 0.1).to(dtype)
    ours = sigmoid_focal_loss(x, t, alpha, gamma, reduction)
    theirs = tvops.sigmoid_focal_loss(x, t, alpha, gamma, reduction)
    assert torch.equal(ours, theirs)
    assert torch.equal(
        torch.autograd.grad(ours.sum(), x)[0], torch.autograd.grad(theirs.sum(), x)[0]
    )


def test_focal_gradcheck(gen):
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = (torch.rand(6, 3, generator=gen) < 0.5).double()
    assert torch.autograd.gradcheck(
        lambda logits: sigmoid_focal_loss(logits, t, reduction="sum"), (x,)
    )


def test_focal_is_finite_for_extreme_logits():
    x = torch.tensor([-200.0, 200.0], requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.tensor([1.0, 0.0]), reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_smooth_l1_by_hand():
    d = torch.tensor([0.05, 1.0, -1.0])
    loss = smooth_l1_loss(d, torch.zeros(3), beta=1 / 9)
    assert loss.tolist() == pytest.approx([0.5 * 0.05**2 * 9, 1 - 0.5 / 9, 1 - 0.5 / 9])


@pytest.mark.parametrize("beta", [1 / 9, 1.0, 0.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_smooth_l1_parity(gen, beta, reduction):
    x, y = torch.randn(40, 4, generator=gen), torch.randn(40, 4, generator=gen)
    assert torch.equal(
        smooth_l1_loss(x, y, beta, reduction),
        F.smooth_l1_loss(x, y, beta=beta, reduction=reduction),
    )


def test_errors():
    x = torch.zeros(3)
    with pytest.raises(
        ValueError, match=r"inputs and targets must have the same shape, got \[3\] and \[4\]"
    ):
        sigmoid_focal_loss(x, torch.zeros(4))
    with pytest.raises(ValueError, match="reduction must be"):
        sigmoid_focal_loss(x, x, reduction="average")
    with pytest.raises(TypeError, match="inputs must have a floating-point dtype"):
        sigmoid_focal_loss(torch.zeros(3, dtype=torch.int64), x)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        sigmoid_focal_loss(x, x, gamma=-1)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        smooth_l1_loss(x, x, beta=-0.1)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        smooth_l1_loss(x, [0.0, 0.0, 0.0])


def test_empty():
    assert sigmoid_focal_loss(torch.zeros(0, 5), torch.zeros(0, 5)).shape == (0, 5)
    assert sigmoid_focal_loss(torch.zeros(0, 5), torch.zeros(0, 5), reduction="sum").item() == 0.0
