"""Paired bootstrap of VOC mAP at VOC07-test size: 4952 images, 20 classes, ``--dets`` detections per image;
with ``--coco``, of COCO box AP on bench_coco_eval's synthetic val2017-sized set (5000 images, 80 classes).

    python benchmarks/bench_bootstrap.py [--images 4952] [--dets 50] [-n 1000]
    python benchmarks/bench_bootstrap.py --coco [--images 5000] [--dets 100] [-n 1000]

Prints the time to match both runs once and to draw the n resamples (issue target: minutes, not hours).
"""
import argparse
import time

import numpy as np

import _common  # noqa: F401,I001  (source-checkout imports: puts the repository on sys.path)

from detection.evaluation.bootstrap import match_tables, paired_bootstrap


def synthetic(images, dets, classes, seed):
    """Five objects per image (5% difficult); detections jittered copies of them (80% with the right class)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (images, 5, 2))
    gt = np.concatenate([xy, xy + rng.uniform(20, 200, (images, 5, 2))], -1)  # [I, 5, 4]
    gl = rng.integers(0, classes, (images, 5))
    pick = rng.integers(0, 5, (images, dets))
    boxes = np.take_along_axis(gt, pick[..., None], 1) + rng.normal(0, 15, (images, dets, 4))
    labels = np.where(rng.random((images, dets)) < 0.8, np.take_along_axis(gl, pick, 1),
                      rng.integers(0, classes, (images, dets)))
    anns = [{"boxes": g, "labels": lab, "difficult": rng.random(5) < 0.05} for g, lab in zip(gt, gl)]
    return [{"boxes": b_, "scores": rng.random(dets), "labels": lab} for b_, lab in zip(boxes, labels)], anns


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4952)
    p.add_argument("--dets", type=int, default=None, help="detections per image (VOC 50, COCO 100)")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--coco", action="store_true", help="COCO box AP instead of VOC mAP")
    args = p.parse_args()
    if args.coco:
        args.images = 5000 if args.images == 4952 else args.images
        args.dets = args.dets or 100
        return coco(args)
    args.dets = args.dets or 50
    runs = []
    tic = time.perf_counter()
    for seed in (0, 1):
        dets, anns = synthetic(args.images, args.dets, 20, 7)
        rng = np.random.default_rng(seed)
        dets = [{**d, "scores": d["scores"] * rng.uniform(0.9, 1.1, len(d["scores"]))} for d in dets]
        runs.append(dict(zip(("tables", "npos"), match_tables(dets, anns, 20))))
    matched = time.perf_counter() - tic
    tic = time.perf_counter()
    out = paired_bootstrap(runs[0], runs[1], n=args.n)
    boot = time.perf_counter() - tic
    print(f"{args.images} images x {args.dets} detections, 20 classes: matching both runs {matched:.1f} s, "
          f"{args.n} paired resamples {boot:.1f} s ({boot / args.n * 1000:.1f} ms each); "
          f"diff {out['diff']:+.4f} [{out['low']:+.4f}, {out['high']:+.4f}]")


def coco(args):
    from bench_coco_eval import COCO_IDS, make_data

    from detection.evaluation import detections_to_coco
    from detection.evaluation.coco_bootstrap import match_coco

    gt, dets = make_data(args.images, args.dets)
    ids = [im["id"] for im in gt["images"]]
    runs, tic = [], time.perf_counter()
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        jittered = [{**d, "scores": d["scores"] * rng.uniform(0.9, 1.1, len(d["scores"]))} for d in dets]
        runs.append({"coco": match_coco(gt, detections_to_coco(jittered, ids, COCO_IDS)), "gt_key": "same"})
    matched = time.perf_counter() - tic
    tic = time.perf_counter()
    out = paired_bootstrap(runs[0], runs[1], n=args.n, chunk=50)
    boot = time.perf_counter() - tic
    print(f"COCO: {args.images} images x {args.dets} detections, 80 classes: matching both runs (COCOeval.evaluate) "
          f"{matched:.1f} s, {args.n} paired resamples {boot:.1f} s ({boot / args.n * 1000:.0f} ms each); "
          f"box AP diff {out['diff']:+.4f} [{out['low']:+.4f}, {out['high']:+.4f}]")


if __name__ == "__main__":
    main()
