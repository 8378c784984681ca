"""Bad inputs found by a probe of the public API (issue 13): each must raise, naming the argument."""

from __future__ import annotations

import threading

import pytest
import torch

import detlib
import detlib._checks


# --------------------------------------------------------------------------- 1. the value-check switch
def test_value_check_switch_is_per_thread():
    seen = {}

    def worker():
        detlib.set_value_checks(False)
        seen["worker"] = detlib.value_checks_enabled()

    with detlib.value_checks(True):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen["worker"] is False
        assert detlib.value_checks_enabled()  # the worker's setting stays in the worker
        with pytest.raises(ValueError, match="box_iou: boxes1 has 1 box"):
            detlib.box_iou(torch.tensor([[0.0, 0, float("nan"), 1]]), torch.zeros(1, 4))


def test_detection_loss_never_toggles_the_switch(monkeypatch):
    def refuse(enabled):
        raise AssertionError("the library must not toggle the value checks")

    monkeypatch.setattr(detlib._checks, "set_value_checks", refuse)
    anchors = torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 20, 20]])
    loss = detlib.detection_loss(
        torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), anchors, [anchors[:1]], [torch.tensor([1])]
    )
    assert int(loss.num_positive) == 1


def test_set_value_checks_wants_a_bool():
    with pytest.raises(TypeError, match="set_value_checks: enabled must be True or False"):
        detlib.set_value_checks("no")


# --------------------------------------------------------------------------- 2. forced matches at IoU 0
def test_matcher_forces_no_match_at_iou_zero():
    quality = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.1, 0.0]])
    matches = detlib.Matcher(0.5, 0.4, allow_low_quality_matches=True)(quality)
    # ground truth 0 overlaps nothing: it forces no match; ground truth 1 keeps anchor 0
    assert matches.tolist() == [1, -1, -1]


def test_label_anchors_box_outside_every_anchor_gives_no_positive():
    anchors = detlib.AnchorGenerator.retinanet()((128, 128))
    labels, _ = detlib.label_anchors(anchors, [torch.tensor([[5000.0, 5000, 5010, 5010]])])
    assert int((labels == 1).sum()) == 0


def test_detection_loss_box_outside_every_anchor_adds_no_positive():
    anchors = detlib.AnchorGenerator.retinanet()((128, 128))
    n = len(anchors)
    inside = torch.tensor([[10.0, 10, 60, 70]])
    far = torch.tensor([[5000.0, 5000, 5010, 5010]])
    args = (torch.zeros(1, n, 2), torch.zeros(1, n, 4), anchors)
    one = detlib.detection_loss(*args, [inside], [torch.tensor([0])])
    two = detlib.detection_loss(*args, [torch.cat([inside, far])], [torch.tensor([0, 1])])
    assert int(one.num_positive) == int(two.num_positive) > 0


def test_matcher_thresholds_refuse_bools_and_nan():
    with pytest.raises(ValueError, match="Matcher: high_threshold must be a number"):
        detlib.Matcher(True, 0.4)
    with pytest.raises(ValueError, match="Matcher: low_threshold must be a number in"):
        detlib.Matcher(0.5, float("nan"))
    with pytest.raises(TypeError, match="allow_low_quality_matches must be True or False"):
        detlib.Matcher(0.5, 0.4, "yes")


# --------------------------------------------------------------------------- 3. integer and bool boxes
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize(
    "name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]
)
def test_integer_boxes_give_the_float_results(name, dtype):
    fn = getattr(detlib, name)
    a = torch.tensor([[1, 1, 5, 5], [0, 0, 2, 8]])
    b = torch.tensor([[3, 3, 9, 9], [6, 7, 9, 10], [1, 1, 5, 5]])
    expected = fn(a.double(), b.double())
    assert torch.allclose(fn(a.to(dtype), b.to(dtype)).double(), expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32])
def test_integer_boxes_with_x1_after_x2_are_refused(dtype):
    with pytest.raises(ValueError, match="box_iou: boxes1 has 1 box.* negative size"):
        detlib.box_iou(torch.tensor([[5, 0, 1, 1]], dtype=dtype), torch.zeros(1, 4))


def test_remove_small_boxes_of_uint8_boxes():
    boxes = torch.tensor([[5, 5, 6, 6], [0, 0, 10, 10]], dtype=torch.uint8)
    assert detlib.remove_small_boxes(boxes, 2).tolist() == [1]


@pytest.mark.parametrize(
    "name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_area"]
)
def test_bool_boxes_are_refused(name):
    boxes = torch.ones(2, 4, dtype=torch.bool)
    args = (boxes,) if name == "box_area" else (boxes, boxes)
    with pytest.raises(TypeError, match=f"{name}: boxes1? must hold real coordinates"):
        getattr(detlib, name)(*args)


# --------------------------------------------------------------------------- 4. NaN in a match matrix
@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_matcher_refuses_nan(allow_low_quality):
    matcher = detlib.Matcher(0.5, 0.4, allow_low_quality)
    with pytest.raises(ValueError, match="Matcher: match_quality_matrix holds NaN"):
        matcher(torch.tensor([[0.9, float("nan")]]))
    # the unchecked internal gives the same matches as the checked call on clean input
    quality = torch.tensor([[0.9, 0.1], [0.3, 0.45]])
    assert torch.equal(matcher._match(quality), matcher(quality))


# --------------------------------------------------------------------------- 5. focal loss gradient
@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("logit, target", [(20.0, 1.0), (-20.0, 0.0), (-200.0, 0.0), (200.0, 1.0)])
def test_focal_loss_gradient_is_finite_at_saturated_logits(gamma, logit, target):
    x = torch.tensor([logit, 0.3, -1.2], requires_grad=True)
    t = torch.tensor([target, 1.0, 0.0])
    detlib.sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum").backward()
    assert torch.isfinite(x.grad).all()
    assert abs(float(x.grad[0])) < 1e-6  # the loss is flat where the prediction is certain
    # elsewhere the gradient is torchvision's
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    y = x.detach()[1:].clone().requires_grad_(True)
    tv_focal(y, t[1:], gamma=gamma, reduction="sum").backward()
    assert torch.allclose(x.grad[1:], y.grad)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_detection_loss_gradient_is_finite_at_saturated_logits(gamma):
    anchors = torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60]])
    logits = torch.tensor([[[200.0, -200.0], [-200.0, -300.0]]], requires_grad=True)
    loss = detlib.detection_loss(
        logits, torch.zeros(1, 2, 4), anchors, [anchors[:1]], [torch.tensor([0])], gamma=gamma
    )
    loss.total.backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_settings_refuse_nan_and_bools():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="sigmoid_focal_loss: alpha must not be NaN"):
        detlib.sigmoid_focal_loss(x, x, alpha=float("nan"))
    with pytest.raises(ValueError, match="sigmoid_focal_loss: gamma must be a finite number"):
        detlib.sigmoid_focal_loss(x, x, gamma=float("nan"))
    with pytest.raises(TypeError, match="sigmoid_focal_loss: gamma must be a number"):
        detlib.sigmoid_focal_loss(x, x, gamma=True)
    with pytest.raises(TypeError, match="smooth_l1_loss: beta must be a number"):
        detlib.smooth_l1_loss(x, x, beta=False)


# --------------------------------------------------------------------------- 6. detection_loss memory
def test_detection_loss_matches_image_by_image(monkeypatch):
    """The IoU matrices are [G_i, N], never [B * G, N]: memory does not grow with the batch."""
    import detlib.losses

    shapes = []
    real_box_iou = detlib.losses._box_iou

    def spy(a, b):
        shapes.append(tuple(a.shape))
        return real_box_iou(a, b)

    monkeypatch.setattr(detlib.losses, "_box_iou", spy)
    gen = torch.Generator().manual_seed(0)
    anchors = detlib.AnchorGenerator.retinanet()((128, 128))
    counts = [30, 1, 0, 2]
    boxes = []
    for n in counts:
        xy = torch.rand(n, 2, generator=gen) * 80
        boxes.append(torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=gen) * 30], 1))
    labels = [torch.zeros(n, dtype=torch.int64) for n in counts]
    b, n = len(counts), len(anchors)
    logits, deltas = torch.randn(b, n, 2, generator=gen), torch.randn(b, n, 4, generator=gen)
    loss = detlib.detection_loss(logits, deltas, anchors, boxes, labels)
    assert max(rows for rows, _ in shapes) == 30
    # the same positives as the Matcher on each image alone
    matcher = detlib.Matcher(0.5, 0.4, allow_low_quality_matches=True)
    expected = [int((matcher(detlib.box_iou(g, anchors)) >= 0).sum()) for g in boxes]
    assert loss.num_positive.tolist() == expected


# --------------------------------------------------------------------------- 7. checkpoints
def _small_detector():
    config = detlib.DetectorConfig(channels=8, bifpn_layers=1, head_layers=1)
    return config, config.build()


@pytest.mark.parametrize(
    "value, kind",
    [
        (__import__("numpy").float64(0.5), "numpy.float64"),
        (__import__("numpy").zeros(3), "numpy.ndarray"),
        (detlib.DetectorConfig(), "DetectorConfig"),
        ({"nested": [1, {"deep": __import__("numpy").int64(3)}]}, "numpy.int64"),
    ],
)
def test_save_checkpoint_refuses_metadata_it_cannot_load(tmp_path, value, kind):
    config, model = _small_detector()
    with pytest.raises(TypeError, match=f"save_checkpoint: metadata\\['x'\\].* got [a-z.]*{kind};"):
        detlib.save_checkpoint(tmp_path / "c.pt", model, config, x=value)
    assert not (tmp_path / "c.pt").exists()


def test_checkpoint_keeps_plain_metadata_and_optimizer_state(tmp_path):
    config, model = _small_detector()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 3, 128, 128)).class_logits.sum().backward()
    optimizer.step()
    meta = {
        "step": 3,
        "map": 0.25,
        "tag": None,
        "shape": (1, 2),
        "optimizer": optimizer.state_dict(),
    }
    detlib.save_checkpoint(tmp_path / "c.pt", model, config, **meta)
    loaded = detlib.load_checkpoint(tmp_path / "c.pt", config.build(), config)
    assert loaded["step"] == 3 and loaded["shape"] == (1, 2) and loaded["tag"] is None
    torch.optim.AdamW(model.parameters()).load_state_dict(loaded["optimizer"])


@pytest.mark.parametrize("size", [0, 10, "half"])
def test_truncated_or_empty_checkpoint_names_the_file(tmp_path, size):
    config, model = _small_detector()
    path = tmp_path / "c.pt"
    detlib.save_checkpoint(path, model, config)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size == "half" else size])
    with pytest.raises(ValueError, match=f"load_checkpoint: {path} cannot be read as a checkpoint"):
        detlib.load_checkpoint(path, config.build(), config)


def test_missing_checkpoint_names_the_file(tmp_path):
    config, _ = _small_detector()
    with pytest.raises(FileNotFoundError, match="load_checkpoint: no checkpoint file at"):
        detlib.load_checkpoint(tmp_path / "none.pt", config.build(), config)


def test_empty_stored_configuration_is_not_all_defaults(tmp_path):
    config = detlib.DetectorConfig()
    model = config.build()
    torch.save({"config": {}, "state_dict": model.state_dict()}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="stores an incomplete configuration"):
        detlib.load_checkpoint(tmp_path / "c.pt", model, config)
    with pytest.raises(TypeError, match="load_checkpoint: config must be a DetectorConfig"):
        detlib.load_checkpoint(tmp_path / "c.pt", model, {})


def test_flipped_byte_in_the_weights_is_detected(tmp_path):
    config, model = _small_detector()
    path = tmp_path / "c.pt"
    detlib.save_checkpoint(path, model, config)
    weight = max(model.state_dict().values(), key=lambda t: t.numel())
    raw = weight.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(raw[:64])
    assert at >= 0
    data[at + 10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"load_checkpoint: {path} is damaged"):
        detlib.load_checkpoint(path, config.build(), config)


# --------------------------------------------------------------------------- 8. metrics
def _one_image(scores=(0.9,), labels=(1,), gt_labels=(1,)):
    pred = {
        "boxes": torch.tensor([[0.0, 0, 10, 10]] * len(scores)),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }
    target = {
        "boxes": torch.tensor([[0.0, 0, 10, 10]] * len(gt_labels)),
        "labels": torch.tensor(gt_labels),
    }
    return [pred], [target]


@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_coco_max_detections_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match="coco_evaluate: max_detections must be a positive int"):
        detlib.coco_evaluate(*_one_image(), max_detections=value)


@pytest.mark.parametrize("value", [0, -1, 1.5, float("nan"), True])
def test_voc_iou_threshold_must_be_in_zero_one(value):
    with pytest.raises(
        ValueError, match=r"voc_evaluate: iou_threshold must be a number in \(0, 1\]"
    ):
        detlib.voc_evaluate(*_one_image(), iou_threshold=value)


@pytest.mark.parametrize("evaluate", [detlib.voc_evaluate, detlib.coco_evaluate])
def test_nan_scores_and_non_integer_labels_are_refused(evaluate):
    name = evaluate.__name__
    with pytest.raises(ValueError, match=rf"{name}: predictions\[0\]\['scores'\] holds NaN"):
        evaluate(*_one_image(scores=(float("nan"),)))
    with pytest.raises(ValueError, match=rf"{name}: predictions\[0\]\['labels'\] must hold whole"):
        evaluate(*_one_image(labels=(1.5,)))
    with pytest.raises(ValueError, match=rf"{name}: targets\[0\]\['labels'\] must hold whole"):
        evaluate(*_one_image(gt_labels=(0.5,)))
    with pytest.raises(TypeError, match=rf"{name}: targets\[0\]\['labels'\] must hold integer"):
        evaluate(*_one_image(gt_labels=(True,)))
    # whole numbers in a floating tensor are fine
    assert evaluate(*_one_image(labels=(1.0,))).ap_per_class == evaluate(*_one_image()).ap_per_class


def test_voc_average_precision_refuses_bad_curves():
    fn = detlib.voc_average_precision
    with pytest.raises(ValueError, match=r"recall must hold values in \[0, 1\]"):
        fn([0.5, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="recall and precision must have the same length"):
        fn([0.5, 1.0], [1.0])
    with pytest.raises(ValueError, match=r"precision must hold values in \[0, 1\]"):
        fn([0.5], [float("nan")])
    with pytest.raises(ValueError, match="recall must be non-decreasing"):
        fn([0.5, 0.2], [1.0, 1.0])
    assert fn([], []) == 0.0
    assert fn(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.5])) == 0.75


# --------------------------------------------------------------------------- 10. ShapesDataset seeds
def test_shapes_items_of_different_seeds_never_coincide():
    a = detlib.ShapesDataset(1_000_004, image_size=32, min_size=4, max_size=16, seed=0)
    b = detlib.ShapesDataset(1, image_size=32, min_size=4, max_size=16, seed=1)
    image_a, target_a = a[1_000_003]
    image_b, target_b = b[0]
    assert not torch.equal(image_a, image_b)
    assert detlib.data._item_generator(0, 1_000_003).initial_seed() is not None
    # the generator state holds the pair itself: no two pairs share a stream
    pairs = [(0, 1_000_003), (1, 0), (0, 2**32), (2**32, 0), (-1, 5), (2**64 - 1, 5)]
    states = {bytes(detlib.data._item_generator(s, i).get_state().tolist()) for s, i in pairs}
    assert len(states) == len(pairs) - 1  # -1 and 2**64 - 1 are the same 64-bit seed
    first = {float(torch.rand(1, generator=detlib.data._item_generator(s, i))) for s, i in pairs}
    assert len(first) == len(pairs) - 1


def test_shapes_items_are_reproducible():
    data = detlib.ShapesDataset(3, image_size=32, min_size=4, max_size=16, seed=7)
    assert torch.equal(data[2][0], data[2][0]) and torch.equal(
        data[2][1]["boxes"], data[-1][1]["boxes"]
    )


# --------------------------------------------------------------------------- 9. unchecked parameters
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(max_aspect=float("nan")), ValueError, "max_aspect must be a finite number"),
        (dict(max_aspect=float("inf")), ValueError, "max_aspect must be a finite"),
        (dict(max_overlap=float("nan")), ValueError, "max_overlap must be"),
        (dict(num_images=True), ValueError, "num_images must be a non-negative int"),
        (dict(image_size=True), ValueError, "image_size must be an int"),
        (dict(seed=1.5), TypeError, "seed must be an int"),
        (dict(seed=False), TypeError, "seed must be an int"),
        (dict(max_objects=True), TypeError, "max_objects must be an int"),
        (dict(min_size=float("nan")), ValueError, "min_size must be a finite number"),
    ],
)
def test_shapes_dataset_settings(kwargs, error, message):
    settings = dict(num_images=2, image_size=32, min_size=4, max_size=16) | kwargs
    with pytest.raises(error, match=f"ShapesDataset: {message}"):
        detlib.ShapesDataset(**settings)


def test_sample_boxes_settings():
    with pytest.raises(ValueError, match="sample_boxes: n must be a non-negative int"):
        detlib.sample_boxes(True, (32, 32))
    with pytest.raises(ValueError, match="sample_boxes: max_aspect must be a finite"):
        detlib.sample_boxes(2, (32, 32), max_aspect=float("inf"))


@pytest.mark.parametrize(
    "size, error, message",
    [
        ((-1, 10), ValueError, r"size\[0\] \(height\) must be a finite number >= 0"),
        ((10, float("nan")), ValueError, r"size\[1\] \(width\) must be a finite number >= 0"),
        ((True, 10), TypeError, r"size\[0\] \(height\) must be a number"),
    ],
)
def test_clip_size_must_be_non_negative_numbers(size, error, message):
    with pytest.raises(error, match=f"clip_boxes_to_image: {message}"):
        detlib.clip_boxes_to_image(torch.tensor([[0.0, 0, 5, 5]]), size)


def test_clip_keeps_integer_and_float_sizes():
    boxes = torch.tensor([[-3.0, 2, 50, 70]])
    assert detlib.clip_boxes_to_image(boxes, (64, 48)).tolist() == [[0.0, 2.0, 48.0, 64.0]]
    assert detlib.clip_boxes_to_image(boxes, torch.Size((64, 48))).tolist() == [[0, 2, 48, 64]]
    clipped = detlib.clip_boxes_to_image(torch.tensor([[-3, 2, 50, 70]]), (64, 48))
    assert clipped.dtype == torch.int64 and clipped.tolist() == [[0, 2, 48, 64]]


def test_remove_small_boxes_refuses_nan():
    with pytest.raises(ValueError, match="remove_small_boxes: min_size must not be NaN"):
        detlib.remove_small_boxes(torch.tensor([[0.0, 0, 5, 5]]), float("nan"))


def test_weighted_fusion_eps_must_be_positive():
    with pytest.raises(ValueError, match="WeightedFusion: eps must be a finite number > 0"):
        detlib.WeightedFusion(2, eps=0)
    fusion = detlib.WeightedFusion(2)
    with torch.no_grad():
        fusion.weight.fill_(-1.0)  # training can drive every weight negative
    out = fusion([torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3)])
    assert torch.isfinite(out).all()


def test_bools_are_not_ints():
    with pytest.raises(
        ValueError, match="SeparableConv2d: kernel_size must be an odd positive int"
    ):
        detlib.SeparableConv2d(4, 4, kernel_size=True)
    with pytest.raises(TypeError, match="prior_bias: prior_probability must be a number"):
        detlib.prior_bias(True)
    with pytest.raises(TypeError, match="BoxCoder: weights must be a number"):
        detlib.BoxCoder((True, 1, 1, 1))
    with pytest.raises(ValueError, match="ClassHead: num_classes must be a positive int"):
        detlib.ClassHead(8, 9, num_classes=True, num_layers=1)


# --------------------------------------------------------------------------- 11. errors: who and in what order
META = torch.device("meta")


def test_device_checks_come_before_value_checks():
    bad = torch.tensor([[5.0, 0, 1, 1]])  # x1 > x2: a value error, but the device is wrong first
    for name in ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]:
        with pytest.raises(ValueError, match=f"{name}: boxes1 is on cpu but boxes2 is on meta"):
            getattr(detlib, name)(bad, torch.zeros(1, 4, device=META))
    coder = detlib.BoxCoder()
    with pytest.raises(
        ValueError, match="BoxCoder.encode: gt_boxes is on cpu but anchors is on meta"
    ):
        coder.encode(bad, torch.zeros(1, 4, device=META))
    with pytest.raises(
        ValueError, match="BoxCoder.decode: deltas is on meta but anchors is on cpu"
    ):
        coder.decode(torch.zeros(1, 4, device=META), bad)
    with pytest.raises(ValueError, match="detection_loss: cls_logits is on cpu but gt_boxes"):
        detlib.detection_loss(
            torch.zeros(1, 1, 2), torch.zeros(1, 1, 4), bad, [torch.zeros(1, 4, device=META)],
            [torch.zeros(1, dtype=torch.int64, device=META)],
        )  # fmt: skip


def test_horizontal_flip_checks_devices():
    images, boxes = torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 4)
    labels, flip = torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="horizontal_flip: images is on cpu but boxes is on meta"):
        detlib.horizontal_flip(images, boxes.to(META), labels, flip)
    with pytest.raises(ValueError, match="horizontal_flip: images is on cpu but flip is on meta"):
        detlib.horizontal_flip(images, boxes, labels, flip.to(META))


def test_detector_config_names_itself():
    with pytest.raises(ValueError, match="DetectorConfig: channels must be a positive int"):
        detlib.DetectorConfig(channels=0)
    with pytest.raises(ValueError, match="DetectorConfig: num_classes must be a positive int"):
        detlib.DetectorConfig(num_classes=True)
    with pytest.raises(ValueError, match="DetectorConfig: backbone_widths must be 5 ints"):
        detlib.DetectorConfig(backbone_widths=(8, 8))
    with pytest.raises(ValueError, match="DetectorConfig: anchor_scale must be a finite number"):
        detlib.DetectorConfig(anchor_scale=float("nan"))


def test_label_anchors_refuses_zero_width_boxes_and_names_its_thresholds():
    anchors = detlib.AnchorGenerator.retinanet()((128, 128))
    with pytest.raises(
        ValueError, match=r"label_anchors: gt_boxes\[0\] has 1 box.* zero or negative"
    ):
        detlib.label_anchors(anchors, [torch.tensor([[40.0, 40, 40, 60]])])
    with pytest.raises(
        ValueError, match="label_anchors: bg_iou_thresh .* must not exceed fg_iou_thresh"
    ):
        detlib.label_anchors(anchors, [torch.tensor([[4.0, 4, 40, 60]])], 0.3, 0.7)
