"""Exact resume: a CPU run killed with SIGKILL after a mid-epoch checkpoint and resumed ends with weights,
optimizer and ALWA state bit-identical to the same run never interrupted (data loader workers included)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detection.checkpoint.io import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# 16 images / batch 2 = 8 iterations per epoch (16 with data.repeat=2); checkpoints every 5 land mid-epoch,
# and mid-window for ALWA (interval 3); one loader worker so that augmentation runs outside the main process
COMMON = ["model.fpn.out_channels=16", "data.shapes.num_train=16", "data.shapes.num_val=2", "data.shapes.num_test=2",
          "data.shapes.image_size=64", "data.min_size=64", "data.max_size=64", "data.batch_size=2",
          "data.num_workers=1", "train.max_iters=20", "train.lr_steps=[15]", "train.warmup_iters=4",
          "train.log_interval=5", "train.checkpoint_interval=5", "train.keep_checkpoints=3", "train.progress=false",
          "train.eval_after=false", "weighting.interval=3"]
TWO_STAGE = ["model.rpn.feat_channels=16", "model.roi_head.fc_channels=32", "model.roi_head.sampler.num=32"]
# the two-stage detectors draw their anchor and RoI samples from the global torch RNG: a resume that
# restores it but lets the data loader draw from it at a different moment ends with different weights
DETECTORS = {
    "retinanet": ("configs/demo/retinanet_shapes_alwa2.yaml",
                  ["model.head.feat_channels=16", "model.head.num_convs=1", "data.repeat=2"], 16),
    # two micro-batches per optimizer step (8 steps per epoch) and validation every 10 steps: the data position
    # counts micro-batches, and the best-so-far (the evaluation hook's state) comes back with the checkpoint
    "retinanet_accumulate_eval": ("configs/demo/retinanet_shapes_alwa2.yaml",
                                  ["model.head.feat_channels=16", "model.head.num_convs=1", "data.repeat=2",
                                   "train.accumulate=2", "train.eval_interval=10"], 8),
    # Mask R-CNN stands for both two-stage detectors: Faster R-CNN's RPN and RoI sampling plus the mask head
    # (a Faster R-CNN case cost 20 s of the suite and covered nothing more)
    "mask_rcnn": ("configs/demo/maskrcnn_shapes_coco_alwa1.yaml", TWO_STAGE + ["model.mask_head.conv_channels=16"], 8),
}


def command(detector, work, root, resume=False):
    cfg, extra, _ = DETECTORS[detector]
    cmd = [sys.executable, os.path.join(REPO, "scripts/train.py"), "--cfg", os.path.join(REPO, cfg), "--work-dir", str(work)]
    return cmd + (["--resume"] if resume else []) + ["--set", f"data.root={root}"] + COMMON + extra


ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
pytestmark = pytest.mark.slow  # three training processes per test


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_sigkill_mid_epoch_then_resume_is_bit_identical(detector, tmp_path, same):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # the uninterrupted run beside the one to kill (one thread each on two cores); each generates the same
    # shapes data (deterministic from its seed) into a folder of its own
    reference = subprocess.Popen(command(detector, ref, tmp_path / "shapes_ref"), env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = tmp_path / "shapes"
    proc = subprocess.Popen(command(detector, killed, root), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "iter_0000005.pth"
    last = killed / "checkpoints" / "last.pth"  # re-pointed right after the numbered file is written
    deadline = time.time() + 240
    while not (first.exists() and last.exists()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(str(killed / "checkpoints" / "last.pth"))
    per_epoch = DETECTORS[detector][2]
    assert 5 <= state["iter"] < 20 and state["iter"] % per_epoch != 0  # a mid-epoch checkpoint
    subprocess.run(command(detector, killed, root, resume=True), env=ENV, check=True, capture_output=True, timeout=300)
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-2000:]

    a = load_checkpoint(str(ref / "checkpoints" / "last.pth"))
    b = load_checkpoint(str(killed / "checkpoints" / "last.pth"))
    assert a["iter"] == b["iter"] == 20
    assert a["model"].keys() == b["model"].keys()
    unequal = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    assert not unequal, f"{len(unequal)} of {len(a['model'])} model tensors differ, e.g. {unequal[:3]}"
    assert same(a["weighting"], b["weighting"]) and a["weighting"]["num_updates"] == 6  # 20 steps / C = 3, rounded down
    assert same(a["optimizer"], b["optimizer"]) and same(a["scheduler"], b["scheduler"])
    assert same(a.get("hooks"), b.get("hooks"))
    assert len(a["optimizer"]["state"]) > 0
    # only the newest three numbered checkpoints are kept, and last.pth is the newest
    kept = sorted(p.name for p in (ref / "checkpoints").glob("iter_*.pth"))
    assert kept == ["iter_0000010.pth", "iter_0000015.pth", "iter_0000020.pth"]
