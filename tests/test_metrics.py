"""Detection metrics: hand-computed AP, and COCO mAP equal to pycocotools on random detections."""

import contextlib
import io

import numpy as np
import pytest
import torch

from detlib.metrics import coco_evaluate, voc_average_precision, voc_evaluate

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def _image(boxes, labels, scores=None):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels).reshape(-1),
    }
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32).reshape(-1)
    return out


# ----------------------------------------------------------------------------- hand-computed
def test_all_point_interpolation_by_hand():
    # Ranked detections: TP, FP, TP with 2 ground truths: recall .5 .5 1, precision 1 .5 .667.
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    assert voc_average_precision(recall, precision) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert voc_average_precision(np.array([]), np.array([])) == 0.0


def test_voc_perfect_duplicate_and_missed():
    target = _image([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])
    perfect = _image([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0.9, 0.8])
    assert voc_evaluate([perfect], [target]).mean_ap == pytest.approx(1.0)
    # A duplicate of the first box ranked second is a false positive: AP = 0.5 + 0.5 * 2/3.
    duplicate = _image(
        [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [1, 1, 1], [0.9, 0.8, 0.7]
    )
    assert voc_evaluate([duplicate], [target]).mean_ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Missing one box halves the recall: AP 0.5.
    half = _image([[0, 0, 10, 10]], [1], [0.9])
    assert voc_evaluate([half], [target]).ap_per_class == {1: pytest.approx(0.5)}


def test_voc_threshold_is_strict():
    target = _image([[0, 0, 10, 10]], [0])
    exactly_half = _image([[0, 0, 10, 20]], [0], [1.0])  # IoU = 100 / 200 = 0.5
    just_above = _image([[0, 0, 10, 19.9]], [0], [1.0])  # IoU = 100 / 199 > 0.5
    assert voc_evaluate([exactly_half], [target]).mean_ap == 0.0  # VOC needs IoU > 0.5
    assert voc_evaluate([just_above], [target]).mean_ap == 1.0


def test_coco_perfect_detections_give_one():
    target = _image([[0, 0, 10, 10], [20, 20, 40, 30]], [1, 2])
    perfect = _image([[0, 0, 10, 10], [20, 20, 40, 30]], [1, 2], [0.9, 0.8])
    result = coco_evaluate([perfect], [target])
    assert result.map == pytest.approx(1.0) and result.map_50 == pytest.approx(1.0)
    assert result.ap_per_class == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}


# ----------------------------------------------------------------------------- parity with pycocotools
def _random_dataset(seed, num_images=12, num_classes=3, max_gt=6, max_det=15):
    rng = np.random.default_rng(seed)
    targets, predictions = [], []
    for i in range(num_images):
        g = int(rng.integers(0, max_gt + 1)) if i else 0  # image 0 has no ground truth
        xy = rng.uniform(0, 200, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 80, (g, 2))], axis=1)
        gt_labels = rng.integers(1, num_classes + 1, g)
        # Detections: jittered ground truths (good and bad), plus random boxes.
        picks = rng.integers(0, max(g, 1), int(rng.integers(0, max_det)))
        base = gt[picks] if g else np.zeros((0, 4))
        jitter = rng.normal(0, rng.choice([1, 6, 15]), base.shape)
        jittered = base + jitter
        xy = rng.uniform(0, 200, (int(rng.integers(0, 5)), 2))
        noise = np.concatenate([xy, xy + rng.uniform(8, 80, (len(xy), 2))], axis=1)
        det = np.concatenate([jittered, noise])
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        det_labels = np.concatenate(
            [
                gt_labels[picks] if g else np.zeros(0, int),
                rng.integers(1, num_classes + 1, len(noise)),
            ]
        )
        det_labels = np.where(
            rng.random(len(det)) < 0.1, rng.integers(1, num_classes + 1, len(det)), det_labels
        )
        scores = np.round(rng.random(len(det)), 2)  # rounding creates ties
        targets.append(_image(gt.tolist(), gt_labels.tolist()))
        predictions.append(_image(det.tolist(), det_labels.tolist(), scores.tolist()))
    return predictions, targets


def _pycocotools_stats(predictions, targets, num_classes):
    images, annotations, results = [], [], []
    for image_id, (pred, target) in enumerate(zip(predictions, targets), start=1):
        images.append({"id": image_id})
        for box, label in zip(target["boxes"].double().tolist(), target["labels"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        for box, label, score in zip(
            pred["boxes"].double().tolist(),
            pred["labels"].tolist(),
            pred["scores"].double().tolist(),
        ):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in range(1, num_classes + 1)],
        }
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", range(8))
def test_coco_equals_pycocotools(seed):
    predictions, targets = _random_dataset(seed)
    evaluator = _pycocotools_stats(predictions, targets, num_classes=3)
    result = coco_evaluate(predictions, targets)
    assert result.map == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert result.map_50 == pytest.approx(evaluator.stats[1], abs=1e-12)
    assert result.map_75 == pytest.approx(evaluator.stats[2], abs=1e-12)
    theirs = evaluator.eval["precision"][:, :, :, 0, 2]  # area "all", 100 detections
    assert np.allclose(result.precision, theirs, atol=1e-12)


def test_coco_caps_detections_per_image_like_pycocotools():
    predictions, targets = _random_dataset(3, num_images=4, max_det=60)
    evaluator = _pycocotools_stats(predictions, targets, num_classes=3)
    assert coco_evaluate(predictions, targets, max_detections=100).map == pytest.approx(
        evaluator.stats[0], abs=1e-12
    )
    capped = coco_evaluate(predictions, targets, max_detections=2).map
    assert capped <= coco_evaluate(predictions, targets).map + 1e-12


# ----------------------------------------------------------------------------- errors and empty input
def test_errors_name_the_argument():
    target = _image([[0, 0, 10, 10]], [1])
    with pytest.raises(ValueError, match="predictions has 2 images but targets has 1"):
        coco_evaluate([_image([], [], []), _image([], [], [])], [target])
    with pytest.raises(ValueError, match=r"predictions\[0\] has no 'scores'"):
        voc_evaluate([_image([[0, 0, 1, 1]], [1])], [target])
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] has 1 box"):
        coco_evaluate([_image([], [], [])], [_image([[5, 0, 1, 1]], [1])])
    scores_as_list = {"boxes": torch.zeros(1, 4), "scores": [0.5], "labels": torch.ones(1)}
    with pytest.raises(TypeError, match=r"predictions\[0\]\['scores'\] must be a torch.Tensor"):
        voc_evaluate([scores_as_list], [target])


def test_no_detections_gives_zero_and_no_ground_truth_gives_no_class():
    target = _image([[0, 0, 10, 10]], [1])
    assert coco_evaluate([_image([], [], [])], [target]).map == 0.0
    assert voc_evaluate([_image([], [], [])], [target]).mean_ap == 0.0
    result = coco_evaluate([_image([[0, 0, 1, 1]], [2], [0.5])], [_image([], [])])
    assert result.ap_per_class == {} and result.map == -1.0


@pytest.mark.parametrize(
    "gt_boxes, det_boxes, scores",
    [
        ([[0, 0, 10, 10]], [[0, 0, 10, 20]], [0.9]),  # IoU exactly 0.5: a match at t = 0.5 (>=)
        ([[0, 0, 10, 10]], [[0, 0, 10, 40 / 3]], [0.9]),  # IoU 0.75 up to rounding
        (
            [[0, 0, 10, 10], [0, 0, 10, 10]],
            [[0, 0, 10, 10], [0, 0, 10, 12]],
            [0.9, 0.9],
        ),  # duplicates, tied scores
        (
            [[0, 0, 10, 10], [0, 5, 10, 15]],
            [[0, 2.5, 10, 12.5], [0, 0, 10, 10]],
            [0.8, 0.7],
        ),  # equal IoU to both
    ],
)
def test_coco_edge_cases_equal_pycocotools(gt_boxes, det_boxes, scores):
    targets = [_image(gt_boxes, [1] * len(gt_boxes))]
    predictions = [_image(det_boxes, [1] * len(det_boxes), scores)]
    evaluator = _pycocotools_stats(predictions, targets, num_classes=1)
    result = coco_evaluate(predictions, targets)
    assert np.allclose(
        result.precision[:, :, 0], evaluator.eval["precision"][:, :, 0, 0, 2], atol=1e-12
    )
    assert result.map == pytest.approx(evaluator.stats[0], abs=1e-12)
