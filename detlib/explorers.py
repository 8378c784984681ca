"""The chapters' explorers: figures the reader drives, computed in the browser (anywidget).

Each explorer's JavaScript (``detlib/static/*_explorer.js``) does the arithmetic in the browser,
so it works in the static HTML book (offline, no kernel), in Jupyter and in Colab; its Python
class syncs the settings back to the kernel and computes the same result with detlib
(``result()``, ``describe()``). ``tests/test_explorers_js.py`` runs the JavaScript under node on
random settings and compares it with detlib.

* :class:`NMSExplorer` (chapter 7): greedy NMS and Soft-NMS on a crowd of scored boxes.
* :class:`IoUExplorer` (chapter 2): two boxes, IoU / GIoU / DIoU / CIoU and their curves.

The classes are built on first use, so that importing detlib does not import anywidget.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import torch

from detlib.widgets import explorer_module

__all__ = [
    "describe_measures",
    "describe_suppression",
    "iou_curves",
    "iou_measures",
    "nms_scene",
    "suppress",
]  # and the lazily built classes

_STATIC = Path(__file__).parent / "static"
NMS_METHODS = ("greedy", "gaussian", "linear")


def fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals as JavaScript's ``toFixed`` writes it (ties away from
    zero on the exact binary value, where Python's format rounds ties to even)."""
    quantum = Decimal(1).scaleb(-digits)
    text = str(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP))
    return "0." + "0" * digits if text == "-" + "0." + "0" * digits else text


# --------------------------------------------------------------------------- chapter 7: NMS
def nms_scene(
    num_objects: int = 5,
    per_object: int = 7,
    clutter: int = 6,
    size: tuple[int, int] = (320, 480),
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A crowd of scored detections: ``boxes`` ``[N, 4]`` and ``scores`` ``[N]`` (float64).

    ``num_objects`` objects, each found ``per_object`` times with jittered boxes and decreasing
    scores, two of them overlapping heavily (people side by side), plus ``clutter`` low-scored
    boxes. Coordinates are multiples of 1/4 pixel and scores have 4 decimals, so the browser and
    Python read the same numbers. ``size = (height, width)``.
    """
    if num_objects < 1 or per_object < 1 or clutter < 0:
        raise ValueError(
            "nms_scene: num_objects and per_object must be >= 1 and clutter >= 0, got "
            f"{num_objects}, {per_object}, {clutter}"
        )
    height, width = size
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    wh = torch.stack((rand(num_objects) * 0.2 + 0.12, rand(num_objects) * 0.3 + 0.2), 1)
    wh = wh * torch.tensor([width, height], dtype=torch.float64)
    centre = (
        rand(num_objects, 2) * torch.tensor([width, height]) * 0.7
        + torch.tensor([width, height]) * 0.15
    )
    if num_objects >= 2:  # a second object right beside the first: IoU around 0.3 to 0.5
        centre[1] = centre[0] + torch.tensor([0.35, 0.05], dtype=torch.float64) * wh[0]
        wh[1] = wh[0]
    boxes, scores = [], []
    for k in range(num_objects):
        top = 0.6 + 0.35 * float(rand(1))
        for j in range(per_object):
            jitter = (rand(4) - 0.5) * 0.25 * wh[k].repeat(2)
            box = torch.cat((centre[k] - wh[k] / 2, centre[k] + wh[k] / 2)) + jitter
            boxes.append(box)
            scores.append(top * (1 - 0.12 * j) * (0.9 + 0.1 * float(rand(1))))
    for _ in range(clutter):
        c = rand(2) * torch.tensor([width, height], dtype=torch.float64)
        s = (rand(2) * 0.1 + 0.05) * torch.tensor([width, height], dtype=torch.float64)
        boxes.append(torch.cat((c - s / 2, c + s / 2)))
        scores.append(0.05 + 0.2 * float(rand(1)))
    out = torch.stack(boxes)
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    out = torch.round(out * 4) / 4
    return out, torch.round(torch.tensor(scores, dtype=torch.float64) * 1e4) / 1e4


def suppress(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    method: str = "greedy",
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the NMS explorer computes: ``(keep, kept_scores)`` by detlib, ``method`` one of
    ``NMS_METHODS`` ("greedy" is :func:`detlib.nms`, the others :func:`detlib.soft_nms`)."""
    from detlib import nms, soft_nms

    if method not in NMS_METHODS:
        raise ValueError(f"suppress: method must be one of {NMS_METHODS}, got {method!r}")
    if method == "greedy":
        keep = nms(boxes, scores, iou_threshold)
        return keep, scores[keep]
    return soft_nms(
        boxes,
        scores,
        iou_threshold=iou_threshold,
        sigma=sigma,
        score_threshold=score_threshold,
        method=method,
    )


def describe_suppression(
    keep: list[int],
    kept_scores: list[float],
    total: int,
    method: str,
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
) -> str:
    """The sentence the NMS explorer shows (the same as its JavaScript's ``describe``)."""
    if method == "greedy":
        name = f"greedy NMS at IoU {fixed(iou_threshold, 2)}"
    elif method == "gaussian":
        name = (
            f"Gaussian Soft-NMS, sigma {fixed(sigma, 2)}, "
            f"score threshold {fixed(score_threshold, 2)}"
        )
    else:
        name = (
            f"linear Soft-NMS at IoU {fixed(iou_threshold, 2)}, "
            f"score threshold {fixed(score_threshold, 2)}"
        )
    shown = [f"{i} ({fixed(s, 2)})" for i, s in zip(keep[:8], kept_scores[:8])]
    more = ", ..." if len(keep) > 8 else ""
    return f"{name} keeps {len(keep)} of {total} boxes: {', '.join(shown)}{more}"


def _anywidget_base():
    try:
        import anywidget
    except ImportError as error:  # pragma: no cover - anywidget is in requirements.txt
        raise ImportError("the explorers need anywidget: pip install anywidget") from error
    return anywidget.AnyWidget


def _make_nms_explorer():
    import traitlets

    class NMSExplorer(_anywidget_base()):
        """Greedy NMS and Soft-NMS on a crowd of scored boxes, computed in the browser.

        Controls: the method (greedy, Gaussian or linear Soft-NMS), the IoU threshold, Soft-NMS's
        sigma and score threshold. The kept boxes are drawn with their order and (decayed)
        scores. :meth:`result` and :meth:`describe` give detlib's answer for the current settings.
        """

        _esm = explorer_module("nms_explorer")
        _css = _STATIC / "explorers.css"
        method = traitlets.Unicode("greedy").tag(sync=True)
        iou_threshold = traitlets.Float(0.5).tag(sync=True)
        sigma = traitlets.Float(0.5).tag(sync=True)
        score_threshold = traitlets.Float(0.05).tag(sync=True)
        boxes = traitlets.List().tag(sync=True)
        scores = traitlets.List().tag(sync=True)
        image_width = traitlets.Int(480).tag(sync=True)
        image_height = traitlets.Int(320).tag(sync=True)

        def __init__(self, seed: int = 0, **settings):
            super().__init__(**settings)
            boxes, scores = nms_scene(size=(self.image_height, self.image_width), seed=seed)
            self.boxes, self.scores = boxes.tolist(), scores.tolist()

        @traitlets.validate("method")
        def _valid_method(self, proposal):
            if proposal["value"] not in NMS_METHODS:
                raise traitlets.TraitError(
                    f"NMSExplorer: method must be one of {NMS_METHODS}, got {proposal['value']!r}"
                )
            return proposal["value"]

        def result(self) -> tuple[torch.Tensor, torch.Tensor]:
            """detlib's ``(keep, kept_scores)`` for the current settings."""
            return suppress(
                torch.tensor(self.boxes, dtype=torch.float64).reshape(-1, 4),
                torch.tensor(self.scores, dtype=torch.float64),
                self.method,
                self.iou_threshold,
                self.sigma,
                self.score_threshold,
            )

        def describe(self) -> str:
            """The sentence the browser shows, computed by detlib in the kernel."""
            keep, kept = self.result()
            return describe_suppression(
                keep.tolist(),
                kept.tolist(),
                len(self.boxes),
                self.method,
                self.iou_threshold,
                self.sigma,
                self.score_threshold,
            )

    return NMSExplorer


# --------------------------------------------------------------------------- chapter 2: IoU
IOU_MEASURES = ("IoU", "GIoU", "DIoU", "CIoU")


def iou_measures(box_a: Sequence[float], box_b: Sequence[float]) -> dict[str, float]:
    """IoU, GIoU, DIoU and CIoU of two boxes ``(x1, y1, x2, y2)``, by detlib in float64."""
    values = _measure_rows(
        torch.tensor([box_a], dtype=torch.float64), torch.tensor([box_b], dtype=torch.float64)
    )
    return {name: float(v[0]) for name, v in values.items()}


def _measure_rows(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each measure of ``a`` (``[1, 4]``) with every box of ``b`` (``[K, 4]``): ``{name: [K]}``."""
    from detlib import box_iou, complete_box_iou, distance_box_iou, generalized_box_iou

    functions = (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou)
    return {name: fn(a, b)[0] for name, fn in zip(IOU_MEASURES, functions)}


def iou_curves(
    box_a: Sequence[float], box_b: Sequence[float], offset_range: float, count: int = 161
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each measure as ``box_b`` slides horizontally: ``(offsets [count], {name: [count]})``.

    At offset ``t`` the centre of ``box_b`` is ``t`` to the right of the centre of ``box_a``;
    its size and vertical position are kept. The offsets run from ``-offset_range`` to
    ``offset_range``.
    """
    if count < 2:
        raise ValueError(f"iou_curves: count must be >= 2, got {count}")
    r = float(offset_range)
    offsets = [-r + (2 * r * k) / (count - 1) for k in range(count)]
    centre = (box_a[0] + box_a[2]) / 2
    half = (box_b[2] - box_b[0]) * 0.5
    moved = [[centre + t - half, box_b[1], centre + t + half, box_b[3]] for t in offsets]
    values = _measure_rows(
        torch.tensor([box_a], dtype=torch.float64), torch.tensor(moved, dtype=torch.float64)
    )
    return torch.tensor(offsets, dtype=torch.float64), values


def describe_measures(values: dict[str, float]) -> str:
    """The sentence the IoU explorer shows (the same as its JavaScript's ``describe``)."""
    return ", ".join(f"{name} {fixed(values[name], 4)}" for name in IOU_MEASURES)


def _make_iou_explorer():
    import traitlets

    class IoUExplorer(_anywidget_base()):
        """Two boxes the reader drags and resizes, with their IoU, GIoU, DIoU and CIoU.

        The scene shows the target (``box_a``), the prediction (``box_b``), their intersection,
        the enclosing box and the line between the centres; the plot shows each measure as the
        prediction slides horizontally past the target, with the current position marked.
        :meth:`measures` and :meth:`describe` give detlib's numbers for the current boxes.
        """

        _esm = explorer_module("iou_explorer")
        _css = _STATIC / "explorers.css"
        box_a = traitlets.List(traitlets.Float(), default_value=[110.0, 90.0, 250.0, 200.0]).tag(
            sync=True
        )
        box_b = traitlets.List(traitlets.Float(), default_value=[170.0, 120.0, 280.0, 260.0]).tag(
            sync=True
        )
        scene_width = traitlets.Int(400).tag(sync=True)
        scene_height = traitlets.Int(300).tag(sync=True)
        curve_range = traitlets.Int(250).tag(sync=True)

        def measures(self) -> dict[str, float]:
            """detlib's IoU, GIoU, DIoU and CIoU of the current boxes."""
            return iou_measures(self.box_a, self.box_b)

        def describe(self) -> str:
            """The sentence the browser shows, computed by detlib in the kernel."""
            return describe_measures(self.measures())

    return IoUExplorer


# --------------------------------------------------------------------------- chapter 3: matching
MATCHING_STRATEGIES = {
    "retinanet": ("RetinaNet (thresholds)", 0.5, 0.4),
    "rpn": ("RPN (+ low-quality matches)", 0.7, 0.3),
    "ssd": ("SSD (best anchor, then threshold)", 0.5, None),
    "greedy": ("greedy one-to-one, then threshold", 0.5, None),
}
MATCHING_PYRAMID = {
    "strides": [8, 16, 32, 64],
    "sizes": [[32.0], [64.0], [128.0], [256.0]],
    "ratios": [0.5, 1.0, 2.0],
}


def matching_scene() -> torch.Tensor:
    """The matching explorer's ground-truth boxes on a 256 x 256 image, ``[6, 4]`` (float64).

    A large and a medium box, a small one (14 pixels: no anchor of the pyramid reaches IoU 0.4
    with it), a long thin one, and two small boxes side by side that share their best anchor (SSD
    gives it to the second and leaves the first without any; greedy matching finds the first
    another one).
    """
    return torch.tensor(
        [
            [20.0, 24.0, 132.0, 150.0],
            [150.0, 30.0, 230.0, 96.0],
            [60.0, 196.0, 74.0, 210.0],
            [120.0, 214.0, 236.0, 232.0],
            [150.0, 120.0, 168.0, 138.0],
            [154.0, 122.0, 172.0, 140.0],
        ],
        dtype=torch.float64,
    )


def matching_anchors(pyramid: dict | None = None, image_size: int = 256) -> torch.Tensor:
    """The explorer's anchors, ``[N, 4]`` (float64), by :class:`detlib.AnchorGenerator`."""
    from detlib import AnchorGenerator

    pyramid = pyramid or MATCHING_PYRAMID
    generator = AnchorGenerator(
        strides=pyramid["strides"], sizes=pyramid["sizes"], aspect_ratios=pyramid["ratios"]
    )
    return generator((image_size, image_size), dtype=torch.float64)


def match_with(
    strategy: str, iou: torch.Tensor, high_threshold: float, low_threshold: float
) -> torch.Tensor:
    """What the matching explorer computes: ``[N]`` matches by detlib for one strategy."""
    from detlib import Matcher, greedy_match, ssd_match

    if strategy not in MATCHING_STRATEGIES:
        raise ValueError(
            f"match_with: strategy must be one of {tuple(MATCHING_STRATEGIES)}, got {strategy!r}"
        )
    if strategy == "ssd":
        return ssd_match(iou, high_threshold)
    if strategy == "greedy":
        return greedy_match(iou, high_threshold)
    low = min(low_threshold, high_threshold)
    return Matcher(high_threshold, low, allow_low_quality_matches=strategy == "rpn")(iou)


def describe_matches(
    matches: torch.Tensor,
    num_boxes: int,
    strategy: str,
    high_threshold: float,
    low_threshold: float,
) -> str:
    """The sentence the matching explorer shows (the same as its JavaScript's ``describe``)."""
    per_box = [int((matches == g).sum()) for g in range(num_boxes)]
    ignored, negative = int((matches == -2).sum()), int((matches == -1).sum())
    label = MATCHING_STRATEGIES[strategy][0]
    if strategy in ("ssd", "greedy"):
        rule = f"IoU >= {fixed(high_threshold, 2)}"
    else:
        low = min(low_threshold, high_threshold)
        rule = f"IoU >= {fixed(high_threshold, 2)} positive, < {fixed(low, 2)} negative"
    missing = [str(g) for g, n in enumerate(per_box) if n == 0]
    tail = (
        f" No positive anchor for box {', '.join(missing)}."
        if missing
        else " Every box has a positive anchor."
    )
    return (
        f"{label}, {rule}: {sum(per_box):,} positive, {ignored:,} ignored, {negative:,} negative "
        f"anchors; positives per box: {', '.join(map(str, per_box))}.{tail}"
    )


def _make_matching_explorer():
    import traitlets

    class MatchingExplorer(_anywidget_base()):
        """Ground-truth boxes over an anchor pyramid, matched by one of four strategies.

        Controls: the strategy (RetinaNet's thresholds, the RPN's with low-quality matches, SSD's,
        greedy one-to-one) and its thresholds. Anchors are drawn positive (in their box's colour)
        or ignored; the count of positives per box is reported and a box that gets none is
        highlighted. :meth:`matches` and :meth:`describe` give detlib's answer.
        """

        _esm = explorer_module("matching_explorer")
        _css = _STATIC / "explorers.css"
        strategy = traitlets.Unicode("retinanet").tag(sync=True)
        high_threshold = traitlets.Float(0.5).tag(sync=True)
        low_threshold = traitlets.Float(0.4).tag(sync=True)
        boxes = traitlets.List().tag(sync=True)
        pyramid = traitlets.Dict().tag(sync=True)
        image_size = traitlets.Int(256).tag(sync=True)

        def __init__(self, **settings):
            super().__init__(**settings)
            if not self.boxes:
                self.boxes = matching_scene().tolist()
            if not self.pyramid:
                self.pyramid = MATCHING_PYRAMID

        @traitlets.validate("strategy")
        def _valid_strategy(self, proposal):
            if proposal["value"] not in MATCHING_STRATEGIES:
                raise traitlets.TraitError(
                    f"MatchingExplorer: strategy must be one of {tuple(MATCHING_STRATEGIES)}, "
                    f"got {proposal['value']!r}"
                )
            return proposal["value"]

        def matches(self) -> torch.Tensor:
            """detlib's ``[N]`` matches for the current settings (``-1`` negative, ``-2`` ignored)."""
            from detlib import box_iou

            anchors = matching_anchors(self.pyramid, self.image_size)
            boxes = torch.tensor(self.boxes, dtype=torch.float64).reshape(-1, 4)
            iou = box_iou(boxes, anchors)
            return match_with(self.strategy, iou, self.high_threshold, self.low_threshold)

        def describe(self) -> str:
            """The sentence the browser shows, computed by detlib in the kernel."""
            return describe_matches(
                self.matches(),
                len(self.boxes),
                self.strategy,
                self.high_threshold,
                self.low_threshold,
            )

    return MatchingExplorer


# --------------------------------------------------------------------------- chapter 4: focal loss
EASY_PT = 0.9  # an anchor is easy when the probability of its true label is above this


def focal_anchor_set(
    num_anchors: int = 4000, num_positives: int = 40, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets ``[N]`` (float64) of a detector early in training.

    Most negatives are already easy (logits around -4.5, probability about 1%), 1% are hard
    (logits around -1, objects' neighbours and look-alikes), and the positives are uncertain
    (logits around 0). Logits have 3 decimals, so the browser and Python read the same numbers.
    """
    if not 0 < num_positives < num_anchors:
        raise ValueError(
            "focal_anchor_set: need 0 < num_positives < num_anchors, got "
            f"{num_positives} and {num_anchors}"
        )
    g = torch.Generator().manual_seed(seed)
    num_negatives = num_anchors - num_positives
    num_hard = num_negatives // 100
    normal = lambda n, mean, std: torch.randn(n, generator=g, dtype=torch.float64) * std + mean  # noqa: E731
    logits = torch.cat(
        (
            normal(num_positives, 0.0, 1.5),
            normal(num_hard, -1.0, 1.0),
            normal(num_negatives - num_hard, -4.5, 1.5),
        )
    )
    targets = torch.zeros(num_anchors, dtype=torch.float64)
    targets[:num_positives] = 1
    return torch.round(logits * 1000) / 1000, targets


def focal_shares(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float
) -> dict[str, tuple[int, float, float]]:
    """``{group: (count, focal loss, cross-entropy)}`` for the groups "positive", "hard" and
    "easy" (negatives whose ``p_t > 0.9``), by :func:`detlib.sigmoid_focal_loss`."""
    import torch.nn.functional as F

    from detlib import sigmoid_focal_loss

    focal = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, p, 1 - p)
    groups = {
        "positive": targets == 1,
        "hard": (targets != 1) & (p_t <= EASY_PT),
        "easy": (targets != 1) & (p_t > EASY_PT),
    }
    return {
        name: (int(mask.sum()), float(focal[mask].sum()), float(ce[mask].sum()))
        for name, mask in groups.items()
    }


def describe_focal(groups: dict[str, tuple[int, float, float]], alpha: float, gamma: float) -> str:
    """The sentence the focal-loss explorer shows (the same as its JavaScript's ``describe``)."""
    focal_total = sum(v[1] for v in groups.values())
    ce_total = sum(v[2] for v in groups.values())

    def pct(value: float, total: float) -> str:
        return f"{fixed(100 * value / total, 1)}%"

    easy, hard, positive = groups["easy"], groups["hard"], groups["positive"]
    return (
        f"gamma {fixed(gamma, 1)}, alpha {fixed(alpha, 2)}: focal loss {fixed(focal_total, 2)} "
        f"(cross-entropy {fixed(ce_total, 1)}); {easy[0]:,} easy negatives give "
        f"{pct(easy[1], focal_total)} of it ({pct(easy[2], ce_total)} of the cross-entropy), "
        f"{hard[0]:,} hard negatives {pct(hard[1], focal_total)}, "
        f"{positive[0]:,} positives {pct(positive[1], focal_total)}"
    )


def _make_focal_explorer():
    import traitlets

    class FocalLossExplorer(_anywidget_base()):
        """The focal loss's gamma and alpha, with the loss curves and who contributes the loss.

        The anchor set is :func:`focal_anchor_set` (4,000 anchors, 40 positives). The browser
        reports the total focal loss and cross-entropy, and the shares of positives, hard and easy
        negatives; :meth:`shares` and :meth:`describe` give detlib's numbers.
        """

        _esm = explorer_module("focal_explorer")
        _css = _STATIC / "explorers.css"
        gamma = traitlets.Float(2.0).tag(sync=True)
        alpha = traitlets.Float(0.25).tag(sync=True)
        logits = traitlets.List().tag(sync=True)
        targets = traitlets.List().tag(sync=True)

        def __init__(self, seed: int = 0, **settings):
            super().__init__(**settings)
            logits, targets = focal_anchor_set(seed=seed)
            self.logits, self.targets = logits.tolist(), [int(t) for t in targets.tolist()]

        def shares(self) -> dict[str, tuple[int, float, float]]:
            """detlib's ``{group: (count, focal loss, cross-entropy)}`` for the settings."""
            logits = torch.tensor(self.logits, dtype=torch.float64)
            targets = torch.tensor(self.targets, dtype=torch.float64)
            return focal_shares(logits, targets, self.alpha, self.gamma)

        def describe(self) -> str:
            """The sentence the browser shows, computed by detlib in the kernel."""
            return describe_focal(self.shares(), self.alpha, self.gamma)

    return FocalLossExplorer


# --------------------------------------------------------------------------- chapter 6: RoI pooling
def roi_feature_map(size: int = 8, seed: int = 0) -> torch.Tensor:
    """The RoI explorer's one-channel feature map ``[size, size]`` (float64): a smooth bump plus
    noise, values with one decimal in about ``[0, 9]``."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float64),
        torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )
    centre = size * 0.55
    bump = 8 * torch.exp(-((xs - centre) ** 2 + (ys - centre * 0.8) ** 2) / (size * 0.9))
    noise = torch.rand(size, size, generator=g, dtype=torch.float64) * 1.5
    return torch.round((bump + noise) * 10) / 10


def roi_outputs(
    feature: torch.Tensor,
    roi: Sequence[float],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(RoI Pool, RoI Align)`` of one RoI ``(x1, y1, x2, y2)`` on a ``[H, W]`` map, each
    ``[output_size, output_size]``, by :func:`detlib.roi_pool` and :func:`detlib.roi_align`
    (spatial scale 1; a ``sampling_ratio <= 0`` is adaptive)."""
    from detlib import roi_align, roi_pool

    x = feature[None, None]
    box = [torch.tensor([roi], dtype=feature.dtype)]
    pool = roi_pool(x, box, output_size)[0, 0]
    align = roi_align(x, box, output_size, sampling_ratio=sampling_ratio, aligned=aligned)[0, 0]
    return pool, align


def describe_roi(
    pool: torch.Tensor, align: torch.Tensor, output_size: int, sampling_ratio: int, aligned: bool
) -> str:
    """The numbers the RoI explorer shows (its JavaScript's ``describe``)."""

    def grid(m: torch.Tensor) -> str:
        return " | ".join(" ".join(fixed(v, 2) for v in row) for row in m.tolist())

    sampling = (
        f"{sampling_ratio} x {sampling_ratio} samples"
        if sampling_ratio > 0
        else "adaptive sampling"
    )
    return (
        f"{output_size} x {output_size} bins, {sampling}, aligned {'on' if aligned else 'off'}: "
        f"RoI Pool {grid(pool)}; RoI Align {grid(align)}"
    )


def _make_roi_explorer():
    import traitlets

    class RoIExplorer(_anywidget_base()):
        """A RoI the reader moves and resizes on a feature map; RoI Pool and RoI Align side by side.

        Controls: output size, sampling ratio (0: adaptive) and ``aligned``. The map shows RoI
        Align's bins and sampling points and RoI Pool's whole-cell bins; :meth:`outputs` and
        :meth:`describe` give detlib's results for the current settings.
        """

        _esm = explorer_module("roi_explorer")
        _css = _STATIC / "explorers.css"
        roi = traitlets.List(traitlets.Float(), default_value=[1.3, 1.6, 6.2, 5.4]).tag(sync=True)
        output_size = traitlets.Int(2).tag(sync=True)
        sampling_ratio = traitlets.Int(2).tag(sync=True)
        aligned = traitlets.Bool(False).tag(sync=True)
        feature = traitlets.List().tag(sync=True)

        def __init__(self, seed: int = 0, **settings):
            super().__init__(**settings)
            if not self.feature:
                self.feature = roi_feature_map(seed=seed).tolist()

        def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
            """detlib's ``(RoI Pool, RoI Align)`` outputs for the current settings."""
            return roi_outputs(
                torch.tensor(self.feature, dtype=torch.float64),
                self.roi,
                self.output_size,
                self.sampling_ratio,
                self.aligned,
            )

        def describe(self) -> str:
            """The numbers the browser shows, computed by detlib in the kernel."""
            pool, align = self.outputs()
            return describe_roi(pool, align, self.output_size, self.sampling_ratio, self.aligned)

    return RoIExplorer


# --------------------------------------------------------------------------- chapter 5: fusion
FUSION_INPUTS = ("P4 in", "P5 up", "P3 down")


def fusion_signals(length: int = 48, seed: int = 0) -> torch.Tensor:
    """Three rows of feature maps to fuse, ``[3, length]`` (float64, 3 decimals): a sharp one
    (the level's own input), a smooth one (upsampled from a coarser level) and a noisy one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 1, length, dtype=torch.float64)
    sharp = ((x > 0.3) & (x < 0.45)).double() * 1.0 + ((x > 0.7) & (x < 0.75)).double() * 0.8
    smooth = 0.6 * torch.exp(-((x - 0.4) ** 2) / 0.03)
    noisy = 0.3 + 0.25 * torch.randn(length, generator=g, dtype=torch.float64)
    return torch.round(torch.stack((sharp, smooth, noisy)) * 1000) / 1000


def fusion_result(
    signals: torch.Tensor, raw_weights: Sequence[float], kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normalised weights [n], fused [length])`` by :class:`detlib.WeightedFusion`."""
    from detlib import WeightedFusion

    fusion = WeightedFusion(len(raw_weights), kind=kind).to(signals.dtype)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor(raw_weights, dtype=signals.dtype))
        return fusion.normalized_weights(), fusion(list(signals))


def describe_fusion(weights: torch.Tensor, kind: str) -> str:
    """The sentence the fusion explorer shows (its JavaScript's ``describe``)."""
    name = "softmax fusion" if kind == "softmax" else "fast normalised fusion"
    values = weights.tolist()
    return f"{name}: weights {', '.join(fixed(v, 3) for v in values)} (sum {fixed(sum(values), 5)})"


def _make_fusion_explorer():
    import traitlets

    class FusionExplorer(_anywidget_base()):
        """BiFPN's weighted fusion of three inputs: raw weights in, normalised weights and the
        fused map out, for fast normalised fusion or softmax fusion. :meth:`result` and
        :meth:`describe` give detlib's numbers."""

        _esm = explorer_module("fusion_explorer")
        _css = _STATIC / "explorers.css"
        kind = traitlets.Unicode("fast").tag(sync=True)
        raw_weights = traitlets.List(traitlets.Float(), default_value=[1.0, 1.0, 1.0]).tag(
            sync=True
        )
        signals = traitlets.List().tag(sync=True)
        names = traitlets.List(default_value=list(FUSION_INPUTS)).tag(sync=True)

        def __init__(self, seed: int = 0, **settings):
            super().__init__(**settings)
            if not self.signals:
                self.signals = fusion_signals(seed=seed).tolist()

        @traitlets.validate("kind")
        def _valid_kind(self, proposal):
            if proposal["value"] not in ("fast", "softmax"):
                raise traitlets.TraitError(
                    f"FusionExplorer: kind must be 'fast' or 'softmax', got {proposal['value']!r}"
                )
            return proposal["value"]

        def result(self) -> tuple[torch.Tensor, torch.Tensor]:
            """detlib's ``(normalised weights, fused row)`` for the current settings."""
            signals = torch.tensor(self.signals, dtype=torch.float64)
            return fusion_result(signals, self.raw_weights, self.kind)

        def describe(self) -> str:
            """The sentence the browser shows, computed by detlib in the kernel."""
            return describe_fusion(self.result()[0], self.kind)

    return FusionExplorer


# --------------------------------------------------------------------------- chapter 8: PR curve
def pr_at_threshold(
    scores: Sequence[float], hits: Sequence[bool], num_gt: int, score_threshold: float
) -> dict[str, float | int | None]:
    """AP (:func:`detlib.voc_average_precision`) of one class's ranked detections, and the number
    kept, precision and recall at ``score >= score_threshold`` (precision ``None`` if none)."""
    import numpy as np

    from detlib import voc_average_precision
    from detlib.exercises import precision_recall

    scores = np.asarray(scores, dtype=np.float64)
    precision, recall = precision_recall(scores, np.asarray(hits, dtype=bool), num_gt)
    kept = int((scores >= score_threshold).sum())
    return {
        "ap": voc_average_precision(recall, precision),
        "kept": kept,
        "precision": float(precision[kept - 1]) if kept else None,
        "recall": float(recall[kept - 1]) if kept else 0.0,
    }


def describe_pr(name: str, result: dict, score_threshold: float) -> str:
    """The sentence the precision-recall explorer shows (its JavaScript's ``describe``)."""
    head = (
        f"{name}: AP {fixed(result['ap'], 3)}; score >= {fixed(score_threshold, 2)}: "
        f"{result['kept']} detections"
    )
    if result["precision"] is None:
        return f"{head}, recall 0.000"
    return f"{head}, precision {fixed(result['precision'], 3)}, recall {fixed(result['recall'], 3)}"


def _make_pr_explorer():
    import traitlets

    class PRExplorer(_anywidget_base()):
        """Precision and recall of ranked detections against a score threshold, per class.

        Built from ``{class name: (scores [D], hits [D], num_gt)}``, e.g. the capstone's
        ``rank_detections`` per class. The browser draws the precision-recall curve and its
        envelope, and reports the AP and the precision and recall at the threshold;
        :meth:`result` and :meth:`describe` give detlib's numbers.
        """

        _esm = explorer_module("pr_explorer")
        _css = _STATIC / "explorers.css"
        classes = traitlets.List().tag(sync=True)
        scores = traitlets.List().tag(sync=True)
        hits = traitlets.List().tag(sync=True)
        num_gt = traitlets.List().tag(sync=True)
        class_index = traitlets.Int(0).tag(sync=True)
        score_threshold = traitlets.Float(0.5).tag(sync=True)

        def __init__(self, curves: dict, **settings):
            super().__init__(**settings)
            if not curves:
                raise ValueError("PRExplorer: curves must name at least one class")
            for name, (scores, hits, num_gt) in curves.items():
                if len(scores) != len(hits) or int(num_gt) < 1:
                    raise ValueError(
                        f"PRExplorer: class {name!r} needs as many hits as scores and num_gt >= 1, "
                        f"got {len(scores)} scores, {len(hits)} hits, num_gt {num_gt}"
                    )
            self.classes = [str(name) for name in curves]
            self.scores = [[round(float(s), 6) for s in v[0]] for v in curves.values()]
            self.hits = [[bool(h) for h in v[1]] for v in curves.values()]
            self.num_gt = [int(v[2]) for v in curves.values()]

        def result(self) -> dict:
            """detlib's AP and the precision and recall at the threshold, for the chosen class."""
            k = self.class_index
            return pr_at_threshold(
                self.scores[k], self.hits[k], self.num_gt[k], self.score_threshold
            )

        def describe(self) -> str:
            """The sentence the browser shows, computed by detlib in the kernel."""
            return describe_pr(self.classes[self.class_index], self.result(), self.score_threshold)

    return PRExplorer


_FACTORIES = {
    "PRExplorer": _make_pr_explorer,
    "FusionExplorer": _make_fusion_explorer,
    "RoIExplorer": _make_roi_explorer,
    "FocalLossExplorer": _make_focal_explorer,
    "NMSExplorer": _make_nms_explorer,
    "IoUExplorer": _make_iou_explorer,
    "MatchingExplorer": _make_matching_explorer,
}


def __getattr__(name: str):
    if name in _FACTORIES:
        cls = _FACTORIES[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
