"""SSD matching and the greedy (d2l / Caffe SSD) assignment: by hand, against plain loops, parity
with torchvision's SSDMatcher, and properties."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection._utils import Matcher as TorchvisionMatcher
from torchvision.models.detection._utils import SSDMatcher

from detlib import AnchorGenerator, box_iou
from detlib.matching import Matcher, greedy_bipartite_match, greedy_match, ssd_match
from tests.conftest import random_boxes

STRATEGIES = [ssd_match, greedy_match, greedy_bipartite_match]


# --------------------------------------------------------------------------- reference loops
def caffe_greedy_loop(iou, threshold=None):
    """Caffe SSD's MatchBBox written as loops: bipartite pass, then PER_PREDICTION (if threshold)."""
    num_gt, num_anchors = iou.shape
    rows = iou.tolist()
    matches = [-1] * num_anchors
    pool = list(range(num_gt))
    while pool:
        best, best_anchor, best_gt = -1.0, -1, -1
        for a in range(num_anchors):
            if matches[a] != -1:
                continue
            for g in pool:
                if rows[g][a] > 0 and rows[g][a] > best:
                    best, best_anchor, best_gt = rows[g][a], a, g
        if best_anchor == -1:
            break
        matches[best_anchor] = best_gt
        pool.remove(best_gt)
    if threshold is not None:
        for a in range(num_anchors):
            if matches[a] != -1:
                continue
            best, best_gt = -1.0, -1
            for g in range(num_gt):
                if rows[g][a] >= threshold and rows[g][a] > best:
                    best, best_gt = rows[g][a], g
            matches[a] = best_gt
    return matches


def ssd_loop(iou, threshold):
    """ssd.pytorch's rule as loops (ground truths in order, the last claim wins)."""
    num_gt, num_anchors = iou.shape
    rows = iou.tolist()
    matches = []
    for a in range(num_anchors):
        column = [rows[g][a] for g in range(num_gt)]
        best = max(column)
        matches.append(column.index(best) if best >= threshold else -1)
    for g in range(num_gt):
        if max(rows[g]) > 0:
            matches[rows[g].index(max(rows[g]))] = g
    return matches


def coarse_matrix(seed, num_gt, num_anchors, levels=4, dtype=torch.float32):
    """Random [G, N] matrix with values in {0, 1/levels, ..., 1}: many ties, some zero rows."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, levels + 1, (num_gt, num_anchors), generator=gen)
    values[torch.rand(num_gt, generator=gen) < 0.2] = 0  # ground truths that overlap nothing
    return (values.to(torch.float64) / levels).to(dtype)


# --------------------------------------------------------------------------- SSD, by hand
def test_ssd_by_hand():
    iou = torch.tensor(
        [
            [0.9, 0.45, 0.1, 0.3, 0.5],
            [0.2, 0.6, 0.35, 0.3, 0.39],
            [0.0, 0.1, 0.3, 0.2, 0.0],  # best IoU 0.3 < 0.5: takes its best anchor, 2
        ]
    )
    assert ssd_match(iou).tolist() == [0, 1, 2, -1, 0]
    assert ssd_match(iou, threshold=0.95).tolist() == [0, 1, 2, -1, -1]


def test_ssd_forces_the_best_anchor_even_if_it_prefers_another_box():
    # Anchor 0 overlaps ground truth 1 more, but it is ground truth 0's best anchor and not
    # ground truth 1's: SSD gives it to 0 (Matcher's low-quality step would keep 1).
    iou = torch.tensor([[0.3, 0.0], [0.6, 0.9]])
    assert ssd_match(iou).tolist() == [0, 1]
    assert Matcher(0.5, 0.5, allow_low_quality_matches=True)(iou).tolist() == [1, 1]


def test_ssd_conflict_goes_to_the_last_ground_truth():
    iou = torch.tensor([[0.4, 0.2, 0.0], [0.3, 0.1, 0.05]])  # both want anchor 0
    assert ssd_match(iou).tolist() == [1, -1, -1]  # ground truth 0 has no anchor left
    assert ssd_match(iou.flip(0)).tolist() == [1, -1, -1]  # the order decides, not the IoU
    assert SSDMatcher(0.5)(iou.clone()).tolist() == [1, -1, -1]  # torchvision, on the CPU


def test_ssd_ties_within_a_row_take_the_lowest_anchor():
    iou = torch.tensor([[0.2, 0.3, 0.3, 0.1]])
    assert ssd_match(iou).tolist() == [-1, 0, -1, -1]


def test_ssd_ground_truth_without_overlap_takes_nothing():
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.7, 0.2]])
    assert ssd_match(iou).tolist() == [-1, 1, -1]
    # torchvision hands anchor 0 to ground truth 0, which does not touch it.
    assert SSDMatcher(0.5)(iou.clone()).tolist() == [0, 1, -1]


# --------------------------------------------------------------------------- greedy, by hand
def test_greedy_by_hand():
    # 3 ground truths x 5 anchors. Largest entry 0.9 (gt 0, anchor 0); then 0.8 (gt 1, anchor 2);
    # gt 2's best is anchor 0 (0.85) but it is taken, and anchor 2 too: it gets anchor 3 (0.4).
    iou = torch.tensor(
        [
            [0.9, 0.6, 0.1, 0.0, 0.55],
            [0.1, 0.7, 0.8, 0.0, 0.0],
            [0.85, 0.0, 0.5, 0.4, 0.0],
        ]
    )
    assert greedy_bipartite_match(iou).tolist() == [0, -1, 1, 2, -1]
    # Second phase: anchor 1 (best 0.7, gt 1) and anchor 4 (0.55, gt 0) pass 0.5.
    assert greedy_match(iou).tolist() == [0, 1, 1, 2, 0]
    assert greedy_match(iou, threshold=0.65).tolist() == [0, 1, 1, 2, -1]


def test_greedy_resolves_the_conflict_that_ssd_cannot():
    iou = torch.tensor([[0.4, 0.2, 0.0], [0.3, 0.1, 0.05]])
    assert greedy_match(iou).tolist() == [0, 1, -1]  # gt 1 takes its next best anchor
    assert greedy_match(iou.flip(0)).tolist() == [1, 0, -1]  # whatever the order
    assert ssd_match(iou).tolist() == [1, -1, -1]


def test_greedy_ties_scan_anchors_first_then_ground_truths():
    iou = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.5, 0.0]])
    # Three entries equal 0.5; the scan of the [N, G] matrix meets (anchor 1, gt 0) first.
    assert greedy_bipartite_match(iou).tolist() == [-1, 0, -1]
    iou = torch.tensor([[0.5, 0.5], [0.5, 0.2]])
    assert greedy_bipartite_match(iou).tolist() == [0, 1]  # (0, 0), then gt 1's only free 0.2


def test_greedy_ties_beyond_the_candidates_take_the_lowest_anchors():
    # Every anchor ties: the candidates (G best per box) must be the lowest-indexed ones.
    assert greedy_bipartite_match(torch.full((2, 6), 0.5)).tolist() == [0, 1, -1, -1, -1, -1]
    iou = torch.full((3, 1000), 0.3)
    iou[1, 500] = 0.4
    assert greedy_bipartite_match(iou)[:3].tolist() == [0, 2, -1]
    assert int(greedy_bipartite_match(iou)[500]) == 1


def test_greedy_never_pairs_boxes_that_do_not_overlap():
    iou = torch.tensor(
        [[0.0, 0.0], [0.0, 0.3], [0.0, 0.2]]
    )  # more ground truths than useful anchors
    assert greedy_bipartite_match(iou).tolist() == [-1, 1]
    assert greedy_match(iou).tolist() == [-1, 1]


def test_greedy_more_ground_truths_than_anchors():
    iou = torch.tensor([[0.6, 0.1], [0.7, 0.2], [0.1, 0.9]])
    assert greedy_bipartite_match(iou).tolist() == [1, 2]


# --------------------------------------------------------------------------- against loops
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 7),
    st.integers(1, 40),
    st.sampled_from([2, 4, 10]),
    st.sampled_from([0.25, 0.5, 0.75]),
)
def test_greedy_equals_caffe_loops(seed, num_gt, num_anchors, levels, threshold):
    iou = coarse_matrix(seed, num_gt, num_anchors, levels)
    assert greedy_bipartite_match(iou).tolist() == caffe_greedy_loop(iou)
    assert greedy_match(iou, threshold).tolist() == caffe_greedy_loop(iou, threshold)


@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 7),
    st.integers(1, 40),
    st.sampled_from([2, 4, 10]),
    st.sampled_from([0.25, 0.5, 0.75]),
)
def test_ssd_equals_loops(seed, num_gt, num_anchors, levels, threshold):
    iou = coarse_matrix(seed, num_gt, num_anchors, levels)
    assert ssd_match(iou, threshold).tolist() == ssd_loop(iou, threshold)


# --------------------------------------------------------------------------- properties
@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(1, 60))
def test_ssd_every_overlapping_ground_truth_gets_an_anchor_unless_overwritten(seed, num_gt, n):
    iou = coarse_matrix(seed, num_gt, n, levels=10)
    matches = ssd_match(iou)
    best_iou, best_anchor = iou.max(dim=1)
    for g in range(num_gt):
        if best_iou[g] <= 0 or (matches == g).any():
            continue
        # Only one reason to be left out: a later ground truth has the same best anchor.
        owner = int(matches[best_anchor[g]])
        assert owner > g
        assert int(best_anchor[owner]) == int(best_anchor[g])


@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(8, 60))
def test_ssd_with_distinct_best_anchors_every_overlapping_box_is_matched(seed, num_gt, n):
    gen = torch.Generator().manual_seed(seed)
    iou = torch.rand(num_gt, n, generator=gen)
    iou[torch.arange(num_gt), torch.randperm(n, generator=gen)[:num_gt]] = 1.0  # distinct bests
    matches = ssd_match(iou)
    for g in range(num_gt):
        assert (matches == g).any()


@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(1, 60))
def test_greedy_does_not_depend_on_the_order_of_the_boxes(seed, num_gt, n):
    gen = torch.Generator().manual_seed(seed)
    iou = torch.rand(num_gt, n, generator=gen, dtype=torch.float64)  # no ties
    perm = torch.randperm(num_gt, generator=gen)
    strategies = [greedy_match, greedy_bipartite_match]
    if len(iou.argmax(dim=1).unique()) == num_gt:  # SSD too, when there is no conflict
        strategies.append(ssd_match)
    for strategy in strategies:
        matches, permuted = strategy(iou), strategy(iou[perm])
        relabelled = torch.where(permuted >= 0, perm[permuted.clamp(min=0)], permuted)
        assert torch.equal(matches, relabelled), strategy.__name__


@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(1, 40))
def test_greedy_first_phase_is_one_to_one_and_maximal(seed, num_gt, n):
    iou = coarse_matrix(seed, num_gt, n, levels=5)
    first = greedy_bipartite_match(iou)
    counts = torch.bincount(first[first >= 0], minlength=num_gt)
    assert counts.max() <= 1  # each ground truth at most one anchor
    matched = first >= 0
    assert (iou[first[matched], matched.nonzero()[:, 0]] > 0).all()  # only overlapping pairs
    for g in range(num_gt):
        if counts[g] == 0:  # left out: every anchor it overlaps went to another box
            assert matched[iou[g] > 0].all()
    assert counts.sum() == min(num_gt, n) or not (iou[counts == 0][:, ~matched] > 0).any()
    second = greedy_match(iou)
    assert torch.equal(second[matched], first[matched])


@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(1, 40))
def test_strategies_agree_with_matcher_above_the_threshold(seed, num_gt, n):
    # An anchor whose best IoU reaches the threshold and that no ground truth claims keeps its
    # best ground truth in every strategy.
    gen = torch.Generator().manual_seed(seed)
    iou = torch.rand(num_gt, n, generator=gen, dtype=torch.float64)
    plain = Matcher(0.5, 0.5)(iou)
    claimed = torch.zeros(n, dtype=torch.bool)
    claimed[iou.argmax(dim=1)] = True
    claimed[greedy_bipartite_match(iou) >= 0] = True
    for strategy in (ssd_match, greedy_match):
        assert torch.equal(strategy(iou)[~claimed], plain[~claimed])


# --------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_ssd_parity_with_torchvision_on_boxes(gen, threshold):
    anchors = AnchorGenerator.retinanet()((256, 256))
    for _ in range(5):
        gt = random_boxes(8, gen, image=220, max_size=150, min_size=4)
        iou = box_iou(gt, anchors)
        assert torch.equal(ssd_match(iou, threshold), SSDMatcher(threshold)(iou))


@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(1, 30))
def test_ssd_parity_with_torchvision_with_conflicts_on_the_cpu(seed, num_gt, n):
    iou = coarse_matrix(seed, num_gt, n, levels=4)
    overlapping = iou.amax(dim=1) > 0  # torchvision gives anchor 0 to the others
    iou = iou[overlapping]
    if len(iou) > 0:
        assert torch.equal(ssd_match(iou), SSDMatcher(0.5)(iou.clone()))


def test_retinanet_and_rpn_are_matcher_settings(gen):
    anchors = AnchorGenerator.retinanet()((256, 256))
    gt = random_boxes(6, gen, image=220, max_size=120, min_size=6)
    iou = box_iou(gt, anchors)
    for high, low in [(0.5, 0.4), (0.7, 0.3)]:
        ours = Matcher(high, low, allow_low_quality_matches=True)(iou)
        assert torch.equal(ours, TorchvisionMatcher(high, low, True)(iou))


# --------------------------------------------------------------------------- shapes, dtypes, errors
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_inputs(strategy):
    assert strategy(torch.zeros(0, 5)).tolist() == [-1] * 5
    assert strategy(torch.zeros(3, 0)).shape == (0,)
    assert strategy(torch.zeros(0, 0)).dtype == torch.int64


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(strategy, dtype):
    iou = coarse_matrix(3, 4, 30, levels=8)
    expected = strategy(iou)
    result = strategy(iou.to(dtype))
    assert result.dtype == torch.int64 and torch.equal(result, expected)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_errors_name_the_argument(strategy):
    name = strategy.__name__
    with pytest.raises(TypeError, match=f"{name}: match_quality_matrix must be a torch.Tensor"):
        strategy([[0.5]])
    with pytest.raises(ValueError, match=rf"{name}: match_quality_matrix must have shape \[G, N\]"):
        strategy(torch.zeros(3))
    with pytest.raises(TypeError, match=f"{name}: match_quality_matrix must have a floating"):
        strategy(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=f"{name}: match_quality_matrix holds NaN"):
        strategy(torch.tensor([[0.5, float("nan")]]))


@pytest.mark.parametrize("strategy", [ssd_match, greedy_match])
@pytest.mark.parametrize("threshold", [1.5, -0.1, "0.5", True])
def test_threshold_errors(strategy, threshold):
    with pytest.raises(ValueError, match=f"{strategy.__name__}: threshold must be a number in"):
        strategy(torch.zeros(2, 3), threshold)
