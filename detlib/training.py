"""Training helpers for the capstone: a detector configuration, augmentation, checkpoints.

The training loop itself stays in the chapter, where it can be read line by line; what is here
is what a loop needs and should not have to write again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detlib._checks import (
    check_floating,
    check_positive,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from detlib.heads import EfficientDet, TinyBackbone

__all__ = ["DetectorConfig", "horizontal_flip", "load_checkpoint", "save_checkpoint"]


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

    def __post_init__(self) -> None:
        fn = "DetectorConfig"
        for name in ("num_classes", "channels", "bifpn_layers", "head_layers"):
            check_positive_int(fn, name, getattr(self, name))
        widths = self.backbone_widths
        if not isinstance(widths, (tuple, list)) or len(widths) != 5:
            raise ValueError(f"{fn}: backbone_widths must be 5 ints, got {widths!r}")
        for width in widths:
            check_positive_int(fn, "backbone_widths", width)
        check_positive(fn, "anchor_scale", self.anchor_scale)

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
    check_floating(fn, "boxes", boxes)
    check_same_device(fn, images=images, boxes=boxes, labels=labels, flip=flip)
    width = images.shape[-1]
    mirrored = torch.stack(
        (width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]), dim=-1
    )
    chosen = flip[:, None] & (labels >= 0)
    return (
        torch.where(flip[:, None, None, None], images.flip(-1), images),
        torch.where(chosen[..., None], mirrored, boxes),
    )


_PLAIN_SCALARS = (type(None), bool, int, float, str)


def _check_config(fn: str, config: object) -> None:
    """A configuration dataclass that can store itself (``to_dict``) and come back (``from_dict``)."""
    if not (
        dataclasses.is_dataclass(config)
        and not isinstance(config, type)
        and callable(getattr(config, "to_dict", None))
        and callable(getattr(type(config), "from_dict", None))
    ):
        raise TypeError(
            f"{fn}: config must be a DetectorConfig (or another configuration dataclass with "
            f"to_dict() and from_dict(), such as FasterRCNNConfig), got {type(config).__name__}"
        )


def _check_plain(fn: str, where: str, value: object) -> None:
    """Raise unless ``value`` is data that ``torch.load(weights_only=True)`` gives back: None,
    bool, int, float, str, tensors, and lists, tuples and dicts of them (numpy scalars and
    arrays, dataclasses and other objects are refused, so a checkpoint never saves what it
    cannot load)."""
    if type(value) in _PLAIN_SCALARS or type(value) is Tensor or type(value) is nn.Parameter:
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(fn, f"{where}[{i}]", item)
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{fn}: {where} has a key {key!r}; keys must be str or int")
            _check_plain(fn, f"{where}[{key!r}]", item)
        return
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    raise TypeError(
        f"{fn}: {where} must be plain data (None, bool, int, float, str, Tensor, or lists, "
        f"tuples and dicts of them) that load_checkpoint can read back, got {kind}; convert it "
        "first (float(x), x.tolist(), dataclasses.asdict(x))"
    )


def _digest(value: object, hasher: Any) -> None:
    """Feed ``value`` (plain data, as :func:`_check_plain` allows) into ``hasher``, tensors by
    their dtype, shape and bytes, everything else by its type and ``repr``."""
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{data.dtype}{list(value.shape)}".encode())
        hasher.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(value, dict):
        hasher.update(f"D{len(value)}".encode())
        for key, item in value.items():
            hasher.update(f"K{type(key).__name__}{key!r}".encode())
            _digest(item, hasher)
    elif isinstance(value, (list, tuple)):
        hasher.update(f"L{type(value).__name__}{len(value)}".encode())
        for item in value:
            _digest(item, hasher)
    else:
        hasher.update(f"S{type(value).__name__}{value!r}".encode())


def _checksum(content: dict[str, Any]) -> str:
    hasher = hashlib.sha256()
    _digest(content, hasher)
    return hasher.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, config: Any, **metadata: Any) -> None:
    """Save a model's ``state_dict`` together with its configuration and any plain metadata
    (steps trained, metrics, an optimizer's ``state_dict``...), so that loading can check it
    belongs to the same architecture.

    ``config`` is a :class:`DetectorConfig` (or another configuration dataclass with
    ``to_dict()`` / ``from_dict()``). The metadata must be plain data (None, bool, int, float,
    str, tensors, and lists, tuples and dicts of them): anything else raises ``TypeError`` here,
    instead of a checkpoint that :func:`load_checkpoint` would refuse. A SHA-256 checksum of the
    configuration, weights and metadata is stored with them, so that a damaged file is detected.
    """
    fn = "save_checkpoint"
    _check_config(fn, config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    for key, value in metadata.items():
        _check_plain(fn, f"metadata[{key!r}]", value)
    content = {
        "config": config.to_dict(),
        "config_type": type(config).__name__,
        "state_dict": model.state_dict(),
        "metadata": metadata,
    }
    torch.save({**content, "sha256": _checksum(content)}, path)


def load_checkpoint(path: str | Path, model: nn.Module, config: Any) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint` into ``model`` (built from ``config``).

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the file is empty, truncated or damaged (its checksum differs), was not
            written by :func:`save_checkpoint`, holds another kind of configuration, was saved
            for another configuration (the message lists every setting that differs), or its
            weights do not fit the model.

    Returns:
        The checkpoint's metadata.
    """
    fn = "load_checkpoint"
    _check_config(fn, config)
    checkpoint = _read(fn, path)
    expected = checkpoint.get("sha256")
    if expected is not None:  # checkpoints written before checksums were added have none
        content = {k: v for k, v in checkpoint.items() if k != "sha256"}
        if _checksum(content) != expected:
            raise ValueError(
                f"{fn}: {path} is damaged: its content does not match the checksum stored with "
                "it (a changed or corrupted byte); save it again"
            )
    saved = _saved_config(fn, path, checkpoint, config)
    if saved != config:
        differences = [
            f"{field.name}={getattr(saved, field.name)!r} (this model: {getattr(config, field.name)!r})"
            for field in dataclasses.fields(type(config))
            if getattr(saved, field.name) != getattr(config, field.name)
        ]
        raise ValueError(
            f"{fn}: {path} was saved for another configuration: " + ", ".join(differences)
        )
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{fn}: the weights in {path} do not fit this model: {error}") from None
    return dict(checkpoint.get("metadata", {}))


def _read(fn: str, path: str | Path) -> dict[str, Any]:
    """The checkpoint's dictionary; errors name the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{fn}: no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a truncated or empty file
        raise ValueError(
            f"{fn}: {path} cannot be read as a checkpoint (empty, truncated or damaged file?): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise ValueError(f"{fn}: {path} is not a checkpoint written by save_checkpoint")
    return checkpoint


def _saved_config(fn: str, path: str | Path, checkpoint: dict[str, Any], config: Any) -> Any:
    """The configuration stored in the checkpoint, rebuilt as ``type(config)``; every field must
    be stored (an empty or partial configuration is not "all defaults")."""
    kind = type(config).__name__
    stored_kind = checkpoint.get("config_type", "DetectorConfig")
    if stored_kind != kind:
        raise ValueError(f"{fn}: {path} holds a {stored_kind} checkpoint, not a {kind}")
    stored = checkpoint["config"]
    if not isinstance(stored, dict):
        raise ValueError(f"{fn}: {path} is not a checkpoint written by save_checkpoint")
    missing = [f.name for f in dataclasses.fields(type(config)) if f.name not in stored]
    if missing:
        raise ValueError(
            f"{fn}: {path} stores an incomplete configuration (missing {', '.join(missing)}); "
            "it was not written by save_checkpoint"
        )
    try:
        return type(config).from_dict(stored)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{fn}: {path} stores an invalid configuration: {error}") from None
