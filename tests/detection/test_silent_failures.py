"""Runs that used to finish and look fine while doing the wrong thing, found by trying the project as a new
user: repeated --set, two runs in one work dir, the non-finite stop, start-up checks of every split, range
checks, and the command lines' one-line errors (the resume rules: test_resume_rules.py)."""
import json
import os
import shutil
import stat

import pytest
import torch
import yaml

from detection import engine
from detection.checkpoint.io import load_checkpoint
from detection.config.loader import ConfigError



# -------------------------------------------------------------------------------------------- --set
@pytest.mark.parametrize("name,target", [("train", "train"), ("eval", "evaluate"), ("check_data", "check_data"),
                                         ("compare", "run_grid"), ("reproduce", "reproduce")])
def test_repeated_set_accumulates_in_every_script(name, target, monkeypatch, tiny_cfg, script):
    """``--set a=1 --set b=2`` kept only b."""
    seen = {}

    def fake(*args, **kwargs):
        seen["args"] = (args, kwargs)
        return {} if name != "reproduce" else 0

    module = script(name)
    args = {"train": ["--cfg", tiny_cfg], "eval": ["--ckpt", "x.pth"], "check_data": ["--cfg", tiny_cfg],
            "compare": ["--cfg", tiny_cfg], "reproduce": ["--table", "2", "--dry-run"]}[name]
    if name in ("train", "eval"):
        monkeypatch.setattr(module.engine, target, fake)
    elif name == "check_data":
        def load_and_stop(schema, path, overrides):
            seen["overrides"] = overrides
            raise SystemExit(0)
        monkeypatch.setattr(module, "load_config", load_and_stop)
    else:
        monkeypatch.setattr(module.reproduce if name == "reproduce" else module, target, fake)
    try:
        module.main(args + ["--set", "seed=1", "--set", "train.max_iters=2", "data.batch_size=2"])
    except SystemExit:
        pass
    flat = json.dumps(seen, default=str)
    assert "seed=1" in flat and "train.max_iters=2" in flat and "data.batch_size=2" in flat


# ----------------------------------------------------------------------------------------- work dir
def test_a_second_run_in_a_locked_work_dir_refuses_and_a_stale_lock_is_taken_over(tiny_cfg, tmp_path, capsys):
    from detection.training.workdir import WorkDirError, WorkDirLock

    work = str(tmp_path / "w")
    with WorkDirLock(work):
        with pytest.raises(WorkDirError, match=rf"in use by process {os.getpid()} on .* started"):
            engine.train(tiny_cfg, work, overrides=["train.max_iters=1"])
    assert not os.path.exists(os.path.join(work, ".lock"))  # released
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    import socket
    with open(os.path.join(work, ".lock"), "w") as f:
        json.dump({"pid": dead, "host": socket.gethostname(), "started": "earlier"}, f)
    engine.train(tiny_cfg, work, overrides=["train.max_iters=1", "train.eval_after=false"])
    assert f"taking over the lock of process {dead}" in capsys.readouterr().out


def test_an_unwritable_work_dir_is_an_error_at_start_up(tiny_cfg, tmp_path):
    from detection.training.workdir import WorkDirError

    blocker = tmp_path / "file"
    blocker.write_text("a file where the checkpoints folder should be")
    work = tmp_path / "w"
    work.mkdir()
    os.symlink(blocker, work / "checkpoints")
    with pytest.raises(WorkDirError, match=r"cannot write to .*checkpoints"):
        engine.train(tiny_cfg, str(work), overrides=["train.max_iters=1"])
    assert not (work / "metrics.jsonl").exists()


def test_checkpoints_are_readable_like_other_outputs(trained):
    mode = os.stat(os.path.join(trained, "checkpoints", "last.pth")).st_mode
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(mode) == 0o666 & ~umask  # a bare temp file would be 0600


# ------------------------------------------------------------------------------------ start-up checks
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


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=0", "data.batch_size must be a positive integer"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("optimizer.lr=0", "optimizer.lr must be > 0"),
    ("weighting.interval=0", "weighting.interval must be >= 2"),
    ("data.min_size=0", "data.min_size must be a positive image size"),
    ("train.max_iters=-1", "train.max_iters must be >= 1"),
    ("train.checkpoint_interval=-1", "train.checkpoint_interval must be >= 1"),
    ("data.classes=[circle,circle,triangle]", r"data.classes must be free of duplicates \(repeated: \['circle'\]\)"),
    ("device=mps", "device must be auto, cpu, cuda or cuda:N, got 'mps'"),
])
def test_out_of_range_settings_are_config_errors(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        engine.load(tiny_cfg, [override])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_error_line(tiny_cfg, tmp_path, script):
    with pytest.raises(SystemExit) as exc:
        script("train").main(["--cfg", tiny_cfg, "--work-dir", str(tmp_path / "w"), "--set", "device=cuda"])
    assert str(exc.value) == "error: device 'cuda' was requested but CUDA is not available here; set device: cpu or auto"


# ------------------------------------------------------------------------------- non-finite and signals
def poison_from_step(monkeypatch, step, factor):
    """Every model engine.train builds multiplies its losses by ``factor`` from training forward ``step`` on."""
    from detection import builders

    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        return {k: v * factor for k, v in output.items()} if calls["n"] >= step and module.training else output

    real_build = builders.build_model

    def build(cfg, n):
        model = real_build(cfg, n)
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(builders, "build_model", build)


def test_the_non_finite_stop_keeps_the_last_periodic_checkpoint(tiny_cfg, tmp_path, monkeypatch):
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


def test_a_finite_loss_that_explodes_counts_as_diverged(tmp_path):
    """A loss of 1e7 trained on to exit 0; above train.max_loss it is skipped like a non-finite one."""
    from detection.training.trainer import train_step
    from losses.weighting import Fixed

    p = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.SGD([p], lr=0.1)
    model = lambda images, targets: {"loss_cls": p * 1e7, "loss_bbox": p}  # noqa: E731
    out = train_step(model, [(torch.zeros(1, 3, 8, 8), [{}])], Fixed(), opt, max_loss=1e4)
    assert out.skipped == ["loss_cls"] and p.item() == 1.0
    assert train_step(model, [(torch.zeros(1, 3, 8, 8), [{}])], Fixed(), opt).skipped is None


# ------------------------------------------------------------------------- review follow-ups (same issue)
def test_no_periodic_checkpoint_while_steps_are_being_skipped(tiny_cfg, tmp_path, monkeypatch):
    """With checkpoint_interval 3 and bad steps 4-6, iteration 6's periodic save would hold the bad weights."""
    poison_from_step(monkeypatch, 4, float("nan"))
    work = str(tmp_path / "w")
    with pytest.raises(FloatingPointError, match=r"the first non-finite step, iteration 4, ran on the weights "
                                                 r"of iteration 3"):
        engine.train(tiny_cfg, work, overrides=["train.max_bad_steps=3", "train.max_iters=20"])
    assert load_checkpoint(os.path.join(work, "checkpoints", "last.pth"))["iter"] == 3


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


def test_a_lock_whose_pid_was_reused_by_another_process_is_stale(tmp_path, capsys):
    import socket

    from detection.training.workdir import WorkDirLock, _proc_start

    work = tmp_path / "w"
    work.mkdir()
    # pid 1 runs, but not since the recorded start time: a restarted container handing out the pid again
    with open(work / ".lock", "w") as f:
        json.dump({"pid": 1, "host": socket.gethostname(), "started": "then", "proc_start": -5}, f)
    if _proc_start(1) is None:
        pytest.skip("no /proc start times here")
    with WorkDirLock(str(work)):
        pass
    assert "taking over the lock of process 1" in capsys.readouterr().out


@pytest.mark.parametrize("override,message", [
    ("weighting.init_weight=-1", r"weighting \(alwa\): ALWA init_weight must be positive, got -1"),
    ("data.batch_size=64", "fewer than one batch of data.batch_size=64"),
])
def test_settings_rejected_while_building_are_one_error_line(tiny_cfg, tmp_path, override, message, script):
    with pytest.raises(SystemExit) as exc:
        script("train").main(["--cfg", tiny_cfg, "--work-dir", str(tmp_path / "w"), "--set", override])
    assert str(exc.value).startswith("error: ") and __import__("re").search(message, str(exc.value))


def test_several_coco_test_sets_are_refused_at_start_up():
    from detection import builders

    cfg = engine.load("configs/demo/maskrcnn_shapes_coco_alwa1.yaml", ["data.test_sets=[test,val]"])
    with pytest.raises(ConfigError, match=r"data.test_sets \['test', 'val'\]: COCO evaluation takes one set"):
        builders.build_dataset(cfg, train=False)


def test_dwa_keeps_its_window_of_one_step():
    cfg = engine.load("configs/demo/retinanet_shapes_alwa2.yaml", ["weighting={_delete_: true, type: dwa, interval: 1}"])
    assert cfg.weighting.interval == 1


def test_an_error_a_loader_worker_reraised_is_one_line():
    from datasets import DataError
    from detection.cli import one_line

    exc = DataError("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
                    '  File "x.py", line 3, in f\ndatasets.report.DataError: image a.jpg: truncated JPEG\n')
    assert one_line(exc) == "image a.jpg: truncated JPEG"
    assert one_line(DataError("plain")) == "plain"


def test_a_loader_that_fails_after_a_stop_request_is_the_interruption():
    """A scheduler's SIGTERM to the whole job also ends the loader workers: the trainer stops as interrupted."""
    from detection.runtime.signals import StopSignals, TrainingInterrupted
    from detection.training.trainer import Trainer

    class Dying:
        def __iter__(self):
            yield "batch"
            raise RuntimeError("DataLoader worker (pid 7) exited unexpectedly")

    trainer = Trainer.__new__(Trainer)
    trainer.loader, trainer.iter = Dying(), 4
    signals = StopSignals()
    batches = trainer._batches(signals)
    assert next(batches) == "batch"
    signals.requested = "SIGTERM"
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGTERM at iteration 4"):
        next(batches)
    fresh = trainer._batches(StopSignals())
    next(fresh)
    with pytest.raises(RuntimeError, match="exited unexpectedly"):  # without a stop request: the error itself
        next(fresh)


def test_reproduce_waits_for_its_run_through_ctrl_c(monkeypatch):
    """subprocess.call killed the child 0.25 s after Ctrl-C, before it could write its checkpoint."""
    from detection.experiments import reproduce

    class Child:
        waits = 0

        def wait(self):
            Child.waits += 1
            if Child.waits == 1:
                raise KeyboardInterrupt  # the Ctrl-C reaches the parent while the child saves
            return 130

    monkeypatch.setattr(reproduce.subprocess, "Popen", lambda cmd: Child())
    assert reproduce.run_child(["train"]) == 130 and Child.waits == 2


# ------------------------------------------------------------------------- a diverged run leaves a record
def test_a_diverged_run_writes_diverged_json_and_a_new_run_clears_it(tiny_cfg, tmp_path, monkeypatch):
    """A grid could not tell a run that diverged from one that crashed: nothing in the work dir said so."""
    poison_from_step(monkeypatch, 4, float("nan"))
    work = str(tmp_path / "w")
    with pytest.raises(FloatingPointError):
        engine.train(tiny_cfg, work, overrides=["train.max_bad_steps=2", "train.max_iters=20"])
    with open(os.path.join(work, "diverged.json")) as f:
        record = json.load(f)
    assert record["iter"] == 5 and record["keys"] == ["loss_cls", "loss_bbox"]
    assert "2 consecutive steps with non-finite values" in record["message"]
    assert not os.path.exists(os.path.join(work, "eval.json"))
    monkeypatch.undo()  # the same folder trained again (here from its checkpoint) is no longer a diverged run
    engine.train(tiny_cfg, work, resume=True, overrides=["train.max_iters=6", "train.eval_after=false"])
    assert not os.path.exists(os.path.join(work, "diverged.json"))


def test_a_finished_folder_that_diverges_when_trained_again_is_only_diverged(tmp_path):
    """An old eval.json beside a new diverged.json: the grid's table used the old metric, its bootstrap
    dropped the run."""
    from detection.training.workdir import read_diverged, write_diverged

    for name in ("eval.json", "detections.pkl"):
        (tmp_path / name).write_text("{}")
    write_diverged(str(tmp_path), 7, ["loss_cls"], "stopped")
    assert sorted(os.listdir(tmp_path)) == ["diverged.json"]  # no stale results, no temporary file
    assert read_diverged(str(tmp_path)) == {"iter": 7, "keys": ["loss_cls"], "message": "stopped"}


def test_a_cut_short_diverged_record_is_an_error_naming_the_file(tmp_path):
    from detection.training.workdir import WorkDirError, read_diverged

    (tmp_path / "diverged.json").write_text('{"iter": 3, "ke')
    with pytest.raises(WorkDirError, match=r"diverged\.json is not a diverged-run record .*delete it"):
        read_diverged(str(tmp_path))


def test_every_rank_waits_for_the_diverged_record(tiny_cfg, tmp_path, monkeypatch):
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
