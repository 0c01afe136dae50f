"""The work dir (detection.training.workdir): one run at a time under its lock (a stale lock is taken over, also
one whose pid was reused), an unwritable folder refused at start-up, and the record a diverged run leaves."""
import json
import os

import pytest

from detection import engine


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_diverged_run_writes_diverged_json_and_a_new_run_clears_it(tiny_cfg, tmp_path, monkeypatch, poison_from_step):
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
