"""Box arithmetic: hand-computed values, properties, and parity with torchvision.ops."""

import math

import pytest
import torch
import torchvision.ops as tvops
from hypothesis import given
from hypothesis import strategies as st

import detlib
from detlib import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    generalized_box_iou,
    remove_small_boxes,
)
from tests.conftest import random_boxes


# ----------------------------------------------------------------------------- hand-computed
def test_area_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 2.0, 4.0, 8.0], [3.0, 3.0, 3.0, 9.0]])
    assert box_area(boxes).tolist() == [100.0, 18.0, 0.0]


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),  # corner overlap
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),  # containment
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),  # identical
        ([0, 0, 4, 2], [1, -1, 3, 3], 4 / 12),  # a cross: 2x2 inside, union 8 + 8 - 4
    ],
)
def test_iou_by_hand(a, b, expected):
    iou = box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    assert iou.shape == (1, 1)
    assert iou.item() == pytest.approx(expected, abs=1e-12)


def test_giou_by_hand():
    # Disjoint unit squares 1 apart: IoU 0, enclosing box 3 x 1, union 2 -> 0 - (3 - 2) / 3.
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert generalized_box_iou(a, b).item() == pytest.approx(-1 / 3)
    assert generalized_box_iou(a, a).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "fmt, box, xyxy",
    [
        ("xywh", [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 4.0, 6.0]),
        ("cxcywh", [2.0, 3.0, 2.0, 4.0], [1.0, 1.0, 3.0, 5.0]),
        ("yxyx", [2.0, 1.0, 6.0, 4.0], [1.0, 2.0, 4.0, 6.0]),
    ],
)
def test_convert_by_hand(fmt, box, xyxy):
    assert box_convert(torch.tensor([box]), fmt, "xyxy").tolist() == [xyxy]
    assert box_convert(torch.tensor([xyxy]), "xyxy", fmt).tolist() == [box]


def test_clip_and_remove_small_by_hand():
    boxes = torch.tensor([[-5.0, 2.0, 50.0, 30.0], [10.0, 10.0, 11.0, 30.0]])
    assert clip_boxes_to_image(boxes, (20, 40)).tolist() == [
        [0.0, 2.0, 40.0, 20.0],
        [10.0, 10.0, 11.0, 20.0],
    ]
    assert remove_small_boxes(boxes, 2.0).tolist() == [0]


# ----------------------------------------------------------------------------- properties
coordinate = st.floats(min_value=-1000, max_value=1000, allow_nan=False, width=32)
extent = st.floats(min_value=0.5, max_value=500, allow_nan=False, width=32)


@st.composite
def box_sets(draw, max_boxes=12):
    n = draw(st.integers(min_value=1, max_value=max_boxes))
    rows = [draw(st.tuples(coordinate, coordinate, extent, extent)) for _ in range(n)]
    t = torch.tensor(rows, dtype=torch.float64)
    return torch.cat((t[:, :2], t[:, :2] + t[:, 2:]), dim=1)


@given(box_sets(), box_sets())
def test_iou_is_symmetric_and_bounded(a, b):
    iou = box_iou(a, b)
    assert torch.equal(iou, box_iou(b, a).T)
    assert bool(((iou >= 0) & (iou <= 1)).all())


@given(box_sets())
def test_iou_of_a_box_with_itself_is_one(a):
    assert torch.allclose(box_iou(a, a).diagonal(), torch.ones(len(a), dtype=a.dtype))


@given(box_sets(), box_sets())
def test_giou_is_at_most_iou_and_bounded(a, b):
    giou, iou = generalized_box_iou(a, b), box_iou(a, b)
    assert bool((giou <= iou + 1e-12).all())
    assert bool(((giou >= -1) & (giou <= 1)).all())


@given(box_sets(), st.sampled_from(detlib.boxes.BOX_FORMATS))
def test_convert_round_trip(a, fmt):
    assert torch.allclose(box_convert(box_convert(a, "xyxy", fmt), fmt, "xyxy"), a, atol=1e-9)


# ----------------------------------------------------------------------------- parity with torchvision
def _equal_nan(a, b):
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0))
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int64])
def test_parity_with_torchvision(gen, dtype):
    a = random_boxes(300, gen, dtype=dtype)
    b = random_boxes(70, gen, dtype=dtype)
    assert _equal_nan(box_area(a), tvops.box_area(a))
    assert _equal_nan(box_iou(a, b), tvops.box_iou(a, b))
    if dtype.is_floating_point:
        assert _equal_nan(generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))


def test_parity_on_edge_cases():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 5.0],
            [1.0, 1.0, 1.0, 1.0],
            [0.0, 0.0, 1e-7, 1e-7],
            [0.0, 0.0, 4.0, 4.0],
        ]
    )
    assert _equal_nan(box_iou(boxes, boxes), tvops.box_iou(boxes, boxes))
    assert _equal_nan(generalized_box_iou(boxes, boxes), tvops.generalized_box_iou(boxes, boxes))
    assert torch.isnan(
        box_iou(boxes[:1], boxes[:1])
    ).all()  # zero-area pair: no union, as documented


def test_parity_on_non_contiguous_input(gen):
    storage = random_boxes(200, gen).T.contiguous()  # [4, N]
    a = storage.T  # [N, 4] with strides (1, N)
    b = random_boxes(400, gen)[::2]
    assert not a.is_contiguous() and not b.is_contiguous()
    assert torch.equal(box_iou(a, b), tvops.box_iou(a, b))
    assert torch.equal(generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_convert_parity(gen, in_fmt, out_fmt):
    boxes = tvops.box_convert(random_boxes(100, gen), "xyxy", in_fmt)
    assert torch.equal(
        box_convert(boxes, in_fmt, out_fmt), tvops.box_convert(boxes, in_fmt, out_fmt)
    )


def test_clip_and_remove_small_parity(gen):
    boxes = random_boxes(200, gen, image=600) - 50
    assert torch.equal(
        clip_boxes_to_image(boxes, (300, 400)), tvops.clip_boxes_to_image(boxes, (300, 400))
    )
    assert torch.equal(remove_small_boxes(boxes, 40.0), tvops.remove_small_boxes(boxes, 40.0))


def test_gradients():
    gen = torch.Generator().manual_seed(1)
    a = random_boxes(6, gen, min_size=5, dtype=torch.float64).requires_grad_()
    b = random_boxes(5, gen, min_size=5, image=60, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(box_iou, (a, b))
    assert torch.autograd.gradcheck(generalized_box_iou, (a, b))
    ours = torch.autograd.grad(generalized_box_iou(a, b).sum(), (a, b))
    theirs = torch.autograd.grad(tvops.generalized_box_iou(a, b).sum(), (a, b))
    assert all(torch.allclose(x, y) for x, y in zip(ours, theirs))


# ----------------------------------------------------------------------------- empty input, errors
def test_empty_inputs():
    empty, some = torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert box_area(empty).shape == (0,)
    assert box_iou(empty, some).shape == (0, 1)
    assert box_iou(some, empty).shape == (1, 0)
    assert generalized_box_iou(empty, empty).shape == (0, 0)
    assert box_convert(empty, "xyxy", "cxcywh").shape == (0, 4)
    assert remove_small_boxes(empty, 1.0).shape == (0,)
    assert clip_boxes_to_image(empty, (10, 10)).shape == (0, 4)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ([[0.0, 0.0, 1.0, 1.0]], TypeError, "boxes1 must be a torch.Tensor"),
        (torch.zeros(3, 5), ValueError, r"boxes1 must have shape \[N, 4\], got \[3, 5\]"),
        (torch.zeros(4), ValueError, r"boxes1 must have shape \[N, 4\]"),
        (
            torch.tensor([[0.0, 0.0, 1.0, math.nan]]),
            ValueError,
            "boxes1 has 1 box.* NaN or infinite",
        ),
        (torch.tensor([[0.0, 0.0, math.inf, 1.0]]), ValueError, "NaN or infinite"),
        (
            torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 0.0, 1.0, 4.0]]),
            ValueError,
            r"negative size \(first at row 1",
        ),
    ],
)
def test_bad_boxes_raise_naming_the_argument(bad, error, message):
    with pytest.raises(error, match=message):
        box_iou(bad, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_other_errors():
    ok = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="boxes2 has 1 box"):
        generalized_box_iou(ok, torch.tensor([[0.0, 2.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="in_fmt must be one of"):
        box_convert(ok, "xyhw", "xyxy")
    with pytest.raises(ValueError, match="boxes has 1 box.* negative"):
        box_convert(torch.tensor([[0.0, 0.0, -1.0, 1.0]]), "xywh", "xyxy")
    with pytest.raises(TypeError, match="size must be"):
        clip_boxes_to_image(ok, 10)
    with detlib.value_checks(False):  # devices are checked even without value checks
        with pytest.raises(ValueError, match="boxes1 is on cpu but boxes2 is on meta"):
            box_iou(ok, torch.zeros(1, 4, device="meta"))


def test_value_checks_can_be_switched_off():
    bad = torch.tensor([[5.0, 0.0, 1.0, 1.0]])
    with detlib.value_checks(False):
        assert not detlib.value_checks_enabled()
        box_iou(bad, bad)  # no error: the caller vouches for the data
    assert detlib.value_checks_enabled()
    with pytest.raises(ValueError):
        box_iou(bad, bad)


# ----------------------------------------------------------------------------- DIoU and CIoU
def test_diou_and_ciou_by_hand():
    # Unit squares with centres 2 apart: IoU 0, enclosing box 3 x 1 (diagonal**2 = 10), d**2 = 4.
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]], dtype=torch.float64)
    assert detlib.distance_box_iou(a, b).item() == pytest.approx(-4 / 10, abs=1e-6)
    assert detlib.complete_box_iou(a, b).item() == pytest.approx(
        -4 / 10, abs=1e-6
    )  # same shape: v = 0
    tall = torch.tensor([[0.0, 0.0, 1.0, 2.0]], dtype=torch.float64)
    assert detlib.complete_box_iou(tall, tall).item() == pytest.approx(1.0, abs=1e-6)


@given(box_sets(), box_sets())
def test_diou_and_ciou_are_at_most_iou(a, b):
    iou, diou, ciou = box_iou(a, b), detlib.distance_box_iou(a, b), detlib.complete_box_iou(a, b)
    assert bool((diou <= iou + 1e-9).all()) and bool((ciou <= diou + 1e-9).all())
    assert bool((diou >= -1).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_diou_ciou_parity_with_torchvision(gen, dtype):
    a = random_boxes(200, gen, min_size=1, dtype=dtype)
    b = random_boxes(50, gen, min_size=1, dtype=dtype)
    assert torch.equal(detlib.distance_box_iou(a, b), tvops.distance_box_iou(a, b))
    assert torch.equal(detlib.complete_box_iou(a, b), tvops.complete_box_iou(a, b))


def test_diou_ciou_gradients():
    gen = torch.Generator().manual_seed(2)
    a = random_boxes(5, gen, min_size=5, dtype=torch.float64).requires_grad_()
    b = random_boxes(4, gen, min_size=5, image=60, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(detlib.distance_box_iou, (a, b))
    for ours_fn, theirs_fn in [
        (detlib.distance_box_iou, tvops.distance_box_iou),
        (detlib.complete_box_iou, tvops.complete_box_iou),
    ]:
        ours = torch.autograd.grad(ours_fn(a, b).sum(), (a, b))
        theirs = torch.autograd.grad(theirs_fn(a, b).sum(), (a, b))
        assert all(torch.allclose(x, y) for x, y in zip(ours, theirs))


def test_diou_ciou_empty_and_errors():
    empty, some = torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert detlib.distance_box_iou(empty, some).shape == (0, 1)
    assert detlib.complete_box_iou(some, empty).shape == (1, 0)
    with pytest.raises(ValueError, match="complete_box_iou: boxes2 has 1 box"):
        detlib.complete_box_iou(some, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    with pytest.raises(TypeError, match="distance_box_iou: boxes1 must be a torch.Tensor"):
        detlib.distance_box_iou([[0, 0, 1, 1]], some)
