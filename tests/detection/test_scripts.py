"""The command lines: user errors end with one clear line on stderr and a non-zero exit code (the scripts' own
``main`` in this process, and whole processes where the start-up itself is under test)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(REPO, "configs", "retinanet_r50_voc_l1_alwa2.yaml")


def run(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def exit_message(main, argv, cwd, monkeypatch) -> str:
    """What ``main(argv)`` exits with (the line Python prints to stderr, exit status 1), run in this process from
    ``cwd``: the script's own ``main`` without a second interpreter start (about 5 s each on 2 cores)."""
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert isinstance(info.value.code, str), info.value.code  # a message, hence exit status 1
    return info.value.code


def test_train_config_typo(tmp_path, script, monkeypatch):
    msg = exit_message(script("train").main, ["--cfg", CFG, "--set", "data.batch_sise=4"], tmp_path, monkeypatch)
    assert msg == "error: unknown key 'data.batch_sise' (from --set); did you mean 'data.batch_size'?"


def test_train_missing_voc_data_names_the_layout(tmp_path, script, monkeypatch):
    msg = exit_message(script("train").main, ["--cfg", CFG], tmp_path, monkeypatch)
    assert "data/VOCdevkit/VOC2012/ImageSets/Main/trainval.txt not found" in msg and "\n" not in msg


def test_eval_missing_checkpoint(tmp_path, script, monkeypatch):
    msg = exit_message(script("eval").main, ["--cfg", CFG, "--ckpt", "nope.pth"], tmp_path, monkeypatch)
    assert msg == "error: checkpoint nope.pth does not exist"


def test_foreign_datasets_package_is_reported(tmp_path):
    fake = tmp_path / "datasets"
    fake.mkdir()
    (fake / "__init__.py").write_text("# stands in for the PyPI package of the same name\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    out = subprocess.run([sys.executable, "-c", "import detection"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "not this project's datasets package" in out.stderr and str(fake) in out.stderr


def test_train_demo_config_on_a_users_folder_refuses_before_writing(tmp_path):
    """A demo config keeps its data.shapes section under --set data.root=MY_VOC: the generator used to overwrite
    the user's images and split files there and train on shapes, exit 0."""
    root = tmp_path / "my_voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    files = {root / "JPEGImages" / "000001.jpg": b"\xff\xd8 a photo \xff\xd9",
             root / "ImageSets" / "Main" / "train.txt": b"000001\n"}
    for path, data in files.items():
        path.write_bytes(data)
    demo = os.path.join(REPO, "configs", "demo", "retinanet_shapes_alwa2.yaml")
    out = run(os.path.join(REPO, "scripts", "train.py"), "--cfg", demo, "--set", f"data.root={root}", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: shapes data folder {root} holds files not written")
    assert "data.root" in lines[0] and "data.shapes: null" in lines[0]
    assert {p: p.read_bytes() for p in files} == files and sorted(os.listdir(root)) == ["ImageSets", "JPEGImages"]
    assert "training retinanet" not in out.stdout  # refused before the model was built
