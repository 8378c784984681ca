"""BiFPN: EfficientDet's weighted bidirectional feature pyramid (Tan et al., 2020).

A BiFPN layer takes five maps ``P3..P7`` (strides 8 to 128, same number of channels) and returns
five maps of the same shapes. It runs a top-down pass (coarse to fine: ``P6_td``, ``P5_td``,
``P4_td``, ``P3_out``) and a bottom-up pass (fine to coarse: ``P4_out`` .. ``P7_out``). Every
node fuses its inputs with learned, normalised scalar weights, applies swish, a depthwise-separable
3 x 3 convolution and batch normalisation. Layers are stacked; the first one can build
``P3_in..P7_in`` itself from the backbone's ``C3..C5``.

Resampling follows the reference implementation: nearest-neighbour upsampling (to the exact size
of the finer map, so any input size works) and a 3 x 3, stride-2 max pool with TensorFlow's
"SAME" padding (padding added at the bottom and right of even-sized maps, never counted in the
maximum). A level with ``H`` rows has ``ceil(H / 2)`` rows one level up, as for the anchors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlib._checks import (
    check_floating,
    check_positive,
    check_positive_int,
    check_same_device,
    check_tensor,
)

__all__ = [
    "BiFPN",
    "BiFPNInputs",
    "BiFPNLayer",
    "efficientdet_config",
    "EFFICIENTDET_CONFIGS",
    "EfficientDetConfig",
    "max_pool_same",
    "resize_to",
    "SeparableConv2d",
    "WeightedFusion",
]

FUSION_KINDS = ("fast", "softmax", "unbounded", "sum")
LEVELS = (3, 4, 5, 6, 7)

# One BiFPN layer as data: (node, level, inputs). ``in<l>`` is the layer's input at level l (used
# by the top-down pass), ``skip<l>`` the same-level input of a bottom-up node (equal to ``in<l>``
# except in the first layer, which projects C4 and C5 twice), ``td<l>`` an intermediate top-down
# node and ``out<l>`` an output.
BIFPN_NODES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("td6", 6, ("in6", "in7")),
    ("td5", 5, ("in5", "td6")),
    ("td4", 4, ("in4", "td5")),
    ("out3", 3, ("in3", "td4")),
    ("out4", 4, ("skip4", "td4", "out3")),
    ("out5", 5, ("skip5", "td5", "out4")),
    ("out6", 6, ("skip6", "td6", "out5")),
    ("out7", 7, ("skip7", "out6")),
)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # TensorFlow's decay 0.99 is PyTorch's momentum 0.01; epsilon 1e-3 as in the reference.
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)


def max_pool_same(x: Tensor, kernel_size: int = 3, stride: int = 2) -> Tensor:
    """Max pooling with TensorFlow's "SAME" padding: ``ceil(H / stride)`` output rows.

    The padding (``(ceil(H / s) - 1) * s + k - H`` rows in total, the extra one at the bottom, and
    likewise for columns) is filled with ``-inf``, so it never wins the maximum.

    Args:
        x: ``Tensor[B, C, H, W]``.
        kernel_size: window size.
        stride: step.

    Returns:
        ``Tensor[B, C, ceil(H / stride), ceil(W / stride)]``.
    """
    height, width = x.shape[-2:]
    pad_h = max((math.ceil(height / stride) - 1) * stride + kernel_size - height, 0)
    pad_w = max((math.ceil(width / stride) - 1) * stride + kernel_size - width, 0)
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    return F.max_pool2d(F.pad(x, padding, value=-math.inf), kernel_size, stride)


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring a pyramid map to the grid of a neighbouring level.

    Coarser-to-finer uses nearest-neighbour upsampling to exactly ``size``; finer-to-coarser uses
    :func:`max_pool_same` until the size matches. Same size: ``x`` itself.

    Args:
        x: ``Tensor[B, C, H, W]``.
        size: target ``(height, width)``.

    Returns:
        ``Tensor[B, C, size[0], size[1]]``.
    """
    size = (int(size[0]), int(size[1]))
    while x.shape[-2] > size[0] or x.shape[-1] > size[1]:
        x = max_pool_same(x)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="nearest")
    return x


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution: a ``k x k`` depthwise convolution (one filter per channel,
    no bias) followed by a ``1 x 1`` pointwise convolution (with bias), stride 1, "same" padding.

    It has ``k*k*C_in + C_in*C_out (+ C_out)`` parameters instead of ``k*k*C_in*C_out (+ C_out)``.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out`` (default ``C_in``).
        kernel_size: odd size ``k`` of the depthwise filter.
        bias: whether the pointwise convolution has a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        fn = "SeparableConv2d"
        in_channels = check_positive_int(fn, "in_channels", in_channels)
        out_channels = in_channels if out_channels is None else out_channels
        out_channels = check_positive_int(fn, "out_channels", out_channels)
        if (
            not isinstance(kernel_size, numbers.Integral)
            or isinstance(kernel_size, bool)
            or kernel_size < 1
            or kernel_size % 2 == 0
        ):
            raise ValueError(f"{fn}: kernel_size must be an odd positive int, got {kernel_size!r}")
        self.depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C_in, H, W]`` to ``Tensor[B, C_out, H, W]``."""
        return self.pointwise(self.depthwise(x))


class WeightedFusion(nn.Module):
    """Sum of ``n`` same-shaped maps with one learned scalar weight each.

    Kinds (Tan et al., 2020, section 3.3), for raw weights ``w`` (initialised to 1):

    * ``"fast"``: ``relu(w_i) / (sum_j relu(w_j) + eps)``, fast normalised fusion (default);
    * ``"softmax"``: ``softmax(w)_i``;
    * ``"unbounded"``: ``w_i`` as they are;
    * ``"sum"``: no weights, a plain sum (EfficientDet D6 and D7).

    Args:
        num_inputs: number of maps ``n`` fused (2 or 3 in a BiFPN).
        kind: one of ``FUSION_KINDS``.
        eps: added to the denominator of ``"fast"``; must be positive, so that weights that
            have all become negative give a zero sum rather than NaN.
    """

    def __init__(self, num_inputs: int, kind: str = "fast", eps: float = 1e-4) -> None:
        super().__init__()
        fn = "WeightedFusion"
        self.num_inputs = check_positive_int(fn, "num_inputs", num_inputs)
        self.kind = _check_fusion(fn, kind)
        # eps > 0: once every raw weight has gone negative, relu gives 0 / eps = 0, not 0 / 0 = NaN
        self.eps = check_positive(fn, "eps", eps)
        if kind == "sum":
            self.register_parameter("weight", None)
        else:
            self.weight = nn.Parameter(torch.ones(num_inputs))

    def normalized_weights(self) -> Tensor:
        """The weights the inputs are multiplied by, ``Tensor[n]`` (ones for ``"sum"``)."""
        if self.weight is None:
            return torch.ones(self.num_inputs)
        if self.kind == "fast":
            positive = F.relu(self.weight)
            return positive / (positive.sum() + self.eps)
        if self.kind == "softmax":
            return torch.softmax(self.weight, dim=0)
        return self.weight

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fuse a list of ``n`` tensors of one shape into one tensor of that shape."""
        if len(inputs) != self.num_inputs:
            raise ValueError(
                f"WeightedFusion: expected {self.num_inputs} inputs, got {len(inputs)}"
            )
        if self.weight is None:
            out = inputs[0]
            for x in inputs[1:]:
                out = out + x
            return out
        weights = self.normalized_weights()
        out = weights[0] * inputs[0]
        for i in range(1, self.num_inputs):
            out = out + weights[i] * inputs[i]
        return out

    def extra_repr(self) -> str:
        return f"num_inputs={self.num_inputs}, kind={self.kind!r}, eps={self.eps}"


class BiFPNLayer(nn.Module):
    """One BiFPN layer: five maps ``P3..P7`` of ``channels`` channels in, five out.

    Each of the eight nodes of ``BIFPN_NODES`` resizes its inputs to its level, fuses them
    (:class:`WeightedFusion`), applies swish, a :class:`SeparableConv2d` and batch normalisation.

    Args:
        channels: channels of every map.
        fusion: fusion kind, one of ``FUSION_KINDS``.
        eps: epsilon of the fast normalised fusion.
    """

    def __init__(self, channels: int, fusion: str = "fast", eps: float = 1e-4) -> None:
        super().__init__()
        channels = check_positive_int("BiFPNLayer", "channels", channels)
        self.fusions = nn.ModuleDict(
            {name: WeightedFusion(len(inputs), fusion, eps) for name, _, inputs in BIFPN_NODES}
        )
        self.convs = nn.ModuleDict(
            {
                name: nn.Sequential(SeparableConv2d(channels), _batch_norm(channels))
                for name, _, _ in BIFPN_NODES
            }
        )

    def forward(
        self, features: Sequence[Tensor], skips: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """Run the top-down and bottom-up passes.

        Args:
            features: ``P3..P7``, five ``Tensor[B, C, H_l, W_l]``.
            skips: the same-level inputs of the bottom-up nodes, five maps shaped like
                ``features`` (default: ``features`` themselves). Only ``skips[1:4]`` (P4..P6) are
                used; the first layer of an EfficientDet passes second projections of C4 and C5.

        Returns:
            ``[P3_out, ..., P7_out]``, shaped like ``features``.
        """
        skips = features if skips is None else skips
        maps = {f"in{level}": x for level, x in zip(LEVELS, features)}
        maps.update({f"skip{level}": x for level, x in zip(LEVELS, skips)})
        for name, level, inputs in BIFPN_NODES:
            size = maps[f"in{level}"].shape[-2:]
            fused = self.fusions[name]([resize_to(maps[i], size) for i in inputs])
            maps[name] = self.convs[name](F.silu(fused))
        return [maps[f"out{level}"] for level in LEVELS]


class BiFPNInputs(nn.Module):
    """Builds ``P3_in..P7_in`` from a backbone's ``C3, C4, C5`` (the first BiFPN layer's inputs).

    ``P3..P5`` are 1 x 1 projections (conv + batch norm) to ``channels``. ``P6`` is a projection of
    C5 followed by a stride-2 max pool, and ``P7`` a max pool of ``P6``. C4 and C5 are projected a
    second time, by separate convolutions, for the same-level skip of the bottom-up nodes
    (the reference code's ``p4_in_2`` and ``p5_in_2``): in the reference graph every edge that
    changes the channel count has its own 1 x 1 convolution, and C4 and C5 feed two nodes each.

    Args:
        in_channels: channels of ``C3, C4, C5``.
        channels: BiFPN channels.
    """

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        c3, c4, c5 = _check_in_channels("BiFPNInputs", in_channels)
        channels = check_positive_int("BiFPNInputs", "channels", channels)
        self.in_channels = (c3, c4, c5)
        self.p3 = _projection(c3, channels)
        self.p4 = _projection(c4, channels)
        self.p5 = _projection(c5, channels)
        self.p4_skip = _projection(c4, channels)
        self.p5_skip = _projection(c5, channels)
        self.p6 = _projection(c5, channels)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``[C3, C4, C5]`` to ``([P3, P4, P5, P6, P7], [P3, P4_skip, P5_skip, P6, P7])``."""
        c3, c4, c5 = features
        p6 = max_pool_same(self.p6(c5))
        p7 = max_pool_same(p6)
        p3 = self.p3(c3)
        first = [p3, self.p4(c4), self.p5(c5), p6, p7]
        skips = [p3, self.p4_skip(c4), self.p5_skip(c5), p6, p7]
        return first, skips


class BiFPN(nn.Module):
    """A stack of BiFPN layers: five maps ``P3..P7`` in, five out, fast normalised fusion.

    With ``in_channels`` the module also builds its inputs from a backbone (:class:`BiFPNInputs`)
    and takes the three maps ``C3, C4, C5``; without, it takes five maps of ``channels`` channels.

    Args:
        channels: channels of every BiFPN map (64 for EfficientDet-D0).
        num_layers: number of stacked layers (3 for D0).
        in_channels: optional channels of ``C3, C4, C5`` (``(40, 112, 320)`` for EfficientNet-B0).
        fusion: ``"fast"`` (default), ``"softmax"``, ``"unbounded"`` or ``"sum"``.
        eps: epsilon of the fast normalised fusion.

    Inputs are checked: a list of 3 (with ``in_channels``) or 5 ``Tensor[B, C, H_l, W_l]`` on one
    device, with the right channels and each level ``ceil(H / 2) x ceil(W / 2)`` of the previous.
    """

    def __init__(
        self,
        channels: int,
        num_layers: int,
        in_channels: Sequence[int] | None = None,
        fusion: str = "fast",
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        fn = "BiFPN"
        self.channels = check_positive_int(fn, "channels", channels)
        self.num_layers = check_positive_int(fn, "num_layers", num_layers)
        self.fusion = _check_fusion(fn, fusion)
        self.inputs = None if in_channels is None else BiFPNInputs(in_channels, channels)
        self.layers = nn.ModuleList(
            BiFPNLayer(channels, fusion, eps) for _ in range(self.num_layers)
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``[C3, C4, C5]`` (with ``in_channels``) or ``[P3, ..., P7]`` to ``[P3_out, ..., P7_out]``.

        Args:
            features: the pyramid, finest level first, each ``Tensor[B, C_l, H_l, W_l]``.

        Returns:
            Five ``Tensor[B, channels, H_l, W_l]`` for ``P3..P7``.
        """
        self._check(features)
        skips = None
        if self.inputs is not None:
            features, skips = self.inputs(features)
        for index, layer in enumerate(self.layers):
            features = layer(features, skips if index == 0 else None)
        return features

    def _check(self, features: object) -> None:
        fn = "BiFPN"
        expected = (
            self.inputs.in_channels if self.inputs is not None else (self.channels,) * len(LEVELS)
        )
        names = "C3..C5" if self.inputs is not None else "P3..P7"
        if not isinstance(features, (list, tuple)) or len(features) != len(expected):
            got = len(features) if isinstance(features, (list, tuple)) else type(features).__name__
            raise ValueError(
                f"{fn}: features must be a list of {len(expected)} maps ({names}), got {got}"
            )
        for i, x in enumerate(features):
            check_floating(fn, f"features[{i}]", check_tensor(fn, f"features[{i}]", x))
            if x.dim() != 4 or x.shape[1] != expected[i]:
                raise ValueError(
                    f"{fn}: features[{i}] must have shape [B, {expected[i]}, H, W], "
                    f"got {list(x.shape)}"
                )
        check_same_device(fn, **{f"features[{i}]": x for i, x in enumerate(features)})
        for i in range(1, len(features)):
            previous, x = features[i - 1], features[i]
            wanted = [previous.shape[0], -(-previous.shape[2] // 2), -(-previous.shape[3] // 2)]
            if [x.shape[0], x.shape[2], x.shape[3]] != wanted:
                raise ValueError(
                    f"{fn}: features[{i}] has batch and size {[x.shape[0], *x.shape[2:]]}, "
                    f"expected {wanted}: the same batch and ceil(H / 2) x ceil(W / 2) of "
                    f"features[{i - 1}] (strides must double from level to level)"
                )

    def fusion_weights(self) -> list[dict[str, Tensor]]:
        """Normalised fusion weights of every node, one dict per layer (for inspection)."""
        return [
            {name: fusion.normalized_weights().detach() for name, fusion in layer.fusions.items()}
            for layer in self.layers
        ]


# ----------------------------------------------------------------------------- scaling table
@dataclass(frozen=True)
class EfficientDetConfig:
    """One row of EfficientDet's compound-scaling table (Tan et al., 2020, Table 1).

    Attributes:
        name: ``"D0"`` .. ``"D7"``.
        backbone: torchvision builder of the backbone (``"efficientnet_b0"`` ..).
        backbone_channels: channels of the backbone's ``C3, C4, C5``.
        image_size: input side in pixels.
        bifpn_channels: BiFPN width.
        bifpn_layers: BiFPN depth (stacked layers).
        head_layers: separable convolutions in the class and box heads before the predictor.
        anchor_scale: anchor base size in strides (``AnchorGenerator.efficientdet``).
        fusion: feature fusion of the BiFPN (D6 and D7 use a plain sum, for stability).
    """

    name: str
    backbone: str
    backbone_channels: tuple[int, int, int]
    image_size: int
    bifpn_channels: int
    bifpn_layers: int
    head_layers: int
    anchor_scale: float = 4.0
    fusion: str = "fast"


def _config(phi: int, backbone: int, channels: tuple[int, int, int], *row: object, **kw: object):
    return EfficientDetConfig(f"D{phi}", f"efficientnet_b{backbone}", channels, *row, **kw)


EFFICIENTDET_CONFIGS: dict[str, EfficientDetConfig] = {
    c.name: c
    for c in (
        _config(0, 0, (40, 112, 320), 512, 64, 3, 3),
        _config(1, 1, (40, 112, 320), 640, 88, 4, 3),
        _config(2, 2, (48, 120, 352), 768, 112, 5, 3),
        _config(3, 3, (48, 136, 384), 896, 160, 6, 4),
        _config(4, 4, (56, 160, 448), 1024, 224, 7, 4),
        _config(5, 5, (64, 176, 512), 1280, 288, 7, 4),
        _config(6, 6, (72, 200, 576), 1280, 384, 8, 5, fusion="sum"),
        _config(7, 6, (72, 200, 576), 1536, 384, 8, 5, anchor_scale=5.0, fusion="sum"),
    )
}


def efficientdet_config(name: str | int) -> EfficientDetConfig:
    """The scaling-table row of an EfficientDet variant.

    Args:
        name: ``"D0"`` .. ``"D7"`` (any case, optionally ``"efficientdet-d0"``) or ``0`` .. ``7``.

    Returns:
        The :class:`EfficientDetConfig`.
    """
    if isinstance(name, numbers.Integral) and not isinstance(name, bool):
        key = f"D{int(name)}"
    elif isinstance(name, str):
        key = name.upper().removeprefix("EFFICIENTDET-")
    else:
        key = None
    if key not in EFFICIENTDET_CONFIGS:
        raise ValueError(
            f"efficientdet_config: name must be one of {list(EFFICIENTDET_CONFIGS)} or 0..7, "
            f"got {name!r}"
        )
    return EFFICIENTDET_CONFIGS[key]


# ----------------------------------------------------------------------------- helpers
def _projection(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), _batch_norm(out_channels))


def _check_fusion(fn: str, kind: object) -> str:
    if kind not in FUSION_KINDS:
        raise ValueError(f"{fn}: fusion must be one of {FUSION_KINDS}, got {kind!r}")
    return kind


def _check_in_channels(
    fn: str, in_channels: object, name: str = "in_channels"
) -> tuple[int, int, int]:
    if not isinstance(in_channels, Sequence) or len(in_channels) != 3:
        raise ValueError(
            f"{fn}: {name} must give the channels of C3, C4 and C5 (3 ints), got {in_channels!r}"
        )
    return tuple(check_positive_int(fn, name, c) for c in in_channels)
