"""Benchmark voc_map on a VOC2007-test-sized workload (one CPU core).

4952 images x 20 classes, ~100 detections and ~3 gts per image (random boxes;
half of the detections are jittered copies of gts so that matching does real
work). Prints the elapsed seconds of voc_map (input construction excluded).
Target: < 1 s.

Usage: python benchmarks/bench_voc_map.py [--repeats N]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from detection.evaluation import voc_map  # noqa: E402

NUM_IMAGES, NUM_CLASSES, DETS_PER_IMAGE, GTS_PER_IMAGE = 4952, 20, 100, 3


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    dets, anns = [], []
    for _ in range(NUM_IMAGES):
        m = int(rng.poisson(GTS_PER_IMAGE))
        xy = rng.uniform(0, 400, (m, 2))
        gboxes = np.hstack([xy, xy + rng.uniform(10, 200, (m, 2))])
        glabels = rng.integers(0, NUM_CLASSES, m)
        anns.append({"boxes": gboxes, "labels": glabels,
                     "difficult": rng.uniform(size=m) < 0.1})
        n = int(rng.poisson(DETS_PER_IMAGE))
        k = n // 2 if m else 0
        src = rng.integers(0, max(m, 1), k)
        jit = gboxes[src] + rng.normal(0, 8, (k, 4)) if m else np.zeros((0, 4))
        jl = glabels[src] if m else np.zeros(0, np.int64)
        nxy = rng.uniform(0, 400, (n - k, 2))
        noise = np.hstack([nxy, nxy + rng.uniform(10, 200, (n - k, 2))])
        dets.append({"boxes": np.vstack([jit, noise]),
                     "scores": rng.uniform(size=n),
                     "labels": np.concatenate([jl, rng.integers(0, NUM_CLASSES, n - k)])})
    return dets, anns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # pin to one core
    dets, anns = make_data()
    n_det = sum(len(d["scores"]) for d in dets)
    n_gt = sum(len(a["labels"]) for a in anns)
    print(f"{NUM_IMAGES} images, {NUM_CLASSES} classes, {n_det} detections, {n_gt} gts")
    for metric in ("11point", "area"):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = voc_map(dets, anns, NUM_CLASSES, metric=metric)
            times.append(time.perf_counter() - t0)
        print(f"metric={metric}: mAP={res['mAP']:.4f}  elapsed (s): first={times[0]:.3f} "
              f"best={min(times):.3f}")


if __name__ == "__main__":
    main()
