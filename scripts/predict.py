"""Run a trained detector on images and look at the boxes.

    python scripts/predict.py --ckpt work_dirs/retinanet_shapes_alwa2/checkpoints/last.pth \
        --input data/shapes/VOC/JPEGImages --out work_dirs/predictions [--score-thr 0.3] [--device auto]
    python scripts/predict.py --ckpt A.pth --compare B.pth --input DIR --out OUT   # A beside B

--input is an image, a folder or a glob pattern. Each picture is saved under its input's name in --out, with
the boxes (class name and score; masks for Mask R-CNN) scoring at least --score-thr; the same detections go
to --out/predictions.json in COCO results format (bbox [x, y, w, h], RLE masks). With --compare each picture
shows the two checkpoints' detections side by side (the paper's Figures 5 and 7: fixed weights beside ALWA).
An image that cannot be read is skipped, said, and listed in --out/unreadable.txt (--stop-on-error: stop).
"""
import argparse

import _path  # noqa: F401  (source-checkout imports)

from detection import cli
from detection.tools.predict import run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint of scripts/train.py or scripts/convert_weights.py")
    parser.add_argument("--input", required=True, help="image file, folder or glob pattern")
    parser.add_argument("--out", required=True, help="folder for the pictures and predictions.json")
    parser.add_argument("--score-thr", type=float, default=0.3,
                        help="lowest score drawn and written (replaces the model's model.test.score_thr)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--compare", default=None, metavar="CKPT2", help="second checkpoint, drawn on the right")
    parser.add_argument("--batch-size", type=cli.positive_int, default=4, help="images per forward pass")
    parser.add_argument("--stop-on-error", action="store_true",
                        help="stop at the first image that cannot be read (default: skip it, list it in "
                             "OUT/unreadable.txt and go on)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    written = cli.run(lambda: run(args.ckpt, args.input, args.out, args.score_thr, args.device, args.compare,
                                  args.batch_size, not args.no_progress, args.stop_on_error), also=(ValueError,))
    print(f"{len(written)} picture(s) and predictions.json in {args.out}")
    return written


if __name__ == "__main__":
    main()
