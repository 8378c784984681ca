"""Matcher: hand-made IoU matrices and parity with torchvision's Matcher."""

import pytest
import torch
from torchvision.models.detection._utils import Matcher as TorchvisionMatcher

from detlib import AnchorGenerator, Matcher, box_iou
from tests.conftest import random_boxes


def test_thresholds_by_hand():
    iou = torch.tensor([[0.9, 0.45, 0.1, 0.3, 0.5], [0.2, 0.6, 0.35, 0.3, 0.39]])
    # anchor: 0 -> gt 0 (0.9); 1 -> gt 1 (0.6); 2 -> 0.35 < 0.4: background; 3 -> 0.3: background;
    # 4 -> 0.5 >= 0.5: gt 0 (the threshold itself is positive).
    assert Matcher(0.5, 0.4)(iou).tolist() == [0, 1, -1, -1, 0]


def test_between_thresholds_is_ignored():
    iou = torch.tensor([[0.45, 0.7]])
    assert Matcher(0.5, 0.4)(iou).tolist() == [Matcher.BETWEEN_THRESHOLDS, 0]


def test_low_quality_matches_rescue_uncovered_boxes():
    # Ground truth 0 overlaps anchor 0 best, but only 0.3; ground truth 1 overlaps anchor 1 by 0.45.
    iou = torch.tensor([[0.3, 0.1, 0.0], [0.2, 0.45, 0.05]])
    assert Matcher(0.5, 0.4)(iou).tolist() == [-1, -2, -1]
    assert Matcher(0.5, 0.4, allow_low_quality_matches=True)(iou).tolist() == [0, 1, -1]


def test_low_quality_ties_keep_every_best_anchor():
    iou = torch.tensor([[0.3, 0.3, 0.1]])
    assert Matcher(0.5, 0.4, allow_low_quality_matches=True)(iou).tolist() == [0, 0, -1]


@pytest.mark.parametrize("thresholds", [(0.5, 0.4), (0.7, 0.3), (0.5, 0.5)])
@pytest.mark.parametrize("low_quality", [False, True])
def test_parity_with_torchvision(gen, thresholds, low_quality):
    anchors = AnchorGenerator.retinanet()((256, 256))
    gt = random_boxes(9, gen, image=220, max_size=150, min_size=4)
    iou = box_iou(gt, anchors)
    ours = Matcher(*thresholds, allow_low_quality_matches=low_quality)(iou)
    theirs = TorchvisionMatcher(*thresholds, allow_low_quality_matches=low_quality)(iou)
    assert torch.equal(ours, theirs)


def test_empty_inputs():
    assert (
        Matcher(0.5, 0.4)(torch.zeros(0, 7)).tolist() == [-1] * 7
    )  # no ground truth: all background
    assert Matcher(0.5, 0.4, True)(torch.zeros(3, 0)).shape == (0,)


def test_errors():
    with pytest.raises(
        ValueError, match=r"low_threshold \(0.6\) must not exceed high_threshold \(0.5\)"
    ):
        Matcher(0.5, 0.6)
    with pytest.raises(ValueError, match="high_threshold must be a number in"):
        Matcher(1.5, 0.4)
    with pytest.raises(ValueError, match=r"match_quality_matrix must have shape \[G, N\]"):
        Matcher(0.5, 0.4)(torch.zeros(3))
    with pytest.raises(TypeError, match="match_quality_matrix must be a torch.Tensor"):
        Matcher(0.5, 0.4)([[0.5]])
