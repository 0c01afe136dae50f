"""Real photographs end to end: the trees tiles and torchvision's ImageNet MobileNetV2 through the demo config
(a short run at a smaller size), the loss falling, and detections mapped back to each tile's own pixels.

Needs the pinned downloads (tests/conftest.py: skipped with the fetch command where they are absent, a failure
under ALWA_REQUIRE_REAL_DATA=1 as in CI)."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

import datasets
from detection import builders, engine, load_model
from detection.tools import inference

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(REPO, "configs", "demo", "frcnn_trees_mnv2.yaml")  # the README's real-data demo
SMALL = ["data.min_size=256", "data.max_size=288"]  # the short run's image size, and its fixed batch's


@pytest.fixture(scope="module")
def short_run(trees_data, imagenet_mobilenet_v2, tmp_path_factory):
    """16 SGD steps of the demo recipe at 256 px on the training tiles, evaluated on the 11 test tiles."""
    work = str(tmp_path_factory.mktemp("trees_run"))
    metrics = engine.train(CFG, work, overrides=[
        f"data.root={trees_data['root']}", f"model.backbone.pretrained={imagenet_mobilenet_v2}",
        *SMALL, "data.batch_size=2", "data.num_workers=0", "train.max_iters=16",
        "train.lr_steps=[14]", "train.warmup_iters=4", "train.log_interval=4", "train.checkpoint_interval=16",
        "train.progress=false", "seed=0"])
    return work, metrics


def test_imagenet_file_reads_as_torchvisions_network(imagenet_mobilenet_v2, trees_data):
    """The demo config's test preprocessing of a real tile is torchvision's ImageNet input (RGB, mean / std on
    0-255 pixels), and our frozen-BN body on the real file computes torchvision's MobileNetV2 features of it."""
    from models.backbone import build_body

    jpegs = os.path.join(trees_data["root"], "JPEGImages")
    tile = datasets.read_image(os.path.join(jpegs, sorted(os.listdir(jpegs))[0]))
    h, w = tile.shape[:2]
    cfg = engine.load(CFG, [f"data.min_size={min(h, w)}", f"data.max_size={max(h, w)}", "data.size_divisor=1"])
    batch, targets = inference.prepare([tile], cfg)  # scale 1: no resampling, only the normalisation
    assert tuple(batch.shape) == (1, 3, h, w)
    rgb = torch.from_numpy(tile.astype(np.float32)).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None] * 255
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    torch.testing.assert_close(batch[0], (rgb - mean) / std, rtol=1e-4, atol=1e-4)

    body = build_body("mobilenet_v2", "frozen_bn", 1, imagenet_mobilenet_v2).eval()
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(imagenet_mobilenet_v2, weights_only=True))
    with torch.no_grad():
        want = ref.eval().features(batch)
        torch.testing.assert_close(body(batch)[-1], want, rtol=1e-4, atol=1e-4)
        # and it is an ImageNet network: the pooled features classify the tile with some confidence
        probs = ref.classifier(want.mean((2, 3))).softmax(-1)
    assert probs.max() > 0.05  # a random network's 1000-way softmax stays near 0.001


def fixed_batch(root):
    """``(images, targets)``: the first 4 training tiles with the test preprocessing (no flip)."""
    cfg = engine.load(CFG, [f"data.root={root}", "data.test_sets=[train]", *SMALL])
    dataset = builders.build_dataset(cfg, train=False)
    return datasets.collate_detection([dataset[i] for i in range(4)], size_divisor=cfg.data.size_divisor)


def batch_loss(model, images, targets) -> float:
    """The summed training losses of ``model`` on one batch."""
    torch.manual_seed(0)  # the same anchors and RoIs sampled for every model
    with torch.no_grad():
        return float(sum(model.train()(images, targets).values()))


@pytest.mark.slow
def test_short_run_on_real_tiles_lowers_the_loss(short_run, trees_data, imagenet_mobilenet_v2):
    """On a fixed batch: the step losses of a 16-step run are too noisy to compare (one image pair to the next,
    and the first steps of a focal-loss head), so the trained and a fresh model are scored on the same tiles."""
    work, metrics = short_run
    root = trees_data["root"]
    torch.manual_seed(0)
    fresh = builders.build_model(engine.load(CFG, [f"model.backbone.pretrained={imagenet_mobilenet_v2}"]), 1)
    trained = load_model(os.path.join(work, "checkpoints", "last.pth"))
    images, targets = fixed_batch(root)
    assert sum(len(t["boxes"]) for t in targets) > 20  # crowns to learn from
    before, after = batch_loss(fresh, images, targets), batch_loss(trained, images, targets)
    print(f"loss on 4 fixed tiles: {before:.3f} before, {after:.3f} after")
    assert after < 0.8 * before, (before, after)
    assert metrics["num_images"] == 11 and 0.0 <= metrics["mAP"] <= 1.0


@pytest.mark.slow
def test_detections_are_in_each_test_tiles_own_pixels(short_run, trees_data):
    """eval.json's detections (detections.pkl) lie inside each test tile's stored size, and the model maps
    boxes back exactly: its boxes through the pipeline are its boxes on the resized tile divided by the scale."""
    work, _ = short_run
    with open(os.path.join(work, "detections.pkl"), "rb") as f:
        saved = pickle.load(f)
    dets = saved["detections"]
    assert len(dets) == 11 and sum(len(d["boxes"]) for d in dets) > 0
    root = trees_data["root"]
    with open(os.path.join(root, "ImageSets", "Main", "test.txt")) as f:
        ids = f.read().split()
    sizes = [datasets.read_image(os.path.join(root, "JPEGImages", f"{i}.jpg")).shape[:2] for i in ids]
    for d, (h, w) in zip(dets, sizes):  # detections.pkl is in test.txt's order
        b = np.asarray(d["boxes"]).reshape(-1, 4)
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    model = load_model(os.path.join(work, "checkpoints", "last.pth"), overrides=["model.test.score_thr=0.0"])
    tile = datasets.read_image(os.path.join(root, "JPEGImages", f"{ids[0]}.jpg"))
    batch, targets = inference.prepare([tile], model.config)
    with torch.no_grad():
        mapped = model(batch, targets)[0]
        resized = model(batch, [{"img_size": targets[0]["img_size"]}])[0]
    assert len(mapped["boxes"]) > 0
    scale = targets[0]["scale_factor"]
    assert not torch.allclose(scale, torch.ones(4))  # 256 px from a ~400 px tile: a real rescale
    h, w = tile.shape[:2]
    want = resized["boxes"] / scale
    want[:, 0::2] = want[:, 0::2].clamp(0, w)
    want[:, 1::2] = want[:, 1::2].clamp(0, h)
    torch.testing.assert_close(mapped["boxes"], want, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(mapped["scores"], resized["scores"])
