"""Is run B better than run A by more than the noise of the test set? A paired bootstrap over test images.

    python scripts/significance.py work_dirs/fixed work_dirs/alwa2 [-n 1000] [--seed 0]

Both runs must be evaluated on the same test images (their detections.pkl, written beside eval.json): VOC
runs compare mAP, COCO runs box AP (IoU 0.50:0.95). Prints the difference B - A, its 95% interval over n resamples of the test images (the same resamples for
both runs), and the fraction of resamples in which B beats A.
"""
import argparse
import time

import _path  # noqa: F401  (source-checkout imports)

from detection import cli
from detection.evaluation.bootstrap import compare_runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="work dir (or detections.pkl) of the reference run")
    parser.add_argument("run_b", help="work dir (or detections.pkl) of the run compared with it")
    parser.add_argument("-n", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tic = time.perf_counter()
    out = cli.run(lambda: compare_runs(args.run_a, args.run_b, args.n, args.seed), also=(ValueError,))
    name = "box AP" if out.get("metric") == "coco_box_AP" else "mAP"
    print(f"{name} B - A = {out['diff']:+.4f}, 95% interval [{out['low']:+.4f}, {out['high']:+.4f}] over {out['n']} "
          f"resamples of {out['images']} test images; B better in {100 * out['b_better']:.1f}% of them "
          f"({time.perf_counter() - tic:.1f} s)")
    return out


if __name__ == "__main__":
    main()
