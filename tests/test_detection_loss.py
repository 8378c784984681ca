"""detection_loss: equal to a per-image loop (the seeds' algorithm, bugs fixed) and to
torchvision's RetinaNet head losses; gradients, edge cases and errors."""

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import Matcher as TorchvisionMatcher
from torchvision.models.detection.retinanet import RetinaNetHead

from detlib import AnchorGenerator, BoxCoder, Matcher
from detlib.losses import DetectionLoss, _match_batch, detection_loss
from tests.conftest import random_boxes

SEED_MATCHER = Matcher(0.5, 0.4)  # the seeds: no low-quality matches
SEED_CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))  # the seeds divide by (0.1, 0.1, 0.2, 0.2)
ANCHORS_128 = AnchorGenerator.retinanet()((128, 128)).double()  # 3,069 anchors


# ----------------------------------------------------------------------------- references
def seed_iou(anchors, boxes):
    """IoU of the RetinaNet seed (003): [N, G], union clamped at 1e-8."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iw = torch.min(anchors[:, 2:3], boxes[:, 2]) - torch.max(anchors[:, 0:1], boxes[:, 0])
    ih = torch.min(anchors[:, 3:4], boxes[:, 3]) - torch.max(anchors[:, 1:2], boxes[:, 1])
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    anchor_area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    return inter / (anchor_area[:, None] + area - inter).clamp(min=1e-8)


def seed_loop(logits, deltas, anchors, annotations, alpha=0.25, gamma=2.0):
    """The seeds' per-image loss with their bugs fixed: tensors made on the inputs' device, an
    IoU that returns, probabilities from logits without clamping (the inputs here are float64).

    annotations: [B, G, 5] rows (x1, y1, x2, y2, class), class -1 for padding.
    Returns per-image classification sums, regression sums (over the 4 offsets), positives.
    """
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    acx, acy = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    cls_sums, box_sums, positives = [], [], []
    for j in range(logits.shape[0]):
        p = torch.sigmoid(logits[j])
        ann = annotations[j][annotations[j][:, 4] != -1]
        if ann.shape[0] == 0:
            cls_sums.append(((1 - alpha) * p**gamma * -torch.log(1 - p)).sum())
            box_sums.append(torch.zeros((), dtype=logits.dtype))
            positives.append(0)
            continue
        iou_max, iou_arg = seed_iou(anchors, ann[:, :4]).max(dim=1)
        targets = -torch.ones_like(p)
        targets[iou_max < 0.4] = 0
        pos = iou_max >= 0.5
        assigned = ann[iou_arg]
        targets[pos] = 0
        targets[pos, assigned[pos, 4].long()] = 1
        a = torch.where(targets == 1, alpha, 1 - alpha)
        w = a * torch.where(targets == 1, 1 - p, p) ** gamma
        bce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
        cls_sums.append(torch.where(targets != -1, w * bce, 0).sum())
        positives.append(int(pos.sum()))
        if pos.any():
            g = assigned[pos]
            gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
            gcx, gcy = g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
            t = torch.stack(
                (
                    (gcx - acx[pos]) / aw[pos] / 0.1,
                    (gcy - acy[pos]) / ah[pos] / 0.1,
                    torch.log(gw / aw[pos]) / 0.2,
                    torch.log(gh / ah[pos]) / 0.2,
                ),
                dim=1,
            )
            diff = (t - deltas[j][pos]).abs()
            box_sums.append(torch.where(diff <= 1 / 9, 4.5 * diff**2, diff - 0.5 / 9).sum())
        else:
            box_sums.append(torch.zeros((), dtype=logits.dtype))
    return torch.stack(cls_sums), torch.stack(box_sums), torch.tensor(positives)


def make_batch(gen, counts, num_classes=6, anchors=ANCHORS_128, pad_value=float("nan")):
    """Logits, deltas and padded annotations for images with `counts` boxes each."""
    batch, n = len(counts), len(anchors)
    logits = torch.randn(batch, n, num_classes, generator=gen, dtype=torch.float64) * 2 - 2
    deltas = torch.randn(batch, n, 4, generator=gen, dtype=torch.float64)
    size = 128.0
    g = max(counts + [0]) + 1  # at least one padding row everywhere
    annotations = torch.full((batch, g, 5), pad_value, dtype=torch.float64)
    annotations[..., 4] = -1
    for i, k in enumerate(counts):
        annotations[i, :k, :4] = random_boxes(k, gen, image=size - 40, max_size=60, min_size=12)
        annotations[i, :k, 4] = torch.randint(0, num_classes, (k,), generator=gen).double()
    return logits, deltas, annotations


def split(annotations):
    return annotations[..., :4], annotations[..., 4].long()


# ----------------------------------------------------------------------------- the seeds' loop
@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0], [7]])
def test_equals_the_seed_loop_per_image(gen, counts):
    logits, deltas, annotations = make_batch(gen, counts)
    cls_sums, box_sums, positives = seed_loop(logits, deltas, ANCHORS_128, annotations)
    ours = detection_loss(
        logits, deltas, ANCHORS_128, *split(annotations), SEED_MATCHER, SEED_CODER,
        normalize="image",
    )  # fmt: skip
    per_image = positives.clamp(min=1).double()
    assert torch.equal(ours.num_positive, positives)
    assert torch.allclose(ours.classification, (cls_sums / per_image).mean(), rtol=1e-12)
    # The seeds average over the 4 offsets (a mean), detlib sums them: a factor of 4.
    seed_regression = (box_sums / (4 * per_image)).mean()
    assert torch.allclose(ours.regression, 4 * seed_regression, rtol=1e-12, atol=1e-15)


def test_equals_the_seed_loop_normalised_over_the_batch(gen):
    logits, deltas, annotations = make_batch(gen, [2, 0, 6, 1, 4])
    cls_sums, box_sums, positives = seed_loop(logits, deltas, ANCHORS_128, annotations)
    ours = detection_loss(
        logits, deltas, ANCHORS_128, *split(annotations), SEED_MATCHER, SEED_CODER
    )
    total = positives.sum().double()
    assert total > 0
    assert torch.allclose(ours.classification, cls_sums.sum() / total, rtol=1e-12)
    assert torch.allclose(ours.regression, box_sums.sum() / total, rtol=1e-12)
    assert torch.allclose(ours.total, ours.classification + ours.regression)


def test_the_batch_has_ignored_anchors_and_they_are_excluded(gen):
    logits, deltas, annotations = make_batch(gen, [4, 3])
    boxes, labels = split(annotations)
    iou = torchvision.ops.box_iou(boxes[0, :4], ANCHORS_128).amax(dim=0)
    ignored = (iou >= 0.4) & (iou < 0.5)
    assert ignored.sum() > 10
    before = detection_loss(logits, deltas, ANCHORS_128, boxes, labels, SEED_MATCHER)
    wild = logits.clone()
    wild[0, ignored] = 50.0  # confidently wrong, if they counted
    after_logits = wild.requires_grad_()
    after = detection_loss(after_logits, deltas, ANCHORS_128, boxes, labels, SEED_MATCHER)
    assert torch.allclose(before.classification, after.classification, rtol=1e-12)
    (grad,) = torch.autograd.grad(after.total, after_logits)
    assert torch.all(grad[0, ignored] == 0)
    assert torch.all(grad[0, ~ignored].abs().sum(dim=1) > 0)


# ----------------------------------------------------------------------------- torchvision
def torchvision_losses(logits, deltas, anchors, boxes, labels, loss_type):
    head = RetinaNetHead(in_channels=8, num_anchors=9, num_classes=logits.shape[2])
    head.regression_head._loss_type = loss_type
    matcher = TorchvisionMatcher(0.5, 0.4, allow_low_quality_matches=True)
    targets, matched = [], []
    for b, l in zip(boxes, labels):
        targets.append({"boxes": b, "labels": l})
        if len(b) == 0:
            matched.append(torch.full((len(anchors),), -1, dtype=torch.int64))
        else:
            matched.append(matcher(torchvision.ops.box_iou(b, anchors)))
    outputs = {"cls_logits": logits, "bbox_regression": deltas}
    return head.compute_loss(targets, outputs, [anchors] * len(boxes), matched)


@pytest.mark.parametrize("loss_type, beta", [("l1", 0.0), ("smooth_l1", 1.0)])
def test_equals_torchvision_retinanet_head(gen, loss_type, beta):
    logits, deltas, annotations = make_batch(gen, [3, 0, 5, 1])
    boxes = [a[a[:, 4] >= 0, :4] for a in annotations]
    labels = [a[a[:, 4] >= 0, 4].long() for a in annotations]
    logits.requires_grad_()
    deltas.requires_grad_()
    theirs = torchvision_losses(logits, deltas, ANCHORS_128, boxes, labels, loss_type)
    ours = detection_loss(logits, deltas, ANCHORS_128, boxes, labels, beta=beta, normalize="image")
    assert torch.allclose(ours.classification, theirs["classification"], rtol=1e-12)
    assert torch.allclose(ours.regression, theirs["bbox_regression"], rtol=1e-12)
    ours_grads = torch.autograd.grad(ours.total, (logits, deltas))
    their_total = theirs["classification"] + theirs["bbox_regression"]
    their_grads = torch.autograd.grad(their_total, (logits, deltas))
    for a, b in zip(ours_grads, their_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-15)


def test_batched_matching_equals_torchvision_matcher_per_image(gen):
    anchors = AnchorGenerator.retinanet()((256, 256))
    counts = [5, 0, 1, 9]
    boxes = torch.zeros(4, 10, 4)
    labels = torch.full((4, 10), -1)
    for i, k in enumerate(counts):
        boxes[i, :k] = random_boxes(k, gen, image=220, max_size=150, min_size=4)
        labels[i, :k] = 0
    for low_quality in (False, True):
        matched = _match_batch(anchors, boxes, labels >= 0, Matcher(0.5, 0.4, low_quality))
        tv = TorchvisionMatcher(0.5, 0.4, allow_low_quality_matches=low_quality)
        for i, k in enumerate(counts):
            expected = tv(torchvision.ops.box_iou(boxes[i, :k], anchors)) if k else -1
            assert torch.equal(matched[i], torch.as_tensor(expected).expand(len(anchors)))


# ----------------------------------------------------------------------------- inputs
def test_list_input_equals_padded_input_whatever_the_padding(gen):
    logits, deltas, annotations = make_batch(gen, [3, 0, 2])
    boxes, labels = split(annotations)
    padded = detection_loss(logits, deltas, ANCHORS_128, boxes, labels)
    per_image = detection_loss(
        logits, deltas, ANCHORS_128, [b[l >= 0] for b, l in zip(boxes, labels)],
        [l[l >= 0] for l in labels],
    )  # fmt: skip
    # padding first, with junk (negative sizes) instead of NaN
    flipped_boxes = torch.cat((torch.full_like(boxes[:, :1], -7.0), boxes), dim=1)
    flipped_labels = torch.cat((torch.full_like(labels[:, :1], -1), labels), dim=1)
    flipped = detection_loss(logits, deltas, ANCHORS_128, flipped_boxes, flipped_labels)
    for other in (per_image, flipped):
        for a, b in zip(padded, other):
            assert torch.allclose(a, b, rtol=1e-12)


@settings(max_examples=25)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=4), st.integers(0, 2**31))
def test_image_order_and_duplicates_do_not_matter(counts, seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = AnchorGenerator.retinanet()((64, 64)).double()
    logits, deltas, annotations = make_batch(gen, counts, num_classes=3, anchors=anchors)
    boxes, labels = split(annotations)
    loss = detection_loss(logits, deltas, anchors, boxes, labels)
    order = torch.randperm(len(counts), generator=gen)
    shuffled = detection_loss(logits[order], deltas[order], anchors, boxes[order], labels[order])
    assert torch.allclose(loss.total, shuffled.total, rtol=1e-12)
    twice = detection_loss(
        logits.repeat(2, 1, 1), deltas.repeat(2, 1, 1), anchors, boxes.repeat(2, 1, 1),
        labels.repeat(2, 1),
    )  # fmt: skip
    if loss.num_positive.sum() > 0:  # otherwise the divisor is max(1, 0) = 1 for both
        assert torch.allclose(loss.total, twice.total, rtol=1e-12)  # sums over sums


def test_by_hand_one_anchor_one_box():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 20.0]]])  # IoU 0.5 with anchor 0, 0 with anchor 1
    labels = torch.tensor([[1]])
    logits = torch.zeros(1, 2, 2)  # p = 0.5 everywhere
    deltas = torch.zeros(1, 2, 4)
    loss = detection_loss(logits, deltas, anchors, boxes, labels, beta=0.0)
    # anchor 0: class 1 positive (0.25), class 0 negative (0.75); anchor 1: two negatives.
    # focal term at p = 0.5: 0.5**2 * log(2) for each entry.
    term = 0.25 * math.log(2)
    assert loss.num_positive.tolist() == [1]
    assert loss.classification.item() == pytest.approx((0.25 + 3 * 0.75) * term)
    # targets: centre (5, 10) vs (5, 5) -> ty = 0.5; th = log(2); L1 = 0.5 + log 2
    assert loss.regression.item() == pytest.approx(0.5 + math.log(2))


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "alpha, gamma, normalize", [(0.25, 2.0, "batch"), (-1.0, 0.0, "image"), (0.5, 1.5, "batch")]
)
def test_gradcheck(gen, alpha, gamma, normalize):
    anchors = AnchorGenerator(strides=[16], sizes=[24], aspect_ratios=(0.5, 2.0))((32, 32))
    anchors = anchors.double()
    boxes = torch.tensor([[[2.0, 3.0, 20.0, 28.0]], [[0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[1], [-1]])
    logits = torch.randn(2, len(anchors), 3, generator=gen, dtype=torch.float64)
    deltas = torch.randn(2, len(anchors), 4, generator=gen, dtype=torch.float64) * 0.5
    loss = detection_loss(logits, deltas, anchors, boxes, labels, alpha=alpha, gamma=gamma)
    assert loss.num_positive[0] > 0

    def total(x, d):
        return detection_loss(
            x, d, anchors, boxes, labels, alpha=alpha, gamma=gamma, normalize=normalize
        ).total

    inputs = (logits.requires_grad_(), deltas.requires_grad_())
    assert torch.autograd.gradcheck(total, inputs, fast_mode=normalize == "batch")


def test_gradients_are_finite_for_extreme_logits(gen):
    logits, deltas, annotations = make_batch(gen, [3, 2])
    logits = (torch.sign(logits) * 300.0).float().requires_grad_()
    deltas = (deltas * 100).float().requires_grad_()
    boxes, labels = split(annotations.float())
    loss = detection_loss(logits, deltas, ANCHORS_128.float(), boxes, labels)
    loss.total.backward()
    assert torch.isfinite(loss.total)
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(gen, dtype):
    logits, deltas, annotations = make_batch(gen, [3, 1])
    boxes, labels = split(annotations)
    reference = detection_loss(
        logits.to(dtype).float(), deltas.to(dtype).float(), ANCHORS_128.float(), boxes, labels
    )
    low = detection_loss(logits.to(dtype), deltas.to(dtype), ANCHORS_128.to(dtype), boxes, labels)
    assert low.total.dtype == torch.float32
    assert torch.allclose(low.total, reference.total, rtol=1e-3)


# ----------------------------------------------------------------------------- edge cases
def test_empty_batch_no_anchors_no_boxes():
    anchors = AnchorGenerator.retinanet()((64, 64))
    empty = detection_loss(
        torch.zeros(0, len(anchors), 3), torch.zeros(0, len(anchors), 4), anchors,
        torch.zeros(0, 0, 4), torch.zeros(0, 0, dtype=torch.int64),
    )  # fmt: skip
    assert isinstance(empty, DetectionLoss)
    assert empty.total.item() == 0.0 and empty.num_positive.shape == (0,)
    assert (
        detection_loss(torch.zeros(0, 5, 3), torch.zeros(0, 5, 4), anchors[:5], [], []).total.item()
        == 0.0
    )

    no_anchors = detection_loss(
        torch.zeros(2, 0, 3), torch.zeros(2, 0, 4), torch.zeros(0, 4),
        torch.tensor([[[1.0, 1.0, 9.0, 9.0]]]).repeat(2, 1, 1), torch.zeros(2, 1).long(),
    )  # fmt: skip
    assert no_anchors.total.item() == 0.0 and no_anchors.num_positive.tolist() == [0, 0]

    logits = torch.zeros(2, len(anchors), 3, requires_grad=True)
    deltas = torch.zeros(2, len(anchors), 4, requires_grad=True)
    no_boxes = detection_loss(
        logits, deltas, anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64)
    )
    # all negative, p = 0.5: 0.75 * 0.25 * log 2 per entry, divided by max(1, 0)
    assert no_boxes.classification.item() == pytest.approx(
        2 * len(anchors) * 3 * 0.75 * 0.25 * math.log(2), rel=1e-5
    )
    assert no_boxes.regression.item() == 0.0 and no_boxes.regression.requires_grad
    no_boxes.total.backward()
    assert torch.all(deltas.grad == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_values_on_cuda(gen):
    logits, deltas, annotations = make_batch(gen, [3, 0, 2])
    boxes, labels = split(annotations)
    cpu = detection_loss(logits, deltas, ANCHORS_128, boxes, labels)
    cuda = detection_loss(
        logits.cuda(), deltas.cuda(), ANCHORS_128.cuda(), boxes.cuda(), labels.cuda()
    )
    for a, b in zip(cpu, cuda):
        assert b.device.type == "cuda"
        assert torch.allclose(a, b.cpu(), rtol=1e-9)


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    anchors = AnchorGenerator.retinanet()((64, 64))
    n = len(anchors)
    x, d = torch.zeros(2, n, 3), torch.zeros(2, n, 4)
    boxes = torch.tensor([[[1.0, 1.0, 20.0, 20.0]], [[0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0], [-1]])
    cases = [
        ((torch.zeros(n, 3), d, anchors, boxes, labels), ValueError, r"cls_logits must have shape \[B, N, C\]"),
        ((x.long(), d, anchors, boxes, labels), TypeError, "cls_logits must have a floating-point"),
        ((x, d[:, :-1], anchors, boxes, labels), ValueError, r"box_deltas must have shape \[B, N, 4\]"),
        ((x, d, anchors[:-1], boxes, labels), ValueError, r"anchors must have shape \[N, 4\] with N = "),
        ((x, d, anchors, boxes[0], labels), ValueError, r"gt_boxes must have shape \[B, G, 4\] with B = 2"),
        ((x, d, anchors, boxes, labels[:, :0]), ValueError, r"gt_labels must have shape \[B, G\] = \[2, 1\]"),
        ((x, d, anchors, boxes, labels.float()), TypeError, "gt_labels must have an integer dtype"),
        ((x, d, anchors, boxes, labels + 3), ValueError, r"gt_labels must be class indices in \[0, 3\)"),
        ((x, d, anchors, boxes, [labels[0]]), TypeError, "gt_boxes and gt_labels must both be padded tensors"),
        ((x, d, anchors, [boxes[0]], [labels[0]]), ValueError, "gt_boxes and gt_labels must hold one tensor per image"),
        ((x, d, anchors, [boxes[0], boxes[1, :0]], [labels[0]] * 2), ValueError, r"gt_labels\[1\] must have shape"),
        ((x, d, anchors, boxes.to("meta"), labels), ValueError, "cls_logits is on cpu but gt_boxes is on meta"),
    ]  # fmt: skip
    for args, error, message in cases:
        with pytest.raises(error, match="detection_loss: " + message):
            detection_loss(*args)
    zero_size = boxes.clone()
    zero_size[0, 0, 2] = 1.0
    with pytest.raises(ValueError, match="detection_loss: gt_boxes has 1 box"):
        detection_loss(x, d, anchors, zero_size, labels)
    with pytest.raises(ValueError, match="normalize must be 'batch' or 'image'"):
        detection_loss(x, d, anchors, boxes, labels, normalize="mean")
    with pytest.raises(TypeError, match="matcher must be a detlib.Matcher"):
        detection_loss(x, d, anchors, boxes, labels, matcher=(0.5, 0.4))
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        detection_loss(x, d, anchors, boxes, labels, gamma=-2)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        detection_loss(x, d, anchors, boxes, labels, beta=-0.1)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        detection_loss(x, d, anchors, boxes, labels, alpha=1.5)
