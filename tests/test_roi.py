"""RoIPool and RoIAlign: parity with torchvision.ops (values and input gradients), edge cases,
gradcheck, argument errors."""

import functools
import math

import pytest
import torch
import torchvision.ops as tvops
from hypothesis import given
from hypothesis import strategies as st

import detlib
import detlib.roi._common
from detlib.roi import roi_align, roi_pool

FLOAT_DTYPES = [torch.float32, torch.float64]


def make_rois(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    *,
    image: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` RoIs ``(b, x1, y1, x2, y2)`` spread over an image of side ``image`` and a margin of a
    fifth of it around, sizes from 0 to 80 % of the image: some inside, some partly or fully
    outside, some tiny."""
    top_left = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 1.4 - 0.2) * image
    size = torch.rand(n, 2, generator=generator, dtype=torch.float64) ** 2 * 0.8 * image
    batch = torch.randint(0, batch_size, (n, 1), generator=generator).double()
    return torch.cat((batch, top_left, top_left + size), dim=1).to(dtype)


def edge_rois(height: int, width: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Hand-picked RoIs (feature-map coordinates divided by ``scale``) on image 0 and 1."""
    s = 1 / scale
    cells = [
        (0, 0, 0, width - 1, height - 1),  # the whole map
        (1, 0, 0, 0, 0),  # a single point
        (0, 2.5, 1.5, 2.5, 4.5),  # zero width, half-cell coordinates
        (1, 0.3, 0.7, 0.4, 0.9),  # much smaller than a cell
        (0, -3, -2, 2, 3),  # partly outside, top-left
        (1, width - 2, height - 3, width + 4, height + 2),  # partly outside, bottom-right
        (0, -9, -9, -4, -5),  # fully outside
        (1, width + 3, 1, width + 8, 4),  # fully outside on the right
        (0, -1.5, -1.5, -0.5, -0.5),  # RoIAlign samples exactly at -1
        (1, width - 0.5, height - 0.5, width + 0.5, height + 0.5),  # samples exactly at W, H
        (0, -0.5, 0.5, 1.5, 2.5),  # corners that round half away from zero
        (1, 0.49999997, 1.49999997, 3.5, 2.5),  # just below one half
        (0, -20, -20, width + 20, height + 20),  # larger than the map
    ]
    rois = torch.tensor(cells, dtype=torch.float64)
    rois[:, 1:] *= s
    return rois.to(dtype)


def feature_map(shape, generator, dtype=torch.float32, *, ties: bool = False) -> torch.Tensor:
    if ties:  # small integers after a ReLU: many zeros and many equal maxima
        values = torch.randint(-3, 4, shape, generator=generator).clamp(min=0)
        return values.to(dtype)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def assert_pool_matches(x, rois, output_size, scale):
    torch.testing.assert_close(
        roi_pool(x, rois, output_size, scale),
        tvops.roi_pool(x, rois, output_size, scale),
        rtol=0,
        atol=0,
    )


def assert_align_matches(x, rois, output_size, scale, sampling_ratio, aligned):
    torch.testing.assert_close(
        roi_align(x, rois, output_size, scale, sampling_ratio, aligned),
        tvops.roi_align(x, rois, output_size, scale, sampling_ratio, aligned),
    )


def input_grads(fn, x, rois, grad_output, *args):
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(fn(x, rois, *args), x, grad_output)
    return grad


# ----------------------------------------------------------------------------- forward parity
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 16, 0.3])
@pytest.mark.parametrize("output_size", [7, (3, 5), 1])
def test_roi_pool_matches_torchvision(dtype, scale, output_size, gen):
    x = feature_map((3, 4, 13, 17), gen, dtype)
    rois = make_rois(40, 3, gen, image=17 / scale, dtype=dtype)
    assert_pool_matches(x, rois, output_size, scale)
    assert_pool_matches(x, edge_rois(13, 17, scale, dtype), output_size, scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 16, 0.3])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_torchvision(dtype, scale, sampling_ratio, aligned, gen):
    x = feature_map((3, 4, 13, 17), gen, dtype)
    rois = make_rois(40, 3, gen, image=17 / scale, dtype=dtype)
    for output_size in (7, (3, 5)):
        assert_align_matches(x, rois, output_size, scale, sampling_ratio, aligned)
        assert_align_matches(
            x, edge_rois(13, 17, scale, dtype), output_size, scale, sampling_ratio, aligned
        )


def test_one_pixel_map(gen):
    x = feature_map((2, 3, 1, 1), gen)
    rois = edge_rois(1, 1, 1.0, torch.float32)
    assert_pool_matches(x, rois, (2, 3), 1.0)
    for aligned in (False, True):
        assert_align_matches(x, rois, (2, 3), 1.0, -1, aligned)


def test_list_of_boxes_matches_tensor_form(gen):
    x = feature_map((3, 4, 10, 12), gen)
    boxes = [make_rois(n, 1, gen, image=12.0)[:, 1:] for n in (5, 0, 7)]  # image 1 has none
    assert_pool_matches(x, boxes, (2, 3), 1.0)
    assert_align_matches(x, boxes, (2, 3), 1.0, -1, True)
    assert_align_matches(x, tuple(boxes), 4, 1.0, 2, False)


def test_unsorted_batch_indices_keep_their_order(gen):
    x = feature_map((4, 3, 9, 9), gen)
    rois = make_rois(30, 4, gen, image=9.0)
    assert not bool((rois[1:, 0] >= rois[:-1, 0]).all())
    assert_pool_matches(x, rois, 3, 1.0)
    assert_align_matches(x, rois, 3, 1.0, -1, False)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous_input(layout, gen):
    x = feature_map((2, 6, 11, 14), gen)
    x = {
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "transposed": x.transpose(2, 3),  # a [2, 6, 14, 11] view
        "sliced": x[:, ::2, 1:, :-2],
    }[layout]
    assert not x.is_contiguous()
    rois = make_rois(20, 2, gen, image=11.0)
    assert_pool_matches(x, rois, (3, 2), 1.0)
    assert_align_matches(x, rois, (3, 2), 1.0, -1, True)


def test_rois_of_another_dtype_are_converted(gen):
    x = feature_map((2, 3, 8, 8), gen)
    rois = make_rois(10, 2, gen, image=8.0, dtype=torch.float64)
    torch.testing.assert_close(roi_pool(x, rois, 2), tvops.roi_pool(x, rois.float(), 2))
    torch.testing.assert_close(roi_align(x, rois, 2), tvops.roi_align(x, rois.float(), 2))


def test_roi_pool_special_values_match_torchvision(gen):
    # NaN never wins a bin, nothing at or below -FLT_MAX does (also in float64), and a bin
    # holding nothing larger outputs -FLT_MAX and passes no gradient back.
    for dtype in FLOAT_DTYPES:
        x = feature_map((2, 3, 8, 9), gen, dtype)
        flat = x.view(-1)
        where = torch.randperm(flat.numel(), generator=gen)
        flat[where[:40]] = math.nan
        flat[where[40:80]] = -math.inf
        flat[where[80:100]] = math.inf
        flat[where[100:120]] = -torch.finfo(torch.float32).max
        flat[where[120:140]] = -1e300 if dtype == torch.float64 else -math.inf
        x[0, 0, :4, :4] = -math.inf
        x[1, 1, 2:6, 3:7] = math.nan
        rois = torch.tensor(
            [[0, 0, 0, 3, 3], [1, 3, 2, 6, 5], [0, 0, 0, 8, 7], [1, 1, 1, 5, 6]], dtype=dtype
        )
        assert_pool_matches(x, rois, (3, 2), 1.0)
        grad_output = torch.randn(4, 3, 3, 2, generator=gen, dtype=torch.float64).to(dtype)
        torch.testing.assert_close(
            input_grads(roi_pool, x, rois, grad_output, (3, 2)),
            input_grads(tvops.roi_pool, x, rois, grad_output, (3, 2)),
        )


def test_inverted_rois_match_torchvision_without_value_checks(gen):
    x = feature_map((2, 3, 9, 9), gen)
    rois = make_rois(20, 2, gen, image=9.0)
    rois[:, 1:] = rois[:, [3, 4, 1, 2]]  # x1 > x2 and y1 > y2
    with detlib.value_checks(False):
        assert_pool_matches(x, rois, 3, 1.0)
        for aligned in (False, True):  # malformed RoIs: 1 x 1 cell, or empty when aligned
            assert_align_matches(x, rois, 3, 1.0, -1, aligned)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype, gen):
    x = feature_map((2, 3, 10, 10), gen, dtype)
    rois = make_rois(15, 2, gen, image=10.0)
    pooled = roi_pool(x, rois, 3)
    aligned = roi_align(x, rois, 3, aligned=True)
    assert pooled.dtype == aligned.dtype == dtype
    # torchvision on the same values in float32: maxima are exact, averages rounded once.
    torch.testing.assert_close(pooled, tvops.roi_pool(x.float(), rois, 3).to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(
        aligned.float(), tvops.roi_align(x.float(), rois, 3, aligned=True), rtol=1e-2, atol=1e-2
    )


def test_benchmark_like_input_matches_torchvision(gen):
    # Feature map of stride 16 and RoIs of 16 to 600 pixels on an 800 x 800 image.
    x = feature_map((2, 16, 50, 50), gen)
    size = torch.exp(
        torch.empty(200, 2, dtype=torch.float64).uniform_(
            math.log(16), math.log(600), generator=gen
        )
    )
    centre = torch.rand(200, 2, generator=gen, dtype=torch.float64) * 800
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1).clamp(0, 800)
    rois = torch.cat((torch.randint(0, 2, (200, 1), generator=gen), boxes), dim=1).float()
    assert_pool_matches(x, rois, 7, 1 / 16)
    assert_align_matches(x, rois, 7, 1 / 16, -1, False)
    assert_align_matches(x, rois, 7, 1 / 16, 2, True)


def test_small_chunks_match_torchvision(monkeypatch, gen):
    # Chunks of a few elements: several channel chunks in roi_pool and in its backward, several
    # RoI chunks per image in roi_align.
    monkeypatch.setattr(detlib.roi._common, "_CHUNK_ELEMENTS", 100)
    monkeypatch.setattr(detlib.roi._common, "_MIN_CHUNK_CHANNELS", 1)
    x = feature_map((3, 5, 9, 10), gen, torch.float64, ties=True)
    rois = make_rois(25, 3, gen, image=10.0, dtype=torch.float64)
    grad_output = torch.randn(25, 5, 2, 3, generator=gen, dtype=torch.float64)
    assert_pool_matches(x, rois, (2, 3), 1.0)
    assert_align_matches(x, rois, (2, 3), 1.0, -1, False)
    for fn, args in ((roi_pool, ((2, 3),)), (roi_align, ((2, 3), 1.0, 2, True))):
        reference = getattr(tvops, fn.__name__)
        torch.testing.assert_close(
            input_grads(fn, x, rois, grad_output, *args),
            input_grads(reference, x, rois, grad_output, *args),
        )


# ----------------------------------------------------------------------------- property-based
@given(
    seed=st.integers(0, 2**31 - 1),
    batch_size=st.integers(1, 3),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    num_rois=st.integers(1, 12),
    output_size=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 3, 2.0]),
    sampling_ratio=st.sampled_from([-1, 0, 1, 3]),
    aligned=st.booleans(),
    dtype=st.sampled_from(FLOAT_DTYPES),
    ties=st.booleans(),
)
def test_random_inputs_match_torchvision(
    seed,
    batch_size,
    height,
    width,
    num_rois,
    output_size,
    scale,
    sampling_ratio,
    aligned,
    dtype,
    ties,
):
    gen = torch.Generator().manual_seed(seed)
    x = feature_map((batch_size, 2, height, width), gen, dtype, ties=ties)
    rois = make_rois(num_rois, batch_size, gen, image=max(height, width) / scale, dtype=dtype)
    rois[:, 1:] = (rois[:, 1:] * 2 * scale).round() / (2 * scale)  # many half-cell corners
    grad_output = torch.randn(num_rois, 2, *output_size, generator=gen, dtype=dtype)

    assert_pool_matches(x, rois, output_size, scale)
    assert_align_matches(x, rois, output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(
        input_grads(roi_pool, x, rois, grad_output, output_size, scale),
        input_grads(tvops.roi_pool, x, rois, grad_output, output_size, scale),
    )
    align_args = (output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(
        input_grads(roi_align, x, rois, grad_output, *align_args),
        input_grads(tvops.roi_align, x, rois, grad_output, *align_args),
    )


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("fast_mode", [False, True])
def test_roi_pool_gradcheck(fast_mode, gen):
    # Distinct values, so that no tie sits within gradcheck's step of another.
    x = feature_map((2, 2, 6, 7), gen, torch.float64).requires_grad_()
    rois = make_rois(6, 2, gen, image=7.0, dtype=torch.float64)
    if fast_mode:  # random projections of the Jacobian: cheap enough for many RoIs
        rois = torch.cat((rois, edge_rois(6, 7, 1.0, torch.float64)))
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (3, 2)), (x,), fast_mode=fast_mode)


@pytest.mark.parametrize(
    "sampling_ratio, aligned, fast_mode",
    [(-1, False, False), (2, True, False), (-1, True, True), (0, False, True), (2, False, True)],
)
def test_roi_align_gradcheck(sampling_ratio, aligned, fast_mode, gen):
    x = feature_map((2, 2, 6, 7), gen, torch.float64).requires_grad_()
    rois = make_rois(6, 2, gen, image=7.0, dtype=torch.float64)
    if fast_mode:
        rois = torch.cat((rois, edge_rois(6, 7, 1.0, torch.float64)))
    align = functools.partial(
        roi_align,
        rois=rois,
        output_size=(2, 3),
        spatial_scale=0.8,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    assert torch.autograd.gradcheck(align, (x,), fast_mode=fast_mode)


@pytest.mark.parametrize("ties", [False, True])
def test_roi_pool_gradient_matches_torchvision(ties, gen):
    # With ties (a ReLU'd map of small integers) the gradient goes to the first maximum in
    # row-major order of each bin; empty bins pass nothing back.
    x = feature_map((3, 5, 12, 11), gen, torch.float64, ties=ties)
    rois = torch.cat(
        (
            make_rois(40, 3, gen, image=24.0, dtype=torch.float64),
            edge_rois(12, 11, 0.5, torch.float64),
        )
    )
    grad_output = torch.randn(len(rois), 5, 4, 3, generator=gen, dtype=torch.float64)
    args = ((4, 3), 0.5)
    torch.testing.assert_close(
        input_grads(roi_pool, x, rois, grad_output, *args),
        input_grads(tvops.roi_pool, x, rois, grad_output, *args),
    )


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_roi_align_gradient_matches_torchvision(aligned, sampling_ratio, gen):
    x = feature_map((3, 5, 12, 11), gen, torch.float64)
    rois = torch.cat(
        (
            make_rois(40, 3, gen, image=24.0, dtype=torch.float64),
            edge_rois(12, 11, 0.5, torch.float64),
        )
    )
    grad_output = torch.randn(len(rois), 5, 4, 3, generator=gen, dtype=torch.float64)
    args = ((4, 3), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(
        input_grads(roi_align, x, rois, grad_output, *args),
        input_grads(tvops.roi_align, x, rois, grad_output, *args),
    )


def test_rois_get_no_gradient(gen):
    x = feature_map((1, 2, 6, 6), gen).requires_grad_()
    rois = make_rois(4, 1, gen, image=6.0).requires_grad_()
    for fn in (roi_pool, roi_align):
        fn(x, rois, 2).sum().backward()
        assert rois.grad is None
        assert x.grad is not None


# ----------------------------------------------------------------------------- empty input
@pytest.mark.parametrize("fn", [roi_pool, roi_align])
@pytest.mark.parametrize("rois", [torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)], []])
def test_empty_rois(fn, rois, gen):
    x = feature_map((2, 3, 5, 5), gen).requires_grad_()
    if len(rois):  # torchvision fails on an empty list
        assert getattr(tvops, fn.__name__)(x, rois, (2, 4)).shape == (0, 3, 2, 4)
    out = fn(x, rois, (2, 4))
    assert out.shape == (0, 3, 2, 4)
    assert out.dtype == x.dtype and out.device == x.device
    out.sum().backward()  # still part of the graph
    torch.testing.assert_close(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("fn", [roi_pool, roi_align])
def test_zero_channels(fn, gen):
    x = torch.zeros(1, 0, 4, 4)
    assert fn(x, make_rois(3, 1, gen, image=4.0), 2).shape == (3, 0, 2, 2)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [roi_pool, roi_align])
@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"input": [[1.0]]}, TypeError, "input must be a torch.Tensor"),
        ({"input": torch.zeros(3, 8, 8)}, ValueError, r"input must be a 4-D tensor \[B, C, H, W\]"),
        (
            {"input": torch.zeros(2, 3, 8, 8, dtype=torch.int64)},
            TypeError,
            "input must have a floating-point dtype",
        ),
        ({"input": torch.zeros(2, 3, 0, 8)}, ValueError, "input must have a non-empty height"),
        ({"rois": torch.zeros(3, 4)}, ValueError, r"rois must be a Tensor\[K, 5\]"),
        ({"rois": "boxes"}, TypeError, r"rois must be a Tensor\[K, 5\] or a list"),
        (
            {"rois": [torch.zeros(2, 4), torch.zeros(2, 5)]},
            ValueError,
            r"rois\[1\] must have shape \[N, 4\]",
        ),
        ({"rois": [[0.0, 0.0, 1.0, 1.0]]}, TypeError, r"rois\[0\] must be a torch.Tensor"),
        (
            {"rois": [torch.zeros(1, 4)] * 3},
            ValueError,
            r"rois as a list must hold one Tensor\[L, 4\] per image, got 3",
        ),
        (
            {"rois": torch.tensor([[2.0, 0, 0, 1, 1]])},
            ValueError,
            r"rois\[:, 0\] must hold integer batch indices in \[0, 2\)",
        ),
        ({"rois": torch.tensor([[-1.0, 0, 0, 1, 1]])}, ValueError, r"rois\[:, 0\] must hold"),
        ({"rois": torch.tensor([[0.5, 0, 0, 1, 1]])}, ValueError, r"rois\[:, 0\] must hold"),
        (
            {"rois": torch.tensor([[0.0, 0, math.nan, 1, 1]])},
            ValueError,
            r"rois\[:, 1:\] has 1 box\(es\) with NaN",
        ),
        (
            {"rois": [torch.tensor([[0.0, 0, 1, math.inf]])]},
            ValueError,
            r"rois\[0\] has 1 box\(es\) with NaN or infinite",
        ),
        (
            {"rois": torch.tensor([[0.0, 5, 0, 1, 1]])},
            ValueError,
            r"rois\[:, 1:\] has 1 box\(es\) of negative size",
        ),
        (
            {"rois": torch.zeros(1, 5, device="meta")},
            ValueError,
            "input is on cpu but rois is on meta",
        ),
        (
            {"rois": [torch.zeros(1, 4, device="meta")]},
            ValueError,
            r"input is on cpu but rois\[0\] is on meta",
        ),
        ({"output_size": 0}, ValueError, "output_size must be positive"),
        ({"output_size": (2, -1)}, ValueError, "output_size must be positive"),
        ({"output_size": 2.5}, TypeError, "output_size must be an int or a pair of ints"),
        ({"output_size": (2,)}, TypeError, "output_size must be an int or a pair of ints"),
        ({"output_size": True}, TypeError, "output_size must be an int or a pair of ints"),
        ({"spatial_scale": 0.0}, ValueError, "spatial_scale must be a finite number > 0"),
        ({"spatial_scale": -0.5}, ValueError, "spatial_scale must be a finite number > 0"),
        ({"spatial_scale": math.nan}, ValueError, "spatial_scale must be a finite number > 0"),
        ({"spatial_scale": "1/16"}, TypeError, "spatial_scale must be a number"),
    ],
)
def test_bad_arguments_raise(fn, change, error, message):
    kwargs = {
        "input": torch.zeros(2, 3, 8, 8),
        "rois": torch.tensor([[0.0, 1, 1, 4, 4]]),
        "output_size": 2,
        "spatial_scale": 1.0,
    }
    kwargs.update(change)
    with pytest.raises(error, match=f"^{fn.__name__}: {message}"):
        fn(**kwargs)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sampling_ratio": 1.5}, "sampling_ratio must be an int"),
        ({"sampling_ratio": True}, "sampling_ratio must be an int"),
        ({"aligned": "yes"}, "aligned must be a bool"),
    ],
)
def test_bad_roi_align_arguments_raise(change, message):
    with pytest.raises(TypeError, match=f"^roi_align: {message}"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), 2, **change)


def test_value_checks_off_skips_data_checks():
    rois = torch.tensor([[0.0, 5, 0, 1, 1]])  # x1 > x2: refused only when value checks are on
    with detlib.value_checks(False):
        for fn in (roi_pool, roi_align):
            assert fn(torch.zeros(1, 1, 8, 8), rois, 2).shape == (1, 1, 2, 2)
            with pytest.raises(ValueError, match="input is on cpu but rois is on meta"):
                fn(torch.zeros(1, 1, 8, 8), rois.to("meta"), 2)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_torchvision_on_cpu(dtype, gen):
    x = feature_map((2, 8, 20, 24), gen, dtype)
    rois = torch.cat((make_rois(50, 2, gen, image=48.0), edge_rois(20, 24, 0.5, torch.float32)))
    grad_output = torch.randn(len(rois), 8, 3, 4, generator=gen)
    x_cpu = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    rois_cpu = rois.to(x_cpu.dtype)
    tolerance = {"rtol": 1e-2, "atol": 1e-2} if x_cpu is not x else {}
    for fn, args in ((roi_pool, ((3, 4), 0.5)), (roi_align, ((3, 4), 0.5, -1, True))):
        reference = getattr(tvops, fn.__name__)
        out = fn(x.cuda(), rois.cuda(), *args)
        assert out.device.type == "cuda" and out.dtype == dtype
        torch.testing.assert_close(
            out.cpu().to(x_cpu.dtype), reference(x_cpu, rois_cpu, *args), **tolerance
        )
        grad = input_grads(fn, x.cuda(), rois.cuda(), grad_output.cuda().to(dtype), *args)
        expected = input_grads(reference, x_cpu, rois_cpu, grad_output.to(x_cpu.dtype), *args)
        torch.testing.assert_close(grad.cpu().to(x_cpu.dtype), expected, **tolerance)


# ----------------------------------------------------------------------------- memory, autocast
def test_roi_pool_keeps_only_the_window_levels_its_bins_read(monkeypatch):
    # One RoI over a whole 512 x 512 map: every bin is 73 or 74 cells high and wide, so only
    # the 64 x 64 windows are read. The table used to hold all 7 x 7 levels (+585 MB at 8
    # channels); it now holds that level and four scratch planes.
    import detlib.roi.pool as pool

    sizes = []
    original = pool._sparse_tables

    def recording(channels_last, plan, workspace, index_workspace):
        sizes.append((plan.num_planes, workspace.numel()))
        return original(channels_last, plan, workspace, index_workspace)

    monkeypatch.setattr(pool, "_sparse_tables", recording)
    x = torch.randn(1, 8, 512, 512, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([[0.0, 0, 0, 511, 511]])
    torch.testing.assert_close(roi_pool(x, rois, 7), tvops.roi_pool(x, rois, 7))
    num_planes, workspace = sizes[0]
    assert num_planes <= 5
    assert workspace * 4 <= 5 * 8 * 512 * 512 * 4 + 64  # about 42 MB, was about 411 MB


@pytest.mark.parametrize("fn", [roi_pool, roi_align])
def test_autocast_cpu_matches_torchvision(fn):
    # torchvision's autocast rule runs the kernel in float32 with autocast off and returns the
    # input's dtype; a bfloat16 product used to be written into a float32 buffer and fail.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    rois = make_rois(6, 2, gen, image=16.0)
    reference = getattr(tvops, fn.__name__)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = fn(x, rois, 3), reference(x, rois, 3)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours, fn(x, rois, 3))
