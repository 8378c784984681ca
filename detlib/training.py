"""Training helpers for the capstone: a detector configuration, augmentation, checkpoints.

The training loop itself stays in the chapter, where it can be read line by line; what is here
is what a loop needs and should not have to write again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detlib._checks import check_tensor
from detlib.heads import EfficientDet, TinyBackbone


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a small EfficientDet-style detector.

    Args:
        num_classes: number of object classes.
        backbone_widths: channels of :class:`detlib.heads.TinyBackbone`'s five stride-2 blocks.
        channels: BiFPN and head width.
        bifpn_layers: stacked BiFPN layers.
        head_layers: separable convolutions in each head.
        anchor_scale: anchor size in strides (EfficientDet uses 4; 2 suits small objects).
    """

    num_classes: int = 3
    backbone_widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    channels: int = 32
    bifpn_layers: int = 2
    head_layers: int = 2
    anchor_scale: float = 2.0

    def build(self) -> EfficientDet:
        """A freshly initialised detector of this configuration."""
        backbone = TinyBackbone(self.backbone_widths)
        return EfficientDet(
            backbone,
            backbone.out_channels,
            self.num_classes,
            channels=self.channels,
            bifpn_layers=self.bifpn_layers,
            head_layers=self.head_layers,
            anchor_scale=self.anchor_scale,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists for tuples), safe to store in a checkpoint."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DetectorConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"DetectorConfig: unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def horizontal_flip(
    images: Tensor, boxes: Tensor, labels: Tensor, flip: Tensor
) -> tuple[Tensor, Tensor]:
    """Mirror the chosen images left to right, with their boxes.

    Args:
        images: ``Tensor[B, C, H, W]``.
        boxes: ``Tensor[B, G, 4]`` in ``(x1, y1, x2, y2)``, padded.
        labels: ``Tensor[B, G]``, ``-1`` on padding rows (which are left untouched).
        flip: ``Tensor[B]`` of bools, the images to mirror.

    Returns:
        ``(images, boxes)``, new tensors of the same shapes.
    """
    fn = "horizontal_flip"
    for name, value in (("images", images), ("boxes", boxes), ("labels", labels), ("flip", flip)):
        check_tensor(fn, name, value)
    if (
        images.dim() != 4
        or boxes.dim() != 3
        or boxes.shape[-1] != 4
        or labels.shape != boxes.shape[:2]
    ):
        raise ValueError(
            f"{fn}: expected images [B, C, H, W], boxes [B, G, 4] and labels [B, G], got "
            f"{list(images.shape)}, {list(boxes.shape)} and {list(labels.shape)}"
        )
    if flip.shape != images.shape[:1] or flip.dtype != torch.bool:
        raise ValueError(f"{fn}: flip must be a bool Tensor[B] with B = {images.shape[0]}")
    width = images.shape[-1]
    mirrored = torch.stack(
        (width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]), dim=-1
    )
    chosen = flip[:, None] & (labels >= 0)
    return (
        torch.where(flip[:, None, None, None], images.flip(-1), images),
        torch.where(chosen[..., None], mirrored, boxes),
    )


def save_checkpoint(
    path: str | Path, model: nn.Module, config: DetectorConfig, **metadata: Any
) -> None:
    """Save a model's ``state_dict`` together with its configuration and any plain metadata
    (steps trained, metrics...), so that loading can check it belongs to the same architecture."""
    if not isinstance(config, DetectorConfig):
        raise TypeError(
            f"save_checkpoint: config must be a DetectorConfig, got {type(config).__name__}"
        )
    torch.save(
        {"config": config.to_dict(), "state_dict": model.state_dict(), "metadata": metadata}, path
    )


def load_checkpoint(path: str | Path, model: nn.Module, config: DetectorConfig) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint` into ``model`` (built from ``config``).

    Raises:
        ValueError: if the checkpoint was saved for another configuration (the message lists every
            setting that differs), or its weights do not fit the model.

    Returns:
        The checkpoint's metadata.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise ValueError(f"load_checkpoint: {path} is not a checkpoint written by save_checkpoint")
    saved = DetectorConfig.from_dict(checkpoint["config"])
    if saved != config:
        differences = [
            f"{field.name}={getattr(saved, field.name)!r} (this model: {getattr(config, field.name)!r})"
            for field in dataclasses.fields(DetectorConfig)
            if getattr(saved, field.name) != getattr(config, field.name)
        ]
        raise ValueError(
            f"load_checkpoint: {path} was saved for another configuration: "
            + ", ".join(differences)
        )
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ValueError(
            f"load_checkpoint: the weights in {path} do not fit this model: {error}"
        ) from None
    return dict(checkpoint.get("metadata", {}))
