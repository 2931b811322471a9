#!/usr/bin/env bash
# The one-shot GPU check (benchmarks/gpu_check.py says what it runs), from the repository root:
#     bash benchmarks/gpu_check.sh               # on a GPU machine: about 8 minutes
#     bash benchmarks/gpu_check.sh --dry-run     # the same steps on the CPU, reduced (CI runs this)
# On a machine without network, wheels the machine lacks (omegaconf, openTSNE) can be carried in
# .whl/ (WHEELS=...): they are installed into a temporary folder, the machine's own torch is kept.
# The Python is $PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=$(mktemp -d -t gpu-check-site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
