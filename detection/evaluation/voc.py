"""PASCAL VOC mean average precision (mAP), vectorised with numpy.

Conventions (VOC devkit, ``VOCevaldet.m`` / ``voc_eval.py``), applied per class:

* All detections of the class over all images are sorted by score, descending.
  The sort is stable: equal scores keep input order (image order, then the
  order inside the image). The devkit uses an unstable sort here.
* Each detection looks only at the gts of its own image and class, difficult
  ones included, and picks the one with the highest IoU (first in annotation
  order on ties). It never falls back to the second-best gt.
* IoU >= ``iou_thr`` (the devkit uses ``>``; mmdetection ``>=``; we use ``>=``):
  best gt difficult -> detection ignored (neither TP nor FP); best gt not yet
  matched -> TP and the gt becomes matched; already matched -> FP (duplicate).
  IoU < ``iou_thr`` or no gt in the image -> FP.
* Recall denominator: the number of non-difficult gts of the class.
* ``legacy_coords=True``: widths/heights/intersections are ``x2 - x1 + 1``
  (devkit pixel convention); ``False``: continuous ``x2 - x1``.
* ``"11point"`` (VOC2007): mean over t in {0, 0.1, ..., 1} of the maximum
  precision at recall >= t (0 if none). The thresholds are exactly ``k / 10``;
  the Python devkit's ``np.arange(0, 1.1, 0.1)`` yields 0.30000000000000004,
  0.6000000000000001, 0.7000000000000001, so a recall of exactly 0.3/0.6/0.7
  misses that threshold there but not here.
* ``"area"`` (VOC2010+): area under the monotone (right-to-left max) precision
  envelope, summed over every point where recall changes.
"""
import warnings

import numpy as np

_EPS = np.finfo(np.float64).eps
_METRICS = ("11point", "area")


def _to_numpy(x):
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _boxes(x, kind, idx):
    b = _to_numpy(x).astype(np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{kind}[{idx}]['boxes'] must be shaped [N, 4], got {b.shape}")
    return b


def _labels(x, n, kind, idx, num_classes):
    lab = _to_numpy(x).reshape(-1)
    if lab.shape[0] != n:
        raise ValueError(f"{kind}[{idx}]: {lab.shape[0]} labels for {n} boxes")
    bad = lab[(lab < 0) | (lab >= num_classes) | (lab != np.round(lab))]
    if bad.size:
        raise ValueError(f"{kind}[{idx}] (image {idx}): label {bad[0]} "
                         f"not in [0, {num_classes})")
    return lab.astype(np.int64)


def _per_box(values, dtype, n: int, where: str, what: str) -> np.ndarray:
    """One value per box as a flat array, or an error naming the image and the counts."""
    arr = _to_numpy(values).astype(dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{where}: {arr.shape[0]} {what} for {n} boxes")
    return arr


def _append(out: dict, i: int, boxes, labels, extra: str, values) -> None:
    out["boxes"].append(boxes)
    out["labels"].append(labels)
    out[extra].append(values)
    out["img"].append(np.full(len(boxes), i, dtype=np.int64))


def _gather(detections, annotations, num_classes):
    """Concatenate per-image inputs into flat arrays tagged with image index."""
    det = {"boxes": [], "scores": [], "labels": [], "img": []}
    gt = {"boxes": [], "labels": [], "difficult": [], "img": []}
    for i, (d, a) in enumerate(zip(detections, annotations)):
        boxes = _boxes(d["boxes"], "detections", i)
        scores = _per_box(d["scores"], np.float64, len(boxes), f"detections[{i}]", "scores")
        _append(det, i, boxes, _labels(d["labels"], len(boxes), "detections", i, num_classes), "scores", scores)
        gboxes = _boxes(a["boxes"], "annotations", i)
        diff = a.get("difficult")
        diff = (np.zeros(len(gboxes), bool) if diff is None
                else _per_box(diff, bool, len(gboxes), f"annotations[{i}]", "difficult flags"))
        _append(gt, i, gboxes, _labels(a["labels"], len(gboxes), "annotations", i, num_classes), "difficult", diff)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64),
             "difficult": np.zeros(0, bool), "img": np.zeros(0, np.int64)}
    cat = lambda dd: {k: np.concatenate(v) if v else empty[k] for k, v in dd.items()}
    return cat(det), cat(gt)


def _iou(a, b, legacy):
    """IoU between broadcastable box arrays ``a`` and ``b`` (last dim 4)."""
    off = 1.0 if legacy else 0.0
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + off, 0.0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + off, 0.0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + off) * (a[..., 3] - a[..., 1] + off)
    area_b = (b[..., 2] - b[..., 0] + off) * (b[..., 3] - b[..., 1] + off)
    return inter / np.maximum(area_a + area_b - inter, _EPS)


def _match_class(d_boxes, d_img, g_boxes, g_img, g_diff, num_images, iou_thr, legacy, return_kept=False):
    """TP flags (bool) of the non-ignored detections, in the given (score) order (with ``return_kept`` also
    the mask of those detections among the given ones).

    ``d_*`` are sorted by descending score; ``g_*`` are in image order.
    """
    if len(d_boxes) == 0 or len(g_boxes) == 0:
        none = np.zeros(len(d_boxes), dtype=bool)
        return (none, ~none) if return_kept else none
    counts = np.bincount(g_img, minlength=num_images)
    slot = np.arange(len(g_img)) - (np.cumsum(counts) - counts)[g_img]
    table = np.full((num_images, counts.max()), -1, dtype=np.int64)
    table[g_img, slot] = np.arange(len(g_img))  # per image: global gt ids, -1 pad
    cand = table[d_img]  # [D, max_gt]
    ious = _iou(d_boxes[:, None, :], g_boxes[cand], legacy)
    ious[cand < 0] = -np.inf
    rows = np.arange(len(d_boxes))
    best = ious.argmax(axis=1)  # first maximum -> first gt in annotation order
    gt_id = cand[rows, best]
    hit = ious[rows, best] >= iou_thr
    ignored = hit & g_diff[gt_id]
    claim = np.flatnonzero(hit & ~ignored)
    # First (highest-ranked) claimant of each gt is TP, later ones duplicates.
    _, first = np.unique(gt_id[claim], return_index=True)
    tp = np.zeros(len(d_boxes), dtype=bool)
    tp[claim[first]] = True
    return (tp[~ignored], ~ignored) if return_kept else tp[~ignored]


def _average_precision(rec, prec, metric):
    """Return (AP, final recall) from the ranked detections' recall and precision (``pr_curve``)."""
    final_rec = float(rec[-1]) if len(rec) else 0.0
    if metric == "11point":
        # Suffix max of precision, plus a 0 sentinel for "no point with rec >= t".
        env = np.append(np.maximum.accumulate(prec[::-1])[::-1], 0.0)
        # rec is non-decreasing: the points with rec >= t are a suffix.
        idx = np.searchsorted(rec, np.arange(11) / 10.0, side="left")
        return float(np.sum(env[idx]) / 11.0), final_rec
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    env = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * env[step + 1])), final_rec


def pr_curve(tp_flags, npos):
    """(recall, precision) after each ranked detection, from its TP flags and the class's gt count."""
    tp = np.cumsum(tp_flags, dtype=np.float64)
    fp = np.cumsum(~tp_flags, dtype=np.float64)
    return tp / npos, tp / np.maximum(tp + fp, _EPS)


def voc_map(detections, annotations, num_classes, iou_thr=0.5, metric="11point",
            legacy_coords=True, class_names=None, curves=False):
    """PASCAL VOC mAP (see the module docstring for the exact conventions).

    Args:
        detections: list, one per image, of dicts with ``boxes`` [N, 4]
            (x1, y1, x2, y2 in original image pixels), ``scores`` [N] and
            ``labels`` [N] (0-based, in [0, num_classes)). numpy or torch.
        annotations: list of the same length and image order, dicts with
            ``boxes`` [M, 4], ``labels`` [M] and optional ``difficult`` [M]
            bool (missing -> all False).
        num_classes: number of classes.
        iou_thr: a detection can match a gt when IoU >= iou_thr.
        metric: ``"11point"`` (VOC2007) or ``"area"`` (VOC2010+).
        legacy_coords: use the devkit's +1 pixel convention for box sizes.
        class_names: optional list of ``num_classes`` names.
        curves: also return ``curves``, per class ``(recall, precision)`` arrays after each ranked
            detection (None for a class without non-difficult gts).

    Returns:
        dict with ``mAP`` (float), ``AP`` (list of per-class floats),
        ``num_gts`` (non-difficult gt count per class), ``recall`` (final
        recall per class) and, if ``class_names`` is given, ``AP_by_class``.
        A class without non-difficult gts gets AP = recall = NaN and is
        excluded from the mean (mmdetection reports AP 0 for such classes and
        averages over all classes). If no class has gts, mAP is 0.0 and a
        RuntimeWarning is emitted.
    """
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {_METRICS}")
    if len(detections) != len(annotations):
        raise ValueError(f"len(detections)={len(detections)} != "
                         f"len(annotations)={len(annotations)}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class_names for {num_classes} classes")
    det, gt = _gather(detections, annotations, num_classes)
    # Sort by class, then score descending; both sorts are stable, so full ties
    # keep input order (image order, then order within the image).
    d_ord = np.argsort(-det["scores"], kind="stable")
    d_ord = d_ord[np.argsort(det["labels"][d_ord], kind="stable")]
    g_ord = np.argsort(gt["labels"], kind="stable")  # keeps image/annotation order
    classes = np.arange(num_classes + 1)
    d_cut = np.searchsorted(det["labels"][d_ord], classes)
    g_cut = np.searchsorted(gt["labels"][g_ord], classes)
    aps, num_gts, recalls, pr = [], [], [], []
    for c in range(num_classes):
        di, gi = d_ord[d_cut[c]:d_cut[c + 1]], g_ord[g_cut[c]:g_cut[c + 1]]
        npos = int(np.count_nonzero(~gt["difficult"][gi]))
        num_gts.append(npos)
        if npos == 0:
            aps.append(float("nan"))
            recalls.append(float("nan"))
            pr.append(None)
            continue
        tp = _match_class(det["boxes"][di], det["img"][di], gt["boxes"][gi], gt["img"][gi],
                          gt["difficult"][gi], len(detections), iou_thr, legacy_coords)
        curve = pr_curve(tp, npos)
        ap, rec = _average_precision(*curve, metric)
        aps.append(ap)
        recalls.append(rec)
        pr.append(curve if curves else None)
    valid = [a for a, n in zip(aps, num_gts) if n > 0]
    if valid:
        mean_ap = float(np.mean(valid))
    else:
        warnings.warn("voc_map: no class has non-difficult ground truth; mAP set to 0.0",
                      RuntimeWarning)
        mean_ap = 0.0
    out = {"mAP": mean_ap, "AP": aps, "num_gts": num_gts, "recall": recalls}
    if class_names is not None:
        out["AP_by_class"] = dict(zip(class_names, aps))
    if curves:
        out["curves"] = pr
    return out
