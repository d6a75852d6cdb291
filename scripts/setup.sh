#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install the pinned dependencies.
# MERC_VENV picks its location (default: .venv in the repo). Needs python3.11 and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MERC_VENV:-.venv}"
PY="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$VENV/.merc-installed" ] || [ requirements.txt -nt "$VENV/.merc-installed" ] \
   || [ constraints.txt -nt "$VENV/.merc-installed" ] || [ requirements-nodeps.txt -nt "$VENV/.merc-installed" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.txt -c constraints.txt
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
  touch "$VENV/.merc-installed"
fi
