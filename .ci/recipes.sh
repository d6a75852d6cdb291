#!/usr/bin/env bash
# Every paper recipe's --demo variant (its offline settings on the demo corpus, 2 epochs, 1 seed) must run, end to
# end through `dvc exp run`. Called by .ci/run from the checkout's root with the venv on PATH.
#
# Two lanes, one per core: this checkout, and a clone of it in a temp folder (removed at exit). A recipe's run is
# mostly single-threaded start-up (a Python process per stage, DVC's experiment bookkeeping), so two lanes halve the
# section. Each lane runs its recipes in an order that re-extracts least: the feature folders are persisted outputs
# (no run cache), so a stage re-extracts whenever its settings or the prepared table differ from the previous run's.
# Recipes whose prepare settings are params.yaml's come first (this checkout holds those features now), then the
# others; within a prepare setting, those sharing audio + visual settings, then text settings, are adjacent.
# Regression corpora last, in this checkout's lane: the regression section after this runs on the demo's
# regression manifest. The clone's experiments are then copied into this repository, for the report.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one core per lane

recipes=$(python - <<'PY'
import json

import pipeline.recipe as R
from pipeline.common import load_params

base = load_params()


def key(name):
    p = R.merged(base, R.load_recipe(name).settings(demo=True))
    same = [json.dumps(p[k], sort_keys=True) for k in ("prepare", "audio", "visual", "text")]
    return (p["prepare"] != base["prepare"], bool(p["prepare"].get("targets")), same[0],
            (p["audio"], p["visual"]) != (base["audio"], base["visual"]),
            same[1] + same[2], p["text"] != base["text"], same[3], name)


print(" ".join(sorted(R.available(), key=key)))
PY
)
read -r -a all <<< "$recipes"
[ "${#all[@]}" = "$(python -m pipeline.recipe --list | wc -l)" ] || { echo "FAIL: recipe order" >&2; exit 1; }
n=${#all[@]} h=$(( (n + 1) / 2 ))
here=("${all[@]:0:h-1}" "${all[n-1]}")  # the first ones (features already here) and the last (regression corpus)
there=("${all[@]:h-1:n-h}")

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
git clone -q . "$TMP/lane"

lane() {  # DIR RECIPE…: each recipe's --demo in DIR in turn; one line each (its test score, seconds); stop at a failure
  local dir=$1 r t0 log
  shift
  for r in "$@"; do
    t0=$SECONDS log="$TMP/$r.log"
    (cd "$dir" && git checkout -q -- params.yaml && python -m pipeline.recipe "$r" --demo) > "$log" 2>&1 || {
      tail -20 "$log"; echo "FAIL: recipe $r --demo (in $dir)"; return 1; }
    echo "$r: $(grep -E "test over" "$log" | tail -1 | sed 's/.*INFO //') ($((SECONDS - t0)) s)"
  done
  (cd "$dir" && git checkout -q -- params.yaml)
}

echo "this checkout: ${here[*]}"
echo "a clone:       ${there[*]}"
lane "$TMP/lane" "${there[@]}" > "$TMP/there.out" 2>&1 &
pid=$!
rc_here=0 rc_there=0
lane . "${here[@]}" || rc_here=$?
wait "$pid" || rc_there=$?
cat "$TMP/there.out"
[ "$rc_here" = 0 ] && [ "$rc_there" = 0 ] || { echo "FAIL: a recipe's --demo run failed (above)" >&2; exit 1; }
# the clone's experiments (not its refs/exps/exec run-state refs) into this repository: `dvc exp show` lists them
refs=$(git -C "$TMP/lane" for-each-ref --format='%(refname)' refs/exps | grep -v '^refs/exps/exec/' || true)
[ -z "$refs" ] || git -C "$TMP/lane" push -q origin $(for r in $refs; do echo "$r:$r"; done)
