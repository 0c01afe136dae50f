"""A user's mistake at the command line ends in one ``error:`` line (exit status 1), never a traceback: bad YAML,
bad overrides, impossible values, a work dir that is a file, a batch size of 0, Ctrl-C while starting or
during the final checkpoint write, ``device: cuda`` without CUDA, an error re-raised by a loader worker; every
script keeps all of several ``--set`` flags; and predict goes on past an image it cannot read."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detection.config.loader import ConfigError, load_config
from detection.config.schema import Config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_error(script, argv) -> str:
    """The message scripts/train.py exits with (SystemExit's code: a string for a user error)."""
    with pytest.raises(SystemExit) as info:
        script("train").main(argv)
    message = info.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert "\n" not in message.strip() or message.count("error:") == 1
    return message


def _write(path, text) -> str:
    path.write_text(text)
    return str(path)


def test_a_key_given_twice_in_one_mapping_is_refused_with_both_lines(tmp_path):
    cfg = _write(tmp_path / "dup.yaml", "optimizer:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml, line 4: key 'lr' is given twice \(lines 2 and 4\)"):
        load_config(Config, cfg)
    # the same key in two different mappings, and a YAML merge that overrides a key, are fine
    ok = _write(tmp_path / "ok.yaml", "optimizer: {lr: 0.1}\ntrain: {max_iters: 3}\nx: &a {lr: 1}\n")
    assert "x" in __import__("detection.config.loader", fromlist=["load_yaml_tree"]).load_yaml_tree(ok)[0]


@pytest.mark.parametrize("text, message", [
    ("optimizer:\n\tlr: 0.1\n", r"invalid YAML in .*tab\.yaml, line 2: found character '\\t'"),
    ("- a\n- b\n", r"tab\.yaml: top level must be a mapping, got list"),
])
def test_yaml_problems_are_config_errors_naming_the_file_and_line(tmp_path, script, text, message):
    cfg = _write(tmp_path / "tab.yaml", text)
    with pytest.raises(ConfigError, match=message):
        load_config(Config, cfg)
    assert "tab.yaml" in _train_error(script, ["--cfg", cfg, "--work-dir", str(tmp_path / "w")])


def test_a_cyclic_base_chain_is_one_error_line(tmp_path, script):
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    cfg = _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    message = _train_error(script, ["--cfg", cfg, "--work-dir", str(tmp_path / "w")])
    assert "cyclic _base_ chain" in message and "a.yaml -> " in message


def test_only_true_and_false_are_booleans(tmp_path):
    """YAML 1.1 read ``off`` as False: ``--set train.amp=off`` failed the check of its own word."""
    cfg = _write(tmp_path / "c.yaml", "train: {amp: bf16, max_iters: 3}\n")
    assert load_config(Config, cfg, ["train.amp=off"]).train.amp == "off"
    assert load_config(Config, cfg, ["train.progress=false"]).train.progress is False
    with pytest.raises(ConfigError, match=r"key 'train.progress' \(from --set\) expects bool, got str 'no'"):
        load_config(Config, cfg, ["train.progress=no"])


@pytest.mark.parametrize("override, message", [
    ("train.max_iters", "malformed override 'train.max_iters': expected KEY=VALUE"),
    ("train.max_iters=[1", "malformed override 'train.max_iters=[1': the value is not valid YAML"),
    ("optimizer.lr=.inf", "key 'optimizer.lr' (from --set) expects a finite number, got inf"),
    ("train.max_loss=.nan", "key 'train.max_loss' (from --set) expects a finite number, got nan"),
    ("data.std=[0,0,0]", "data.std must be 3 numbers > 0 (one per RGB channel), got [0.0, 0.0, 0.0]"),
    ("data.mean=[1,2]", "data.mean must be 3 numbers (one per RGB channel)"),
])
def test_bad_overrides_and_impossible_values_are_one_error_line(tiny_cfg, tmp_path, script, override, message):
    got = _train_error(script, ["--cfg", tiny_cfg, "--work-dir", str(tmp_path / "w"), "--set", override])
    assert message in got
    assert not (tmp_path / "w" / "checkpoints").exists()  # refused before anything was built


def test_a_work_dir_that_is_a_file_is_one_error_line(tiny_cfg, tmp_path, script):
    (tmp_path / "afile").write_text("mine")
    message = _train_error(script, ["--cfg", tiny_cfg, "--work-dir", str(tmp_path / "afile")])
    assert "cannot use" in message and "afile" in message and "a file of that name exists" in message
    assert (tmp_path / "afile").read_text() == "mine"
    message = _train_error(script, ["--cfg", tiny_cfg, "--work-dir", str(tmp_path / "afile" / "run")])
    assert "Not a directory" in message


def test_an_os_error_is_a_user_error_with_its_file_name(monkeypatch):
    from detection import cli

    def full():
        raise OSError(28, "No space left on device", "/data/run/metrics.jsonl")
    with pytest.raises(SystemExit) as info:
        cli.run(full)
    assert info.value.code == "error: [Errno 28] No space left on device: '/data/run/metrics.jsonl'"


@pytest.mark.parametrize("name, argv", [
    ("predict", ["--ckpt", "x.pth", "--input", "in", "--out", "out", "--batch-size", "0"]),
    ("browse_data", ["--cfg", "x.yaml", "--out", "out", "-n", "-1"]),
    ("compare", ["--cfg", "x.yaml", "--schemes", "fixed", "--jobs", "0"]),
])
def test_counts_below_one_are_refused_by_the_argument_parser(script, capsys, name, argv):
    with pytest.raises(SystemExit) as info:
        script(name).main(argv)
    assert info.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_skips_an_unreadable_image_and_lists_it(finished, script, tmp_path, capsys):
    import glob
    import json

    _, work = finished
    images = sorted(glob.glob(os.path.join(os.path.dirname(finished[0]), "shapes", "JPEGImages", "*.jpg")))[:3]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in images:
        os.link(p, inputs / os.path.basename(p))
    (inputs / "000000_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")  # sorts first: image id 1
    out = tmp_path / "out"
    ckpt = os.path.join(work, "checkpoints", "last.pth")
    written = script("predict").main(["--ckpt", ckpt, "--input", str(inputs), "--out", str(out), "--no-progress",
                                      "--score-thr", "0.002", "--batch-size", "2"])
    assert sorted(os.path.basename(p) for p in written) == sorted(os.path.basename(p) for p in images)
    err = capsys.readouterr().err
    assert "000000_broken.jpg" in err and "1 of 4 image(s) could not be read" in err
    listed = (out / "unreadable.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(str(inputs / "000000_broken.jpg"))
    results = json.load(open(out / "predictions.json"))
    assert results and {r["image_id"] for r in results} <= {2, 3, 4}  # ids stay the inputs' positions
    with pytest.raises(SystemExit, match="000000_broken.jpg"):
        script("predict").main(["--ckpt", ckpt, "--input", str(inputs), "--out", str(tmp_path / "o2"),
                                "--no-progress", "--stop-on-error"])
    # a later run without unreadable images leaves no stale list behind
    os.unlink(inputs / "000000_broken.jpg")
    script("predict").main(["--ckpt", ckpt, "--input", str(inputs), "--out", str(out), "--no-progress"])
    assert not (out / "unreadable.txt").exists()


def _start(argv, **kw):
    # a shell's background job ignores SIGINT; the child gets the default back, as a terminal's program has
    return subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def _wait_for(condition, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_ctrl_c_while_the_imports_run_is_one_line(tiny_cfg, tmp_path):
    proc = _start(["scripts/train.py", "--cfg", tiny_cfg, "--work-dir", str(tmp_path / "w")])

    def importing_torch():  # past scripts/_path.py: torch's library is being loaded
        with open(f"/proc/{proc.pid}/maps") as f:
            return "libtorch" in f.read()
    _wait_for(importing_torch, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted"), err


def test_a_second_signal_during_the_final_checkpoint_write_stops_with_its_message(tmp_path, monkeypatch):
    """The first SIGINT (after step 2) asks for a checkpoint; the second one arrives while it is written: the
    stop handler must still be the one answering it (before the fix the trainer had already restored Python's
    own, whose bare KeyboardInterrupt said nothing), and iteration 2's periodic checkpoint stays whole."""
    from detection.training import hooks
    from detection.checkpoint.io import load_checkpoint
    from detection.training.trainer import HookBase
    from losses.weighting import Fixed

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "training"))
    from test_trainer import make_trainer

    real_save = hooks.save_checkpoint

    def save_during_second_signal(state, path):
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: inside the write
        real_save(state, path)

    class StopAfterTwo(HookBase):
        def after_step(self):
            if self.trainer.iter == 2:
                os.kill(os.getpid(), signal.SIGINT)

        def after_train(self):  # runs before the checkpoint hook's final save
            monkeypatch.setattr(hooks, "save_checkpoint", save_during_second_signal)

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a background shell
    trainer = make_trainer(10, Fixed({"loss_cls": 1.0, "loss_bbox": 1.0}), hooks=[StopAfterTwo()])
    trainer.register(hooks.CheckpointHook(str(tmp_path), 1, trainer.state))  # after: its final save comes last
    with pytest.raises(KeyboardInterrupt, match="second SIGINT: stopped at once"):
        trainer.train()
    assert load_checkpoint(str(tmp_path / "last.pth"))["iter"] == 2
    assert os.listdir(tmp_path) == ["last.pth"]  # no temp file left
    assert signal.getsignal(signal.SIGINT) is before  # restored afterwards


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_error_line(tiny_cfg, tmp_path, script):
    with pytest.raises(SystemExit) as exc:
        script("train").main(["--cfg", tiny_cfg, "--work-dir", str(tmp_path / "w"), "--set", "device=cuda"])
    assert str(exc.value) == "error: device 'cuda' was requested but CUDA is not available here; set device: cpu or auto"


@pytest.mark.parametrize("override,message", [
    ("weighting.init_weight=-1", r"weighting \(alwa\): ALWA init_weight must be positive, got -1"),
    ("data.batch_size=64", "fewer than one batch of data.batch_size=64"),
])
def test_settings_rejected_while_building_are_one_error_line(tiny_cfg, tmp_path, override, message, script):
    with pytest.raises(SystemExit) as exc:
        script("train").main(["--cfg", tiny_cfg, "--work-dir", str(tmp_path / "w"), "--set", override])
    assert str(exc.value).startswith("error: ") and __import__("re").search(message, str(exc.value))


def test_an_error_a_loader_worker_reraised_is_one_line():
    from datasets import DataError
    from detection.cli import one_line

    exc = DataError("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
                    '  File "x.py", line 3, in f\ndatasets.report.DataError: image a.jpg: truncated JPEG\n')
    assert one_line(exc) == "image a.jpg: truncated JPEG"
    assert one_line(DataError("plain")) == "plain"
