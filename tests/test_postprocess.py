"""Decoding head outputs into detections: hand-computed cases and parity with torchvision's
RetinaNet.postprocess_detections."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from detlib.anchors import AnchorGenerator
from detlib.coder import BoxCoder
from detlib.postprocess import Detections, postprocess_detections


@pytest.fixture(scope="module")
def retinanet():
    # Random weights, nothing downloaded: only postprocess_detections is used, and it does not
    # depend on the number of classes the head was built for.
    return retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).eval()


def torchvision_detections(model, logits, deltas, anchors, sizes, levels, **settings):
    """RetinaNet.postprocess_detections on the same head outputs, split per level as its
    forward pass does."""
    model.score_thresh = settings.get("score_threshold", 0.05)
    model.topk_candidates = settings.get("topk_candidates", 1000)
    model.nms_thresh = settings.get("nms_threshold", 0.5)
    model.detections_per_img = settings.get("max_detections", 300)
    model.box_coder = TorchvisionBoxCoder(settings.get("weights", (1.0, 1.0, 1.0, 1.0)))
    head = {
        "cls_logits": list(logits.split(levels, dim=1)),
        "bbox_regression": list(deltas.split(levels, dim=1)),
    }
    per_image_anchors = [list(anchors.split(levels))] * len(logits)
    return model.postprocess_detections(head, per_image_anchors, sizes)


def head_outputs(
    generator, batch, num_classes, image_size=(128, 160), dtype=torch.float32, offset=-4.5
):
    """RetinaNet anchors for ``image_size`` and random logits (with the default offset, about
    15% of the pairs above 0.05; with offset 0, almost all) and deltas, a few of them large
    enough to hit the decoder's clamp."""
    anchor_generator = AnchorGenerator.retinanet()
    levels = [len(a) for a in anchor_generator.per_level(image_size)]
    anchors = anchor_generator(image_size)
    n = len(anchors)
    logits = torch.randn(batch, n, num_classes, generator=generator) * 1.5 + offset
    deltas = torch.randn(batch, n, 4, generator=generator) * 0.3
    deltas[:, ::97, 2:] = 9.0
    return logits.to(dtype), deltas.to(dtype), anchors.to(dtype), levels


def canonical(detections):
    """Rows (score, label, box) sorted by decreasing score, then label and box: equal to
    torchvision's order except among equal scores, which its kernels order arbitrarily."""
    if isinstance(detections, dict):
        detections = Detections(detections["boxes"], detections["scores"], detections["labels"])
    rows = zip(detections.scores.tolist(), detections.labels.tolist(), detections.boxes.tolist())
    return sorted(rows, key=lambda row: (-row[0], row[1], row[2]))


def assert_same(ours, theirs, exact_order=True):
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.boxes.dtype == reference["boxes"].dtype
        assert mine.labels.dtype == torch.int64
        if exact_order:
            assert torch.equal(mine.boxes, reference["boxes"])
            assert torch.equal(mine.scores, reference["scores"])
            assert torch.equal(mine.labels, reference["labels"])
        else:
            assert canonical(mine) == canonical(reference)


# ----------------------------------------------------------------------------- hand-computed
# a0 and a1 overlap (IoU 90 / 110); a2 is far away. Zero deltas decode to the anchors.
ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
LOGITS = torch.tensor([[[2.0, 1.0], [1.5, 3.0], [-5.0, 0.0]]])  # [1, 3 anchors, 2 classes]
ZERO_DELTAS = torch.zeros(1, 3, 4)


def run(logits=LOGITS, deltas=ZERO_DELTAS, anchors=ANCHORS, image_size=(100, 100), **settings):
    return postprocess_detections(logits, deltas, anchors, image_size, **settings)


def test_hand_computed_per_class_nms():
    (found,) = run()
    # Class 0: a0 (sigmoid 2) suppresses a1 (sigmoid 1.5). Class 1: a1 (sigmoid 3) suppresses
    # a0 (sigmoid 1); a2 (sigmoid 0 = 0.5) stays. One anchor, a1, gives the best box of class 1
    # while its class-0 box is suppressed.
    assert found.labels.tolist() == [1, 0, 1]
    assert found.boxes.tolist() == [ANCHORS[1].tolist(), ANCHORS[0].tolist(), ANCHORS[2].tolist()]
    expected = torch.sigmoid(torch.tensor([3.0, 2.0, 0.0]))
    assert torch.equal(found.scores, expected)


def test_score_threshold_is_strict():
    (found,) = run(score_threshold=0.5)  # sigmoid(0) = 0.5 is not above it
    assert found.labels.tolist() == [1, 0]
    (found,) = run(score_threshold=0.99)
    assert len(found.boxes) == 0


def test_max_detections_keeps_the_best():
    (found,) = run(max_detections=2)
    assert found.scores.tolist() == pytest.approx([1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-2))])
    (found,) = run(max_detections=None)
    assert len(found.boxes) == 3


def test_topk_overall_and_per_level():
    (found,) = run(topk_candidates=1)  # overall: only (a1, class 1)
    assert found.labels.tolist() == [1] and found.boxes.tolist() == [ANCHORS[1].tolist()]
    (found,) = run(topk_candidates=1, num_anchors_per_level=[2, 1])  # the best of each level
    assert found.boxes.tolist() == [ANCHORS[1].tolist(), ANCHORS[2].tolist()]
    (found,) = run(topk_candidates=None, nms_threshold=1.0)  # nothing limited or suppressed
    assert len(found.boxes) == 5  # 6 pairs, 1 below 0.05


def test_boxes_are_decoded_and_clipped():
    deltas = torch.tensor([[[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0), 0.0], [0.0] * 4]])
    (found,) = run(deltas=deltas, image_size=(100, 58))
    # a1 (centre 6, width 10) doubled in width: x from -4 to 16, clipped at 0. a0 moved right
    # by 0.1 * 10. a2 (x from 50 to 60) clipped to the width, 58. IoU(a0, a1) = 100 / 160.
    expected = [[0.0, 0.0, 16.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 58.0, 60.0]]
    assert found.boxes.flatten().tolist() == pytest.approx(
        torch.tensor(expected).flatten().tolist()
    )
    assert found.labels.tolist() == [1, 0, 1]


def test_images_and_classes_do_not_suppress_each_other():
    logits = torch.cat((LOGITS, LOGITS))  # two identical images
    first, second = run(logits=logits, deltas=torch.zeros(2, 3, 4))
    for found in (first, second):
        assert found.labels.tolist() == [1, 0, 1]


def test_one_size_per_image():
    logits, deltas = torch.cat((LOGITS, LOGITS)), torch.zeros(2, 3, 4)
    first, second = run(logits=logits, deltas=deltas, image_size=[(100, 100), (55, 55)])
    assert first.boxes[-1].tolist() == [50.0, 50.0, 60.0, 60.0]
    assert second.boxes[-1].tolist() == [50.0, 50.0, 55.0, 55.0]


def test_ties_at_the_cutoff_go_to_the_lowest_index():
    logits = torch.zeros(1, 3, 2)  # six pairs with the same score
    far = torch.tensor([[0.0, 0.0, 1.0, 1.0], [10.0, 10.0, 11.0, 11.0], [20.0, 20.0, 21.0, 21.0]])
    (found,) = run(logits=logits, anchors=far, topk_candidates=3)
    # Pairs 0, 1, 2 in (anchor, class) order: (a0, 0), (a0, 1), (a1, 0).
    assert found.boxes.tolist() == [far[0].tolist(), far[0].tolist(), far[1].tolist()]
    assert found.labels.tolist() == [0, 1, 0]
    (found,) = run(logits=logits, anchors=far, topk_candidates=1, num_anchors_per_level=[1, 2])
    assert found.boxes.tolist() == [far[0].tolist(), far[1].tolist()]
    assert found.labels.tolist() == [0, 0]


def test_ties_at_the_cutoff_with_higher_scores_before_them():
    scores = torch.tensor([0.3, 0.9, 0.3, 0.3, 0.8, 0.3])
    logits = torch.logit(scores).reshape(1, 6, 1)
    anchors = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 5, 5.0] for i in range(6)])
    (found,) = run(logits=logits, deltas=torch.zeros(1, 6, 4), anchors=anchors, topk_candidates=4)
    assert found.boxes[:, 0].tolist() == [10.0, 40.0, 0.0, 20.0]  # 0.9, 0.8, then ties 0 and 2


def test_ties_at_the_cutoff_when_few_pass_the_threshold():
    # Half of the pairs are below the threshold: the candidates are packed before the top-k.
    scores = torch.tensor([0.01, 0.3, 0.01, 0.3, 0.9, 0.01, 0.3, 0.01])
    logits = torch.logit(scores).reshape(1, 8, 1)
    anchors = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 5, 5.0] for i in range(8)])
    (found,) = run(logits=logits, deltas=torch.zeros(1, 8, 4), anchors=anchors, topk_candidates=3)
    assert found.boxes[:, 0].tolist() == [40.0, 10.0, 30.0]  # 0.9, then the first two 0.3


# ----------------------------------------------------------------------------- torchvision parity
@pytest.mark.parametrize("topk_candidates", [1000, 40])
@pytest.mark.parametrize("per_image_sizes", [False, True])
@pytest.mark.parametrize("scores", ["few pass", "most pass", "mixed"])
def test_matches_torchvision_float64(gen, retinanet, topk_candidates, per_image_sizes, scores):
    # "few pass" packs the candidates of each level before the top-k, "most pass" masks them,
    # "mixed" masks a batch in which one image has few.
    offset = {"few pass": -4.5, "most pass": 0.0, "mixed": 0.0}[scores]
    logits, deltas, anchors, levels = head_outputs(gen, 3, 4, dtype=torch.float64, offset=offset)
    if scores == "mixed":
        logits[1] -= 4.5
    sizes = [(128, 160), (100, 150), (128, 90)] if per_image_sizes else [(128, 160)] * 3
    image_size = sizes if per_image_sizes else (128, 160)
    settings = dict(topk_candidates=topk_candidates, nms_threshold=0.5, max_detections=100)
    ours = postprocess_detections(
        logits, deltas, anchors, image_size, num_anchors_per_level=levels, **settings
    )
    theirs = torchvision_detections(retinanet, logits, deltas, anchors, sizes, levels, **settings)
    assert min(len(d.boxes) for d in ours) > 50
    assert_same(ours, theirs)


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(score_threshold=0.3, nms_threshold=0.3, max_detections=50),
        dict(topk_candidates=200, nms_threshold=0.7, max_detections=1000),
        dict(weights=(10.0, 10.0, 5.0, 5.0)),
    ],
)
def test_matches_torchvision_float32(gen, retinanet, settings):
    logits, deltas, anchors, levels = head_outputs(gen, 2, 6)
    ours = postprocess_detections(
        logits,
        deltas,
        anchors,
        (128, 160),
        num_anchors_per_level=levels,
        box_coder=BoxCoder(settings.get("weights", (1.0, 1.0, 1.0, 1.0))),
        **{k: v for k, v in settings.items() if k != "weights"},
    )
    theirs = torchvision_detections(
        retinanet, logits, deltas, anchors, [(128, 160)] * 2, levels, **settings
    )
    assert min(len(d.boxes) for d in ours) > 20
    assert_same(ours, theirs, exact_order=False)


def test_overall_topk_is_torchvision_with_one_level(gen, retinanet):
    logits, deltas, anchors, _ = head_outputs(gen, 2, 3, dtype=torch.float64)
    ours = postprocess_detections(logits, deltas, anchors, (128, 160), topk_candidates=300)
    theirs = torchvision_detections(
        retinanet, logits, deltas, anchors, [(128, 160)] * 2, [len(anchors)], topk_candidates=300
    )
    assert_same(ours, theirs)
    per_level = postprocess_detections(
        logits,
        deltas,
        anchors,
        (128, 160),
        topk_candidates=300,
        num_anchors_per_level=[len(a) for a in AnchorGenerator.retinanet().per_level((128, 160))],
    )
    assert canonical(per_level[0]) != canonical(ours[0])  # the two modes really differ


def test_batch_equals_one_image_at_a_time(gen):
    logits, deltas, anchors, levels = head_outputs(gen, 3, 4, dtype=torch.float64)
    together = postprocess_detections(
        logits, deltas, anchors, (128, 160), num_anchors_per_level=levels
    )
    for b in range(3):
        (alone,) = postprocess_detections(
            logits[b : b + 1], deltas[b : b + 1], anchors, (128, 160), num_anchors_per_level=levels
        )
        for mine, single in zip(together[b], alone, strict=True):
            assert torch.equal(mine, single)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(gen):
    logits, deltas, anchors, levels = head_outputs(gen, 2, 4, dtype=torch.float64)
    on_cpu = postprocess_detections(
        logits, deltas, anchors, (128, 160), num_anchors_per_level=levels
    )
    on_gpu = postprocess_detections(
        logits.cuda(), deltas.cuda(), anchors.cuda(), (128, 160), num_anchors_per_level=levels
    )
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        assert gpu.boxes.device.type == "cuda"
        assert canonical(Detections(*(t.cpu() for t in gpu))) == canonical(cpu)


# ----------------------------------------------------------------------------- empty inputs
@pytest.mark.parametrize("shape", [(2, 0, 3), (2, 5, 0)], ids=["no anchors", "no classes"])
def test_empty_head_outputs(shape):
    batch, n, c = shape
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(n, 1)
    found = postprocess_detections(torch.zeros(shape), torch.zeros(batch, n, 4), anchors, (8, 8))
    assert len(found) == batch
    for boxes, scores, labels in found:
        assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.dtype == torch.int64


def test_empty_batch():
    found = postprocess_detections(torch.zeros(0, 3, 2), torch.zeros(0, 3, 4), ANCHORS, (8, 8))
    assert found == []


def test_nothing_above_the_threshold_and_zero_limits():
    for settings in (dict(score_threshold=0.999), dict(topk_candidates=0), dict(max_detections=0)):
        (found,) = run(**settings)
        assert found.boxes.shape == (0, 4) and found.scores.shape == (0,)


# ----------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(cls_logits=[[0.0]]), TypeError, "cls_logits must be a torch.Tensor"),
        (dict(cls_logits=torch.zeros(3, 2)), ValueError, r"cls_logits must have shape \[B, N, C\]"),
        (dict(cls_logits=torch.zeros(1, 3, 2).long()), TypeError, "cls_logits must have a float"),
        (
            dict(box_deltas=torch.zeros(1, 3, 5)),
            ValueError,
            r"box_deltas must have shape \[B, N, 4\]",
        ),
        (dict(box_deltas=torch.zeros(2, 3, 4)), ValueError, r"box_deltas .*\[1, 3, 4\]"),
        (
            dict(anchors=torch.zeros(4, 4)),
            ValueError,
            r"anchors must have shape \[N, 4\] with N = 3",
        ),
        (dict(anchors=ANCHORS[:, [2, 1, 0, 3]]), ValueError, "anchors has 3 box"),
        (dict(anchors=ANCHORS.long()), TypeError, "anchors must have a floating"),
        (dict(cls_logits=torch.zeros(1, 3, 2, device="meta")), ValueError, "cls_logits is on meta"),
        (dict(image_size=(0, 10)), ValueError, "image_size must be positive"),
        (dict(image_size=(10.0, 10.0)), TypeError, "image_size must be"),
        (dict(image_size=[(10, 10), (10, 10)]), ValueError, r"image_size must be one .* \(1\)"),
        (dict(image_size=None), TypeError, "image_size must be"),
        (dict(num_anchors_per_level=[1, 1]), ValueError, "num_anchors_per_level must add up"),
        (dict(num_anchors_per_level=[1.5, 1.5]), TypeError, "num_anchors_per_level must be a seq"),
        (dict(score_threshold=math.nan), ValueError, "score_threshold must not be NaN"),
        (dict(score_threshold="0.1"), TypeError, "score_threshold must be a number"),
        (dict(nms_threshold=None), TypeError, "nms_threshold must be a number"),
        (dict(topk_candidates=-1), ValueError, "topk_candidates must be >= 0"),
        (dict(topk_candidates=10.0), TypeError, "topk_candidates must be an int or None"),
        (dict(max_detections=-1), ValueError, "max_detections must be >= 0"),
        (dict(box_coder=TorchvisionBoxCoder((1.0,) * 4)), TypeError, "box_coder must be a detlib"),
        # issue 13: NaN scores were dropped silently; bools are not ints; sizes are checked
        (dict(cls_logits=LOGITS.clone().fill_(math.nan)), ValueError, "cls_logits must not .*NaN"),
        (
            dict(box_deltas=ZERO_DELTAS.clone().fill_(math.nan)),
            ValueError,
            "box_deltas must not contain NaN",
        ),
        (dict(topk_candidates=True), TypeError, "topk_candidates must be an int or None"),
        (dict(max_detections=False), TypeError, "max_detections must be an int or None"),
        (dict(num_anchors_per_level=[True, 2]), TypeError, "num_anchors_per_level must be a seq"),
        (dict(image_size=(-10, 10)), ValueError, "image_size must be positive"),
        (dict(image_size=(math.nan, 10)), TypeError, "image_size must be"),
        (dict(image_size=(True, 10)), TypeError, "image_size must be"),
    ],
)
def test_bad_arguments_are_named(change, error, match):
    arguments = dict(
        cls_logits=LOGITS, box_deltas=ZERO_DELTAS, anchors=ANCHORS, image_size=(100, 100)
    )
    arguments.update(change)
    with pytest.raises(error, match=f"^postprocess_detections: {match}"):
        postprocess_detections(**arguments)


def test_matches_torchvision_bit_for_bit_at_the_chapter_size(retinanet):
    # Chapter 7's case and the bench's: 4 images of 512 x 512 (49,104 anchors), 80 classes. The
    # scores must be bit-equal: a sigmoid of only the logits that could pass took another
    # vectorised path and differed by an ulp (issue 13).
    gen = torch.Generator().manual_seed(0)
    logits, deltas, anchors, levels = head_outputs(gen, 4, 80, image_size=(512, 512), offset=-5)
    ours = postprocess_detections(logits, deltas, anchors, (512, 512), num_anchors_per_level=levels)
    theirs = torchvision_detections(retinanet, logits, deltas, anchors, [(512, 512)] * 4, levels)
    assert_same(ours, theirs, exact_order=False)
    for mine, reference in zip(ours, theirs, strict=True):
        assert torch.equal(mine.scores.sort().values, reference["scores"].sort().values)
