"""YOLO v2's dimension clusters: k-means on (width, height) with 1 - IoU as the distance."""

import pytest
import torch

from detlib import kmeans_anchor_shapes, shape_iou


def _sizes(n=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.exp(torch.rand(n, 2, generator=generator, dtype=torch.float64) * 4 + 2)


def _reference_kmeans(sizes, k, seed, update, iterations=100):
    """The algorithm written out with Python loops, for comparison."""
    start = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed))[:k]
    centroids = [sizes[i].clone() for i in start.tolist()]
    for _ in range(iterations):
        members = [[] for _ in range(k)]
        for box in sizes:
            ious = [float(shape_iou(box[None], c[None])) for c in centroids]
            members[ious.index(max(ious))].append(box)
        updated = []
        for c, rows in zip(centroids, members):
            if not rows:
                updated.append(c)
                continue
            stacked = torch.stack(rows)
            updated.append(stacked.mean(0) if update == "mean" else stacked.median(0).values)
        if all(torch.equal(a, b) for a, b in zip(updated, centroids)):
            break
        centroids = updated
    result = torch.stack(centroids)
    return result[(result[:, 0] * result[:, 1]).argsort()]


@pytest.mark.parametrize("update", ["mean", "median"])
def test_kmeans_equals_the_written_out_algorithm(update):
    sizes = _sizes(120)
    ours = kmeans_anchor_shapes(sizes, 4, generator=torch.Generator().manual_seed(3), update=update)
    reference = _reference_kmeans(sizes, 4, seed=3, update=update)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-9)


def test_mean_update_is_a_fixed_point_of_assignment_and_mean():
    sizes = _sizes()
    centroids = kmeans_anchor_shapes(sizes, 5, generator=torch.Generator().manual_seed(0))
    assignment = shape_iou(sizes, centroids).argmax(dim=1)
    for c in range(5):
        members = sizes[assignment == c]
        assert len(members) > 0
        torch.testing.assert_close(centroids[c], members.mean(0))


def test_one_cluster_is_the_mean_or_the_median_of_all_boxes():
    sizes = _sizes()
    mean = kmeans_anchor_shapes(sizes, 1, generator=torch.Generator().manual_seed(0))
    median = kmeans_anchor_shapes(
        sizes, 1, generator=torch.Generator().manual_seed(0), update="median"
    )
    torch.testing.assert_close(mean[0], sizes.mean(0))
    torch.testing.assert_close(median[0], sizes.median(0).values)
    assert not torch.equal(mean, median)


def test_an_unknown_update_is_refused_by_name():
    with pytest.raises(ValueError, match="update must be 'mean' or 'median'"):
        kmeans_anchor_shapes(_sizes(), 3, update="mode")
