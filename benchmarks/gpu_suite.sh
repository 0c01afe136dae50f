#!/usr/bin/env bash
# The GPU suite in one command (benchmarks/gpu_suite.py has the steps and outputs):
#   bash benchmarks/gpu_suite.sh OUT_DIR                 # on a CUDA machine, about 8 minutes
#   bash benchmarks/gpu_suite.sh OUT_DIR --cpu-dry-run   # tiny sizes on a CPU (checks the steps, no time limits)
# Nothing is downloaded: wheels carried in .whl/ (pycocotools, albumentations and their dependencies; see
# benchmarks/README.md) are installed into a private folder first, when the imports need them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import albumentations, pycocotools" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/gpu_suite_site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_suite: albumentations / pycocotools are missing and no wheels are in .whl/ (see benchmarks/README.md)" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_suite.py "$@"
