"""End-to-end: a tiny training run on generated shapes data, its outputs, resume and evaluation, the test set
checked at start-up, and every rank waiting for the record of a diverged run."""
import glob
import json
import os
import shutil

import pytest
import torch
import yaml

from detection import engine
from detection.checkpoint.io import load_checkpoint
from detection.config.loader import ConfigError




@pytest.fixture(scope="module")
def trained(tiny_cfg, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("work"))
    metrics = engine.train(tiny_cfg, work)
    return work, metrics


@pytest.mark.slow
def test_outputs_written(trained, tiny_cfg):
    work, metrics = trained
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["num_images"] == 6
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    assert [r["iter"] for r in records] == [2, 4, 6]
    for r in records:
        assert {"iter", "epoch", "lr", "loss", "loss_cls", "loss_bbox", "weighted", "weights"} <= set(r)
        assert r["loss"] == pytest.approx(sum(r["weighted"].values()), rel=1e-4)
    # ALWA interval 2: a window completes at iterations 2, 4 and 6; λcls stays in (0, 1], λreg stays 1
    assert all(r["weights"]["loss_bbox"] == 1.0 for r in records)
    assert records[0]["weights"]["loss_cls"] == 1.0  # iteration 2 completed the first window with the old λ
    assert all(0 < r["weights"]["loss_cls"] <= 1.0 for r in records)
    saved = yaml.safe_load(open(os.path.join(work, "config.yaml")))
    assert saved["train"]["max_iters"] == 6 and saved["weighting"]["type"] == "alwa"
    assert engine.load(os.path.join(work, "config.yaml")) == engine.load(tiny_cfg)
    ckpt = load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))
    assert ckpt["iter"] == 6 and ckpt["weighting"]["count"] == 0 and "rng" in ckpt
    assert ckpt["weighting"]["num_updates"] == 3
    assert ckpt["weighting"]["lambda_cls"] == metrics["weights"]["loss_cls"]
    assert json.load(open(os.path.join(work, "eval.json")))["mAP"] == metrics["mAP"]
    assert not glob.glob(os.path.join(work, "checkpoints", ".tmp_*"))


@pytest.mark.slow
def test_eval_script_matches_eval_json(trained, tiny_cfg, tmp_path):
    work, metrics = trained
    out = tmp_path / "m.json"
    again = engine.evaluate(tiny_cfg, os.path.join(work, "checkpoints", "last.pth"), str(out))
    assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)
    assert json.load(open(out))["mAP"] == again["mAP"]


@pytest.mark.slow
def test_checkpoints_describe_themselves_and_evaluate_without_a_config(trained, tmp_path, capsys, script):
    """The checkpoint carries the resolved config and the class names: scripts/eval.py --ckpt alone gives the
    run's eval.json exactly, and detection.load_model rebuilds the model."""
    import detection
    from detection.config.loader import config_to_dict

    work, metrics = trained
    ckpt = os.path.join(work, "checkpoints", "last.pth")
    state = load_checkpoint(ckpt)
    assert state["classes"] == ["circle", "rectangle", "triangle"]
    assert state["config"] == config_to_dict(engine.load(os.path.join(work, "config.yaml")))
    out = tmp_path / "m.json"
    script("eval").main(["--ckpt", ckpt, "--out", str(out)])
    saved = json.load(open(os.path.join(work, "eval.json")))
    again = json.load(open(out))
    assert {k: again[k] for k in ("mAP", "AP", "metric", "iou_thr", "num_images")} == \
        {k: saved[k] for k in ("mAP", "AP", "metric", "iou_thr", "num_images")}
    model = detection.load_model(ckpt)
    assert not model.training and model.classes == state["classes"]
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        dets = model(torch.zeros(1, 3, 64, 64))
    assert set(dets[0]) == {"boxes", "scores", "labels"}
    # an old checkpoint without a config: a clear error pointing at --cfg
    del state["config"]
    old = tmp_path / "old.pth"
    torch.save(state, old)
    with pytest.raises(ConfigError, match="holds no config .* --cfg CFG"):
        engine.evaluate(None, str(old))


@pytest.mark.slow
def test_metrics_records_carry_the_models_loss_contract(trained):
    work, _ = trained
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    assert records[0]["contract"] == {"keys": ["loss_cls", "loss_bbox"], "groups": {"cls": ["loss_cls"], "reg": ["loss_bbox"]},
                                      "levels": {}}
    assert all("contract" not in r for r in records[1:])  # once per run
    assert all(set(r["std"]) == {"loss_cls", "loss_bbox"} for r in records)


@pytest.mark.slow
def test_resume_continues_from_checkpoint(trained, tiny_cfg, tmp_path):
    work, _ = trained
    resumed = str(tmp_path / "resumed")
    os.makedirs(os.path.join(resumed, "checkpoints"))
    state = torch.load(os.path.join(work, "checkpoints", "last.pth"), weights_only=False)
    torch.save(state, os.path.join(resumed, "checkpoints", "last.pth"))
    engine.train(tiny_cfg, resumed, resume=True, overrides=["train.max_iters=8", "train.eval_after=false"])
    records = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert [r["iter"] for r in records] == [8]  # iterations 7-8 only
    assert load_checkpoint(os.path.join(resumed, "checkpoints", "last.pth"))["iter"] == 8


def test_config_typo_names_key_file_and_suggestion(tiny_cfg, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {tiny_cfg}\ntrain:\n  max_iter: 5\n")
    with pytest.raises(ConfigError) as err:
        engine.load(str(bad))
    msg = str(err.value)
    assert "train.max_iter" in msg and "bad.yaml" in msg and "train.max_iters" in msg


def test_unknown_weighting_key_in_config_fails_when_the_run_is_built(tiny_cfg, tmp_path):
    # checked against the model's loss contract before any step (it used to be a KeyError at step one)
    with pytest.raises(ConfigError, match="'loss_clss' \\(did you mean 'loss_cls'\\?\\)"):
        engine.train(tiny_cfg, str(tmp_path / "w"), overrides=["weighting.cls_keys=[loss_clss]", "train.max_iters=1"])


def test_train_fraction_subsets_training_images_only(tiny_cfg):
    from detection import builders

    cfg = engine.load(tiny_cfg, ["data.train_fraction=0.5"])
    builders.prepare_data(cfg.data)
    train = builders.build_dataset(cfg, train=True)
    other_seed = builders.build_dataset(engine.load(tiny_cfg, ["data.train_fraction=0.5", "seed=9"]), train=True)
    assert len(train) == 6 and [r["path"] for r in train.records] == [r["path"] for r in other_seed.records]
    assert len(builders.build_dataset(cfg, train=False)) == 6  # the test set is never cut
    with pytest.raises(ConfigError, match="train_fraction"):
        engine.load(tiny_cfg, ["data.train_fraction=1.5"])


def test_cudnn_benchmark_follows_config_and_yields_to_deterministic(tiny_cfg):
    before = torch.backends.cudnn.benchmark
    try:
        engine.setup(engine.load(tiny_cfg, ["train.cudnn_benchmark=true", "device=cpu"]))
        assert torch.backends.cudnn.benchmark is True
        engine.setup(engine.load(tiny_cfg, ["train.cudnn_benchmark=true", "deterministic=true", "device=cpu"]))
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = before


@pytest.mark.slow
def test_runs_keep_their_per_image_detections_for_the_bootstrap(trained, capsys, script):
    """eval.json's run also writes detections.pkl; scripts/significance.py of a run against itself: 0 exactly."""
    work, metrics = trained
    assert os.path.isfile(os.path.join(work, "detections.pkl")) and "per_image" not in metrics
    assert "per_image" not in json.load(open(os.path.join(work, "eval.json")))
    out = script("significance").main([work, work, "-n", "50"])
    assert (out["diff"], out["low"], out["high"], out["images"]) == (0.0, 0.0, 0.0, 6)
    assert "test images: 95% interval [+0.0000, +0.0000] over 50 resamples of 6 test images" in capsys.readouterr().out


@pytest.mark.slow
def test_a_missing_test_image_is_reported_before_training(trained, tiny_cfg, tmp_path):
    """The test set used to be built when training ended: hours later."""
    data = tmp_path / "shapes"
    shutil.copytree(yaml.safe_load(open(tiny_cfg))["data"]["root"], data)
    test_ids = open(data / "ImageSets" / "Main" / "test.txt").read().split()
    os.unlink(data / "JPEGImages" / f"{test_ids[0]}.jpg")
    work = tmp_path / "w"
    with pytest.raises(FileNotFoundError, match=f"{test_ids[0]}.jpg"):
        engine.train(tiny_cfg, str(work), overrides=[f"data.root={data}"])
    assert not (work / "metrics.jsonl").exists()  # not one step trained


@pytest.mark.slow
def test_every_rank_waits_for_the_diverged_record(tiny_cfg, tmp_path, monkeypatch, poison_from_step):
    """Ranks other than 0 left at once on the non-finite stop; under torchrun their exit gets rank 0 killed
    before it has written its checkpoint and diverged.json. Now the last barrier comes after the record."""
    from detection.runtime import dist as dist_utils

    poison_from_step(monkeypatch, 2, float("nan"))
    work = str(tmp_path / "w")
    seen = []
    monkeypatch.setattr(dist_utils, "barrier", lambda: seen.append(os.path.isfile(os.path.join(work, "diverged.json"))))
    with pytest.raises(FloatingPointError):
        engine.train(tiny_cfg, work, overrides=["train.max_bad_steps=1", "train.max_iters=20"])
    assert seen and seen[-1] is True


def test_the_schedule_steps_before_the_hooks_that_read_or_save_it(tiny_cfg, tmp_path):
    """The engine's hook list: LRSchedule before the logger (it writes ``lr``), the evaluation hook and the
    checkpoint hook (it saves the scheduler), so that they see the state after this step."""
    from detection.training.eval_hook import EvalHook
    from detection.training.hooks import CheckpointHook, LRSchedule, MetricsLogger

    cfg = engine.load(tiny_cfg, ["train.eval_interval=2", "train.progress=false"])
    device, rank, world = engine.setup(cfg)
    engine.prepare_work_dir(cfg, str(tmp_path), rank)
    trainer = engine.build_trainer(cfg, str(tmp_path), device, rank, world)
    kinds = [type(h) for h in trainer.hooks]
    assert kinds == [LRSchedule, MetricsLogger, EvalHook, CheckpointHook]
