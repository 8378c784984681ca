"""BoxCoder: hand-computed targets, round trips, parity with torchvision's BoxCoder."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from detlib import BoxCoder
from tests.conftest import random_boxes


def test_encode_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    gt = torch.tensor([[2.0, 4.0, 22.0, 14.0]])  # centre (12, 9), size 20 x 10
    tx, ty, tw, th = BoxCoder().encode(gt, anchor)[0].tolist()
    assert (tx, ty) == pytest.approx((0.7, -0.05))
    assert (tw, th) == pytest.approx((math.log(2.0), math.log(0.5)))
    weighted = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, anchor)[0].tolist()
    assert weighted == pytest.approx([7.0, -0.5, 5 * math.log(2.0), 5 * math.log(0.5)])


def test_variances_are_reciprocal_weights():
    # The seeds divide by "variances" (0.1, 0.1, 0.2, 0.2); torchvision multiplies by weights.
    gen = torch.Generator().manual_seed(3)
    anchors, gt = random_boxes(50, gen, min_size=1), random_boxes(50, gen, min_size=1)
    plain = BoxCoder().encode(gt, anchors)
    variances = torch.tensor([0.1, 0.1, 0.2, 0.2])
    assert torch.allclose(
        BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, anchors), plain / variances, atol=1e-5
    )


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 0.5, 7.0)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_torchvision(gen, weights, dtype):
    anchors = random_boxes(500, gen, min_size=1, dtype=dtype)
    gt = random_boxes(500, gen, min_size=1, dtype=dtype)
    ours, theirs = BoxCoder(weights), TorchvisionBoxCoder(weights)
    assert torch.equal(ours.encode(gt, anchors), theirs.encode_single(gt, anchors))
    deltas = torch.randn(500, 12, generator=gen, dtype=dtype) * 3  # K = 3 boxes per anchor
    assert torch.equal(ours.decode(deltas, anchors), theirs.decode_single(deltas, anchors))


def test_batched_decode_equals_per_image(gen):
    anchors = random_boxes(300, gen, min_size=1)
    deltas = torch.randn(4, 300, 4, generator=gen)
    batched = BoxCoder().decode(deltas, anchors)
    assert batched.shape == (4, 300, 4)
    for image in range(4):
        assert torch.equal(batched[image], BoxCoder().decode(deltas[image], anchors))
    gt = random_boxes(300, gen, min_size=1).expand(2, 300, 4)
    assert torch.equal(BoxCoder().encode(gt, anchors)[1], BoxCoder().encode(gt[0], anchors))


@given(
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_decode_inverts_encode(seed, weights):
    gen = torch.Generator().manual_seed(seed)
    anchors = random_boxes(64, gen, min_size=2, dtype=torch.float64)
    gt = random_boxes(64, gen, min_size=2, dtype=torch.float64)
    coder = BoxCoder(weights, bbox_xform_clip=math.log(1e6))  # no clamping within this range
    assert torch.allclose(coder.decode(coder.encode(gt, anchors), anchors), gt, atol=1e-9)


def test_clip_keeps_exp_finite():
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = BoxCoder().decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchors)
    assert torch.isfinite(boxes).all()
    assert (boxes[0, 2] - boxes[0, 0]).item() == pytest.approx(1000.0)  # 16 * exp(log(1000 / 16))
    unclipped = BoxCoder(bbox_xform_clip=1e9).decode(
        torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchors
    )
    assert torch.isinf(unclipped).any()


def test_empty():
    assert BoxCoder().encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert BoxCoder().decode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


def test_errors():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(ValueError, match="anchors has 1 box.* zero or negative size"):
        BoxCoder().encode(anchors, torch.tensor([[0.0, 0.0, 0.0, 10.0]]))
    with pytest.raises(ValueError, match="gt_boxes has 1 box.* zero or negative size"):
        BoxCoder().encode(torch.tensor([[5.0, 5.0, 5.0, 9.0]]), anchors)
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \[\.\.\., N, 4\] with N = 1"):
        BoxCoder().encode(torch.zeros(2, 4) + anchors, anchors)
    with pytest.raises(ValueError, match="deltas has 1 NaN"):
        BoxCoder().decode(torch.tensor([[0.0, math.nan, 0.0, 0.0]]), anchors)
    with pytest.raises(ValueError, match=r"deltas must have shape \[\.\.\., N, 4 \* K\]"):
        BoxCoder().decode(torch.zeros(1, 5), anchors)
    with pytest.raises(TypeError, match="deltas must have a floating-point dtype"):
        BoxCoder().decode(torch.zeros(1, 4, dtype=torch.int64), anchors)
    with pytest.raises(ValueError, match="weights must be four numbers"):
        BoxCoder((1.0, 1.0))
    with pytest.raises(ValueError, match="weights must be a finite number > 0"):
        BoxCoder((1.0, 1.0, 0.0, 1.0))
