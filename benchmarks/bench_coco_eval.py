"""COCO bbox evaluation time with pycocotools' COCOeval on a synthetic COCO-val-sized set.

Ground truth and detections are made in memory (no files): ``--images`` images (default 5000, as val2017)
of 640 x 480, 80 categories with COCO's non-contiguous ids, Poisson(7.3) objects per image of all sizes
(1% crowd), and ``--dets-per-image`` detections per image (default 100): half are jittered copies of
ground truths (mostly of the right category), half random boxes, with random scores. Our detections go
through ``detection.evaluation.detections_to_coco`` (per-image arrays -> result dicts) like the evaluator's.

Timed: the raw pycocotools phases (index ground truth, ``loadRes``, ``evaluate``, ``accumulate``,
``summarize``), and our ``detection.evaluation.coco_evaluate`` end to end with each backend
(``eval.coco_backend``: pycocotools, and faster_coco_eval when the faster-coco-eval package is installed,
its ground-truth copy included); all must give the same AP, AP50, AP75, APs, APm, APl and per-class APs.
Printed: the seconds and the ratio pycocotools / faster_coco_eval (the aim: at least 3x).

Reference: pycocotools takes about 20 s for bbox on the 5000 val2017 images.

Usage: python benchmarks/bench_coco_eval.py [--images 5000] [--dets-per-image 100] [--reps 1]
"""
import argparse
import contextlib
import io
import statistics
import time

import numpy as np

from _common import print_table
from detection.evaluation import coco_evaluate, detections_to_coco
from detection.evaluation.coco import METRIC_NAMES

COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # 80 ids


def make_data(n_images, dets_per_image, seed=0, width=640, height=480):
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for img_id in range(1, n_images + 1):
        images.append({"id": img_id, "width": width, "height": height, "file_name": f"{img_id:012d}.jpg"})
        m = int(rng.poisson(7.3))
        side = np.exp(rng.uniform(np.log(8), np.log(400), (m, 2)))  # small, medium and large objects
        xy = rng.uniform(0, 1, (m, 2)) * np.maximum([width, height] - side, 1)
        gt = np.hstack([xy, np.minimum(xy + side, [width, height])])
        cats = rng.integers(0, len(COCO_IDS), m)
        for box, c in zip(gt, cats):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": COCO_IDS[c],
                         "bbox": [float(box[0]), float(box[1]), float(w), float(h)], "area": float(w * h),
                         "iscrowd": int(rng.uniform() < 0.01)})
        k = dets_per_image // 2 if m else 0
        src = rng.integers(0, max(m, 1), k)
        # jittered ground truths (k = 0 without objects): 8% of the box size, 80% with the right category
        jit = gt[src] + rng.normal(0, 1, (k, 4)) * np.tile(gt[src, 2:] - gt[src, :2], 2) * 0.08
        jl = np.where(rng.uniform(size=k) < 0.8, cats[src], rng.integers(0, len(COCO_IDS), k))
        r = dets_per_image - k
        rxy = rng.uniform(0, 1, (r, 2)) * [width, height]
        noise = np.hstack([rxy, rxy + np.exp(rng.uniform(np.log(8), np.log(300), (r, 2)))])
        boxes = np.clip(np.vstack([jit, noise]), 0, [width, height, width, height])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        dets.append({"boxes": boxes, "scores": rng.uniform(size=dets_per_image),
                     "labels": np.concatenate([jl, rng.integers(0, len(COCO_IDS), r)])})
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in COCO_IDS]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def run_pycocotools(gt_dict, results):
    """Raw pycocotools with per-phase seconds; returns (seconds by phase, stats)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    t = {}
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        t["index ground truth"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dt = gt.loadRes([dict(r) for r in results])
        t["loadRes"] = time.perf_counter() - t0
        ev = COCOeval(gt, dt, "bbox")
        for phase in ("evaluate", "accumulate", "summarize"):
            t0 = time.perf_counter()
            getattr(ev, phase)()
            t[phase] = time.perf_counter() - t0
    return t, [float(s) for s in ev.stats[:6]], gt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--reps", type=int, default=1, help="repetitions of each measurement (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    gt_dict, dets = make_data(args.images, args.dets_per_image, args.seed)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = detections_to_coco(dets, [im["id"] for im in gt_dict["images"]], COCO_IDS)
    convert = time.perf_counter() - t0
    print(f"{args.images} images, {len(gt_dict['annotations'])} ground truths, {len(results)} detections, "
          f"80 categories (made in {made:.1f} s)\n")
    try:
        import faster_coco_eval  # noqa: F401
        backends = ["pycocotools", "faster_coco_eval"]
    except ImportError:
        backends = ["pycocotools"]
    phases, ours, out = {}, {b: [] for b in backends}, {}
    stats_raw = None
    for _ in range(args.reps):
        t, stats_raw, coco_gt = run_pycocotools(gt_dict, results)
        for k, v in t.items():
            phases.setdefault(k, []).append(v)
        for backend in backends:
            if hasattr(coco_gt, "_faster_copy"):  # its ground-truth copy is part of what is timed
                del coco_gt._faster_copy
            t0 = time.perf_counter()
            out[backend] = coco_evaluate(coco_gt, results, backend=backend)["bbox"]
            ours[backend].append(time.perf_counter() - t0)
    rows = [["detections_to_coco (ours)", f"{convert:.3f}"]]
    rows += [[f"pycocotools {k}", f"{statistics.median(v):.3f}"] for k, v in phases.items()]
    raw_total = sum(statistics.median(v) for k, v in phases.items() if k != "index ground truth")
    rows += [["pycocotools loadRes..summarize", f"{raw_total:.3f}"]]
    rows += [[f"coco_evaluate, {b} (end to end)", f"{statistics.median(v):.3f}"] for b, v in ours.items()]
    print_table(["phase", "seconds (median)"], rows, title="COCO bbox evaluation:")
    print(f"AP / AP50 / AP75: {stats_raw[0]:.4f} / {stats_raw[1]:.4f} / {stats_raw[2]:.4f}")
    for backend, m in out.items():
        same = [m[k] for k in METRIC_NAMES] == stats_raw
        same_cls = m["per_class"] == out["pycocotools"]["per_class"]
        print(f"  coco_evaluate with {backend}: {'the same' if same else 'DIFFERENT'} AP, AP50, AP75, APs, APm, APl; "
              f"{'the same' if same_cls else 'DIFFERENT'} per-class APs")
    if "faster_coco_eval" in ours:
        ratio = statistics.median(ours["pycocotools"]) / statistics.median(ours["faster_coco_eval"])
        print(f"pycocotools / faster_coco_eval end to end: {ratio:.2f}x (aim: >= 3x)")
    else:
        print("faster_coco_eval: not installed (pip install -e \".[coco_fast]\"), not timed")


if __name__ == "__main__":
    main()
