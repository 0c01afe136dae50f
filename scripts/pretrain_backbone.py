"""Pretrain a ResNet-18 on a classification task drawn from the shapes generator (its own seed), as the
stand-in for ImageNet weights that cannot be downloaded here:

    python scripts/pretrain_backbone.py --out work_dirs/pretrain/resnet18_shapes.pth [--steps 600]

The file is in torchvision's ResNet layout: set `model.backbone.pretrained` to it (as
configs/demo/retinanet_shapes_paper_regime.yaml does). See detection/tools/pretrain.py for the task.
"""
import argparse
import json

import _path  # noqa: F401  (source-checkout imports)

from detection import cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="work_dirs/pretrain/resnet18_shapes.pth")
    parser.add_argument("--steps", type=cli.positive_int, default=600)
    parser.add_argument("--batch-size", type=cli.positive_int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1234, help="generator seed (the detection data use 0)")
    parser.add_argument("--scenes", type=cli.positive_int, default=3000, help="training images the crops come from")
    args = parser.parse_args(argv)

    def go():
        from detection.tools.pretrain import pretrain

        return pretrain(args.out, args.steps, args.batch_size, args.lr, args.seed, args.scenes)

    result = cli.run(go, also=(ValueError,))
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
