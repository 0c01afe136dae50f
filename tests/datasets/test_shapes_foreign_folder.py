"""The shapes generator writes only into an empty or missing folder, or one it wrote itself (its marker file
``shapes_meta.json``): a user's data under the same root is refused, byte for byte untouched."""
import json
import os
import subprocess
import sys

import pytest

from datasets import DataError, make_shapes
from datasets import shapes as shapes_module

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARAMS = dict(num_train=2, num_val=1, num_test=1, image_size=32, seed=0)


def user_voc(root) -> dict:
    """A user's VOC folder: an image named as the generator names its first one, a split file, a json file."""
    files = {os.path.join("JPEGImages", "000001.jpg"): b"\xff\xd8 the user's photo \xff\xd9",
             os.path.join("ImageSets", "Main", "train.txt"): b"000001\n",
             os.path.join("annotations", "instances_train.json"): b'{"images": []}'}
    for rel, data in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    return files


def snapshot(root) -> dict:
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(folder, n), "rb") as f:
                out[os.path.relpath(os.path.join(folder, n), root)] = f.read()
    return out


def test_a_folder_with_the_users_files_is_refused_and_left_byte_identical(tmp_path):
    root = str(tmp_path / "my_voc")
    files = user_voc(root)
    with pytest.raises(DataError) as exc:
        make_shapes(root, **PARAMS)
    message = str(exc.value)
    assert "\n" not in message and root in message and "not written by the shapes generator" in message
    assert snapshot(root) == files  # nothing overwritten, nothing added (no marker, no folders)
    # a single stray file is enough: the generator never mixes its files with anything else
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("mine")
    with pytest.raises(DataError, match="notes"):
        make_shapes(str(other), **PARAMS)
    assert os.listdir(other) == ["readme.txt"]


def test_empty_or_missing_folder_is_generated_into(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_shapes(str(empty), **PARAMS)["generated"] is True
    assert make_shapes(str(tmp_path / "missing" / "deeper"), **PARAMS)["generated"] is True


def test_other_parameters_are_one_data_error_naming_folder_values_and_remedy(tmp_path):
    root = str(tmp_path / "shapes")
    make_shapes(root, **PARAMS)
    before = snapshot(root)
    with pytest.raises(DataError) as exc:
        make_shapes(root, **dict(PARAMS, seed=99, num_train=3), remedy="set data.root to another folder")
    message = str(exc.value)
    assert "\n" not in message and root in message
    assert "num_train 2 (in the folder) vs 3 (asked)" in message and "seed 0 (in the folder) vs 99 (asked)" in message
    assert message.endswith("set data.root to another folder")
    assert snapshot(root) == before


def test_interrupted_generation_is_redone_with_the_same_parameters(tmp_path, monkeypatch):
    """The marker is written first, marked incomplete: a folder the generator was killed in is still its own."""
    root = str(tmp_path / "partial")
    calls = []

    def dies(*args):
        calls.append(args)
        raise KeyboardInterrupt
    real = shapes_module._write_image
    monkeypatch.setattr(shapes_module, "_write_image", dies)
    with pytest.raises(KeyboardInterrupt):
        make_shapes(root, **PARAMS)
    with open(os.path.join(root, "shapes_meta.json")) as f:
        assert json.load(f)["complete"] is False
    monkeypatch.setattr(shapes_module, "_write_image", real)
    with pytest.raises(DataError, match="seed 0 .* vs 5"):  # another parameter set does not take it over
        make_shapes(root, **dict(PARAMS, seed=5))
    assert make_shapes(root, **PARAMS)["generated"] is True
    assert make_shapes(root, **PARAMS)["generated"] is False


def test_make_shapes_script_refuses_a_foreign_folder_in_one_line(tmp_path):
    root = str(tmp_path / "my_voc")
    files = user_voc(root)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_shapes.py"), "--root", root],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and root in lines[0] and "--root" in lines[0]
    assert snapshot(root) == files
