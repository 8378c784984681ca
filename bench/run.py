"""Benchmarks: detlib vs torchvision vs the sources' naive code, side by side in one run.

``make bench`` runs every case on the CPU and, when there is one, on the GPU, and writes

* ``bench/results/<device>.json``: the raw numbers of the latest run on that kind of device;
* ``book/_generated/benchmarks.md`` and ``benchmarks.png``: the tables and plot the book's
  Performance page shows, built from every results file present (so a GPU run adds its table
  without erasing the CPU one, and vice versa).

Timing: each implementation is warmed up, then the implementations of a case are timed in
alternation (round-robin), so that a change in machine load affects all of them alike; the median
per call is reported. CUDA timings synchronise before and after. Benchmarks measure, they do not
assert: the floors of the project are printed next to the ratios.

Usage: ``python bench/run.py [--device cpu|cuda|all] [--quick]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import Matcher as TorchvisionMatcher
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead, retinanet_resnet50_fpn

import detlib
from detlib import seeds

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GENERATED = ROOT / "book" / "_generated"


@dataclass
class Case:
    """One operation at one size, with the implementations to compare."""

    operation: str
    size: str
    implementations: dict[str, Callable[[], object]]
    floor: str = ""  # the project's target for detlib / torchvision, shown next to the ratio
    note: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device, number: int) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / number


def measure(case: Case, device: torch.device, rounds: int, budget: float) -> None:
    """Median seconds per call of each implementation, timed in alternation."""
    numbers = {}
    for name, fn in case.implementations.items():
        fn()  # warm-up: allocations, kernel selection, caches
        single = _time_once(fn, device, 1)
        numbers[name] = max(1, int(budget / max(single, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in case.implementations}
    for _ in range(rounds):
        for name, fn in case.implementations.items():
            samples[name].append(_time_once(fn, device, numbers[name]))
    case.seconds = {name: statistics.median(values) for name, values in samples.items()}


# ----------------------------------------------------------------------------- inputs
def random_boxes(
    n: int, generator: torch.Generator, image: float = 800.0, max_size: float = 200.0
) -> torch.Tensor:
    top_left = torch.rand(n, 2, generator=generator) * image
    return torch.cat(
        (top_left, top_left + 1 + torch.rand(n, 2, generator=generator) * max_size), dim=1
    )


def detector_like_boxes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Clusters of jittered boxes around 50 objects plus scattered ones, with random scores."""
    objects = random_boxes(50, generator)
    clustered = n * 4 // 5
    parents = objects[torch.randint(0, 50, (clustered,), generator=generator)]
    size = (parents[:, 2:] - parents[:, :2]).repeat(1, 2)
    jittered = parents + 0.15 * size * torch.randn(clustered, 4, generator=generator)
    jittered[:, 2:] = torch.maximum(jittered[:, 2:], jittered[:, :2] + 1)
    boxes = torch.cat((jittered, random_boxes(n - clustered, generator)))
    return boxes, torch.rand(n, generator=generator)


def roi_inputs(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A [2, 256, 50, 50] feature map (stride 16 of 800 x 800) and 512 RoIs of 16 to 600 pixels."""
    features = torch.randn(2, 256, 50, 50, generator=generator)
    sizes = torch.exp(torch.empty(512, 2).uniform_(np.log(16), np.log(600), generator=generator))
    top_left = torch.rand(512, 2, generator=generator) * (800 - sizes)
    batch = torch.randint(0, 2, (512, 1), generator=generator).float()
    return features, torch.cat((batch, top_left, top_left + sizes), dim=1)


def detection_targets(
    generator: torch.Generator, batch: int, num_classes: int, image: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ground truth for ``batch`` images of 1 to 9 objects each: boxes ``[B, 9, 4]`` and
    labels ``[B, 9]`` (-1 on padding rows)."""
    boxes = detlib.sample_boxes(batch * 9, (image, image), 16, 300, generator=generator)
    labels = torch.randint(0, num_classes, (batch, 9), generator=generator)
    counts = torch.randint(1, 10, (batch, 1), generator=generator)
    labels = torch.where(torch.arange(9) < counts, labels, -1)
    return boxes.reshape(batch, 9, 4), labels


def loss_cases(device: torch.device, generator: torch.Generator) -> list[Case]:
    """The RetinaNet loss of a batch, forward and backward: detlib's batched
    ``detection_loss`` against torchvision's ``RetinaNetHead.compute_loss`` (its matching
    included, as in ``RetinaNet.compute_loss``), with the same settings (so the same values)."""
    batch, num_classes = 8, 20
    anchors = detlib.AnchorGenerator.retinanet()((512, 512), device=device)
    logits = (torch.randn(batch, len(anchors), num_classes, generator=generator) - 4).to(device)
    deltas = (0.2 * torch.randn(batch, len(anchors), 4, generator=generator)).to(device)
    boxes, labels = (t.to(device) for t in detection_targets(generator, batch, num_classes))
    targets = [{"boxes": b[l >= 0], "labels": l[l >= 0]} for b, l in zip(boxes, labels)]
    head = RetinaNetHead(8, 9, num_classes).to(device)
    tv_matcher = TorchvisionMatcher(0.5, 0.4, allow_low_quality_matches=True)

    def with_grad():
        return logits.detach().requires_grad_(), deltas.detach().requires_grad_()

    def detlib_loss():
        cls, box = with_grad()
        loss = detlib.detection_loss(cls, box, anchors, boxes, labels, beta=0.0, normalize="image")
        loss.total.backward()

    def torchvision_loss():
        cls, box = with_grad()
        matched = [tv_matcher(torchvision.ops.box_iou(t["boxes"], anchors)) for t in targets]
        outputs = {"cls_logits": cls, "bbox_regression": box}
        losses = head.compute_loss(targets, outputs, [anchors] * batch, matched)
        sum(losses.values()).backward()

    return [
        Case(
            "detection loss",
            f"{batch} x {len(anchors):,} anchors x {num_classes} classes, fwd + bwd",
            {"detlib": detlib_loss, "torchvision": torchvision_loss},
            note="torchvision: RetinaNetHead.compute_loss after the matching of RetinaNet.compute_loss, "
            "image by image; both in RetinaNet's settings (L1 box loss, per-image normalisation)",
        )
    ]


def postprocess_cases(device: torch.device, generator: torch.Generator) -> list[Case]:
    """From head outputs to detections for a batch: detlib's ``postprocess_detections`` (one
    batched pass) against torchvision's ``RetinaNet.postprocess_detections`` (an image loop)."""
    batch, num_classes = 4, 80
    generator_of_anchors = detlib.AnchorGenerator.retinanet()
    anchors = generator_of_anchors((512, 512), device=device)
    per_level = [len(a) for a in generator_of_anchors.per_level((512, 512))]
    logits = 1.5 * torch.randn(batch, len(anchors), num_classes, generator=generator) - 5
    logits = logits.to(device)
    deltas = (0.2 * torch.randn(batch, len(anchors), 4, generator=generator)).to(device)
    retinanet = retinanet_resnet50_fpn(weights_backbone=None, num_classes=num_classes).eval()
    head_outputs = {
        "cls_logits": list(logits.split(per_level, dim=1)),
        "bbox_regression": list(deltas.split(per_level, dim=1)),
    }
    per_image_anchors = [list(anchors.split(per_level))] * batch
    sizes = [(512, 512)] * batch
    return [
        Case(
            "postprocess (RetinaNet)",
            f"{batch} x {len(anchors):,} anchors x {num_classes} classes",
            {
                "detlib": lambda: detlib.postprocess_detections(
                    logits, deltas, anchors, (512, 512), num_anchors_per_level=per_level
                ),
                "torchvision": lambda: retinanet.postprocess_detections(
                    head_outputs, per_image_anchors, sizes
                ),
            },
            floor="<= 1.0x",
            note="torchvision: RetinaNet.postprocess_detections, image by image; detlib: one "
            "batched pass",
        )
    ]


def iou_variant_cases(device: torch.device, generator: torch.Generator) -> list[Case]:
    """GIoU, DIoU and CIoU matrices against torchvision's."""
    a, b = random_boxes(2_000, generator).to(device), random_boxes(500, generator).to(device)
    pairs = [
        ("generalized_box_iou", detlib.generalized_box_iou, torchvision.ops.generalized_box_iou),
        ("distance_box_iou", detlib.distance_box_iou, torchvision.ops.distance_box_iou),
        ("complete_box_iou", detlib.complete_box_iou, torchvision.ops.complete_box_iou),
    ]
    return [
        Case(
            name,
            "2,000 x 500",
            {"detlib": lambda f=ours: f(a, b), "torchvision": lambda f=theirs: f(a, b)},
            floor="<= 1.1x",
        )
        for name, ours, theirs in pairs
    ]


# ----------------------------------------------------------------------------- cases
def build_cases(device: torch.device, quick: bool) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    on = {"device": device}
    cases = []

    # IoU at the Faster R-CNN source's own size: 8,940 anchors inside the image x 2 ground truths.
    _, inside, _ = seeds.faster_rcnn_anchors(800, 16)
    gt_yxyx = np.array([[20.0, 30.0, 400.0, 500.0], [300.0, 400.0, 500.0, 600.0]], dtype=np.float32)
    anchors = detlib.box_convert(torch.from_numpy(inside).float(), "yxyx", "xyxy").to(device)
    gt = detlib.box_convert(torch.from_numpy(gt_yxyx), "yxyx", "xyxy").to(device)
    cases.append(
        Case(
            "box_iou",
            "8,940 x 2",
            {
                "detlib": lambda: detlib.box_iou(anchors, gt),
                "torchvision": lambda: torchvision.ops.box_iou(anchors, gt),
                "seed": lambda: seeds.iou_double_loop(inside, gt_yxyx),
            },
            floor="<= 1.1x (aim 0.7x); sources' code >= 50x slower",
            note="sources' code: the Python double loop of source 002, on the host",
        )
    )

    many, few = random_boxes(100_000, gen).to(device), random_boxes(100, gen).to(device)
    cases.append(
        Case(
            "box_iou",
            "100,000 x 100",
            {
                "detlib": lambda: detlib.box_iou(many, few),
                "torchvision": lambda: torchvision.ops.box_iou(many, few),
            },
            floor="<= 1.1x (aim 0.7x)",
        )
    )

    # 300 boxes: below about 1,000 the compiled kernel's loop is ahead on a CPU (the Performance
    # page says why). Its own generator keeps the other cases' inputs as they were.
    for n in (300, 1_000, 5_000):
        boxes, scores = detector_like_boxes(
            n, torch.Generator().manual_seed(n) if n < 1_000 else gen
        )
        boxes_yxyx = boxes[:, [1, 0, 3, 2]].numpy()
        scores_np = scores.numpy()
        boxes, scores = boxes.to(device), scores.to(device)
        cases.append(
            Case(
                "nms",
                f"{n:,} boxes, {len(torchvision.ops.nms(boxes, scores, 0.5)):,} kept",
                {
                    "detlib": lambda b=boxes, s=scores: detlib.nms(b, s, 0.5),
                    "torchvision": lambda b=boxes, s=scores: torchvision.ops.nms(b, s, 0.5),
                    "seed": lambda b=boxes_yxyx, s=scores_np: seeds.nms_plus_one(b, s, 0.5),
                },
                floor="<= 1.0x" if n >= 1_000 else "none below 1,000 boxes",
                note="sources' code: the NumPy loop of source 002 (with its +1 pixel convention), on the host",
            )
        )

    for n in (1_000, 5_000):
        boxes, scores = detector_like_boxes(n, gen)
        labels = torch.randint(0, 20, (n,), generator=gen)
        boxes, scores, labels = boxes.to(device), scores.to(device), labels.to(device)
        cases.append(
            Case(
                "batched_nms",
                f"{n:,} boxes, 20 classes",
                {
                    "detlib": lambda b=boxes, s=scores, c=labels: detlib.batched_nms(b, s, c, 0.5),
                    "torchvision": lambda b=boxes, s=scores, c=labels: torchvision.ops.batched_nms(
                        b, s, c, 0.5
                    ),
                },
                floor="<= 1.0x",
                note="torchvision shifts the classes apart up to 1,000 boxes on the CPU and loops "
                "over classes above; detlib decides all classes at once, one row per class in a padded "
                "grid, exactly per class",
            )
        )

    features, rois = roi_inputs(gen)
    features, rois = features.to(device), rois.to(device)
    first_image_rois = rois.clone()
    first_image_rois[:, 0] = 0  # the source's loop only handles batch index 0
    cases.append(
        Case(
            "roi_pool",
            "512 RoIs, 256 x 50 x 50",
            {
                "detlib": lambda: detlib.roi_pool(features, rois, 7, 1 / 16),
                "torchvision": lambda: torchvision.ops.roi_pool(features, rois, 7, 1 / 16),
                "seed": lambda: seeds.roi_pool_loop(features, first_image_rois, 7, 1 / 16),
            },
            floor="<= 3x",
            note="sources' code: one adaptive max pool per RoI in a Python loop (source 002, image 0 only)",
        )
    )
    cases.append(
        Case(
            "roi_align",
            "512 RoIs, 256 x 50 x 50",
            {
                "detlib": lambda: detlib.roi_align(features, rois, 7, 1 / 16, sampling_ratio=-1),
                "torchvision": lambda: torchvision.ops.roi_align(
                    features, rois, 7, 1 / 16, sampling_ratio=-1
                ),
            },
            floor="<= 3x",
        )
    )

    retinanet = detlib.AnchorGenerator.retinanet()
    tv_sizes = tuple(
        (x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in [32, 64, 128, 256, 512]
    )
    tv_generator = TorchvisionAnchorGenerator(tv_sizes, ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(1, 3, 512, 512, device=device), [(512, 512)])
    maps = [torch.zeros(1, 1, 512 // s, 512 // s, device=device) for s in (8, 16, 32, 64, 128)]
    cases.append(
        Case(
            "anchors (RetinaNet)",
            "512 x 512, 49,104",
            {
                "detlib": lambda: retinanet((512, 512), **on),
                "torchvision": lambda: tv_generator(images, maps),
                "seed": lambda: torch.from_numpy(seeds.retinanet_anchors((512, 512))).to(device),
            },
            floor="<= 1.0x",
            note="sources' code: built in NumPy on the host (source 000), then copied to the device; detlib "
            "caches the anchors per (image size, device, dtype) and returns a copy",
        )
    )
    cases += iou_variant_cases(device, gen)
    cases += loss_cases(device, gen)
    cases += postprocess_cases(device, gen)
    return cases


# ----------------------------------------------------------------------------- memory
_MEMORY_SCRIPT = """
import resource, sys, torch, torchvision
sys.path.insert(0, {bench!r})
from run import detector_like_boxes
import detlib
boxes, scores = detector_like_boxes({n}, torch.Generator().manual_seed(0))
boxes, scores = boxes.to({device!r}), scores.to({device!r})
nms = detlib.nms if {which!r} == "detlib" else torchvision.ops.nms
nms(boxes[:100], scores[:100], 0.5)  # load the kernels first
if {device!r} == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
    nms(boxes, scores, 0.5); torch.cuda.synchronize()
    print((torch.cuda.max_memory_allocated() - before) / 2**20)
else:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    nms(boxes, scores, 0.5)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def nms_memory(device: torch.device, n: int = 200_000) -> dict[str, float]:
    """Peak memory growth in MiB of one ``nms`` of ``n`` detector-like boxes, each in a fresh
    process: peak RSS on the CPU, peak allocated memory on a GPU."""
    import subprocess

    growth = {}
    for which in ("detlib", "torchvision"):
        script = _MEMORY_SCRIPT.format(
            bench=str(ROOT / "bench"), n=n, device=device.type, which=which
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        growth[which] = float(out.stdout.strip().splitlines()[-1])
    return growth


# ----------------------------------------------------------------------------- reporting
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}, {torch.get_num_threads()} threads"


def run(device: torch.device, quick: bool) -> dict:
    rounds, budget = (3, 0.02) if quick else (7, 0.1)
    cases = build_cases(device, quick)
    for case in cases:
        measure(case, device, rounds, budget)
        timings = ", ".join(
            f"{name} {seconds * 1e3:.3f} ms" for name, seconds in case.seconds.items()
        )
        print(f"  [{device.type}] {case.operation:20s} {case.size:24s} {timings}")
    memory = {} if quick else {"nms, 200,000 boxes": nms_memory(device)}
    for name, growth in memory.items():
        print(
            f"  [{device.type}] memory {name}: "
            + ", ".join(f"{k} +{v:.0f} MiB" for k, v in growth.items())
        )
    return {
        "memory": memory,
        "device": device.type,
        "device_name": device_name(device),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cases": [{k: v for k, v in asdict(c).items() if k != "implementations"} for c in cases],
    }


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g}" if seconds >= 1e-3 else f"{seconds * 1e3:.3f}"


def _ratio(value: float) -> str:
    return f"{value:.1f}x" if value < 10 else f"{value:.0f}x"


def markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines += [
            f"## {result['device'].upper()}: {result['device_name']}",
            "",
            f"Measured {result['date']} with torch {result['torch']}, torchvision {result['torchvision']}. "
            "Times in milliseconds per call (median).",
            "",
            "| operation | size | detlib | torchvision | sources' code | detlib / torchvision "
            "| sources' code / detlib | target |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for case in result["cases"]:
            s = case["seconds"]
            ratio = (
                f"{s['detlib'] / s['torchvision']:.2f}x" if "torchvision" in s else "-"
            )  # the floors' ratio
            seed = _ratio(s["seed"] / s["detlib"]) if "seed" in s else "-"
            lines.append(
                f"| {case['operation']} | {case['size']} | {_ms(s.get('detlib'))} | {_ms(s.get('torchvision'))} "
                f"| {_ms(s.get('seed'))} | {ratio} | {seed} | {case['floor']} |"
            )
        memory = result.get("memory", {})
        if memory:
            kind = "peak RSS" if result["device"] == "cpu" else "peak allocated memory"
            lines += [
                "",
                f"Memory ({kind} growth of one call, in a fresh process, MiB; target: detlib "
                "under 100 MiB):",
                "",
                "| operation | detlib | torchvision |",
                "| --- | ---: | ---: |",
            ]
            lines += [
                f"| {name} | +{m['detlib']:.0f} | +{m['torchvision']:.0f} |"
                for name, m in memory.items()
            ]
        notes = {c["operation"]: c["note"] for c in result["cases"] if c["note"]}
        lines += [""] + [f"- {operation}, {note}" for operation, note in notes.items()] + [""]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * sum(len(r["cases"]) for r in results)))
    labels, ratios, colors = [], [], []
    for k, result in enumerate(results):
        for case in result["cases"]:
            s = case["seconds"]
            if "torchvision" in s:
                labels.append(f"{case['operation']} {case['size']} [{result['device']}]")
                ratios.append(s["detlib"] / s["torchvision"])
                colors.append(f"C{k}")
    bars = ax.barh(range(len(ratios)), ratios, color=colors)
    ax.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], padding=3, fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(ratios)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(ratios + [1.0]) * 1.2)
    ax.set_xlabel("detlib time / torchvision time (below 1: detlib is faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report() -> None:
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    results.sort(key=lambda r: r["device"] != "cpu")  # CPU first
    GENERATED.mkdir(parents=True, exist_ok=True)
    (GENERATED / "benchmarks.md").write_text(markdown(results))
    plot(results, GENERATED / "benchmarks.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (for a smoke test)")
    args = parser.parse_args(argv)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        print("no CUDA device: nothing to do")
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    for device in devices:
        print(f"benchmarking on {device} ({device_name(device)})")
        result = run(device, args.quick)
        (RESULTS / f"{device.type}.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report()
    print(f"wrote {GENERATED / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
