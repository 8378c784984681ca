"""YOLO v2/v3 decoding and one-prior-per-box matching (detlib.yolo)."""

import math

import pytest
import torch

from detlib import shape_iou, yolo_decode, yolo_encode, yolo_match

PRIORS = torch.tensor([[10.0, 14.0], [23.0, 27.0], [37.0, 58.0]])  # YOLOv3's finest three


def _decode_by_hand(offsets, priors, stride):
    """The paper's formulas, one prediction at a time."""
    height, width, num_priors, _ = offsets.shape
    out = torch.empty_like(offsets)
    for row in range(height):
        for col in range(width):
            for a in range(num_priors):
                tx, ty, tw, th = offsets[row, col, a].tolist()
                bx = (1 / (1 + math.exp(-tx)) + col) * stride
                by = (1 / (1 + math.exp(-ty)) + row) * stride
                bw, bh = priors[a, 0].item() * math.exp(tw), priors[a, 1].item() * math.exp(th)
                out[row, col, a] = torch.tensor(
                    [bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2]
                )
    return out


def test_decode_follows_the_formulas():
    offsets = torch.randn(
        3, 4, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    ours = yolo_decode(offsets, PRIORS.double(), stride=8)
    torch.testing.assert_close(ours, _decode_by_hand(offsets, PRIORS.double(), 8))


def test_decoded_centres_stay_inside_their_cell():
    offsets = torch.randn(2, 5, 5, 3, 4, generator=torch.Generator().manual_seed(1))
    offsets[..., :2] *= 30  # saturated sigmoids: centres on the cell edges at worst
    boxes = yolo_decode(offsets, PRIORS, stride=16)
    centre_x = (boxes[..., 0] + boxes[..., 2]) / 2 / 16
    cols = torch.arange(5.0)[None, None, :, None]
    assert bool(((centre_x >= cols - 1e-4) & (centre_x <= cols + 1 + 1e-4)).all())
    assert boxes.shape == (2, 5, 5, 3, 4)


def _boxes():
    generator = torch.Generator().manual_seed(2)
    centres = torch.rand(20, 2, generator=generator) * 100 + 2
    sizes = torch.rand(20, 2, generator=generator) * 60 + 4
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1).double()


def test_match_takes_the_centre_cell_and_the_best_prior_shape():
    boxes = _boxes()
    targets = yolo_match(boxes, PRIORS.double(), stride=8, grid_size=(14, 14))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert torch.equal(targets.col, (centres[:, 0] / 8).floor().long())
    assert torch.equal(targets.row, (centres[:, 1] / 8).floor().long())
    best = shape_iou(boxes[:, 2:] - boxes[:, :2], PRIORS.double()).argmax(dim=1)
    assert torch.equal(targets.prior, best)
    assert bool(((targets.offsets[:, :2] >= 0) & (targets.offsets[:, :2] < 1)).all())


def test_encode_then_decode_returns_the_boxes():
    boxes = _boxes()
    raw = yolo_encode(boxes, PRIORS.double(), stride=8, grid_size=(14, 14))
    where = yolo_match(boxes, PRIORS.double(), stride=8, grid_size=(14, 14))
    grid = torch.zeros(14, 14, 3, 4, dtype=torch.float64)
    decoded = []
    for i in range(len(boxes)):  # one box at a time: two boxes may share a prediction
        grid[where.row[i], where.col[i], where.prior[i]] = raw[i]
        decoded.append(
            yolo_decode(grid, PRIORS.double(), 8)[where.row[i], where.col[i], where.prior[i]]
        )
    torch.testing.assert_close(torch.stack(decoded), boxes)


def test_empty_ground_truth_gives_empty_targets():
    targets = yolo_match(torch.zeros(0, 4), PRIORS, stride=8, grid_size=(4, 4))
    assert targets.row.shape == targets.col.shape == targets.prior.shape == (0,)
    assert targets.offsets.shape == (0, 4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: yolo_decode(torch.zeros(2, 2, 3, 5), PRIORS, 8), "offsets must have shape"),
        (
            lambda: yolo_decode(torch.zeros(2, 2, 2, 4), PRIORS, 8),
            "2 priors per cell but priors has 3",
        ),
        (lambda: yolo_decode(torch.zeros(2, 2, 3, 4), PRIORS, -8), "stride"),
        (lambda: yolo_decode(torch.zeros(2, 2, 3, 4), -PRIORS, 8), "priors must be positive"),
        (
            lambda: yolo_decode(torch.zeros(2, 2, 3, 4), PRIORS[:, :1], 8),
            r"priors must have shape \[A, 2\]",
        ),
        (lambda: yolo_match(_boxes(), PRIORS, 8, (0, 4)), "grid_size"),
        (lambda: yolo_match(torch.tensor([[5.0, 5.0, 5.0, 9.0]]), PRIORS, 8, (4, 4)), "boxes"),
        (
            lambda: yolo_encode(torch.tensor([[4.0, 4.0, 12.0, 12.0]]), PRIORS, 8, (4, 4)),
            "cell edge",
        ),
    ],
)
def test_bad_inputs_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_integer_offsets_are_refused():
    with pytest.raises(TypeError, match="offsets must have a floating-point dtype"):
        yolo_decode(torch.zeros(2, 2, 3, 4, dtype=torch.int64), PRIORS, 8)
