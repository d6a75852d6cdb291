#!/usr/bin/env bash
# Build the documentation site (mkdocs.yml, docs/) with --strict: a broken link, a missing page or a page left out
# of the nav fails. Usage: bash scripts/docs.sh [SITE_DIR] (default: site/, gitignored). Runs offline once the
# packages are installed; the Results pages show reports/results/ when `python -m pipeline.report` wrote it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${MERC_VENV:-.venv}"
SITE="${1:-site}"
if [ ! -f "$VENV/.merc-docs-installed" ] || [ requirements-docs.txt -nt "$VENV/.merc-docs-installed" ] \
   || [ constraints.txt -nt "$VENV/.merc-docs-installed" ]; then
  "$VENV/bin/python" -m pip install -q -r requirements-docs.txt -c constraints.txt
  touch "$VENV/.merc-docs-installed"
fi
export NO_MKDOCS_2_WARNING=1  # Material's end-of-life banner: not a build problem
"$VENV/bin/python" -m mkdocs build --strict --site-dir "$SITE"
echo "docs: open $SITE/index.html"
