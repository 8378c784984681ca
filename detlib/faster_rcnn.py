"""A small Faster R-CNN assembled from detlib's parts, with the helpers to train and run it.

The model is chapter 8's backbone and BiFPN with the two stages of chapter 6 on top:

1. the **RPN** (:class:`detlib.RPNHead`) predicts an objectness logit and four offsets for each of
   EfficientDet's anchors on P3-P7; during training :func:`detlib.label_anchors` labels the
   anchors, a balanced mini-batch is drawn and :func:`detlib.rpn_loss` scores it; at all times
   :func:`detlib.generate_proposals` turns the outputs into a few hundred proposals;
2. the **second stage** matches and samples the proposals (:func:`detlib.sample_proposals`),
   pools each from the pyramid level that suits its size (:func:`detlib.multiscale_roi_align`),
   classifies it and refines its box (:class:`detlib.FastRCNNHead`,
   :func:`detlib.fast_rcnn_loss`).

:class:`FasterRCNNConfig` holds every setting, so that :func:`detlib.save_checkpoint` can store it
beside the weights. Ground truth comes in the padded form of :func:`detlib.collate_detection`
(boxes ``[B, G, 4]``, labels ``[B, G]`` with classes from 0 and ``-1`` on padding rows), the same
input as the one-stage :func:`detlib.detection_loss`; detections come back with classes from 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from detlib import (
    AnchorGenerator,
    BiFPN,
    BoxCoder,
    Detections,
    FastRCNNHead,
    RPNHead,
    TinyBackbone,
    balanced_sample,
    batched_nms,
    fast_rcnn_loss,
    generate_proposals,
    label_anchors,
    multiscale_roi_align,
    rpn_loss,
    sample_proposals,
)
from detlib._checks import check_floating, check_tensor

__all__ = ["FasterRCNN", "FasterRCNNConfig"]


@dataclasses.dataclass(frozen=True)
class FasterRCNNConfig:
    """Everything needed to rebuild a small Faster R-CNN (defaults: chapter 9's model).

    Args:
        num_classes: object classes, without the background.
        backbone_widths: channels of :class:`detlib.TinyBackbone`'s five blocks.
        channels: BiFPN width, shared by the RPN and the pooled RoIs.
        bifpn_layers: stacked BiFPN layers.
        anchor_scale: EfficientDet anchors (P3-P7, 9 per cell) of ``anchor_scale`` strides.
        rpn_fg_iou, rpn_bg_iou: anchor labelling thresholds (0.7 / 0.3 in Faster R-CNN).
        rpn_batch_size, rpn_positive_fraction: anchors drawn per image for the RPN loss.
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test: anchors kept per level before the
            proposals' NMS.
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals kept per image.
        rpn_nms_threshold: the proposals' NMS threshold.
        roi_levels: pyramid levels the RoIs are pooled from (P3 onwards).
        roi_pool_size: RoI Align output size.
        canonical_scale, canonical_level: RoI size that reads level ``canonical_level``.
        representation_size: width of the two fully connected layers.
        roi_batch_size, roi_positive_fraction: RoIs drawn per image for the second stage.
        add_gt_boxes: append the ground-truth boxes to the proposals in training.
        box_weights: the second stage's :class:`detlib.BoxCoder` weights.
        score_threshold, nms_threshold, detections_per_image: the detections' post-processing.
    """

    num_classes: int = 3
    backbone_widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    channels: int = 32
    bifpn_layers: int = 2
    anchor_scale: float = 2.0
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_size: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 256
    rpn_pre_nms_top_n_test: int = 512
    rpn_post_nms_top_n_train: int = 300
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_threshold: float = 0.7
    roi_levels: int = 3
    roi_pool_size: int = 7
    canonical_scale: float = 64.0
    canonical_level: int = 4
    representation_size: int = 128
    roi_batch_size: int = 64
    roi_positive_fraction: float = 0.25
    add_gt_boxes: bool = True
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100

    def __post_init__(self) -> None:
        if len(self.backbone_widths) != 5:
            raise ValueError(
                f"FasterRCNNConfig: backbone_widths must be 5 ints, got {self.backbone_widths!r}"
            )
        if len(self.box_weights) != 4:
            raise ValueError(
                f"FasterRCNNConfig: box_weights must be 4 numbers, got {self.box_weights!r}"
            )
        if not 1 <= self.roi_levels <= 5:
            raise ValueError(
                f"FasterRCNNConfig: roi_levels must be in [1, 5], got {self.roi_levels}"
            )

    def build(self) -> FasterRCNN:
        """A freshly initialised model of this configuration."""
        return FasterRCNN(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists for tuples), safe to store in a checkpoint."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FasterRCNNConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"FasterRCNNConfig: unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class FasterRCNN(nn.Module):
    """Backbone + BiFPN + RPN + RoI Align + the Fast R-CNN head.

    Call :meth:`losses` to train, :meth:`detect` (or the model itself) for detections and
    :meth:`proposals` for the RPN's boxes alone.

    Args:
        config: a :class:`FasterRCNNConfig`.
    """

    def __init__(self, config: FasterRCNNConfig) -> None:
        super().__init__()
        if not isinstance(config, FasterRCNNConfig):
            raise TypeError(
                f"FasterRCNN: config must be a FasterRCNNConfig, got {type(config).__name__}"
            )
        self.config = config
        self.anchor_generator = AnchorGenerator.efficientdet(anchor_scale=config.anchor_scale)
        num_anchors = self.anchor_generator.num_anchors_per_location()[0]
        self.backbone = TinyBackbone(config.backbone_widths)
        self.bifpn = BiFPN(
            config.channels, config.bifpn_layers, in_channels=self.backbone.out_channels
        )
        self.rpn_head = RPNHead(config.channels, num_anchors)
        self.box_head = FastRCNNHead(
            config.channels,
            config.roi_pool_size,
            config.num_classes + 1,
            representation_size=config.representation_size,
        )
        self.rpn_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.roi_coder = BoxCoder(tuple(float(w) for w in config.box_weights))
        # P3 has stride 8: level k has scale 2**-k.
        self.roi_scales = [2.0 ** -(3 + level) for level in range(config.roi_levels)]

    # ------------------------------------------------------------------------ shared pieces
    def anchors(
        self, image_size: tuple[int, int], device: torch.device | str | None = None
    ) -> Tensor:
        """The RPN's anchors ``Tensor[N, 4]`` for one image, in the order of its outputs."""
        return self.anchor_generator(image_size, device=device)

    def features(self, images: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` to the five BiFPN maps P3-P7."""
        _check_images(images)
        return self.bifpn(self.backbone(images))

    def _rpn(
        self,
        features: list[Tensor],
        image_size: tuple[int, int],
        pre_nms_top_n: int,
        post_nms_top_n: int,
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
        objectness, deltas = self.rpn_head(features)
        anchors = self.anchors(image_size, device=objectness.device)
        per_level = [len(a) for a in self.anchor_generator.per_level(image_size)]
        boxes, scores = generate_proposals(
            anchors,
            objectness.detach(),
            deltas.detach(),
            image_size,
            per_level,
            pre_nms_top_n=pre_nms_top_n,
            post_nms_top_n=post_nms_top_n,
            nms_threshold=self.config.rpn_nms_threshold,
            box_coder=self.rpn_coder,
        )
        return objectness, deltas, anchors, boxes, scores

    def pool(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """RoI Align of each image's boxes (one ``[K_i, 4]`` per image) from the pyramid level
        that suits its size: ``Tensor[sum K_i, channels, roi_pool_size, roi_pool_size]``."""
        return multiscale_roi_align(
            features[: self.config.roi_levels],
            boxes,
            self.config.roi_pool_size,
            self.roi_scales,
            sampling_ratio=2,
            canonical_scale=self.config.canonical_scale,
            canonical_level=self.config.canonical_level,
        )

    # ------------------------------------------------------------------------------ training
    def losses(
        self,
        images: Tensor,
        boxes: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The four training losses of a batch.

        Args:
            images: ``Tensor[B, 3, H, W]``.
            boxes: ``Tensor[B, G, 4]`` ground truth, padded.
            labels: ``Tensor[B, G]`` classes from 0, ``-1`` on padding rows.
            generator: random generator for the anchors' and RoIs' draws.

        Returns:
            ``{"rpn_objectness", "rpn_box", "classification", "box"}``, four scalars; their sum is
            the loss to minimise.
        """
        _check_images(images)
        gt_boxes, gt_labels = self._targets(images, boxes, labels)
        image_size = (images.shape[-2], images.shape[-1])
        features = self.features(images)
        objectness, deltas, anchors, proposals, _ = self._rpn(
            features,
            image_size,
            self.config.rpn_pre_nms_top_n_train,
            self.config.rpn_post_nms_top_n_train,
        )
        # Stage 1: label the anchors, draw a balanced mini-batch per image, score it.
        anchor_labels, matched = label_anchors(
            anchors, gt_boxes, self.config.rpn_fg_iou, self.config.rpn_bg_iou
        )
        positive, negative = balanced_sample(
            anchor_labels, self.config.rpn_batch_size, self.config.rpn_positive_fraction, generator
        )
        targets = self.rpn_coder.encode(matched, anchors)
        rpn_objectness, rpn_box = rpn_loss(objectness, deltas, targets, positive, negative)
        # Stage 2: match and draw RoIs among the proposals, pool them, classify and refine.
        samples = sample_proposals(
            proposals,
            gt_boxes,
            gt_labels,
            batch_size_per_image=self.config.roi_batch_size,
            positive_fraction=self.config.roi_positive_fraction,
            add_gt_boxes=self.config.add_gt_boxes,
            box_coder=self.roi_coder,
            generator=generator,
        )
        class_logits, box_regression = self.box_head(self.pool(features, samples.boxes))
        classification, box = fast_rcnn_loss(
            class_logits,
            box_regression,
            torch.cat(samples.labels),
            torch.cat(samples.regression_targets),
        )
        return {
            "rpn_objectness": rpn_objectness,
            "rpn_box": rpn_box,
            "classification": classification,
            "box": box,
        }

    @staticmethod
    def _targets(
        images: Tensor, boxes: Tensor, labels: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Padded ground truth to one ``[G_i, 4]`` and one int64 ``[G_i]`` (classes from 1) per
        image."""
        fn = "FasterRCNN.losses"
        check_tensor(fn, "boxes", boxes)
        check_tensor(fn, "labels", labels)
        if boxes.dim() != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2]:
            raise ValueError(
                f"{fn}: expected boxes [B, G, 4] and labels [B, G], got {list(boxes.shape)} and "
                f"{list(labels.shape)}"
            )
        if len(boxes) != len(images):
            raise ValueError(
                f"{fn}: boxes and labels must have one row per image ({len(images)}), got "
                f"{len(boxes)}"
            )
        real = labels >= 0
        gt_boxes = [b[keep].to(images.dtype) for b, keep in zip(boxes, real)]
        gt_labels = [(lab[keep] + 1).to(torch.int64) for lab, keep in zip(labels, real)]
        return gt_boxes, gt_labels

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def proposals(
        self,
        images: Tensor,
        pre_nms_top_n: int | None = None,
        post_nms_top_n: int | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The RPN's proposals: per image ``Tensor[K_i, 4]`` boxes and ``Tensor[K_i]``
        objectness, best first (``pre_nms_top_n`` and ``post_nms_top_n`` default to the test
        settings)."""
        config = self.config
        pre = config.rpn_pre_nms_top_n_test if pre_nms_top_n is None else pre_nms_top_n
        post = config.rpn_post_nms_top_n_test if post_nms_top_n is None else post_nms_top_n
        image_size = (images.shape[-2], images.shape[-1])
        *_, boxes, scores = self._rpn(self.features(images), image_size, pre, post)
        return boxes, scores

    @torch.no_grad()
    def detect(self, images: Tensor, proposals: list[Tensor] | None = None) -> list[Detections]:
        """Detections of a batch: per image :class:`detlib.Detections` (boxes ``[D, 4]``,
        scores ``[D]``, labels ``[D]`` from 0), best first.

        Each proposal is scored for every class (softmax), its box refined with that class's
        offsets and clipped; pairs scoring above ``score_threshold`` go through per-class NMS and
        the ``detections_per_image`` best of each image are kept. ``proposals`` (one ``[K_i, 4]``
        per image) replaces the RPN's, e.g. to measure the second stage alone.
        """
        image_size = (images.shape[-2], images.shape[-1])
        features = self.features(images)
        if proposals is None:
            *_, proposals, _ = self._rpn(
                features,
                image_size,
                self.config.rpn_pre_nms_top_n_test,
                self.config.rpn_post_nms_top_n_test,
            )
        class_logits, box_regression = self.box_head(self.pool(features, list(proposals)))
        return self._postprocess(class_logits, box_regression, list(proposals), image_size)

    def forward(self, images: Tensor) -> list[Detections]:
        """Same as :meth:`detect`."""
        return self.detect(images)

    def _postprocess(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_size: tuple[int, int],
    ) -> list[Detections]:
        num_images, num_classes = len(proposals), self.config.num_classes
        rois = torch.cat(proposals)
        image = torch.cat(
            [torch.full((len(p),), i, device=rois.device) for i, p in enumerate(proposals)]
        )
        scores = class_logits.softmax(dim=1)[:, 1:]  # [R, C] without the background
        boxes = self.roi_coder.decode(box_regression, rois).reshape(len(rois), -1, 4)[:, 1:]
        height, width = image_size
        boxes = torch.stack(
            (
                boxes[..., 0].clamp(0, width),
                boxes[..., 1].clamp(0, height),
                boxes[..., 2].clamp(0, width),
                boxes[..., 3].clamp(0, height),
            ),
            dim=-1,
        )
        label = torch.arange(num_classes, device=rois.device).expand(len(rois), -1)
        image = image[:, None].expand(-1, num_classes)
        keep = (scores > self.config.score_threshold) & (
            (boxes[..., 2] - boxes[..., 0] >= 1e-2) & (boxes[..., 3] - boxes[..., 1] >= 1e-2)
        )
        boxes, scores, label, image = boxes[keep], scores[keep], label[keep], image[keep]
        kept = batched_nms(boxes, scores, image * num_classes + label, self.config.nms_threshold)
        out = []
        for i in range(num_images):
            rows = kept[image[kept] == i][: self.config.detections_per_image]
            out.append(Detections(boxes[rows], scores[rows], label[rows]))
        return out


def _check_images(images: object) -> None:
    fn = "FasterRCNN"
    check_floating(fn, "images", check_tensor(fn, "images", images))
    if images.dim() != 4:
        raise ValueError(f"{fn}: images must have shape [B, 3, H, W], got {list(images.shape)}")
