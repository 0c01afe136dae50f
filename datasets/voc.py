"""PASCAL VOC detection data (VOC2007 / VOC2012 devkit layout), also used for the shapes data.

Layout of one set ``root/SUBDIR``::

    JPEGImages/<id>.jpg   Annotations/<id>.xml   ImageSets/Main/<split>.txt

Box convention: VOC XML holds 1-based inclusive pixel indices. We convert them to continuous pixel
extents, ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``, so that ``x2 - x1`` is the box width
in pixels. In this frame the devkit's "+1" widths are already built in: evaluating with
``legacy_coords=False`` gives exactly the devkit's IoUs (see ``detection/evaluation/voc.py``).

Bad input follows ``datasets/report.py``: malformed XML, a malformed ``<size>`` (a missing one is read
from the image), a missing or malformed ``<name>`` / ``<bndbox>``, an unknown class, an image id listed
twice (in one split file or across the concatenated sets) and missing image files stop construction with
an error naming the file; boxes are clipped to ``[0, width] x [0, height]`` in the frame above, zero-area
/ inverted ones (``xmax < xmin`` or ``ymax < ymin``) and ones outside the image are dropped, images
without objects kept, all counted in ``report``. ``xmax == xmin`` is a valid 1-pixel-wide box.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Sequence

import numpy as np

from .base import DetectionRecords, read_image
from .report import DataError, DataReport, repair_boxes

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def parse_voc_xml(path: str, class_index: Dict[str, int]) -> dict:
    """Parse one annotation file into ``{width, height, boxes [M,4], labels [M], difficult [M]}``.

    Boxes are converted to the continuous frame but not checked against the image: that is
    ``repair_boxes``' job (clip / drop / count). Structural problems raise ``DataError`` naming ``path``;
    a width or height of 0 means ``<size>`` is absent."""
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"malformed VOC annotation {path}: {exc}") from exc
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation {path} is listed in the split file but does not exist") from None
    size = tree.find("size")
    try:
        width = int(float(size.find("width").text)) if size is not None else 0
        height = int(float(size.find("height").text)) if size is not None else 0
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"malformed <size> in {path}: {exc}") from exc
    boxes, labels, difficult = [], [], []
    for n, obj in enumerate(tree.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"object {n} in {path} has no <name>")
        if name not in class_index:
            raise DataError(f"unknown class '{name}' in {path}; valid classes are {sorted(class_index)}")
        try:
            bnd = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bnd.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError) as exc:
            raise DataError(f"malformed <bndbox> of a '{name}' object in {path}: {exc}") from exc
        # 1-based inclusive -> continuous: xmax == xmin is a 1-pixel-wide box, xmax < xmin has width <= 0
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        labels.append(class_index[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return {
        "width": width, "height": height,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
    }


class VOCDataset(DetectionRecords):
    """One or several VOC sets concatenated, e.g. ``sets=["VOC2007/trainval", "VOC2012/trainval"]``.

    Each entry of ``sets`` is ``"SUBDIR/split"`` relative to ``root`` (``"split"`` alone when ``root``
    itself holds the VOC folders). Annotations are parsed once at construction.

    ``__getitem__`` returns ``(image [3, h, w] float32, target)`` with target keys ``boxes`` [M, 4]
    (transformed image pixels), ``labels`` [M] (0-based), ``difficult`` [M] bool, ``image_id`` (str),
    ``orig_size`` (H0, W0), ``img_size`` (h, w), ``scale_factor`` [4] = (sx, sy, sx, sy), ``flipped``.

    ``report`` (a ``DataReport``: counter -> count) holds the boxes clipped or dropped and the images
    without objects; ``summary()`` formats it (the engine prints it before training).
    """

    FORMAT = "VOC"

    def __init__(self, root: str, sets: Sequence[str], classes: Sequence[str] = VOC_CLASSES,
                 include_difficult: bool = True, transforms=None):
        if isinstance(sets, str):
            sets = [sets]
        self.root, self.sets = root, list(sets)
        self.classes = tuple(classes)
        self.include_difficult = include_difficult
        self.transforms = transforms
        self.report = DataReport()
        index = {c: i for i, c in enumerate(self.classes)}
        self.records: List[dict] = []
        first_listed: Dict[str, str] = {}  # image id -> split file that listed it first
        for spec in self.sets:
            self.records.extend(self._load_set(spec, index, first_listed))
        self._check_loaded()

    def _load_set(self, spec: str, index: Dict[str, int], first_listed: Dict[str, str]) -> List[dict]:
        subdir, _, split = spec.rpartition("/")
        base = os.path.join(self.root, subdir)
        split_file = os.path.join(base, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(
                f"split file {split_file} not found: set '{spec}' expects {base}/JPEGImages, {base}/Annotations "
                f"and {base}/ImageSets/Main/{split}.txt (the VOC devkit layout)"
                + ("" if os.path.isdir(self.root) else f"; the root {self.root} itself does not exist"))
        with open(split_file, encoding="utf-8-sig") as f:  # a UTF-8 BOM (Windows editors) is not part of an id
            ids = [line.split()[0] for line in f if line.strip()]
        records = []
        for image_id in ids:
            # targets and evaluation identify an image by its id: a repeat would train (and score) it twice
            if image_id in first_listed:
                first = first_listed[image_id]
                raise DataError(f"duplicate image id '{image_id}' in {split_file}: listed twice" if first == split_file
                                else f"duplicate image id '{image_id}': listed in {first} and again in {split_file}")
            first_listed[image_id] = split_file
            xml = os.path.join(base, "Annotations", f"{image_id}.xml")
            ann = parse_voc_xml(xml, index)
            ann["image_id"] = image_id
            ann["path"] = os.path.join(base, "JPEGImages", f"{image_id}.jpg")
            if (ann["width"] <= 0 or ann["height"] <= 0) and os.path.isfile(ann["path"]):
                # <size> missing: decode the image once (a missing one is reported with the others below)
                h, w = read_image(ann["path"]).shape[:2]
                ann["width"], ann["height"] = w, h
            if ann["width"] > 0 and ann["height"] > 0:
                ann["boxes"], keep = repair_boxes(ann["boxes"], ann["width"], ann["height"], self.report, xml)
                ann["labels"], ann["difficult"] = ann["labels"][keep], ann["difficult"][keep]
            if len(ann["labels"]) == 0:
                self.report.add("empty_images", xml)
            records.append(ann)
        return records

    def get_annotation(self, i: int) -> dict:
        """Untransformed ``boxes`` [M, 4], ``labels`` [M], ``difficult`` [M] (numpy): every box kept by the
        bad-input policy (clipped to the image), difficult ones included."""
        r = self.records[i]
        return {"boxes": r["boxes"], "labels": r["labels"], "difficult": r["difficult"]}

    def __getitem__(self, i: int):
        r = self.records[i]
        image = self._read(r)
        keep = np.ones(len(r["labels"]), dtype=bool) if self.include_difficult else ~r["difficult"]
        orig_hw = image.shape[:2]
        image, boxes, labels, difficult, meta = self._transform(
            r, image, r["boxes"][keep], r["labels"][keep], r["difficult"][keep])
        return image, self._target(r, orig_hw, meta, boxes, labels, difficult)
