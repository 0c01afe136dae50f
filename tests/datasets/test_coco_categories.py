"""COCO category ids must mean the same class in every file of a run: evaluation maps the model's labels
through the test file's ids, so a test file that numbers them otherwise scored circles as rectangles."""
import os

import pytest

from datasets import COCODataset, DataError
from test_bad_input import write_coco


def cats_data(categories, image_id=1):
    return {"images": [{"id": image_id, "file_name": f"{image_id}.jpg", "width": 16, "height": 16}],
            "categories": [{"id": i, "name": n} for i, n in categories],
            "annotations": [{"id": image_id, "image_id": image_id, "category_id": categories[0][0],
                             "bbox": [1, 1, 6, 6], "iscrowd": 0}]}


def test_two_categories_of_one_name_in_a_file_are_rejected(tmp_path):
    """Used to train a class twice over: eval.json's per-class AP had 2 entries for 3 classes."""
    path = write_coco(tmp_path, cats_data([(1, "circle"), (3, "rectangle"), (5, "circle")]))
    with pytest.raises(DataError) as exc:
        COCODataset(str(tmp_path), ["mini"])
    assert str(exc.value) == (f"COCO annotation file {path}: categories 1 and 5 are both named 'circle'; class names "
                              f"must be distinct (give their annotations one category_id, or rename one)")


def test_concatenated_sets_numbered_differently_name_both_files_and_the_pairs(tmp_path):
    a = write_coco(tmp_path, cats_data([(1, "circle"), (3, "rectangle")]), name="a")
    b = write_coco(tmp_path, cats_data([(3, "circle"), (1, "rectangle")], image_id=2), name="b")
    with pytest.raises(DataError) as exc:
        COCODataset(str(tmp_path), ["a", "b"])
    assert str(exc.value) == (f"{b} does not number the classes as {a}: 'circle' is id 3 here, id 1 there; "
                              f"'rectangle' is id 1 here, id 3 there; the files of a run must share "
                              f"categories (same names, same ids)")


def test_check_same_categories_names_ids_and_missing_names(tmp_path):
    train_path = write_coco(tmp_path, cats_data([(1, "circle"), (3, "rectangle")]), name="train")
    test_path = write_coco(tmp_path, cats_data([(3, "circle"), (1, "rectangle"), (7, "star")], image_id=2),
                           name="test")
    train, test = COCODataset(str(tmp_path), ["train"]), COCODataset(str(tmp_path), ["test"])
    with pytest.raises(DataError) as exc:
        train.check_same_categories(test)
    assert str(exc.value) == (f"{test_path} does not number the classes as {train_path}: 'circle' is id 3 "
                              f"here, id 1 there; 'rectangle' is id 1 here, id 3 there; 'star' is id 7 here, absent "
                              f"there; the files of a run must share categories (same names, same ids)")
    train.check_same_categories(COCODataset(str(tmp_path), ["train"]))  # the same file: nothing to say
    assert os.path.isfile(train_path)
