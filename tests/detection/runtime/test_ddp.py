"""DistributedDataParallel on CPU (gloo) under torchrun: after a few steps every rank holds the same
weights and the same ALWA λ (windows pooled over ranks), for RetinaNet and for Mask R-CNN."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DRIVER = os.path.join(REPO, "tests", "detection", "runtime", "ddp_driver.py")

COMMON = ["model.backbone.name=resnet18", "model.fpn.out_channels=16", "data.shapes.num_train=16",
          "data.shapes.num_val=2", "data.shapes.num_test=4", "data.shapes.image_size=64", "data.min_size=64",
          "data.max_size=64", "data.batch_size=2", "data.num_workers=0", "train.max_iters=4", "train.lr_steps=[3]",
          "train.warmup_iters=1", "train.log_interval=2", "train.checkpoint_interval=100", "train.progress=false",
          "train.eval_after=false", "weighting.interval=2", "weighting.variant=1"]
CASES = {
    "faster_rcnn": ("configs/demo/frcnn_shapes_alwa1.yaml",
                    ["model.rpn.feat_channels=16", "model.roi_head.fc_channels=16", "model.roi_head.sampler.num=32"]),
    "retinanet": ("configs/demo/retinanet_shapes_alwa2.yaml", ["model.head.feat_channels=16", "model.head.num_convs=1"]),
    "mask_rcnn": ("configs/demo/maskrcnn_shapes_coco_alwa1.yaml",
                  ["model.rpn.feat_channels=16", "model.roi_head.fc_channels=16", "model.mask_head.conv_channels=8"]),
}


NO_TORCHRUN = pytest.mark.skipif(shutil.which("torchrun") is None and not hasattr(torch.distributed, "run"),
                                 reason="torchrun is not available")
pytestmark = pytest.mark.slow  # every test here trains under torchrun


def start_ranks(name, work, root, extra=(), env=None):
    """Start a 2-rank torchrun of the driver; the returned function waits for it and returns both ranks' states."""
    cfg, model_extra = CASES[name]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", DRIVER,
           os.path.join(REPO, cfg), str(work), f"data.root={root}"] + COMMON + model_extra + list(extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish():
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        return [torch.load(work / f"rank{r}.pth", weights_only=False) for r in (0, 1)]
    return finish


def run_ranks(name, work, root, extra=(), env=None):
    return start_ranks(name, work, root, extra, env)()


@NO_TORCHRUN
def test_resumed_two_rank_run_continues_each_rank_exactly(tmp_path, same):
    """Faster R-CNN (random RPN / RoI sampling) with the released ALWA statistics (per process, each rank its
    own λ): 3 steps, then a resume to 6, ends where an uninterrupted 6-step run ends, rank by rank."""
    root = tmp_path / "shapes"
    settings = ["weighting.sync=false", "train.lr_steps=[5]", "train.checkpoint_interval=3"]
    # the uninterrupted run beside the interrupted one, on a copy of the data of its own (the same seed)
    ref = start_ranks("faster_rcnn", tmp_path / "ref", tmp_path / "shapes_ref", settings + ["train.max_iters=6"])
    run_ranks("faster_rcnn", tmp_path / "part", root, settings + ["train.max_iters=3"])
    resumed = run_ranks("faster_rcnn", tmp_path / "part", root, settings + ["train.max_iters=6"], {"DDP_RESUME": "1"})
    ref = ref()
    for a, b in zip(ref, resumed):
        assert a["iter"] == b["iter"] == 6
        assert a["weighting"]["num_updates"] == 3 and same(a["weighting"], b["weighting"])
        assert torch.equal(a["rng"], b["rng"])
        for k, v in a["params"].items():
            assert torch.equal(v, b["params"][k]), k
    # per-process statistics: the ranks saw different images, so each has its own λ (the checkpoint at
    # step 3 is mid-window: each rank's open window had to be restored for the λ of step 4 to match)
    assert ref[0]["weighting"]["lambda_cls"] != ref[1]["weighting"]["lambda_cls"]
    # metrics.jsonl logs every rank's windows (rank 0 writes them): 3 windows each, ending at that rank's λ,
    # in the uninterrupted run and across the resume alike
    from detection.experiments.windows import ranks_logged, read_windows

    for work in (tmp_path / "ref", tmp_path / "part"):
        assert ranks_logged(str(work)) == 2
        for r in (0, 1):
            windows = read_windows(str(work), r)
            assert [w["window"] for w in windows] == [1, 2, 3], (work, r)
            assert windows[-1]["lambda_cls"] == pytest.approx(ref[r]["weighting"]["lambda_cls"])
        assert read_windows(str(work)) == read_windows(str(work), 0)


@NO_TORCHRUN
@pytest.mark.parametrize("name,nan_at", [("mask_rcnn", 0), ("retinanet", 0), ("retinanet", 2)])
def test_two_ranks_end_identical(name, nan_at, tmp_path):
    """With ``nan_at``, rank 1 alone gets a NaN loss at that step: both ranks skip it (no hang)."""
    cfg, extra = CASES[name]
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", DRIVER,
           os.path.join(REPO, cfg), str(work), f"data.root={tmp_path / 'shapes'}"] + COMMON + extra
    env = dict(os.environ, OMP_NUM_THREADS="1", DDP_NAN_AT=str(nan_at))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(work / f"rank{r}.pth", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["iter"] == r1["iter"] == 4
    assert r0["bad_steps"] == r1["bad_steps"] == (1 if nan_at else 0)
    assert r0["weights"] == r1["weights"]
    if not nan_at:  # ALWA_1 updated λcls (two windows of 2 steps, pooled over both ranks)
        assert any(v != 1.0 for v in r0["weights"].values())
    # parameters only: BatchNorm running statistics are per-rank and re-broadcast from rank 0 by DDP at
    # every forward (rank 0 writes the checkpoints)
    assert len(r0["params"]) > 50
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k


@NO_TORCHRUN
def test_two_ranks_validate_during_training_and_accumulate(tmp_path):
    """Two micro-batches per step and an evaluation every 2 steps on 2 ranks: each rank evaluates its shard,
    both take the same best / early-stop decisions (the best checkpoint is a collective save), and the ranks
    end with the same weights."""
    import json

    work = tmp_path / "work"
    ranks = run_ranks("retinanet", work, tmp_path / "shapes",
                      ["train.accumulate=2", "train.eval_interval=2", "weighting.sync=true"])
    assert ranks[0]["iter"] == ranks[1]["iter"] == 4
    for k, v in ranks[0]["params"].items():
        assert torch.equal(v, ranks[1]["params"][k]), k
    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    evals = [r for r in records if "eval" in r]
    assert [r["iter"] for r in evals] == [2, 4] and evals[-1]["eval"]["AP/circle"] >= 0
    assert (work / "checkpoints" / "best.pth").is_file()


@NO_TORCHRUN
def test_two_ranks_that_diverge_leave_diverged_json(tmp_path):
    """A diverged two-rank run under torchrun leaves rank 0's record. (That the other ranks wait for it, so
    torchrun does not stop rank 0 first when a large checkpoint is slow to write, is
    tests/detection/test_engine.py::test_every_rank_waits_for_the_diverged_record.)"""
    import json

    cfg, model_extra = CASES["retinanet"]
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO, "scripts", "train.py"), "--cfg", os.path.join(REPO, cfg), "--work-dir", str(work),
           "--set", f"data.root={tmp_path / 'shapes'}", *COMMON, *model_extra, "train.max_loss=1e-9",
           "train.max_bad_steps=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "consecutive steps with non-finite values" in proc.stdout + proc.stderr
    record = json.load(open(work / "diverged.json"))
    assert record["iter"] == 2 and "loss_cls" in record["keys"]
