"""Committed run store: what the report needs of an experiment, in git, so a fresh clone rebuilds every table.

DVC experiments live in refs (``refs/exps``) that are not pushed; ``python -m pipeline.report save <name> …``
copies each named experiment into ``reports/runs/<name>/``:

  run.json     name, rev, recipe, corpus, params (params.yaml of the run), metrics (reports/metrics.json, per-seed
               records under ``seeds`` included), dev_metrics (reports/dev/metrics.json), teacher_metrics
               (reports/teacher/metrics.json), and the list of stored files with their sha256
  files/<path> the files the analyses read, under their repository path: reports/predictions.csv (emotion
               shift), reports/plots/tsne.csv (t-SNE), for Ada2I its per-epoch ρ / score / weight-norm TSVs, and
               data/prepared/utterances.parquet reduced to the test split's dialogue_id, utterance_id, speaker,
               label, split (what the emotion-shift analysis reads; the full table is DVC-cached, not here).
               ``--no-files``: run.json only (~10 KB instead of ~0.1-0.3 MB on MELD's test split).

Each entry is written to a temporary folder and renamed into place. An entry that exists is replaced when it
holds the same configuration (corpus and every parameter but the seed; a rerun), refused otherwise unless
``--force``. ``python -m pipeline.report`` reads the store and the live experiments together; an experiment
that is live (same name or same rev) wins over its stored copy, because the live one can also read its
DVC-cached files (checkpoint, full utterance table).
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from pipeline.common import atomic_write_text
from pipeline.errors import UserError
from pipeline.report.runs import Run, config_of, diff, load_exp_show, runs_from_exp_show

log = logging.getLogger("merc.report")

STORE = "reports/runs"
RUN_JSON = "run.json"
FILES = "files"
FORMAT = 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
UTTERANCE_COLUMNS = ["dialogue_id", "utterance_id", "speaker", "label", "split"]


# -------------------------------------------------------------------------------------------------------- saving

def _swap_entry(tmp: Path, dest: Path) -> None:
    """Put the finished entry ``tmp`` at ``dest``. Only a store entry (a folder with run.json, which this module
    writes) is ever replaced — moved aside, then removed — so a reader sees the old entry or the new one; anything
    else at ``dest`` is refused, never deleted."""
    if dest.exists() or dest.is_symlink():
        if not (dest.is_dir() and not dest.is_symlink() and (dest / RUN_JSON).is_file()):
            raise UserError(f"{dest} exists and is not a run-store entry (no {RUN_JSON}): move it away first")
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)

def analysis_files(run: Run) -> dict[str, bytes]:
    """Path → bytes of the files the report's analyses read that this run has (absent ones are left out)."""
    from pipeline.report import LIVE, PREDICTIONS, TSNE, UTTERANCES, utterance_table

    paths = [PREDICTIONS, TSNE]
    if run.params.get("model") == "ada2i":  # Figs. 1b, 4, 5 read these logs (no other model writes them)
        n = max(len(run.corpus.labels), 1)
        paths += [f"{LIVE}/{p}_{m}.tsv" for p in ("rho", "score") for m in "tav"]
        paths += [f"{LIVE}/wnorm_{m}_c{k}.tsv" for m in "tav" for k in range(n)]
    out = {p: b for p in paths if (b := run.file(p)) is not None}
    try:
        utt = utterance_table(run)
    except Exception as e:  # noqa: BLE001 — an unreadable table costs the analysis, not the save
        log.warning("%s: utterance table unreadable (%s: %s): stored without it", run.name, type(e).__name__, e)
        utt = None
    if utt is not None:
        cols = [c for c in UTTERANCE_COLUMNS if c in utt.columns]
        test = utt.loc[utt["split"] == "test", cols] if "split" in utt.columns else utt[cols]
        buf = io.BytesIO()
        test.reset_index(drop=True).to_parquet(buf, index=False)
        out[UTTERANCES] = buf.getvalue()
    return out


def _finite(obj, path: str, bad: list[str]):
    """``obj`` with every NaN/inf replaced by null (their paths go to ``bad``): JSON has no NaN, and a
    non-finite metric must not pass as a number."""
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v, f"{path}[{i}]", bad) for i, v in enumerate(obj)]
    return obj


def record(run: Run, files: dict[str, bytes]) -> dict:
    """The run.json of ``run`` (files listed by sha256, their bytes stored beside it)."""
    from pipeline.report import UTTERANCES

    c = run.corpus
    rec = {"format": FORMAT, "name": run.name, "rev": run.rev, "recipe": run.recipe,
           "corpus": {"adapter": c.adapter, "target": c.target, "labels": list(c.labels), "source": c.source,
                      "targets": list(c.targets)},
           "params": run.params, "metrics": run.metrics, "dev_metrics": run.dev_metrics,
           "teacher_metrics": run.teacher_metrics,
           "files": {p: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for p, b in sorted(files.items())}}
    if UTTERANCES in files:
        rec["reduced"] = {UTTERANCES: "test split; columns " + ", ".join(UTTERANCE_COLUMNS)}
    bad: list[str] = []
    rec = _finite(rec, "", bad)
    if bad:
        log.warning("%s: non-finite values stored as null: %s", run.name, ", ".join(bad[:10]))
    return rec


def _identity(params: dict, metrics: dict) -> tuple[str, dict]:
    r = Run("", "", params, metrics)
    return r.corpus.key, config_of(params)


def select(runs: list[Run], names: list[str], patterns: list[str]) -> list[Run]:
    """The runs named exactly (``names``) or matching a shell pattern (``patterns``), in that order, once each."""
    chosen: list[Run] = []
    have = sorted({r.name for r in runs})
    listed = ", ".join(have[:20]) + (" …" if len(have) > 20 else "")
    for name in names:
        hits = [r for r in runs if r.name == name]
        if not hits:
            raise UserError(f"no experiment named {name!r} in `dvc exp show` (have: {listed})")
        chosen += hits
    for pat in patterns:
        hits = [r for r in runs if fnmatch.fnmatchcase(r.name, pat)]
        if not hits:
            raise UserError(f"no experiment matches {pat!r} (have: {listed})")
        chosen += hits
    out, seen = [], set()
    for r in chosen:
        if r.rev not in seen:
            seen.add(r.rev)
            out.append(r)
    dup = sorted({r.name for r in out if sum(x.name == r.name for x in out) > 1})
    if dup:
        raise UserError(f"several experiments are named {dup[0]!r}: save them one at a time (`dvc exp rename`)")
    return out


def _conflict(run: Run, dest: Path) -> str | None:
    """Why ``dest`` may not be replaced by ``run`` without --force (None: it may)."""
    f = dest / RUN_JSON
    if not f.is_file():
        return None
    try:
        old = json.loads(f.read_text())
        old_id = _identity(old["params"], old["metrics"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{f} is unreadable ({type(e).__name__})"
    new_id = _identity(run.params, run.metrics)
    if old_id == new_id:
        return None
    if old_id[0] != new_id[0]:
        return f"{dest} holds a run on another corpus"
    keys = sorted(set(diff(new_id[1], old_id[1], common_only=False))
                  | set(diff(old_id[1], new_id[1], common_only=False)))
    shown = ", ".join(f"{k}: {old_id[1].get(k)!r} → {new_id[1].get(k)!r}" for k in keys[:4])
    return f"{dest} holds another configuration ({shown}{' …' if len(keys) > 4 else ''})"


def save(runs: list[Run], store: str | Path = STORE, force: bool = False, files: bool = True) -> list[Path]:
    """Write each run into ``store/<name>/`` (atomically); refuses, before writing anything, to replace an
    entry that holds another configuration unless ``force``."""
    store = Path(store)
    for run in runs:
        if not NAME.match(run.name):
            raise UserError(f"experiment name {run.name!r} is not a safe folder name ([A-Za-z0-9._-], not "
                            "starting with . or -): rename it with `dvc exp rename`")
    conflicts = [(r, why) for r in runs if (why := _conflict(r, store / r.name))]
    if conflicts and not force:
        r, why = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise UserError(f"not saving {r.name}: {why}{more}; pass --force to replace it")
    store.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        blobs = analysis_files(run) if files else {}
        rec = record(run, blobs)
        tmp = Path(tempfile.mkdtemp(dir=store, prefix=f".{run.name}.tmp-"))
        try:
            for path, data in blobs.items():
                f = tmp / FILES / path
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)
            atomic_write_text(json.dumps(rec, indent=1, sort_keys=True, allow_nan=False) + "\n", tmp / RUN_JSON)
            dest = store / run.name
            replaced = dest.exists()
            _swap_entry(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved %s → %s%s (%d files, %d bytes)", run.name, dest, " (replaced)" if replaced else "",
                 len(blobs), sum(len(b) for b in blobs.values()))
        written.append(dest)
    return written


# ------------------------------------------------------------------------------------------------------- loading
def _reader(root: Path):
    """Path → bytes of a stored file (None when the entry does not have it); never outside ``root``."""
    base = root.resolve()

    def read(path: str) -> bytes | None:
        f = (root / path).resolve()
        if base not in f.parents or not f.is_file():
            return None
        return f.read_bytes()

    return read


def load(store: str | Path = STORE) -> list[Run]:
    """Every stored run; an unreadable entry is a warning and is skipped."""
    store = Path(store)
    if not store.is_dir():
        return []
    runs = []
    for d in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        f = d / RUN_JSON
        if not f.is_file():
            continue
        try:
            rec = json.loads(f.read_text())
            if not (isinstance(rec.get("params"), dict) and isinstance(rec.get("metrics"), dict)):
                raise ValueError("no params/metrics mapping")
        except (OSError, ValueError, AttributeError) as e:
            log.warning("%s: unreadable (%s: %s): skipped", f, type(e).__name__, e)
            continue
        runs.append(Run(str(rec.get("name") or d.name), str(rec.get("rev") or ""), rec["params"], rec["metrics"],
                        rec.get("dev_metrics"), rec.get("teacher_metrics"), read=_reader(d / FILES)))
    return runs


def merge(live: list[Run], stored: list[Run]) -> list[Run]:
    """Live experiments plus the stored ones that are not live (same name or same rev: the live one wins), in
    name order, so the tables list rows alike whichever source a run came from."""
    names, revs = {r.name for r in live}, {r.rev for r in live if r.rev}
    extra = [r for r in stored if r.name not in names and r.rev not in revs]
    if stored:
        log.info("runs: %d live, %d from the store (%d of them also live)", len(live), len(extra),
                 len(stored) - len(extra))
    return sorted(live + extra, key=lambda r: (r.name, r.rev))


# ----------------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.report save",
                                 description="Save experiments into the committed run store (reports/runs/<name>/).")
    ap.add_argument("names", nargs="*", help="experiment names (as `dvc exp show` lists them)")
    ap.add_argument("--all-matching", action="append", default=[], metavar="PATTERN",
                    help="every experiment whose name matches the shell pattern, e.g. 'iemo6-*' (repeatable)")
    ap.add_argument("--exp-json", help="saved `dvc exp show --json` output (default: run it)")
    ap.add_argument("--store", default=STORE)
    ap.add_argument("--force", action="store_true", help="replace an entry that holds another configuration")
    ap.add_argument("--no-files", action="store_true", help="run.json only, without the analyses' files")
    args = ap.parse_args(argv)
    if not args.names and not args.all_matching:
        raise UserError("name the experiments to save: `python -m pipeline.report save NAME … "
                        "[--all-matching 'iemo6-*']`")
    runs = select(runs_from_exp_show(load_exp_show(args.exp_json)), args.names, args.all_matching)
    save(runs, args.store, args.force, not args.no_files)
