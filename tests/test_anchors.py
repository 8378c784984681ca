"""Anchor generation: counts, layout, the seeds' anchors bit for bit, torchvision's exactly."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detlib import (
    AnchorGenerator,
    anchors_inside_image,
    best_anchor_iou,
    kmeans_anchor_shapes,
    seeds,
    shape_iou,
)


# ----------------------------------------------------------------------------- counts and layout
def test_retinanet_count_on_512():
    # 64^2 + 32^2 + 16^2 + 8^2 + 4^2 = 5,456 cells, 9 anchors each.
    generator = AnchorGenerator.retinanet()
    assert generator.num_anchors((512, 512)) == 49_104
    assert generator((512, 512)).shape == (49_104, 4)


def test_faster_rcnn_counts_on_800():
    anchors = AnchorGenerator.faster_rcnn()((800, 800))
    assert anchors.shape == (50 * 50 * 9, 4)
    assert (
        int(anchors_inside_image(anchors, (800, 800)).sum()) == 8_940
    )  # the figure seed 002 prints


def test_first_cell_by_hand():
    # Level P3 (stride 8, size 32), first cell centred at (4, 4); first anchor: ratio 0.5, scale 1.
    anchors = AnchorGenerator.retinanet()((64, 64), dtype=torch.float64)
    w = math.sqrt(32 * 32 / 0.5)
    h = w * 0.5
    assert anchors[0].tolist() == pytest.approx([4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2])
    # Fourth anchor: ratio 1, scale 1: the 32 x 32 square.
    assert anchors[3].tolist() == pytest.approx([-12.0, -12.0, 20.0, 20.0])


def test_order_is_level_row_column_anchor():
    generator = AnchorGenerator.retinanet()
    image = (96, 160)
    levels = generator.per_level(image, dtype=torch.float64)
    assert torch.equal(torch.cat(levels), generator(image, dtype=torch.float64))
    for level, (anchors, (rows, cols)) in enumerate(zip(levels, generator.grid_sizes(image))):
        stride = generator.strides[level]
        centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).reshape(rows, cols, 9, 2)
        expected_x = (torch.arange(cols, dtype=torch.float64) + 0.5) * stride
        expected_y = (torch.arange(rows, dtype=torch.float64) + 0.5) * stride
        assert torch.allclose(centres[..., 0], expected_x[None, :, None].expand(rows, cols, 9))
        assert torch.allclose(centres[..., 1], expected_y[:, None, None].expand(rows, cols, 9))


def test_cell_anchor_shapes_follow_ratio_h_over_w():
    cells = AnchorGenerator(
        strides=[16], sizes=[[100.0]], aspect_ratios=(0.25, 1.0, 4.0)
    ).cell_anchors(0)
    widths, heights = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    assert torch.allclose(heights / widths, torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64))
    assert torch.allclose(widths * heights, torch.full((3,), 100.0 * 100.0, dtype=torch.float64))


def test_grid_sizes_round_up():
    generator = AnchorGenerator.retinanet()
    assert generator.grid_sizes((500, 333)) == [(63, 42), (32, 21), (16, 11), (8, 6), (4, 3)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtype_and_device(dtype):
    anchors = AnchorGenerator.retinanet()((128, 128), device="cpu", dtype=dtype)
    assert anchors.dtype == dtype and anchors.device.type == "cpu"
    assert torch.equal(
        anchors, AnchorGenerator.retinanet()((128, 128), dtype=torch.float64).to(dtype)
    )


# ----------------------------------------------------------------------------- the seeds, bit for bit
@pytest.mark.parametrize("image", [(512, 512), (640, 480), (333, 517), (64, 64)])
def test_retinanet_equals_seed_bit_for_bit(image):
    expected = torch.from_numpy(seeds.retinanet_anchors(image))
    assert expected.dtype == torch.float32
    assert torch.equal(AnchorGenerator.retinanet()(image), expected)


@pytest.mark.parametrize("image", [(512, 512), (768, 640)])
@pytest.mark.parametrize("anchor_scale", [4.0, 3.0])
def test_efficientdet_equals_seed_after_converting_yxyx(image, anchor_scale):
    expected_yxyx = torch.from_numpy(seeds.efficientdet_anchors(image, anchor_scale))
    expected = expected_yxyx[:, [1, 0, 3, 2]]
    ours = AnchorGenerator.efficientdet(anchor_scale)(image, dtype=torch.float64)
    assert torch.equal(ours, expected)
    assert torch.equal(AnchorGenerator.efficientdet(anchor_scale)(image), expected.float())


def test_faster_rcnn_equals_seed_after_fixing_its_cell_order():
    seed_anchors, _, _ = seeds.faster_rcnn_anchors(800, 16)
    seed_anchors = torch.from_numpy(seed_anchors)
    # The seed enumerates cells column by column: [x, y, A, 4]. Transposing gives row-major cells.
    row_major = seed_anchors.reshape(50, 50, 9, 4).transpose(0, 1).reshape(-1, 4)
    ours = AnchorGenerator.faster_rcnn()((800, 800), dtype=torch.float64)
    assert torch.allclose(ours, row_major[:, [1, 0, 3, 2]], rtol=0, atol=1e-9)
    # Without the fix, anchor k sits in the wrong cell for every cell off the diagonal.
    as_is = seed_anchors[:, [1, 0, 3, 2]]
    moved = ((ours - as_is).abs().amax(dim=1) > 1).reshape(50, 50, 9)[..., 0]
    assert int(moved.sum()) == 50 * 50 - 50


# ----------------------------------------------------------------------------- torchvision, exactly
def _torchvision_anchors(sizes, aspect_ratios, strides, image, dtype=torch.float32):
    generator = TorchvisionAnchorGenerator(sizes, aspect_ratios)
    height, width = image
    images = ImageList(torch.zeros(1, 3, height, width, dtype=dtype), [(height, width)])
    feature_maps = [torch.zeros(1, 1, height // s, width // s, dtype=dtype) for s in strides]
    return generator(images, feature_maps)[0]


RETINANET_TV_SIZES = tuple(
    (x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512]
)


@pytest.mark.parametrize(
    "sizes, aspect_ratios, strides",
    [
        (
            RETINANET_TV_SIZES,
            ((0.5, 1.0, 2.0),) * 5,
            (8, 16, 32, 64, 128),
        ),  # torchvision's RetinaNet
        (
            ((32,), (64,), (128,), (256,), (512,)),
            ((0.5, 1.0, 2.0),) * 5,
            (4, 8, 16, 32, 64),
        ),  # its FPN R-CNN
        (((128, 256, 512),), ((0.5, 1.0, 2.0),), (16,)),
        (((33, 45), (71,)), ((0.3, 1.0, 3.3), (0.7,)), (8, 32)),  # odd sizes: .5 ties round to even
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torchvision_compatible_equals_torchvision(sizes, aspect_ratios, strides, dtype):
    image = (512, 640)
    expected = _torchvision_anchors(sizes, aspect_ratios, strides, image, dtype)
    ours = AnchorGenerator.torchvision_compatible(sizes, aspect_ratios, strides)(image, dtype=dtype)
    assert ours.dtype == expected.dtype
    assert torch.equal(ours, expected)


@given(
    st.lists(st.integers(min_value=4, max_value=700), min_size=1, max_size=3),
    st.lists(st.floats(min_value=0.1, max_value=10.0), min_size=1, max_size=3),
)
def test_torchvision_compatible_for_random_sizes_and_ratios(sizes, ratios):
    expected = _torchvision_anchors((tuple(sizes),), (tuple(ratios),), (32,), (128, 96))
    ours = AnchorGenerator.torchvision_compatible((sizes,), (ratios,), (32,))((128, 96))
    assert torch.equal(ours, expected)


# ----------------------------------------------------------------------------- coverage, k-means
def test_best_anchor_iou():
    anchors = AnchorGenerator.faster_rcnn()((800, 800))
    boxes = torch.stack([anchors[1234], anchors[5678], torch.tensor([0.0, 0.0, 10.0, 10.0])])
    best = best_anchor_iou(boxes, anchors)
    assert best[:2].tolist() == [1.0, 1.0]
    assert 0 < best[2].item() < 0.01  # a 10 x 10 box against 128-pixel anchors
    assert torch.equal(best_anchor_iou(boxes, anchors, chunk_size=1), best)
    assert best_anchor_iou(torch.zeros(0, 4), anchors).shape == (0,)
    assert best_anchor_iou(boxes, torch.zeros(0, 4)).tolist() == [0.0, 0.0, 0.0]


def test_shape_iou_by_hand():
    assert shape_iou(
        torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 4.0]])
    ).item() == pytest.approx(2 / 6)


def test_kmeans_finds_well_separated_shapes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 10.0], [40.0, 20.0], [60.0, 120.0]])
    sizes = (centres[:, None, :] * (1 + 0.05 * torch.randn(3, 200, 2, generator=gen))).reshape(
        -1, 2
    )
    found = kmeans_anchor_shapes(sizes, 3, generator=torch.Generator().manual_seed(1))
    assert found.shape == (3, 2)
    assert torch.allclose(found, centres, rtol=0.05)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strides=[], sizes=[32]), "strides must be a non-empty sequence"),
        (dict(strides=[8, -16], sizes=[32, 64]), "strides must be"),
        (dict(strides=[8, 16], sizes=[32]), "sizes must give one size per level"),
        (dict(strides=[8], sizes=[-32.0]), "sizes must be a finite number > 0"),
        (
            dict(strides=[8], sizes=[32], aspect_ratios=(0.5, 0.0)),
            "aspect_ratios must be a finite number > 0",
        ),
        (dict(strides=[8], sizes=[32], order="column_major"), "order must be one of"),
        (dict(strides=[8], sizes=[32], offset=2.0), "offset must be in"),
        (dict(strides=[8], sizes=[32], shapes=[(1.0,)]), "shapes must be a sequence of"),
        (
            dict(strides=[8, 16], sizes=[[32], [64]], aspect_ratios=[[1.0]]),
            "aspect_ratios has 1 levels",
        ),
    ],
)
def test_bad_configuration_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnchorGenerator(**kwargs)


def test_bad_call_arguments_raise():
    generator = AnchorGenerator.retinanet()
    with pytest.raises(TypeError, match=r"image_size must be \(height, width\)"):
        generator(512)
    with pytest.raises(ValueError, match="image_size must be positive"):
        generator((0, 512))
    with pytest.raises(TypeError, match="dtype must be a floating"):
        generator((64, 64), dtype=torch.int64)
    with pytest.raises(ValueError, match="level must be in"):
        generator.cell_anchors(5)
    with pytest.raises(ValueError, match="k must be an int"):
        kmeans_anchor_shapes(torch.ones(3, 2), 4)
    with pytest.raises(ValueError, match=r"box_sizes must have shape \[N, 2\]"):
        kmeans_anchor_shapes(torch.ones(3, 4), 2)


def test_numpy_ints_are_accepted_as_image_size():
    assert AnchorGenerator.retinanet().num_anchors(tuple(np.array([512, 512]))) == 49_104


# ----------------------------------------------------------------------------- issue 13
def _torchvision_anchors_ceil(sizes, aspect_ratios, strides, image, dtype=torch.float32):
    """torchvision's anchors for feature maps of ceil(image / stride) cells, as a stack of
    stride-2, padding-1 convolutions produces: torchvision then uses image // grid as the
    stride, per axis."""
    generator = TorchvisionAnchorGenerator(sizes, aspect_ratios)
    height, width = image
    images = ImageList(torch.zeros(1, 3, height, width, dtype=dtype), [(height, width)])
    feature_maps = [
        torch.zeros(1, 1, -(-height // s), -(-width // s), dtype=dtype) for s in strides
    ]
    return generator(images, feature_maps)[0]


@pytest.mark.parametrize("image", [(800, 1344), (513, 700), (600, 1000), (333, 127)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torchvision_compatible_when_the_image_is_not_a_multiple_of_a_stride(image, dtype):
    # At 800 x 1344, torchvision's P6 and P7 strides are (61, 64) and (114, 122), not 64, 128.
    strides = (8, 16, 32, 64, 128)
    sizes, ratios = RETINANET_TV_SIZES, ((0.5, 1.0, 2.0),) * 5
    expected = _torchvision_anchors_ceil(sizes, ratios, strides, image, dtype)
    ours = AnchorGenerator.torchvision_compatible(sizes, ratios, strides)(image, dtype=dtype)
    assert torch.equal(ours, expected)


def test_torchvision_compatible_rounds_half_sizes_as_torchvision():
    # 90 * sqrt(0.49) / 2 is 31.5 in float32 (rounds to 32) but just below it in float64.
    expected = _torchvision_anchors(((90,),), ((0.49,),), (32,), (128, 96))
    assert torch.equal(
        AnchorGenerator.torchvision_compatible(((90,),), ((0.49,),), (32,))((128, 96)), expected
    )


def test_anchors_are_cached_but_returned_as_copies():
    generator = AnchorGenerator.retinanet()
    first = generator((256, 320))
    first.zero_()
    again = generator((256, 320))
    assert torch.equal(again, AnchorGenerator.retinanet()((256, 320)))
    assert again.abs().sum() > 0
    assert generator((256, 320), dtype=torch.float64).dtype == torch.float64
    levels = generator.per_level((256, 320))
    levels[0].zero_()
    assert torch.equal(torch.cat(generator.per_level((256, 320))), again)


@pytest.mark.parametrize("strides", [[True, 2], [8, False]])
def test_bool_strides_are_refused(strides):
    with pytest.raises(ValueError, match="AnchorGenerator: strides must be"):
        AnchorGenerator(strides, sizes=[32, 64])


@pytest.mark.parametrize(
    "sizes1, sizes2, error, match",
    [
        ([[1.0, 2.0]], torch.ones(1, 2), TypeError, "sizes1 must be a torch.Tensor"),
        (torch.ones(3), torch.ones(1, 2), ValueError, r"sizes1 must have shape \[N, 2\]"),
        (torch.ones(2, 2), torch.ones(1, 3), ValueError, r"sizes2 must have shape \[M, 2\]"),
        (torch.ones(2, 2, dtype=torch.int64), torch.ones(1, 2), TypeError, "floating-point"),
        (torch.tensor([[1.0, math.nan]]), torch.ones(1, 2), ValueError, "sizes1 must be"),
        (torch.ones(1, 2), torch.tensor([[0.0, 1.0]]), ValueError, "sizes2 must be"),
        (torch.ones(1, 2), torch.tensor([[-1.0, 1.0]]), ValueError, "sizes2 must be"),
    ],
)
def test_shape_iou_bad_inputs(sizes1, sizes2, error, match):
    with pytest.raises(error, match=f"^shape_iou: .*{match}"):
        shape_iou(sizes1, sizes2)
