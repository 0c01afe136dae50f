"""The paper configs are the authors' released configs (their mmdetection 2.7 fork, configs/alwa/** and
configs/_base_/**): every table config, resolved, is pinned against the released values written out here,
so that a later change of a default cannot silently move a paper config."""
import os

import pytest

from detection import engine
from detection.experiments import tables

SPEC = tables.load_spec()
IMAGENET = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])

# configs/_base_/schedules/schedule_1x.py (lr from the paper: 0.01 RetinaNet, 0.02 Faster / Mask R-CNN)
SCHEDULE = {"optimizer.type": "sgd", "optimizer.momentum": 0.9, "optimizer.weight_decay": 0.0001,
            "optimizer.grad_clip": None, "optimizer.base_batch_size": 8, "optimizer.scale_lr": True,
            "train.epochs": 12, "train.max_iters": None, "train.lr_steps": [8, 11], "train.lr_gamma": 0.1,
            "train.warmup_iters": 500, "train.warmup_ratio": 0.001, "train.amp": "off"}
# ResNet with norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, frozen_stages=1, torchvision weights
BACKBONE = {"model.backbone.norm": "bn_frozen_stats", "model.backbone.frozen_stages": 1,
            "model.backbone.pretrained": "torchvision", "model.fpn.out_channels": 256}
# configs/_base_/datasets/voc12.py: VOC2012 trainval x 3 (RepeatDataset), (1000, 600), flip 0.5, VOC07 test
VOC = {"data.format": "voc", "data.train_sets": ["VOC2012/trainval"], "data.test_sets": ["VOC2007/test"],
       "data.train_difficult": False, "data.min_size": 600, "data.max_size": 1000, "data.repeat": 3,
       "data.flip_prob": 0.5, "data.mean": IMAGENET[0], "data.std": IMAGENET[1], "data.size_divisor": 32,
       "data.train_fraction": 1.0, "eval.metric": "11point", "eval.iou_thr": 0.5}
COCO = {"data.format": "coco", "data.train_sets": ["train2017"], "data.test_sets": ["val2017"], "data.min_size": 800,
        "data.max_size": 1333, "data.repeat": 1, "data.flip_prob": 0.5, "data.mean": IMAGENET[0],
        "data.std": IMAGENET[1], "data.size_divisor": 32, "data.train_fraction": 1.0}
# configs/_base_/models/retinanet_r50_fpn.py
RETINANET = {"optimizer.lr": 0.01, "model.fpn.in_levels": [3, 4, 5], "model.fpn.extra": "p6p7",
             "model.fpn.p7_relu": False, "model.anchors.strides": [8, 16, 32, 64, 128],
             "model.anchors.ratios": [0.5, 1.0, 2.0], "model.anchors.octave_base_scale": 4.0,
             "model.anchors.scales_per_octave": 3, "model.anchors.scales": None,
             "model.assigner.pos_iou_thr": 0.5, "model.assigner.neg_iou_thr": 0.4, "model.assigner.min_pos_iou": 0.0,
             "model.assigner.low_quality_match": True, "model.coder.means": [0.0] * 4, "model.coder.stds": [1.0] * 4,
             "model.head.num_convs": 4, "model.head.feat_channels": 256, "model.head.norm": "none",
             "model.loss.focal_alpha": 0.25, "model.loss.focal_gamma": 2.0, "model.loss.reg_loss_weight": 1.0,
             "model.loss.iou_balanced_eta": None, "model.loss.iou_balanced_lambda": None,
             "model.loss.pos_norm": "batch",  # mmdetection: the batch's sums over the batch's positives
             "model.test.pre_nms_top_k": 1000, "model.test.pre_nms_rank": "anchors", "model.test.score_thr": 0.05,
             "model.test.nms_iou": 0.5, "model.test.max_per_img": 100}
RETINANET_ROWS = {"l1": {"model.loss.reg_loss": "l1"},
                  "smoothl1": {"model.loss.reg_loss": "smooth_l1", "model.loss.smooth_l1_beta": 1.0},
                  "ciou": {"model.loss.reg_loss": "ciou_mmdet"}}
# configs/_base_/models/faster_rcnn_r50_fpn_voc.py (and mmdetection's mask_rcnn_r50_fpn.py)
RCNN = {"optimizer.lr": 0.02, "model.fpn.in_levels": [2, 3, 4, 5], "model.fpn.extra": "maxpool",
        "model.rpn.anchors.strides": [4, 8, 16, 32, 64], "model.rpn.anchors.ratios": [0.5, 1.0, 2.0],
        "model.rpn.anchors.scales": [8.0], "model.rpn.assigner.pos_iou_thr": 0.7, "model.rpn.assigner.neg_iou_thr": 0.3,
        "model.rpn.assigner.min_pos_iou": 0.3, "model.rpn.assigner.low_quality_match": True,
        "model.rpn.sampler.num": 256, "model.rpn.sampler.pos_fraction": 0.5, "model.rpn.sampler.neg_pos_ub": -1,
        "model.rpn.coder.stds": [1.0] * 4, "model.rpn.reg_loss": "l1", "model.rpn.reg_loss_weight": 1.0,
        "model.rpn.train_proposals.pre_nms_top_k": 2000, "model.rpn.train_proposals.post_nms_top_k": 1000,
        "model.rpn.train_proposals.nms_iou": 0.7, "model.rpn.test_proposals.pre_nms_top_k": 1000,
        "model.rpn.test_proposals.post_nms_top_k": 1000, "model.rpn.test_proposals.nms_iou": 0.7,
        "model.rpn.iou_balanced_eta": None, "model.roi_head.roi_size": 7, "model.roi_head.sampling_ratio": 0,
        "model.roi_head.strides": [4, 8, 16, 32], "model.roi_head.fc_channels": 1024,
        "model.roi_head.assigner.pos_iou_thr": 0.5, "model.roi_head.assigner.neg_iou_thr": 0.5,
        "model.roi_head.assigner.min_pos_iou": 0.5, "model.roi_head.assigner.low_quality_match": False,
        "model.roi_head.sampler.num": 512, "model.roi_head.sampler.pos_fraction": 0.25,
        "model.roi_head.add_gt_as_proposals": True, "model.roi_head.coder.stds": [0.1, 0.1, 0.2, 0.2],
        "model.roi_head.iou_balanced_eta": None, "model.test.score_thr": 0.05, "model.test.nms_iou": 0.5,
        "model.test.max_per_img": 100}
RCNN_ROWS = {"l1": {"model.roi_head.reg_loss": "l1", "model.roi_head.reg_loss_weight": 1.0},
             "smoothl1": {"model.roi_head.reg_loss": "smooth_l1", "model.roi_head.smooth_l1_beta": 1.0,
                          "model.roi_head.reg_loss_weight": 1.1},
             "ciou": {"model.roi_head.reg_loss": "ciou_mmdet", "model.roi_head.reg_loss_weight": 1.0}}
MASK = {"model.mask_head.roi_size": 14, "model.mask_head.num_convs": 4, "model.mask_head.conv_channels": 256,
        "model.mask_head.mask_size": 28}


def get(cfg, dotted):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def released(cell: tables.Cell) -> dict:
    """The released value of every pinned key for one table cell."""
    name, table = cell.name, SPEC.tables[cell.table]
    det = name.split("_")[0]
    row = next(r for r in ("smoothl1", "ciou", "l1") if f"_{r}" in name)
    want = {**SCHEDULE, **BACKBONE, **(VOC if "_voc_" in name else COCO)}
    want.update({**RETINANET, **RETINANET_ROWS[row]} if det == "retinanet" else {**RCNN, **RCNN_ROWS[row]})
    want["model.backbone.name"] = "resnet101" if "_r101_" in name else "resnet50"
    want["model.type"] = {"retinanet": "retinanet", "frcnn": "faster_rcnn", "maskrcnn": "mask_rcnn"}[det]
    if det == "maskrcnn":
        want.update(MASK)
    want["data.batch_size"] = table.images_per_gpu  # the paper's images per GPU (x table.gpus GPUs)
    keys = ["loss_cls", "loss_bbox"] if det == "retinanet" else ["loss_rpn_cls", "loss_rpn_bbox"]
    if "_alwa" in name:
        want.update({"weighting.type": "alwa", "weighting.variant": 1 if "_alwa1" in name else 2,
                     "weighting.interval": 100, "weighting.init_weight": 1.0, "weighting.stats": "weighted",
                     "weighting.sync": False, "weighting.cls_keys": keys[:1], "weighting.reg_keys": keys[1:]})
        if cell.table == 7:
            want["weighting.interval"] = int(cell.row.split("=")[1])
        if cell.table == 8:
            want["weighting.init_weight"] = float(cell.row)
    else:
        cls, reg = (float(x) for x in cell.row.split(":")) if cell.table in (1, 5) else (1.0, 1.0)
        weights = {} if (cls, reg) == (1.0, 1.0) else {keys[0]: cls, keys[1]: reg}
        want.update({"weighting.type": "fixed", "weighting.weights": weights})
    return want


CELLS = [c for t in SPEC.tables.values() for c in t.cells]


@pytest.mark.parametrize("cell", CELLS, ids=[f"T{c.table}-{c.name}" for c in CELLS])
def test_table_config_has_the_released_settings(cell):
    cfg = engine.load(os.path.join(tables.CONFIG_DIR, f"{cell.name}.yaml"))
    want = released(cell)
    got = {k: get(cfg, k) for k in want}
    assert got == want


def test_the_pinned_table_covers_every_knob_that_moved():
    """The settings the released configs changed against our old defaults are all pinned."""
    pinned = set(released(SPEC.tables[2].cells[1])) | set(released(SPEC.tables[3].cells[4]))
    assert {"data.repeat", "optimizer.grad_clip", "model.backbone.norm", "model.fpn.p7_relu",
            "model.test.pre_nms_rank", "model.loss.reg_loss", "model.roi_head.reg_loss_weight", "model.rpn.reg_loss",
            "weighting.sync"} <= pinned
