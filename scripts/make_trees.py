"""Build the "trees" data set (aerial photographs of tree crowns, tiled) in VOC and COCO formats.

    python scripts/make_trees.py [--root data/trees] [--source WHEEL_OR_FOLDER] [--download-dir data/downloads]
                                 [--tile 400] [--download-only]

Without --source the pinned deepforest 2.1.0 wheel is fetched with pip into --download-dir (once; it is checked
by sha256 every time). --download-only fetches and checks it, prints its path and builds nothing.
"""
import argparse
import json
import sys

import _path  # noqa: F401  (source-checkout imports)

from datasets.downloads import DEEPFOREST, fetch_wheel
from detection.cli import positive_int
from datasets.trees import build_trees


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/trees")
    p.add_argument("--source", help=f"{DEEPFOREST.filename}, or a folder holding the files of its deepforest/data")
    p.add_argument("--download-dir", default="data/downloads")
    p.add_argument("--tile", type=positive_int, default=400, help="tile side in pixels (approximate)")
    p.add_argument("--download-only", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.download_only:
            print(fetch_wheel(DEEPFOREST, a.download_dir))
            return
        # the wheel is fetched only when a build is needed, not when --root holds a complete one
        source = a.source or (lambda: fetch_wheel(DEEPFOREST, a.download_dir))
        summary = build_trees(a.root, source, tile=a.tile, remedy="choose another --root (an empty or new folder)")
    except (ValueError, OSError) as exc:  # a wrong or missing source file, a foreign --root, a failed download
        sys.exit(f"error: {exc}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
