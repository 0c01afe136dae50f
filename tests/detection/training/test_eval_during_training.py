"""train.eval_interval: evaluation records, best.pth, early stopping, and the best-so-far across a resume."""
import json
import os

import pytest
import torch

from detection import engine
from detection.checkpoint.io import load_checkpoint
from detection.config.loader import ConfigError
from detection.experiments.plots import plot_runs, read_metrics

QUIET = ["train.progress=false", "train.log_interval=1"]
pytestmark = pytest.mark.slow  # every test here trains


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, write_tiny_retinanet):
    return write_tiny_retinanet(tmp_path_factory.mktemp("evaltrain"))


def test_best_checkpoint_is_the_best_of_two_evaluations(tiny, tmp_path):
    work = str(tmp_path / "run")
    final = engine.train(tiny, work, overrides=QUIET + ["train.max_iters=4", "train.eval_interval=2",
                                                        "train.checkpoint_interval=2", "train.keep_checkpoints=2"])
    evals = read_metrics(work, evaluations=True)
    assert [r["iter"] for r in evals] == [2, 4]
    assert all(set(r["eval"]) >= {"mAP", "AP/circle"} for r in evals)
    values = [r["eval"]["mAP"] for r in evals]
    best_iter = 4 if values[1] > values[0] else 2  # strictly better replaces the best
    assert evals[-1]["best"] == {"metric": "mAP", "value": max(values), "iter": best_iter}
    best = load_checkpoint(os.path.join(work, "checkpoints", "best.pth"))
    assert best["iter"] == best_iter
    again = engine.evaluate(None, os.path.join(work, "checkpoints", "best.pth"), None, ["data.num_workers=0"])
    assert again["mAP"] == max(values)
    assert final["mAP"] == values[1]  # the final evaluation is the last periodic one, not run twice
    assert final["best"] == evals[-1]["best"]  # eval.json is the final state, and names the best one
    # the checkpoint of iteration 2 was written after that step's evaluation: its best-so-far includes it
    mid = load_checkpoint(os.path.join(work, "checkpoints", "iter_0000002.pth"))
    assert mid["hooks"]["EvalHook"]["best_iter"] == 2
    assert [r["iter"] for r in read_metrics(work)] == [1, 2, 3, 4]  # training records unaffected
    png = plot_runs([work], str(tmp_path / "curves.png"))
    assert os.path.getsize(png) > 1000


def test_early_stopping_stops_and_a_resume_keeps_the_best(tiny, tmp_path, capsys):
    # lr 1e-12 and frozen BN: the model does not change measurably, so no evaluation improves on the first
    overrides = QUIET + ["train.max_iters=12", "train.eval_interval=1", "train.early_stop_patience=2",
                         "optimizer.lr=1e-12", "model.backbone.norm=frozen_bn", "train.eval_after=false"]
    work = str(tmp_path / "run")
    engine.train(tiny, work, overrides=overrides)
    assert "early stop at iteration 3" in capsys.readouterr().out
    last = load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))
    assert last["iter"] == 3
    saved = last["hooks"]["EvalHook"]
    assert isinstance(saved["best"], float) and (saved["best_iter"], saved["since_best"]) == (1, 2)
    cfg = engine.load(tiny, overrides)
    trainer = engine.build_trainer(cfg, work, torch.device("cpu"), resume=True)
    hook = next(h for h in trainer.hooks if type(h).__name__ == "EvalHook")
    assert (hook.best_iter, hook.since_best, trainer.iter) == (1, 2, 3)
    # resuming a run that stopped early stops again at once, saying why
    engine.train(tiny, work, resume=True, overrides=overrides)
    assert "early stop: the run stopped at iteration 3" in capsys.readouterr().out
    assert load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))["iter"] == 3


def test_epoch_unit_and_a_wrong_metric(tiny, tmp_path):
    work = str(tmp_path / "epochs")
    engine.train(tiny, work, overrides=QUIET + ["train.eval_interval=1", "train.eval_unit=epochs",
                                                "train.eval_after=false"])
    assert [r["iter"] for r in read_metrics(work, evaluations=True)] == [3, 6]  # 3 steps per epoch
    with pytest.raises(ConfigError, match=r"train.best_metric 'AP50' is not a metric of this evaluation.*\['mAP'\]"):
        engine.train(tiny, str(tmp_path / "bad"), overrides=QUIET + ["train.eval_interval=2", "train.max_iters=2",
                                                                     "train.best_metric=AP50"])
    assert not os.path.exists(tmp_path / "bad" / "metrics.jsonl")  # refused before any training step
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    assert sum("eval" in r for r in records) == 2
