"""Train a detector from a config: python scripts/train.py --cfg CFG [--work-dir DIR] [--resume | --resume-from PATH]
[--allow-config-change] [--set k=v ...]

Also runs under torchrun --nproc_per_node=N (one process per GPU, or gloo on CPU)."""
import argparse

import _path  # noqa: F401  (source-checkout imports)

from detection import cli, engine  # first: it checks that `datasets` is this project's package
from detection.builders import default_work_dir
from detection.checkpoint.recovery import train_command


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config file")
    parser.add_argument("--work-dir", default=None, help="output folder (default: work_dirs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in <work-dir>/checkpoints/last.pth (same settings)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume(-from): apply settings that differ from the checkpoint's (e.g. a lower lr)")
    parser.add_argument("--resume-from", default=None, metavar="PATH",
                        help="like --resume, from this checkpoint instead of last.pth (e.g. an older "
                             "<work-dir>/checkpoints/iter_NNNNNNN.pth, as an error may advise)")
    cli.add_overrides(parser)
    args = parser.parse_args(argv)
    work_dir = args.work_dir or default_work_dir(args.cfg)
    resume = train_command(args.cfg, work_dir, args.set, "--resume")
    cli.run(lambda: engine.train(args.cfg, work_dir, args.resume, args.set, args.allow_config_change,
                                 args.resume_from), resume)


if __name__ == "__main__":
    main()
