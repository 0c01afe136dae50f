"""The COCO path end to end: a COCO batch with an empty and a crowd-only image through Mask R-CNN, and
tiny Faster / Mask R-CNN training runs through the engine with VOC and COCO evaluation."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from datasets import COCODataset, build_transforms, collate_detection
from detection.checkpoint.io import load_checkpoint
from detection import builders, engine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_coco(root):
    """Three 48x64 images: one object, a crowd region only, nothing at all. Category ids 4 and 9."""
    os.makedirs(os.path.join(root, "annotations"))
    os.makedirs(os.path.join(root, "imgs"))
    images = []
    for i in range(3):
        img = np.full((48, 64, 3), 90, np.uint8)
        if i == 0:
            img[8:30, 10:40] = 220
        cv2.imwrite(os.path.join(root, "imgs", f"{i}.jpg"), img)
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "width": 64, "height": 48})
    anns = [
        {"id": 1, "image_id": 100, "category_id": 9, "bbox": [10, 8, 30, 22], "area": 660, "iscrowd": 0,
         "segmentation": [[10, 8, 40, 8, 40, 30, 10, 30]]},
        {"id": 2, "image_id": 101, "category_id": 4, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 1,
         "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25]]},
    ]
    data = {"images": images, "annotations": anns, "categories": [{"id": 9, "name": "b"}, {"id": 4, "name": "a"}]}
    with open(os.path.join(root, "annotations", "instances_mini.json"), "w") as f:
        json.dump(data, f)


def test_coco_batch_with_empty_and_crowd_only_images_trains(tmp_path):
    write_coco(str(tmp_path))
    ds = COCODataset(str(tmp_path), ["mini"], image_dir="imgs", with_masks=True,
                     transforms=build_transforms(train=True, min_size=48, max_size=64, flip_prob=0.0))
    assert ds.cat_ids == [4, 9] and tuple(ds.classes) == ("a", "b")
    images, targets = collate_detection([ds[i] for i in range(3)])
    assert [len(t["boxes"]) for t in targets] == [1, 0, 0]
    assert targets[0]["labels"].tolist() == [1]  # category 9 is the second id in sorted order
    assert [len(t["ignore_boxes"]) for t in targets] == [0, 1, 0]
    assert [tuple(t["masks"].shape) for t in targets] == [(1, 48, 64), (0, 48, 64), (0, 48, 64)]

    cfg = engine.load(os.path.join(REPO, "configs/demo/maskrcnn_shapes_coco_alwa1.yaml"),
                      ["model.fpn.out_channels=16", "model.rpn.feat_channels=16", "model.roi_head.fc_channels=16",
                       "model.mask_head.conv_channels=8", "model.roi_head.assigner.ignore_iof_thr=0.5",
                       "model.rpn.assigner.ignore_iof_thr=0.5"])
    torch.manual_seed(0)
    model = builders.build_model(cfg, 2).train()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()

    # without the object, the crowd region yields no positives anywhere
    model.zero_grad()
    losses = model(images[1:], targets[1:])
    assert losses["loss_rpn_bbox"].item() == 0.0 and losses["loss_bbox"].item() == 0.0
    assert losses["loss_mask"].item() == 0.0


TINY = """
_base_: {base}
model:
  fpn: {{out_channels: 16}}
  rpn: {{feat_channels: 16}}
  roi_head: {{fc_channels: 32, sampler: {{num: 32, pos_fraction: 0.25}}}}
{mask_head}data:
  root: {root}
  shapes: {{num_train: 8, num_val: 2, num_test: 6, image_size: 64, seed: 5}}
  min_size: 64
  max_size: 64
  batch_size: 4
  test_batch_size: 4
  num_workers: 0
train: {{max_iters: 4, lr_steps: [3], warmup_iters: 2, log_interval: 2, checkpoint_interval: 4, progress: false}}
weighting: {{interval: 2}}
"""


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes2") / "shapes"


@pytest.mark.slow
@pytest.mark.parametrize("demo,metric_keys", [
    ("frcnn_shapes_alwa1.yaml", {"mAP"}),
    ("maskrcnn_shapes_coco_alwa1.yaml", {"AP", "AP50", "AP75", "APs", "APm", "APl", "segm_AP", "segm_AP50"}),
])
def test_tiny_training_run_and_evaluation(demo, metric_keys, shapes_root, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    # a mask head section only where the model has one (elsewhere the key does not apply: an error)
    mask_head = "  mask_head: {conv_channels: 8, num_convs: 1}\n" if demo.startswith("maskrcnn") else ""
    cfg_path.write_text(TINY.format(base=os.path.join(REPO, "configs/demo", demo), root=shapes_root, mask_head=mask_head))
    work = str(tmp_path / "work")
    metrics = engine.train(str(cfg_path), work)
    assert metric_keys <= set(metrics) and metrics["num_images"] == 6
    saved = json.load(open(os.path.join(work, "eval.json")))
    assert "summary" not in saved and all(-1.0 <= saved[k] <= 1.0 for k in metric_keys)
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    assert [r["iter"] for r in records] == [2, 4]
    assert set(records[-1]["weights"]) >= {"loss_rpn_cls", "loss_rpn_bbox"}
    # ALWA_1 on the RPN changes only the RPN classification weight, once per window of 2 steps
    assert records[-1]["weights"]["loss_rpn_bbox"] == 1.0 and records[-1]["weights"]["loss_cls"] == 1.0
    ckpt = load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))
    assert ckpt["weighting"]["num_updates"] == 2 and ckpt["weighting"]["count"] == 0
    assert ckpt["weighting"]["lambda_cls"] == records[-1]["weights"]["loss_rpn_cls"] == metrics["weights"]["loss_rpn_cls"]
    if "segm_AP" in metric_keys:
        assert "loss_mask" in records[-1]
    # the checkpoint evaluates to the same numbers through scripts' entry point
    again = engine.evaluate(str(cfg_path), os.path.join(work, "checkpoints", "last.pth"))
    for k in metric_keys:
        assert again[k] == pytest.approx(metrics[k], abs=1e-9)
