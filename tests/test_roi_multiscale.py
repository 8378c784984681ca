"""detlib.roi.multiscale (FPN level assignment, multi-scale RoI Align): parity with
torchvision's LevelMapper and MultiScaleRoIAlign, hand-made cases, empty inputs and errors."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from detlib.roi.multiscale import assign_fpn_levels, multiscale_roi_align
from tests.conftest import random_boxes

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------- FPN levels, pooler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fpn_levels_match_torchvision(dtype, gen):
    boxes = random_boxes(2000, gen, image=800, max_size=900, min_size=1, dtype=dtype)
    boxes[:50] = torch.cat([boxes[:50, :2], boxes[:50, :2] + 224], dim=1)  # exact 224 squares
    assert torch.equal(assign_fpn_levels(boxes) - 2, LevelMapper(2, 5)([boxes]))
    assert torch.equal(assign_fpn_levels(boxes, 3, 6) - 3, LevelMapper(3, 6)([boxes]))


def test_fpn_levels_by_hand():
    sides = torch.tensor([10.0, 111.0, 112.0, 224.0, 447.0, 448.0, 5000.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sides, sides], dim=1)
    assert assign_fpn_levels(boxes).tolist() == [2, 2, 3, 4, 4, 5, 5]
    assert assign_fpn_levels(boxes, canonical_scale=112).tolist() == [2, 3, 4, 5, 5, 5, 5]
    assert assign_fpn_levels(torch.zeros(0, 4)).dtype == torch.int64
    with pytest.raises(ValueError, match="assign_fpn_levels: k_max must be >= 4"):
        assign_fpn_levels(boxes, k_min=4, k_max=3)


def test_multiscale_roi_align_matches_torchvision(gen):
    maps = OrderedDict(
        (str(k), torch.randn(2, 3, 512 // 2**k, 512 // 2**k, generator=gen, requires_grad=True))
        for k in range(2, 6)
    )
    boxes = [
        random_boxes(60, gen, image=450, max_size=500, min_size=2),
        random_boxes(40, gen, image=450, max_size=500, min_size=2),
    ]
    pooler = MultiScaleRoIAlign(list(maps), output_size=(5, 4), sampling_ratio=2)
    expected = pooler(maps, boxes, [(512, 512)] * 2)
    ours = multiscale_roi_align(list(maps.values()), boxes, (5, 4), [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    torch.testing.assert_close(ours, expected)
    grad = torch.randn(ours.shape, generator=gen)
    for ours_grad, tv_grad in zip(
        torch.autograd.grad(ours, list(maps.values()), grad),
        torch.autograd.grad(expected, list(maps.values()), grad),
    ):
        torch.testing.assert_close(ours_grad, tv_grad)
    single = MultiScaleRoIAlign(["2"], 3, 2)(OrderedDict([("2", maps["2"])]), boxes, [(512, 512)])
    torch.testing.assert_close(multiscale_roi_align([maps["2"]], boxes, 3, [1 / 4]), single)


def test_multiscale_roi_align_empty_and_errors():
    maps = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4)]
    out = multiscale_roi_align(maps, [torch.zeros(0, 4)], 3, [1 / 4, 1 / 8])
    assert out.shape == (0, 2, 3, 3)
    with pytest.raises(ValueError, match="spatial_scales must be consecutive powers of two"):
        multiscale_roi_align(maps, [torch.zeros(0, 4)], 3, [1 / 4, 1 / 16])
    with pytest.raises(ValueError, match=r"spatial_scales must give one scale per level \(2"):
        multiscale_roi_align(maps, [torch.zeros(0, 4)], 3, [1 / 4])
