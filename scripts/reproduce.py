"""Reproduce the paper's tables: train every cell, then print each table beside the paper.

    python scripts/reproduce.py --table 2 --dry-run          # list the runs: config, work dir, status
    python scripts/reproduce.py --table 2 --gpus 4           # train the missing ones, resume partial ones
    python scripts/reproduce.py --table 2 --collect          # Markdown table (ours, paper, Δ) + CSV

Cells come from configs/tables.yaml; run <name> trains configs/<name>.yaml into <work-root>/<name>/ with
`torchrun --nproc_per_node=K scripts/train.py ... --resume` (K = --gpus, default: every visible GPU; plain
python with one GPU or none). Finished runs (eval.json) are skipped, so the command can be repeated.
--scale F shortens every schedule to the fraction F (epochs or max_iters, LR steps and warmup alike) and
trains on a fixed random fraction F of the training images (data.train_fraction; --data-fraction D sets
that part alone, 1 keeps all images) for a quick pass, in its own default work root. With an epoch-based
schedule both cuts multiply: --scale 0.25 runs 3 of 12 epochs over a quarter of the images."""
import argparse
import sys

import _path  # noqa: F401  (source-checkout imports)

from detection.experiments import reproduce, tables
from detection import cli
from detection.cli import add_overrides


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs="+", required=True, metavar="N", help="table numbers 1-8, or 'all'")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the runs and their commands, train nothing")
    mode.add_argument("--collect", action="store_true", help="print the tables beside the paper, write CSV")
    parser.add_argument("--work-root", default=None,
                        help=f"one sub-folder per run (default: {reproduce.DEFAULT_WORK_ROOT}, "
                             f"or {reproduce.DEFAULT_WORK_ROOT}_scale<F> with --scale)")
    parser.add_argument("--out-dir", default=None, help="--collect: where table<N>.md/.csv go (default: work root)")
    parser.add_argument("--data-root", default=None, help="overrides data.root of every run")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of each schedule and of the training images, for a quick pass")
    parser.add_argument("--data-fraction", type=float, default=None,
                        help="fraction of the training images (default: --scale)")
    parser.add_argument("--gpus", type=int, default=None, help="processes (GPUs) per run")
    add_overrides(parser)  # overrides for every run
    args = parser.parse_args(argv)
    work_root = args.work_root or reproduce.default_work_root(args.scale, args.data_fraction)
    numbers = cli.run(lambda: tables.parse_tables(args.table), also=(ValueError,))
    if args.collect:
        print(cli.run(lambda: reproduce.collect(numbers, work_root, args.out_dir), also=(ValueError,)))
        return
    code = cli.run(lambda: reproduce.reproduce(numbers, work_root, args.gpus, args.data_root, args.scale, args.set,
                                               dry_run=args.dry_run, data_fraction=args.data_fraction),
                   also=(ValueError,))
    if code == 0 and not args.dry_run:
        print(reproduce.collect(numbers, work_root, args.out_dir))
    sys.exit(code)


if __name__ == "__main__":
    main()
