"""MS COCO detection / instance-segmentation data (also the COCO-format shapes data), on pycocotools.

Layout: set name ``S`` means ``root/annotations/instances_S.json`` with images in ``root/S/`` (or in
``root/<image_dir>/`` for every set when ``image_dir`` is given; the shapes data uses ``"JPEGImages"``).

Conventions
-----------
* Boxes: COCO ``bbox`` is ``[x, y, w, h]`` in continuous pixels (pixel (r, c) covers [c, c+1) x [r, r+1));
  we use ``(x1, y1, x2, y2) = (x, y, x + w, y + h)`` in the same frame, no +1 anywhere.
* Labels: category ids (any integers, possibly non-contiguous) sorted ascending map to labels 0..C-1;
  ``cat_ids[label]`` is the original id, needed to write results back for COCOeval.
* Crowd objects (``iscrowd=1``) are never ground truth: they come as ``ignore_boxes`` (regions where
  detections should neither be rewarded nor punished) and, in ``get_annotation``, as difficult boxes.
* Masks: polygons, uncompressed RLE and compressed RLE are rasterised by ``pycocotools.mask`` to uint8
  [H0, W0] in the original image size, then resized/flipped with the image.

Bad input (the policy of ``datasets/report.py``)
-----------------------------------------------
* Structural problems raise ``DataError`` naming the file, the key and the image / annotation id:
  malformed JSON, a missing top-level key (``images``, ``annotations``, ``categories``), an image without
  ``id``/``file_name``/``width``/``height``, an annotation without ``id``/``image_id``/``category_id``/
  ``bbox`` (or ``segmentation`` when ``with_masks``), a ``bbox`` that is not 4 finite numbers, an unknown
  ``category_id`` or ``image_id``, duplicate category / image / annotation ids in a file, two categories of
  one name in a file, concatenated files that number the classes differently (``check_same_categories``;
  the engine applies it to the test file too), an image id found in two of the concatenated files, an
  ``iscrowd`` other than 0 / 1 (the string ``"0"`` is truthy), and, whenever masks are used (``with_masks``
  for training, ``check_masks`` for a Mask R-CNN test set), a segmentation that is no usable mask
  (``segmentation_problem``: fewer than 3 polygon points, an odd coordinate count, no polygon, an RLE of
  another size, RLE counts that do not add up to height x width or include a negative one, see ``rle.py``).
  Missing image files are one ``FileNotFoundError`` listing them. ``iscrowd`` defaults to 0; a missing
  ``area`` is filled in as ``w * h`` (COCOeval needs it).
* Boxes (crowd regions included) are repaired and counted in ``report``: clipped to the image when
  partly outside, dropped when under 1 px wide or high (``w < 1`` or ``h < 1``, as mmdetection drops from
  real COCO, which holds a few) or when less than 1 px of them lies inside the image. Images without
  objects are kept (and counted). ``coco`` keeps the file as published, so evaluation scores against it.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .base import DetectionRecords
from .report import DataError, DataReport, repair_boxes
from .rle import rle_problem

_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


# The 80 COCO detection categories in category-id order (ids 1-90 with gaps), for configs without a class list
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def segmentation_problem(segm, h: int, w: int) -> Optional[str]:
    """What makes a COCO ``segmentation`` unusable as a mask of an ``h`` x ``w`` image (``None``: nothing):
    polygons must be a non-empty list of lists of finite numbers, an even count of at least 6 each (3 points);
    an RLE needs ``counts`` (a list of integers, or a compressed string) covering exactly ``h * w`` pixels and
    ``size`` equal to ``[h, w]``."""
    if isinstance(segm, list):
        if not segm:
            return "an empty polygon list (no mask)"
        for poly in segm:
            if not (isinstance(poly, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   and math.isfinite(v) for v in poly)):
                return f"a polygon that is not a list of numbers: {str(poly)[:60]}"
            if len(poly) % 2:
                return f"a polygon with an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"a polygon with {len(poly) // 2} point(s); a polygon needs at least 3"
        return None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [h, w]:
            return f"an RLE of size {segm['size']} for an image of [{h}, {w}] (height, width)"
        counts = segm["counts"]
        if not (isinstance(counts, str) or (isinstance(counts, list) and all(isinstance(c, int) for c in counts))):
            return f"RLE counts of type {type(counts).__name__}, expected a list of integers or a string"
        return rle_problem(counts, h, w)  # counts that do not cover the image: garbage or a crash when decoded
    return f"a segmentation of type {type(segm).__name__} (expected polygons or an RLE)"


def _id_of(categories: Dict[str, int], name: str) -> str:
    return f"id {categories[name]}" if name in categories else "absent"


def check_same_categories(ref_path: str, ref: Dict[str, int], path: str, cats: Dict[str, int]) -> None:
    """``cats`` (name -> category id, from ``path``) must equal ``ref`` (from ``ref_path``): labels are category
    ids in sorted order, and evaluation maps them back through the test file's ids, so a file that numbers the
    classes otherwise would score one class as another. The error lists every name whose id differs."""
    if cats == ref:
        return
    diffs = [f"{n!r} is {_id_of(cats, n)} here, {_id_of(ref, n)} there"
             for n in sorted(set(ref) | set(cats)) if ref.get(n) != cats.get(n)]
    raise DataError(f"{path} does not number the classes as {ref_path}: {'; '.join(diffs)}; the files of a run "
                    f"must share categories (same names, same ids)")


def load_coco_json(path: str, with_masks: bool = False):
    """Validated ``pycocotools.coco.COCO`` for ``path`` (see the module docstring for the checks). With
    ``with_masks`` every annotation needs a usable ``segmentation`` (checked here, at start-up)."""
    from pycocotools.coco import COCO

    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed COCO annotation file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"COCO annotation file {path} must hold a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"COCO annotation file {path}: missing or non-list key '{key}'")
    for cat in data["categories"]:
        for key in ("id", "name"):
            if key not in cat:
                raise DataError(f"COCO annotation file {path}: a category lacks key '{key}': {cat}")
    named = {}  # name -> first category id: one class name must be one class
    for cat in data["categories"]:
        if cat["name"] in named and named[cat["name"]] != cat["id"]:
            first, name = named[cat["name"]], cat["name"]
            raise DataError(f"COCO annotation file {path}: categories {first!r} and {cat['id']!r} are both named "
                            f"{name!r}; class names must be distinct (give their annotations one category_id, or "
                            f"rename one)")
        named.setdefault(cat["name"], cat["id"])
    for img in data["images"]:
        for key in _IMAGE_KEYS:
            if key not in img:
                raise DataError(f"COCO annotation file {path}: image {img.get('id', '?')} lacks key '{key}'")
        if not (isinstance(img["width"], int) and isinstance(img["height"], int)
                and img["width"] > 0 and img["height"] > 0):
            raise DataError(f"COCO annotation file {path}: image {img['id']} has 'width'/'height' "
                            f"{img['width']!r}/{img['height']!r}, expected positive integers")
    keys = _ANN_KEYS + (("segmentation",) if with_masks else ())
    for ann in data["annotations"]:
        for key in keys:
            if key not in ann:
                raise DataError(f"COCO annotation file {path}: annotation {ann.get('id', '?')} lacks key '{key}'")
        bbox = ann["bbox"]
        # json accepts NaN / Infinity; no repair makes sense of them
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            raise DataError(f"COCO annotation file {path}: annotation {ann['id']!r} has 'bbox' {bbox!r}, "
                            f"expected [x, y, w, h]")
        ann.setdefault("iscrowd", 0)
        if ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], (str, float)):
            # "0" as a string is truthy: it would make the object a crowd region
            raise DataError(f"COCO annotation file {path}: annotation {ann['id']!r} has 'iscrowd' "
                            f"{ann['iscrowd']!r}, expected 0 or 1")
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
    for kind, items in (("category", data["categories"]), ("image", data["images"]),
                        ("annotation", data["annotations"])):
        ids = [x["id"] for x in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"COCO annotation file {path}: duplicate {kind} id {dup}")
    cat_set, img_set = {c["id"] for c in data["categories"]}, {i["id"] for i in data["images"]}
    for ann in data["annotations"]:
        if ann["category_id"] not in cat_set:
            raise DataError(f"COCO annotation file {path}: annotation {ann['id']!r} has category_id "
                            f"{ann['category_id']!r}, not among the categories {sorted(cat_set, key=repr)}")
        if ann["image_id"] not in img_set:
            raise DataError(f"COCO annotation file {path}: annotation {ann['id']!r} has image_id "
                            f"{ann['image_id']!r}, not among the images")
    if with_masks:
        size = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
        for ann in data["annotations"]:
            problem = segmentation_problem(ann["segmentation"], *size[ann["image_id"]])
            if problem:
                raise DataError(f"COCO annotation file {path}: annotation {ann['id']!r} (image {ann['image_id']!r}) "
                                f"has {problem}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


def ann_to_mask(segm, h: int, w: int, where: str = "") -> np.ndarray:
    """Polygon list, uncompressed RLE or compressed RLE -> uint8 [h, w] (1 inside)."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):  # polygons: one RLE per part, merged into one mask
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w)) if segm else None
        if rle is None:
            return np.zeros((h, w), np.uint8)
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [h, w]:
            raise ValueError(f"RLE size {segm['size']} != image size [{h}, {w}] {where}")
        rle = mask_utils.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm
    else:
        raise ValueError(f"unsupported segmentation {type(segm).__name__} {where}")
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


class COCODataset(DetectionRecords):
    """One or several COCO-format sets (same categories), e.g. ``sets=["train2017"]``.

    ``__getitem__`` returns ``(image [3, h, w] float32, target)`` with target keys, as ``VOCDataset``:
    ``boxes`` [M, 4] float32 (transformed image pixels, x1y1x2y2), ``labels`` [M] int64 (0-based),
    ``difficult`` [M] bool (all False), ``image_id`` (int, the COCO id), ``orig_size`` (H0, W0),
    ``img_size`` (h, w), ``scale_factor`` [4] = (sx, sy, sx, sy), ``flipped``; plus ``ignore_boxes``
    [R, 4] float32 (crowd regions, transformed pixels; [0, 4] when none) and, when ``with_masks``,
    ``masks`` uint8 [M, h, w] aligned with ``boxes``.

    ``classes``: optional expected category names, in category-id order; a mismatch is an error.
    Evaluation with ``coco`` is supported for a single set only.

    ``report`` (a ``DataReport``: counter -> count) holds the boxes clipped or dropped and the images
    without objects; ``summary()`` formats it (the engine prints it before training).
    """

    FORMAT = "COCO"

    def __init__(self, root: str, sets: Sequence[str], image_dir: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None, with_masks: bool = False, transforms=None,
                 check_masks: bool = False):
        if isinstance(sets, str):
            sets = [sets]
        if not sets:
            raise ValueError("COCODataset needs at least one set name")
        self.root, self.sets, self.image_dir = root, list(sets), image_dir
        self.with_masks, self.transforms = with_masks, transforms
        self._cocos, self.records, self.report, self.files = [], [], DataReport(), []
        self.categories: Dict[str, int] = {}  # name -> category id, the same in every file
        first_file = {}  # image id -> annotation file that holds it
        for s in self.sets:
            path = os.path.join(root, "annotations", f"instances_{s}.json")
            # masks are checked whenever they will be used: decoded for training, or scored by segm evaluation
            coco = load_coco_json(path, with_masks or check_masks)
            cats = {c["name"]: c["id"] for c in coco.dataset["categories"]}
            if self.files:
                check_same_categories(self.files[0], self.categories, path, cats)
            self.categories = cats
            self.files.append(path)
            # targets carry the image id: across files it must still name one image
            for img_id in coco.imgs:
                if img_id in first_file:
                    raise DataError(f"duplicate image id {img_id}: in {first_file[img_id]} and again in {path}")
                first_file[img_id] = path
            self._cocos.append(coco)
            self.records.extend(self._load_set(coco, path, os.path.join(root, image_dir or s), len(self._cocos) - 1))
        categories = sorted((i, n) for n, i in self.categories.items())
        self.cat_ids: List[int] = [c for c, _ in categories]
        names = tuple(n for _, n in categories)
        if classes is not None and tuple(classes) != names:
            raise DataError(f"classes {list(classes)} do not match the categories of {self.sets} "
                            f"(names in category-id order): {list(names)}")
        self.classes = names
        self._check_loaded()

    def _load_set(self, coco, path: str, image_dir: str, set_index: int) -> List[dict]:
        label_of = {c: i for i, c in enumerate(sorted(coco.cats))}
        records = []
        for img_id in sorted(coco.imgs):
            img = coco.imgs[img_id]
            w0, h0 = int(img["width"]), int(img["height"])
            anns = coco.imgToAnns.get(img_id, [])
            xyxy = [[x, y, x + w, y + h] for x, y, w, h in ((float(v) for v in a["bbox"]) for a in anns)]
            boxes, keep = repair_boxes(xyxy, w0, h0, self.report, path, [f"annotation {a['id']}" for a in anns])
            kept = [anns[k] for k in keep]
            crowd = np.array([bool(a["iscrowd"]) for a in kept], dtype=bool)
            labels = np.array([label_of[a["category_id"]] for a in kept], dtype=np.int64)
            if not (~crowd).any():  # crowd regions are not objects: they only mark where not to score
                self.report.add("empty_images", path, f"image {img_id}")
            records.append({
                "image_id": img_id, "path": os.path.join(image_dir, img["file_name"]), "width": w0, "height": h0,
                "boxes": boxes[~crowd].reshape(-1, 4), "labels": labels[~crowd],
                "ignore_boxes": boxes[crowd].reshape(-1, 4), "ignore_labels": labels[crowd],
                "ann_ids": [a["id"] for a, c in zip(kept, crowd) if not c], "set": set_index,
            })
        return records

    def check_same_categories(self, other: "COCODataset") -> None:
        """``other`` (the test set of a run training on this one) gives every class this set's category id."""
        check_same_categories(self.files[0], self.categories, other.files[0], other.categories)

    @property
    def coco(self):
        """The ``pycocotools.coco.COCO`` ground truth, for COCOeval (single set only)."""
        if len(self._cocos) != 1:
            raise ValueError(f"COCO evaluation needs a single set; this dataset concatenates {self.sets}")
        return self._cocos[0]

    @property
    def image_ids(self) -> List[int]:
        """COCO image id of each index."""
        return [r["image_id"] for r in self.records]

    def get_annotation(self, i: int) -> dict:
        """Untransformed numpy ``boxes`` [M+R, 4], ``labels``, ``difficult`` for VOC-style mAP.

        Crowd regions are appended as difficult boxes (label of their category), so a detection on a
        crowd counts as neither TP nor FP there, as for the VOC-format shapes data; ``ignore_boxes``
        [R, 4] lists them again."""
        r = self.records[i]
        return {
            "boxes": np.concatenate([r["boxes"], r["ignore_boxes"]]),
            "labels": np.concatenate([r["labels"], r["ignore_labels"]]),
            "difficult": np.concatenate([np.zeros(len(r["boxes"]), bool), np.ones(len(r["ignore_boxes"]), bool)]),
            "ignore_boxes": r["ignore_boxes"],
        }

    def _masks(self, r: dict) -> np.ndarray:
        coco = self._cocos[r["set"]]
        h0, w0 = r["height"], r["width"]
        masks = [ann_to_mask(coco.anns[a]["segmentation"], h0, w0, f"(annotation {a} of {r['path']})")
                 for a in r["ann_ids"]]
        return np.stack(masks) if masks else np.zeros((0, h0, w0), np.uint8)

    def __getitem__(self, i: int):
        r = self.records[i]
        image = self._read(r)
        orig_hw = image.shape[:2]
        extra = {"ignore_boxes": r["ignore_boxes"]}
        if self.with_masks:
            extra["masks"] = self._masks(r)
        image, boxes, labels, _, meta = self._transform(r, image, r["boxes"], r["labels"], None, **extra)
        target = self._target(r, orig_hw, meta, boxes, labels, None)
        target["ignore_boxes"] = torch.as_tensor(np.asarray(meta["ignore_boxes"], dtype=np.float32).reshape(-1, 4))
        if "masks" in meta:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(meta["masks"], dtype=np.uint8))
        return image, target
