"""EfficientDet's class and box heads, and a small EfficientDet assembled from parts.

The heads run the same convolutions on every pyramid level (the weights are shared, so a head
is translation- and scale-equivariant across the pyramid) but keep one batch normalisation per
level and per layer, because the statistics of ``P3`` and ``P7`` differ. Their outputs are
flattened in the order of ``detlib.AnchorGenerator``: level, row, column, anchor.

The class head returns **logits**: apply ``sigmoid`` for scores, and give the logits to
``detlib.sigmoid_focal_loss``, which is exact and finite for any logit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from detlib._checks import check_floating, check_positive_int, check_same_device, check_tensor
from detlib.anchors import AnchorGenerator
from detlib.bifpn import (
    BiFPN,
    SeparableConv2d,
    _batch_norm,
    _check_in_channels,
    efficientdet_config,
)


def prior_bias(prior_probability: float) -> float:
    """The bias ``b`` with ``sigmoid(b) = prior_probability``: ``-log((1 - pi) / pi)``.

    RetinaNet initialises its classifier's bias with it (``pi = 0.01`` gives ``b = -4.595``), so
    that at the start of training every anchor predicts "background" with probability ``1 - pi``
    and the many easy negatives do not swamp the loss.
    """
    if isinstance(prior_probability, bool) or not isinstance(prior_probability, numbers.Real):
        raise TypeError(
            f"prior_bias: prior_probability must be a number in (0, 1), got {prior_probability!r}"
        )
    pi = float(prior_probability)
    if not 0.0 < pi < 1.0:
        raise ValueError(
            f"prior_bias: prior_probability must be in (0, 1), got {prior_probability!r}"
        )
    return -math.log((1.0 - pi) / pi)


class _SharedHead(nn.Module):
    """``num_layers`` shared separable convolutions with per-level batch norm and swish, then a
    shared separable predictor with ``num_anchors * outputs_per_anchor`` channels."""

    _name = "head"

    def __init__(
        self,
        channels: int,
        num_anchors: int,
        outputs_per_anchor: int,
        num_layers: int,
        num_levels: int,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        self.channels = check_positive_int(fn, "channels", channels)
        self.num_anchors = check_positive_int(fn, "num_anchors", num_anchors)
        self.outputs_per_anchor = outputs_per_anchor
        self.num_levels = check_positive_int(fn, "num_levels", num_levels)
        num_layers = check_positive_int(fn, "num_layers", num_layers)
        self.convs = nn.ModuleList(SeparableConv2d(channels) for _ in range(num_layers))
        self.norms = nn.ModuleList(
            nn.ModuleList(_batch_norm(channels) for _ in range(num_layers))
            for _ in range(num_levels)
        )
        self.predict = SeparableConv2d(channels, num_anchors * outputs_per_anchor)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Predictions for every anchor of every level.

        Args:
            features: ``num_levels`` maps ``Tensor[B, channels, H_l, W_l]``, finest first.

        Returns:
            ``Tensor[B, sum_l H_l * W_l * A, K]``, ordered by level, row, column, anchor.
        """
        self._check(features)
        outputs = []
        for x, norms in zip(features, self.norms, strict=True):
            for conv, norm in zip(self.convs, norms, strict=True):
                x = F.silu(norm(conv(x)))
            x = self.predict(x)  # [B, A * K, H, W], channel a * K + k
            batch, _, height, width = x.shape
            outputs.append(
                x.permute(0, 2, 3, 1).reshape(
                    batch, height * width * self.num_anchors, self.outputs_per_anchor
                )
            )
        return torch.cat(outputs, dim=1)

    def _check(self, features: object) -> None:
        fn = type(self).__name__
        if not isinstance(features, (list, tuple)) or len(features) != self.num_levels:
            got = len(features) if isinstance(features, (list, tuple)) else type(features).__name__
            raise ValueError(f"{fn}: features must be a list of {self.num_levels} maps, got {got}")
        for i, x in enumerate(features):
            check_floating(fn, f"features[{i}]", check_tensor(fn, f"features[{i}]", x))
            if x.dim() != 4 or x.shape[1] != self.channels or x.shape[0] != features[0].shape[0]:
                raise ValueError(
                    f"{fn}: features[{i}] must have shape [B, {self.channels}, H, W] with the batch "
                    f"of features[0], got {list(x.shape)}"
                )
        check_same_device(fn, **{f"features[{i}]": x for i, x in enumerate(features)})


class ClassHead(_SharedHead):
    """EfficientDet's class network: class **logits** for every anchor.

    Args:
        channels: channels of the pyramid maps.
        num_anchors: anchors per cell ``A`` (9 for EfficientDet).
        num_classes: number of classes ``C`` (no background class: one sigmoid per class).
        num_layers: shared separable convolutions before the predictor (3 for D0).
        num_levels: pyramid levels (one set of batch norms each).
        prior_probability: initial probability of every class, through the predictor's bias.

    Calling it on ``num_levels`` maps returns ``Tensor[B, sum_l H_l * W_l * A, C]``.
    """

    def __init__(
        self,
        channels: int,
        num_anchors: int,
        num_classes: int,
        num_layers: int,
        num_levels: int = 5,
        prior_probability: float = 0.01,
    ) -> None:
        num_classes = check_positive_int("ClassHead", "num_classes", num_classes)
        super().__init__(channels, num_anchors, num_classes, num_layers, num_levels)
        self.num_classes = num_classes
        nn.init.constant_(self.predict.pointwise.bias, prior_bias(prior_probability))


class BoxHead(_SharedHead):
    """EfficientDet's box network: 4 box-regression values for every anchor (zero bias at start),
    in the order of the coder that encodes the targets (``detlib.BoxCoder``: dx, dy, dw, dh).

    Args:
        channels: channels of the pyramid maps.
        num_anchors: anchors per cell ``A``.
        num_layers: shared separable convolutions before the predictor.
        num_levels: pyramid levels (one set of batch norms each).

    Calling it on ``num_levels`` maps returns ``Tensor[B, sum_l H_l * W_l * A, 4]``.
    """

    def __init__(
        self, channels: int, num_anchors: int, num_layers: int, num_levels: int = 5
    ) -> None:
        super().__init__(channels, num_anchors, 4, num_layers, num_levels)
        nn.init.zeros_(self.predict.pointwise.bias)


# ----------------------------------------------------------------------------- backbones
class EfficientNetFeatures(nn.Module):
    """``C3, C4, C5`` (strides 8, 16, 32) of a torchvision EfficientNet with random weights.

    The stages of ``torchvision.models.efficientnet_b*().features`` are the stem (index 0) and
    seven MBConv stages; C3, C4 and C5 are the outputs of stages 3, 5 and 7 (the last stage of
    strides 8, 16 and 32). The final 1 x 1 convolution and the classifier are dropped.

    Args:
        variant: a torchvision builder, ``"efficientnet_b0"`` .. ``"efficientnet_b7"``.
    """

    def __init__(self, variant: str = "efficientnet_b0") -> None:
        super().__init__()
        names = [f"efficientnet_b{i}" for i in range(8)]
        if variant not in names:
            raise ValueError(
                f"EfficientNetFeatures: variant must be one of {names}, got {variant!r}"
            )
        features = getattr(torchvision.models, variant)(weights=None).features
        self.to_c3, self.to_c4, self.to_c5 = features[:4], features[4:6], features[6:8]
        self.out_channels = tuple(
            stage[-1].out_channels for stage in (features[3], features[5], features[7])
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` to ``[C3, C4, C5]``, ``Tensor[B, C_l, ceil(H / s_l), ceil(W / s_l)]``."""
        c3 = self.to_c3(images)
        c4 = self.to_c4(c3)
        return [c3, c4, self.to_c5(c4)]


class TinyBackbone(nn.Module):
    """Five stride-2 blocks (3 x 3 conv, batch norm, swish) returning the last three: ``C3, C4,
    C5`` at strides 8, 16, 32. A stand-in for EfficientNet when training small models on a CPU.

    Args:
        widths: channels of the five blocks; ``out_channels`` is ``widths[2:]``.
        in_channels: image channels.
    """

    def __init__(self, widths: Sequence[int] = (16, 24, 32, 48, 64), in_channels: int = 3) -> None:
        super().__init__()
        if not isinstance(widths, Sequence) or len(widths) != 5:
            raise ValueError(f"TinyBackbone: widths must be 5 ints, got {widths!r}")
        widths = [check_positive_int("TinyBackbone", "widths", w) for w in widths]
        blocks, previous = [], check_positive_int("TinyBackbone", "in_channels", in_channels)
        for width in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.SiLU(),
                )
            )
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(widths[2:])

    def forward(self, images: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` to ``[C3, C4, C5]``."""
        outputs, x = [], images
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs[2:]


# ----------------------------------------------------------------------------- the detector
class HeadOutputs(NamedTuple):
    """What :class:`EfficientDet` returns: ``class_logits`` ``Tensor[B, N, C]`` and
    ``box_deltas`` ``Tensor[B, N, 4]``, row ``k`` belonging to anchor ``k``."""

    class_logits: Tensor
    box_deltas: Tensor


class EfficientDet(nn.Module):
    """Backbone + BiFPN + shared class and box heads, predicting for EfficientDet's anchors.

    Args:
        backbone: a module mapping ``Tensor[B, 3, H, W]`` to ``[C3, C4, C5]`` (strides 8, 16, 32).
        backbone_channels: channels of ``C3, C4, C5``.
        num_classes: number of classes.
        channels: BiFPN and head width (64 for D0).
        bifpn_layers: stacked BiFPN layers (3 for D0).
        head_layers: separable convolutions in each head (3 for D0).
        anchor_scale: anchor size in strides (4 for D0-D6).
        fusion: BiFPN fusion kind.
        prior_probability: initial class probability.

    Calling the model on images returns :class:`HeadOutputs` with one row per anchor of
    :meth:`anchors` for the same image size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_channels: Sequence[int],
        num_classes: int,
        channels: int = 64,
        bifpn_layers: int = 3,
        head_layers: int = 3,
        anchor_scale: float = 4.0,
        fusion: str = "fast",
        prior_probability: float = 0.01,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"EfficientDet: backbone must be an nn.Module, got {type(backbone).__name__}"
            )
        backbone_channels = _check_in_channels(
            "EfficientDet", backbone_channels, "backbone_channels"
        )
        self.anchor_generator = AnchorGenerator.efficientdet(anchor_scale=anchor_scale)
        num_anchors = self.anchor_generator.num_anchors_per_location()[0]
        self.backbone = backbone
        self.bifpn = BiFPN(channels, bifpn_layers, in_channels=backbone_channels, fusion=fusion)
        self.class_head = ClassHead(
            channels, num_anchors, num_classes, head_layers, prior_probability=prior_probability
        )
        self.box_head = BoxHead(channels, num_anchors, head_layers)

    @classmethod
    def from_config(
        cls, name: str | int = "D0", num_classes: int = 90, backbone: nn.Module | None = None
    ) -> EfficientDet:
        """An EfficientDet of the scaling table (``detlib.bifpn.EFFICIENTDET_CONFIGS``) with a
        randomly initialised torchvision EfficientNet backbone (or ``backbone``, which must give
        the configuration's ``backbone_channels``). 90 classes as in the reference COCO models."""
        config = efficientdet_config(name)
        if backbone is None:
            backbone = EfficientNetFeatures(config.backbone)
        return cls(
            backbone,
            config.backbone_channels,
            num_classes,
            channels=config.bifpn_channels,
            bifpn_layers=config.bifpn_layers,
            head_layers=config.head_layers,
            anchor_scale=config.anchor_scale,
            fusion=config.fusion,
        )

    def forward(self, images: Tensor) -> HeadOutputs:
        """``Tensor[B, 3, H, W]`` to class logits ``[B, N, C]`` and box deltas ``[B, N, 4]``."""
        check_floating("EfficientDet", "images", check_tensor("EfficientDet", "images", images))
        if images.dim() != 4:
            raise ValueError(
                f"EfficientDet: images must have shape [B, 3, H, W], got {list(images.shape)}"
            )
        features = self.bifpn(self.backbone(images))
        return HeadOutputs(self.class_head(features), self.box_head(features))

    def anchors(
        self,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """The anchors ``Tensor[N, 4]`` (x1, y1, x2, y2) matching the rows of the outputs."""
        return self.anchor_generator(image_size, device=device, dtype=dtype)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"count_parameters: module must be an nn.Module, got {type(module).__name__}"
        )
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "BoxHead",
    "ClassHead",
    "EfficientDet",
    "EfficientNetFeatures",
    "HeadOutputs",
    "TinyBackbone",
    "count_parameters",
    "prior_bias",
]
