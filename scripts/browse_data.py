"""Look at a data set the way a config reads it: ground truth drawn on the images.

    python scripts/browse_data.py --cfg configs/demo/retinanet_shapes_alwa2.yaml --out work_dirs/browse -n 16
    python scripts/browse_data.py --cfg CFG --split train --augmented --out DIR   # what the model sees

Boxes are coloured by class; difficult objects (VOC) are dashed, crowd regions (COCO) grey and tagged
"ignore". --augmented draws the training input after the transforms (resize, flip), de-normalised.
DIR/report.txt lists what the loader repaired: boxes clipped to the image or dropped, empty images.
"""
import argparse

import _path  # noqa: F401  (source-checkout imports)

from detection import cli, engine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--out", required=True, help="folder for the pictures and report.txt")
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--augmented", action="store_true", help="draw the transformed training input")
    parser.add_argument("-n", type=cli.positive_int, default=16, help="number of images")
    parser.add_argument("--shuffle", action="store_true", help="a random sample instead of the first n")
    parser.add_argument("--seed", type=int, default=0)
    cli.add_overrides(parser)
    args = parser.parse_args(argv)

    def go():
        from detection.tools.browse import browse

        return browse(engine.load(args.cfg, args.set), args.out, args.split, args.augmented, args.n, args.shuffle,
                      args.seed)

    written = cli.run(go, also=(ValueError,))
    print(f"{len(written)} picture(s) and report.txt in {args.out}")
    return written


if __name__ == "__main__":
    main()
