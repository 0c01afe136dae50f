"""scripts/predict.py and scripts/browse_data.py end to end, and the drawing they share."""
import glob
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from detection.tools.visualize import class_color, draw_detections, draw_ground_truth, side_by_side


def test_boxes_are_drawn_in_their_class_colour():
    img = np.zeros((60, 80, 3), np.uint8)
    out = draw_detections(img, [[10, 20, 50, 40], [5, 5, 15, 15]], [1, 2], [0.9, 0.1], ["a", "b", "c"],
                          score_thr=0.5)
    assert tuple(out[30, 10]) == class_color(1)  # left edge, below the tag
    assert tuple(out[10, 5]) == (0, 0, 0)  # the 0.1 detection is under --score-thr: not drawn
    assert not img.any()  # the input is left alone
    gt = draw_ground_truth(img, [[10, 20, 50, 40], [60, 30, 75, 55]], [0, 1], ["a", "b"], difficult=[False, True],
                           ignore_boxes=[[2, 45, 20, 58]])
    assert tuple(gt[30, 10]) == class_color(0)
    dashed = [tuple(gt[y, 60]) == class_color(1) for y in range(32, 54)]  # difficult: dashed left edge
    assert any(dashed) and not all(dashed)
    wide = side_by_side(img, img, ("left", "right"))
    assert wide.shape == (60 + 22, 80 + 8 + 80, 3)


@pytest.mark.slow
def test_predict_writes_pictures_and_coco_results(finished, script, tmp_path, capsys):
    _, work = finished
    ckpt = os.path.join(work, "checkpoints", "last.pth")
    images = sorted(glob.glob(os.path.join(os.path.dirname(finished[0]), "shapes", "JPEGImages", "*.jpg")))[:3]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in images:
        os.link(p, inputs / os.path.basename(p))
    out = tmp_path / "out"
    script("predict").main(["--ckpt", ckpt, "--input", str(inputs), "--out", str(out), "--score-thr", "0.002",
                            "--no-progress"])
    pictures = sorted(f for f in os.listdir(out) if f.endswith(".jpg"))
    assert pictures == sorted(os.path.basename(p) for p in images)
    assert cv2.imread(str(out / pictures[0])).shape == (448, 448, 3)  # 64 px inputs drawn 7x: legible labels
    results = json.load(open(out / "predictions.json"))
    assert results and all(r["score"] >= 0.002 and len(r["bbox"]) == 4 for r in results)
    gt = COCO()
    gt.dataset = {"images": [{"id": i + 1, "file_name": os.path.basename(p), "height": 64, "width": 64}
                             for i, p in enumerate(images)],
                  "annotations": [], "categories": [{"id": c} for c in (1, 2, 3)]}
    gt.createIndex()
    loaded = gt.loadRes(str(out / "predictions.json"))
    assert len(loaded.getAnnIds()) == len(results)
    # --compare: the two checkpoints side by side, each picture as wide as two inputs and the gap
    both = tmp_path / "both"
    script("predict").main(["--ckpt", ckpt, "--compare", ckpt, "--input", os.path.join(str(inputs), "*.jpg"),
                            "--out", str(both), "--no-progress"])
    assert cv2.imread(str(both / pictures[0])).shape[:2] == (448 + 22, 2 * 448 + 8)
    with pytest.raises(SystemExit, match="holds the input images"):
        script("predict").main(["--ckpt", ckpt, "--input", str(inputs), "--out", str(inputs), "--no-progress"])
    with pytest.raises(SystemExit, match="no image files"):
        script("predict").main(["--ckpt", ckpt, "--input", str(tmp_path / "nothing"), "--out", str(out)])


@pytest.mark.slow
def test_browse_data_draws_the_annotation(finished, script, tmp_path, capsys):
    cfg, _ = finished
    out = tmp_path / "browse"
    written = script("browse_data").main(["--cfg", cfg, "--out", str(out), "-n", "3", "--split", "test"])
    assert len(written) == 3 and os.path.isfile(out / "report.txt")
    assert "boxes" in open(out / "report.txt").read()
    from detection import builders, engine

    dataset = builders.build_dataset(engine.load(cfg), train=False)
    r = dataset.records[0]
    picture = cv2.imread(written[0])[..., ::-1]
    assert picture.shape[:2] == (448, 448)  # drawn 7x
    hits = [tuple(picture[int(7 * (b[1] + b[3]) / 2), int(round(7 * b[0]))]) == class_color(lab)
            for b, lab in zip(r["boxes"], r["labels"])]
    assert hits and sum(hits) >= len(hits) / 2  # an overlapping box may cover an edge, not most of them
    aug = script("browse_data").main(["--cfg", cfg, "--out", str(tmp_path / "aug"), "-n", "2", "--augmented"])
    assert len(aug) == 2 and cv2.imread(aug[0]).shape[:2] == (448, 448)


@pytest.mark.slow
def test_eval_plots_voc_pr_curves(finished, script, tmp_path):
    pytest.importorskip("matplotlib")
    _, work = finished
    script("eval").main(["--ckpt", os.path.join(work, "checkpoints", "last.pth"), "--plots", str(tmp_path),
                         "--set", "data.num_workers=0"])
    picture = cv2.imread(str(tmp_path / "pr_curves.png"))
    assert picture is not None and picture.shape[1] > 600  # three class panels side by side


@pytest.mark.slow
def test_tensorboard_logs_scalars_and_pictures(write_tiny_retinanet, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from detection import engine

    cfg = write_tiny_retinanet(tmp_path)
    work = tmp_path / "run"
    engine.train(cfg, str(work), overrides=["train.tensorboard=true", "train.eval_interval=3", "train.progress=false",
                                            "train.log_interval=2", "train.eval_after=false"])
    events = EventAccumulator(str(work / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"loss", "lr", "raw/loss_cls", "weighted/loss_bbox", "weight/loss_cls", "eval/mAP"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("eval/mAP")] == [3, 6]
    assert "predictions/0" in tags["images"]


def test_tensorboard_missing_is_a_clear_error(monkeypatch):
    import builtins

    from detection.config.loader import ConfigError
    from detection.tools.tensorboard import open_tensorboard

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r'train.tensorboard: true needs the tensorboard package.*\[tensorboard\]'):
        open_tensorboard("unused")
