"""detlib.rpn (the RPN: head, anchor labels, loss, proposals): hand-made cases, parity with
torchvision's RegionProposalNetwork, empty inputs, argument errors and gradients."""

import math

import pytest
import torch
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from detlib import AnchorGenerator, BoxCoder
from detlib.rpn import RPNHead, generate_proposals, label_anchors, rpn_loss
from detlib.sampling import balanced_sample
from tests.conftest import random_boxes

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def torchvision_rpn(pre_nms_top_n=1000, post_nms_top_n=300, nms_thresh=0.7, **kwargs):
    return tv_rpn.RegionProposalNetwork(
        anchor_generator=None,
        head=None,
        fg_iou_thresh=kwargs.get("fg", 0.7),
        bg_iou_thresh=kwargs.get("bg", 0.3),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n=dict(training=pre_nms_top_n, testing=pre_nms_top_n),
        post_nms_top_n=dict(training=post_nms_top_n, testing=post_nms_top_n),
        nms_thresh=nms_thresh,
        score_thresh=kwargs.get("score_thresh", 0.0),
    )


def two_level_setup(gen, batch=2, channels=8):
    """Feature maps of strides 8 and 16 for 128 x 160 images, and their anchors."""
    features = [
        torch.randn(batch, channels, 16, 20, generator=gen),
        torch.randn(batch, channels, 8, 10, generator=gen),
    ]
    generator = AnchorGenerator(strides=[8, 16], sizes=[[16, 24], [32, 48]])
    anchors = generator((128, 160))
    per_level = [len(a) for a in generator.per_level((128, 160))]
    return features, anchors, per_level


# ----------------------------------------------------------------------------- RPNHead
def test_rpn_head_matches_torchvision_on_two_levels(gen):
    features, anchors, _ = two_level_setup(gen)
    ours = RPNHead(8, 6)
    for p in ours.parameters():  # non-trivial weights
        p.data.normal_(0, 0.3, generator=gen)
    theirs = tv_rpn.RPNHead(8, 6)
    theirs.load_state_dict(ours.state_dict())
    objectness, deltas = ours(features)
    logits, regression = theirs(features)
    tv_objectness, tv_deltas = tv_rpn.concat_box_prediction_layers(logits, regression)
    assert objectness.shape == (2, len(anchors)) and deltas.shape == (2, len(anchors), 4)
    assert torch.equal(objectness.reshape(-1, 1), tv_objectness)
    assert torch.equal(deltas.reshape(-1, 4), tv_deltas)


def test_rpn_head_rows_follow_the_anchor_order():
    # A head whose offsets output channel 4a + k holds (row, column, anchor, k): row n of the
    # output must describe the cell and anchor of anchor n.
    head = RPNHead(1, 3, conv_depth=0)
    with torch.no_grad():
        head.bbox_pred.weight.zero_()
        head.bbox_pred.bias.copy_(torch.arange(12.0))
    _, deltas = head(torch.zeros(1, 1, 2, 5))
    expected = torch.arange(12.0).view(3, 4).repeat(10, 1)  # 10 cells x 3 anchors
    assert torch.equal(deltas[0], expected)
    anchors = AnchorGenerator(strides=[8], sizes=[[8, 16, 32]], aspect_ratios=1.0)((16, 40))
    assert len(anchors) == deltas.shape[1]


def test_rpn_head_initialisation_and_names():
    head = RPNHead(16, 9)
    assert set(head.state_dict()) == set(tv_rpn.RPNHead(16, 9).state_dict())
    for layer in (head.conv[0][0], head.cls_logits, head.bbox_pred):
        assert layer.bias.abs().max() == 0
        assert 0.005 < layer.weight.std() < 0.015


def test_rpn_head_errors():
    head = RPNHead(8, 3)
    with pytest.raises(ValueError, match=r"RPNHead: features\[1\] must have shape \[B, 8, H, W\]"):
        head([torch.zeros(1, 8, 4, 4), torch.zeros(1, 4, 2, 2)])
    with pytest.raises(ValueError, match="same batch size"):
        head([torch.zeros(1, 8, 4, 4), torch.zeros(2, 8, 2, 2)])
    with pytest.raises(TypeError, match="RPNHead: features must be a Tensor"):
        head("features")
    with pytest.raises(TypeError, match="features must have a floating-point dtype"):
        head(torch.zeros(1, 8, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="RPNHead: num_anchors must be >= 1"):
        RPNHead(8, 0)
    with pytest.raises(TypeError, match="RPNHead: in_channels must be an int"):
        RPNHead(8.0, 3)


# ----------------------------------------------------------------------------- label_anchors
def test_label_anchors_by_hand():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 9.0],  # IoU 0.9: object
            [0.0, 0.0, 10.0, 5.0],  # 0.5: ignored
            [20.0, 20.0, 30.0, 30.0],  # 0: background
            [0.0, 0.0, 10.0, 2.5],  # 0.25: background
        ]
    )
    labels, matched = label_anchors(anchors, [gt])
    assert labels.tolist() == [[1.0, -1.0, 0.0, 0.0]]
    assert torch.equal(matched[0, 0], gt[0])


def test_best_anchor_rule_and_ignore():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[-2.0, 0.0, 8.0, 10.0], [3.0, 0.0, 13.0, 10.0]])  # IoU 2/3 and 7/13
    labels, _ = label_anchors(anchors, [gt])
    assert labels.tolist() == [[1.0, -1.0]]  # the best anchor is an object below 0.7
    labels, _ = label_anchors(anchors, [gt], allow_low_quality_matches=False)
    assert labels.tolist() == [[-1.0, -1.0]]
    # An ignored anchor takes no part: the next best anchor becomes the box's best.
    labels, _ = label_anchors(anchors, [gt], ignore=torch.tensor([True, False]))
    assert labels.tolist() == [[-1.0, 1.0]]


def test_label_anchors_match_torchvision(gen):
    anchors = AnchorGenerator(strides=[16], sizes=[[32, 64, 128]])((256, 320))
    gt = [
        random_boxes(5, gen, image=250, max_size=150, min_size=8),
        torch.zeros(0, 4),
        random_boxes(1, gen, image=250, max_size=150, min_size=8),
    ]
    labels, matched = label_anchors(anchors, gt)
    tv_labels, tv_matched = torchvision_rpn().assign_targets_to_anchors(
        [anchors] * 3, [{"boxes": b} for b in gt]
    )
    assert torch.equal(labels, torch.stack(tv_labels))
    for image in (0, 2):
        assert torch.equal(matched[image], tv_matched[image])
    assert torch.equal(matched[1], anchors)  # no boxes: the anchors themselves (targets 0)
    assert bool((labels[1] == 0).all())


def test_label_anchors_float64_and_empty():
    anchors = AnchorGenerator(strides=[8], sizes=[[16]])((32, 32), dtype=torch.float64)
    labels, matched = label_anchors(anchors, [torch.tensor([[0.0, 0.0, 16.0, 16.0]])])
    assert labels.dtype == matched.dtype == torch.float64
    labels, matched = label_anchors(
        torch.zeros(0, 4), [torch.zeros(0, 4), torch.tensor([[0.0, 0, 1, 1]] * 2)]
    )
    assert labels.shape == (2, 0) and matched.shape == (2, 0, 4)
    labels, matched = label_anchors(anchors, [])
    assert labels.shape == (0, len(anchors))


def test_label_anchors_errors():
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(TypeError, match="label_anchors: gt_boxes must be a list"):
        label_anchors(anchors, torch.zeros(1, 4))
    with pytest.raises(
        ValueError, match=r"label_anchors: gt_boxes\[0\] has 1 box\(es\) of zero or negative"
    ):
        label_anchors(anchors, [torch.tensor([[5.0, 0.0, 1.0, 4.0]])])
    with pytest.raises(ValueError, match=r"label_anchors: ignore must be a bool Tensor\[N\]"):
        label_anchors(anchors, [anchors], ignore=torch.zeros(2, dtype=torch.bool))
    # The error names label_anchors' own arguments, not those of the Matcher it builds.
    with pytest.raises(
        ValueError, match=r"^label_anchors: bg_iou_thresh \(0.7\) must not exceed fg_iou_thresh"
    ):
        label_anchors(anchors, [anchors], fg_iou_thresh=0.3, bg_iou_thresh=0.7)
    with pytest.raises(ValueError, match="^label_anchors: fg_iou_thresh"):
        label_anchors(anchors, [anchors], fg_iou_thresh=float("nan"))
    with pytest.raises(TypeError, match="^label_anchors: allow_low_quality_matches must be a bool"):
        label_anchors(anchors, [anchors], allow_low_quality_matches=1)


# ----------------------------------------------------------------------------- rpn_loss
def test_rpn_loss_by_hand():
    objectness = torch.zeros(1, 3)
    deltas = torch.zeros(1, 3, 4)
    targets = torch.ones(1, 3, 4)
    positive = torch.tensor([[True, False, False]])
    negative = torch.tensor([[False, True, False]])
    objectness_loss, box_loss = rpn_loss(objectness, deltas, targets, positive, negative)
    assert math.isclose(objectness_loss.item(), math.log(2), rel_tol=1e-6)
    # |d| = 1 >= 1/9 on the positive's four coordinates: 4 * (1 - 1/18), over 2 sampled anchors
    assert math.isclose(box_loss.item(), 4 * (1 - 1 / 18) / 2, rel_tol=1e-6)


def test_rpn_loss_matches_torchvision(gen):
    anchors = AnchorGenerator(strides=[16], sizes=[[32, 64, 128]])((256, 256))
    gt = [random_boxes(4, gen, image=200, max_size=120, min_size=16), torch.zeros(0, 4)]
    labels, matched = label_anchors(anchors, gt)
    targets = BoxCoder().encode(matched, anchors)
    objectness = torch.randn(2, len(anchors), generator=gen)
    deltas = torch.randn(2, len(anchors), 4, generator=gen)
    positive, negative = balanced_sample(labels, 256, 0.5, torch.Generator().manual_seed(1))
    theirs = torchvision_rpn()
    theirs.fg_bg_sampler = lambda _: (list(positive), list(negative))
    tv_targets = TorchvisionBoxCoder((1.0, 1.0, 1.0, 1.0)).encode(list(matched[:1]), [anchors])
    expected = theirs.compute_loss(
        objectness, deltas.reshape(-1, 4), list(labels), [tv_targets[0], targets[1]]
    )
    for ours, tv in zip(rpn_loss(objectness, deltas, targets, positive, negative), expected):
        torch.testing.assert_close(ours, tv)


def test_rpn_loss_ignores_unsampled_nan_and_empty_batches():
    objectness = torch.tensor([[0.5, math.nan, 1.0]], requires_grad=True)
    deltas = torch.tensor([[[0.1] * 4, [math.inf] * 4, [0.2] * 4]], requires_grad=True)
    targets = torch.zeros(1, 3, 4)
    positive = torch.tensor([[True, False, False]])
    negative = torch.tensor([[False, False, True]])
    losses = rpn_loss(objectness, deltas, targets, positive, negative)
    sum(losses).backward()
    assert all(torch.isfinite(loss) for loss in losses)
    assert bool(torch.isfinite(objectness.grad).all() and torch.isfinite(deltas.grad).all())
    nothing = torch.zeros(1, 3, dtype=torch.bool)
    losses = rpn_loss(objectness, deltas, targets, nothing, nothing)
    assert [loss.item() for loss in losses] == [0.0, 0.0]


def test_gradients_reach_both_rpn_branches(gen):
    # The seed's .data bug: the box loss must train bbox_pred, the objectness cls_logits.
    features, anchors, _ = two_level_setup(gen, batch=1)
    head = RPNHead(8, 6)
    objectness, deltas = head(features)
    labels, matched = label_anchors(anchors, [torch.tensor([[10.0, 20.0, 60.0, 90.0]])])
    positive, negative = balanced_sample(labels, 64, 0.5, torch.Generator().manual_seed(0))
    objectness_loss, box_loss = rpn_loss(
        objectness, deltas, BoxCoder().encode(matched, anchors), positive, negative
    )
    # Each loss must reach its own branch, weight and bias, and not the other branch. Non-zero is
    # asserted of the biases only: a weight's gradient is exactly zero whenever the ReLU features
    # at the sampled positives are all zero, which happens for about one initialisation in 200.
    for loss, own, other in (
        (box_loss, head.bbox_pred, head.cls_logits),
        (objectness_loss, head.cls_logits, head.bbox_pred),
    ):
        grads = torch.autograd.grad(
            loss, [own.weight, own.bias, other.weight, other.bias], allow_unused=True
        )
        own_weight, own_bias, other_weight, other_bias = grads
        assert own_weight is not None and own_bias.norm() > 0
        assert other_weight is None and other_bias is None


def test_rpn_loss_errors():
    objectness, deltas = torch.zeros(1, 3), torch.zeros(1, 3, 4)
    mask = torch.zeros(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="rpn_loss: positive must be a bool tensor"):
        rpn_loss(objectness, deltas, deltas, mask.float(), mask)
    with pytest.raises(ValueError, match=r"rpn_loss: deltas must have shape \[1, 3, 4\]"):
        rpn_loss(objectness, deltas[:, :2], deltas, mask, mask)
    with pytest.raises(TypeError, match="rpn_loss: objectness must be a torch.Tensor"):
        rpn_loss([0.0], deltas, deltas, mask, mask)


# ----------------------------------------------------------------------------- proposals
@pytest.mark.parametrize("pre_nms_top_n, post_nms_top_n", [(1000, 300), (50, 40), (5, 1000)])
def test_proposals_match_torchvision(pre_nms_top_n, post_nms_top_n, gen):
    features, anchors, per_level = two_level_setup(gen, batch=3)
    objectness = torch.randn(3, len(anchors), generator=gen)  # no ties
    deltas = 0.3 * torch.randn(3, len(anchors), 4, generator=gen)
    sizes = [(128, 160), (100, 150), (128, 90)]
    boxes, scores = generate_proposals(
        anchors,
        objectness,
        deltas,
        sizes,
        per_level,
        pre_nms_top_n,
        post_nms_top_n,
        nms_threshold=0.6,
    )
    theirs = torchvision_rpn(pre_nms_top_n, post_nms_top_n, nms_thresh=0.6)
    decoded = theirs.box_coder.decode(deltas.reshape(-1, 4), [anchors] * 3).view(3, -1, 4)
    tv_boxes, tv_scores = theirs.filter_proposals(decoded, objectness, sizes, per_level)
    for image in range(3):
        assert torch.equal(boxes[image], tv_boxes[image])
        assert torch.equal(scores[image], tv_scores[image])
        assert len(boxes[image]) <= post_nms_top_n


def test_proposals_score_threshold_matches_torchvision(gen):
    anchors = AnchorGenerator(strides=[16], sizes=[[32, 64]])((128, 128))
    objectness = torch.randn(2, len(anchors), generator=gen)
    deltas = 0.2 * torch.randn(2, len(anchors), 4, generator=gen)
    boxes, scores = generate_proposals(anchors, objectness, deltas, (128, 128), score_threshold=0.6)
    theirs = torchvision_rpn(2000, 2000, score_thresh=0.6)
    decoded = theirs.box_coder.decode(deltas.reshape(-1, 4), [anchors] * 2).view(2, -1, 4)
    tv_boxes, tv_scores = theirs.filter_proposals(
        decoded, objectness, [(128, 128)] * 2, [len(anchors)]
    )
    for ours, tv in zip(boxes + scores, tv_boxes + tv_scores):
        assert torch.equal(ours, tv)
    assert all(bool((s >= 0.6).all()) for s in scores)


def test_proposals_by_hand():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [-20.0, 0.0, -10.0, 5.0],
            [20.0, 20.0, 40.0, 40.0],
        ]
    )
    objectness = torch.tensor([[2.0, 3.0, 5.0, 1.0]])
    deltas = torch.zeros(1, 4, 4)
    boxes, scores = generate_proposals(anchors, objectness, deltas, (30, 30), nms_threshold=0.7)
    # Anchor 2 lies off the image: clipped to nothing and dropped. Anchors 0 and 1 overlap at
    # IoU 9/11 > 0.7: the better one (1) stays. Anchor 3 is clipped to the image.
    expected = torch.tensor([[1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert torch.equal(boxes[0], expected)
    torch.testing.assert_close(scores[0], torch.sigmoid(torch.tensor([3.0, 1.0])))
    boxes, _ = generate_proposals(anchors, objectness, deltas, (30, 30), min_size=10.5)
    assert len(boxes[0]) == 0  # nothing is 10.5 pixels wide after clipping


def test_proposals_are_detached_and_empty_inputs_work():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    objectness = torch.zeros(2, 1, requires_grad=True)
    deltas = torch.zeros(2, 1, 4, requires_grad=True)
    boxes, scores = generate_proposals(anchors, objectness, deltas, (20, 20))
    assert len(boxes) == 2 and not boxes[0].requires_grad and not scores[0].requires_grad
    boxes, scores = generate_proposals(
        torch.zeros(0, 4), torch.zeros(2, 0), torch.zeros(2, 0, 4), (20, 20)
    )
    assert [b.shape for b in boxes] == [(0, 4), (0, 4)] and [s.shape for s in scores] == [(0,)] * 2
    boxes, scores = generate_proposals(anchors, torch.zeros(0, 1), torch.zeros(0, 1, 4), (20, 20))
    assert boxes == [] and scores == []


def test_proposals_errors():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 5.0]])
    objectness, deltas = torch.zeros(2, 2), torch.zeros(2, 2, 4)
    with pytest.raises(ValueError, match="generate_proposals: image_size must be one"):
        generate_proposals(anchors, objectness, deltas, [(10, 10)] * 3)
    with pytest.raises(ValueError, match="num_anchors_per_level must add up to the 2 anchors"):
        generate_proposals(anchors, objectness, deltas, (10, 10), [1, 2])
    with pytest.raises(ValueError, match=r"objectness must have shape \[B, N\] with N = 2"):
        generate_proposals(anchors, objectness[:, :1], deltas, (10, 10))
    with pytest.raises(ValueError, match=r"generate_proposals: deltas must have shape \[2, 2, 4\]"):
        generate_proposals(anchors, objectness, deltas[..., :2], (10, 10))
    with pytest.raises(ValueError, match="generate_proposals: pre_nms_top_n must be >= 0"):
        generate_proposals(anchors, objectness, deltas, (10, 10), pre_nms_top_n=-1)
