"""Exercises: every worked solution passes its check, and wrong answers are rejected in words.

The worked solutions live in the chapters, in code cells tagged ``exercise-solution`` (collapsed
in the book); these tests execute them, chapter by chapter in one namespace, as the notebook does.
``DETLIB_EXERCISE_CELLS`` may name a folder of ``NN.json`` cell lists (cells not yet inserted
into the chapters) to read instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import detlib
from detlib.exercises import EXERCISES, ExerciseFailed, check, describe, list_exercises

ROOT = Path(__file__).resolve().parents[1]


def _solution_cells() -> dict[int, list[tuple[str, str]]]:
    """``{chapter: [(exercise id, source), ...]}`` in the order the chapter runs them."""
    found: dict[int, list[tuple[str, str]]] = {}
    folder = os.environ.get("DETLIB_EXERCISE_CELLS")
    if folder:
        for path in sorted(Path(folder).glob("[0-9][0-9].json")):
            for cell in json.loads(path.read_text()):
                if "exercise-solution" in cell.get("metadata", {}).get("tags", []):
                    found.setdefault(int(path.stem), []).append(
                        (cell["metadata"]["exercise"], cell["source"])
                    )
        return found
    import nbformat

    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if "exercise-solution" in cell.metadata.get("tags", []):
                found.setdefault(int(path.name[:2]), []).append(
                    (cell.metadata["exercise"], cell.source)
                )
    return found


SOLUTIONS = _solution_cells()


def test_every_chapter_has_checked_exercises():
    for chapter in range(1, 9):
        assert len(list_exercises(chapter)) >= 2, chapter
    assert len(EXERCISES) >= 23  # plus one question per chapter, answered in a dropdown


def test_every_exercise_has_a_worked_solution():
    if not SOLUTIONS:
        pytest.skip("no solution cells in the chapters yet (see /work/notes/explorers.md)")
    solved = {key for cells in SOLUTIONS.values() for key, _ in cells}
    assert solved == set(EXERCISES), f"exercises without a solution: {set(EXERCISES) - solved}"


@pytest.mark.parametrize("chapter", sorted(SOLUTIONS) or [pytest.param(0, marks=pytest.mark.skip)])
def test_worked_solutions_pass_their_checks(chapter):
    namespace: dict = {}
    for key, source in SOLUTIONS[chapter]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"<solution {key}>", "exec"), namespace)  # noqa: S102
        assert f"Exercise {key} " in out.getvalue() and "passed" in out.getvalue(), out.getvalue()


# --------------------------------------------------------------------------- wrong answers
def _iou_parts(b1, b2):
    lt = torch.max(b1[:, None, :2], b2[:, :2])
    rb = torch.min(b1[:, None, 2:], b2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    a1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    a2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    return inter, a1[:, None] + a2 - inter


def _enclosing(b1, b2):
    lt = torch.min(b1[:, None, :2], b2[:, :2])
    rb = torch.max(b1[:, None, 2:], b2[:, 2:])
    return (rb - lt).clamp(min=0)


def _iou_plus_one(b1, b2):  # the "+1" pixel convention
    b1, b2 = b1.clone(), b2.clone()
    b1[:, 2:] += 1
    b2[:, 2:] += 1
    inter, union = _iou_parts(b1, b2)
    return inter / union


def _iou_no_clamp(b1, b2):  # negative overlaps multiply into positive areas
    lt = torch.max(b1[:, None, :2], b2[:, :2])
    rb = torch.min(b1[:, None, 2:], b2[:, 2:])
    inter = (rb - lt).prod(-1)
    a1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    a2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    return inter / (a1[:, None] + a2 - inter)


def _giou_over_union(b1, b2):  # divides by the union instead of the enclosing area
    inter, union = _iou_parts(b1, b2)
    c = _enclosing(b1, b2).prod(-1)
    return inter / union - (c - union) / union


def _diou_no_square(b1, b2):
    inter, union = _iou_parts(b1, b2)
    c = _enclosing(b1, b2).pow(2).sum(-1) + 1e-7
    d = ((b1[:, None, :2] + b1[:, None, 2:]) / 2 - (b2[:, :2] + b2[:, 2:]) / 2).norm(dim=-1)
    return inter / union - d / c


def _centres(b):
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h, w, h


def _encode_swapped(gt, anchors):  # divides by the box's size instead of the anchor's
    acx, acy, aw, ah = _centres(anchors)
    gcx, gcy, gw, gh = _centres(gt)
    return torch.stack(
        ((gcx - acx) / gw, (gcy - acy) / gh, torch.log(gw / aw), torch.log(gh / ah)), 1
    )


def _encode_no_log(gt, anchors):
    acx, acy, aw, ah = _centres(anchors)
    gcx, gcy, gw, gh = _centres(gt)
    return torch.stack(((gcx - acx) / aw, (gcy - acy) / ah, gw / aw, gh / ah), 1)


def _decode_full_size(deltas, anchors):  # x1 = cx - w instead of cx - w / 2
    acx, acy, aw, ah = _centres(anchors)
    dx, dy, dw, dh = deltas.unbind(1)
    clip = math.log(1000 / 16)
    cx, cy = dx * aw + acx, dy * ah + acy
    w, h = dw.clamp(max=clip).exp() * aw, dh.clamp(max=clip).exp() * ah
    return torch.stack((cx - w, cy - h, cx + w, cy + h), 1)


def _decode_unclipped(deltas, anchors):
    acx, acy, aw, ah = _centres(anchors)
    dx, dy, dw, dh = deltas.unbind(1)
    cx, cy, w, h = dx * aw + acx, dy * ah + acy, dw.exp() * aw, dh.exp() * ah
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), 1)


def _match(strict_low: bool, empty_ok: bool = True):
    def match(iou, high, low):
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), -1 if empty_ok else -2, dtype=torch.int64)
        best, m = iou.max(0)
        below = best <= low if strict_low else best < low
        m[below] = -1
        m[~below & (best < high)] = -2
        return m

    return match


def _match_swapped_codes(iou, high, low):
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), -1, dtype=torch.int64)
    best, m = iou.max(0)
    m[best < low] = -2
    m[(best >= low) & (best < high)] = -1
    return m


def _focal_naive(x, t, a, g):  # log(sigmoid) overflows to -inf for large logits
    p = torch.sigmoid(x)
    return -(a * t * (1 - p) ** g * torch.log(p) + (1 - a) * (1 - t) * p**g * torch.log(1 - p))


def _focal_no_alpha(x, t, a, g):
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    return (1 - (p * t + (1 - p) * (1 - t))) ** g * ce


def _focal_alpha_swapped(x, t, a, g):
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    return ((1 - a) * t + a * (1 - t)) * (1 - p_t) ** g * ce


def _grad_ce_only(x, t, a, g):  # forgets the derivative of the modulating factor
    p = torch.sigmoid(x)
    return torch.where(t > 0.5, a * (1 - p) ** g * (p - 1), (1 - a) * p**g * p)


def _grad_wrong_sign(x, t, a, g):
    p = torch.sigmoid(x)
    lp, lq = F.logsigmoid(x), F.logsigmoid(-x)
    pos = a * (1 - p) ** g * (g * p * lp - (1 - p))
    neg = (1 - a) * p**g * (p - g * (1 - p) * lq)
    return -torch.where(t > 0.5, pos, neg)


def _smooth_l1_nan_at_zero(x, y, beta):
    d = (x - y).abs()
    return torch.where(d <= beta, 0.5 * d * d / beta, d - 0.5 * beta)


def _smooth_l1_no_half(x, y, beta):
    d = (x - y).abs()
    return d if beta == 0 else torch.where(d < beta, d * d / beta, d - 0.5 * beta)


def _fusion(normalise):
    def fuse(inputs, weights):
        w = normalise(weights)
        out = w[0] * inputs[0]
        for wi, x in zip(w[1:], inputs[1:]):
            out = out + wi * x
        return out

    return fuse


def _bilinear_no_clamp(f, y, x):
    c, h, w = f.shape
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    get = lambda i, j: f[:, min(max(i, 0), h - 1), min(max(j, 0), w - 1)]  # noqa: E731
    return (
        (1 - ly) * (1 - lx) * get(y0, x0)
        + (1 - ly) * lx * get(y0, x0 + 1)
        + ly * (1 - lx) * get(y0 + 1, x0)
        + ly * lx * get(y0 + 1, x0 + 1)
    )


def _bilinear_nearest(f, y, x):
    c, h, w = f.shape
    if y < -1 or y > h or x < -1 or x > w:
        return f.new_zeros(c)
    return f[:, min(max(round(y), 0), h - 1), min(max(round(x), 0), w - 1)].clone()


def _roi_align_centre_sample(f, box, output_size, sampling_ratio, aligned):
    from detlib import roi_align

    # ignores sampling_ratio: one sample per bin
    return roi_align(f[None], [box[None]], output_size, sampling_ratio=1, aligned=aligned)[0]


def _roi_align_never_aligned(f, box, output_size, sampling_ratio, aligned):
    from detlib import roi_align

    return roi_align(f[None], [box[None]], output_size, sampling_ratio=sampling_ratio)[0]


def _roi_pool_as_align(f, box, output_size):
    from detlib import roi_align

    return roi_align(f[None], [box[None]], output_size, sampling_ratio=2)[0]


def _roi_pool_mean(f, box, output_size):
    c, h, w = f.shape
    ph, pw = output_size
    x1, y1, x2, y2 = (int(math.floor(float(v) + 0.5)) for v in box)
    bh, bw = max(y2 - y1 + 1, 1) / ph, max(x2 - x1 + 1, 1) / pw
    out = f.new_zeros(c, ph, pw)
    for i in range(ph):
        t, b = min(max(math.floor(i * bh) + y1, 0), h), min(max(math.ceil((i + 1) * bh) + y1, 0), h)
        for j in range(pw):
            lo, hi = (
                min(max(math.floor(j * bw) + x1, 0), w),
                min(max(math.ceil((j + 1) * bw) + x1, 0), w),
            )
            if b > t and hi > lo:
                out[:, i, j] = f[:, t:b, lo:hi].mean(dim=(1, 2))
    return out


def _nms_greater_equal(boxes, scores, thr):
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = detlib.box_iou(boxes, boxes)
    sup = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if not sup[i]:
            keep.append(i)
            sup |= iou[i] >= thr
    return torch.tensor(keep, dtype=torch.int64)


def _nms_index_order(boxes, scores, thr):
    return torch.sort(detlib.nms(boxes, scores, thr)).values


def _nms_unstable(boxes, scores, thr):  # equal scores visited by decreasing index
    order = torch.argsort(scores + torch.arange(len(scores)) * 1e-7, descending=True)
    iou = detlib.box_iou(boxes, boxes)
    sup = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if not sup[i]:
            keep.append(i)
            sup |= iou[i] > thr
    return torch.tensor(keep, dtype=torch.int64)


def _class_blind(boxes, scores, labels, thr):
    return detlib.nms(boxes, scores, thr)


def _class_small_offset(boxes, scores, labels, thr):
    return detlib.nms(boxes + labels[:, None].to(boxes.dtype) * 5.0, scores, thr)


def _soft_linear(boxes, scores, sigma, score_threshold):
    return detlib.soft_nms(
        boxes, scores, iou_threshold=0.3, score_threshold=score_threshold, method="linear"
    )


def _soft_original_scores(boxes, scores, sigma, score_threshold):
    keep, _ = detlib.soft_nms(boxes, scores, sigma=sigma, score_threshold=score_threshold)
    return keep, scores[keep]


def _soft_keep_only(boxes, scores, sigma, score_threshold):
    return detlib.soft_nms(boxes, scores, sigma=sigma, score_threshold=score_threshold)[0]


def _ap_no_envelope(r, p):
    r = np.concatenate(([0.0], r, [1.0]))
    p = np.concatenate(([0.0], p, [0.0]))
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _ap_11_point(r, p):
    r, p = np.asarray(r), np.asarray(p)
    return float(
        np.mean([p[r >= t].max() if (r >= t).any() else 0.0 for t in np.linspace(0, 1, 11)])
    )


def _pr_unsorted(scores, hits, num_gt):
    tp = np.cumsum(np.asarray(hits, dtype=bool))
    return tp / np.arange(1, len(tp) + 1), tp / num_gt


def _pr_swapped(scores, hits, num_gt):
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(hits, dtype=bool)[order])
    return tp / num_gt, tp / np.arange(1, len(tp) + 1)


def _hits_second_best(boxes, gt, thr):  # lets a duplicate fall back on another object
    hits = np.zeros(len(boxes), dtype=bool)
    if len(gt) == 0 or len(boxes) == 0:
        return hits
    iou = detlib.box_iou(torch.as_tensor(boxes), torch.as_tensor(gt)).numpy()
    claimed = np.zeros(len(gt), dtype=bool)
    for d in range(len(boxes)):
        free = np.where(claimed, -1.0, iou[d])
        best = int(np.argmax(free))
        if free[best] > thr:
            hits[d] = claimed[best] = True
    return hits


def _hits_no_claims(boxes, gt, thr):
    if len(gt) == 0:
        return np.zeros(len(boxes), dtype=bool)
    iou = detlib.box_iou(torch.as_tensor(boxes), torch.as_tensor(gt)).numpy()
    return iou.max(axis=1) > thr


def _cell_size_major(sizes, ratios):
    out = []
    for s in sizes:
        for r in ratios:
            w = math.sqrt(s * s / r)
            out.append([-w / 2, -w * r / 2, w / 2, w * r / 2])
    return torch.tensor(out, dtype=torch.float64)


def _cell_ratio_w_over_h(sizes, ratios):
    out = []
    for r in ratios:
        for s in sizes:
            h = math.sqrt(s * s / r)
            out.append([-h * r / 2, -h / 2, h * r / 2, h / 2])
    return torch.tensor(out, dtype=torch.float64)


def _grid_no_offset(cell, stride, grid):
    rows, cols = grid
    ys = torch.arange(rows, dtype=cell.dtype) * stride
    xs = torch.arange(cols, dtype=cell.dtype) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return (torch.stack((cx, cy, cx, cy), -1).reshape(-1, 1, 4) + cell[None]).reshape(-1, 4)


def _grid_column_major(cell, stride, grid):
    rows, cols = grid
    ys = (torch.arange(rows, dtype=cell.dtype) + 0.5) * stride
    xs = (torch.arange(cols, dtype=cell.dtype) + 0.5) * stride
    cx, cy = torch.meshgrid(xs, ys, indexing="ij")
    return (torch.stack((cx, cy, cx, cy), -1).reshape(-1, 1, 4) + cell[None]).reshape(-1, 4)


def _count_floor(size, strides, per_cell):
    return sum((size[0] // s) * (size[1] // s) * a for s, a in zip(strides, per_cell))


def _count_square(size, strides, per_cell):
    return sum(math.ceil(size[1] / s) ** 2 * a for s, a in zip(strides, per_cell))


WRONG = {
    "1.1": [(_cell_size_major, "first difference"), (_cell_ratio_w_over_h, "first difference")],
    "1.2": [(_grid_no_offset, "first difference"), (_grid_column_major, "first difference")],
    "1.3": [(_count_floor, "expected"), (_count_square, "600 x 1000")],
    "2.1": [
        (_giou_over_union, "first difference"),
        (lambda a, b: _iou_parts(a, b)[0] / _iou_parts(a, b)[1], "first difference"),
    ],
    "2.2": [
        (_iou_plus_one, "first difference"),
        (_iou_no_clamp, "first difference"),
        (lambda a, b: _iou_plus_one(a, b).double(), "dtype"),
    ],
    "2.3": [
        (_diou_no_square, "first difference"),
        (detlib.generalized_box_iou, "first difference"),
    ],
    "3.1": [(_encode_swapped, "first difference"), (_encode_no_log, "first difference")],
    "3.2": [(_decode_unclipped, "huge size offsets"), (_decode_full_size, "first difference")],
    "3.3": [
        (_match(True), "exactly at the thresholds"),
        (_match(False, empty_ok=False), "no ground-truth"),
        (_match_swapped_codes, "first difference"),
    ],
    "4.1": [
        (_focal_naive, "NaN or infinity"),
        (_focal_no_alpha, "first difference"),
        (_focal_alpha_swapped, "first difference"),
    ],
    "4.2": [(_grad_ce_only, "first difference"), (_grad_wrong_sign, "first difference")],
    "4.3": [(_smooth_l1_nan_at_zero, "beta 0"), (_smooth_l1_no_half, "first difference")],
    "5.1": [
        (_fusion(lambda w: w / (w.sum() + 1e-4)), "negative weight"),
        (_fusion(lambda w: torch.softmax(w, 0)), "first difference"),
    ],
    "5.2": [
        (_fusion(lambda w: w.exp() / w.exp().sum()), "large weights"),
        (_fusion(lambda w: torch.relu(w) / (torch.relu(w).sum() + 1e-4)), "first difference"),
    ],
    "6.1": [(_bilinear_no_clamp, "outside"), (_bilinear_nearest, "between pixels")],
    "6.2": [
        (_roi_align_centre_sample, "first difference"),
        (_roi_align_never_aligned, "first difference"),
    ],
    "6.3": [(_roi_pool_as_align, "first difference"), (_roi_pool_mean, "first difference")],
    "7.1": [
        (_nms_greater_equal, "threshold 0"),
        (_nms_index_order, "first difference"),
        (_nms_unstable, "equal scores"),
    ],
    "7.2": [(_class_blind, "3 classes"), (_class_small_offset, "expected shape")],
    "7.3": [
        (_soft_linear, "first difference"),
        (_soft_original_scores, "result 2 of the tuple"),
        (_soft_keep_only, "tuple"),
    ],
    "8.1": [(_ap_no_envelope, "expected 0.38"), (_ap_11_point, "expected")],
    "8.2": [(_pr_unsorted, "20 detections"), (_pr_swapped, "result 1 of the tuple")],
    "8.3": [(_hits_second_best, "two close objects"), (_hits_no_claims, "first difference")],
}


def test_every_exercise_has_wrong_answers_tested():
    assert set(WRONG) == set(EXERCISES)


@pytest.mark.parametrize(
    "key,index", [(k, i) for k, variants in WRONG.items() for i in range(len(variants))]
)
def test_wrong_answers_are_rejected_with_a_useful_message(key, index):
    wrong, phrase = WRONG[key][index]
    with pytest.raises(ExerciseFailed) as failure:
        check(key, wrong)
    message = str(failure.value)
    assert message.startswith(f"Exercise {key} ("), message
    assert phrase in message, message
    # the message names the input, what was expected and what came back (or what was raised)
    assert ("expected:" in message and "returned:" in message) or "raised" in message, message


def test_a_function_that_raises_is_reported_with_its_input():
    def broken(boxes1, boxes2):
        raise RuntimeError("not written yet")

    with pytest.raises(ExerciseFailed, match="raised RuntimeError: not written yet") as failure:
        check("2.1", broken)
    assert "boxes1 = Tensor[7, 4] float32" in str(failure.value)


def test_success_message_and_bad_arguments(capsys):
    check("2.2", detlib.box_iou)
    assert "Exercise 2.2 (IoU by broadcasting) passed" in capsys.readouterr().out
    with pytest.raises(ValueError, match="exercise_id must be one of"):
        check("9.9", detlib.box_iou)
    with pytest.raises(TypeError, match="answer must be the function"):
        check("2.2", "box_iou")
    describe("7.2")
    assert "class_aware_nms" in capsys.readouterr().out


def test_check_does_not_let_the_answer_change_the_inputs():
    def mutating(boxes1, boxes2):
        boxes1.zero_()
        return detlib.box_iou(boxes1, boxes2)

    with pytest.raises(ExerciseFailed):
        check("2.2", mutating)
    check("2.2", detlib.box_iou)  # the inputs of the next check are intact
