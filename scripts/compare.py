"""Train several loss-balancing schemes on one config (same data) and print one table.

    python scripts/compare.py --cfg configs/demo/retinanet_shapes_alwa2.yaml \\
        --schemes fixed alwa1 alwa2 avw rlo iou_balanced --work-root work_dirs/compare

A grid, e.g. Table 2's layout with three seeds per cell, two runs at a time with one thread each:

    python scripts/compare.py --cfg configs/demo/retinanet_shapes_alwa2.yaml --schemes fixed alwa1 alwa2 \\
        --variants l1 smoothl1 ciou --seeds 0 1 2 --jobs 2 --threads 1 --work-root work_dirs/mini_table2

The released layout (4 processes x 2 images): add `--nproc 4 --threads 1 --set data.batch_size=2`, with
`weighting.sync: false` (ALWA's window kept per process) in the config file, where a fixed scheme drops it.

Schemes are presets (fixed, alwa1, alwa2, alwa2_raw, avw, rlo, iou_balanced, uncertainty, dwa; ALWA acts on
RetinaNet's head losses or on the RPN pair of Faster / Mask R-CNN, and a preset that does not apply to the
config's detector is an error) or NAME:key=value,key=value; variants (rows) are presets (l1, smoothl1, iou,
giou, diou, ciou, ciou_mmdet: RetinaNet's box loss, or the RoI head's, the RPN keeping L1 as released) or
NAME:key=value,.... Writes <work-root>[/<variant>]/<scheme>[/seed<S>]/ (a normal work
dir each), compare.md (with variants or seeds: mean ± sd per cell and paired differences to the first
scheme), compare.csv and the loss plots; finished runs are skipped and interrupted ones resumed when the
command is repeated; a run that diverged (non-finite losses) is reported as such and not retrained.
"""
import argparse

import _path  # noqa: F401  (source-checkout imports)

from detection.experiments.compare import PRESETS, VARIANT_PRESETS, run_grid
from detection import cli
from detection.cli import add_overrides


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config file shared by all runs")
    parser.add_argument("--schemes", nargs="+", default=["fixed", "alwa1", "alwa2"],
                        help=f"presets {sorted(PRESETS)} or NAME:key=value,...")
    parser.add_argument("--variants", nargs="*", default=[],
                        help=f"rows of a grid: presets {sorted(VARIANT_PRESETS)} or NAME:key=value,...")
    parser.add_argument("--seeds", nargs="*", type=int, default=[], help="one run per seed (sets seed=S)")
    parser.add_argument("--jobs", type=cli.positive_int, default=1, help="runs trained at once (subprocesses when > 1)")
    parser.add_argument("--threads", type=cli.positive_int, default=None,
                        help="CPU threads per process with --jobs > 1 or --nproc > 1")
    parser.add_argument("--nproc", type=cli.positive_int, default=1,
                        help="processes per run under torchrun (gloo on a CPU; data.batch_size is per process)")
    parser.add_argument("--work-root", default="work_dirs/compare", help="one sub-folder per run")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing; write compare.md / .csv / plots from the runs finished so far")
    parser.add_argument("--window", type=int, default=100, help="iterations per point in the loss plot")
    add_overrides(parser)  # overrides for every run
    args = parser.parse_args(argv)
    table = cli.run(lambda: run_grid(args.cfg, args.schemes, args.work_root, args.variants, args.seeds, args.set,
                                      args.window, jobs=args.jobs, threads=args.threads, report_only=args.report_only,
                                      nproc=args.nproc),
                    also=(ValueError, RuntimeError))
    print(table)


if __name__ == "__main__":
    main()
