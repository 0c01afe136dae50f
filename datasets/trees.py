"""A real photograph data set, "trees": aerial RGB tiles with tree-crown boxes, one class ``tree``, written in
the VOC and COCO layouts of the shapes data (``datasets/shapes.py``), so the loaders read it as they read shapes.

Source
------
Four annotated photographs from the ``deepforest/data/`` folder of the pinned ``deepforest==2.1.0`` wheel
(the package's licence: MIT; YELL, OSBS and SOAP are NEON site codes), read out of the wheel or out of a folder holding copies of the files
(``PHOTOS``). Every file is checked against its sha256 first. All box names (``Tree``; ``Alive`` and ``Dead`` in
SOAP_061) become the one class ``tree``; the summary counts each source name.

Split by photograph, so that no test tile shares a photograph with a training tile: ``train`` holds the tiles of
the 2299 x 2472 YELL crop, ``test`` those of the other three (``trainval`` = ``train``; there is no ``val``).

Tiles
-----
A side of ``L`` px is cut into ``n = max(1, round(L / tile))`` equal parts with edges ``round(i * L / n)``,
``i = 0..n`` (halves round up): no overlap, no slivers, every pixel in exactly one tile, and a 400 x 400 photo
is one tile. A tile is named after its photograph, row and column (``YELL_528000_r2_c3``); its offset in the
photograph is in the summary (``tiles``), so that predictions can be mapped back.

Boxes cut by a tile border
--------------------------
A box is clipped to every tile it overlaps (by at least 1 px in each direction). A clipped part whose area is
at least half the whole box's area is an ordinary box; a smaller part is kept as a ``difficult`` box (VOC
``difficult=1``, COCO ``iscrowd=1``), which evaluation ignores and ``include_difficult=False`` leaves out of
training. No box is lost: the parts of a box tile it exactly, so their areas add up to its area. Clipped parts
have VOC ``truncated=1``. A box across four tiles may have no part of half its area: all four are difficult.

Coordinates
-----------
The source XML holds 1-based inclusive integer pixels (VOC): over the four files ``xmin``/``ymin`` range from 1
and ``xmax``/``ymax`` reach the image width/height, never beyond. They are read as ``datasets/voc.py`` reads them
(continuous ``x1 = xmin - 1, x2 = xmax``), cut in that frame, and written back the same way, so the VOC loader
returns each part exactly (whole numbers) and the COCO ``bbox`` is the same box. Source boxes are repaired by
the loaders' policy (``report.repair_boxes``: clipped to the photograph, under 1 px dropped) and every repair is
counted in the summary (``source_repairs``; none in the pinned files).

Tiles are written as JPEG, quality 95 (``jpeg_quality``), because the VOC loader reads ``JPEGImages/<id>.jpg``
only; on these textured photographs that is about 3.6 grey levels off on average. COCO annotations carry a
non-standard ``attributes`` dict (``source_name``, ``source_box``: the box's index in its source XML,
``truncated``), which pycocotools ignores.
The folder rule is the shapes generator's (``shapes_root.claim`` with the marker ``trees_meta.json``).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple, Union

import cv2
import numpy as np

from .downloads import DEEPFOREST, check_sha256, sha256_bytes, verify_wheel
from .report import DataError, DataReport, repair_boxes
from .shapes_root import claim

MARKER = "trees_meta.json"
FORMAT_VERSION = 1
CLASSES = ("tree",)
SPLITS = ("train", "test")
WHEEL_DIR = "deepforest/data/"  # the photographs' folder inside the wheel
TILE_RULE = ("each side of length L is cut into n = max(1, round(L / tile)) equal parts, edges round(i * L / n), "
             "halves rounded up; a clipped box part keeps >= 50% of the box's area or is marked difficult")


# sha256 of every file read from the wheel
SHA256 = {
    "2019_YELL_2_528000_4978000_image_crop2.png": "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767",
    "2019_YELL_2_528000_4978000_image_crop2.xml": "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11",
    "2019_YELL_2_541000_4977000_image_crop.png": "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131",
    "2019_YELL_2_541000_4977000_image_crop.xml": "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631",
    "OSBS_029.png": "d9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee",
    "OSBS_029.xml": "1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c",
    "SOAP_061.png": "256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424",
    "SOAP_061.xml": "4833280af75fd9c47965a93e38945282835e9e725cac412bdb9469d63480947c",
}


@dataclass(frozen=True)
class Photo:
    stem: str  # file name without .png / .xml in deepforest/data/
    tag: str  # the start of its tiles' names
    split: str

    @property
    def png_sha256(self) -> str:
        return SHA256[self.stem + ".png"]

    @property
    def xml_sha256(self) -> str:
        return SHA256[self.stem + ".xml"]


PHOTOS = (
    Photo("2019_YELL_2_528000_4978000_image_crop2", "YELL_528000", "train"),
    Photo("2019_YELL_2_541000_4977000_image_crop", "YELL_541000", "test"),
    Photo("OSBS_029", "OSBS_029", "test"),
    Photo("SOAP_061", "SOAP_061", "test"),
)


# ------------------------------------------------------------------------------------------------ the rules
def tile_edges(length: int, tile: int) -> List[int]:
    """``n + 1`` edges cutting ``[0, length]`` into ``n = max(1, round(length / tile))`` near-equal parts,
    edge ``i`` at ``round(i * length / n)``; integer arithmetic, so halves round up (not to even)."""
    if length < 1 or tile < 1:
        raise ValueError(f"need a length and a tile size of at least 1 px, got {length} and {tile}")
    n = max(1, (2 * length + tile) // (2 * tile))
    return [(2 * i * length + n) // (2 * n) for i in range(n + 1)]


def split_box(box, xs: List[int], ys: List[int]) -> List[Tuple[int, int, Tuple[int, int, int, int], bool]]:
    """The parts of ``box`` (x1, y1, x2, y2, continuous integer pixels) in the tiles of edges ``xs`` / ``ys``:
    ``(row, col, part box, difficult)`` for every tile it overlaps by at least 1 px in x and in y, in row-major
    order; ``difficult`` when the part has less than half the box's area."""
    x1, y1, x2, y2 = (int(v) for v in box)
    area = (x2 - x1) * (y2 - y1)
    parts = []
    for r in range(len(ys) - 1):
        top, bottom = max(y1, ys[r]), min(y2, ys[r + 1])
        if bottom <= top:
            continue
        for c in range(len(xs) - 1):
            left, right = max(x1, xs[c]), min(x2, xs[c + 1])
            if right > left:
                parts.append((r, c, (left, top, right, bottom), 2 * (right - left) * (bottom - top) < area))
    return parts


# ------------------------------------------------------------------------------------------------ the source
@contextlib.contextmanager
def open_source(source: str):
    """``read(file name) -> (bytes, where)`` for the files of ``deepforest/data/`` in ``source``: the pinned
    wheel (checked first), or a folder holding the files (or an extracted wheel, holding deepforest/data/)."""
    if os.path.isfile(source):
        verify_wheel(source, DEEPFOREST)
        with zipfile.ZipFile(source) as z:
            yield lambda name: (z.read(WHEEL_DIR + name), f"{source}:{WHEEL_DIR}{name}")
        return
    if not os.path.isdir(source):
        raise FileNotFoundError(f"trees source {source} does not exist (expected {DEEPFOREST.filename} or a "
                                f"folder holding the files of its {WHEEL_DIR})")
    nested = os.path.join(source, *WHEEL_DIR.strip("/").split("/"))
    folder = nested if os.path.isdir(nested) else source

    def read(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: the trees data is built from {name} of "
                                    f"{DEEPFOREST.name} {DEEPFOREST.version}'s {WHEEL_DIR}")
        with open(path, "rb") as f:
            return f.read(), path
    yield read


def _read_checked(read, name: str, expected: str) -> bytes:
    data, where = read(name)
    check_sha256(sha256_bytes(data), expected, where,
                 f"the trees data is built from the files of {DEEPFOREST.name} {DEEPFOREST.version} only")
    return data


def parse_source_xml(data: bytes, where: str) -> Tuple[int, int, np.ndarray, List[str]]:
    """``(width, height, boxes [M, 4] continuous (x1 = xmin - 1, ...), names)`` of a source annotation."""
    try:
        root = ET.fromstring(data)
        width, height = (int(root.findtext(f"size/{k}")) for k in ("width", "height"))
        names = [(obj.findtext("name") or "").strip() for obj in root.iter("object")]
        raw = [[float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
               for obj in root.iter("object")]
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise DataError(f"malformed source annotation {where}: {exc}") from None
    boxes = np.asarray(raw, np.float64).reshape(-1, 4) - np.array([1, 1, 0, 0])
    if not (np.isfinite(boxes).all() and (boxes == np.round(boxes)).all()):
        raise DataError(f"{where}: box coordinates must be whole pixels")
    return width, height, boxes, names


def read_sources(read) -> Dict[str, bytes]:
    """File name -> bytes of the 8 source files, each checked against its sha256 (all before anything is
    written, so a wrong source leaves the data folder as it was)."""
    return {name: _read_checked(read, name, sha) for photo in PHOTOS
            for name, sha in ((photo.stem + ".png", photo.png_sha256), (photo.stem + ".xml", photo.xml_sha256))}


def _load_photo(files: Dict[str, bytes], photo: Photo, report: DataReport):
    """``(image BGR, boxes int [K, 4] repaired, names [K], source indices [K], all names)`` of ``photo``."""
    image = cv2.imdecode(np.frombuffer(files[photo.stem + ".png"], np.uint8), cv2.IMREAD_COLOR)
    width, height, boxes, names = parse_source_xml(files[photo.stem + ".xml"], photo.stem + ".xml")
    if image is None or image.shape[:2] != (height, width):
        raise DataError(f"{photo.stem}.png does not decode to the {width} x {height} of {photo.stem}.xml")
    kept, keep = repair_boxes(boxes, width, height, report, photo.stem + ".xml")
    return image, np.round(kept).astype(np.int64), [names[i] for i in keep], keep, names


# ------------------------------------------------------------------------------------------------ the build
def build_trees(root: str, source: Union[str, Callable[[], str]], tile: int = 400, jpeg_quality: int = 95,
                remedy: str = "choose another root (an empty or new folder)") -> dict:
    """Build (or reuse) the trees data set in ``root`` from ``source``; returns the summary dict.

    ``source`` is the pinned wheel, a folder holding its ``deepforest/data`` files, or a function returning
    either (called only when a build is needed, e.g. one that downloads the wheel). ``root`` must be missing,
    empty or this builder's (``shapes_root.claim``): a complete build of the same ``tile`` and ``jpeg_quality``
    is reused (``summary["generated"] is False``); other parameters or foreign files raise ``DataError`` naming
    ``root`` and ending in ``remedy``. A wrong source file raises ``ChecksumError`` naming it."""
    if int(tile) < 16:
        raise ValueError(f"tile must be at least 16 px, got {tile}")
    params = {"tile": int(tile), "jpeg_quality": int(jpeg_quality), "version": FORMAT_VERSION}
    meta = claim(str(root), params, remedy, marker=MARKER, kind="trees")
    if meta is not None:
        return dict(meta["summary"], root=str(root), generated=False)
    source = source() if callable(source) else source
    start = time.perf_counter()
    with open_source(str(source)) as read:
        files = read_sources(read)
    marker = os.path.join(root, MARKER)
    os.makedirs(root, exist_ok=True)
    _write_json(marker, {"params": params, "complete": False})
    summary = _build(root, files, params)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(marker, {"params": params, "complete": True, "summary": summary})
    return dict(summary, root=str(root), generated=True)


def _new_summary(params: dict) -> dict:
    per_split = lambda: {s: 0 for s in SPLITS}  # noqa: E731
    return {"classes": list(CLASSES), "category_ids": [1], "tile": params["tile"], "tile_rule": TILE_RULE,
            "image_format": f"JPEG quality {params['jpeg_quality']}", "wheel": DEEPFOREST.describe(),
            "images": per_split(), "objects": per_split(), "difficult": per_split(), "empty_images": per_split(),
            "source_boxes": per_split(),
            "parts": {s: {"whole": 0, "clipped_kept": 0, "clipped_difficult": 0} for s in SPLITS},
            "source_names": {}, "source_repairs": {}, "sources": {}, "tiles": {}}


def _build(root: str, files: Dict[str, bytes], params: dict) -> dict:
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main"), "annotations"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    summary, report, names = _new_summary(params), DataReport(), Counter()
    coco = {s: {"info": {"description": f"trees: tiles of {DEEPFOREST.name} {DEEPFOREST.version} sample "
                                        f"photographs", "version": "1.0"},
                "licenses": [], "images": [], "annotations": [],
                "categories": [{"id": 1, "name": "tree", "supercategory": "plant"}]} for s in SPLITS}
    ids: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for photo in PHOTOS:
        image, boxes, box_names, indices, all_names = _load_photo(files, photo, report)
        names.update(all_names)
        tiles = _cut(photo, image.shape[1], image.shape[0], params["tile"], boxes, box_names, indices,
                     summary["parts"][photo.split])
        for t in tiles:
            _write_tile(root, t, image, params["jpeg_quality"], coco[photo.split])
            ids[photo.split].append(t["id"])
            summary["tiles"][t["id"]] = {k: t[k] for k in ("source", "split", "x", "y", "width", "height")}
            summary["objects"][photo.split] += len(t["objects"])
            summary["difficult"][photo.split] += sum(o["difficult"] for o in t["objects"])
            summary["empty_images"][photo.split] += not t["objects"]
        summary["images"][photo.split] += len(tiles)
        summary["source_boxes"][photo.split] += len(boxes)
        summary["sources"][photo.stem] = {
            "split": photo.split, "width": image.shape[1], "height": image.shape[0], "boxes": len(all_names),
            "tiles": len(tiles), "png_sha256": photo.png_sha256, "xml_sha256": photo.xml_sha256}
    summary["source_names"] = dict(sorted(names.items()))
    summary["source_repairs"] = {k: v for k, v in report.items() if k != "empty_images"}  # box counters only
    for s in SPLITS:
        _write_json(os.path.join(root, "annotations", f"instances_{s}.json"), coco[s])
    ids["trainval"] = list(ids["train"])
    for s, listed in ids.items():
        with open(os.path.join(root, "ImageSets", "Main", f"{s}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in listed))
    return summary


def _cut(photo: Photo, width: int, height: int, tile: int, boxes, names, indices, parts_count) -> List[dict]:
    """The tiles of one photograph, each with its objects in tile pixels; counts the parts in ``parts_count``."""
    xs, ys = tile_edges(width, tile), tile_edges(height, tile)
    tiles = {(r, c): {"id": f"{photo.tag}_r{r}_c{c}", "source": photo.stem, "split": photo.split,
                      "x": xs[c], "y": ys[r], "width": xs[c + 1] - xs[c], "height": ys[r + 1] - ys[r],
                      "objects": []}
             for r in range(len(ys) - 1) for c in range(len(xs) - 1)}
    for box, name, index in zip(boxes, names, indices):
        parts = split_box(box, xs, ys)
        for r, c, (x1, y1, x2, y2), difficult in parts:
            t = tiles[r, c]
            t["objects"].append({"box": (x1 - t["x"], y1 - t["y"], x2 - t["x"], y2 - t["y"]),
                                 "difficult": difficult, "truncated": len(parts) > 1,
                                 "source_name": name, "source_box": int(index)})
            kind = "whole" if len(parts) == 1 else "clipped_difficult" if difficult else "clipped_kept"
            parts_count[kind] += 1
    return list(tiles.values())


# ------------------------------------------------------------------------------------------------ writing
def _write_tile(root: str, t: dict, image: np.ndarray, quality: int, coco: dict) -> None:
    crop = np.ascontiguousarray(image[t["y"]:t["y"] + t["height"], t["x"]:t["x"] + t["width"]])
    path = os.path.join(root, "JPEGImages", f"{t['id']}.jpg")
    if not cv2.imwrite(path, crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
        raise OSError(f"cv2 could not write {path}")
    _write_voc_xml(os.path.join(root, "Annotations", f"{t['id']}.xml"), t)
    image_id = len(coco["images"]) + 1
    coco["images"].append({"id": image_id, "file_name": f"{t['id']}.jpg", "width": t["width"],
                           "height": t["height"]})
    for o in t["objects"]:
        x1, y1, x2, y2 = o["box"]
        coco["annotations"].append({
            "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": int(o["difficult"]),
            # not COCO: where the box came from (pycocotools ignores it; the tests add the parts up with it)
            "attributes": {"source_name": o["source_name"], "source_box": o["source_box"],
                           "truncated": int(o["truncated"])}})


def _write_voc_xml(path: str, t: dict) -> None:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "trees"
    ET.SubElement(ann, "filename").text = f"{t['id']}.jpg"
    ET.SubElement(ET.SubElement(ann, "source"), "database").text = (
        f"{DEEPFOREST.name} {DEEPFOREST.version} {WHEEL_DIR}{t['source']}.png at x {t['x']}, y {t['y']}")
    size = ET.SubElement(ann, "size")
    for tag, val in (("width", t["width"]), ("height", t["height"]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(val)
    ET.SubElement(ann, "segmented").text = "0"
    for o in t["objects"]:
        node = ET.SubElement(ann, "object")
        ET.SubElement(node, "name").text = CLASSES[0]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(o["truncated"]))
        ET.SubElement(node, "difficult").text = str(int(o["difficult"]))
        box = ET.SubElement(node, "bndbox")
        x1, y1, x2, y2 = o["box"]
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)):  # back to 1-based
            ET.SubElement(box, tag).text = str(val)
    ET.indent(ann)
    ET.ElementTree(ann).write(path, encoding="utf-8", xml_declaration=False)


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1 if path.endswith(MARKER) else None)
    os.replace(tmp, path)
