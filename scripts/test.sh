#!/usr/bin/env bash
# README command 2: set up, then run the test suite.
# It runs on pytest-xdist workers, one per core (at most 4; MERC_TEST_WORKERS sets the number), each test file on
# one worker with the slowest files first (tests/conftest.py). `bash scripts/test.sh -n 0` runs it serially.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${MERC_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1
WORKERS="${MERC_TEST_WORKERS:-$(python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}"
python -m pytest -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
