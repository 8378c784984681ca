"""Non-maximum suppression: properties of greedy NMS and parity with torchvision.ops."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torchvision.ops as tvops
from hypothesis import given
from hypothesis import strategies as st

from detlib.suppression import batched_nms, nms
from tests.conftest import random_boxes

# ``detlib.suppression``, the module.
nms_module = importlib.import_module("detlib.suppression")

DTYPES = [torch.float32, torch.float64]


# ----------------------------------------------------------------------------- inputs
def clustered_boxes(
    n: int, generator: torch.Generator, *, objects: int = 50, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Detector-like boxes: 80% jittered copies around ``objects`` objects, 20% scattered."""
    n_clustered = n * 4 // 5
    centres = torch.rand(objects, 2, generator=generator) * 800
    sizes = 20 + torch.rand(objects, 2, generator=generator) * 180
    which = torch.randint(0, objects, (n_clustered,), generator=generator)
    centre = centres[which] + 0.1 * sizes[which] * torch.randn(n_clustered, 2, generator=generator)
    stretch = (1 + 0.1 * torch.randn(n_clustered, 2, generator=generator)).clamp(min=0.2)
    size = sizes[which] * stretch
    clustered = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    scattered = random_boxes(n - n_clustered, generator, image=800.0, max_size=150.0)
    boxes = torch.cat((clustered, scattered))
    return boxes[torch.randperm(n, generator=generator)].to(dtype)


def grid_boxes(n: int, generator: torch.Generator, *, image: int = 200, max_size: int = 60):
    """Boxes with integer coordinates (so that shifting them by an integer is exact)."""
    top_left = torch.randint(0, image, (n, 2), generator=generator)
    size = torch.randint(0, max_size, (n, 2), generator=generator)
    return torch.cat((top_left, top_left + size), dim=1).float()


def per_class_reference(boxes, scores, labels, iou_threshold):
    """torchvision.ops.nms run on each category separately, merged by decreasing score (ties by
    index): exactly per-category greedy NMS on the original coordinates."""
    keep = torch.zeros(len(boxes), dtype=torch.bool)
    for label in labels.unique():
        members = torch.where(labels == label)[0]
        keep[members[tvops.nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep)[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


@st.composite
def detections(draw, max_boxes: int = 30, categories: int = 1):
    """Small boxes on a coarse grid (many overlaps, equal IoUs, duplicates and zero-area boxes),
    scores with frequent ties, a dtype, a threshold and (for batched NMS) categories."""
    n = draw(st.integers(0, max_boxes))
    corner = st.integers(0, 12)
    extent = st.integers(0, 6)
    rows = draw(st.lists(st.tuples(corner, corner, extent, extent), min_size=n, max_size=n))
    scale = draw(st.sampled_from([1.0, 0.1, 37.5]))
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float64)
    dtype = draw(st.sampled_from(DTYPES))
    boxes = (boxes.reshape(n, 4) * scale).to(dtype)
    score = st.sampled_from([0.25, 0.5, 0.75]) | st.floats(0, 1)
    scores = torch.tensor(draw(st.lists(score, min_size=n, max_size=n)), dtype=dtype)
    threshold = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]) | st.floats(-0.5, 1.5))
    labels = torch.tensor(draw(st.lists(st.integers(0, categories - 1), min_size=n, max_size=n)))
    return boxes, scores, threshold, labels.long()


def assert_matches_torchvision(boxes, scores, iou_threshold):
    expected = tvops.nms(boxes, scores, iou_threshold)
    assert torch.equal(nms(boxes, scores, iou_threshold), expected)


# ----------------------------------------------------------------------------- properties
def assert_greedy_properties(boxes, scores, keep, iou_threshold, labels=None):
    """What greedy NMS guarantees, checked with torchvision's IoU (the kernel's formula; a float32
    IoU is compared with the threshold as a float64, as the CPU kernel does)."""
    n = len(boxes)
    assert keep.dtype == torch.int64
    assert len(set(keep.tolist())) == len(keep), "an index is kept twice"
    kept_scores = scores[keep]
    assert bool((kept_scores[:-1] >= kept_scores[1:]).all()), "not by decreasing score"
    same_label = torch.ones(n, n, dtype=torch.bool) if labels is None else labels[:, None] == labels
    suppresses = (tvops.box_iou(boxes, boxes).double() > iou_threshold) & same_label
    # Box i comes before box j: higher score, or the same score and a lower index.
    index = torch.arange(n)
    before = (scores[:, None] > scores) | ((scores[:, None] == scores) & (index[:, None] < index))
    kept = torch.zeros(n, dtype=torch.bool)
    kept[keep] = True
    conflicts = suppresses & kept[:, None] & kept & before
    assert not bool(conflicts.any()), "two kept boxes overlap above the threshold"
    explained = (suppresses & before & kept[:, None]).any(dim=0)
    assert bool(explained[~kept].all()), "a box was dropped that no earlier kept box suppresses"


@given(detections())
def test_nms_properties(case):
    boxes, scores, threshold, _ = case
    assert_greedy_properties(boxes, scores, nms(boxes, scores, threshold), threshold)


@given(detections(categories=3))
def test_batched_nms_properties(case):
    boxes, scores, threshold, labels = case
    keep = batched_nms(boxes, scores, labels, threshold)
    assert_greedy_properties(boxes, scores, keep, threshold, labels)


@given(detections())
def test_nms_matches_torchvision_on_generated_inputs(case):
    boxes, scores, threshold, _ = case
    assert torch.equal(nms(boxes, scores, threshold), tvops.nms(boxes, scores, threshold))


@given(detections(categories=3))
def test_batched_nms_matches_per_class_nms_on_generated_inputs(case):
    boxes, scores, threshold, labels = case
    expected = per_class_reference(boxes, scores, labels, threshold)
    assert torch.equal(batched_nms(boxes, scores, labels, threshold), expected)


# ----------------------------------------------------------------------------- torchvision parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("iou_threshold", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("n", [1, 2, 50, 700])
def test_nms_matches_torchvision_random(gen, n, iou_threshold, dtype):
    boxes = random_boxes(n, gen, dtype=dtype)
    scores = torch.rand(n, generator=gen, dtype=dtype)
    assert_matches_torchvision(boxes, scores, iou_threshold)


@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 0.7, 1.0, -0.5, math.inf, -math.inf])
def test_nms_matches_torchvision_clustered(gen, iou_threshold):
    boxes = clustered_boxes(1000, gen)
    scores = torch.rand(1000, generator=gen)
    assert_matches_torchvision(boxes, scores, iou_threshold)


@pytest.mark.parametrize("iou_threshold", [0.5, 1.0])  # 1.0: nothing suppressed, 20 full blocks
def test_nms_matches_torchvision_large(gen, iou_threshold):
    boxes = clustered_boxes(5000, gen)
    scores = torch.rand(5000, generator=gen)
    assert_matches_torchvision(boxes, scores, iou_threshold)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_tied_scores(gen, dtype):
    boxes = clustered_boxes(3000, gen, dtype=dtype)
    scores = torch.randint(0, 10, (3000,), generator=gen).to(dtype)  # ~300 boxes per score
    assert torch.equal(nms(boxes, scores, 0.5), tvops.nms(boxes, scores, 0.5))
    equal = torch.full((3000,), 0.5, dtype=dtype)  # every score the same: visiting by index
    assert torch.equal(nms(boxes, equal, 0.5), tvops.nms(boxes, equal, 0.5))


def test_nms_duplicate_boxes(gen):
    boxes = clustered_boxes(400, gen).repeat(3, 1)  # every box three times
    scores = torch.rand(1200, generator=gen)
    scores[800:] = scores[:400]  # and the third copy with the score of the first
    for iou_threshold in (0.5, 1.0):
        assert_matches_torchvision(boxes, scores, iou_threshold)


@pytest.mark.parametrize("iou_threshold", [-0.5, 0.0, 0.5])
def test_nms_zero_area_boxes(gen, iou_threshold):
    boxes = grid_boxes(600, gen, image=40, max_size=8)  # about 1 in 8 has a zero extent
    boxes[::5, 2] = boxes[::5, 0]  # and every fifth box is a vertical line
    scores = torch.rand(600, generator=gen)
    zero_area = tvops.box_area(boxes) == 0
    assert int(zero_area.sum()) > 120
    assert bool(tvops.box_iou(boxes, boxes).isnan().any())  # some pairs have IoU 0 / 0
    assert_matches_torchvision(boxes, scores, iou_threshold)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_iou_exactly_at_threshold(dtype):
    # 3 x 1 boxes shifted by 1: intersection 2, union 4, IoU exactly 0.5 (and the same for
    # the next pair), so the decision hinges on "strictly greater".
    boxes = torch.tensor([[0, 0, 3, 1], [1, 0, 4, 1], [2, 0, 5, 1]], dtype=dtype)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=dtype)
    just_below = math.nextafter(0.5, 0.0)
    for iou_threshold in (0.5, just_below):
        assert_matches_torchvision(boxes, scores, iou_threshold)
    assert len(tvops.nms(boxes, scores, 0.5)) == 3
    assert len(tvops.nms(boxes, scores, just_below)) == 2


def test_nms_float32_iou_is_compared_with_a_float64_threshold():
    # IoU 3 / 10: in float32 that is 0.30000001192..., which is above the float64 0.3; in
    # float64 it is 0.3 itself, which is not. Comparing in float32 would round 0.3 up and miss it.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    for dtype in DTYPES:
        expected = tvops.nms(boxes.to(dtype), scores.to(dtype), 0.3)
        assert torch.equal(nms(boxes.to(dtype), scores.to(dtype), 0.3), expected)
    assert len(tvops.nms(boxes, scores, 0.3)) == 1
    assert len(tvops.nms(boxes.double(), scores.double(), 0.3)) == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_thresholds_equal_to_actual_ious(gen, dtype):
    # With the threshold at a pair's own IoU, or a float64 step either side of it, the decision
    # depends on the last bit of that IoU: only the kernel's formula, rounding step by rounding
    # step, and its way of comparing with the threshold give torchvision's answer every time.
    boxes = clustered_boxes(400, gen, objects=5, dtype=dtype) * 1.37
    iou = tvops.box_iou(boxes, boxes)
    rows, cols = torch.where((iou > 0) & (iou < 1))
    picks = torch.randint(0, len(rows), (60,), generator=gen).tolist()
    scores = torch.tensor([0.9, 0.8], dtype=dtype)
    for i, j in zip(rows[picks].tolist(), cols[picks].tolist(), strict=True):
        pair = boxes[[i, j]]
        value = iou[i, j].item()
        for iou_threshold in (value, math.nextafter(value, -1.0), math.nextafter(value, 2.0)):
            expected = tvops.nms(pair, scores, iou_threshold)
            assert torch.equal(nms(pair, scores, iou_threshold), expected), (i, j, iou_threshold)
    # The same thresholds on all boxes at once.
    scores = torch.rand(400, generator=gen, dtype=dtype)
    for value in iou[rows[picks[:10]], cols[picks[:10]]].tolist():
        for iou_threshold in (value, math.nextafter(value, -1.0)):
            expected = tvops.nms(boxes, scores, iou_threshold)
            assert torch.equal(nms(boxes, scores, iou_threshold), expected)


def test_nms_non_contiguous_inputs(gen):
    wide = clustered_boxes(2000, gen).repeat(1, 2)  # [N, 8]: boxes in columns 0, 2, 4, 6
    boxes = wide[:, ::2]
    scores = torch.rand(2, 2000, generator=gen)[1]
    scores = torch.stack((scores, scores), dim=1)[:, 0]
    assert not boxes.is_contiguous() and not scores.is_contiguous()
    expected = tvops.nms(boxes.contiguous(), scores.contiguous(), 0.5)
    assert torch.equal(nms(boxes, scores, 0.5), expected)
    transposed = boxes.T.contiguous().T  # column-major [N, 4]
    assert torch.equal(nms(transposed, scores, 0.5), expected)


@pytest.mark.parametrize(
    ("block_size", "near", "max_pairs"),
    [(1, 1024, 50), (2, 1024, 50), (7, 1024, 50), (64, 1024, 50), (7, 30, 1 << 20), (64, 150, 300)],
)
def test_nms_any_block_size_and_chunking(gen, monkeypatch, block_size, near, max_pairs):
    # Small blocks and chunks make a few hundred boxes take every path: many blocks, chains of
    # suppression inside a block, a block compared with the next candidates in the same matrix
    # and with the rest through its kept boxes, candidates split into many chunks, and a last
    # block a little larger than the others.
    monkeypatch.setattr(nms_module, "_BLOCK_SIZE", block_size)
    monkeypatch.setattr(nms_module, "_NEAR", near)
    monkeypatch.setattr(nms_module, "_MAX_PAIRS", max_pairs)
    boxes = clustered_boxes(400, gen, objects=10)
    scores = torch.randint(0, 40, (400,), generator=gen).float()
    labels = torch.randint(0, 3, (400,), generator=gen)
    for iou_threshold in (0.3, 0.5):
        assert_matches_torchvision(boxes, scores, iou_threshold)
        expected = per_class_reference(boxes, scores, labels, iou_threshold)
        assert torch.equal(batched_nms(boxes, scores, labels, iou_threshold), expected)


def test_nms_memory_stays_bounded(gen, monkeypatch):
    largest = []
    suppresses = nms_module._above_threshold

    def recording(rows, cols, threshold):
        pairs = suppresses(rows, cols, threshold)
        largest.append(pairs.numel())
        return pairs

    monkeypatch.setattr(nms_module, "_above_threshold", recording)
    boxes = clustered_boxes(20_000, gen)
    scores = torch.rand(20_000, generator=gen)
    assert torch.equal(nms(boxes, scores, 0.5), tvops.nms(boxes, scores, 0.5))
    assert max(largest) <= max(nms_module._MAX_PAIRS, nms_module._BLOCK_SIZE**2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nms_16_bit_boxes(gen, dtype):
    # Integers up to 256 are exact in both 16-bit formats, and so are the intersection widths and
    # heights; the areas and IoUs are computed in float32, so the result is the float32 one.
    boxes = grid_boxes(1000, gen, image=200, max_size=56)
    scores = torch.rand(1000, generator=gen)
    assert torch.equal(nms(boxes.to(dtype), scores, 0.5), tvops.nms(boxes, scores, 0.5))
    rounded_scores = scores.to(dtype)  # with ties now
    expected = tvops.nms(boxes, rounded_scores.float(), 0.5)
    assert torch.equal(nms(boxes.to(dtype), rounded_scores, 0.5), expected)


# ----------------------------------------------------------------------------- batched_nms
@pytest.mark.parametrize("iou_threshold", [-0.5, 0.0, 0.3, 0.7, 1.0])
def test_batched_nms_with_categories_of_very_different_sizes(gen, iou_threshold):
    # One category of 600 boxes beside 80 of one to six: the categories are decided together in
    # a grid, one row each, padded with empty cells, over several rounds for the large one; a
    # negative threshold makes even an empty cell's IoU of 0 count, so the padding must be
    # masked out.
    sizes = [600] + [int(n) for n in torch.randint(1, 7, (80,), generator=gen)]
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    labels = labels[torch.randperm(len(labels), generator=gen)]
    boxes = clustered_boxes(len(labels), gen, objects=30)
    scores = torch.randint(0, 100, (len(labels),), generator=gen).float()  # with ties
    expected = per_class_reference(boxes, scores, labels, iou_threshold)
    assert torch.equal(batched_nms(boxes, scores, labels, iou_threshold), expected)


@pytest.mark.parametrize("iou_threshold", [0.0, 0.5, 1.0])
def test_batched_nms_matches_torchvision_coordinate_trick(gen, iou_threshold):
    # Up to 1,000 boxes torchvision shifts each category by a multiple of (max coordinate + 1).
    # Integer coordinates stay exact under that shift, so the two must agree bit for bit, and
    # the scores have ties.
    boxes = grid_boxes(1000, gen)
    scores = torch.randint(0, 50, (1000,), generator=gen).float()
    labels = torch.randint(0, 8, (1000,), generator=gen)
    expected = tvops.batched_nms(boxes, scores, labels, iou_threshold)
    assert torch.equal(batched_nms(boxes, scores, labels, iou_threshold), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_matches_torchvision_per_class_loop(gen, dtype):
    # Above 1,000 boxes torchvision runs nms once per category.
    boxes = clustered_boxes(5000, gen, dtype=dtype)
    scores = torch.rand(5000, generator=gen, dtype=dtype)
    labels = torch.randint(0, 20, (5000,), generator=gen)
    expected = tvops.batched_nms(boxes, scores, labels, 0.5)
    assert torch.equal(batched_nms(boxes, scores, labels, 0.5), expected)


def test_batched_nms_tied_scores_per_class_loop(gen):
    # torchvision's per-category path orders the merged result with an unstable sort, so equal
    # scores of different categories may come in any order there: compare the kept set and the
    # sequence of scores.
    boxes = clustered_boxes(3000, gen)
    scores = torch.randint(0, 20, (3000,), generator=gen).float()
    labels = torch.randint(0, 5, (3000,), generator=gen)
    keep = batched_nms(boxes, scores, labels, 0.5)
    expected = tvops.batched_nms(boxes, scores, labels, 0.5)
    assert sorted(keep.tolist()) == sorted(expected.tolist())
    assert torch.equal(scores[keep], scores[expected])
    assert torch.equal(keep, per_class_reference(boxes, scores, labels, 0.5))


def test_batched_nms_only_suppresses_within_a_category(gen):
    boxes = clustered_boxes(500, gen).repeat(2, 1)
    scores = torch.rand(1000, generator=gen)
    labels = torch.cat((torch.zeros(500), torch.ones(500))).long()
    keep = batched_nms(boxes, scores, labels, 0.5)
    for label in (0, 1):
        members = torch.where(labels == label)[0]
        expected = members[tvops.nms(boxes[members], scores[members], 0.5)]
        assert sorted(keep[labels[keep] == label].tolist()) == sorted(expected.tolist())


def test_batched_nms_with_one_category_is_nms(gen):
    boxes = clustered_boxes(2000, gen)
    scores = torch.rand(2000, generator=gen)
    labels = torch.full((2000,), 7)
    assert torch.equal(batched_nms(boxes, scores, labels, 0.5), tvops.nms(boxes, scores, 0.5))


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_input(dtype):
    boxes = torch.zeros(0, 4, dtype=dtype)
    scores = torch.zeros(0, dtype=dtype)
    for keep in (nms(boxes, scores, 0.5), batched_nms(boxes, scores, torch.zeros(0).long(), 0.5)):
        assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device == boxes.device


def test_boxes_that_require_grad(gen):
    boxes = clustered_boxes(300, gen).requires_grad_()
    scores = torch.rand(300, generator=gen).requires_grad_()
    keep = nms(boxes, scores, 0.5)
    assert not keep.requires_grad
    assert torch.equal(keep, tvops.nms(boxes.detach(), scores.detach(), 0.5))


def test_scores_and_boxes_of_different_float_dtypes(gen):
    boxes = clustered_boxes(500, gen, dtype=torch.float64)
    scores = torch.rand(500, generator=gen)
    assert torch.equal(nms(boxes, scores, 0.5), tvops.nms(boxes, scores.double(), 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_matches_torchvision(gen, dtype):
    boxes = clustered_boxes(5000, gen).to("cuda", dtype)
    scores = torch.rand(5000, generator=gen).to("cuda", dtype)
    labels = torch.randint(0, 20, (5000,), generator=gen).cuda()
    for iou_threshold in (0.3, 0.5, 0.7):
        keep = nms(boxes, scores, iou_threshold)
        assert keep.device == boxes.device
        assert torch.equal(keep, tvops.nms(boxes, scores, iou_threshold))
        keep = batched_nms(boxes, scores, labels, iou_threshold)
        assert torch.equal(keep, tvops.batched_nms(boxes, scores, labels, iou_threshold))


# ----------------------------------------------------------------------------- input checks
def _good():
    return torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]), torch.tensor([0.9, 0.8])


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(boxes=[[0.0, 0.0, 1.0, 1.0]] * 2), TypeError, "boxes must be a torch.Tensor"),
        (dict(boxes=torch.zeros(2, 4, dtype=torch.int64)), TypeError, "boxes must have a floating"),
        (dict(boxes=torch.zeros(2, 5)), ValueError, r"boxes must have shape \[N, 4\]"),
        (dict(boxes=torch.zeros(8)), ValueError, r"boxes must have shape \[N, 4\]"),
        (dict(boxes=torch.tensor([[2.0, 0.0, 0.0, 2.0]] * 2)), ValueError, "boxes has 2 box"),
        (dict(boxes=torch.tensor([[0.0, 0.0, math.nan, 2.0]] * 2)), ValueError, "boxes has 2 box"),
        (dict(scores=[0.9, 0.8]), TypeError, "scores must be a torch.Tensor"),
        (dict(scores=torch.tensor([1, 2])), TypeError, "scores must have a floating"),
        (dict(scores=torch.zeros(3)), ValueError, r"scores must have shape \[N\].*N = 2"),
        (dict(scores=torch.zeros(2, 1)), ValueError, r"scores must have shape \[N\]"),
        (dict(scores=torch.tensor([0.5, math.nan])), ValueError, "scores must not contain NaN"),
        (dict(scores=torch.zeros(2, device="meta")), ValueError, ".* scores is on meta"),
        (dict(iou_threshold="0.5"), TypeError, "iou_threshold must be a number"),
        (dict(iou_threshold=torch.tensor(0.5)), TypeError, "iou_threshold must be a number"),
        (dict(iou_threshold=None), TypeError, "iou_threshold must be a number"),
        (dict(iou_threshold=math.nan), ValueError, "iou_threshold must not be NaN"),
        (dict(idxs=[0, 1]), TypeError, "idxs must be a torch.Tensor"),
        (dict(idxs=torch.tensor([0.0, 1.0])), TypeError, "idxs must have an integer dtype"),
        (dict(idxs=torch.tensor([True, False])), TypeError, "idxs must have an integer dtype"),
        (dict(idxs=torch.tensor([0, 1, 2])), ValueError, r"idxs must have shape \[N\].*N = 2"),
        (dict(idxs=torch.zeros(2, device="meta").long()), ValueError, ".* idxs is on meta"),
    ],
)
def test_bad_arguments_are_named(change, error, match):
    boxes, scores = _good()
    arguments = dict(boxes=boxes, scores=scores, idxs=torch.tensor([0, 1]), iou_threshold=0.5)
    arguments.update(change)
    if "idxs" not in change:
        plain = {name: value for name, value in arguments.items() if name != "idxs"}
        with pytest.raises(error, match=f"^nms: {match}"):
            nms(**plain)
    with pytest.raises(error, match=f"^batched_nms: {match}"):
        batched_nms(**arguments)


def test_any_real_threshold_is_accepted(gen):
    import numpy as np

    boxes = clustered_boxes(200, gen)
    scores = torch.rand(200, generator=gen)
    for iou_threshold in (1, np.float32(0.5), np.float64(0.7), 2.0):
        expected = tvops.nms(boxes, scores, float(iou_threshold))
        assert torch.equal(nms(boxes, scores, iou_threshold), expected)


# ----------------------------------------------------------------------------- issue 13
def test_module_is_not_shadowed_by_the_function():
    import detlib

    assert callable(detlib.nms)
    assert detlib.suppression.soft_nms is detlib.soft_nms
    assert not importlib.util.find_spec("detlib.nms")  # no module named like the function


@pytest.mark.parametrize("boxes_shape", [(0,), (0, 4)])
def test_batched_nms_of_empty_integer_tensors_is_empty_like_torchvision(boxes_shape):
    boxes = torch.empty(boxes_shape, dtype=torch.int64)
    scores, idxs = torch.empty(0), torch.empty(0, dtype=torch.int64)
    expected = tvops.batched_nms(boxes, scores, idxs, 0.5)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert keep.shape == expected.shape == (0,) and keep.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_nms_and_batched_nms_under_cpu_autocast_match_torchvision(gen, dtype):
    # torchvision's autocast kernels widen 16-bit boxes and scores to float32 (on the CPU its
    # float16 path raises); detlib does the same and keeps its block products out of autocast
    # (they ran in bfloat16 before, and float16 raised).
    boxes = clustered_boxes(2_000, gen).to(dtype)
    scores = torch.rand(2_000, generator=gen).to(dtype)
    labels = torch.randint(0, 3, (2_000,), generator=gen)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    expected = tvops.nms(boxes.to(wide), scores.to(wide), 0.5)
    expected_batched = tvops.batched_nms(boxes.to(wide), scores.to(wide), labels, 0.5)
    with torch.autocast("cpu"):
        keep = nms(boxes, scores, 0.5)
        keep_batched = batched_nms(boxes, scores, labels, 0.5)
        if dtype != torch.float16:
            assert torch.equal(tvops.nms(boxes, scores, 0.5), expected)
    assert torch.equal(keep, expected)
    # Above 1,000 boxes torchvision orders its per-class results with an unstable sort, and
    # 16-bit scores tie: the same boxes, and the same scores in the same order.
    assert torch.equal(keep_batched.sort().values, expected_batched.sort().values)
    assert torch.equal(scores[keep_batched], scores[expected_batched])
