"""Generate the synthetic shapes data set in VOC and COCO formats.

    python scripts/make_shapes.py --root data/shapes [--num-train 1000 --num-val 100 --num-test 300 --size 128 --seed 0]
"""
import argparse
import json
import sys

import _path  # noqa: F401  (source-checkout imports)

from datasets.shapes import SHAPE_KINDS, make_shapes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/shapes")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--num-test", type=int, default=300)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", nargs="+", default=list(SHAPE_KINDS), choices=SHAPE_KINDS)
    a = p.parse_args(argv)
    try:
        summary = make_shapes(a.root, num_train=a.num_train, num_val=a.num_val, num_test=a.num_test,
                              image_size=a.size, classes=a.classes, seed=a.seed,
                              remedy="choose another --root (an empty or new folder)")
    except ValueError as exc:  # the root holds other files, or shapes data of other parameters
        sys.exit(f"error: {exc}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
