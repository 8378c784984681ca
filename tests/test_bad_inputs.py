"""Bad inputs found by a probe of the public API (issue 13): each must raise, naming the argument."""

from __future__ import annotations

import threading

import pytest
import torch

import detlib
import detlib._checks


# --------------------------------------------------------------------------- 1. the value-check switch
def test_value_check_switch_is_per_thread():
    seen = {}

    def worker():
        detlib.set_value_checks(False)
        seen["worker"] = detlib.value_checks_enabled()

    with detlib.value_checks(True):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen["worker"] is False
        assert detlib.value_checks_enabled()  # the worker's setting stays in the worker
        with pytest.raises(ValueError, match="box_iou: boxes1 has 1 box"):
            detlib.box_iou(torch.tensor([[0.0, 0, float("nan"), 1]]), torch.zeros(1, 4))


def test_detection_loss_never_toggles_the_switch(monkeypatch):
    def refuse(enabled):
        raise AssertionError("the library must not toggle the value checks")

    monkeypatch.setattr(detlib._checks, "set_value_checks", refuse)
    anchors = torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 20, 20]])
    loss = detlib.detection_loss(
        torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), anchors, [anchors[:1]], [torch.tensor([1])]
    )
    assert int(loss.num_positive) == 1


def test_set_value_checks_wants_a_bool():
    with pytest.raises(TypeError, match="set_value_checks: enabled must be True or False"):
        detlib.set_value_checks("no")
