"""The book's extension that links detlib names in the prose to the API reference
(``book/_ext/api_links.py``): which names it links, and to what."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))

from api_links import api_targets, target_of  # noqa: E402

OBJECTS = {
    "detlib.anchors.AnchorGenerator": SimpleNamespace(objtype="class"),
    "detlib.anchors.AnchorGenerator.retinanet": SimpleNamespace(objtype="method"),
    "detlib.anchors.AnchorGenerator.forward": SimpleNamespace(objtype="method"),
    "detlib.heads.BoxHead.forward": SimpleNamespace(objtype="method"),
    "detlib.heads.BoxHead": SimpleNamespace(objtype="class"),
    "detlib.suppression.nms": SimpleNamespace(objtype="function"),
    "detlib.roi.align.roi_align": SimpleNamespace(objtype="function"),
    "detlib.postprocess.Detections.boxes": SimpleNamespace(objtype="attribute"),
    "torch.nn.Module": SimpleNamespace(objtype="class"),
}


def test_a_function_answers_to_its_name_with_and_without_its_module():
    targets = api_targets(OBJECTS)
    for text in ("nms", "nms()", "detlib.nms", "detlib.suppression.nms", "nms(boxes, scores, 0.5)"):
        assert target_of(text, targets) == "detlib.suppression.nms", text
    assert target_of("roi_align", targets) == "detlib.roi.align.roi_align"
    assert target_of("detlib.roi_align", targets) == "detlib.roi.align.roi_align"


def test_a_method_answers_to_its_class_dot_name():
    targets = api_targets(OBJECTS)
    assert target_of("AnchorGenerator.retinanet()", targets) == (
        "detlib.anchors.AnchorGenerator.retinanet"
    )
    assert target_of("AnchorGenerator", targets) == "detlib.anchors.AnchorGenerator"
    assert target_of("retinanet", targets) is None  # a method needs its class


def test_names_that_are_not_detlibs_or_not_unique_are_left_alone():
    targets = api_targets(OBJECTS)
    for text in (
        "torchvision.ops.nms",
        "forward",  # two classes have one
        "Module",
        "Detections.boxes",  # attributes are not linked
        "nms_threshold",
        "x = nms(b)",
        "",
    ):
        assert target_of(text, targets) is None, text
