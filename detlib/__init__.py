"""detlib: the building blocks of anchor-based object detectors, in plain PyTorch.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels (no "+1" convention); an aspect ratio is
height / width. Functions accept tensors on any device and any floating dtype and return results
on the same device.
"""

from detlib._checks import set_value_checks, value_checks, value_checks_enabled
from detlib.anchors import (
    AnchorGenerator,
    anchors_inside_image,
    best_anchor_iou,
    kmeans_anchor_shapes,
    shape_iou,
)
from detlib.bifpn import (
    EFFICIENTDET_CONFIGS,
    BiFPN,
    SeparableConv2d,
    WeightedFusion,
    efficientdet_config,
)
from detlib.boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    remove_small_boxes,
)
from detlib.coder import BoxCoder
from detlib.data import ShapesDataset, collate_detection, sample_boxes
from detlib.heads import (
    BoxHead,
    ClassHead,
    EfficientDet,
    EfficientNetFeatures,
    TinyBackbone,
    count_parameters,
    prior_bias,
)
from detlib.losses import DetectionLoss, detection_loss, sigmoid_focal_loss, smooth_l1_loss
from detlib.matching import Matcher, greedy_bipartite_match, greedy_match, ssd_match
from detlib.metrics import coco_evaluate, voc_average_precision, voc_evaluate
from detlib.postprocess import Detections, postprocess_detections
from detlib.roi import assign_fpn_levels, multiscale_roi_align, roi_align, roi_pool
from detlib.rpn import RPNHead, generate_proposals, label_anchors, rpn_loss
from detlib.sampling import BalancedPositiveNegativeSampler, balanced_sample, labels_from_matches
from detlib.second_stage import FastRCNNHead, RoISamples, fast_rcnn_loss, sample_proposals
from detlib.suppression import batched_nms, nms, soft_nms
from detlib.training import DetectorConfig, horizontal_flip, load_checkpoint, save_checkpoint
from detlib.yolo import YoloTargets, yolo_decode, yolo_encode, yolo_match

__version__ = "0.1.0"

__all__ = [
    "AnchorGenerator",
    "anchors_inside_image",
    "assign_fpn_levels",
    "balanced_sample",
    "BalancedPositiveNegativeSampler",
    "batched_nms",
    "best_anchor_iou",
    "BiFPN",
    "box_area",
    "box_convert",
    "box_iou",
    "BoxCoder",
    "BoxHead",
    "ClassHead",
    "clip_boxes_to_image",
    "coco_evaluate",
    "collate_detection",
    "complete_box_iou",
    "count_parameters",
    "detection_loss",
    "DetectionLoss",
    "Detections",
    "DetectorConfig",
    "distance_box_iou",
    "EfficientDet",
    "efficientdet_config",
    "EFFICIENTDET_CONFIGS",
    "EfficientNetFeatures",
    "fast_rcnn_loss",
    "FastRCNNHead",
    "generalized_box_iou",
    "generate_proposals",
    "greedy_bipartite_match",
    "greedy_match",
    "horizontal_flip",
    "kmeans_anchor_shapes",
    "label_anchors",
    "labels_from_matches",
    "load_checkpoint",
    "Matcher",
    "multiscale_roi_align",
    "nms",
    "postprocess_detections",
    "prior_bias",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
    "RoISamples",
    "rpn_loss",
    "RPNHead",
    "sample_boxes",
    "sample_proposals",
    "save_checkpoint",
    "SeparableConv2d",
    "set_value_checks",
    "shape_iou",
    "ShapesDataset",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "soft_nms",
    "ssd_match",
    "TinyBackbone",
    "value_checks",
    "value_checks_enabled",
    "voc_average_precision",
    "voc_evaluate",
    "WeightedFusion",
    "yolo_decode",
    "yolo_encode",
    "yolo_match",
    "YoloTargets",
]
