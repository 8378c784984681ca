"""The chapter explorers compute in the browser what detlib computes: run their modules under node.

Each explorer's JavaScript (detlib/static/*_explorer.js) does its arithmetic in the browser (the
static HTML book has no kernel). These tests import that very file in node, run it on random
settings and compare the results with detlib's.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest
import torch

from detlib.explorers import describe_suppression, fixed, nms_scene, suppress
from detlib.widgets import explorer_module

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed (the book's build needs it too)"
)


def run_node(tmp_path, module: str, body: str, payload: object):
    """Import the explorer ``module`` (``explorer_kit.js``, then ``detlib/static/<module>.js``)
    as ``m`` in node, run ``body`` on ``input``, return what it writes (JSON)."""
    (tmp_path / f"{module}.mjs").write_text(explorer_module(module))
    script = tmp_path / "run.mjs"
    script.write_text(
        f"import * as m from './{module}.mjs';\n"
        "import { readFileSync } from 'node:fs';\n"
        "const input = JSON.parse(readFileSync(process.argv[2], 'utf8'));\n"
        f"{body}\n"
    )
    data = tmp_path / "input.json"
    data.write_text(json.dumps(payload))
    result = subprocess.run(
        [NODE, str(script), str(data)], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- NMS (chapter 7)
def _nms_settings(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    settings = []
    for k in range(count):
        settings.append(
            dict(
                method=("greedy", "gaussian", "linear")[k % 3],
                iou_threshold=round(rng.choice([0.0, 1.0]) if k % 7 == 6 else rng.random(), 2),
                sigma=round(0.05 + 1.45 * rng.random(), 2),
                score_threshold=round(0.9 * rng.random() ** 2, 2),
                seed=rng.randrange(1000),
            )
        )
    return settings


NMS_BODY = (
    "const out = input.map((c) => {\n"
    "  const r = m.suppress(c.boxes, c.scores, c.settings);\n"
    "  return { keep: r.keep, scores: r.scores,\n"
    "           text: m.describe(r, c.settings, c.boxes.length) };\n"
    "});\n"
    "process.stdout.write(JSON.stringify(out));"
)


def test_browser_nms_equals_detlib_on_random_settings(tmp_path):
    cases, expected = [], []
    for s in _nms_settings(30, seed=1):
        boxes, scores = nms_scene(seed=s["seed"], num_objects=2 + s["seed"] % 5)
        settings = {k: v for k, v in s.items() if k != "seed"}
        cases.append(dict(boxes=boxes.tolist(), scores=scores.tolist(), settings=settings))
        keep, kept = suppress(boxes, scores, **settings)
        text = describe_suppression(keep.tolist(), kept.tolist(), len(boxes), **settings)
        expected.append((keep.tolist(), kept, text))
    results = run_node(tmp_path, "nms_explorer", NMS_BODY, cases)
    for case, result, (keep, kept, text) in zip(cases, results, expected):
        assert result["keep"] == keep, case["settings"]
        # greedy scores are the inputs; Soft-NMS's decays use exp (libm vs. PyTorch: last bit)
        assert torch.allclose(torch.tensor(result["scores"], dtype=torch.float64), kept, rtol=1e-12)
        assert result["text"] == text


def test_browser_nms_edge_cases(tmp_path):
    ties = [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0]]
    flat = [[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 4.0, 4.0]]  # zero-area pair
    cases = []
    for boxes, scores in [(ties, [0.9, 0.9, 0.9]), (flat, [0.5, 0.6, 0.7]), ([], [])]:
        for method in ("greedy", "gaussian", "linear"):
            settings = dict(method=method, iou_threshold=0.5, sigma=0.5, score_threshold=0.001)
            cases.append(dict(boxes=boxes, scores=scores, settings=settings))
    results = run_node(tmp_path, "nms_explorer", NMS_BODY, cases)
    for case, result in zip(cases, results):
        boxes = torch.tensor(case["boxes"], dtype=torch.float64).reshape(-1, 4)
        keep, kept = suppress(
            boxes, torch.tensor(case["scores"], dtype=torch.float64), **case["settings"]
        )
        assert result["keep"] == keep.tolist(), case
        assert result["scores"] == pytest.approx(kept.tolist(), rel=1e-12)


def test_fixed_writes_numbers_as_javascript_does(tmp_path):
    values = [0.125, 0.375, 0.005, 1.005, 0.0, 0.994999, 2.5, 0.615, 1e-9]
    js = run_node(
        tmp_path,
        "nms_explorer",
        "process.stdout.write(JSON.stringify(input.map((v) => v.toFixed(2))));",
        values,
    )
    assert js == [fixed(v, 2) for v in values]


def test_nms_explorer_state_round_trips():
    from detlib.explorers import NMSExplorer

    explorer = NMSExplorer(method="gaussian", sigma=0.3)
    state = explorer.get_state()
    assert state["method"] == "gaussian" and state["sigma"] == 0.3
    assert len(explorer.boxes) == len(explorer.scores) == 5 * 7 + 6
    keep, kept = explorer.result()
    assert explorer.describe().startswith("Gaussian Soft-NMS, sigma 0.30")
    assert len(keep) == len(kept) > 0
    import traitlets

    with pytest.raises(traitlets.TraitError, match="method must be one of"):
        explorer.method = "fast"


# --------------------------------------------------------------------------- IoU (chapter 2)
def _random_box(rng: random.Random) -> list[float]:
    x, y = rng.uniform(0, 300), rng.uniform(0, 200)
    return [x, y, x + rng.uniform(4, 200), y + rng.uniform(4, 150)]


IOU_BODY = (
    "const out = input.map((c) => {\n"
    "  const v = m.measures(c.a, c.b);\n"
    "  return { values: v, text: m.describe(v), offsets: m.offsets(c.range, 41),\n"
    "           curves: m.curves(c.a, c.b, c.range, 41) };\n"
    "});\n"
    "process.stdout.write(JSON.stringify(out));"
)


def test_browser_iou_measures_and_curves_equal_detlib(tmp_path):
    from detlib.explorers import IOU_MEASURES, describe_measures, iou_curves, iou_measures

    rng = random.Random(2)
    cases = [
        dict(a=_random_box(rng), b=_random_box(rng), range=rng.choice([100, 250]))
        for _ in range(25)
    ]
    same = [10.0, 10.0, 60.0, 40.0]
    cases += [
        dict(a=same, b=same, range=100),  # identical: every measure is 1
        dict(a=same, b=[20.0, 15.0, 30.0, 25.0], range=100),  # nested
        dict(a=same, b=[200.0, 200.0, 210.0, 260.0], range=100),  # far apart
        dict(a=same, b=[60.0, 10.0, 90.0, 40.0], range=100),  # touching edges
    ]
    results = run_node(tmp_path, "iou_explorer", IOU_BODY, cases)
    for case, result in zip(cases, results):
        expected = iou_measures(case["a"], case["b"])
        for name in ("IoU", "GIoU", "DIoU"):  # the same float64 operations: bit for bit
            assert result["values"][name] == expected[name], (name, case)
        # CIoU uses atan: libm's and PyTorch's may differ in the last bit
        assert result["values"]["CIoU"] == pytest.approx(expected["CIoU"], rel=1e-12, abs=1e-15)
        assert result["text"] == describe_measures(expected)
        offsets, curves = iou_curves(case["a"], case["b"], case["range"], 41)
        assert result["offsets"] == offsets.tolist()
        for name in IOU_MEASURES:
            assert torch.allclose(
                torch.tensor(result["curves"][name], dtype=torch.float64),
                curves[name],
                rtol=1e-12,
                atol=1e-15,
            ), name
        for name in ("IoU", "GIoU", "DIoU"):
            assert result["curves"][name] == curves[name].tolist(), name


def test_iou_explorer_state_round_trips():
    from detlib.explorers import IoUExplorer

    explorer = IoUExplorer(box_b=[110.0, 90.0, 250.0, 200.0])
    assert explorer.get_state()["box_b"] == [110.0, 90.0, 250.0, 200.0]
    assert explorer.measures() == {"IoU": 1.0, "GIoU": 1.0, "DIoU": 1.0, "CIoU": 1.0}
    assert explorer.describe() == "IoU 1.0000, GIoU 1.0000, DIoU 1.0000, CIoU 1.0000"


# --------------------------------------------------------------------------- matching (chapter 3)
MATCHING_BODY = (
    "const out = input.cases.map((c) => {\n"
    "  const anchors = m.anchors(input.pyramid, input.size);\n"
    "  const iou = m.iouMatrix(c.boxes, anchors);\n"
    "  const matches = m.match(iou, anchors.length, c.settings);\n"
    "  return { matches, text: m.describe(m.summary(matches, c.boxes.length), c.settings),\n"
    "           anchors: c.withAnchors ? anchors : null };\n"
    "});\n"
    "process.stdout.write(JSON.stringify(out));"
)


def test_browser_matching_equals_detlib_on_random_settings(tmp_path):
    from detlib import box_iou
    from detlib.explorers import (
        MATCHING_PYRAMID,
        MATCHING_STRATEGIES,
        describe_matches,
        match_with,
        matching_anchors,
        matching_scene,
    )

    rng = random.Random(3)
    cases = []
    for k in range(24):
        if k < 4:
            boxes = matching_scene().tolist()
        else:  # random scenes: small and large boxes, some duplicated (ties)
            boxes = [_random_box(rng) for _ in range(rng.randrange(0, 7))]
            boxes = [[v * 256 / 500 for v in b] for b in boxes]
            if boxes and k % 3 == 0:
                boxes.append(list(boxes[0]))
        settings = dict(
            strategy=list(MATCHING_STRATEGIES)[k % 4],
            high_threshold=round(rng.uniform(0.05, 0.95), 2),
            low_threshold=round(rng.uniform(0.05, 0.95), 2),
        )
        cases.append(dict(boxes=boxes, settings=settings, withAnchors=k == 0))
    results = run_node(
        tmp_path,
        "matching_explorer",
        MATCHING_BODY,
        dict(cases=cases, pyramid=MATCHING_PYRAMID, size=256),
    )
    anchors = matching_anchors()
    assert results[0]["anchors"] == anchors.tolist()  # bit for bit
    for case, result in zip(cases, results):
        boxes = torch.tensor(case["boxes"], dtype=torch.float64).reshape(-1, 4)
        s = case["settings"]
        expected = match_with(
            s["strategy"], box_iou(boxes, anchors), s["high_threshold"], s["low_threshold"]
        )
        assert result["matches"] == expected.tolist(), s
        assert result["text"] == describe_matches(expected, len(boxes), **s)


def test_matching_explorer_teaches_what_it_claims():
    from detlib.explorers import MatchingExplorer

    explorer = MatchingExplorer()
    assert "No positive anchor for box 2, 3, 4, 5." in explorer.describe()  # small and thin
    explorer.strategy = "rpn"
    assert "No positive anchor for box 5." in explorer.describe()  # its best anchor prefers box 4
    explorer.strategy = "ssd"
    ssd = explorer.matches()
    explorer.strategy = "greedy"
    greedy = explorer.matches()
    assert int((ssd == 4).sum()) == 0 and int((greedy == 4).sum()) == 1
    assert explorer.get_state()["strategy"] == "greedy"


# --------------------------------------------------------------------------- focal loss (chapter 4)
FOCAL_BODY = (
    "const out = input.cases.map((c) => {\n"
    "  const s = m.shares(input.logits, input.targets, c.alpha, c.gamma);\n"
    "  return { groups: s.groups, text: m.describe(s, c.alpha, c.gamma),\n"
    "           each: input.logits.slice(0, 60).map((x, i) => m.focal(x, input.targets[i], c.alpha, c.gamma)) };\n"
    "});\n"
    "process.stdout.write(JSON.stringify(out));"
)


def test_browser_focal_loss_equals_detlib_on_random_settings(tmp_path):
    from detlib import sigmoid_focal_loss
    from detlib.explorers import describe_focal, focal_anchor_set, focal_shares

    logits, targets = focal_anchor_set()
    # the first 60 anchors: 40 positives and 20 hard negatives; add saturated logits too
    logits[40:46] = torch.tensor([-60.0, -30.0, 30.0, 60.0, 0.0, 1e-3], dtype=torch.float64)
    rng = random.Random(4)
    cases = [dict(gamma=2.0, alpha=0.25), dict(gamma=0.0, alpha=0.5)]
    cases += [
        dict(gamma=0.5 * rng.randrange(11), alpha=round(0.05 * rng.randrange(1, 20), 2))
        for _ in range(10)
    ]
    payload = dict(cases=cases, logits=logits.tolist(), targets=[int(t) for t in targets.tolist()])
    results = run_node(tmp_path, "focal_explorer", FOCAL_BODY, payload)
    for case, result in zip(cases, results):
        each = sigmoid_focal_loss(logits[:60], targets[:60], **case)
        assert torch.allclose(
            torch.tensor(result["each"], dtype=torch.float64), each, rtol=1e-12, atol=1e-15
        )
        expected = focal_shares(logits, targets, **case)
        for group, (count, focal, ce) in expected.items():
            ours = result["groups"][group]
            assert ours[0] == count
            assert ours[1] == pytest.approx(focal, rel=1e-9) and ours[2] == pytest.approx(
                ce, rel=1e-9
            )
        assert result["text"] == describe_focal(expected, **case)


def test_focal_explorer_numbers():
    from detlib.explorers import FocalLossExplorer

    explorer = FocalLossExplorer()
    shares = explorer.shares()
    assert shares["positive"][0] == 40 and sum(v[0] for v in shares.values()) == 4000
    ce_easy = shares["easy"][2] / sum(v[2] for v in shares.values())
    focal_easy = shares["easy"][1] / sum(v[1] for v in shares.values())
    assert ce_easy > 0.35 and focal_easy < 0.02  # what the explorer is there to show
    assert explorer.describe().startswith("gamma 2.0, alpha 0.25: focal loss ")


# --------------------------------------------------------------------------- RoI pooling (chapter 6)
ROI_BODY = (
    "const out = input.cases.map((c) => {\n"
    "  const pool = m.roiPool(input.map, c.roi, c.output_size);\n"
    "  const align = m.roiAlign(input.map, c.roi, c.output_size, c.sampling_ratio, c.aligned);\n"
    "  return { pool, align, text: m.describe(pool, align, c) };\n"
    "});\n"
    "process.stdout.write(JSON.stringify(out));"
)


def test_browser_roi_pool_and_align_equal_detlib_on_random_settings(tmp_path):
    from detlib.explorers import describe_roi, roi_feature_map, roi_outputs

    feature = roi_feature_map()
    rng = random.Random(5)
    cases = []
    for k in range(40):
        x1, y1 = rng.uniform(-1.5, 7), rng.uniform(-1.5, 7)
        roi = [round(v, 1) for v in (x1, y1, x1 + rng.uniform(0.2, 6), y1 + rng.uniform(0.2, 6))]
        cases.append(
            dict(
                roi=roi,
                output_size=rng.randrange(1, 8),
                sampling_ratio=rng.randrange(0, 5),
                aligned=k % 2 == 0,
            )
        )
    cases.append(
        dict(roi=[2.5, -2.5, 4.5, 0.5], output_size=2, sampling_ratio=2, aligned=False)
    )  # halves
    cases.append(
        dict(roi=[7.0, 7.0, 9.5, 9.5], output_size=3, sampling_ratio=0, aligned=True)
    )  # outside
    results = run_node(tmp_path, "roi_explorer", ROI_BODY, dict(cases=cases, map=feature.tolist()))
    for case, result in zip(cases, results):
        pool, align = roi_outputs(
            feature, case["roi"], case["output_size"], case["sampling_ratio"], case["aligned"]
        )
        assert result["pool"] == pool.tolist(), case  # maxima of the same numbers: exact
        assert torch.allclose(
            torch.tensor(result["align"], dtype=torch.float64), align, rtol=1e-12, atol=1e-12
        ), case
        settings = {k: case[k] for k in ("output_size", "sampling_ratio", "aligned")}
        # The text rounds to 2 decimals: a value within rounding noise of a tie (x.xx5, common
        # here since the map has one decimal) may round either way in the last ulp.
        ties = ((align * 100) % 1 - 0.5).abs() < 1e-9
        if not bool(ties.any()):
            assert result["text"] == describe_roi(pool, align, **settings)


def test_roi_explorer_state_round_trips():
    from detlib.explorers import RoIExplorer

    explorer = RoIExplorer(aligned=True, output_size=3)
    state = explorer.get_state()
    assert state["aligned"] is True and len(state["feature"]) == 8
    pool, align = explorer.outputs()
    assert pool.shape == align.shape == (3, 3)
    assert explorer.describe().startswith("3 x 3 bins, 2 x 2 samples, aligned on: RoI Pool ")


# --------------------------------------------------------------------------- fusion (chapter 5)
FUSION_BODY = (
    "const out = input.cases.map((c) => {\n"
    "  const w = m.normalisedWeights(c.raw, c.kind);\n"
    "  return { weights: w, fused: m.fuse(input.signals, w), text: m.describe(w, c.kind) };\n"
    "});\n"
    "process.stdout.write(JSON.stringify(out));"
)


def test_browser_fusion_equals_detlib_on_random_settings(tmp_path):
    from detlib.explorers import describe_fusion, fusion_result, fusion_signals

    signals = fusion_signals()
    rng = random.Random(6)
    cases = [dict(raw=[1.0, 1.0, 1.0], kind="fast"), dict(raw=[-1.0, -0.5, -2.0], kind="fast")]
    cases += [
        dict(raw=[round(rng.uniform(-2, 4), 1) for _ in range(3)], kind=("fast", "softmax")[k % 2])
        for k in range(20)
    ]
    results = run_node(
        tmp_path, "fusion_explorer", FUSION_BODY, dict(cases=cases, signals=signals.tolist())
    )
    for case, result in zip(cases, results):
        weights, fused = fusion_result(signals, case["raw"], case["kind"])
        if case["kind"] == "fast":  # relu, sum, divide: the same operations, bit for bit
            assert result["weights"] == weights.tolist(), case
            assert result["fused"] == fused.tolist(), case
        else:  # exp: libm's and PyTorch's may differ in the last bit
            assert result["weights"] == pytest.approx(weights.tolist(), rel=1e-12)
            assert result["fused"] == pytest.approx(fused.tolist(), rel=1e-12, abs=1e-15)
        assert result["text"] == describe_fusion(weights, case["kind"])


def test_fusion_explorer_state_round_trips():
    from detlib.explorers import FusionExplorer

    explorer = FusionExplorer(raw_weights=[2.0, 0.0, -1.0])
    assert (
        explorer.describe() == "fast normalised fusion: weights 1.000, 0.000, 0.000 (sum 0.99995)"
    )
    explorer.kind = "softmax"
    assert explorer.get_state()["kind"] == "softmax"
    assert explorer.describe().startswith("softmax fusion: weights 0.84")


# --------------------------------------------------------------------------- PR curve (chapter 8)
PR_BODY = (
    "const out = input.map((c) => {\n"
    "  const curve = m.precisionRecall(c.scores, c.hits, c.num_gt);\n"
    "  const { ap } = m.averagePrecision(curve.recall, curve.precision);\n"
    "  const at = m.atThreshold(c.scores, curve, c.threshold);\n"
    "  return { precision: curve.precision, recall: curve.recall, ap, at,\n"
    "           text: m.describe('c', ap, at, c.threshold) };\n"
    "});\n"
    "process.stdout.write(JSON.stringify(out));"
)


def test_browser_precision_recall_and_ap_equal_detlib(tmp_path):
    import numpy as np

    from detlib.exercises import precision_recall
    from detlib.explorers import describe_pr, pr_at_threshold

    rng = np.random.default_rng(7)
    cases = []
    for k in range(20):
        n = int(rng.integers(1, 80))
        scores = np.round(rng.random(n), 2 if k % 2 else 6)  # 2 decimals: many ties
        hits = rng.random(n) < rng.uniform(0.2, 0.95)
        cases.append(
            dict(
                scores=scores.tolist(),
                hits=hits.tolist(),
                num_gt=int(hits.sum()) + int(rng.integers(1, 5)),
                threshold=round(float(rng.choice(np.arange(0, 1, 0.05))), 2),
            )
        )
    cases.append(dict(scores=[], hits=[], num_gt=3, threshold=0.5))
    results = run_node(tmp_path, "pr_explorer", PR_BODY, cases)
    for case, result in zip(cases, results):
        precision, recall = precision_recall(
            np.array(case["scores"]), np.array(case["hits"], dtype=bool), case["num_gt"]
        )
        assert result["precision"] == precision.tolist() and result["recall"] == recall.tolist()
        expected = pr_at_threshold(case["scores"], case["hits"], case["num_gt"], case["threshold"])
        assert result["ap"] == pytest.approx(
            expected["ap"], rel=1e-12, abs=1e-15
        )  # numpy sums pairwise
        assert (
            result["at"]["kept"] == expected["kept"]
            and result["at"]["precision"] == expected["precision"]
        )
        assert result["text"] == describe_pr("c", expected, case["threshold"])


def test_pr_explorer_state_and_checks():
    from detlib.explorers import PRExplorer

    explorer = PRExplorer(
        {"circle": ([0.9, 0.8, 0.3], [True, False, True], 2)}, score_threshold=0.5
    )
    assert (
        explorer.describe()
        == "circle: AP 0.833; score >= 0.50: 2 detections, precision 0.500, recall 0.500"
    )
    assert explorer.get_state()["classes"] == ["circle"]
    with pytest.raises(ValueError, match="as many hits as scores"):
        PRExplorer({"circle": ([0.9], [True, False], 2)})
