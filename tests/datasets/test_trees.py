"""The trees data set: the tile and box-cutting rules on hand-made cases, the checksum and folder refusals, and the
data built from the real deepforest 2.1.0 wheel as the project's VOC and COCO loaders read it.

The real-wheel tests use the session fixtures ``deepforest_wheel`` / ``trees_data`` (tests/conftest.py): they
skip, saying how to fetch the wheel, when it is not downloaded, and fail instead under ALWA_REQUIRE_REAL_DATA=1."""
import json
import os
import xml.etree.ElementTree as ET
import zipfile
from collections import defaultdict

import cv2
import numpy as np
import pytest

from datasets import COCODataset, DataError, VOCDataset
from datasets.downloads import DEEPFOREST, ChecksumError
from datasets.trees import PHOTOS, WHEEL_DIR, build_trees, split_box, tile_edges

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def never_called():
    raise AssertionError("the source was resolved although no build was needed")


# ------------------------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("length, tile, edges", [
    (400, 400, [0, 400]),  # a 400 px side is one tile
    (1, 400, [0, 1]),  # n = max(1, round(0.0025)) = 1
    (5, 4, [0, 5]),  # round(1.25) = 1
    (9, 4, [0, 5, 9]),  # n = 2; 4.5 rounds up to 5
    (10, 4, [0, 3, 7, 10]),  # round(2.5) = 3 (half up, not to even); 3.33 -> 3, 6.67 -> 7
    (2299, 400, [0, 383, 766, 1150, 1533, 1916, 2299]),  # 5.75 -> 6 parts; 1149.5 -> 1150
])
def test_tile_edges(length, tile, edges):
    assert tile_edges(length, tile) == edges


def test_a_box_across_one_border_keeps_its_larger_part_and_marks_the_smaller_difficult():
    xs, ys = [0, 10, 20], [0, 10]
    # 6 x 4 = 24 px: 16 px left of x = 10 (>= 12, kept), 8 px right of it (< 12, difficult)
    assert split_box((6, 2, 12, 6), xs, ys) == [(0, 0, (6, 2, 10, 6), False), (0, 1, (10, 2, 12, 6), True)]
    # exactly half on each side: both are ordinary boxes
    assert split_box((5, 0, 15, 4), xs, ys) == [(0, 0, (5, 0, 10, 4), False), (0, 1, (10, 0, 15, 4), False)]
    # touching a border is not crossing it: one whole box
    assert split_box((4, 0, 10, 5), xs, ys) == [(0, 0, (4, 0, 10, 5), False)]


def test_a_box_across_four_tiles():
    xs = ys = [0, 10, 20]
    # 10 x 10 = 100 px: 64 / 16 / 16 / 4 px in the four tiles, row-major
    assert split_box((2, 2, 12, 12), xs, ys) == [
        (0, 0, (2, 2, 10, 10), False), (0, 1, (10, 2, 12, 10), True),
        (1, 0, (2, 10, 10, 12), True), (1, 1, (10, 10, 12, 12), True)]
    # 6 x 4 = 24 px in four parts of 6 px: none has half the area, all four are difficult, none is lost
    parts = split_box((7, 8, 13, 12), xs, ys)
    assert [p[3] for p in parts] == [True] * 4
    assert sum((p[2][2] - p[2][0]) * (p[2][3] - p[2][1]) for p in parts) == 24


# ------------------------------------------------------------------------------------------------ refusals
def test_a_wheel_of_another_version_is_one_error_naming_it_and_the_expected_checksum(tmp_path):
    fake = tmp_path / "deepforest-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(WHEEL_DIR + "OSBS_029.xml", "<annotation/>")
    with pytest.raises(ChecksumError) as info:
        build_trees(str(tmp_path / "out"), str(fake))
    message = str(info.value)
    assert str(fake) in message and DEEPFOREST.sha256 in message and "deepforest 2.1.0" in message
    assert "\n" not in message and isinstance(info.value, ValueError)
    assert not (tmp_path / "out").exists()  # nothing written for a wrong source


def test_a_folder_of_foreign_files_is_refused_and_left_alone(tmp_path):
    root = tmp_path / "mine"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "JPEGImages" / "YELL_528000_r0_c0.jpg").write_bytes(b"my photo")
    with pytest.raises(DataError, match=r"trees data folder .*mine holds files not written .*JPEGImages"):
        build_trees(str(root), never_called)
    assert sorted(os.listdir(root)) == ["JPEGImages"]
    assert (root / "JPEGImages" / "YELL_528000_r0_c0.jpg").read_bytes() == b"my photo"


def test_the_command_line_prints_one_error_line(tmp_path, script):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as info:
        script("make_trees").main(["--root", str(tmp_path / "out"), "--source", missing])
    message = info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    assert missing in message


# ------------------------------------------------------------------------------------------------ real data
def _copy_sources(wheel, folder):
    with zipfile.ZipFile(wheel) as z:
        for photo in PHOTOS:
            for ext in (".png", ".xml"):
                (folder / (photo.stem + ext)).write_bytes(z.read(WHEEL_DIR + photo.stem + ext))


def test_an_altered_file_in_a_folder_copy_is_one_error_naming_it(deepforest_wheel, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _copy_sources(deepforest_wheel, src)
    altered = src / "OSBS_029.xml"
    altered.write_bytes(altered.read_bytes().replace(b"<xmin>203</xmin>", b"<xmin>204</xmin>", 1))
    with pytest.raises(ChecksumError) as info:
        build_trees(str(tmp_path / "out"), str(src))
    message = str(info.value)
    assert str(altered) in message and PHOTOS[2].xml_sha256 in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    altered.unlink()
    with pytest.raises(FileNotFoundError, match="OSBS_029.xml is missing"):
        build_trees(str(tmp_path / "out"), str(src))


def test_a_folder_copy_builds_the_same_files_as_the_wheel(deepforest_wheel, trees_data, tmp_path):
    src = tmp_path / "deepforest" / "data"  # an extracted wheel: the files under deepforest/data/
    src.mkdir(parents=True)
    _copy_sources(deepforest_wheel, src)
    other = build_trees(str(tmp_path / "out"), str(tmp_path))
    assert other["objects"] == trees_data["objects"]
    for sub in ("Annotations", "JPEGImages"):
        for name in os.listdir(os.path.join(trees_data["root"], sub)):
            with open(os.path.join(trees_data["root"], sub, name), "rb") as a, \
                    open(os.path.join(tmp_path, "out", sub, name), "rb") as b:
                assert a.read() == b.read(), name


def test_summary_of_the_real_data(trees_data):
    s = trees_data
    # 2299 x 2472 -> 6 x 6 tiles; 1249 x 1035 -> 3 x 3 (round(2.59) = 3); two 400 x 400 photos, one tile each
    assert s["images"] == {"train": 36, "test": 9 + 1 + 1}
    assert s["source_boxes"] == {"train": 574, "test": 279 + 61 + 37}
    assert s["source_names"] == {"Alive": 9, "Dead": 28, "Tree": 574 + 279 + 61}
    assert all(v == 0 for v in s["source_repairs"].values())
    for split in ("train", "test"):
        parts = s["parts"][split]
        assert sum(parts.values()) == s["objects"][split] >= s["source_boxes"][split]
        assert parts["clipped_difficult"] == s["difficult"][split]
    tiles = s["tiles"]
    assert tiles["YELL_528000_r2_c3"] == {"source": PHOTOS[0].stem, "split": "train", "x": 1150, "y": 824,
                                         "width": 383, "height": 412}  # 2472: edges 0, 412, 824, 1236, ...
    assert {t["split"] for k, t in tiles.items() if k.startswith("YELL_528000")} == {"train"}
    again = build_trees(s["root"], never_called)  # a complete build of the same parameters is reused
    assert again["generated"] is False and again["objects"] == s["objects"]
    with pytest.raises(DataError, match=r"tile 400 \(in the folder\) vs 300"):
        build_trees(s["root"], never_called, tile=300)


def _source_boxes(wheel):
    """Photo stem -> [M, 4] continuous boxes read straight from the wheel's XML (1-based inclusive)."""
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for photo in PHOTOS:
            root = ET.fromstring(z.read(WHEEL_DIR + photo.stem + ".xml"))
            out[photo.stem] = np.array([[int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                                        for o in root.iter("object")]) - [1, 1, 0, 0]
    return out


def test_every_source_box_is_the_union_of_its_parts(deepforest_wheel, trees_data):
    sources = _source_boxes(deepforest_wheel)
    parts = defaultdict(list)  # (photo, source box index) -> parts in photo pixels
    for split in ("train", "test"):
        with open(os.path.join(trees_data["root"], "annotations", f"instances_{split}.json")) as f:
            coco = json.load(f)
        names = {im["id"]: im["file_name"][:-4] for im in coco["images"]}
        for a in coco["annotations"]:
            t = trees_data["tiles"][names[a["image_id"]]]
            x, y, w, h = a["bbox"]
            parts[t["source"], a["attributes"]["source_box"]].append(
                (x + t["x"], y + t["y"], x + w + t["x"], y + h + t["y"], a["iscrowd"]))
    assert len(parts) == sum(len(b) for b in sources.values())  # no box lost
    for (stem, i), ps in parts.items():
        box = sources[stem][i]
        ps = np.array(ps)
        area = (box[2] - box[0]) * (box[3] - box[1])
        assert ((ps[:, 2] - ps[:, 0]) * (ps[:, 3] - ps[:, 1])).sum() == area, (stem, i)
        assert ps[:, :2].min(0).tolist() == box[:2].tolist() and ps[:, 2:4].max(0).tolist() == box[2:].tolist()
        assert (ps[:, 4] == 0).sum() <= 1 + (len(ps) == 2)  # at most one part of > half, or two halves
        assert len(ps) > 1 or ps[0, 4] == 0  # a whole box is an ordinary one


def test_the_voc_and_coco_loaders_read_the_same_boxes(trees_data):
    root = trees_data["root"]
    for split in ("train", "test"):
        voc = VOCDataset(root, [split], classes=("tree",))
        coco = COCODataset(root, [split], image_dir="JPEGImages", classes=("tree",))
        assert len(voc) == len(coco) == trees_data["images"][split]
        assert voc.report == {"clipped_boxes": 0, "degenerate_boxes": 0, "outside_boxes": 0,
                              "empty_images": trees_data["empty_images"][split]}
        total = difficult = 0
        for i in range(len(voc)):
            a, b = voc.get_annotation(i), coco.get_annotation(i)
            assert voc.records[i]["image_id"] + ".jpg" == os.path.basename(coco.records[i]["path"])
            order_a, order_b = np.lexsort(a["boxes"].T), np.lexsort(b["boxes"].T)
            assert a["boxes"][order_a].tolist() == b["boxes"][order_b].tolist()
            assert a["difficult"][order_a].tolist() == b["difficult"][order_b].tolist()
            total, difficult = total + len(a["boxes"]), difficult + int(a["difficult"].sum())
        assert (total, difficult) == (trees_data["objects"][split], trees_data["difficult"][split])


def test_a_tile_holds_the_photograph_at_its_offset(deepforest_wheel, trees_data):
    t = trees_data["tiles"]["YELL_541000_r1_c2"]
    with zipfile.ZipFile(deepforest_wheel) as z:
        photo = cv2.imdecode(np.frombuffer(z.read(WHEEL_DIR + t["source"] + ".png"), np.uint8), cv2.IMREAD_COLOR)
    tile = cv2.imread(os.path.join(trees_data["root"], "JPEGImages", "YELL_541000_r1_c2.jpg")).astype(float)
    assert tile.shape == (t["height"], t["width"], 3)
    crop = photo[t["y"]:t["y"] + t["height"], t["x"]:t["x"] + t["width"]].astype(float)
    shifted = photo[t["y"] + 3:t["y"] + 3 + t["height"], t["x"] - 3:t["x"] - 3 + t["width"]].astype(float)
    # JPEG q95 (4:2:0) of this textured photo: 3.6 grey levels off on average; the crop 3 px away: 25
    assert np.abs(tile - crop).mean() < 5 and np.abs(tile - shifted).mean() > 15
