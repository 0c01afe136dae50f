"""COCODataset on a hand-written COCO JSON: label mapping, crowds, masks (polygon / RLE), policies, errors."""
import copy
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from coco_files import write_coco_set
from datasets import COCODataset, build_transforms, collate_detection


def uncompressed_rle(mask):
    """Column-major runs starting with zeros (what COCO stores for crowds)."""
    flat = mask.T.reshape(-1)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return {"counts": runs, "size": list(mask.shape)}


def crowd_mask():
    m = np.zeros((20, 30), np.uint8)
    m[10:16, 20:28] = 1  # rows 10..15, cols 20..27 -> bbox [20, 10, 8, 6], 48 pixels
    return m


def rle_mask():
    m = np.zeros((20, 30), np.uint8)
    m[1:3, 25:29] = 1  # rows 1..2, cols 25..28 -> bbox [25, 1, 4, 2], 8 pixels
    return m


def coco_json():
    compressed = mask_utils.encode(np.asfortranarray(rle_mask()))
    compressed["counts"] = compressed["counts"].decode("ascii")
    return {
        "images": [{"id": 10, "file_name": "a.jpg", "width": 30, "height": 20},
                   {"id": 11, "file_name": "b.jpg", "width": 16, "height": 16}],  # b: no annotations
        # ids 7 and 2: sorted by id -> ant (2) is label 0, zebra (7) label 1
        "categories": [{"id": 7, "name": "zebra"}, {"id": 2, "name": "ant"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 6], "area": 60, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9]]},  # rectangle polygon: 10 x 6 = 60 pixels
            {"id": 2, "image_id": 10, "category_id": 2, "bbox": [20, 10, 8, 6], "area": 48, "iscrowd": 1,
             "segmentation": uncompressed_rle(crowd_mask())},
            {"id": 3, "image_id": 10, "category_id": 2, "bbox": [25, 1, 4, 2], "area": 8, "iscrowd": 0,
             "segmentation": compressed},
            {"id": 4, "image_id": 10, "category_id": 2, "bbox": [5, 5, 0.5, 4], "area": 2, "iscrowd": 0,
             "segmentation": [[5, 5, 5.5, 5, 5.5, 9, 5, 9]]},  # w < 1: skipped and counted
        ],
    }


write_set = write_coco_set


@pytest.fixture
def coco_root(tmp_path):
    write_set(tmp_path, "mini", coco_json())
    return str(tmp_path)


def load(root, **kw):
    return COCODataset(root, ["mini"], **kw)


def test_labels_boxes_crowds_and_empty_image(coco_root):
    ds = load(coco_root, with_masks=True)
    assert ds.classes == ("ant", "zebra") and ds.cat_ids == [2, 7] and ds.num_classes == 2
    assert ds.image_ids == [10, 11] and ds.aspect_ratios() == [1.5, 1.0]
    # annotation 4 (w < 1) dropped; image 11 has no objects (see tests/datasets/test_bad_input.py)
    assert ds.report == {"clipped_boxes": 0, "degenerate_boxes": 1, "outside_boxes": 0, "empty_images": 1}
    image, t = ds[0]
    assert image.shape == (3, 20, 30) and t["image_id"] == 10 and t["orig_size"] == (20, 30)
    # [x, y, w, h] -> (x, y, x + w, y + h); the crowd (id 2) and the tiny box (id 4) are not ground truth
    assert t["boxes"].tolist() == [[2, 3, 12, 9], [25, 1, 29, 3]]
    assert t["labels"].tolist() == [1, 0] and t["difficult"].tolist() == [False, False]
    assert t["ignore_boxes"].tolist() == [[20, 10, 28, 16]]
    _, t = ds[1]  # the image without annotations is kept
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["ignore_boxes"].shape == (0, 4)
    assert tuple(t["masks"].shape) == (0, 16, 16)


def test_masks_from_polygon_and_compressed_rle(coco_root):
    _, t = load(coco_root, with_masks=True)[0]
    masks = t["masks"].numpy()
    assert masks.shape == (2, 20, 30) and masks.dtype == np.uint8
    expected = np.zeros((20, 30), np.uint8)
    expected[3:9, 2:12] = 1  # polygon (2,3)-(12,9) covers columns 2..11 and rows 3..8
    assert masks[0].sum() == 60 and np.array_equal(masks[0], expected)
    assert np.array_equal(masks[1], rle_mask())  # compressed RLE, box order kept


def test_masks_follow_transforms_and_collate(coco_root):
    # scale 2 and a flip: the polygon box (2, 3, 12, 9) -> (4, 6, 24, 18) -> x' = 60 - x
    ds = load(coco_root, with_masks=True, transforms=build_transforms(True, 40, 60, flip_prob=1.0))
    _, t = ds[0]
    assert t["flipped"] and t["img_size"] == (40, 60)
    assert t["boxes"][0].tolist() == [36, 6, 56, 18]
    ys, xs = np.nonzero(t["masks"][0].numpy())
    assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [36, 6, 56, 18]
    assert t["ignore_boxes"].tolist() == [[4, 20, 20, 32]]  # (40, 20, 56, 32) flipped
    images, targets = collate_detection([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64)
    assert targets[0]["masks"].shape == (2, 40, 60) and targets[1]["masks"].shape == (0, 40, 40)


def test_uncompressed_crowd_rle_rasterises(coco_root):
    from datasets import ann_to_mask

    ds = load(coco_root)
    seg = ds.coco.anns[2]["segmentation"]
    assert np.array_equal(ann_to_mask(seg, 20, 30), crowd_mask())


def test_get_annotation_marks_crowds_difficult(coco_root):
    a = load(coco_root).get_annotation(0)
    assert a["boxes"].tolist() == [[2, 3, 12, 9], [25, 1, 29, 3], [20, 10, 28, 16]]
    assert a["labels"].tolist() == [1, 0, 0] and a["difficult"].tolist() == [False, False, True]


def test_classes_must_match(coco_root):
    load(coco_root, classes=["ant", "zebra"])
    with pytest.raises(ValueError, match="do not match"):
        COCODataset(coco_root, ["mini"], classes=["zebra", "ant"])


@pytest.mark.parametrize("where,key", [("top", "categories"), ("top", "images"), ("ann", "bbox"),
                                       ("ann", "category_id"), ("img", "height")])
def test_missing_key_names_file_and_key(tmp_path, where, key):
    data = coco_json()
    if where == "top":
        del data[key]
    elif where == "ann":
        del data["annotations"][2][key]
    else:
        del data["images"][1][key]
    path = write_set(tmp_path, "bad", data)
    with pytest.raises(ValueError) as exc:
        COCODataset(str(tmp_path), ["bad"])
    assert path in str(exc.value) and f"'{key}'" in str(exc.value)


def test_missing_segmentation_only_matters_with_masks(tmp_path):
    data = coco_json()
    del data["annotations"][0]["segmentation"]
    write_set(tmp_path, "s", data)
    with pytest.raises(ValueError, match="annotation 1 lacks key 'segmentation'"):
        COCODataset(str(tmp_path), ["s"], with_masks=True)
    assert len(COCODataset(str(tmp_path), ["s"])) == 2


def test_malformed_json_and_bad_references(tmp_path):
    path = write_set(tmp_path, "broken", {})
    with open(path, "w") as f:
        f.write('{"images": [')
    with pytest.raises(ValueError, match=f"malformed COCO annotation file {path}"):
        COCODataset(str(tmp_path), ["broken"])
    data = coco_json()
    data["annotations"][0]["category_id"] = 3
    write_set(tmp_path, "badcat", data)
    with pytest.raises(ValueError, match="annotation 1 has category_id 3"):
        COCODataset(str(tmp_path), ["badcat"])
    with pytest.raises(FileNotFoundError, match="instances_nope.json"):
        COCODataset(str(tmp_path), ["nope"])


def test_image_size_mismatch_names_the_file(tmp_path):
    write_set(tmp_path, "m", coco_json(), images=(("a.jpg", (20, 30)), ("b.jpg", (16, 17))))
    ds = COCODataset(str(tmp_path), ["m"])
    ds[0]
    with pytest.raises(ValueError, match=r"b\.jpg is 17x16 .* says 16x16"):
        ds[1]


def test_concatenation_and_single_set_evaluation(tmp_path):
    write_set(tmp_path, "one", coco_json())
    data = coco_json()
    data["images"] = [dict(img, id=img["id"] + 100) for img in data["images"]]
    data["annotations"] = [dict(a, image_id=a["image_id"] + 100) for a in data["annotations"][:1]]
    write_set(tmp_path, "two", data)
    ds = COCODataset(str(tmp_path), ["one", "two"], image_dir=None)
    assert ds.image_ids == [10, 11, 110, 111] and ds[2][1]["labels"].tolist() == [1]
    assert ds.check_files() == []
    with pytest.raises(ValueError, match="single set"):
        ds.coco
    other = copy.deepcopy(data)
    other["categories"][0]["name"] = "horse"
    write_set(tmp_path, "three", other)
    with pytest.raises(ValueError, match="must share categories"):
        COCODataset(str(tmp_path), ["one", "three"])


def test_shapes_coco_split_loads_with_masks(tmp_path):
    from datasets import make_shapes

    make_shapes(str(tmp_path), num_train=2, num_val=1, num_test=6, image_size=64, seed=3, crowd_fraction=0.3)
    ds = COCODataset(str(tmp_path), ["test"], image_dir="JPEGImages", with_masks=True,
                     classes=["circle", "rectangle", "triangle"])
    assert ds.cat_ids == [1, 3, 5]
    with open(os.path.join(tmp_path, "annotations", "instances_test.json")) as f:
        anns = json.load(f)["annotations"]
    crowds = sum(a["iscrowd"] for a in anns)
    seen_crowds = 0
    for i in range(len(ds)):
        _, t = ds[i]
        seen_crowds += len(t["ignore_boxes"])
        assert t["masks"].shape[0] == len(t["boxes"])
        # every (non-crowd) mask lies inside its box
        for m, b in zip(t["masks"].numpy(), t["boxes"].numpy()):
            ys, xs = np.nonzero(m)
            assert xs.min() >= np.floor(b[0]) and xs.max() < np.ceil(b[2])
            assert ys.min() >= np.floor(b[1]) and ys.max() < np.ceil(b[3])
    assert crowds > 0 and seen_crowds == crowds
    assert sum(len(ds[i][1]["boxes"]) for i in range(len(ds))) == len(anns) - crowds
