"""Paired bootstrap of COCO box AP (IoU 0.50:0.95, all areas, 100 detections per image) over test images.

As for VOC (``bootstrap.py``): COCOeval matches detections to ground truth per image and category, so one
``evaluate()`` gives every match; a resample of images with replacement only re-weights each image by how
often it was drawn. ``accumulate()`` is then redone as weighted cumulative sums over the same
score-ordered detections, for B resamples at once: per category and IoU threshold the weighted true and
false positive counts, recall against the weighted number of non-ignored ground truths, the precision
envelope, and its value at COCO's 101 recall points. With every image drawn once this is COCOeval's AP; an
image drawn k times counts as k copies (categories without ground truth in a resample are left out, as
COCOeval's -1 entries are).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Dict, List, Sequence

import numpy as np
import torch

REC_THRS = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)


def gt_for_bootstrap(coco_gt, image_ids: Sequence[int]) -> Dict:
    """The ground truth a bootstrap needs, without masks: images, categories and box annotations of
    ``image_ids`` (a small, self-contained copy for ``detections.pkl``)."""
    keep = set(int(i) for i in image_ids)
    anns = [{k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd") if k in a}
            for a in coco_gt.dataset["annotations"] if a["image_id"] in keep]
    return {"images": [im for im in coco_gt.dataset["images"] if im["id"] in keep], "annotations": anns,
            "categories": copy.deepcopy(coco_gt.dataset["categories"])}


def match_coco(gt: Dict, results: Sequence[Dict]) -> Dict:
    """COCOeval's per-image matches of box ``results`` (COCO results dicts) against ``gt`` (a COCO-format
    dict), gathered per category: for each, the score-ordered image index [D], matched flags [T, D] and
    ignore flags [T, D] of its detections (top 100 per image), and the non-ignored ground truths per image
    [N]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detection.evaluation.coco import _empty_results

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        # no detections: every category's AP is 0
        coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_results(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
    p = ev.params
    img_index = {img_id: i for i, img_id in enumerate(p.imgIds)}
    n_img, max_det = len(p.imgIds), p.maxDets[-1]
    cats: List[Dict] = []
    for k in range(len(p.catIds)):
        entries = [ev.evalImgs[k * len(p.areaRng) * n_img + i] for i in range(n_img)]  # area "all"
        entries = [e for e in entries if e is not None]
        npos = np.zeros(n_img, np.int64)
        scores, imgs, matched, ignored = [], [], [], []
        for e in entries:
            i = img_index[e["image_id"]]
            npos[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            scores.append(np.asarray(e["dtScores"][:max_det]))
            imgs.append(np.full(len(scores[-1]), i))
            matched.append(np.asarray(e["dtMatches"])[:, :max_det] > 0)
            ignored.append(np.asarray(e["dtIgnore"])[:, :max_det].astype(bool))
        t = len(p.iouThrs)
        if scores:
            s = np.concatenate(scores)
            order = np.argsort(-s, kind="mergesort")  # COCOeval's order
            cats.append({"img": np.concatenate(imgs)[order], "matched": np.concatenate(matched, 1)[:, order],
                         "ignored": np.concatenate(ignored, 1)[:, order], "npos": npos})
        else:
            cats.append({"img": np.zeros(0, np.int64), "matched": np.zeros((t, 0), bool),
                         "ignored": np.zeros((t, 0), bool), "npos": npos})
    return {"categories": cats, "images": n_img}


def resampled_ap(match: Dict, counts: torch.Tensor) -> torch.Tensor:
    """COCO AP of each resample: ``counts`` [B, N] draws per image -> [B]."""
    counts = counts.double()
    b = counts.shape[0]
    total, defined = torch.zeros(b, dtype=torch.float64), torch.zeros(b, dtype=torch.float64)
    for cat in match["categories"]:
        pos = counts @ torch.as_tensor(cat["npos"], dtype=torch.float64)  # [B]
        w = counts[:, torch.as_tensor(cat["img"], dtype=torch.long)]  # [B, D]
        keep = torch.as_tensor(~cat["ignored"], dtype=torch.float64)  # [T, D]
        hit = torch.as_tensor(cat["matched"], dtype=torch.float64)
        tp = (w[:, None, :] * (hit * keep)[None]).cumsum(-1)  # [B, T, D]
        fp = (w[:, None, :] * ((1 - hit) * keep)[None]).cumsum(-1)
        t = tp.shape[1]
        if tp.shape[-1]:
            rec = tp / pos.clamp(min=1)[:, None, None]
            prec = tp / (tp + fp).clamp(min=np.spacing(1))
            env = prec.flip(-1).cummax(-1).values.flip(-1)
            idx = torch.searchsorted(rec.contiguous(), REC_THRS.expand(b, t, 101).contiguous(), side="left")
            q = torch.cat([env, env.new_zeros(b, t, 1)], -1).gather(-1, idx)  # past the last recall: 0
            ap = q.mean((1, 2))
        else:
            ap = torch.zeros(b, dtype=torch.float64)
        has = pos > 0
        total += torch.where(has, ap, torch.zeros_like(ap))
        defined += has.double()
    return total / defined.clamp(min=1)
