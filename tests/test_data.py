"""The synthetic shapes dataset: reproducible, exact boxes, bounded overlap, padded batches."""

import itertools

import pytest
import torch

from detlib.data import SHAPE_CLASSES, ShapesDataset, _largest_cover, _shape_mask, collate_detection


def test_items_are_reproducible_and_splits_differ():
    train, again, held_out = (
        ShapesDataset(20, seed=0),
        ShapesDataset(20, seed=0),
        ShapesDataset(20, seed=1),
    )
    for i in (0, 7, 19):
        image, target = train[i]
        image2, target2 = again[i]
        assert torch.equal(image, image2) and torch.equal(target["boxes"], target2["boxes"])
        assert not torch.equal(image, held_out[i][0])
    assert torch.equal(train[-1][0], train[19][0])
    with pytest.raises(IndexError, match="index 20 out of range"):
        train[20]


def test_items_have_the_documented_format():
    dataset = ShapesDataset(30, image_size=96, max_objects=5, seed=3)
    for image, target in dataset:
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert 1 <= len(labels) <= 5 and len(boxes) == len(labels)
        assert bool(((labels >= 0) & (labels < len(SHAPE_CLASSES))).all())
        assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all())
        assert bool((boxes[:, 2:] > boxes[:, :2]).all())


def test_no_object_covers_too_much_of_another():
    dataset = ShapesDataset(40, max_objects=6, max_overlap=0.3, seed=5)
    for _, target in dataset:
        for a, b in itertools.combinations(target["boxes"].tolist(), 2):
            assert _largest_cover(a, [b]) <= 0.3 + 1e-9


@pytest.mark.parametrize("label", range(len(SHAPE_CLASSES)))
def test_boxes_are_the_tight_bounds_of_the_shape(label):
    gen = torch.Generator().manual_seed(label)
    for _ in range(20):
        mask = _shape_mask(label, 64, 4, 40, 3.0, gen)
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        inside = torch.zeros_like(mask)
        inside[y1:y2, x1:x2] = True
        assert not bool((mask & ~inside).any())  # nothing outside the box
        assert bool(mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any())  # touches top and bottom
        assert bool(mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any())  # touches left and right


def test_shapes_look_different():
    # Filled fraction of the bounding box: rectangle 1, ellipse pi/4, triangle 1/2.
    gen = torch.Generator().manual_seed(0)
    fill = {}
    for label in range(3):
        mask = _shape_mask(label, 128, 60, 60, 1.0, gen)
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        area = (int(rows[-1]) - int(rows[0]) + 1) * (int(cols[-1]) - int(cols[0]) + 1)
        fill[SHAPE_CLASSES[label]] = float(mask.sum()) / area
    assert fill["rectangle"] == pytest.approx(1.0, abs=0.02)
    assert fill["ellipse"] == pytest.approx(3.1416 / 4, abs=0.03)
    assert fill["triangle"] == pytest.approx(0.5, abs=0.04)


def test_collate_pads_boxes_and_labels():
    dataset = ShapesDataset(6, seed=2, max_objects=4)
    batch = [dataset[i] for i in range(6)]
    images, boxes, labels = collate_detection(batch)
    most = max(len(t["labels"]) for _, t in batch)
    assert (
        images.shape == (6, 3, 128, 128)
        and boxes.shape == (6, most, 4)
        and labels.shape == (6, most)
    )
    for i, (_, target) in enumerate(batch):
        n = len(target["labels"])
        assert torch.equal(boxes[i, :n], target["boxes"]) and torch.equal(
            labels[i, :n], target["labels"]
        )
        assert bool((labels[i, n:] == -1).all() and (boxes[i, n:] == 0).all())
    with pytest.raises(ValueError, match="batch is empty"):
        collate_detection([])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_images=-1), "num_images must be"),
        (dict(num_images=4, image_size=8), "image_size must be an int >= 16"),
        (dict(num_images=4, min_objects=3, max_objects=2), "min_objects <= max_objects"),
        (dict(num_images=4, min_size=50, max_size=20), "min_size <= max_size"),
        (dict(num_images=4, max_aspect=0.5), "max_aspect must be >= 1"),
        (dict(num_images=4, max_overlap=2.0), "max_overlap must be in"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesDataset(**kwargs)
