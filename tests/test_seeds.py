"""detlib.seeds: the seed code's algorithms behave as documented, quirks included."""

import numpy as np
import pytest
import torch

from detlib import AnchorGenerator, box_convert, box_iou, seeds
from tests.conftest import random_boxes


def test_iou_double_loop_equals_box_iou(gen):
    a = random_boxes(40, gen, min_size=1).numpy()
    b = random_boxes(7, gen, min_size=1).numpy()
    expected = box_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()).float().numpy()
    assert np.allclose(seeds.iou_double_loop(a, b), expected, atol=1e-6)


def test_efficientdet_calc_iou_is_right_only_with_mixed_orders(gen):
    anchors_xyxy = AnchorGenerator.efficientdet()((256, 256))
    anchors_yxyx = box_convert(anchors_xyxy, "xyxy", "yxyx")
    gt = random_boxes(5, gen, image=200, min_size=20)
    assert torch.allclose(
        seeds.efficientdet_calc_iou(anchors_yxyx, gt), box_iou(anchors_xyxy, gt), atol=1e-6
    )
    # Given xyxy on both sides (the natural mistake), it computes something else.
    assert not torch.allclose(
        seeds.efficientdet_calc_iou(anchors_xyxy, gt), box_iou(anchors_xyxy, gt), atol=1e-3
    )


def test_nms_plus_one_suppresses_more_small_boxes():
    # Two 4 x 4 boxes shifted by 2: IoU 8 / 24 = 1/3 without "+1", 15 / 35 = 0.43 with it.
    boxes_xyxy = np.array([[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 6.0, 4.0]])
    scores = np.array([0.9, 0.8])
    boxes_yxyx = boxes_xyxy[:, [1, 0, 3, 2]]
    assert seeds.nms_plus_one(boxes_yxyx, scores, 0.4) == [0]  # suppressed: 0.43 > 0.4
    assert box_iou(
        torch.tensor(boxes_xyxy[:1]), torch.tensor(boxes_xyxy[1:])
    ).item() == pytest.approx(1 / 3)
    assert seeds.nms_plus_one(boxes_yxyx, scores, 0.45) == [0, 1]


def test_roi_pool_loop_only_works_for_image_zero():
    features = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([[0.0, 0.0, 0.0, 160.0, 160.0], [0.0, 32.0, 32.0, 300.0, 200.0]])
    out = seeds.roi_pool_loop(features, rois, output_size=2, spatial_scale=1 / 16)
    assert out.shape == (2, 3, 2, 2)
    expected = torch.nn.functional.adaptive_max_pool2d(features[:1, :, 0:11, 0:11], 2)[0]
    assert torch.equal(out[0], expected)
    with pytest.raises((IndexError, RuntimeError)):
        seeds.roi_pool_loop(
            features, torch.tensor([[0.0, 0, 0, 64, 64], [1.0, 0, 0, 64, 64]]), 2, 1 / 16
        )


def test_faster_rcnn_anchors_are_column_major_yxyx():
    anchors, inside, index = seeds.faster_rcnn_anchors(800, 16)
    assert anchors.shape == (22_500, 4) and len(inside) == len(index) == 8_940
    centre_y = (anchors[:, 0] + anchors[:, 2]) / 2
    centre_x = (anchors[:, 1] + anchors[:, 3]) / 2
    # The second cell (anchors 9..17) is one row down, not one column right.
    assert (centre_x[9], centre_y[9]) == pytest.approx((8.0, 24.0))
