#!/usr/bin/env bash
# README command 2: set up, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${MERC_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1
python -m pytest "$@"
