"""COCO evaluation with pycocotools' COCOeval (bbox and segm): pure functions, no model, no torch needed.

Detections come per image as dicts with ``boxes`` [N, 4] (x1, y1, x2, y2 in original image pixels,
continuous coordinates), ``scores`` [N], ``labels`` [N] (0-based contiguous) and optionally either
``masks`` [N, H0, W0] (bool/uint8, or float probabilities thresholded at 0.5; [N, 1, H0, W0] accepted)
or precomputed ``rles`` (list of N COCO RLE dicts, see ``masks_to_rles``). numpy or torch.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Dict, List, Optional, Sequence

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
IOU_TYPES = ("bbox", "segm")


def _to_numpy(x):
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def masks_to_rles(masks) -> List[dict]:
    """Binary masks [N, H, W] (bool/uint8; float -> ``> 0.5``; [N, 1, H, W] squeezed) -> N compressed
    COCO RLEs ``{"size": [H, W], "counts": str}`` (str, not bytes, so results are JSON-serialisable)."""
    from pycocotools import mask as mask_utils

    m = _to_numpy(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {m.shape}")
    if m.dtype.kind == "f":
        m = m > 0.5
    if len(m) == 0:
        return []
    # pycocotools encodes column-major uint8 [H, W, N]
    rles = mask_utils.encode(np.asfortranarray(m.astype(np.uint8).transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detections_to_coco(dets: Sequence[dict], image_ids: Sequence[int], cat_ids: Sequence[int]) -> List[dict]:
    """Per-image detections -> COCO result dicts ``{image_id, category_id, bbox [x, y, w, h], score}``,
    plus ``segmentation`` (RLE, str counts) when a detection dict has ``masks`` or ``rles``.

    ``image_ids[i]`` is the COCO id of ``dets[i]``; ``cat_ids[label]`` the category id of a label."""
    if len(dets) != len(image_ids):
        raise ValueError(f"{len(dets)} detection dicts for {len(image_ids)} image ids")
    cat_ids = np.asarray(cat_ids, dtype=np.int64)
    results: List[dict] = []
    for d, img_id in zip(dets, image_ids):
        boxes = _to_numpy(d["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(d["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(d["labels"]).astype(np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {img_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(cat_ids)):
            raise ValueError(f"image {img_id}: labels must lie in [0, {len(cat_ids)}), got {labels.min()}..{labels.max()}")
        rles = d.get("rles")
        if rles is None and d.get("masks") is not None:
            rles = masks_to_rles(d["masks"])
        if rles is not None and len(rles) != len(boxes):
            raise ValueError(f"image {img_id}: {len(rles)} masks for {len(boxes)} boxes")
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        cats = cat_ids[labels].tolist()
        for k in range(len(boxes)):
            res = {"image_id": int(img_id), "category_id": cats[k], "bbox": xywh[k], "score": float(scores[k])}
            if rles is not None:
                res["segmentation"] = rles[k]
            results.append(res)
    return results


def _empty_results(coco_gt):
    """A results COCO object with no detections (``COCO.loadRes`` cannot take an empty list)."""
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                   "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


BACKENDS = ("pycocotools", "faster_coco_eval")


def _evaluator(backend: str, coco_gt):
    """(COCOeval class, the ground truth in that backend's COCO type) for ``backend``."""
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        return COCOeval, coco_gt
    if backend != "faster_coco_eval":
        raise ValueError(f"unknown COCO evaluation backend {backend!r}; expected one of {BACKENDS}")
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as exc:
        raise ImportError(f"eval.coco_backend: faster_coco_eval needs the faster-coco-eval package ({exc}); "
                          f"pip install -e \".[coco_fast]\" or use pycocotools") from None
    gt = getattr(coco_gt, "_faster_copy", None)
    if gt is None:  # built once per ground truth (evaluation during training reuses it)
        gt = COCO(copy.deepcopy(coco_gt.dataset))
        coco_gt._faster_copy = gt
    return COCOeval_faster, gt


def per_class_ap(ev, cat_names: Dict[int, str]) -> Dict[str, float]:
    """AP (IoU 0.50:0.95, all areas, 100 detections) of each category from an accumulated COCOeval:
    the mean of its defined precisions; -1.0 for a category without ground truth."""
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        out[cat_names.get(cat_id, str(cat_id))] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return out


def coco_evaluate(coco_gt, results: Sequence[dict], iou_types: Sequence[str] = ("bbox",),
                  img_ids: Optional[Sequence[int]] = None, return_summary: bool = False,
                  backend: str = "pycocotools"):
    """Run COCOeval for each IoU type; returns ``metrics``, or ``(metrics, summaries)`` with ``return_summary``.

    * ``metrics[iou_type]`` = ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as floats in [0, 1]; as in
      pycocotools, ``-1.0`` means undefined (no ground truth in that area range); plus ``per_class``
      (category name -> AP).
    * ``backend``: ``pycocotools`` or ``faster_coco_eval`` (the faster-coco-eval package: the same numbers,
      several times faster).
    * ``summaries[iou_type]``: COCOeval's summary table (12 lines, AP and AR), captured instead of printed.

    ``results`` come from ``detections_to_coco`` (not modified). ``img_ids`` restricts the evaluation to
    those images (default: every image of ``coco_gt``). With no detections at all the evaluation still
    runs (on an empty result set): AP is 0.0 wherever ground truth exists. For ``segm`` the results'
    ``bbox`` is dropped so that COCOeval's small/medium/large split uses the mask area, as mmdetection does.
    """
    evaluator, gt = _evaluator(backend, coco_gt)
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    metrics: Dict[str, Dict[str, float]] = {}
    summaries: Dict[str, str] = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou_type {iou_type!r}; expected one of {IOU_TYPES}")
        if iou_type == "segm":
            no_gt = next((a["id"] for a in coco_gt.dataset["annotations"] if "segmentation" not in a), None)
            if no_gt is not None:
                raise ValueError(f"segm evaluation: ground-truth annotation {no_gt} has no 'segmentation'")
            missing = sum("segmentation" not in r for r in results)
            if missing:
                raise ValueError(f"segm evaluation: {missing} of {len(results)} results have no 'segmentation'")
            # loadRes derives bbox/area from the RLE when there is no bbox
            dts = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        else:
            # loadRes writes id/area/iscrowd into each dict: hand it copies; a box-shaped polygon is added
            # when segmentation is absent, which bbox evaluation ignores
            dts = [dict(r) for r in results]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):  # pycocotools prints progress and the table
            # pycocotools' loadRes cannot take an empty list; faster_coco_eval's can
            coco_dt = gt.loadRes(dts) if dts or backend != "pycocotools" else _empty_results(coco_gt)
            ev = evaluator(gt, coco_dt, iou_type)
            if img_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in img_ids)
            ev.evaluate()
            ev.accumulate()
            table = io.StringIO()
            with contextlib.redirect_stdout(table):
                ev.summarize()
        metrics[iou_type] = {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats[:6])}
        metrics[iou_type]["per_class"] = per_class_ap(ev, names)
        summaries[iou_type] = table.getvalue()
    return (metrics, summaries) if return_summary else metrics
