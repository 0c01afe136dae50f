"""A COCO test file that numbers the categories otherwise than the training file: training's own evaluation
used to map labels through the test file's ids (circles scored as rectangles, exit 0). Now a start-up error
naming both files, before the model is built; eval.py applies the same rule to a checkpoint's ids."""
import os

import pytest
import torch

from coco_files import write_coco_set
from datasets import DataError
from detection import builders, engine
from detection.config.loader import config_to_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = """_base_: {base}
data:
  format: coco
  root: {root}
  shapes: null
  train_sets: [train]
  test_sets: [test]
"""


def write_split(root, name, categories):
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 16, "height": 16}],
            "categories": [{"id": i, "name": n} for n, i in categories.items()],
            "annotations": [{"id": 1, "image_id": 1, "category_id": categories["circle"], "bbox": [1, 1, 6, 6]}]}
    return write_coco_set(root, name, data, images=(("1.jpg", (16, 16)),), value=90)


@pytest.fixture
def swapped(tmp_path):
    root = str(tmp_path / "coco")
    train = write_split(root, "train", {"circle": 1, "rectangle": 3})
    test = write_split(root, "test", {"circle": 3, "rectangle": 1})
    cfg_path = tmp_path / "cfg.yaml"
    demo = os.path.join(REPO, "configs", "demo", "retinanet_shapes_alwa2.yaml")
    cfg_path.write_text(CFG.format(base=demo, root=root))
    return str(cfg_path), train, test


def test_training_refuses_a_test_file_with_other_category_ids_before_the_model(swapped, tmp_path, monkeypatch):
    cfg_path, train, test = swapped
    cfg = engine.load(cfg_path, ["data.batch_size=1", "data.num_workers=0"])

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")
    monkeypatch.setattr(builders, "build_model", no_model)
    with pytest.raises(DataError) as exc:
        engine.build_trainer(cfg, str(tmp_path / "work"), torch.device("cpu"))
    assert str(exc.value) == (f"{test} does not number the classes as {train}: 'circle' is id 3 here, id 1 "
                              f"there; 'rectangle' is id 1 here, id 3 there; the files of a run must share "
                              f"categories (same names, same ids)")


def test_eval_refuses_a_test_file_numbering_the_checkpoints_classes_otherwise(swapped, tmp_path):
    """Same names in the same id order, other ids: the checkpoint's category_ids say what the model learnt."""
    cfg_path, train, _ = swapped
    root = os.path.dirname(os.path.dirname(train))
    test = write_split(root, "test", {"circle": 2, "rectangle": 4})
    cfg = engine.load(cfg_path)
    ckpt = str(tmp_path / "fake.pth")
    torch.save({"config": config_to_dict(cfg), "classes": ["circle", "rectangle"], "category_ids": [1, 3],
                "model": {}}, ckpt)
    with pytest.raises(DataError) as exc:
        engine.evaluate(None, ckpt)
    assert str(exc.value) == (f"{test} does not number the classes as checkpoint {ckpt}: 'circle' is id 2 "
                              f"here, id 1 there; 'rectangle' is id 4 here, id 3 there; the files of a run must "
                              f"share categories (same names, same ids)")
