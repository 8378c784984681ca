"""detlib.faster_rcnn: the assembled two-stage detector (chapter 9)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.roi_heads import RoIHeads

import detlib.faster_rcnn as faster_rcnn
from detlib import ShapesDataset, collate_detection, sample_proposals
from detlib.faster_rcnn import FasterRCNN, FasterRCNNConfig

SMALL = FasterRCNNConfig(
    backbone_widths=(4, 4, 8, 8, 8), channels=8, bifpn_layers=1, representation_size=16
)


def _batch(num_images=2, seed=0):
    data = ShapesDataset(num_images, 64, seed=seed)
    return collate_detection([data[i] for i in range(num_images)])


def test_config_round_trip_and_checks():
    config = FasterRCNNConfig(box_weights=(1.0, 1.0, 1.0, 1.0), add_gt_boxes=False)
    stored = config.to_dict()
    assert stored["box_weights"] == [1.0, 1.0, 1.0, 1.0]  # plain lists, safe to store
    assert FasterRCNNConfig.from_dict(stored) == config
    with pytest.raises(ValueError, match="unknown fields"):
        FasterRCNNConfig.from_dict({**stored, "colour": 1})
    with pytest.raises(ValueError, match="backbone_widths"):
        FasterRCNNConfig(backbone_widths=(8, 8))
    with pytest.raises(ValueError, match="box_weights"):
        FasterRCNNConfig(box_weights=(10.0, 10.0))
    with pytest.raises(ValueError, match="roi_levels"):
        FasterRCNNConfig(roi_levels=0)
    with pytest.raises(TypeError, match="FasterRCNNConfig"):
        FasterRCNN({"channels": 8})


def test_losses_are_finite_and_reach_every_part():
    torch.manual_seed(0)
    model = SMALL.build()
    images, boxes, labels = _batch()
    losses = model.losses(images, boxes, labels, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"rpn_objectness", "rpn_box", "classification", "box"}
    assert all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses.values())
    # Untrained: objectness ~ log 2, classification ~ log(C + 1).
    assert abs(losses["rpn_objectness"].item() - 0.693) < 0.05
    assert abs(losses["classification"].item() - torch.log(torch.tensor(4.0)).item()) < 0.3
    sum(losses.values()).backward()
    for part in (model.backbone, model.bifpn, model.rpn_head, model.box_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_images_without_objects_train():
    torch.manual_seed(0)
    model = SMALL.build()
    images, boxes, labels = _batch()
    labels = torch.full_like(labels, -1)  # every row is padding
    losses = model.losses(images, boxes, labels)
    assert all(torch.isfinite(loss) for loss in losses.values())
    assert losses["rpn_box"].item() == 0 and losses["box"].item() == 0


def test_bad_ground_truth_is_refused():
    model = SMALL.build()
    images, boxes, labels = _batch()
    with pytest.raises(ValueError, match=r"boxes \[B, G, 4\]"):
        model.losses(images, boxes[..., :3], labels)
    with pytest.raises(ValueError, match="one row per image"):
        model.losses(images, boxes[:1], labels[:1])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.losses(images[0], boxes, labels)


def test_add_gt_boxes_adds_positives(monkeypatch):
    """The ground-truth boxes appended to the proposals are positives of the second stage."""
    images, boxes, labels = _batch(4)
    positives = {}
    for add in (True, False):
        torch.manual_seed(0)
        model = dataclasses.replace(SMALL, add_gt_boxes=add).build()
        drawn = []

        def recording(*args, drawn=drawn, **kwargs):
            samples = sample_proposals(*args, **kwargs)
            drawn.append(int((torch.cat(samples.labels) > 0).sum()))
            return samples

        monkeypatch.setattr(faster_rcnn, "sample_proposals", recording)
        model.losses(images, boxes, labels, generator=torch.Generator().manual_seed(0))
        positives[add] = drawn[0]
    assert positives[True] > positives[False]


def test_detections_are_well_formed():
    torch.manual_seed(0)
    model = SMALL.build().eval()
    images, _, _ = _batch(3)
    detections = model.detect(images)
    assert len(detections) == 3
    for d in detections:
        assert d.boxes.shape == (len(d.scores), 4) and d.labels.shape == d.scores.shape
        assert len(d.scores) <= SMALL.detections_per_image
        assert bool((d.boxes >= 0).all() and (d.boxes <= 64).all())
        assert bool((d.labels >= 0).all() and (d.labels < SMALL.num_classes).all())
        assert bool((d.scores[:-1] >= d.scores[1:]).all())
    proposals, scores = model.proposals(images, pre_nms_top_n=50, post_nms_top_n=20)
    assert all(len(p) <= 20 and len(p) == len(s) for p, s in zip(proposals, scores))


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_postprocess_matches_torchvision(weights):
    """The second stage's post-processing gives torchvision's RoIHeads detections."""
    generator = torch.Generator().manual_seed(1)
    config = dataclasses.replace(SMALL, box_weights=weights, detections_per_image=20)
    model = config.build()
    num_classes = config.num_classes + 1
    xy = torch.rand(2, 60, 2, generator=generator) * 48
    wh = torch.rand(2, 60, 2, generator=generator) * 24 + 4
    proposals = list(torch.cat((xy, xy + wh), dim=-1))
    class_logits = torch.randn(120, num_classes, generator=generator) * 3
    box_regression = torch.randn(120, 4 * num_classes, generator=generator) * 0.5
    ours = model._postprocess(class_logits, box_regression, proposals, (64, 64))
    heads = RoIHeads(
        None,
        None,
        None,
        0.5,
        0.5,
        512,
        0.25,
        weights,
        config.score_threshold,
        config.nms_threshold,
        config.detections_per_image,
    )
    heads.box_coder = tv_utils.BoxCoder(weights)
    boxes, scores, labels = heads.postprocess_detections(
        class_logits, box_regression, proposals, [(64, 64), (64, 64)]
    )
    for mine, b, s, lab in zip(ours, boxes, scores, labels):
        assert len(mine.scores) > 0
        torch.testing.assert_close(mine.scores, s)
        torch.testing.assert_close(mine.boxes, b)
        assert torch.equal(mine.labels, lab - 1)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = SMALL.build()
    images, boxes, labels = _batch(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    totals = []
    for _ in range(20):
        losses = model.losses(images, boxes, labels, generator=torch.Generator().manual_seed(0))
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert max(totals[-3:]) < 0.8 * totals[0], totals
