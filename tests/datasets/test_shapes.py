"""The synthetic shapes generator: determinism, real VOC and COCO formats that agree, masks that match."""
import filecmp
import json
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from datasets import VOCDataset, make_shapes

PARAMS = dict(num_train=8, num_val=2, num_test=6, image_size=64, seed=7)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    summary = make_shapes(root, **PARAMS)
    return root, summary


def test_layout_and_summary(shapes):
    root, summary = shapes
    assert summary["generated"] and summary["images"] == {"train": 8, "val": 2, "test": 6}
    for split, n in (("train", 8), ("val", 2), ("test", 6), ("trainval", 10)):
        ids = open(os.path.join(root, "ImageSets", "Main", f"{split}.txt")).read().split()
        assert len(ids) == n
        for i in ids:
            assert os.path.isfile(os.path.join(root, "JPEGImages", f"{i}.jpg"))
            assert os.path.isfile(os.path.join(root, "Annotations", f"{i}.xml"))
    assert summary["empty_images"] == 1  # max(1, round(0.02 * 6)) test image without objects


def test_deterministic_from_seed(shapes, tmp_path):
    root, _ = shapes
    again = str(tmp_path / "again")
    make_shapes(again, **PARAMS)
    for sub in ("Annotations", "JPEGImages"):
        names = sorted(os.listdir(os.path.join(root, sub)))
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(root, sub), os.path.join(again, sub), names, shallow=False)
        assert mismatch == [] and errors == [] and len(match) == 16
    other = str(tmp_path / "other")
    make_shapes(other, **dict(PARAMS, seed=8))
    assert not filecmp.cmp(os.path.join(root, "Annotations", "000001.xml"),
                           os.path.join(other, "Annotations", "000001.xml"), shallow=False)


def test_idempotent_and_mismatch_error(shapes):
    root, _ = shapes
    assert make_shapes(root, **PARAMS)["generated"] is False
    with pytest.raises(ValueError, match="different parameters.*seed"):
        make_shapes(root, **dict(PARAMS, seed=99))


def test_voc_and_coco_agree(shapes):
    root, _ = shapes
    coco = COCO(os.path.join(root, "annotations", "instances_train.json"))
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == [1, 3, 5]  # deliberately non-contiguous
    names = {c["id"]: c["name"] for c in cats}
    for img in coco.loadImgs(coco.getImgIds()):
        stem = os.path.splitext(img["file_name"])[0]
        xml = ET.parse(os.path.join(root, "Annotations", f"{stem}.xml")).getroot()
        objs = xml.findall("object")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(objs) == len(anns) >= 1
        for o, a in zip(objs, anns):
            assert o.findtext("name") == names[a["category_id"]]
            x, y, w, h = a["bbox"]
            voc = [int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            # VOC holds the 1-based first and last touched pixels: floor(x1) + 1 ... ceil(x2)
            assert voc == [int(np.floor(x)) + 1, int(np.floor(y)) + 1, int(np.ceil(x + w - 1e-6)), int(np.ceil(y + h - 1e-6))]
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert np.allclose(poly.min(0), [x, y], atol=0.02) and np.allclose(poly.max(0), [x + w, y + h], atol=0.02)


def test_filled_masks_carry_the_object_colour(shapes):
    root, _ = shapes
    coco = COCO(os.path.join(root, "annotations", "instances_train.json"))
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.cvtColor(cv2.imread(os.path.join(root, "JPEGImages", img["file_name"])), cv2.COLOR_BGR2RGB)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        for k, a in enumerate(anns):
            later = [coco.annToMask(b).astype(bool) for b in anns[k + 1:]]
            mask = coco.annToMask(a).astype(bool)
            for m in later:  # objects drawn later may cover part of this one
                mask &= ~m
            # erode so JPEG ringing and chroma subsampling at the border do not count; the colour is
            # chosen > 120 (L2) away from the background, so 25 per channel still separates the two
            inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if not a["attributes"]["filled"] or inner.sum() < 30:
                continue
            mean = pixels[inner].mean(0)
            assert np.abs(mean - np.array(a["attributes"]["color"])).max() < 25
            checked += 1
    assert checked >= 5


def test_difficult_flags_mark_tiny_objects(tmp_path):
    root = str(tmp_path / "s")
    make_shapes(root, num_train=30, num_val=0, num_test=0, image_size=128, seed=1)
    ds = VOCDataset(root, ["train"], classes=("circle", "rectangle", "triangle"))
    sides, flags = [], []
    for i in range(len(ds)):
        a = ds.get_annotation(i)
        sides.append(np.minimum(a["boxes"][:, 2] - a["boxes"][:, 0], a["boxes"][:, 3] - a["boxes"][:, 1]))
        flags.append(a["difficult"])
    sides, flags = np.concatenate(sides), np.concatenate(flags)
    assert flags.any() and not flags.all()
    # difficult when the shorter side is below 10 px (at 128 px); pixel extents can add up to 2 px
    assert (sides[flags] <= 12).all() and (sides[~flags] >= 10).all()


def test_empty_test_image_in_both_formats(shapes):
    root, _ = shapes
    coco = COCO(os.path.join(root, "annotations", "instances_test.json"))
    empty = [i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=i)]
    assert len(empty) == 1
    stem = os.path.splitext(coco.loadImgs(empty)[0]["file_name"])[0]
    assert ET.parse(os.path.join(root, "Annotations", f"{stem}.xml")).getroot().findall("object") == []
    ds = VOCDataset(root, ["test"], classes=("circle", "rectangle", "triangle"))
    i = [r["image_id"] for r in ds.records].index(stem)
    assert ds[i][1]["boxes"].shape == (0, 4)
    assert all(a["iscrowd"] == 0 for a in coco.loadAnns(coco.getAnnIds()))


def test_crowd_objects_use_rle_matching_the_polygon(tmp_path):
    root = str(tmp_path / "crowd")
    make_shapes(root, num_train=6, num_val=0, num_test=0, image_size=64, seed=3, crowd_fraction=0.5)
    coco = COCO(os.path.join(root, "annotations", "instances_train.json"))
    crowd = coco.loadAnns(coco.getAnnIds(iscrowd=True))
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    for a in crowd:
        mask = coco.annToMask(a)
        ys, xs = np.nonzero(mask)
        x, y, w, h = a["bbox"]
        assert mask.sum() == a["area"] > 0
        assert x - 1 <= xs.min() and xs.max() <= x + w and y - 1 <= ys.min() and ys.max() <= y + h
        xml = ET.parse(os.path.join(root, "Annotations", coco.loadImgs(a["image_id"])[0]["file_name"][:-4] + ".xml"))
        # VOC has no crowd flag: crowd objects are marked difficult there
        boxes = [[int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")] + [o.findtext("difficult")]
                 for o in xml.getroot().findall("object")]
        assert [int(np.floor(x)) + 1, int(np.floor(y)) + 1, int(np.ceil(x + w)), int(np.ceil(y + h)), "1"] in boxes
