"""detlib.training: the detector configuration, flip augmentation and checkpoints."""

import pytest
import torch

from detlib.training import DetectorConfig, horizontal_flip, load_checkpoint, save_checkpoint


def test_config_builds_a_detector_whose_outputs_match_its_anchors():
    config = DetectorConfig(
        channels=16, bifpn_layers=1, head_layers=1, backbone_widths=(8, 8, 16, 16, 16)
    )
    model = config.build().eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 96, 128))
    anchors = model.anchors((96, 128))
    assert out.class_logits.shape == (2, len(anchors), 3) and out.box_deltas.shape == (
        2,
        len(anchors),
        4,
    )
    assert DetectorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown fields"):
        DetectorConfig.from_dict({"width": 3})


def test_horizontal_flip_mirrors_chosen_images_and_their_boxes():
    images = torch.arange(2 * 1 * 2 * 4, dtype=torch.float32).reshape(2, 1, 2, 4)
    boxes = torch.tensor(
        [[[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]], [[1.0, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0]]]
    )
    labels = torch.tensor([[1, -1], [0, -1]])
    flipped, new_boxes = horizontal_flip(images, boxes, labels, torch.tensor([True, False]))
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])
    assert new_boxes[0, 0].tolist() == [3.0, 0.0, 4.0, 2.0]  # x1' = W - x2, x2' = W - x1
    assert torch.equal(new_boxes[0, 1], boxes[0, 1])  # padding untouched
    assert torch.equal(new_boxes[1], boxes[1])
    # Flipping twice gives back the input.
    twice, twice_boxes = horizontal_flip(flipped, new_boxes, labels, torch.tensor([True, False]))
    assert torch.equal(twice, images) and torch.equal(twice_boxes, boxes)


def test_horizontal_flip_validates():
    with pytest.raises(ValueError, match="flip must be a bool"):
        horizontal_flip(
            torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4), torch.zeros(2, 1), torch.zeros(2)
        )
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        horizontal_flip(
            torch.zeros(3, 4, 4),
            torch.zeros(2, 1, 4),
            torch.zeros(2, 1),
            torch.zeros(2, dtype=torch.bool),
        )


def test_checkpoint_round_trip(tmp_path):
    config = DetectorConfig(channels=16, bifpn_layers=1, head_layers=1)
    model = config.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    save_checkpoint(tmp_path / "d.pt", model, config, steps=12, map_50=0.5)
    fresh = config.build()
    metadata = load_checkpoint(tmp_path / "d.pt", fresh, config)
    assert metadata == {"steps": 12, "map_50": 0.5}
    x = torch.rand(1, 3, 64, 64)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x).class_logits, fresh(x).class_logits)


def test_checkpoint_of_another_configuration_is_refused_with_the_differences(tmp_path):
    saved = DetectorConfig(channels=16, bifpn_layers=1, head_layers=1)
    save_checkpoint(tmp_path / "d.pt", saved.build(), saved)
    other = DetectorConfig(channels=24, bifpn_layers=1, head_layers=2)
    with pytest.raises(
        ValueError,
        match=r"another configuration: channels=16 \(this model: 24\), head_layers=1 \(this model: 2\)",
    ):
        load_checkpoint(tmp_path / "d.pt", other.build(), other)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a checkpoint written by save_checkpoint"):
        load_checkpoint(tmp_path / "other.pt", saved.build(), saved)
    with pytest.raises(ValueError, match="do not fit this model"):
        load_checkpoint(tmp_path / "d.pt", other.build(), saved)  # right config, wrong module
    with pytest.raises(TypeError, match="config must be a DetectorConfig"):
        save_checkpoint(tmp_path / "x.pt", saved.build(), {"channels": 16})
