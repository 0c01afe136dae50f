"""Resume and stop rules: --resume with changed settings or classes (an error, or --allow-config-change), a
failed resume, corrupt or mismatched checkpoints, Ctrl-C / SIGTERM checkpoints, and the checkpoints' file mode.
Every test here trains, or continues the shared tiny run."""
import json
import os
import shutil
import signal
import stat

import pytest
import torch
import yaml

from detection import engine
from detection.checkpoint.io import load_checkpoint
from detection.config.loader import ConfigError
from detection.training.trainer import HookBase

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_cfg(finished):
    """The config of the shared trained run: the resumes below continue copies of it."""
    return finished[0]


# ------------------------------------------------------------------------------------------------ resume
def test_resume_with_a_changed_learning_rate_is_an_error_naming_the_key(trained, tiny_cfg, tmp_path):
    """It used to print the new lr, record it in config.yaml and train with the checkpoint's."""
    work = str(shutil.copytree(trained, tmp_path / "w"))
    with pytest.raises(ConfigError) as exc:
        engine.train(tiny_cfg, work, resume=True, overrides=["optimizer.lr=0.2", "train.max_iters=8"])
    msg = str(exc.value)
    assert "optimizer.lr: 0.001 in the checkpoint, 0.2 now" in msg and "--allow-config-change" in msg
    assert "train.max_iters" not in msg  # the run length may change


def test_allow_config_change_applies_the_new_learning_rate(trained, tiny_cfg, tmp_path):
    work = str(shutil.copytree(trained, tmp_path / "w"))
    engine.train(tiny_cfg, work, resume=True, allow_config_change=True,
                 overrides=["optimizer.lr=0.2", "train.max_iters=8", "train.eval_after=false"])
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    # base 0.2 (scale_lr: 4 images / base 4), lr step at 5 (x 0.1): the trained lr is the new one
    assert records[-1]["iter"] == 8 and records[-1]["lr"] == pytest.approx(0.02)
    state = load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.2)
    assert yaml.safe_load(open(os.path.join(work, "config.yaml")))["optimizer"]["lr"] == 0.2


def test_resume_with_reordered_classes_refuses_with_both_lists(trained, tiny_cfg, tmp_path):
    work = str(shutil.copytree(trained, tmp_path / "w"))
    with pytest.raises(ConfigError, match=r"trained on the classes \['circle', 'rectangle', 'triangle'\], this "
                                          r"config's training data has \['triangle', 'rectangle', 'circle'\]"):
        engine.train(tiny_cfg, work, resume=True, allow_config_change=True,
                     overrides=["data.classes=[triangle,rectangle,circle]"])


def test_a_failed_resume_leaves_the_folders_config_alone(trained, tiny_cfg, tmp_path):
    work = str(shutil.copytree(trained, tmp_path / "w"))
    before = open(os.path.join(work, "config.yaml")).read()
    with pytest.raises(ConfigError):
        engine.train(tiny_cfg, work, resume=True, overrides=["optimizer.lr=0.2"])
    assert open(os.path.join(work, "config.yaml")).read() == before


def test_corrupt_or_mismatched_checkpoints_are_one_error_line(trained, tiny_cfg, tmp_path, capsys, script):
    work = str(shutil.copytree(trained, tmp_path / "w"))
    ckpt = os.path.join(work, "checkpoints", "last.pth")
    other = str(tmp_path / "other.pth")
    state = load_checkpoint(ckpt)
    state["model"] = {k: v for k, v in list(state["model"].items())[:-3]}  # another model's weights
    torch.save(state, other)
    with pytest.raises(SystemExit) as exc:
        script("eval").main(["--ckpt", other])
    assert str(exc.value).startswith(f"error: checkpoint {other} does not fit this model")
    with open(ckpt, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(SystemExit) as exc:
        script("train").main(["--cfg", tiny_cfg, "--work-dir", work, "--resume"])
    assert str(exc.value).startswith(f"error: checkpoint {ckpt} is truncated or corrupt")



class Signal(HookBase):
    """A hook that sends this process ``count`` SIGINTs before step ``at`` + 1."""

    def __init__(self, at, count=1):
        self.at, self.count = at, count

    def before_step(self):
        if self.trainer.iter == self.at:
            for _ in range(self.count):
                os.kill(os.getpid(), signal.SIGINT)


def with_signal(monkeypatch, at, count=1):
    """engine.train's trainers get a Signal hook."""
    real = engine.Trainer

    class WithSignal(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.register(Signal(at, count))

    monkeypatch.setattr(engine, "Trainer", WithSignal)


def test_ctrl_c_writes_a_checkpoint_of_the_current_iteration(tiny_cfg, tmp_path, monkeypatch):
    from detection.runtime.signals import TrainingInterrupted

    work = str(tmp_path / "w")
    with_signal(monkeypatch, 4)
    with pytest.raises(TrainingInterrupted) as exc:
        engine.train(tiny_cfg, work, overrides=["train.max_iters=20"])
    last = os.path.join(work, "checkpoints", "last.pth")
    assert str(exc.value) == f"interrupted by SIGINT at iteration 5: checkpoint written to {last}"
    assert load_checkpoint(last)["iter"] == 5
    monkeypatch.undo()
    engine.train(tiny_cfg, work, resume=True, overrides=["train.max_iters=20", "train.eval_after=false"])
    assert load_checkpoint(last)["iter"] == 20


def test_a_second_ctrl_c_stops_at_once(tiny_cfg, tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a background shell
    with_signal(monkeypatch, 4, count=2)
    with pytest.raises(KeyboardInterrupt):
        engine.train(tiny_cfg, str(tmp_path / "w"), overrides=["train.max_iters=20"])
    assert load_checkpoint(str(tmp_path / "w" / "checkpoints" / "last.pth"))["iter"] == 3  # the periodic one
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_a_checkpoint_older_than_a_new_key_resumes(trained, tiny_cfg, tmp_path):
    """Checkpoints carry the config of their day: a key added since (here train.accumulate, data.preprocess,
    model.backbone.bn_eps) took today's default, which keeps the old behaviour, and is not a change."""
    work = str(shutil.copytree(trained, tmp_path / "w"))
    path = os.path.join(work, "checkpoints", "last.pth")
    state = load_checkpoint(path)
    del state["config"]["train"]["accumulate"], state["config"]["data"]["preprocess"]
    del state["config"]["model"]["backbone"]["bn_eps"]
    torch.save(state, path)
    engine.train(tiny_cfg, work, resume=True, overrides=["train.max_iters=7", "train.eval_after=false",
                                                         "train.eval_interval=7", "train.tensorboard=false"])
    assert load_checkpoint(path)["iter"] == 7  # evaluation settings may change on a resume too


def test_allow_config_change_applies_a_weight_decay_that_was_zero(trained, tiny_cfg, tmp_path):
    work = str(shutil.copytree(trained, tmp_path / "w"))
    state = load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(1e-4)
    engine.train(tiny_cfg, work, resume=True, allow_config_change=True,
                 overrides=["optimizer.weight_decay=0.05", "train.max_iters=7", "train.eval_after=false"])
    groups = load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == pytest.approx(0.05) and groups[1]["weight_decay"] == 0.0  # AdamW: norms


def test_a_different_process_count_is_a_change_when_the_lr_scales_with_it(trained, tiny_cfg):
    from detection.checkpoint.resume import check_resume

    state = load_checkpoint(os.path.join(trained, "checkpoints", "last.pth"))
    cfg = engine.load(os.path.join(trained, "config.yaml"))
    assert state["world_size"] == 1 and check_resume(state, "x", cfg, state["classes"], allow=False) == []
    with pytest.raises(ConfigError, match=r"processes \(optimizer.scale_lr scales the lr with them\): 1 in the "
                                          r"checkpoint, 2 now"):
        check_resume(state, "x", cfg, state["classes"], allow=False, world=2)
    fixed_lr = engine.load(os.path.join(trained, "config.yaml"), ["optimizer.scale_lr=false"])
    state["config"]["optimizer"]["scale_lr"] = False
    assert check_resume(state, "x", fixed_lr, state["classes"], allow=False, world=2) == []


def test_checkpoints_are_readable_like_other_outputs(trained):
    mode = os.stat(os.path.join(trained, "checkpoints", "last.pth")).st_mode
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(mode) == 0o666 & ~umask  # a bare temp file would be 0600
