"""Plot raw and weighted loss curves (mean ± std) and loss weights λ of one or several training runs.

    python scripts/plot.py work_dirs/run_a work_dirs/run_b --out plots/losses.png --window 100
    python scripts/plot.py --alwa-stationary --out alwa_stationary.png   # λcls on a synthetic stationary stream
    python scripts/plot.py work_dirs/run_a --alwa-windows --out alwa_windows.png  # CLS, REG and λcls per window
"""
import argparse
import sys

import _path  # noqa: F401  (source-checkout imports)

from detection import cli
from detection.experiments.plots import plot_alwa_stationary, plot_runs
from detection.experiments.windows import describe, init_weight, plot_windows, read_windows, windows_by_rank


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dirs", nargs="*", help="training work dirs (each with metrics.jsonl)")
    parser.add_argument("--alwa-stationary", action="store_true",
                        help="instead: λcls of ALWA (stats weighted vs raw) on a synthetic stationary loss stream")
    parser.add_argument("--variant", type=int, default=2, help="ALWA variant for --alwa-stationary")
    parser.add_argument("--alwa-windows", action="store_true",
                        help="instead: per ALWA window, the CLS and REG it compared, where it fired, and λcls")
    parser.add_argument("--out", default="losses.png", help="PNG file to write")
    parser.add_argument("--keys", nargs="*", default=None,
                        help="loss keys to draw (default: all; a per-level run's levels are summed for e.g. loss_cls)")
    parser.add_argument("--window", type=cli.positive_int, default=None,
                        help="pool the log records into windows of this many iterations (e.g. ALWA's C = 100)")
    parser.add_argument("--labels", nargs="*", default=None, help="legend label per work dir")
    args = parser.parse_args(argv)
    if args.alwa_stationary:
        print(f"wrote {plot_alwa_stationary(args.out, args.variant)}")
        return
    if not args.work_dirs:
        parser.error("give at least one work dir (or --alwa-stationary)")
    try:
        if args.alwa_windows:
            for d, name in zip(args.work_dirs, args.labels or args.work_dirs):
                print(describe(name, read_windows(d), init_weight(d)))
                for r, own in enumerate(windows_by_rank(d)[1:], 1):  # the other processes' own windows
                    print(describe(f"{name} (rank {r})", own, init_weight(d)))
            path = plot_windows(args.work_dirs, args.out, args.labels)
        else:
            path = plot_runs(args.work_dirs, args.out, args.keys, args.window, args.labels)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
