"""Deterministic synthetic "shapes" detection data, written in the real VOC and COCO formats.

Every image gets a textured background (colour gradient, optional stripes, noise) and
objects of the classes ``circle`` (an axis-aligned ellipse), ``rectangle`` (axis-aligned)
and ``triangle`` (randomly rotated).  Each object is a polygon; the drawn pixels are
exactly the pycocotools rasterisation of that polygon (filled shapes) or of the polygon minus
its inward offset (outlined shapes), so the COCO segmentation describes what was drawn.

Coordinate conventions
----------------------
* Polygons, COCO ``bbox`` ([x, y, w, h]) and ``area`` use continuous pixel coordinates:
  pixel ``(row r, col c)`` covers ``[c, c + 1) x [r, r + 1)``.  ``bbox`` is the exact
  polygon bounds; ``area`` the polygon (shoelace) area, or the mask pixel count for
  crowd objects.
* VOC XML holds 1-based inclusive integer pixels: ``xmin = floor(x1) + 1``,
  ``ymin = floor(y1) + 1``, ``xmax = ceil(x2)``, ``ymax = ceil(y2)``, i.e. the first and
  last pixel the polygon touches.  Hence ``xmin - 1 == floor(x1)`` and ``xmax == ceil(x2)``.
* Objects never leave the image (``truncated`` is always 0).  Objects whose shorter box
  side is below ``10 / 128`` of the shorter image side get ``difficult=1``; crowd
  objects (only when ``crowd_fraction > 0``) are also marked difficult in VOC.
* COCO annotations carry a non-standard ``attributes`` dict ``{"filled", "color"}``
  (RGB), which pycocotools ignores; tests use it to check the masks.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from .shapes_root import META_FILE, claim

SHAPE_KINDS = ("circle", "rectangle", "triangle")
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
_MIN_VISIBLE = 0.4  # reject a placement that would leave an earlier object <40% visible
_DIFFICULT_REL = 10.0 / 128.0  # shorter box side below this * min(H, W) -> difficult
_TINY_REL = 6.0 / 128.0  # smallest object side relative to min(H, W)
_MAX_REL = 0.6  # largest object side relative to min(H, W)


def make_shapes(root, num_train=1000, num_val=100, num_test=300, image_size=128,
                classes=SHAPE_KINDS, seed=0, min_objects=1, max_objects=6,
                empty_test_fraction=0.02, crowd_fraction=0.0, tiny_fraction=0.1,
                jpeg_quality=95, remedy="choose another root (an empty or new folder)") -> dict:
    """Generate (or reuse) the shapes dataset under ``root``; returns a summary dict.

    ``image_size`` is an int or ``(H, W)``.  ``classes`` is an ordered subset of
    ``SHAPE_KINDS``; COCO category ids are ``1, 3, 5, ...`` in that order (deliberately
    non-contiguous).  Train and val images always hold ``min_objects..max_objects``
    objects; ``max(1, round(empty_test_fraction * num_test))`` test images are empty
    (when the fraction is > 0).  ``root`` must be missing, empty or the generator's own
    (``shapes_root.claim``): generation is skipped when ``root/shapes_meta.json`` records a
    complete run of identical parameters (``summary["generated"] is False``); other
    parameters, or files the generator did not write, raise ``DataError`` naming ``root``
    and ending in ``remedy``.  The marker is written first and completed last, so an
    interrupted run is regenerated on the next call with the same parameters.
    """
    params = _normalise_params({k: v for k, v in locals().items() if k != "remedy"})
    meta = claim(str(root), params, remedy)
    if meta is not None:
        return dict(meta["summary"], root=str(root), generated=False)
    meta_path = os.path.join(root, META_FILE)
    os.makedirs(root, exist_ok=True)
    _write_json(meta_path, {"params": params, "complete": False})
    start = time.perf_counter()
    summary = _generate(root, params)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(meta_path, {"params": params, "complete": True, "summary": summary})
    return dict(summary, root=str(root), generated=True)


def render_scene(seed: int, index: int, image_size=128, classes=SHAPE_KINDS, min_objects=1, max_objects=6,
                 tiny_fraction=0.1):
    """One synthetic image, in memory, drawn as ``make_shapes`` draws its images: ``(image uint8 [H, W, 3] RGB,
    boxes float32 [M, 4] (x1, y1, x2, y2 pixels), labels int64 [M] indexing ``classes``)``. Deterministic in
    ``(seed, index)``; a seed other than the detection data's gives images the detector never sees."""
    p = _normalise_params(dict(num_train=0, num_val=0, num_test=0, image_size=image_size, classes=classes, seed=seed,
                               min_objects=min_objects, max_objects=max_objects, empty_test_fraction=0.0,
                               crowd_fraction=0.0, tiny_fraction=tiny_fraction, jpeg_quality=95))
    img, objects = _render_image(np.random.default_rng([seed, 7, index]), p)
    boxes = np.array([o["bbox"] for o in objects], np.float32).reshape(-1, 4)
    return img, boxes, np.array([o["label"] for o in objects], np.int64)


def _normalise_params(args: dict) -> dict:
    size = args["image_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    classes = [str(c) for c in args["classes"]]
    unknown = [c for c in classes if c not in SHAPE_KINDS]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {SHAPE_KINDS}, got {classes}")
    if not 1 <= args["min_objects"] <= args["max_objects"]:
        raise ValueError("need 1 <= min_objects <= max_objects")
    if min(h, w) < 16:
        raise ValueError(f"image_size must be at least 16 px, got {(h, w)}")
    params = {k: args[k] for k in ("num_train", "num_val", "num_test", "seed", "min_objects",
                                   "max_objects", "jpeg_quality")}
    params = {k: int(v) for k, v in params.items()}
    params.update(image_size=[h, w], classes=classes, version=FORMAT_VERSION,
                  empty_test_fraction=float(args["empty_test_fraction"]),
                  crowd_fraction=float(args["crowd_fraction"]),
                  tiny_fraction=float(args["tiny_fraction"]))
    return params


def _generate(root, p) -> dict:
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main"), "annotations"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    counts = {"train": p["num_train"], "val": p["num_val"], "test": p["num_test"]}
    categories = [{"id": 2 * i + 1, "name": c, "supercategory": "shape"}
                  for i, c in enumerate(p["classes"])]
    summary = {"images": {}, "objects": {}, "difficult": 0, "empty_images": 0,
               "classes": p["classes"], "category_ids": [c["id"] for c in categories]}
    split_ids, next_id = {}, 1
    for split_idx, split in enumerate(SPLITS):
        empty = _empty_indices(p, split_idx, split, counts[split])
        coco = {"info": {"description": "synthetic shapes", "version": "1.0"},
                "licenses": [], "images": [], "annotations": [], "categories": categories}
        ids = []
        for i in range(counts[split]):
            rng = np.random.default_rng([p["seed"], split_idx, i])
            img, objects = _render_image(rng, p, 0 if i in empty else None)
            image_id = f"{next_id:06d}"
            _write_image(root, image_id, img, p["jpeg_quality"])
            _write_voc_xml(root, image_id, img.shape, objects, p["classes"])
            _add_coco(coco, next_id, image_id, img.shape, objects, categories)
            summary["difficult"] += sum(o["difficult"] or o["crowd"] for o in objects)
            summary["empty_images"] += not objects
            ids.append(image_id)
            next_id += 1
        split_ids[split] = ids
        summary["images"][split] = len(ids)
        summary["objects"][split] = len(coco["annotations"])
        _write_json(os.path.join(root, "annotations", f"instances_{split}.json"), coco)
    split_ids["trainval"] = split_ids["train"] + split_ids["val"]
    for split, ids in split_ids.items():
        path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
        with open(path, "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    return summary


def _empty_indices(p, split_idx, split, n) -> set:
    if split != "test" or n == 0 or p["empty_test_fraction"] <= 0:
        return set()
    k = min(n, max(1, round(p["empty_test_fraction"] * n)))
    rng = np.random.default_rng([p["seed"], split_idx, 2**31])
    return {int(i) for i in rng.choice(n, size=k, replace=False)}


# ----------------------------------------------------------------------------- rendering
def _render_image(rng, p, num_objects=None):
    """Returns ``(image uint8 [H, W, 3] RGB, list of object dicts)``."""
    h, w = p["image_size"]
    img = _background(rng, h, w)
    if num_objects is None:
        num_objects = int(rng.integers(p["min_objects"], p["max_objects"] + 1))
    owner = np.full((h, w), -1, np.int16)  # index of the object that owns each pixel
    objects, drawn = [], []
    while len(objects) < num_objects:
        tries = 300 if len(objects) < p["min_objects"] else 30
        obj = _place_object(rng, p, owner, drawn, tries)
        if obj is None:
            if len(objects) >= p["min_objects"]:
                break
            raise RuntimeError("could not place the minimum number of objects")
        obj["color"] = _contrasting_colour(rng, img[obj["drawn"]])
        img[obj["drawn"]] = obj["color"]
        owner[obj["drawn"]] = len(objects)
        drawn.append(int(obj.pop("drawn").sum()))
        obj["crowd"] = bool(rng.random() < p["crowd_fraction"])
        objects.append(obj)
    return img, objects


@functools.lru_cache(maxsize=4)
def _grid(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _background(rng, h, w):
    """Smooth two-colour gradient, optional low-amplitude stripes, Gaussian noise."""
    yy, xx = _grid(h, w)
    theta = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    img = c0 + (c1 - c0) * t[..., None]
    if rng.random() < 0.5:
        phi, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
        wave = np.sin(2 * math.pi * (xx * math.cos(phi) + yy * math.sin(phi)) / period)
        img += rng.uniform(4, 16) * wave[..., None] * rng.uniform(0.3, 1.0, 3).astype(np.float32)
    img += rng.uniform(1.5, 6) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _place_object(rng, p, owner, drawn, tries):
    """Samples shape, size and position until no earlier object drops below
    ``_MIN_VISIBLE`` visibility; returns an object dict (with masks) or None."""
    h, w = p["image_size"]
    side = min(h, w)
    visible = np.bincount(owner[owner >= 0], minlength=len(drawn))
    for _ in range(tries):
        label = int(rng.integers(len(p["classes"])))
        kind = p["classes"][label]
        poly = _shape_polygon(rng, kind, _sample_short_side(rng, p, side))
        size = poly.max(0)
        if size[0] > w or size[1] > h:
            continue
        poly = np.round(poly + rng.uniform(0, 1, 2) * (w - size[0], h - size[1]), 2)
        mask = _poly_mask(poly, h, w)
        filled, drawn_mask = _outline_or_fill(rng, poly, mask, h, w)
        if not drawn_mask.any():
            continue
        hidden = owner[drawn_mask]
        lost = np.bincount(hidden[hidden >= 0], minlength=len(drawn))
        if np.any(visible - lost < _MIN_VISIBLE * np.asarray(drawn)):
            continue
        x1, y1 = poly.min(0)
        x2, y2 = poly.max(0)
        return {"label": label, "polygon": poly, "bbox": (x1, y1, x2, y2), "filled": filled,
                "difficult": bool(min(x2 - x1, y2 - y1) < _DIFFICULT_REL * side),
                "drawn": drawn_mask}
    return None


def _sample_short_side(rng, p, side):
    """Mostly log-uniform sizes, plus a ``tiny_fraction`` of sub-difficult-size objects."""
    tiny, small, large = max(2.0, _TINY_REL * side), _DIFFICULT_REL * side, _MAX_REL * side
    if rng.random() < p["tiny_fraction"]:
        return rng.uniform(tiny, small)
    return math.exp(rng.uniform(math.log(small), math.log(large / 1.3)))


def _shape_polygon(rng, kind, short):
    """Polygon ``[K, 2]`` (x, y) of the given shape with its bounding box at the origin."""
    if kind == "circle":
        a, b = short / 2, short * rng.uniform(1.0, 1.6) / 2
        if rng.random() < 0.5:
            a, b = b, a
        n = int(np.clip(math.pi * (a + b) / 2, 16, 48))
        ang = np.linspace(0, 2 * math.pi, n, endpoint=False)
        pts = np.stack([a * np.cos(ang), b * np.sin(ang)], 1)
    elif kind == "rectangle":
        rw, rh = short, short * rng.uniform(1.0, 2.5)
        if rng.random() < 0.5:
            rw, rh = rh, rw
        pts = np.array([[0, 0], [rw, 0], [rw, rh], [0, rh]], np.float64)
    else:
        base, height = short * rng.uniform(1.0, 2.0), short
        apex = rng.uniform(0.15, 0.85) * base
        pts = np.array([[0, 0], [base, 0], [apex, height]], np.float64)
        ang = rng.uniform(0, 2 * math.pi)
        rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        pts = pts @ rot.T
    return pts - pts.min(0)


def _poly_mask(poly, h, w):
    """Polygon rasterised by pycocotools (bool ``[H, W]``), so a filled object's drawn
    pixels equal ``COCO.annToMask`` of its annotation exactly."""
    from pycocotools import mask as mask_utils  # lazy: only generation needs it

    rle = mask_utils.frPyObjects([poly.reshape(-1).tolist()], h, w)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def _outline_or_fill(rng, poly, mask, h, w):
    """Decides filled vs outlined; an outline is the polygon minus its inward offset so
    that every drawn pixel lies inside the annotated polygon."""
    x1, y1 = poly.min(0)
    x2, y2 = poly.max(0)
    short = min(x2 - x1, y2 - y1)
    if short < 12 or rng.random() < 0.6:
        return True, mask
    thickness = max(2.0, short * rng.uniform(0.08, 0.18))
    inner = _inset_convex(poly, thickness)
    if inner is None:
        return True, mask
    return False, mask & ~_poly_mask(inner, h, w)


def _inset_convex(poly, d):
    """Offsets every edge of a convex polygon inwards by ``d``; None if it collapses."""
    area2 = _signed_area(poly) * 2
    p0, p1 = poly, np.roll(poly, -1, 0)
    edge = p1 - p0
    normal = np.stack([-edge[:, 1], edge[:, 0]], 1) * np.sign(area2)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    q0 = p0 + d * normal  # each offset edge: point q0 + s * edge
    prev_q, prev_e = np.roll(q0, 1, 0), np.roll(edge, 1, 0)
    cross = prev_e[:, 0] * edge[:, 1] - prev_e[:, 1] * edge[:, 0]
    diff = q0 - prev_q
    s = (diff[:, 0] * edge[:, 1] - diff[:, 1] * edge[:, 0]) / cross
    inner = prev_q + s[:, None] * prev_e
    # a collapsed offset flips orientation or shrinks to (near) nothing
    inner_area2 = _signed_area(inner) * 2
    if np.sign(inner_area2) != np.sign(area2) or abs(inner_area2) < 0.05 * abs(area2):
        return None
    return inner


def _signed_area(poly):
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _contrasting_colour(rng, pixels):
    """Random RGB colour far (L2 > 120) from the mean of the pixels it will cover."""
    ref = pixels.reshape(-1, 3).mean(0)
    cands = rng.integers(0, 256, (16, 3))
    dist = np.linalg.norm(cands - ref, axis=1)
    ok = np.nonzero(dist > 120)[0]
    return tuple(int(v) for v in cands[ok[0] if len(ok) else int(dist.argmax())])


# ------------------------------------------------------------------------------- writing
def _write_image(root, image_id, img, quality):
    path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
    if not cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
        raise OSError(f"cv2 could not write {path}")


def _voc_box(bbox):
    x1, y1, x2, y2 = bbox
    return math.floor(x1) + 1, math.floor(y1) + 1, math.ceil(x2), math.ceil(y2)


def _write_voc_xml(root, image_id, shape, objects, classes):
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "shapes"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    ET.SubElement(ET.SubElement(ann, "source"), "database").text = "Synthetic shapes"
    size = ET.SubElement(ann, "size")
    for tag, val in (("width", shape[1]), ("height", shape[0]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(val)
    ET.SubElement(ann, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(ann, "object")
        ET.SubElement(node, "name").text = classes[obj["label"]]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(obj["difficult"] or obj["crowd"]))
        box = ET.SubElement(node, "bndbox")
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), _voc_box(obj["bbox"])):
            ET.SubElement(box, tag).text = str(val)
    ET.indent(ann)
    path = os.path.join(root, "Annotations", f"{image_id}.xml")
    ET.ElementTree(ann).write(path, encoding="utf-8", xml_declaration=False)


def _add_coco(coco, coco_id, image_id, shape, objects, categories):
    h, w = shape[:2]
    coco["images"].append({"id": coco_id, "file_name": f"{image_id}.jpg",
                           "width": int(w), "height": int(h)})
    for obj in objects:
        x1, y1, x2, y2 = (float(v) for v in obj["bbox"])
        ann = {"id": len(coco["annotations"]) + 1, "image_id": coco_id,
               "category_id": categories[obj["label"]]["id"],
               "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
               "iscrowd": int(obj["crowd"]),
               "attributes": {"filled": obj["filled"], "color": list(obj["color"])}}
        if obj["crowd"]:
            mask = _poly_mask(obj["polygon"], h, w)
            ann["segmentation"] = _uncompressed_rle(mask)
            ann["area"] = float(mask.sum())
        else:
            ann["segmentation"] = [[round(float(v), 2) for v in obj["polygon"].reshape(-1)]]
            ann["area"] = round(abs(_signed_area(obj["polygon"])), 2)
        coco["annotations"].append(ann)


def _uncompressed_rle(mask):
    """COCO uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"counts": runs, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _write_json(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, separators=(",", ":")))  # dumps uses the C encoder
    os.replace(tmp, path)
