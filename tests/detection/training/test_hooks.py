"""The trainer's hooks (detection.training.hooks) in whole runs: the checkpoint hook keeps the last periodic
checkpoint through a non-finite stop, and writes none while steps are being skipped."""
import os

import pytest

from detection import engine
from detection.checkpoint.io import load_checkpoint

pytestmark = pytest.mark.slow


def test_the_non_finite_stop_keeps_the_last_periodic_checkpoint(tiny_cfg, tmp_path, monkeypatch, poison_from_step):
    """The stop used to overwrite the only good checkpoint with the weights that gave the non-finite loss."""
    poison_from_step(monkeypatch, 4, float("inf"))
    work = str(tmp_path / "w")
    with pytest.raises(FloatingPointError) as exc:
        engine.train(tiny_cfg, work, overrides=["train.max_bad_steps=2", "train.max_iters=20"])
    msg = str(exc.value)
    last = os.path.join(work, "checkpoints", "last.pth")
    # step 4 ran on iteration 3's weights: resuming from last.pth would stop again, so it is not offered
    assert "(iterations 4-5;" in msg and "No checkpoint from before iteration 3 is kept" in msg
    assert f"--work-dir {work} --set train.max_bad_steps=2 train.max_iters=20 optimizer.lr=0.0001" in msg
    assert load_checkpoint(last)["iter"] == 3  # the periodic one (checkpoint_interval 3), not overwritten
    assert load_checkpoint(os.path.join(work, "checkpoints", "nonfinite_iter_0000005.pth"))["iter"] == 5


def test_no_periodic_checkpoint_while_steps_are_being_skipped(tiny_cfg, tmp_path, monkeypatch, poison_from_step):
    """With checkpoint_interval 3 and bad steps 4-6, iteration 6's periodic save would hold the bad weights."""
    poison_from_step(monkeypatch, 4, float("nan"))
    work = str(tmp_path / "w")
    with pytest.raises(FloatingPointError, match=r"the first non-finite step, iteration 4, ran on the weights "
                                                 r"of iteration 3"):
        engine.train(tiny_cfg, work, overrides=["train.max_bad_steps=3", "train.max_iters=20"])
    assert load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))["iter"] == 3
