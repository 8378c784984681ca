"""detlib.data, detlib.viz and detlib.widgets: the helpers the chapters lean on."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from detlib import AnchorGenerator, box_iou  # noqa: E402
from detlib.data import sample_boxes  # noqa: E402
from detlib.viz import draw_boxes, draw_grid, image_axes  # noqa: E402
from detlib.widgets import anchor_explorer, coverage_summary, pyramid_from_settings  # noqa: E402


def test_sample_boxes_lie_inside_the_image_with_the_requested_shapes():
    boxes = sample_boxes(
        5000,
        (300, 200),
        min_size=8,
        max_size=64,
        max_aspect=3.0,
        generator=torch.Generator().manual_seed(0),
    )
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert bool(
        (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 300).all()
    )
    size = (w * h).sqrt()
    assert size.min() >= 8 - 1e-4 and size.max() <= 64 + 1e-4
    assert (h / w).min() >= 1 / 3 - 1e-4 and (h / w).max() <= 3 + 1e-4
    # log-uniform: about as many boxes below the geometric middle as above it
    middle = math.sqrt(8 * 64)
    assert abs(float((size < middle).float().mean()) - 0.5) < 0.03


def test_sample_boxes_is_reproducible_and_validates():
    a = sample_boxes(10, (64, 64), generator=torch.Generator().manual_seed(3))
    b = sample_boxes(10, (64, 64), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert sample_boxes(0, (64, 64)).shape == (0, 4)
    with pytest.raises(ValueError, match="max_size"):
        sample_boxes(3, (64, 64), min_size=10, max_size=5)
    with pytest.raises(ValueError, match="max_aspect must be >= 1"):
        sample_boxes(3, (64, 64), max_aspect=0.5)


def test_pyramid_from_settings_reproduces_retinanet():
    ours = pyramid_from_settings(4, (3, 7), (0.5, 1.0, 2.0), 3)
    assert torch.equal(ours((256, 384)), AnchorGenerator.retinanet()((256, 384)))
    with pytest.raises(ValueError, match="levels must be"):
        pyramid_from_settings(4, (5, 3), (1.0,), 1)


def test_coverage_summary_counts_and_coverage():
    generator = AnchorGenerator.retinanet()
    boxes = torch.cat([generator((128, 128))[:3], torch.tensor([[0.0, 0.0, 4.0, 4.0]])])
    summary = coverage_summary(generator, (128, 128), boxes)
    assert summary.num_anchors == generator.num_anchors((128, 128))
    assert sum(summary.anchors_per_level) == summary.num_anchors
    best = box_iou(boxes, generator((128, 128))).amax(dim=1)
    assert summary.coverage == pytest.approx(float((best >= 0.5).float().mean()))  # 3 of 4
    assert summary.coverage == 0.75
    assert "anchors" in summary.describe()


def test_anchor_explorer_builds_and_reacts():
    explorer = anchor_explorer(num_boxes=50)
    controls, report, _canvas = explorer.children
    assert "49,104 anchors" in report.value
    size_factor = controls.children[0].children[0]
    size_factor.value = 2.0
    assert "49,104 anchors" in report.value  # same count, other sizes
    image = controls.children[0].children[4]
    image.value = 256
    assert f"{AnchorGenerator.retinanet().num_anchors((256, 256)):,} anchors" in report.value
    plt.close("all")


def test_drawing_helpers_add_one_patch_per_box():
    fig, ax = plt.subplots()
    image_axes(ax, (100, 200), margin=10, title="t")
    draw_grid(ax, (100, 200), 50)
    before = len(ax.patches)
    draw_boxes(
        ax, torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 50.0, 20.0]]), labels=["a", "b"]
    )
    assert len(ax.patches) == before + 2
    assert ax.get_ylim() == (110.0, -10.0)  # y points down
    plt.close(fig)
