"""The COCO box-AP bootstrap: all-ones counts give COCOeval's AP, duplicated images give COCOeval's AP of the
expanded data set, and significance.py on COCO runs (identical: exactly 0; one weakened: excludes 0)."""
import copy
import pickle

import numpy as np
import pytest
import torch

from datasets import COCODataset, make_shapes
from detection.evaluation import coco_evaluate, detections_to_coco
from detection.evaluation.bootstrap import compare_runs
from detection.evaluation.coco_bootstrap import gt_for_bootstrap, match_coco, resampled_ap


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes_coco_boot"))
    make_shapes(root, num_train=1, num_val=1, num_test=24, image_size=64, seed=7, crowd_fraction=0.1)
    ds = COCODataset(root, ["test"], image_dir="JPEGImages")
    targets = [ds[i][1] for i in range(len(ds))]
    g = torch.Generator().manual_seed(0)
    dets = []
    for t in targets:  # jittered ground truth, random scores, a few false positives
        n = len(t["labels"])
        extra = torch.rand(2, 2, generator=g) * 40
        dets.append({"boxes": torch.cat([t["boxes"] + torch.randn(n, 4, generator=g) * 1.5,
                                         torch.cat([extra, extra + 14], 1)]),
                     "scores": torch.rand(n + 2, generator=g),
                     "labels": torch.cat([t["labels"], torch.randint(0, 3, (2,), generator=g)])})
    results = detections_to_coco(dets, ds.image_ids, ds.cat_ids)
    return ds, gt_for_bootstrap(ds.coco, ds.image_ids), results


def _cocoeval_ap(gt, results):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    return coco_evaluate(coco, results)["bbox"]["AP"]


def test_all_ones_is_cocoevals_ap(shapes):
    _, gt, results = shapes
    ap = resampled_ap(match_coco(gt, results), torch.ones(1, len(gt["images"])))
    assert 0.2 < float(ap) < 0.95
    assert float(ap) == pytest.approx(_cocoeval_ap(gt, results), abs=1e-12)


def test_a_resample_equals_the_expanded_data_set(shapes):
    _, gt, results = shapes
    counts = torch.zeros(1, len(gt["images"]))
    counts[0, :8] = torch.tensor([0, 1, 2, 3, 0, 1, 1, 2], dtype=torch.float32)
    # the same resample written out: image i drawn k times becomes k images with copied boxes and detections
    images, anns, res = [], [], []
    by_id = {im["id"]: i for i, im in enumerate(gt["images"])}
    for im in gt["images"]:
        for copy_ in range(int(counts[0, by_id[im["id"]]])):
            new_id = im["id"] * 10 + copy_
            images.append(dict(im, id=new_id))
            anns += [dict(a, id=len(anns) + j + 1, image_id=new_id)
                     for j, a in enumerate(a for a in gt["annotations"] if a["image_id"] == im["id"])]
            res += [dict(r, image_id=new_id) for r in results if r["image_id"] == im["id"]]
    expanded = {"images": images, "annotations": [dict(a, id=i + 1) for i, a in enumerate(anns)],
                "categories": gt["categories"]}
    ap = resampled_ap(match_coco(gt, results), counts)
    assert float(ap) == pytest.approx(_cocoeval_ap(expanded, res), abs=1e-9)


def test_significance_on_coco_runs(shapes, tmp_path):
    ds, gt, results = shapes

    def write(name, res):
        folder = tmp_path / name
        folder.mkdir()
        with open(folder / "detections.pkl", "wb") as f:
            pickle.dump({"format": "coco", "gt": gt, "results": res, "classes": list(ds.classes)}, f)
        return str(folder)

    a = write("a", results)
    same = compare_runs(a, write("b", list(results)), n=200)
    assert same["diff"] == 0.0 and same["low"] == 0.0 and same["high"] == 0.0 and same["metric"] == "coco_box_AP"
    rng = np.random.default_rng(0)
    weaker = [r for r in results if rng.uniform() > 0.4]  # 40% of the detections removed
    out = compare_runs(a, write("c", weaker), n=200)
    assert out["diff"] < 0 and out["high"] < 0 and out["b_better"] == 0.0


def test_coco_runs_write_their_boxes_for_the_bootstrap_and_plots_say_voc_only(tmp_path, capsys):
    """evaluate on a COCO-format run: detections.pkl holds the box results and ground truth (significance.py
    reads it), and --plots explains that the PR curves are VOC's instead of failing."""
    import os

    from detection import builders, engine
    from detection.checkpoint.io import save_checkpoint
    from detection.config.loader import config_to_dict

    root = tmp_path / "shapes"
    cfg = engine.load(os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs/demo/maskrcnn_shapes_coco_alwa1.yaml"),
                      [f"data.root={root}", "data.shapes.num_train=2", "data.shapes.num_val=1", "data.shapes.num_test=3",
                       "data.shapes.image_size=64", "data.min_size=64", "data.max_size=64", "data.num_workers=0",
                       "model.type=faster_rcnn", "model.fpn.out_channels=16", "model.rpn.feat_channels=16",
                       "model.roi_head.fc_channels=16", "model.test.score_thr=0.0"])
    builders.prepare_data(cfg.data)
    model = builders.build_model(cfg, 3)
    ckpt = str(tmp_path / "m.pth")
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg),
                     "classes": ["circle", "rectangle", "triangle"]}, ckpt)
    out = str(tmp_path / "eval" / "eval.json")
    engine.evaluate(None, ckpt, out, plots=str(tmp_path / "plots"))
    assert "precision-recall curves are drawn for VOC" in capsys.readouterr().out
    with open(tmp_path / "eval" / "detections.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["format"] == "coco" and len(data["gt"]["images"]) == 3
    assert compare_runs(str(tmp_path / "eval"), str(tmp_path / "eval"), n=20)["high"] == 0.0
