"""Bad input that used to be silent (the run finished and looked fine): truncated and empty images, a BOM in a
split file, unusable COCO masks, ``iscrowd`` as a string. Each is now a start-up error (or a read error)
naming the file."""
import os

import cv2
import numpy as np
import pytest

from datasets import COCODataset, DataError, VOCDataset
from test_bad_input import coco_data, make_voc, write_coco


def test_truncated_jpeg_is_an_error_naming_the_file_when_read(tmp_path):
    """Cut short, a JPEG still decodes (the rest grey) and libjpeg's warning names no file: an error now."""
    root = make_voc(tmp_path / "voc", {"a": ((40, 40), [("dog", (1, 1, 9, 9), 0)])})
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    path = os.path.join(root, "JPEGImages", "a.jpg")
    with open(path, "wb") as f:
        f.write(buf.tobytes()[: len(buf) // 2])
    assert cv2.imread(path) is not None  # what used to train as a partly grey image
    ds = VOCDataset(root, ["train"])
    with pytest.raises(DataError, match=f"image {path}: truncated JPEG"):
        ds[0]


def test_empty_image_file_fails_the_start_up_check(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": ((40, 40), [("dog", (1, 1, 9, 9), 0)]), "b": ((40, 40), [])})
    open(os.path.join(root, "JPEGImages", "b.jpg"), "wb").close()
    with pytest.raises(DataError, match=r"1 of 2 images .* are empty \(0 bytes\): .*b\.jpg"):
        VOCDataset(root, ["train"])


def test_utf8_bom_in_a_split_file_is_not_part_of_the_first_id(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": ((40, 40), [("dog", (1, 1, 9, 9), 0)]), "b": ((40, 40), [])})
    split = os.path.join(root, "ImageSets", "Main", "train.txt")
    with open(split, "w", encoding="utf-8-sig") as f:  # what Windows editors write
        f.write("a\nb\n")
    ds = VOCDataset(root, ["train"])
    assert [r["image_id"] for r in ds.records] == ["a", "b"]


def _with_segm(segm, image=10, crowd=0):
    data = coco_data()
    for a in data["annotations"]:
        a["segmentation"] = [[0, 0, 4, 0, 4, 4]]
    data["annotations"][0].update(segmentation=segm, image_id=image, iscrowd=crowd)
    return data


@pytest.mark.parametrize("segm,message", [
    ([[1, 1, 5, 1]], r"annotation 1 \(image 10\) has a polygon with 2 point\(s\); a polygon needs at least 3"),
    ([[1, 1, 5, 1, 5]], r"annotation 1 \(image 10\) has a polygon with an odd number of coordinates \(5\)"),
    ([], r"annotation 1 \(image 10\) has an empty polygon list"),
    ({"size": [16, 16], "counts": [0, 256]}, r"annotation 1 \(image 10\) has an RLE of size \[16, 16\] for an image "
                                             r"of \[20, 30\]"),
])
@pytest.mark.parametrize("flag", ["with_masks", "check_masks"])
def test_coco_masks_are_checked_at_start_up_naming_file_and_annotation(tmp_path, segm, message, flag):
    """Used to crash mid-training (too few points, wrong RLE size) or train on an empty mask (odd count, empty
    list); the test set of a Mask R-CNN run (``check_masks``: scored by segm evaluation) is checked too."""
    path = write_coco(tmp_path, _with_segm(segm))
    with pytest.raises(DataError, match=message) as exc:
        COCODataset(str(tmp_path), ["mini"], **{flag: True})
    assert path in str(exc.value)
    COCODataset(str(tmp_path), ["mini"])  # a detection-only run does not read masks


def test_coco_iscrowd_as_a_string_is_an_error_not_a_crowd_region(tmp_path):
    data = coco_data()
    data["annotations"][0]["iscrowd"] = "0"  # truthy: every such object became a crowd region
    path = write_coco(tmp_path, data)
    with pytest.raises(DataError, match=r"annotation 1 has 'iscrowd' '0', expected 0 or 1") as exc:
        COCODataset(str(tmp_path), ["mini"])
    assert path in str(exc.value)
    data["annotations"][0].update(iscrowd=0, id="7")  # a string id prints as one
    data["annotations"][0]["category_id"] = 99
    write_coco(tmp_path, data)
    with pytest.raises(DataError, match=r"annotation '7' has category_id 99"):
        COCODataset(str(tmp_path), ["mini"])
