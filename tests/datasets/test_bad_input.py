"""The bad-input policy (datasets/report.py, README "Bad input") on hand-built VOC trees and COCO files:
start-up errors name the file and the problem; boxes are clipped / dropped and counted; empty images are
kept and counted; scripts/check_data.py reports it all, decodes every image with --decode, exits 1 on errors."""
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from datasets import VOC_CLASSES, COCODataset, DataError, VOCDataset, make_shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOG, CAT, PERSON = (VOC_CLASSES.index(c) for c in ("dog", "cat", "person"))


# ----------------------------------------------------------------------------------------------- VOC
def voc_xml(size, objects):
    """size (h, w) or None (no <size>); objects (name, (xmin, ymin, xmax, ymax), difficult)."""
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    size_xml = "" if size is None else f"<size><width>{size[1]}</width><height>{size[0]}</height></size>"
    return f"<annotation>{size_xml}{objs}</annotation>"


def make_voc(root, images, split="train", ids=None):
    """A flat VOC tree (root holds JPEGImages/, Annotations/, ImageSets/Main/); images: id -> (size, objects)."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, (size, objects) in images.items():
        cv2.imwrite(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), np.full((*size, 3), 120, np.uint8))
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(voc_xml(size, objects))
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(ids if ids is not None else images) + "\n")
    return str(root)


# image "a" is 40 high, 50 wide; 1-based inclusive (xmin, ymin, xmax, ymax) -> continuous
# (xmin - 1, ymin - 1, xmax, ymax)
A_OBJECTS = [
    ("dog", (0, 5, 20, 30), 0),          # (-1, 4, 20, 30): 1 px left of the image -> clipped to (0, 4, 20, 30)
    ("car", (9, 1, 8, 9), 0),            # inverted (xmax < xmin) -> dropped
    ("person", (10, 10, 10, 12), 1),     # xmax == xmin: a valid 1-px-wide box (9, 9, 10, 12), kept as is
    ("bus", (52, 1, 60, 9), 0),          # (51, 0, 60, 9): right of the image, 0 px inside -> dropped
    ("cat", (45, 35, 60, 48), 0),        # (44, 34, 60, 48) -> clipped to (44, 34, 50, 40)
    ("cow", (3, 20, 8, 18), 0),          # ymax < ymin -> dropped
]


@pytest.fixture
def voc_bad(tmp_path):
    return make_voc(tmp_path, {
        "a": ((40, 50), A_OBJECTS),
        "e": ((20, 20), []),                              # no objects at all: kept
        "f": ((20, 20), [("dog", (5, 5, 4, 9), 0)]),      # its only box is dropped: kept, no objects
    })


def test_voc_boxes_clipped_dropped_and_counted(voc_bad):
    ds = VOCDataset(voc_bad, ["train"])
    # a: 2 clipped, 2 inverted, 1 outside; f: 1 inverted
    assert ds.report == {"clipped_boxes": 2, "degenerate_boxes": 3, "outside_boxes": 1, "empty_images": 2}
    a = ds.get_annotation(0)
    assert a["boxes"].tolist() == [[0, 4, 20, 30], [9, 9, 10, 12], [44, 34, 50, 40]]
    assert a["labels"].tolist() == [DOG, PERSON, CAT] and a["difficult"].tolist() == [False, True, False]
    assert len(ds) == 3 and ds.get_annotation(1)["boxes"].shape == (0, 4) and len(ds.get_annotation(2)["labels"]) == 0
    _, target = ds[0]  # the repaired boxes are what training sees
    assert target["boxes"].tolist() == [[0, 4, 20, 30], [9, 9, 10, 12], [44, 34, 50, 40]]


def test_voc_summary_names_counts_and_files(voc_bad):
    ds = VOCDataset(voc_bad, ["train"])
    ann = os.path.join(voc_bad, "Annotations")
    lines = ds.summary().splitlines()
    assert lines[0] == f"VOC data train under {voc_bad}: 3 images, 3 boxes"
    assert lines[1:] == [
        f"  clipped_boxes: 2 (boxes partly outside their image, clipped to it) - {ann}/a.xml",
        f"  degenerate_boxes: 3 (zero-area or inverted boxes, under 1 px wide or high, dropped) - {ann}/a.xml; "
        f"{ann}/f.xml",
        f"  outside_boxes: 1 (boxes with less than 1 px inside their image, dropped) - {ann}/a.xml",
        f"  empty_images: 2 (images with no objects, kept) - {ann}/e.xml; {ann}/f.xml",
    ]


def test_summary_of_clean_data_and_example_cap(tmp_path):
    clean = make_voc(tmp_path / "clean", {"a": ((20, 20), [("dog", (1, 1, 20, 20), 0)])})
    assert VOCDataset(clean, ["train"]).summary().splitlines()[1:] == [
        "  no boxes clipped or dropped, no images without objects"]
    many = make_voc(tmp_path / "many", {f"e{i}": ((8, 8), []) for i in range(7)})
    (line,) = VOCDataset(many, ["train"]).summary().splitlines()[1:]
    # only the first 5 files are named, and the line says so
    assert line.startswith("  empty_images: 7 (images with no objects, kept) - ")
    assert line.endswith("e4.xml (first 5 of 7)")
    assert "e5.xml" not in line


def test_voc_missing_size_is_read_from_the_image_and_then_clipped(tmp_path):
    root = make_voc(tmp_path, {"z": ((20, 30), [])})
    with open(os.path.join(root, "Annotations", "z.xml"), "w") as f:
        f.write(voc_xml(None, [("cat", (3, 4, 40, 12), 0)]))
    ds = VOCDataset(root, ["train"])
    assert ds.get_annotation(0)["boxes"].tolist() == [[2, 3, 30, 12]] and ds.report["clipped_boxes"] == 1


@pytest.mark.parametrize("xml,message", [
    ("<annotation><object>", r"malformed VOC annotation .*/a\.xml"),
    (voc_xml((40, 50), [("cart", (1, 1, 9, 9), 0)]), r"unknown class 'cart' in .*/a\.xml"),
    (voc_xml((40, 50), [("", (1, 1, 9, 9), 0)]), r"object 0 in .*/a\.xml has no <name>"),
    (voc_xml((40, 50), [("dog", (1, "x", 9, 9), 0)]), r"malformed <bndbox> of a 'dog' object in .*/a\.xml"),
    ("<annotation><size><width>w</width><height>4</height></size></annotation>", r"malformed <size> in .*/a\.xml"),
])
def test_voc_structural_errors_name_the_file(voc_bad, xml, message):
    with open(os.path.join(voc_bad, "Annotations", "a.xml"), "w") as f:
        f.write(xml)
    with pytest.raises(DataError, match=message):
        VOCDataset(voc_bad, ["train"])


def test_voc_missing_images_reported_together(tmp_path):
    root = make_voc(tmp_path, {f"i{k}": ((8, 8), []) for k in range(8)})
    for k in (1, 2, 3, 4, 5, 6, 7):
        os.remove(os.path.join(root, "JPEGImages", f"i{k}.jpg"))
    with pytest.raises(FileNotFoundError) as exc:
        VOCDataset(root, ["train"])
    msg = str(exc.value)
    assert msg.startswith("7 of the 8 images listed in ['train'] under ")
    assert os.path.join(root, "JPEGImages", "i1.jpg") in msg and "i5.jpg" in msg and "... and 2 more" in msg
    assert "i6.jpg" not in msg and "i0.jpg" not in msg


def test_voc_duplicate_ids(tmp_path):
    root = make_voc(tmp_path, {"a": ((8, 8), []), "b": ((8, 8), [])}, ids=["a", "b", "a"])
    with pytest.raises(DataError, match=r"duplicate image id 'a' in .*ImageSets/Main/train\.txt: listed twice"):
        VOCDataset(root, ["train"])
    make_voc(tmp_path, {"a": ((8, 8), []), "b": ((8, 8), [])})  # train.txt: a, b
    make_voc(tmp_path, {"b": ((8, 8), []), "c": ((8, 8), [])}, split="val")
    with pytest.raises(DataError, match=r"duplicate image id 'b': listed in .*/train\.txt and again in .*/val\.txt"):
        VOCDataset(root, ["train", "val"])


def test_corrupt_image_raises_naming_the_file_when_read(voc_bad):
    ds = VOCDataset(voc_bad, ["train"])
    with open(os.path.join(voc_bad, "JPEGImages", "e.jpg"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(300))
    ds[0]
    with pytest.raises(DataError, match=r"image .*/e\.jpg is unreadable or corrupt"):
        ds[1]


# ---------------------------------------------------------------------------------------------- COCO
def coco_data():
    """Image 10 is 30 wide, 20 high; bbox is [x, y, w, h] -> (x, y, x + w, y + h)."""
    ann = lambda i, img, bbox, crowd=0: {"id": i, "image_id": img, "category_id": 3, "bbox": bbox, "iscrowd": crowd}
    return {
        "images": [{"id": 10, "file_name": "a.jpg", "width": 30, "height": 20}]
                  + [{"id": i, "file_name": f"{i}.jpg", "width": 16, "height": 16} for i in (11, 12, 13)],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [
            ann(1, 10, [-5, 2, 10, 6]),       # (-5, 2, 5, 8) -> clipped to (0, 2, 5, 8)
            ann(2, 10, [25, 15, 10, 10]),     # (25, 15, 35, 25) -> clipped to (25, 15, 30, 20)
            ann(3, 10, [3, 3, 0, 5]),         # zero width -> dropped
            ann(4, 10, [40, 5, 5, 5]),        # right of the image -> dropped
            ann(5, 10, [29.5, 5, 4, 4]),      # 0.5 px inside -> dropped
            ann(6, 10, [-2, -2, 6, 6], 1),    # crowd region -> clipped to (0, 0, 4, 4), still an ignore region
            ann(7, 10, [2, 2, 5, -3]),        # negative height (inverted) -> dropped
            ann(8, 11, [1, 1, 5, 5], 1),      # image 11 holds only a crowd region: no objects
            ann(9, 13, [1, 1, 0.5, 4]),       # image 13's only box is 0.5 px wide; image 12 has none
        ],
    }


def write_coco(root, data, name="mini", skip_images=()):
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for img in data["images"]:
        if img["file_name"] not in skip_images:
            cv2.imwrite(os.path.join(root, name, img["file_name"]),
                        np.full((img.get("height", 16), img.get("width", 16), 3), 90, np.uint8))
    path = os.path.join(root, "annotations", f"instances_{name}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def test_coco_boxes_clipped_dropped_and_counted(tmp_path):
    path = write_coco(tmp_path, coco_data())
    ds = COCODataset(str(tmp_path), ["mini"])
    assert ds.report == {"clipped_boxes": 3, "degenerate_boxes": 3, "outside_boxes": 2, "empty_images": 3}
    _, t = ds[0]
    assert t["boxes"].tolist() == [[0, 2, 5, 8], [25, 15, 30, 20]] and t["ignore_boxes"].tolist() == [[0, 0, 4, 4]]
    assert ds.records[0]["ann_ids"] == [1, 2]  # masks follow the kept boxes
    assert [len(ds[i][1]["boxes"]) for i in (1, 2, 3)] == [0, 0, 0] and len(ds[1][1]["ignore_boxes"]) == 1
    assert len(ds.coco.anns) == 9  # evaluation still sees the file as published
    assert ds.summary().splitlines() == [
        f"COCO data mini under {tmp_path}: 4 images, 2 boxes",
        f"  clipped_boxes: 3 (boxes partly outside their image, clipped to it) - {path}: annotation 1, "
        f"annotation 2, annotation 6",
        f"  degenerate_boxes: 3 (zero-area or inverted boxes, under 1 px wide or high, dropped) - {path}: "
        f"annotation 3, annotation 7, annotation 9",
        f"  outside_boxes: 2 (boxes with less than 1 px inside their image, dropped) - {path}: annotation 4, "
        f"annotation 5",
        f"  empty_images: 3 (images with no objects, kept) - {path}: image 11, image 12, image 13",
    ]


def _drop(key):
    def edit(d):
        del d["annotations"][1][key]
    return edit


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("categories"), r"missing or non-list key 'categories'"),
    (_drop("bbox"), r"annotation 2 lacks key 'bbox'"),
    (lambda d: d["images"][2].pop("width"), r"image 12 lacks key 'width'"),
    (lambda d: d["annotations"][0].update(category_id=99), r"annotation 1 has category_id 99"),
    (lambda d: d["annotations"][0].update(image_id=77), r"annotation 1 has image_id 77"),
    (lambda d: d["images"][1].update(id=10), r"duplicate image id 10"),
    (lambda d: d["annotations"][1].update(id=1), r"duplicate annotation id 1"),
    (lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 2, 3]), r"annotation 1 has 'bbox' \[nan"),
])
def test_coco_structural_errors_name_file_and_id(tmp_path, edit, message):
    data = coco_data()
    edit(data)
    path = write_coco(tmp_path, data)
    with pytest.raises(DataError, match=message) as exc:
        COCODataset(str(tmp_path), ["mini"])
    assert path in str(exc.value)


def test_coco_malformed_json(tmp_path):
    path = write_coco(tmp_path, coco_data())
    with open(path, "w") as f:
        f.write('{"images": [')
    with pytest.raises(DataError, match=f"malformed COCO annotation file {path}"):
        COCODataset(str(tmp_path), ["mini"])


def test_coco_image_id_in_two_files_and_missing_images(tmp_path):
    one = write_coco(tmp_path, coco_data(), "one")
    two = write_coco(tmp_path, coco_data(), "two")
    with pytest.raises(DataError, match=f"duplicate image id 10: in {one} and again in {two}"):
        COCODataset(str(tmp_path), ["one", "two"])
    write_coco(tmp_path, coco_data(), "three", skip_images=("12.jpg",))
    with pytest.raises(FileNotFoundError,
                       match=r"1 of the 4 images listed in \['three'\] .*missing:\n  .*three/12\.jpg$"):
        COCODataset(str(tmp_path), ["three"])


# ---------------------------------------------------------------------------------- check_data.py
CFG = """_base_: {base}
data:
  root: {root}
  classes: [dog, cat]
  shapes: null
  train_sets: [train]
  test_sets: [test]
"""


def run_check(capsys, *args):
    """scripts/check_data.py's main() in this process (no second torch import): (exit status, stdout)."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        spec = importlib.util.spec_from_file_location("check_data_script",
                                                      os.path.join(REPO, "scripts", "check_data.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.join(REPO, "scripts"))
    status = module.main(list(args))
    return status, capsys.readouterr().out


@pytest.fixture
def broken_tree(tmp_path):
    root = tmp_path / "voc"
    make_voc(root, {"a": ((40, 40), [("dog", (0, 1, 9, 9), 0)]), "b": ((40, 40), []), "c": ((40, 40), []),
                    "d": ((40, 40), [])})
    make_voc(root, {"e": ((30, 30), [("cat", (1, 1, 9, 9), 0)])}, split="test")
    jpg = os.path.join(root, "JPEGImages")
    rng = np.random.default_rng(0)
    for name in ("b", "e"):  # random bytes: no decoder makes an image of them
        with open(os.path.join(jpg, f"{name}.jpg"), "wb") as f:
            f.write(rng.bytes(400))
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    with open(os.path.join(jpg, "c.jpg"), "wb") as f:  # cut short: OpenCV still decodes it
        f.write(buf.tobytes()[: len(buf) // 2])
    cv2.imwrite(os.path.join(jpg, "d.jpg"), np.zeros((40, 41, 3), np.uint8))  # the XML says 40 x 40
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CFG.format(base=os.path.join(REPO, "configs", "demo", "retinanet_shapes_alwa2.yaml"), root=root))
    return str(cfg), str(root)


def test_check_data_reports_every_bad_image(broken_tree, capsys):
    cfg, root = broken_tree
    status, out = run_check(capsys, "--cfg", cfg)  # without --decode, only the annotations are checked
    assert status == 0 and "clipped_boxes: 1 (boxes partly outside" in out
    assert "0 error(s); image files were not decoded" in out
    status, out = run_check(capsys, "--cfg", cfg, "--decode", "--workers", "2")
    jpg = os.path.join(root, "JPEGImages")
    assert status == 1
    assert f"  ERROR {jpg}/b.jpg: corrupt, cannot be decoded" in out
    assert f"  ERROR {jpg}/c.jpg: truncated JPEG (no end-of-image marker)" in out
    assert f"  ERROR {jpg}/d.jpg is 41x40 (w x h) as stored but its VOC annotation says 40x40" in out
    assert f"  ERROR {jpg}/e.jpg: corrupt, cannot be decoded" in out
    assert "  train: decoded 4/4 images, 3 bad" in out and "  test: decoded 1/1 images, 1 bad" in out
    assert out.rstrip().endswith("4 error(s)") and f"ERROR {jpg}/a.jpg" not in out


def test_check_data_start_up_error_and_exit_status_of_the_script(broken_tree, capsys):
    cfg, root = broken_tree
    with open(os.path.join(root, "Annotations", "e.xml"), "w") as f:
        f.write(voc_xml((30, 30), [("horse", (1, 1, 9, 9), 0)]))  # not in data.classes
    status, out = run_check(capsys, "--cfg", cfg)
    assert status == 1 and f"test set: ERROR unknown class 'horse' in {root}/Annotations/e.xml" in out
    assert "train set: VOC data train" in out and out.rstrip().endswith("1 error(s); image files were not decoded "
                                                                       "(use --decode to check them)")
    # the real command line: the same report, and exit status 1
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "check_data.py"), "--cfg", cfg],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1 and "unknown class 'horse'" in proc.stdout


def test_check_data_on_clean_shapes_data(tmp_path, capsys):
    root = str(tmp_path / "shapes")
    make_shapes(root, num_train=4, num_val=1, num_test=3, image_size=32, seed=0)
    shapes = ["data.shapes.num_train=4", "data.shapes.num_val=1", "data.shapes.num_test=3",
              "data.shapes.image_size=32", "data.shapes.seed=0"]  # the same parameters: the data is reused
    status, out = run_check(capsys, "--cfg", os.path.join(REPO, "configs", "demo", "retinanet_shapes_alwa2.yaml"),
                            "--decode", "--set", f"data.root={root}", *shapes)
    assert status == 0, out
    assert f"train set: VOC data train under {root}: 4 images" in out and "  train: decoded 4/4 images, 0 bad" in out
    assert "  test: decoded 3/3 images, 0 bad" in out and "ERROR" not in out and out.rstrip().endswith("0 error(s)")
    # shapes data never leaves its images; one test image is empty by design (empty_test_fraction)
    assert "clipped_boxes" not in out and "empty_images: 1 (images with no objects, kept)" in out


def test_engine_prints_the_training_set_summary_before_training(tmp_path, capsys):
    from detection import engine

    root = tmp_path / "voc"
    make_voc(root, {"a": ((32, 32), [("dog", (0, 1, 40, 9), 0)]), "b": ((32, 32), [("cat", (3, 3, 9, 9), 0)])})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(CFG.format(base=os.path.join(REPO, "configs", "demo", "retinanet_shapes_alwa2.yaml"),
                                   root=root).replace("test_sets: [test]", "test_sets: [train]"))
    cfg = engine.load(str(cfg_path), ["data.batch_size=1", "data.num_workers=0", "model.fpn.out_channels=8",
                                      "model.head.feat_channels=8", "train.max_iters=1", "train.progress=false"])
    engine.build_trainer(cfg, str(tmp_path / "work"), engine.builders.resolve_device("cpu"))
    out = capsys.readouterr().out
    summary = (f"VOC data train under {root}: 2 images, 2 boxes\n  clipped_boxes: 1 (boxes partly outside their "
               f"image, clipped to it) - {root}/Annotations/a.xml\n")
    assert summary in out and out.index(summary) < out.index("training retinanet")

