#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one command, under 8 minutes on one GPU, one JSON in
# benchmarks/results/gpu_check.json. `--smoke` runs the same steps on the CPU with tiny models.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
