"""Write every table config from the spec: python scripts/gen_configs.py [--check]

The paper's Tables 1-8 live as data in configs/tables.yaml (config name, _base_, overrides and the paper's
number per cell); this writes configs/<name>.yaml for each cell. --check writes nothing and exits 1 when a
committed config differs from the spec's output (or a generated file is no longer in the spec)."""
import argparse
import sys

import _path  # noqa: F401  (source-checkout imports)

from detection.experiments import tables


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=tables.SPEC_PATH, help="table spec (default: configs/tables.yaml)")
    parser.add_argument("--out-dir", default=tables.CONFIG_DIR, help="where the configs go (default: configs/)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    args = parser.parse_args(argv)
    try:
        spec = tables.load_spec(args.spec)
    except (tables.SpecError, KeyError, FileNotFoundError) as exc:
        sys.exit(f"error: {args.spec}: {exc}")
    stale, orphans = tables.check_configs(args.out_dir, spec)
    for name in orphans:
        print(f"orphan (generated, no longer in the spec; delete it): {name}")
    if args.check:
        for name in stale:
            print(f"differs from the spec: {name}")
        sys.exit(1 if stale or orphans else 0)
    written = tables.write_configs(args.out_dir, spec)
    total = len(tables.render_configs(spec))
    print(f"{total} configs from {args.spec}: {len(written)} written, {total - len(written)} unchanged")


if __name__ == "__main__":
    main()
