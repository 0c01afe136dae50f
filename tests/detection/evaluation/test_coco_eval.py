"""COCO evaluation: result conversion, category-id round trip, hand-computed AP, empty results,
and evaluate_coco end to end with a fake model (world size 1 and a simulated 2-rank gather)."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from datasets import COCODataset, build_transforms, load_coco_json, make_shapes
from detection.evaluation import coco_evaluate, detections_to_coco, masks_to_rles


@pytest.fixture(scope="module")
def shapes_test(tmp_path_factory):
    """The shapes COCO test split (64 px, some crowds), without transforms: targets in original pixels."""
    root = str(tmp_path_factory.mktemp("shapes_coco"))
    make_shapes(root, num_train=1, num_val=1, num_test=16, image_size=64, seed=5, crowd_fraction=0.15)
    ds = COCODataset(root, ["test"], image_dir="JPEGImages", with_masks=True)
    targets = [ds[i][1] for i in range(len(ds))]
    return ds, targets


def gt_as_detections(targets, masks=False, label_map=None):
    dets = []
    for t in targets:
        labels = t["labels"] if label_map is None else label_map(t["labels"])
        d = {"boxes": t["boxes"], "scores": torch.ones(len(labels)), "labels": labels}
        if masks:
            d["masks"] = t["masks"].bool()
        dets.append(d)
    return dets


def test_detections_to_coco_by_hand():
    dets = [{"boxes": np.array([[10, 20, 40, 25.5]]), "scores": np.array([0.75]), "labels": np.array([1]),
             "masks": np.pad(np.ones((2, 3), bool), ((1, 2), (4, 1)))[None]},
            {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}]
    res = detections_to_coco(dets, [42, 43], cat_ids=[7, 9])
    assert len(res) == 1
    r = res[0]
    assert r["image_id"] == 42 and r["category_id"] == 9 and r["score"] == 0.75
    assert r["bbox"] == [10, 20, 30, 5.5]  # x1, y1, x2 - x1, y2 - y1
    assert isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == [5, 8]
    assert mask_utils.area(r["segmentation"]) == 6
    assert mask_utils.toBbox(r["segmentation"]).tolist() == [4, 1, 3, 2]
    json.dumps(res)  # results are JSON-serialisable (str counts)
    with pytest.raises(ValueError, match="labels must lie in"):
        detections_to_coco([dict(dets[0], labels=np.array([2]))], [42], cat_ids=[7, 9])


def test_masks_to_rles_thresholds_probabilities():
    probs = torch.tensor([[[0.2, 0.7], [0.51, 0.5]]])[:, None]  # [1, 1, 2, 2] float, torchvision style
    (rle,) = masks_to_rles(probs)
    assert mask_utils.decode(rle).tolist() == [[0, 1], [1, 0]]
    assert masks_to_rles(np.zeros((0, 4, 4), bool)) == []


def write_tiny_gt(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 5, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 50, 20, 20], "area": 400,
                             "iscrowd": 0}]}
    path = os.path.join(tmp_path, "gt.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return load_coco_json(path)


def test_hand_computed_ap_and_summary(tmp_path):
    gt = write_tiny_gt(tmp_path)
    # one exact hit (score .9) and one false positive (.8): recall 0.5 at precision 1, then precision 0.5.
    # COCO interpolates precision at 101 recall points 0, .01, ..., 1: 51 of them (<= .5) get 1, the rest 0,
    # at every IoU threshold -> AP = AP50 = AP75 = 51/101; all gts are small (area 400 < 32^2)
    dets = [{"boxes": np.array([[0, 0, 20, 20], [30, 30, 40, 40]]), "scores": np.array([0.9, 0.8]),
             "labels": np.array([0, 0])}]
    res = detections_to_coco(dets, [1], [5])
    metrics, summary = coco_evaluate(gt, res, return_summary=True)
    ap = 51 / 101
    assert metrics["bbox"].pop("per_class") == {"a": pytest.approx(ap)}  # the one category: its AP is the AP
    assert metrics["bbox"] == pytest.approx({"AP": ap, "AP50": ap, "AP75": ap, "APs": ap, "APm": -1.0, "APl": -1.0})
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in summary["bbox"]
    assert res[0]["bbox"] == [0, 0, 20, 20] and "id" not in res[0]  # loadRes did not touch our dicts
    # an empty result set runs too: AP 0 where ground truth exists, -1 where none (as pycocotools)
    empty = coco_evaluate(gt, [])
    assert empty["bbox"].pop("per_class") == {"a": 0.0}
    assert empty["bbox"] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": -1.0, "APl": -1.0}
    with pytest.raises(ValueError, match="ground-truth annotation 1 has no 'segmentation'"):
        coco_evaluate(gt, [], iou_types=("segm",))


def test_empty_results_with_segm(shapes_test):
    ds, _ = shapes_test
    m = coco_evaluate(ds.coco, [], iou_types=("bbox", "segm"))
    assert m["bbox"]["AP"] == 0.0 and m["segm"]["AP"] == 0.0 and m["segm"]["AP50"] == 0.0


def test_category_id_round_trip_gives_ap_one(shapes_test):
    ds, targets = shapes_test
    assert ds.cat_ids == [1, 3, 5] and sum(len(t["ignore_boxes"]) for t in targets) > 0
    res = detections_to_coco(gt_as_detections(targets, masks=True), ds.image_ids, ds.cat_ids)
    m = coco_evaluate(ds.coco, res, iou_types=("bbox", "segm"))
    assert m["bbox"]["AP"] == pytest.approx(1.0) and m["bbox"]["AP50"] == pytest.approx(1.0)
    assert m["segm"]["AP"] == pytest.approx(1.0)
    # shifted labels, or contiguous ids 0..2 instead of the file's 1, 3, 5, ruin it
    shifted = gt_as_detections(targets, label_map=lambda lab: (lab + 1) % 3)
    assert coco_evaluate(ds.coco, detections_to_coco(shifted, ds.image_ids, ds.cat_ids))["bbox"]["AP"] < 0.3
    contiguous = detections_to_coco(gt_as_detections(targets), ds.image_ids, [0, 1, 2])
    assert coco_evaluate(ds.coco, contiguous)["bbox"]["AP"] < 0.3


def test_dropping_one_class_gives_two_thirds(shapes_test):
    ds, targets = shapes_test
    # AP is the mean over categories: circles (label 0) undetected -> (0 + 1 + 1) / 3
    dets = gt_as_detections(targets)
    dets = [{k: v[d["labels"] != 0] for k, v in d.items()} for d in dets]
    m = coco_evaluate(ds.coco, detections_to_coco(dets, ds.image_ids, ds.cat_ids))["bbox"]
    assert m["AP"] == pytest.approx(2 / 3)
    assert m["per_class"] == {"circle": 0.0, "rectangle": pytest.approx(1.0), "triangle": pytest.approx(1.0)}


def _noisy(targets, seed=0):
    """Ground truth as detections with jittered boxes, random scores and some false positives."""
    g = torch.Generator().manual_seed(seed)
    dets = []
    for t in gt_as_detections(targets, masks=True):
        n = len(t["labels"])
        boxes = t["boxes"] + torch.randn(n, 4, generator=g) * 2.0
        extra = torch.rand(3, 2, generator=g) * 40
        dets.append({"boxes": torch.cat([boxes, torch.cat([extra, extra + 12], 1)]),
                     "scores": torch.rand(n + 3, generator=g),
                     "labels": torch.cat([t["labels"], torch.randint(0, 3, (3,), generator=g)]),
                     "masks": torch.cat([t["masks"], torch.zeros(3, *t["masks"].shape[1:], dtype=torch.bool)])})
    return dets


def test_faster_backend_gives_the_same_numbers(shapes_test):
    pytest.importorskip("faster_coco_eval")
    ds, targets = shapes_test
    res = detections_to_coco(_noisy(targets), ds.image_ids, ds.cat_ids)
    ref = coco_evaluate(ds.coco, res, iou_types=("bbox", "segm"))
    fast = coco_evaluate(ds.coco, res, iou_types=("bbox", "segm"), backend="faster_coco_eval")
    assert 0.1 < ref["bbox"]["AP"] < 0.9 and 0.1 < ref["segm"]["AP"] < 0.9  # a non-trivial case
    for t in ("bbox", "segm"):
        assert fast[t].pop("per_class") == pytest.approx(ref[t].pop("per_class"), abs=1e-12)
        assert fast[t] == pytest.approx(ref[t], abs=1e-12)
    empty = coco_evaluate(ds.coco, [], backend="faster_coco_eval")
    assert empty["bbox"]["AP"] == 0.0
    with pytest.raises(ValueError, match="unknown COCO evaluation backend 'fast'"):
        coco_evaluate(ds.coco, res, backend="fast")


# ------------------------------------------------------------------------------ evaluate_coco
class FakeModel(torch.nn.Module):
    """Returns prepared detections (original pixels) for each image, looked up by target image_id."""

    def __init__(self, by_id, with_masks):
        super().__init__()
        self.by_id, self.with_masks = by_id, with_masks
        self.calls = 0
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        assert not self.training
        self.calls += 1
        out = []
        for t in targets:
            d = dict(self.by_id[t["image_id"]])
            if not self.with_masks:
                d.pop("masks")
            out.append(d)
        return out


def cfg():
    return SimpleNamespace(data=SimpleNamespace(test_batch_size=3, num_workers=0, size_divisor=32),
                           train=SimpleNamespace(amp="off"), eval=SimpleNamespace(coco_backend="pycocotools"))


@pytest.fixture(scope="module")
def eval_setup(shapes_test):
    ds, targets = shapes_test
    by_id = {t["image_id"]: d for t, d in zip(targets, gt_as_detections(targets, masks=True))}
    # the model sees resized images (64 -> 96) but answers in original pixels, as real models do
    test_ds = COCODataset(ds.root, ["test"], image_dir="JPEGImages", transforms=build_transforms(False, 96, 96))
    return test_ds, by_id


def test_evaluate_coco_bbox_and_segm(eval_setup):
    from detection.evaluation.runner import encode_masks, evaluate_coco, run_inference
    from detection.builders import build_test_loader

    ds, by_id = eval_setup
    model = FakeModel(by_id, with_masks=True).train()
    m = evaluate_coco(model, ds, cfg(), torch.device("cpu"), build_test_loader(cfg(), ds))
    assert model.training and model.calls == 6  # 16 images in batches of 3; train mode restored
    assert m["AP"] == pytest.approx(1.0) and m["segm_AP"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    assert m["num_images"] == 16 and m["iou_types"] == ["bbox", "segm"]
    assert set(m) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "segm_AP50", "segm_APl", "summary"}
    # inference keeps RLEs, not full-size masks
    loader, _ = build_test_loader(cfg(), ds)
    dets = run_inference(model, loader, torch.device("cpu"), convert=encode_masks)
    assert all("masks" not in d and len(d["rles"]) == len(d["boxes"]) for d in dets)
    assert all(isinstance(r["counts"], str) for d in dets for r in d["rles"])
    json.dumps({k: v for k, v in m.items()})


def test_evaluate_coco_defaults_to_bbox_without_masks(eval_setup):
    from detection.builders import build_test_loader
    from detection.evaluation.runner import evaluate_coco

    ds, by_id = eval_setup
    m = evaluate_coco(FakeModel(by_id, with_masks=False).eval(), ds, cfg(), torch.device("cpu"), build_test_loader(cfg(), ds))
    assert m["iou_types"] == ["bbox"] and not any(k.startswith("segm_") for k in m)
    assert m["AP"] == pytest.approx(1.0)


def test_evaluate_coco_merges_rank_shards(eval_setup, monkeypatch):
    """Rank 0 of a simulated 2-process run: it infers the even indices, the gather brings the odd ones."""
    from detection.runtime import dist as dist_utils
    from detection.evaluation import runner as ev
    from detection.builders import build_test_loader

    ds, by_id = eval_setup
    model = FakeModel(by_id, with_masks=True).eval()
    loader, idx = build_test_loader(cfg(), ds, 1, 2)
    other = list(zip(idx, ev.run_inference(model, loader, torch.device("cpu"), convert=ev.encode_masks)))
    gathers = []

    def fake_gather(obj):
        gathers.append(obj)
        return [obj, other] if len(gathers) == 1 else [obj, {}]

    monkeypatch.setattr(dist_utils, "is_dist", lambda: True)
    monkeypatch.setattr(dist_utils, "rank", lambda: 0)
    monkeypatch.setattr(dist_utils, "all_gather_objects", fake_gather)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    m = ev.evaluate_coco(model, ds, cfg(), torch.device("cpu"), build_test_loader(cfg(), ds, 0, 2))
    assert [i for i, _ in gathers[0]] == list(range(0, 16, 2))  # this rank's shard
    assert m["num_images"] == 16 and m["AP"] == pytest.approx(1.0) and m["segm_AP"] == pytest.approx(1.0)
