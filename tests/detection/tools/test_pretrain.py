"""The shapes-pretrained backbone: crops by hand, a short run that learns, and the file's torchvision layout."""
import numpy as np
import pytest
import torch

from datasets.shapes import render_scene
from detection.tools.pretrain import make_crops, pretrain
from models.backbone import build_body


def test_render_scene_is_deterministic_and_boxed():
    a = render_scene(5, 3)
    b = render_scene(5, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    img, boxes, labels = a
    assert img.shape == (128, 128, 3) and len(boxes) == len(labels) >= 1
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all() and (boxes <= 128).all()
    assert not np.array_equal(render_scene(6, 3)[0], img)


def test_crops_hold_every_object_and_background():
    xs, ys = make_crops(seed=1, first=0, count=20, size=32)
    objects = sum(len(render_scene(1, i)[2]) for i in range(20))
    assert xs.shape[1:] == (32, 32, 3) and xs.dtype == np.uint8
    assert (ys > 0).sum() == objects and 0 < (ys == 0).sum() <= 20  # one background patch per image at most
    first_labels = render_scene(1, 0)[2]
    assert ys[:len(first_labels)].tolist() == (first_labels + 1).tolist()


@pytest.mark.slow
def test_short_pretraining_learns_and_loads_as_a_backbone(tmp_path):
    out = str(tmp_path / "r18.pth")
    result = pretrain(out, steps=40, batch_size=32, lr=2e-3, seed=3, train_scenes=120, test_scenes=40, size=32,
                      log=lambda _: None)
    assert result["test_acc"] > 0.4  # 4 classes: chance is at most the largest class's share
    state = torch.load(out)
    assert "fc.weight" in state and state["fc.weight"].shape == (4, 512)
    body = build_body("resnet18", "bn_frozen_stats", 1, out)
    assert torch.equal(body.stem[1].running_mean, state["bn1.running_mean"])
