"""Class and box heads, and the assembled EfficientDet: layout, counts, prior, gradients, errors."""

import math

import pytest
import torch
import torchvision

from detlib import AnchorGenerator, sigmoid_focal_loss
from detlib.heads import (
    BoxHead,
    ClassHead,
    EfficientDet,
    EfficientNetFeatures,
    TinyBackbone,
    count_parameters,
    prior_bias,
)


def pyramid(gen, channels, size, batch=2, levels=5):
    height, width = size
    maps = []
    for _ in range(levels):
        maps.append(torch.randn(batch, channels, height, width, generator=gen))
        height, width = -(-height // 2), -(-width // 2)
    return maps


def tiny_detector(num_classes=3):
    return EfficientDet(
        TinyBackbone((4, 4, 6, 8, 10)),
        (6, 8, 10),
        num_classes,
        channels=8,
        bifpn_layers=1,
        head_layers=1,
    )


def test_prior_bias_by_hand():
    assert prior_bias(0.01) == pytest.approx(-math.log(99))
    assert prior_bias(0.5) == 0.0
    with pytest.raises(
        ValueError, match=r"prior_bias: prior_probability must be in \(0, 1\), got 1.0"
    ):
        prior_bias(1.0)


def test_initial_class_probability_is_the_prior(gen):
    head = ClassHead(16, num_anchors=9, num_classes=20, num_layers=2).eval()
    with torch.no_grad():
        logits = head(pyramid(gen, 16, (16, 16)))
    assert torch.equal(head.predict.pointwise.bias, torch.full((180,), -math.log(99)))
    assert abs(torch.sigmoid(logits).mean().item() - 0.01) < 0.003
    assert torch.equal(BoxHead(16, 9, 2).predict.pointwise.bias, torch.zeros(36))


def test_output_rows_follow_the_anchor_order(gen):
    """Row (level l, row i, column j, anchor a) holds channel a*K + k of the level's map at (i, j)."""
    head = ClassHead(4, num_anchors=3, num_classes=2, num_layers=1, num_levels=2).eval()
    maps = pyramid(gen, 4, (3, 5), batch=2, levels=2)
    with torch.no_grad():
        out = head(maps)
        offset = 0
        for level, x in enumerate(maps):
            raw = head.predict(torch.nn.functional.silu(head.norms[level][0](head.convs[0](x))))
            height, width = x.shape[-2:]
            for i in range(height):
                for j in range(width):
                    for a in range(3):
                        row = offset + (i * width + j) * 3 + a
                        assert torch.equal(out[:, row], raw[:, 2 * a : 2 * a + 2, i, j])
            offset += height * width * 3
    assert out.shape == (2, offset, 2)


def test_convolutions_are_shared_and_batch_norms_are_per_level():
    c, a, k, layers, levels = 8, 9, 5, 3, 5
    head = ClassHead(c, a, k, layers, num_levels=levels)
    assert len(head.convs) == layers and len(head.norms) == levels
    separable = lambda c_in, c_out: 9 * c_in + c_in * c_out + c_out  # noqa: E731
    expected = layers * separable(c, c) + levels * layers * 2 * c + separable(c, a * k)
    assert count_parameters(head) == expected
    assert count_parameters(BoxHead(c, a, layers)) == expected - separable(c, a * k) + separable(
        c, a * 4
    )


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (100, 75), (33, 250)])
def test_predictions_equal_anchors(size):
    model = tiny_detector().eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *size))
    n = AnchorGenerator.efficientdet().num_anchors(size)
    assert out.class_logits.shape == (1, n, 3) and out.box_deltas.shape == (1, n, 4)
    assert model.anchors(size).shape == (n, 4)


def test_empty_batch_gives_empty_predictions():
    model = tiny_detector().eval()
    with torch.no_grad():
        out = model(torch.zeros(0, 3, 64, 64))
    n = AnchorGenerator.efficientdet().num_anchors((64, 64))
    assert out.class_logits.shape == (0, n, 3) and out.box_deltas.shape == (0, n, 4)


def test_gradients_reach_backbone_bifpn_and_heads(gen):
    model = tiny_detector()
    out = model(torch.randn(2, 3, 64, 64, generator=gen))
    targets = torch.zeros_like(out.class_logits)
    targets[:, :5, 0] = 1
    loss = (
        sigmoid_focal_loss(out.class_logits, targets, reduction="sum")
        + out.box_deltas.square().sum()
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_efficientnet_features_are_c3_c4_c5():
    backbone = EfficientNetFeatures("efficientnet_b0")
    assert backbone.out_channels == (40, 112, 320)
    with torch.no_grad():
        c3, c4, c5 = backbone.eval()(torch.zeros(1, 3, 72, 40))
    assert (c3.shape, c4.shape, c5.shape) == ((1, 40, 9, 5), (1, 112, 5, 3), (1, 320, 3, 2))


def test_d0_parameter_count_from_its_parts():
    model = EfficientDet.from_config("D0", num_classes=90)
    reference_backbone = torchvision.models.efficientnet_b0().features[:8]
    c, a = 64, 9
    separable = 9 * c + c * c + c
    bifpn = 3 * (8 * (separable + 2 * c) + 19) + sum(
        cin * c + 3 * c for cin in (40, 112, 112, 320, 320, 320)
    )
    heads = (
        2 * (3 * separable + 5 * 3 * 2 * c)
        + (9 * c + c * a * 90 + a * 90)
        + (9 * c + c * a * 4 + a * 4)
    )
    expected = count_parameters(reference_backbone) + bifpn + heads
    assert count_parameters(model) == expected
    assert round(expected / 1e6, 1) == 3.9  # the paper's 3.9M


def test_errors_name_the_argument(gen):
    head = ClassHead(8, 9, 3, 1)
    maps = pyramid(gen, 8, (8, 8))
    with pytest.raises(ValueError, match=r"ClassHead: features must be a list of 5 maps, got 4"):
        head(maps[:4])
    with pytest.raises(
        ValueError, match=r"ClassHead: features\[1\] must have shape \[B, 8, H, W\]"
    ):
        head([maps[0], maps[1][:, :4]] + maps[2:])
    with pytest.raises(ValueError, match=r"ClassHead: num_classes must be a positive int, got 0"):
        ClassHead(8, 9, 0, 1)
    with pytest.raises(TypeError, match=r"EfficientDet: backbone must be an nn.Module"):
        EfficientDet(lambda x: x, (1, 2, 3), 3)
    with pytest.raises(ValueError, match=r"EfficientDet: images must have shape \[B, 3, H, W\]"):
        tiny_detector()(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match=r"EfficientDet: images must have a floating-point dtype"):
        tiny_detector()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"EfficientNetFeatures: variant must be one of"):
        EfficientNetFeatures("resnet50")
    with pytest.raises(ValueError, match=r"TinyBackbone: widths must be 5 ints"):
        TinyBackbone((4, 8))
    with pytest.raises(ValueError, match=r"EfficientDet: backbone_channels must give the channels"):
        EfficientDet(TinyBackbone(), (1, 2), 3)
    with pytest.raises(ValueError, match=r"EfficientDet: backbone_channels must be a positive int"):
        EfficientDet(TinyBackbone(), (8, 0, 8), 3)
