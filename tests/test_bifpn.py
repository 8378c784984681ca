"""BiFPN: shapes, fusion weights, padding, parameter counts by formula, the reference wiring."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.efficientnet import _efficientnet_conf

from detlib.bifpn import (
    EFFICIENTDET_CONFIGS,
    BiFPN,
    BiFPNLayer,
    SeparableConv2d,
    WeightedFusion,
    efficientdet_config,
    max_pool_same,
)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def pyramid(gen, channels, size, batch=2, levels=5, dtype=torch.float32):
    """Maps whose sizes halve (rounding up) from level to level."""
    height, width = size
    maps = []
    for _ in range(levels):
        maps.append(torch.randn(batch, channels, height, width, generator=gen, dtype=dtype))
        height, width = -(-height // 2), -(-width // 2)
    return maps


# ----------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("c_in, c_out, k", [(8, 8, 3), (4, 12, 5), (16, 3, 1)])
def test_separable_conv_parameter_count_by_formula(c_in, c_out, k):
    conv = SeparableConv2d(c_in, c_out, kernel_size=k)
    assert n_params(conv) == k * k * c_in + c_in * c_out + c_out
    regular = torch.nn.Conv2d(c_in, c_out, k)
    assert n_params(regular) == k * k * c_in * c_out + c_out


def test_separable_conv_is_per_channel_filter_then_channel_mix(gen):
    conv = SeparableConv2d(3, 5)
    x = torch.randn(2, 3, 7, 6, generator=gen)
    depthwise = torch.cat(
        [F.conv2d(x[:, c : c + 1], conv.depthwise.weight[c : c + 1], padding=1) for c in range(3)],
        dim=1,
    )
    mixed = torch.einsum("oc,bchw->bohw", conv.pointwise.weight[:, :, 0, 0], depthwise)
    expected = mixed + conv.pointwise.bias[None, :, None, None]
    assert torch.allclose(conv(x), expected, atol=1e-6)


def test_max_pool_same_by_hand():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # Even size: TensorFlow pads one row and column at the bottom and right only.
    assert max_pool_same(x)[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    # The padding never wins, even when every real value is negative (zero padding would).
    assert max_pool_same(-1 - x)[0, 0].tolist() == [[-1.0, -3.0], [-9.0, -11.0]]


def naive_same_pool(x):
    height, width = x.shape[-2:]
    top = max((math.ceil(height / 2) - 1) * 2 + 3 - height, 0) // 2
    left = max((math.ceil(width / 2) - 1) * 2 + 3 - width, 0) // 2
    out = torch.empty(*x.shape[:2], math.ceil(height / 2), math.ceil(width / 2))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            rows = slice(max(2 * i - top, 0), min(2 * i - top + 3, height))
            cols = slice(max(2 * j - left, 0), min(2 * j - left + 3, width))
            out[..., i, j] = x[..., rows, cols].amax(dim=(-2, -1))
    return out


@given(st.integers(1, 9), st.integers(1, 9))
def test_max_pool_same_matches_a_loop(height, width):
    x = torch.randn(
        1, 2, height, width, generator=torch.Generator().manual_seed(height * 10 + width)
    )
    assert torch.equal(max_pool_same(x), naive_same_pool(x))


# ----------------------------------------------------------------------------- fusion
def test_fast_fusion_by_hand():
    fusion = WeightedFusion(3, "fast", eps=1e-4)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([2.0, -1.0, 1.0]))
    inputs = [torch.full((1, 1, 2, 2), v) for v in (1.0, 10.0, 100.0)]
    expected = (2 * 1.0 + 0 * 10.0 + 1 * 100.0) / (3 + 1e-4)
    assert torch.allclose(fusion(inputs), torch.full((1, 1, 2, 2), expected))


def test_softmax_and_unbounded_and_sum_by_hand():
    inputs = [torch.full((1, 1, 1, 1), v) for v in (1.0, 3.0)]
    raw = torch.tensor([0.0, math.log(3.0)])
    for kind, expected in [("softmax", 0.25 * 1 + 0.75 * 3), ("unbounded", 0 + math.log(3) * 3)]:
        fusion = WeightedFusion(2, kind)
        with torch.no_grad():
            fusion.weight.copy_(raw)
        assert fusion(inputs).item() == pytest.approx(expected, rel=1e-6)
    plain = WeightedFusion(2, "sum")
    assert plain.weight is None and n_params(plain) == 0 and plain(inputs).item() == 4.0


@given(st.lists(st.floats(-5, 5), min_size=2, max_size=3))
def test_fast_weights_are_non_negative_and_sum_below_one(raw):
    fusion = WeightedFusion(len(raw), "fast", eps=1e-4)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor(raw))
    w = fusion.normalized_weights()
    positive = sum(max(r, 0.0) for r in torch.tensor(raw).tolist())
    assert bool((w >= 0).all())
    assert w.sum().item() == pytest.approx(positive / (positive + 1e-4), abs=1e-6)


@given(st.lists(st.floats(-5, 5), min_size=2, max_size=3))
def test_softmax_weights_are_a_distribution(raw):
    fusion = WeightedFusion(len(raw), "softmax")
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor(raw))
    w = fusion.normalized_weights()
    assert bool((w > 0).all()) and w.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_a_negative_fast_weight_gets_no_gradient():
    fusion = WeightedFusion(2, "fast")
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([-0.5, 1.0]))
    out = fusion([torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 3.0)])
    out.sum().backward()
    assert fusion.weight.grad[0].item() == 0.0 and fusion.weight.grad[1].item() != 0.0


def test_gradients_reach_every_fusion_weight(gen):
    bifpn = BiFPN(4, num_layers=2)
    out = bifpn(pyramid(gen, 4, (16, 12)))
    sum(o.square().mean() for o in out).backward()
    for layer in bifpn.layers:
        for name, fusion in layer.fusions.items():
            assert fusion.weight.grad is not None and bool((fusion.weight.grad != 0).any()), name


def test_fusion_weights_report(gen):
    bifpn = BiFPN(4, num_layers=2, fusion="softmax")
    report = bifpn.fusion_weights()
    assert len(report) == 2 and sorted(len(w) for w in report[0].values()) == [2] * 5 + [3] * 3
    for weights in report[0].values():
        assert torch.allclose(weights, torch.full_like(weights, 1 / len(weights)))


# ----------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("size", [(32, 32), (40, 24), (33, 17), (9, 130)])
def test_five_maps_in_five_out(gen, size):
    maps = pyramid(gen, 6, size)
    out = BiFPN(6, num_layers=2)(maps)
    assert [o.shape for o in out] == [m.shape for m in maps]


@pytest.mark.parametrize("size", [(64, 64), (72, 40), (35, 51)])
def test_first_layer_builds_p3_to_p7_from_c3_to_c5(gen, size):
    c3, c4, c5 = pyramid(gen, 1, size, levels=3)
    c3, c4, c5 = c3.expand(-1, 5, -1, -1), c4.expand(-1, 7, -1, -1), c5.expand(-1, 9, -1, -1)
    out = BiFPN(8, num_layers=1, in_channels=(5, 7, 9))([c3, c4, c5])
    height, width = size
    for level, o in enumerate(out):
        assert o.shape == (2, 8, height, width), level
        height, width = -(-height // 2), -(-width // 2)


def test_parameter_count_by_formula():
    c, (c3, c4, c5), layers = 16, (10, 20, 30), 3
    separable = 9 * c + c * c + c
    per_layer = 8 * (separable + 2 * c) + (2 + 2 + 2 + 2 + 3 + 3 + 3 + 2)
    projection = lambda c_in: c_in * c + c + 2 * c  # noqa: E731  (1 x 1 conv with bias, BN)
    inputs = projection(c3) + 2 * projection(c4) + 2 * projection(c5) + projection(c5)
    assert n_params(BiFPN(c, layers)) == layers * per_layer
    assert n_params(BiFPN(c, layers, in_channels=(c3, c4, c5))) == layers * per_layer + inputs
    assert n_params(BiFPN(c, layers, fusion="sum")) == layers * (per_layer - 19)


def reference_first_layer(bifpn, c3, c4, c5):
    """The wiring of the reference code, written out node by node (not from BIFPN_NODES)."""
    inp, layer = bifpn.inputs, bifpn.layers[0]

    def node(name, *maps):
        w = F.relu(layer.fusions[name].weight)
        w = w / (w.sum() + 1e-4)
        fused = sum(wi * m for wi, m in zip(w, maps))
        return layer.convs[name](fused * torch.sigmoid(fused))

    def up(x, like):
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[
            ..., : like.shape[2], : like.shape[3]
        ]

    p3, p4a, p5a, p4b, p5b = inp.p3(c3), inp.p4(c4), inp.p5(c5), inp.p4_skip(c4), inp.p5_skip(c5)
    p6 = naive_same_pool(inp.p6(c5))
    p7 = naive_same_pool(p6)
    p6_td = node("td6", p6, up(p7, p6))
    p5_td = node("td5", p5a, up(p6_td, p5a))
    p4_td = node("td4", p4a, up(p5_td, p4a))
    p3_out = node("out3", p3, up(p4_td, p3))
    p4_out = node("out4", p4b, p4_td, naive_same_pool(p3_out))
    p5_out = node("out5", p5b, p5_td, naive_same_pool(p4_out))
    p6_out = node("out6", p6, p6_td, naive_same_pool(p5_out))
    p7_out = node("out7", p7, naive_same_pool(p6_out))
    return [p3_out, p4_out, p5_out, p6_out, p7_out]


@pytest.mark.parametrize("size", [(16, 16), (20, 12)])
def test_matches_the_reference_wiring(gen, size):
    bifpn = BiFPN(4, num_layers=1, in_channels=(3, 5, 6)).eval()
    with torch.no_grad():  # make the fusion weights unequal, one of them negative
        for fusion in bifpn.layers[0].fusions.values():
            fusion.weight.uniform_(-0.3, 2.0, generator=gen)
        features = [
            torch.randn(1, c, size[0] // s, size[1] // s, generator=gen)
            for c, s in [(3, 1), (5, 2), (6, 4)]
        ]
        ours = bifpn(features)
        theirs = reference_first_layer(bifpn, *features)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5)


def test_later_layers_use_one_input_per_level(gen):
    layer = BiFPNLayer(4).eval()
    maps = pyramid(gen, 4, (16, 16), batch=1)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(layer(maps), layer(maps, skips=maps)))
        other = [m + 1 for m in maps]
        changed = layer(maps, skips=other)
        same = layer(maps)
    # The skips feed only the bottom-up nodes of P4, P5 and P6: P3_out is unchanged.
    assert torch.equal(changed[0], same[0]) and not torch.equal(changed[1], same[1])


def test_empty_batch_and_float64(gen):
    bifpn = BiFPN(4, num_layers=1, in_channels=(3, 5, 6)).double()
    out = bifpn(
        [
            torch.zeros(0, 3, 16, 16, dtype=torch.float64),
            torch.zeros(0, 5, 8, 8, dtype=torch.float64),
            torch.zeros(0, 6, 4, 4, dtype=torch.float64),
        ]
    )
    assert [tuple(o.shape) for o in out] == [(0, 4, 16 // 2**i, 16 // 2**i) for i in range(4)] + [
        (0, 4, 1, 1)
    ]
    assert all(o.dtype == torch.float64 for o in out)


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_argument(gen):
    bifpn = BiFPN(4, num_layers=1)
    maps = pyramid(gen, 4, (16, 16))
    with pytest.raises(
        ValueError, match=r"BiFPN: features must be a list of 5 maps \(P3..P7\), got 4"
    ):
        bifpn(maps[:4])
    with pytest.raises(
        ValueError, match=r"features\[2\] must have shape \[B, 4, H, W\], got \[2, 3, 4, 4\]"
    ):
        bifpn(maps[:2] + [maps[2][:, :3]] + maps[3:])
    with pytest.raises(
        ValueError, match=r"features\[1\] has batch and size \[2, 9, 8\], expected \[2, 8, 8\]"
    ):
        bifpn([maps[0], torch.zeros(2, 4, 9, 8)] + maps[2:])
    with pytest.raises(TypeError, match=r"features\[0\] must have a floating-point dtype"):
        bifpn([maps[0].long()] + maps[1:])
    with pytest.raises(ValueError, match=r"features must be a list of 3 maps \(C3..C5\)"):
        BiFPN(4, 1, in_channels=(3, 5, 6))(maps)
    with pytest.raises(ValueError, match=r"BiFPN: fusion must be one of .*got 'mean'"):
        BiFPN(4, 1, fusion="mean")
    with pytest.raises(ValueError, match=r"BiFPN: num_layers must be a positive int, got 0"):
        BiFPN(4, 0)
    with pytest.raises(ValueError, match=r"in_channels must give the channels of C3, C4 and C5"):
        BiFPN(4, 1, in_channels=(3, 5))
    with pytest.raises(
        ValueError, match=r"SeparableConv2d: kernel_size must be an odd positive int"
    ):
        SeparableConv2d(4, kernel_size=2)
    with pytest.raises(ValueError, match=r"WeightedFusion: expected 2 inputs, got 3"):
        WeightedFusion(2)(maps[:3])


# ----------------------------------------------------------------------------- scaling table
def test_scaling_table_follows_the_paper_formulas_where_it_should():
    for phi in range(8):
        config = efficientdet_config(phi)
        assert config.head_layers == 3 + phi // 3  # D_box = D_class = 3 + floor(phi / 3)
        if phi <= 4:
            assert config.image_size == 512 + 128 * phi and config.bifpn_layers == 3 + phi
    d0 = efficientdet_config("efficientdet-d0")
    assert (d0.image_size, d0.bifpn_channels, d0.bifpn_layers, d0.head_layers) == (512, 64, 3, 3)
    assert efficientdet_config("d7").anchor_scale == 5.0 and efficientdet_config(7).fusion == "sum"
    assert [c.fusion for c in EFFICIENTDET_CONFIGS.values()] == ["fast"] * 6 + ["sum"] * 2


@pytest.mark.parametrize("name", list(EFFICIENTDET_CONFIGS))
def test_backbone_channels_match_torchvision(name):
    config = EFFICIENTDET_CONFIGS[name]
    b = int(config.backbone[-1])
    width, depth = [
        (1.0, 1.0),
        (1.0, 1.1),
        (1.1, 1.2),
        (1.2, 1.4),
        (1.4, 1.8),
        (1.6, 2.2),
        (1.8, 2.6),
    ][b]
    stages, _ = _efficientnet_conf(config.backbone, width_mult=width, depth_mult=depth)
    assert config.backbone_channels == tuple(stages[i].out_channels for i in (2, 4, 6))


def test_config_errors():
    with pytest.raises(ValueError, match=r"efficientdet_config: name must be one of \['D0'"):
        efficientdet_config("D8")
    with pytest.raises(ValueError, match="got True"):
        efficientdet_config(True)
