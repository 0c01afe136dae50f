"""model.init_from: what is loaded, what is copied class by class, what is re-initialised."""
import pytest
import torch

import datasets
from detection import builders
from detection.checkpoint.io import save_checkpoint
from detection.config.loader import ConfigError, config_from_tree
from detection.checkpoint.init_from import class_pairs, class_row_index, init_from
from detection.config.schema import Config

COCO = list(datasets.COCO_CLASSES)
SHAPES = ["circle", "rectangle", "triangle"]


def tiny(kind: str, num_classes: int, seed: int):
    torch.manual_seed(seed)
    model = {"type": kind, "backbone": {"name": "resnet18", "pretrained": None, "norm": "bn", "frozen_stages": -1},
             "fpn": {"out_channels": 16}}
    if kind == "retinanet":
        model["head"] = {"feat_channels": 16, "num_convs": 1}
    else:
        model["fpn"].update(in_levels=[2, 3, 4, 5], extra="maxpool")
        model["rpn"] = {"feat_channels": 16}
        model["roi_head"] = {"fc_channels": 32}
    cfg = config_from_tree(Config, {"model": model}, {"": "test"})
    return builders.build_model(cfg, num_classes)


def checkpoint(tmp_path, model, classes):
    path = str(tmp_path / "src.pth")
    save_checkpoint({"model": model.state_dict(), "classes": list(classes)}, path)
    return path


def test_row_index_by_hand():
    assert class_row_index((1, 4, False), 3, [2, 0]).tolist() == [8, 9, 10, 11, 0, 1, 2, 3]  # class-specific boxes
    assert class_row_index((1, 1, True), 3, [1]).tolist() == [1, 3]  # + the background row, last
    assert class_row_index((2, 1, False), 3, [0, 2]).tolist() == [0, 2, 3, 5]  # one block of classes per anchor


def test_class_pairs():
    assert class_pairs(["a", "b", "c"], ["c", "x", "a"], None, "f") == {}
    assert class_pairs(["a", "b", "c"], ["c", "x", "a"], "by_name", "f") == {0: 2, 2: 0}
    assert class_pairs(["a", "b", "c"], ["c", "x", "a"], {"b": "x"}, "f") == {0: 2, 1: 1, 2: 0}
    with pytest.raises(ConfigError, match=r"names \['d'\]"):
        class_pairs(["a"], ["a"], {"d": "a"}, "f")
    with pytest.raises(ConfigError, match=r"maps to \['y'\].*classes of f"):
        class_pairs(["a"], ["a"], {"a": "y"}, "f")


def test_retinanet_from_coco_classes_copies_mapped_rows(tmp_path, capsys):
    src_model = tiny("retinanet", 80, 0)
    path = checkpoint(tmp_path, src_model, COCO)
    model = tiny("retinanet", 3, 1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, path, SHAPES, {"circle": "person", "triangle": "dog"})
    src, got = src_model.state_dict(), model.state_dict()
    assert report["by_class"] == ["head.cls_out.weight", "head.cls_out.bias"] and not report["reinitialised"]
    dog = COCO.index("dog")
    for a in range(9):  # 9 anchors per location: one block of classes each
        assert torch.equal(got["head.cls_out.bias"][a * 3], src["head.cls_out.bias"][a * 80])
        assert torch.equal(got["head.cls_out.weight"][a * 3 + 2], src["head.cls_out.weight"][a * 80 + dog])
        assert torch.equal(got["head.cls_out.bias"][a * 3 + 1], fresh["head.cls_out.bias"][a * 3 + 1])  # unmapped
    others = [k for k in got if not k.startswith("head.cls_out") and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(got[k], src[k]) for k in others) and len(report["loaded"]) == len(others)
    assert "rows of 2 of 3 classes copied" in capsys.readouterr().out


def test_without_a_map_the_class_layers_keep_their_initialisation(tmp_path):
    path = checkpoint(tmp_path, tiny("retinanet", 80, 0), COCO)
    model = tiny("retinanet", 3, 1)
    fresh = model.state_dict()["head.cls_out.weight"].clone()
    report = init_from(model, path, SHAPES, None, log=lambda _: None)
    assert report["reinitialised"] == ["head.cls_out.weight", "head.cls_out.bias"]
    assert torch.equal(model.state_dict()["head.cls_out.weight"], fresh)


def test_faster_rcnn_rows_and_background(tmp_path):
    src_model = tiny("faster_rcnn", 80, 0)
    path = checkpoint(tmp_path, src_model, COCO)
    model = tiny("faster_rcnn", 3, 1)
    report = init_from(model, path, SHAPES, {"rectangle": "car"}, log=lambda _: None)
    src, got = src_model.state_dict(), model.state_dict()
    car = COCO.index("car")
    assert set(report["by_class"]) == {f"roi_heads.box_head.{n}.{p}" for n in ("cls", "reg") for p in ("weight", "bias")}
    assert torch.equal(got["roi_heads.box_head.cls.bias"][[1, 3]], src["roi_heads.box_head.cls.bias"][[car, 80]])
    assert torch.equal(got["roi_heads.box_head.reg.weight"][4:8], src["roi_heads.box_head.reg.weight"][4 * car:4 * car + 4])
    assert torch.equal(got["rpn.head.obj.weight"], src["rpn.head.obj.weight"])  # class-agnostic: loaded as is


def test_same_classes_load_everything_and_other_shapes_are_reinitialised(tmp_path):
    src_model = tiny("retinanet", 3, 0)
    path = checkpoint(tmp_path, src_model, SHAPES)
    model = tiny("retinanet", 3, 1)
    report = init_from(model, path, SHAPES, None, log=lambda _: None)
    assert not report["reinitialised"] and not report["by_class"] and not report["ignored"]
    assert all(torch.equal(v, src_model.state_dict()[k]) for k, v in model.state_dict().items())
    # a two-stage checkpoint into RetinaNet: the body and FPN laterals of the same shapes load, the rest not
    other = checkpoint(tmp_path, tiny("faster_rcnn", 3, 2), SHAPES)
    report = init_from(tiny("retinanet", 3, 3), other, SHAPES, None, log=lambda _: None)
    assert any(k.startswith("backbone.body.") for k in report["loaded"])
    assert "head.cls_out.weight" in report["reinitialised"] and "rpn.head.obj.weight" in report["ignored"]


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        init_from(tiny("retinanet", 3, 0), str(tmp_path / "absent.pth"), SHAPES)


def test_voc_fine_tuning_config_pairs_all_twenty_classes_with_coco():
    import os

    from detection.config.loader import load_config

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    cfg = load_config(Config, os.path.join(repo, "configs/torchvision/finetune_voc_retinanet.yaml"))
    pairs = class_pairs(list(datasets.VOC_CLASSES), COCO, cfg.model.init_class_map, "coco")
    assert len(pairs) == 20 and COCO[pairs[datasets.VOC_CLASSES.index("sofa")]] == "couch"
    assert cfg.data.format == "voc" and cfg.data.preprocess == "torchvision"
