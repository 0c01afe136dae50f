"""Is run B better than run A by more than the noise? A paired bootstrap over test images, and over seeds.

    python scripts/significance.py work_dirs/fixed work_dirs/alwa2 [-n 1000] [--seed 0]
    python scripts/significance.py fixed/seed0 alwa2/seed0 fixed/seed1 alwa2/seed1 fixed/seed2 alwa2/seed2
    python scripts/significance.py b8/alwa2/seed0 b8/alwa2/seed1 --vs 4x2/alwa2/seed0 4x2/alwa2/seed1

Runs are given as A B pairs (work dirs or their detections.pkl); pairs of the same seed differ only in what
is compared. All runs must be evaluated on the same test images: VOC runs compare mAP, COCO runs box AP (IoU
0.50:0.95). Prints the mean difference B - A and its 95% interval over n resamples of the test images (the
same resamples for every run; test-set noise only) with the fraction of resamples in which B beats A. With
two pairs or more it also prints the interval of a bootstrap that resamples the seeds as well, and the
paired t-interval over the seeds; a claim about the method should clear the widest of the three.

With `--vs`, the runs before it (A) and after it (B) are two unpaired groups (runs whose seeds do not pair,
e.g. two process layouts): it prints each run's metric, the difference of the means and Welch's t-interval
over the runs (seed noise; nothing is paired, so no bootstrap over images).
"""
import argparse
import time

import _path  # noqa: F401  (source-checkout imports)

from detection import cli
from detection.evaluation.bootstrap import compare_groups, compare_runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="A B",
                        help="pairs of runs, reference first: A B [A B ...] (work dirs or detections.pkl)")
    parser.add_argument("-n", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vs", nargs="+", metavar="B", help="unpaired: the runs given as A are one group, these another")
    args = parser.parse_args(argv)
    if args.vs:
        return _unpaired(args.runs, args.vs)
    if len(args.runs) % 2:
        parser.error(f"runs come in pairs (A B [A B ...]); got {len(args.runs)} paths")
    tic = time.perf_counter()
    out = cli.run(lambda: compare_runs(args.runs[0::2], args.runs[1::2], args.n, args.seed), also=(ValueError,))
    name = "box AP" if out.get("metric") == "coco_box_AP" else "mAP"
    over = f"mean over {out['pairs']} pairs, " if out["pairs"] > 1 else ""
    print(f"{name} B - A = {out['diff']:+.4f} ({over}{time.perf_counter() - tic:.1f} s)")
    print(f"  test images: 95% interval [{out['low']:+.4f}, {out['high']:+.4f}] over {out['n']} resamples of "
          f"{out['images']} test images; B better in {100 * out['b_better']:.1f}% of them")
    if out["pairs"] > 1:
        print("  per pair: " + ", ".join(f"{d:+.4f}" for d in out["pair_diffs"]))
        print(f"  seeds and test images: 95% interval [{out['seeds_low']:+.4f}, {out['seeds_high']:+.4f}] "
              f"(bootstrap over both; narrow with few seeds)")
        print(f"  seeds: 95% paired t-interval [{out['t_low']:+.4f}, {out['t_high']:+.4f}] "
              f"({out['pairs'] - 1} degree{'s' if out['pairs'] > 2 else ''} of freedom)")
    return out


def _unpaired(group_a, group_b):
    out = cli.run(lambda: compare_groups(group_a, group_b), also=(ValueError,))
    name = "box AP" if out["metric"] == "coco_box_AP" else "mAP"
    for label, paths, values in (("A", group_a, out["a"]), ("B", group_b, out["b"])):
        print(f"{label}: " + ", ".join(f"{p} {v:.4f}" for p, v in zip(paths, values)))
    line = f"{name} mean(B) - mean(A) = {out['diff']:+.4f}"
    if out["low"] is None:
        print(line + " (no interval: Welch's needs two runs or more in each group)")
    else:
        print(line + f"; seeds: 95% Welch t-interval [{out['low']:+.4f}, {out['high']:+.4f}] ({out['df']:.1f} "
              f"degrees of freedom)")
    return out


if __name__ == "__main__":
    main()
