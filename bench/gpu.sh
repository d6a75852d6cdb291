#!/usr/bin/env bash
# GPU proof in one command: set up from the committed files (reusing the venv when present), then bench/gpu.py.
# On a machine without CUDA the CPU parts run small and the report says the GPU parts were not run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${MERC_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python -m bench.gpu "$@"
