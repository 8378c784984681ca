"""Inputs are checked once, at the public entry: the pipelines of the two-stage detector read
their values with one device-to-host copy per input, and refuse NaN where it would pass silently."""

import pytest
import torch

import detlib
import detlib._checks
import detlib.rpn
from detlib import AnchorGenerator, generate_proposals


@pytest.fixture
def count_value_reads(monkeypatch):
    """Count the calls of ``_min_max``, through which every value check reads the device."""
    calls = []
    original = detlib._checks._min_max

    def counting(t):
        calls.append(t.shape)
        return original(t)

    monkeypatch.setattr(detlib._checks, "_min_max", counting)
    monkeypatch.setattr(detlib.rpn, "_min_max", counting)
    return calls


def rpn_outputs(batch=2):
    gen = torch.Generator().manual_seed(0)
    generator = AnchorGenerator(strides=[8, 16], sizes=[[16, 24], [32, 48]])
    anchors = generator((64, 64))
    per_level = [len(a) for a in generator.per_level((64, 64))]
    objectness = torch.randn(batch, len(anchors), generator=gen)
    deltas = torch.randn(batch, len(anchors), 4, generator=gen) * 0.1
    return anchors, objectness, deltas, per_level


def test_generate_proposals_reads_the_values_once(count_value_reads):
    anchors, objectness, deltas, per_level = rpn_outputs()
    boxes, _ = generate_proposals(anchors, objectness, deltas, (64, 64), per_level)
    assert len(boxes) == 2 and len(boxes[0]) > 0
    assert len(count_value_reads) == 1  # was 4: anchors, decode's anchors and deltas, NMS's boxes
    with detlib.value_checks(False):
        count_value_reads.clear()
        generate_proposals(anchors, objectness, deltas, (64, 64), per_level)
        assert count_value_reads == []


@pytest.mark.parametrize(
    "name, message",
    [
        ("objectness", "objectness has 1 NaN or infinite value"),
        ("deltas", "deltas has 1 NaN or infinite value"),
        ("anchors", "anchors has 1 box"),
    ],
)
def test_generate_proposals_refuses_nan(name, message):
    inputs = dict(zip(("anchors", "objectness", "deltas"), rpn_outputs()[:3]))
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[5] = float("nan")
    with pytest.raises(ValueError, match=f"^generate_proposals: {message}"):
        generate_proposals(inputs["anchors"], inputs["objectness"], inputs["deltas"], (64, 64))


@pytest.mark.parametrize("name", ["score_threshold", "nms_threshold"])
def test_generate_proposals_refuses_nan_thresholds(name):
    anchors, objectness, deltas, _ = rpn_outputs()
    with pytest.raises(ValueError, match=f"^generate_proposals: {name} must not be NaN"):
        generate_proposals(anchors, objectness, deltas, (64, 64), **{name: float("nan")})


def test_generate_proposals_refuses_a_foreign_box_coder():
    anchors, objectness, deltas, _ = rpn_outputs()
    with pytest.raises(TypeError, match="^generate_proposals: box_coder must be a detlib.BoxCoder"):
        generate_proposals(anchors, objectness, deltas, (64, 64), box_coder=object())


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -1.0])
def test_assign_fpn_levels_refuses_bad_eps(eps):
    boxes = torch.tensor([[0.0, 0.0, 224.0, 224.0]])
    assert detlib.assign_fpn_levels(boxes).tolist() == [4]
    with pytest.raises(ValueError, match="^assign_fpn_levels: eps must be a finite number >= 0"):
        detlib.assign_fpn_levels(boxes, eps=eps)


def test_multiscale_roi_align_reads_each_input_once(count_value_reads):
    gen = torch.Generator().manual_seed(1)
    features = [torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)]
    boxes = [torch.tensor([[0.0, 0, 100, 120], [4.0, 4, 20, 30]]), torch.tensor([[8.0, 8, 60, 60]])]
    out = detlib.multiscale_roi_align(features, boxes, 2, [1 / 4, 1 / 8], canonical_scale=32)
    assert out.shape == (3, 3, 2, 2)
    assert len(count_value_reads) == 2  # one per image's boxes; the levels are pooled unchecked


def test_device_checks_come_before_value_checks():
    # NaN anchors on the CPU, ground truth elsewhere: the device mismatch is the error reported,
    # before any value is read (reading values of tensors on two devices is what fails).
    anchors = torch.tensor([[0.0, 0.0, float("nan"), 4.0]])
    meta = [torch.zeros(1, 4, device="meta")]
    with pytest.raises(ValueError, match=r"^label_anchors: anchors is on cpu but gt_boxes\[0\]"):
        detlib.label_anchors(anchors, meta)
    proposals = [torch.tensor([[0.0, 0.0, float("nan"), 4.0]])]
    labels = [torch.ones(1, dtype=torch.int64, device="meta")]
    with pytest.raises(ValueError, match=r"^sample_proposals: proposals\[0\] is on cpu"):
        detlib.sample_proposals(proposals, meta, labels)
    features = [torch.zeros(1, 1, 8, 8)]
    with pytest.raises(ValueError, match=r"^multiscale_roi_align: features\[0\] is on cpu"):
        detlib.multiscale_roi_align(features, [torch.zeros(1, 4, device="meta")], 2, [1.0])
