"""Check a config's data without training: python scripts/check_data.py --cfg CFG [--decode] [--set k=v ...]

Builds the training and test sets exactly as training does (generating the shapes data first when the
config has a data.shapes section) and prints what was repaired or skipped (clipped and dropped boxes,
images without objects). --decode also decodes every image and lists all corrupt or truncated files and
images whose size differs from their annotation. Exit status 1 if anything is an error, 0 otherwise."""
import argparse
import sys

import _path  # noqa: F401  (source-checkout imports)

from detection.tools.check_data import check_data  # first: detection checks that `datasets` is ours
from detection import cli
from detection.cli import add_overrides
from detection.config.loader import ConfigError, load_config
from detection.config.schema import Config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config file")
    parser.add_argument("--decode", action="store_true", help="decode every image (slow: reads all the data)")
    parser.add_argument("--workers", type=cli.positive_int, default=None, help="decoding threads (default: CPUs, at most 8)")
    add_overrides(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(Config, args.cfg, args.set)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1 if check_data(cfg, decode=args.decode, workers=args.workers, log=lambda s: print(s, flush=True)) else 0


if __name__ == "__main__":
    sys.exit(main())
