"""Paired bootstrap of VOC mAP (or COCO box AP, ``coco_bootstrap.py``) over test images: is the difference of
two runs larger than the noise of the test set?

Matching detections to ground truth is per image, so a resample of images with replacement only re-weights
each image by how often it was drawn. The detections are matched once (:func:`match_tables`); every resample
is then a weighted cumulative sum over the same score-ordered detections, and an image drawn k times counts
k times in the true and false positives and in the positives. Weighting the points this way gives exactly
the AP of the expanded list: copies of one detection are adjacent in the order, and the precision envelope
is the same at their last copy. B resamples are computed at once as a [B, D] tensor per class. Images are
drawn with the same counts for both runs (paired), from one seeded generator.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from detection.evaluation.intervals import paired_t_interval, welch_t_interval
from detection.evaluation.voc import _gather, _match_class

DETECTIONS_FILE = "detections.pkl"  # beside eval.json: per-image detections and ground truth (VOC, COCO boxes)

Table = Tuple[np.ndarray, np.ndarray]  # (image index [D], TP flag [D]) of one class, in score order


def match_tables(detections, annotations, num_classes: int, iou_thr: float = 0.5, legacy_coords: bool = False):
    """Per class the score-ordered ``(image, tp)`` of its detections (difficult matches left out), and the
    non-difficult ground truths per image and class ``[N, C]``: everything a resample needs."""
    det, gt = _gather(detections, annotations, num_classes)
    n = len(detections)
    npos = np.zeros((n, num_classes), np.int64)
    keep = ~gt["difficult"]
    np.add.at(npos, (gt["img"][keep], gt["labels"][keep]), 1)
    tables: List[Table] = []
    for c in range(num_classes):
        di = np.flatnonzero(det["labels"] == c)
        di = di[np.argsort(-det["scores"][di], kind="stable")]
        gi = np.flatnonzero(gt["labels"] == c)
        tp, kept = _match_class(det["boxes"][di], det["img"][di], gt["boxes"][gi], gt["img"][gi],
                                gt["difficult"][gi], n, iou_thr, legacy_coords, return_kept=True)
        tables.append((det["img"][di][kept], tp))
    return tables, npos


def resampled_metric(run: Dict, counts: torch.Tensor, metric: str = "11point") -> torch.Tensor:
    """The run's metric on each resample ``counts`` [B, N]: VOC mAP, or COCO box AP."""
    if "coco" in run:
        from detection.evaluation.coco_bootstrap import resampled_ap

        return resampled_ap(run["coco"], counts)
    return resampled_map(run["tables"], run["npos"], counts, metric)


def _images(run: Dict) -> int:
    return run["coco"]["images"] if "coco" in run else run["npos"].shape[0]


def _same_ground_truth(a: Dict, b: Dict) -> bool:
    if "coco" in a or "coco" in b:
        return "coco" in a and "coco" in b and a["gt_key"] == b["gt_key"]
    return a["npos"].shape == b["npos"].shape and np.array_equal(a["npos"], b["npos"])


def resampled_map(tables: Sequence[Table], npos: np.ndarray, counts: torch.Tensor, metric: str = "11point"):
    """mAP of each resample: ``counts`` [B, N] draws per image -> [B] (classes without positives in a
    resample are left out of its mean, as ``voc_map`` does)."""
    counts = counts.double()
    aps = []
    for c, (img, tp) in enumerate(tables):
        pos = counts @ torch.as_tensor(npos[:, c], dtype=torch.float64)  # [B]
        w = counts[:, torch.as_tensor(img, dtype=torch.long)]  # [B, D]
        t = torch.as_tensor(tp, dtype=torch.float64)
        tp_cum, fp_cum = (w * t).cumsum(1), (w * (1 - t)).cumsum(1)
        rec = tp_cum / pos.clamp(min=1)[:, None]
        prec = tp_cum / (tp_cum + fp_cum).clamp(min=np.finfo(np.float64).eps)
        if metric == "11point":
            env = torch.cat([prec.flip(1).cummax(1).values.flip(1), prec.new_zeros(len(prec), 1)], 1)
            thr = (torch.arange(11, dtype=torch.float64) / 10).expand(len(rec), 11).contiguous()
            ap = env.gather(1, torch.searchsorted(rec.contiguous(), thr, side="left")).sum(1) / 11
        else:
            zeros, ones = rec.new_zeros(len(rec), 1), rec.new_ones(len(rec), 1)
            mrec, mpre = torch.cat([zeros, rec, ones], 1), torch.cat([zeros, prec, zeros], 1)
            env = mpre.flip(1).cummax(1).values.flip(1)
            ap = ((mrec[:, 1:] - mrec[:, :-1]) * env[:, 1:]).sum(1)
        aps.append(torch.where(pos > 0, ap, torch.full_like(ap, float("nan"))))
    return torch.stack(aps, 1).nanmean(1)


def paired_bootstrap(run_a: Dict, run_b: Dict, n: int = 1000, seed: int = 0, chunk: int = 100,
                     metric: str = "11point") -> Dict:
    """``run_*``: ``{"tables", "npos"}`` of :func:`match_tables` (or ``{"coco", "gt_key"}`` of
    :func:`load_run` for COCO) on the same test images. Returns the observed difference B - A, its 95%
    percentile interval, the fraction of resamples where B beats A, and n."""
    return paired_bootstrap_mean([(run_a, run_b)], n, seed, chunk, metric)


def paired_bootstrap_mean(pairs: Sequence[Tuple[Dict, Dict]], n: int = 1000, seed: int = 0, chunk: int = 100,
                          metric: str = "11point") -> Dict:
    """The mean of B - A over several pairs (one per seed) on the same test images.

    Returns ``diff`` (observed), ``low`` / ``high``: the 95% interval over resamples of the test images (the
    same images drawn for every run: test-set noise only), ``b_better``, ``n``, ``images``, ``pairs`` and
    ``pair_diffs``. With two pairs or more also ``seeds_low`` / ``seeds_high``, a two-level bootstrap that
    draws the seed pairs with replacement as well as the images (seed and test-set noise together), and
    ``t_low`` / ``t_high``, the paired t-interval over the seeds' differences (n - 1 degrees of freedom).
    With few seeds the bootstrap over seeds sees only a few distinct draws and comes out too narrow; the
    t-interval is the one to quote for a claim about the method.
    """
    images = _images(pairs[0][0])
    for a, b in pairs:
        for r in (a, b):
            if not _same_ground_truth(r, pairs[0][0]):
                raise ValueError("the runs were not evaluated on the same test images (ground truth differs)")

    def pair_diffs(counts):  # [B, N] -> [B, P]
        return torch.stack([resampled_metric(b, counts, metric) - resampled_metric(a, counts, metric)
                            for a, b in pairs], 1)

    observed = pair_diffs(torch.ones(1, images))[0]
    g = torch.Generator().manual_seed(seed)
    g_seeds = torch.Generator().manual_seed(seed + 1)  # its own stream: the image draws stay those of one pair
    by_images, by_both = [], []
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        draws = torch.randint(images, (b, images), generator=g)
        d = pair_diffs(torch.zeros(b, images).scatter_add_(1, draws, torch.ones(b, images)))
        by_images.append(d.mean(1))
        by_both.append(d.gather(1, torch.randint(len(pairs), d.shape, generator=g_seeds)).mean(1))
    d = torch.cat(by_images)
    q = torch.tensor([0.025, 0.975], dtype=d.dtype)
    lo, hi = torch.quantile(d, q).tolist()
    out = {"diff": float(observed.mean()), "low": lo, "high": hi, "b_better": float((d > 0).double().mean()),
           "n": n, "images": images, "pairs": len(pairs), "pair_diffs": observed.tolist()}
    if len(pairs) > 1:
        out["seeds_low"], out["seeds_high"] = torch.quantile(torch.cat(by_both), q).tolist()
        _, out["t_low"], out["t_high"] = paired_t_interval(out["pair_diffs"])
    return out


def load_run(path: str) -> Dict:
    """The match tables of a run: its work dir (or an eval output folder) holding ``detections.pkl``, or that
    file itself."""
    import os
    import pickle

    file = path if path.endswith(".pkl") else os.path.join(path, DETECTIONS_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no per-image detections at {file}: they are written beside eval.json by training "
                                f"runs and by scripts/eval.py --out of this version")
    with open(file, "rb") as f:
        data = pickle.load(f)
    if data.get("format") == "coco":
        import json

        from detection.evaluation.coco_bootstrap import match_coco

        key = json.dumps(data["gt"], sort_keys=True)  # the same test images and ground truth for both runs
        return {"coco": match_coco(data["gt"], data["results"]), "gt_key": key, "classes": list(data["classes"]),
                "metric": "coco_box_AP", "file": file}
    if data.get("format") != "voc":
        raise ValueError(f"{file}: the bootstrap covers VOC mAP and COCO box AP, got format {data.get('format')!r}")
    tables, npos = match_tables(data["detections"], data["annotations"], len(data["classes"]), data["iou_thr"],
                                data["legacy_coords"])
    return {"tables": tables, "npos": npos, "classes": list(data["classes"]), "metric": data["metric"], "file": file}


def compare_runs(path_a: Union[str, Sequence[str]], path_b: Union[str, Sequence[str]], n: int = 1000,
                 seed: int = 0) -> Dict:
    """B - A for one pair of runs, or for runs paired by position (one pair per seed): the keys of
    :func:`paired_bootstrap_mean`, and ``metric``."""
    paths_a = [path_a] if isinstance(path_a, str) else list(path_a)
    paths_b = [path_b] if isinstance(path_b, str) else list(path_b)
    if len(paths_a) != len(paths_b) or not paths_a:
        raise ValueError(f"runs are compared in pairs: got {len(paths_a)} A run(s) and {len(paths_b)} B run(s)")
    runs = _load_comparable(paths_a + paths_b)
    pairs = list(zip(runs[:len(paths_a)], runs[len(paths_a):]))
    metric = runs[0]["metric"]
    return dict(paired_bootstrap_mean(pairs, n=n, seed=seed, metric=metric), metric=metric)


def _load_comparable(paths: Sequence[str]) -> List[Dict]:
    """:func:`load_run` of each path, checked to share the first run's classes and metric."""
    runs = [load_run(p) for p in paths]
    first = runs[0]
    for run in runs:
        if (run["classes"], run["metric"]) != (first["classes"], first["metric"]):
            raise ValueError(f"{first['file']} and {run['file']} were not evaluated on the same test images, "
                             f"classes and metric: {first['classes']} {first['metric']} vs {run['classes']} "
                             f"{run['metric']}")
    return runs


def compare_groups(paths_a: Sequence[str], paths_b: Sequence[str]) -> Dict:
    """B - A for two groups of runs that are not paired (other seeds, another layout, a run lost on one side):
    each run's metric on the full test set (``a`` / ``b``), the difference of the group means and its Welch
    t-interval over runs (``low`` / ``high`` / ``df``, None with fewer than two runs a side), and ``metric``.
    The runs must be evaluated on the same test images; seed noise is what the interval covers."""
    if not paths_a or not paths_b:
        raise ValueError(f"two groups of runs are compared: got {len(paths_a)} A run(s) and {len(paths_b)} B run(s)")
    runs = _load_comparable(list(paths_a) + list(paths_b))
    first = runs[0]
    for run in runs:
        if not _same_ground_truth(run, first):
            raise ValueError(f"{first['file']} and {run['file']} were not evaluated on the same test images")
    ones = torch.ones(1, _images(first))
    values = [float(resampled_metric(r, ones, first["metric"])[0]) for r in runs]
    a, b = values[:len(paths_a)], values[len(paths_a):]
    welch = welch_t_interval(a, b)
    out = {"a": a, "b": b, "diff": sum(b) / len(b) - sum(a) / len(a), "metric": first["metric"],
           "low": None, "high": None, "df": None}
    if welch is not None:
        _, out["low"], out["high"], out["df"] = welch
    return out
