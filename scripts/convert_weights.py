"""Convert a torchvision COCO detector's weights into a checkpoint of this codebase.

    python scripts/convert_weights.py --from torchvision --arch retinanet_resnet50_fpn \
        ~/.cache/torch/hub/checkpoints/retinanet_resnet50_fpn_coco-eeacb38b.pth work_dirs/tv_retinanet.pth

Nothing is downloaded: IN is a local file (torchvision's hub cache names work as they are). OUT is a
self-describing checkpoint (the preset config configs/torchvision/ARCH.yaml inside, the 80 COCO class names
and category ids), which `scripts/eval.py --ckpt OUT --set data.root=COCO` evaluates and `model.init_from`
fine-tunes from. Architectures: retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2, fasterrcnn_resnet50_fpn,
fasterrcnn_resnet50_fpn_v2, maskrcnn_resnet50_fpn.
"""
import argparse
import os

import _path  # noqa: F401  (source-checkout imports)

from detection import cli
from detection.checkpoint.convert import ARCHS, convert


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", choices=["torchvision"], required=True, help="where IN comes from")
    parser.add_argument("--arch", choices=sorted(ARCHS), required=True)
    parser.add_argument("src", metavar="IN", help="torchvision's state dict (.pth)")
    parser.add_argument("dst", metavar="OUT", help="checkpoint to write")
    parser.add_argument("--preset", help="config to build the model from (default configs/torchvision/ARCH.yaml)")
    cli.add_overrides(parser)
    args = parser.parse_args(argv)
    preset = args.preset or os.path.join(_path.ROOT, "configs", "torchvision", f"{args.arch}.yaml")
    return cli.run(lambda: convert(args.arch, args.src, args.dst, preset, args.set), also=(ValueError,))


if __name__ == "__main__":
    main()
