"""Evaluate a checkpoint: python scripts/eval.py --ckpt CKPT [--cfg CFG] [--out FILE] [--plots DIR] [--set k=v ...]

Without --cfg the config saved in the checkpoint is used (with the --set overrides, e.g. data.root=...)."""
import argparse

import _path  # noqa: F401  (source-checkout imports)

from detection import cli, engine  # first: it checks that `datasets` is this project's package


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cfg", default=None, help="YAML config file (default: the config saved in the checkpoint)")
    parser.add_argument("--ckpt", required=True, help="checkpoint file, e.g. work_dirs/<name>/checkpoints/last.pth")
    parser.add_argument("--out", default=None, help="write the metrics as JSON to this file")
    parser.add_argument("--plots", default=None, metavar="DIR",
                        help="write the per-class precision-recall curves (VOC) to DIR/pr_curves.png")
    cli.add_overrides(parser)
    args = parser.parse_args(argv)
    cli.run(lambda: engine.evaluate(args.cfg, args.ckpt, args.out, args.set, args.plots))


if __name__ == "__main__":
    main()
