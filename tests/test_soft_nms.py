"""Soft-NMS: hand-computed cases, a reference loop written from the paper, properties."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as tvops
from hypothesis import given
from hypothesis import strategies as st

from detlib.suppression import soft_nms
from tests.conftest import random_boxes


# ----------------------------------------------------------------------------- reference
def reference_soft_nms(boxes, scores, method, iou_threshold, sigma, score_threshold):
    """Algorithm 1 of Bodla et al. (2017), one box at a time, in Python floats (float64).

    Strict ``>`` for the linear rule (as in the authors' code), a box is dropped as soon as its
    score is below ``score_threshold``, equal scores picked by lowest index, and a pair of
    zero-area boxes has IoU 0."""
    boxes, scores = boxes.tolist(), scores.tolist()
    remaining = [i for i, s in enumerate(scores) if s >= score_threshold]
    keep, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        keep.append(best)
        kept_scores.append(scores[best])
        remaining.remove(best)
        survivors = []
        for i in remaining:
            iou = _iou(boxes[best], boxes[i])
            if method == "gaussian":
                weight = math.exp(-(iou * iou) / sigma)
            else:
                weight = 1 - iou if iou > iou_threshold else 1.0
            scores[i] *= weight
            if scores[i] >= score_threshold:
                survivors.append(i)
        remaining = survivors
    return keep, kept_scores


def _iou(a, b):
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def clustered(n, generator, objects=20):
    """Jittered copies of a few objects (heavy overlap) plus scattered boxes, float64."""
    parents = random_boxes(objects, generator, image=400.0, max_size=120.0, min_size=10.0)
    which = torch.randint(0, objects, (n * 3 // 4,), generator=generator)
    size = (parents[which, 2:] - parents[which, :2]).repeat(1, 2)
    jittered = parents[which] + 0.1 * size * torch.randn(len(which), 4, generator=generator)
    jittered[:, 2:] = torch.maximum(jittered[:, 2:], jittered[:, :2])
    scattered = random_boxes(n - len(which), generator, image=400.0)
    return torch.cat((jittered, scattered)).double()


@st.composite
def small_scenes(draw, max_boxes=25):
    """Boxes on a coarse grid (equal IoUs, duplicates, zero-area boxes), scores with ties."""
    n = draw(st.integers(0, max_boxes))
    rows = draw(
        st.lists(
            st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 6), st.integers(0, 6)),
            min_size=n,
            max_size=n,
        )
    )
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float64)
    score = st.sampled_from([0.25, 0.5, 0.75]) | st.floats(0, 1)
    scores = torch.tensor(draw(st.lists(score, min_size=n, max_size=n)), dtype=torch.float64)
    return boxes.reshape(n, 4), scores


# ----------------------------------------------------------------------------- hand-computed
# A and B overlap with IoU 50 / 150 = 1/3; C overlaps neither.
A_B_C = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
A_B_C_SCORES = torch.tensor([0.9, 0.8, 0.7])


def test_linear_decays_only_above_the_threshold():
    keep, scores = soft_nms(A_B_C, A_B_C_SCORES, iou_threshold=0.3, method="linear")
    assert keep.tolist() == [0, 2, 1]  # B drops to 0.8 * (1 - 1/3) = 0.533, below C
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.8 * 2 / 3])
    keep, scores = soft_nms(A_B_C, A_B_C_SCORES, iou_threshold=0.4, method="linear")
    assert keep.tolist() == [0, 1, 2]  # 1/3 <= 0.4: B keeps its score
    assert torch.equal(scores, A_B_C_SCORES)


def test_gaussian_decays_every_overlap():
    keep, scores = soft_nms(A_B_C, A_B_C_SCORES, sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-(1 / 9) / 0.5)])
    keep, scores = soft_nms(A_B_C, A_B_C_SCORES, sigma=2.0)  # wider: B decays less
    assert keep.tolist() == [0, 1, 2]
    assert scores[1].item() == pytest.approx(0.8 * math.exp(-(1 / 9) / 2.0))


def test_score_threshold_drops_decayed_boxes():
    keep, _ = soft_nms(A_B_C, A_B_C_SCORES, iou_threshold=0.3, score_threshold=0.6, method="linear")
    assert keep.tolist() == [0, 2]  # B decayed to 0.533 < 0.6
    # C is below from the start; B (IoU 1/3, not above 0.4) is not decayed.
    keep, _ = soft_nms(
        A_B_C, A_B_C_SCORES, iou_threshold=0.4, score_threshold=0.75, method="linear"
    )
    assert keep.tolist() == [0, 1]


def test_linear_iou_exactly_at_threshold_is_not_decayed():
    # 3 x 1 boxes shifted by 1: intersection 2, union 4, IoU exactly 0.5.
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    _, kept = soft_nms(boxes, scores, iou_threshold=0.5, method="linear")
    assert kept.tolist() == pytest.approx([0.9, 0.8])
    _, kept = soft_nms(boxes, scores, iou_threshold=math.nextafter(0.5, 0), method="linear")
    assert kept.tolist() == pytest.approx([0.9, 0.4])


def test_linear_threshold_is_compared_as_a_float64_number():
    # IoU 3 / 10 is 0.30000001192... in float32: above the float64 0.3, as in nms on the CPU.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    _, kept = soft_nms(boxes, scores, iou_threshold=0.3, method="linear")
    assert kept[1].item() == pytest.approx(0.8 * 0.7)
    assert len(tvops.nms(boxes, scores, 0.3)) == 1  # greedy NMS suppresses it too
    scores = torch.tensor([0.9, 0.8], dtype=torch.float64)
    _, kept = soft_nms(boxes.double(), scores, iou_threshold=0.3, method="linear")
    assert kept[1].item() == 0.8  # exactly 0.3 in float64: not above


def test_equal_scores_are_visited_by_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    keep, scores = soft_nms(boxes, torch.tensor([0.5, 0.5, 0.5]), method="linear")
    assert keep.tolist() == [0]  # duplicates: 1 - IoU = 0, below the score threshold
    keep, _ = soft_nms(boxes, torch.tensor([0.5, 0.5, 0.5]), sigma=10.0)
    assert keep.tolist() == [0, 1, 2]


def test_duplicates_with_linear_decay_reach_zero():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2)
    keep, scores = soft_nms(boxes, torch.tensor([0.9, 0.8]), method="linear", score_threshold=0)
    assert keep.tolist() == [0, 1] and scores.tolist() == pytest.approx([0.9, 0.0])


# ----------------------------------------------------------------------------- reference parity
@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("iou_threshold, sigma", [(0.3, 0.5), (0.5, 0.1), (0.7, 2.0)])
def test_matches_reference_loop(gen, method, iou_threshold, sigma):
    boxes = clustered(300, gen)
    scores = torch.rand(300, generator=gen, dtype=torch.float64)
    keep, kept = soft_nms(boxes, scores, iou_threshold, sigma, 0.001, method)
    expected_keep, expected_scores = reference_soft_nms(
        boxes, scores, method, iou_threshold, sigma, 0.001
    )
    assert keep.tolist() == expected_keep
    expected = torch.tensor(expected_scores, dtype=torch.float64)
    if method == "linear":
        assert torch.equal(kept, expected)  # the same float64 operations in the same order
    else:  # exp may differ from math.exp in the last bit
        torch.testing.assert_close(kept, expected, rtol=1e-12, atol=0)


def test_float32_matches_reference_within_rounding(gen):
    boxes = clustered(200, gen)
    scores = torch.rand(200, generator=gen, dtype=torch.float64)
    keep, kept = soft_nms(boxes.float(), scores.float())
    expected_keep, expected_scores = reference_soft_nms(
        boxes.float().double(), scores.float().double(), "gaussian", 0.3, 0.5, 0.001
    )
    assert keep.tolist() == expected_keep
    assert kept.dtype == torch.float32
    expected = torch.tensor(expected_scores, dtype=torch.float64)
    torch.testing.assert_close(kept.double(), expected, rtol=1e-5, atol=1e-7)


@given(scene=small_scenes(), method=st.sampled_from(["gaussian", "linear"]))
def test_matches_reference_loop_on_small_scenes(scene, method):
    boxes, scores = scene
    keep, kept = soft_nms(boxes, scores, 0.3, 0.5, 0.05, method)
    expected_keep, expected_scores = reference_soft_nms(boxes, scores, method, 0.3, 0.5, 0.05)
    assert keep.tolist() == expected_keep
    torch.testing.assert_close(kept, torch.tensor(expected_scores, dtype=torch.float64).reshape(-1))


# ----------------------------------------------------------------------------- properties
@given(scene=small_scenes(), method=st.sampled_from(["gaussian", "linear"]))
def test_scores_never_increase_and_come_out_in_order(scene, method):
    boxes, scores = scene
    keep, kept = soft_nms(boxes, scores, 0.3, 0.5, 0.01, method)
    assert len(set(keep.tolist())) == len(keep)
    assert bool((kept <= scores[keep]).all())
    assert bool((kept >= 0.01).all())
    assert bool((kept[1:] <= kept[:-1]).all())
    if len(keep):  # the best box is picked first, with its own score
        assert kept[0] == scores.max() and keep[0] == int(torch.argmax(scores))


@given(scene=small_scenes())
def test_tiny_sigma_is_greedy_nms_with_threshold_zero(scene):
    # exp(-IoU**2 / sigma) underflows to 0 for any IoU > 0 on this grid (IoU >= 1 / 71).
    boxes, scores = scene
    keep, kept = soft_nms(boxes, scores, sigma=1e-12, score_threshold=1e-300)
    candidates = torch.where(scores >= 1e-300)[0]
    expected = candidates[tvops.nms(boxes[candidates], scores[candidates], 0.0)]
    assert torch.equal(keep, expected)
    assert torch.equal(kept, scores[expected])  # nothing kept was decayed


@given(scene=small_scenes())
def test_linear_with_threshold_one_changes_nothing(scene):
    boxes, scores = scene
    keep, kept = soft_nms(boxes, scores, iou_threshold=1.0, score_threshold=0.2, method="linear")
    candidates = torch.where(scores >= 0.2)[0]
    expected = candidates[torch.sort(scores[candidates], descending=True, stable=True).indices]
    assert torch.equal(keep, expected) and torch.equal(kept, scores[expected])


@given(scene=small_scenes(), iou_threshold=st.sampled_from([0.0, 0.3, 0.5]))
def test_linear_leaves_boxes_without_large_overlaps_alone(scene, iou_threshold):
    # A box whose IoU with every other box is at most the threshold is never decayed: it is kept
    # (if its score passes) with exactly its own score.
    boxes, scores = scene
    keep, kept = soft_nms(boxes, scores, iou_threshold, score_threshold=0.1, method="linear")
    iou = tvops.box_iou(boxes, boxes).nan_to_num(0.0).fill_diagonal_(0.0)
    alone = (iou <= iou_threshold).all(dim=1) & (scores >= 0.1)
    kept_score = dict(zip(keep.tolist(), kept.tolist()))
    for i in torch.where(alone)[0].tolist():
        assert kept_score[i] == scores[i].item()


# ----------------------------------------------------------------------------- dtypes, devices
def test_empty_input():
    keep, kept = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert kept.shape == (0,) and kept.dtype == torch.float32
    keep, kept = soft_nms(A_B_C, A_B_C_SCORES, score_threshold=0.95)  # everything below
    assert keep.shape == (0,) and kept.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(gen, dtype):
    boxes = random_boxes(100, gen, image=100.0, max_size=40.0).round()  # exact in 16 bits
    scores = torch.rand(100, generator=gen).to(dtype)
    keep, kept = soft_nms(boxes.to(dtype), scores)
    assert kept.dtype == dtype and keep.dtype == torch.int64
    expected_keep, expected_scores = reference_soft_nms(
        boxes.double(), scores.double(), "gaussian", 0.3, 0.5, 0.001
    )
    assert len(keep) == len(expected_keep)
    tolerance = {torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    expected = torch.tensor(expected_scores, dtype=torch.float64)
    torch.testing.assert_close(kept.double(), expected, rtol=tolerance, atol=tolerance)


def test_boxes_that_require_grad(gen):
    boxes = clustered(50, gen).requires_grad_()
    scores = torch.rand(50, generator=gen, dtype=torch.float64).requires_grad_()
    keep, kept = soft_nms(boxes, scores)
    assert not keep.requires_grad and not kept.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(gen):
    boxes = clustered(500, gen)
    scores = torch.rand(500, generator=gen, dtype=torch.float64)
    for method in ("gaussian", "linear"):
        keep, kept = soft_nms(boxes.cuda(), scores.cuda(), method=method)
        assert keep.device.type == "cuda"
        expected_keep, expected_scores = soft_nms(boxes, scores, method=method)
        assert torch.equal(keep.cpu(), expected_keep)
        torch.testing.assert_close(kept.cpu(), expected_scores, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(boxes=[[0.0, 0.0, 1.0, 1.0]] * 3), TypeError, "boxes must be a torch.Tensor"),
        (dict(boxes=torch.zeros(3, 5)), ValueError, r"boxes must have shape \[N, 4\]"),
        (dict(boxes=torch.tensor([[2.0, 0.0, 0.0, 2.0]] * 3)), ValueError, "boxes has 3 box"),
        (dict(scores=torch.zeros(2)), ValueError, r"scores must have shape \[N\].*N = 3"),
        (dict(scores=torch.tensor([1, 2, 3])), TypeError, "scores must have a floating"),
        (dict(scores=torch.tensor([0.5, math.nan, 0.1])), ValueError, "scores must not contain"),
        (dict(iou_threshold="0.3"), TypeError, "iou_threshold must be a number"),
        (dict(iou_threshold=math.nan), ValueError, "iou_threshold must not be NaN"),
        (dict(sigma=0.0), ValueError, "sigma must be a finite number > 0"),
        (dict(sigma=-1.0), ValueError, "sigma must be a finite number > 0"),
        (dict(sigma=math.inf), ValueError, "sigma must be a finite number > 0"),
        (dict(sigma=None), TypeError, "sigma must be a number"),
        (dict(sigma=math.nan), ValueError, "sigma must not be NaN"),
        (dict(score_threshold="0"), TypeError, "score_threshold must be a number"),
        (dict(score_threshold=math.nan), ValueError, "score_threshold must not be NaN"),
        (dict(method="hard"), ValueError, "method must be one of"),
    ],
)
def test_bad_arguments_are_named(change, error, match):
    arguments = dict(boxes=A_B_C, scores=A_B_C_SCORES)
    arguments.update(change)
    with pytest.raises(error, match=f"^soft_nms: {match}"):
        soft_nms(**arguments)


@pytest.mark.parametrize("sigma", [1e-46, 1e-300])
def test_sigma_below_float32_range_keeps_disjoint_boxes(sigma):
    # 1e-46 rounds to 0 in float32: the Gaussian decay of a disjoint box was 0 / 0 = NaN and the
    # box was dropped. A vanishing sigma is greedy NMS at IoU threshold 0.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [100, 0, 110, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    keep, kept_scores = soft_nms(boxes, scores, sigma=sigma)
    assert keep.tolist() == [0, 2, 3]
    assert torch.equal(kept_scores, scores[[0, 2, 3]])


def test_soft_nms_under_cpu_autocast():
    gen = torch.Generator().manual_seed(0)
    boxes = random_boxes(300, gen).to(torch.bfloat16)
    scores = torch.rand(300, generator=gen).to(torch.bfloat16)
    expected = soft_nms(boxes.float(), scores.float())
    with torch.autocast("cpu"):
        keep, kept_scores = soft_nms(boxes, scores)
    assert torch.equal(keep, expected[0]) and torch.equal(kept_scores, expected[1])
