"""A full disk while writing a checkpoint or metrics.jsonl, the temp files of a killed checkpoint write, and a
truncated last.pth on --resume: one line that says what happened and what survived, nothing left behind, and
the checkpoint a run can continue from."""
import errno
import io
import os
import re
import shlex

import pytest
import torch

from detection.checkpoint import io as ckpt_module
from detection import engine
from detection.training import hooks
from detection.checkpoint.io import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# a MobileNet body: checkpoints of a few MB instead of 130
FAST = ["model.backbone.name=mobilenet_v3_small", "train.max_iters=4", "train.checkpoint_interval=2",
        "train.log_interval=1", "train.eval_after=false"]
FREE = r"\(\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free in "


class FullAfter(io.RawIOBase):
    """A file whose writes fail with ENOSPC once ``limit`` bytes are written, as on a full disk."""

    def __init__(self, f, limit):
        self.f, self.left = f, limit

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(b)
        return self.f.write(b)


def fill_disk_at_save(monkeypatch, n):
    """The ``n``-th checkpoint write (1-based) runs out of space part way: torch.save then raises its own
    "[enforce fail at inline_container.cc] unexpected pos" RuntimeError, the ENOSPC only as its context."""
    real, calls = torch.save, {"n": 0}

    def save(state, f, *a, **k):
        calls["n"] += 1
        return real(state, FullAfter(f, 4096) if calls["n"] == n else f, *a, **k)

    monkeypatch.setattr(ckpt_module.torch, "save", save)


class FullLog:
    """metrics.jsonl on a disk that fills up at the third record: that write fails, and so does closing the
    file (its buffer is written again), as on a real full disk."""

    def __init__(self, f):
        self.f, self.lines, self.failed, self.closed = f, 0, False, False

    def write(self, text):
        self.lines += 1
        if self.lines >= 3:
            self.failed = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(text)

    def close(self):
        self.closed = True
        self.f.close()
        if self.failed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def train_cli(script, cfg, work, *extra):
    with pytest.raises(SystemExit) as exc:
        script("train").main(["--cfg", cfg, "--work-dir", str(work), *extra])
    return str(exc.value)


def test_torch_hides_enospc_in_its_own_error(tmp_path, monkeypatch):
    fill_disk_at_save(monkeypatch, 1)
    with pytest.raises(ckpt_module.WriteError) as exc:
        ckpt_module.save_checkpoint({"model": {"w": torch.zeros(10000)}}, str(tmp_path / "last.pth"))
    assert re.fullmatch(rf"cannot write {tmp_path}/last.pth: No space left on device {FREE}{tmp_path}\); no "
                        rf"earlier checkpoint exists; free some space and resume", str(exc.value)), str(exc.value)
    assert os.listdir(tmp_path) == []  # the partial temp file is removed


@pytest.mark.slow
@pytest.mark.parametrize("max_iters", [4, 5])  # the final save (after training) and a periodic one (in a step)
def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_last_pth(tiny_cfg, tmp_path, monkeypatch, capsys, script,
                                                                    max_iters):
    fill_disk_at_save(monkeypatch, 2)
    work = tmp_path / "w"
    message = train_cli(script, tiny_cfg, work, "--set", *FAST, f"train.max_iters={max_iters}")
    last = work / "checkpoints" / "last.pth"
    assert re.fullmatch(rf"error: cannot write {last}: No space left on device {FREE}{last.parent}\); the "
                        rf"previous checkpoint {last} \(iteration 2\) is intact; free some space and resume",
                        message), message
    assert "Traceback" not in capsys.readouterr().err
    assert load_checkpoint(str(last))["iter"] == 2 and os.listdir(last.parent) == ["last.pth"]


@pytest.mark.slow
def test_a_full_disk_at_metrics_jsonl_is_reported_once(tiny_cfg, tmp_path, monkeypatch, capsys, script):
    """It raised twice: at the record's write, and again when the log was closed (its buffer)."""
    real = hooks.MetricsLogger.before_train

    def before_train(self):
        real(self)
        if self._file is not None:
            self._file = FullLog(self._file)

    monkeypatch.setattr(hooks.MetricsLogger, "before_train", before_train)
    work = tmp_path / "w"
    message = train_cli(script, tiny_cfg, work, "--set", *FAST)
    metrics, last = work / "metrics.jsonl", work / "checkpoints" / "last.pth"
    assert re.fullmatch(rf"error: cannot write {metrics}: No space left on device {FREE}{work}\); the previous "
                        rf"checkpoint {last} \(iteration 2\) is intact; free some space and resume", message), message
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left" not in err  # raised once: only the exit line says it
    assert load_checkpoint(str(last))["iter"] == 2


@pytest.mark.slow
def test_temp_files_of_a_killed_checkpoint_write_are_removed_at_the_next_start(tiny_cfg, tmp_path, capsys):
    from detection.training.workdir import WorkDirError, WorkDirLock

    work = tmp_path / "w"
    folder = work / "checkpoints"
    folder.mkdir(parents=True)
    (folder / ".tmp_k3x_9q0a.pth").write_bytes(b"\0" * 3000)  # save_checkpoint's temp file, cut short
    (folder / ".last_4242.pth").write_bytes(b"\0" * 10)  # the hook's link to last.pth, not yet renamed
    for other in (".tmp_notes.txt", "tmp_k3x_9q0a.pth", "mine.pth"):  # not the project's temp names
        (folder / other).write_text("keep")
    with WorkDirLock(str(work)):  # a live run holds the folder: its temp files are not touched
        with pytest.raises(WorkDirError):
            engine.train(tiny_cfg, str(work), overrides=FAST)
    assert (folder / ".tmp_k3x_9q0a.pth").exists()
    engine.train(tiny_cfg, str(work), overrides=FAST + ["train.max_iters=1"])
    out = capsys.readouterr().out
    assert f"{folder / '.tmp_k3x_9q0a.pth'}: removed the temp file of a checkpoint write that was cut short " \
           f"(2.9 KiB)" in out and f"{folder / '.last_4242.pth'}: removed" in out
    assert sorted(os.listdir(folder)) == [".tmp_notes.txt", "last.pth", "mine.pth", "tmp_k3x_9q0a.pth"]


@pytest.mark.slow
def test_a_truncated_last_pth_offers_the_newest_intact_numbered_checkpoint(tiny_cfg, tmp_path, script, monkeypatch):
    work = tmp_path / "w"
    settings = ["--set", *FAST, "train.keep_checkpoints=2"]
    script("train").main(["--cfg", tiny_cfg, "--work-dir", str(work), *settings])
    folder = work / "checkpoints"
    assert sorted(os.listdir(folder)) == ["iter_0000002.pth", "iter_0000004.pth", "last.pth"]
    with open(folder / "last.pth", "r+b") as f:  # a hard link of iter_0000004.pth: both are cut short
        f.truncate(1000)
    message = train_cli(script, tiny_cfg, work, "--resume", *settings, "train.max_iters=5")
    assert message.startswith(f"error: checkpoint {folder / 'last.pth'} is truncated or corrupt"), message
    advice = f"The newest intact checkpoint is {folder / 'iter_0000002.pth'} (iteration 2): continue from it with: "
    assert advice in message
    command = shlex.split(message.split(advice)[1])
    assert command[:2] == ["python", "scripts/train.py"] and "--resume-from" in command
    monkeypatch.chdir(REPO)
    script("train").main(command[2:])
    assert load_checkpoint(str(folder / "last.pth"))["iter"] == 5


def test_a_lock_that_cannot_be_written_is_one_line_and_leaves_no_empty_lock(tmp_path, monkeypatch):
    """An empty .lock left by a full disk would refuse every later run as held by "an unknown process"."""
    from detection.training import workdir

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(workdir.json, "dump", full)
    with pytest.raises(ckpt_module.WriteError, match=rf"cannot write {tmp_path}/.lock: No space left on device {FREE}"):
        with workdir.WorkDirLock(str(tmp_path)):
            pass
    assert os.listdir(tmp_path) == []
