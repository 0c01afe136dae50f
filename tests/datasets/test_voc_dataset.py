"""VOCDataset on a hand-written VOC tree: exact boxes, difficult handling, concatenation, clear errors."""
import os

import cv2
import numpy as np
import pytest

from datasets import VOC_CLASSES, VOCDataset, build_transforms, collate_detection


def write_xml(path, size, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    with open(path, "w") as f:
        f.write(f"<annotation><size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>{objs}</annotation>")


def make_year(root, year, images, split="trainval"):
    base = os.path.join(root, year)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for image_id, (size, objects) in images.items():
        cv2.imwrite(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), np.full((*size, 3), 128, np.uint8))
        write_xml(os.path.join(base, "Annotations", f"{image_id}.xml"), size, objects)
    with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(images) + "\n")


@pytest.fixture
def voc(tmp_path):
    make_year(tmp_path, "VOC2007", {
        "a": ((50, 100), [("dog", (11, 21, 40, 50), 0), ("person", (1, 1, 5, 5), 1)]),
        "b": ((60, 30), []),  # an image without objects is valid
    })
    make_year(tmp_path, "VOC2012", {"c": ((40, 40), [("car", (2, 3, 30, 33), 0)])})
    return tmp_path


def test_boxes_labels_difficult_and_concatenation(voc):
    ds = VOCDataset(str(voc), ["VOC2007/trainval", "VOC2012/trainval"])
    assert len(ds) == 3 and ds.num_classes == 20
    a = ds.get_annotation(0)
    # 1-based inclusive (11, 21, 40, 50) -> continuous extent (10, 20, 40, 50)
    assert a["boxes"].tolist() == [[10, 20, 40, 50], [0, 0, 5, 5]]
    assert a["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert a["difficult"].tolist() == [False, True]
    assert ds.get_annotation(1)["boxes"].shape == (0, 4)
    assert ds.get_annotation(2)["labels"].tolist() == [VOC_CLASSES.index("car")]
    assert ds.aspect_ratios() == [2.0, 0.5, 1.0]
    image, target = ds[0]
    assert image.shape == (3, 50, 100) and target["orig_size"] == (50, 100)
    assert target["boxes"].tolist() == [[10, 20, 40, 50], [0, 0, 5, 5]]


def test_exclude_difficult_for_training(voc):
    ds = VOCDataset(str(voc), ["VOC2007/trainval"], include_difficult=False)
    _, target = ds[0]
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog")]
    # evaluation annotations keep everything
    assert len(ds.get_annotation(0)["labels"]) == 2


def test_with_transforms_and_collate(voc):
    ds = VOCDataset(str(voc), ["VOC2007/trainval"], transforms=build_transforms(False, min_size=25, max_size=1000))
    (img_a, t_a), (img_b, t_b) = ds[0], ds[1]
    # a: 50x100, scale min(25/50, 1000/100) = 0.5 -> 25x50; b: 60x30 -> scale 25/30 -> 50x25
    assert img_a.shape == (3, 25, 50) and img_b.shape == (3, 50, 25)
    assert t_a["boxes"].tolist() == [[5, 10, 20, 25], [0, 0, 2.5, 2.5]]
    assert t_a["scale_factor"].tolist() == [0.5, 0.5, 0.5, 0.5]
    images, targets = collate_detection([ds[0], ds[1]], size_divisor=32)
    assert images.shape == (2, 3, 64, 64) and len(targets) == 2


def test_missing_split_file(voc):
    with pytest.raises(FileNotFoundError, match=r"VOC2007/ImageSets/Main/test.txt"):
        VOCDataset(str(voc), ["VOC2007/test"])


def test_unknown_class_names_file_and_class(voc):
    write_xml(os.path.join(voc, "VOC2012", "Annotations", "c.xml"), (40, 40), [("cart", (1, 1, 9, 9), 0)])
    with pytest.raises(ValueError, match=r"unknown class 'cart' in .*c\.xml"):
        VOCDataset(str(voc), ["VOC2012/trainval"])


def test_malformed_xml_names_file(voc):
    with open(os.path.join(voc, "VOC2012", "Annotations", "c.xml"), "w") as f:
        f.write("<annotation><object>")
    with pytest.raises(ValueError, match=r"malformed VOC annotation .*c\.xml"):
        VOCDataset(str(voc), ["VOC2012/trainval"])


def test_bad_bndbox_names_file(voc):
    write_xml(os.path.join(voc, "VOC2012", "Annotations", "c.xml"), (40, 40), [("car", (1, "x", 9, 9), 0)])
    with pytest.raises(ValueError, match=r"malformed <bndbox> .*c\.xml"):
        VOCDataset(str(voc), ["VOC2012/trainval"])


def test_corrupt_and_missing_images(voc):
    ds = VOCDataset(str(voc), ["VOC2012/trainval"])
    path = os.path.join(voc, "VOC2012", "JPEGImages", "c.jpg")
    with open(path, "wb") as f:
        f.write(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"c\.jpg is unreadable or corrupt"):
        ds[0]
    os.remove(path)
    assert ds.check_files() == [path]
    with pytest.raises(FileNotFoundError, match=r"c\.jpg does not exist"):
        ds[0]


def test_missing_root_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere/ImageSets/Main/train.txt not found.*the root .*nowhere itself does not exist"):
        VOCDataset(str(tmp_path / "nowhere"), ["train"])


def test_image_size_must_match_annotation(voc):
    write_xml(os.path.join(voc, "VOC2012", "Annotations", "c.xml"), (40, 41), [("car", (2, 3, 30, 33), 0)])
    ds = VOCDataset(str(voc), ["VOC2012/trainval"])
    assert ds.aspect_ratios() == [41 / 40]
    with pytest.raises(ValueError, match=r"c\.jpg is 40x40 .* says 41x40"):
        ds[0]


def test_flat_root_layout_and_size_from_image(tmp_path):
    # root itself holds the VOC folders (the shapes layout); a missing <size> is read from the image
    make_year(tmp_path, "", {"z": ((20, 30), [("cat", (3, 4, 10, 12), 0)])}, split="train")
    with open(os.path.join(tmp_path, "Annotations", "z.xml"), "w") as f:
        f.write("<annotation><object><name>cat</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>10</xmax>"
                "<ymax>12</ymax></bndbox></object></annotation>")
    ds = VOCDataset(str(tmp_path), ["train"])
    assert ds.aspect_ratios() == [1.5]
    image, target = ds[0]
    assert target["boxes"].tolist() == [[2, 3, 10, 12]] and target["difficult"].tolist() == [False]
    assert target["image_id"] == "z" and target["flipped"] is False and target["img_size"] == (20, 30)


def test_keep_fraction_is_a_fixed_ordered_subset(tmp_path):
    make_year(tmp_path, "VOC2007", {f"{i:03d}": ((20, 20), [("dog", (1, 1, 9, 9), 0)]) for i in range(20)})
    full = VOCDataset(str(tmp_path), ["VOC2007/trainval"])
    ids = [r["path"] for r in full.records]
    a, b = VOCDataset(str(tmp_path), ["VOC2007/trainval"]), VOCDataset(str(tmp_path), ["VOC2007/trainval"])
    a.keep_fraction(0.25)
    b.keep_fraction(0.25)
    kept = [r["path"] for r in a.records]
    assert len(a) == 5 and kept == [r["path"] for r in b.records]  # same subset every time
    assert kept == sorted(kept, key=ids.index) and set(kept) < set(ids)  # listed order, a real subset
    assert "a fixed random 5 of 20: data.train_fraction=0.25" in a.summary() and "5 images" in a.summary()
    c = VOCDataset(str(tmp_path), ["VOC2007/trainval"])
    c.keep_fraction(0.25, seed=1)
    assert [r["path"] for r in c.records] != kept
    tiny = VOCDataset(str(tmp_path), ["VOC2007/trainval"])
    tiny.keep_fraction(0.001)  # never empty
    assert len(tiny) == 1
    full.keep_fraction(1.0)
    assert len(full) == 20 and "fixed random" not in full.summary()
    with pytest.raises(ValueError, match="fraction"):
        full.keep_fraction(0.0)
