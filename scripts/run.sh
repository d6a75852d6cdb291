#!/usr/bin/env bash
# README command 1: set up, then run the whole pipeline (`dvc repro`) on the configured dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${MERC_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1
dvc repro "$@"
python -m pipeline.summary  # dataset, model, test scores, item counts, where the plots are
