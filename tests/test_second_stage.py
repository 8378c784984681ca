"""detlib.second_stage (proposal sampling, Fast R-CNN head and loss): hand-made cases, parity
with torchvision's RoIHeads pieces, empty inputs and argument errors; the whole two-stage
pipeline on each device."""

import math

import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from detlib import BoxCoder
from detlib.roi.multiscale import multiscale_roi_align
from detlib.rpn import RPNHead, generate_proposals, label_anchors, rpn_loss
from detlib.sampling import balanced_sample
from detlib.second_stage import FastRCNNHead, fast_rcnn_loss, sample_proposals
from tests.conftest import random_boxes
from tests.test_rpn import two_level_setup

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------- sample_proposals
def test_sample_proposals_by_hand():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]])
    proposals = torch.tensor(
        [
            [0.0, 0.0, 10.0, 8.0],  # IoU 0.8 with box 0
            [20.0, 20.0, 30.0, 30.0],  # 0.5 with box 1: positive
            [50.0, 50.0, 60.0, 60.0],
        ]
    )  # background
    samples = sample_proposals([proposals], [gt], [torch.tensor([3, 1])], add_gt_boxes=False)
    assert samples.labels[0].tolist() == [3, 1, 0]
    assert samples.matched_gt[0].tolist() == [0, 1, -1]
    assert torch.equal(samples.boxes[0], proposals)
    # Box 0 from proposal 0: same centre x and width; centre y 5 vs 4 over height 8, times 10;
    # log(10 / 8) times 5.
    expected = torch.tensor([0.0, 10 * 1 / 8, 0.0, 5 * math.log(10 / 8)])
    torch.testing.assert_close(samples.regression_targets[0][0], expected)
    with_gt = sample_proposals([proposals], [gt], [torch.tensor([3, 1])])
    assert with_gt.labels[0].tolist() == [3, 1, 0, 3, 1]  # the boxes come last, as themselves
    assert bool((with_gt.regression_targets[0][3:] == 0).all())


def test_sample_proposals_quota(gen):
    gt = random_boxes(3, gen, image=300, max_size=100, min_size=20)
    jittered = gt.repeat(100, 1) + torch.randn(300, 4, generator=gen)  # many positives
    background = random_boxes(400, gen, image=400, max_size=20, min_size=1) + 500
    samples = sample_proposals(
        [torch.cat([jittered, background])],
        [gt],
        [torch.tensor([1, 2, 3])],
        generator=torch.Generator().manual_seed(0),
    )
    assert len(samples.boxes[0]) == 128 and int((samples.labels[0] > 0).sum()) == 32


def test_sample_proposals_match_torchvision(gen):
    proposals = [
        random_boxes(200, gen, image=300, max_size=150, min_size=2),
        random_boxes(150, gen, image=300, max_size=150, min_size=2),
    ]
    gt = [random_boxes(4, gen, image=300, max_size=150, min_size=10), torch.zeros(0, 4)]
    gt_labels = [torch.tensor([1, 4, 2, 2]), torch.zeros(0, dtype=torch.int64)]
    heads = tv_roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 128, 0.25, None, 0.05, 0.5, 100)
    candidates = heads.add_gt_proposals(proposals, gt)
    _, tv_labels = heads.assign_targets_to_proposals(candidates, gt, gt_labels)
    padded = torch.full((2, 204), -1)
    for image, labels in enumerate(tv_labels):
        padded[image, : len(labels)] = labels
    positive, negative = balanced_sample(padded, 128, 0.25, torch.Generator().manual_seed(5))
    heads.fg_bg_sampler = lambda labels: (
        [positive[i, : len(lab)] for i, lab in enumerate(labels)],
        [negative[i, : len(lab)] for i, lab in enumerate(labels)],
    )
    expected = heads.select_training_samples(
        [p.clone() for p in proposals], [{"boxes": b, "labels": c} for b, c in zip(gt, gt_labels)]
    )
    ours = sample_proposals(proposals, gt, gt_labels, generator=torch.Generator().manual_seed(5))
    tv_boxes, tv_matched, tv_labels, tv_targets = expected
    for image in range(2):
        assert torch.equal(ours.boxes[image], tv_boxes[image])
        assert torch.equal(ours.labels[image], tv_labels[image])
        assert torch.equal(ours.matched_gt[image].clamp(min=0), tv_matched[image])
    torch.testing.assert_close(ours.regression_targets[0], tv_targets[0])
    # Without boxes, torchvision encodes a zero box (infinite targets); here the RoI itself.
    assert bool((ours.regression_targets[1] == 0).all()) and bool((ours.labels[1] == 0).all())
    assert bool((ours.matched_gt[1] == -1).all())


def test_sample_proposals_errors():
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    with pytest.raises(ValueError, match=r"gt_labels\[0\] must be an int64 Tensor\[1\]"):
        sample_proposals(boxes, boxes, [torch.tensor([1.0])])
    with pytest.raises(ValueError, match=r"gt_labels\[0\] must hold classes >= 1"):
        sample_proposals(boxes, boxes, [torch.tensor([0])])
    with pytest.raises(ValueError, match=r"proposals\[0\] has 1 box\(es\) of zero or negative"):
        sample_proposals([torch.tensor([[0.0, 0.0, 0.0, 4.0]])], boxes, [torch.tensor([1])])
    with pytest.raises(ValueError, match="one tensor per image, got 2 and 1"):
        sample_proposals(boxes * 2, boxes, [torch.tensor([1])])


# ----------------------------------------------------------------------------- second stage
def test_fast_rcnn_head_matches_torchvision(gen):
    head = FastRCNNHead(3, (5, 4), num_classes=6, representation_size=32)
    mlp, predictor = TwoMLPHead(3 * 5 * 4, 32), FastRCNNPredictor(32, 6)
    state = head.state_dict()
    mlp.load_state_dict({k: v for k, v in state.items() if k.startswith("fc")})
    predictor.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc")})
    pooled = torch.randn(7, 3, 5, 4, generator=gen)
    for ours, theirs in zip(head(pooled), predictor(mlp(pooled))):
        assert torch.equal(ours, theirs)
    with pytest.raises(ValueError, match=r"FastRCNNHead: pooled must have shape \[R, 3, 5, 4\]"):
        head(torch.zeros(7, 3, 4, 5))
    with pytest.raises(ValueError, match="FastRCNNHead: num_classes must be >= 2"):
        FastRCNNHead(3, 5, num_classes=1)


def test_fast_rcnn_loss_by_hand_and_against_torchvision(gen):
    logits = torch.zeros(2, 3)
    regression = torch.zeros(2, 12)
    regression[0, 8:] = 1.0  # class 2's offsets for RoI 0
    labels = torch.tensor([2, 0])
    targets = torch.zeros(2, 4)
    classification, box = fast_rcnn_loss(logits, regression, labels, targets)
    assert math.isclose(classification.item(), math.log(3), rel_tol=1e-6)
    assert math.isclose(box.item(), 4 * (1 - 1 / 18) / 2, rel_tol=1e-6)  # background: no box

    logits = torch.randn(50, 5, generator=gen, requires_grad=True)
    regression = torch.randn(50, 20, generator=gen, requires_grad=True)
    labels = torch.randint(0, 5, (50,), generator=gen)
    targets = torch.randn(50, 4, generator=gen)
    ours = fast_rcnn_loss(logits, regression, labels, targets)
    theirs = tv_roi_heads.fastrcnn_loss(logits, regression, [labels], [targets])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    grads = [torch.autograd.grad(sum(pair), [logits, regression]) for pair in (ours, theirs)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_fast_rcnn_loss_empty_and_errors():
    logits = torch.zeros(0, 3, requires_grad=True)
    losses = fast_rcnn_loss(
        logits, torch.zeros(0, 12), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4)
    )
    assert [loss.item() for loss in losses] == [0.0, 0.0]
    sum(losses).backward()
    with pytest.raises(ValueError, match=r"fast_rcnn_loss: labels must be in \[0, 3\)"):
        fast_rcnn_loss(torch.zeros(1, 3), torch.zeros(1, 12), torch.tensor([3]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"box_regression must have shape \[1, 12\]"):
        fast_rcnn_loss(torch.zeros(1, 3), torch.zeros(1, 4), torch.tensor([1]), torch.zeros(1, 4))
    with pytest.raises(TypeError, match="fast_rcnn_loss: labels must be int64"):
        fast_rcnn_loss(
            torch.zeros(1, 3), torch.zeros(1, 12), torch.tensor([1.0]), torch.zeros(1, 4)
        )
    with pytest.raises(ValueError, match=r"fast_rcnn_loss: beta must be >= 0, got -1"):
        fast_rcnn_loss(
            torch.zeros(1, 3), torch.zeros(1, 12), torch.tensor([1]), torch.zeros(1, 4), beta=-1
        )


# ----------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_stays_on_device(device, gen):
    features, anchors, per_level = two_level_setup(gen, batch=2)
    features = [f.to(device) for f in features]
    anchors = anchors.to(device)
    head = RPNHead(8, 6).to(device)
    objectness, deltas = head(features)
    gt = [torch.tensor([[10.0, 20.0, 60.0, 90.0]], device=device), torch.zeros(0, 4, device=device)]
    labels, matched = label_anchors(anchors, gt)
    positive, negative = balanced_sample(labels, 64, 0.5, torch.Generator().manual_seed(0))
    losses = rpn_loss(objectness, deltas, BoxCoder().encode(matched, anchors), positive, negative)
    boxes, _ = generate_proposals(anchors, objectness, deltas, (128, 160), per_level)
    samples = sample_proposals(
        boxes,
        gt,
        [torch.tensor([1], device=device), torch.zeros(0, dtype=torch.int64, device=device)],
    )
    pooled = multiscale_roi_align(features, samples.boxes, 7, [1 / 8, 1 / 16])
    class_logits, regression = FastRCNNHead(8, 7, 3, 16).to(device)(pooled)
    second = fast_rcnn_loss(
        class_logits, regression, torch.cat(samples.labels), torch.cat(samples.regression_targets)
    )
    for t in [*losses, *boxes, *samples.boxes, pooled, *second]:
        assert t.device.type == device
    sum(losses + second).backward()
    assert head.bbox_pred.weight.grad.norm() > 0 and head.cls_logits.weight.grad.norm() > 0
