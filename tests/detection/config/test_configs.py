"""Every shipped config loads, validates and builds its model; the paper settings are what the paper says."""
import glob
import os

import pytest

from detection import builders, engine
from detection.experiments.tables import GENERATED_MARKER

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if "_base_" not in p and not p.endswith("tables.yaml"))
# The ~100 table configs generated from configs/tables.yaml are loaded by
# tests/detection/experiments/test_tables.py, which builds one model per (detector, backbone) only; building each
# here would take minutes.
HAND_WRITTEN = [p for p in CONFIGS if GENERATED_MARKER not in open(p, encoding="utf-8").read()]


def test_table2_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    for loss in ("l1", "smoothl1", "ciou"):
        for suffix in ("", "_alwa1", "_alwa2"):
            assert f"retinanet_r50_voc_{loss}{suffix}.yaml" in names


@pytest.mark.parametrize("path", HAND_WRITTEN, ids=[os.path.relpath(p, REPO) for p in HAND_WRITTEN])
def test_config_builds(path):
    cfg = engine.load(path, ["model.backbone.pretrained=null"])
    n = len(builders.class_names(cfg))
    model = builders.build_model(cfg, n)
    # the classifier's output size, not just the attribute that was passed in
    if cfg.model.type == "retinanet":
        assert model.head.cls_out.out_channels == model.anchor_generator.num_anchors_per_location * n
    else:
        assert model.roi_heads.box_head.cls.out_features == n + 1
    builders.build_weighting(cfg)


def test_paper_settings():
    cfg = engine.load(os.path.join(REPO, "configs", "retinanet_r50_voc_ciou_alwa1.yaml"))
    assert cfg.model.loss.reg_loss == "ciou_mmdet" and cfg.model.backbone.name == "resnet50"
    assert (cfg.train.epochs, cfg.train.lr_steps, cfg.optimizer.lr, cfg.optimizer.base_batch_size) == (12, [8, 11], 0.01, 8)
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 1e-4)
    w = cfg.weighting
    assert (w.type, w.variant, w.interval, w.init_weight, w.stats) == ("alwa", 1, 100, 1.0, "weighted")
    assert cfg.data.train_sets == ["VOC2012/trainval"] and cfg.data.test_sets == ["VOC2007/test"]


def test_missing_pretrained_weights_name_the_path(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cfg = engine.load(os.path.join(REPO, "configs", "retinanet_r50_voc_l1.yaml"))
    with pytest.raises(FileNotFoundError, match="resnet50-0676ba61.pth"):
        builders.build_model(cfg, 20)


def test_two_stage_table_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert "frcnn_r50_voc_alwa1.yaml" in names
    cells = [("frcnn_r50_voc", loss) for loss in ("l1", "smoothl1", "ciou")]
    cells += [("frcnn_r50_coco", loss) for loss in ("l1", "smoothl1", "ciou")]
    cells += [("maskrcnn_r50_coco", "l1"), ("maskrcnn_r50_coco", "ciou"), ("maskrcnn_r101_coco", "smoothl1")]
    for prefix, loss in cells:
        for suffix in ("", "_alwa1", "_alwa2"):
            assert f"{prefix}_{loss}{suffix}.yaml" in names


@pytest.mark.parametrize("name,typ,backbone,reg,fmt", [
    ("frcnn_r50_voc_alwa1", "faster_rcnn", "resnet50", "l1", "voc"),
    ("frcnn_r50_coco_ciou_alwa2", "faster_rcnn", "resnet50", "ciou_mmdet", "coco"),
    ("maskrcnn_r101_coco_smoothl1_alwa1", "mask_rcnn", "resnet101", "smooth_l1", "coco"),
])
def test_two_stage_paper_settings(name, typ, backbone, reg, fmt):
    cfg = engine.load(os.path.join(REPO, "configs", f"{name}.yaml"))
    assert (cfg.model.type, cfg.model.backbone.name, cfg.data.format) == (typ, backbone, fmt)
    assert cfg.model.rpn.reg_loss == "l1" and cfg.model.roi_head.reg_loss == reg  # the RPN keeps L1, as released
    assert (cfg.train.epochs, cfg.train.lr_steps, cfg.optimizer.lr, cfg.optimizer.base_batch_size) == (12, [8, 11], 0.02, 8)
    w = cfg.weighting
    assert (w.type, w.interval, w.init_weight) == ("alwa", 100, 1.0)
    assert (w.cls_keys, w.reg_keys) == (["loss_rpn_cls"], ["loss_rpn_bbox"])
    # mmdetection's Faster R-CNN R50-FPN defaults
    assert cfg.model.fpn.in_levels == [2, 3, 4, 5] and cfg.model.fpn.extra == "maxpool"
    assert (cfg.model.rpn.sampler.num, cfg.model.rpn.sampler.pos_fraction) == (256, 0.5)
    assert (cfg.model.roi_head.sampler.num, cfg.model.roi_head.sampler.pos_fraction) == (512, 0.25)
    assert cfg.model.roi_head.coder.stds == [0.1, 0.1, 0.2, 0.2]
    assert (cfg.model.rpn.train_proposals.pre_nms_top_k, cfg.model.rpn.test_proposals.pre_nms_top_k) == (2000, 1000)
    if fmt == "coco":
        assert len(builders.class_names(cfg)) == 80
