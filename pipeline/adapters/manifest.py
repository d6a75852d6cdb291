"""Manifest: any corpus described by one CSV or Parquet file (``prepare.root`` is that file).

Columns: ``utterance_id, speaker, text, label, split`` (required; values may be empty: an empty label is
unlabelled) and ``media_path, dialogue_id, start_s, end_s, audio_path`` (optional). Without a ``media_path``
column the corpus is text-only; an empty ``media_path`` is a text-only row (status ``no_media``: the audio and
visual stages give it ``absent``), a wav is an audio-only one. Without ``dialogue_id`` every row is its own
dialogue (``utterance_id`` names it); with it, ``utterance_id`` is the integer position in the dialogue.
Relative paths are relative to the manifest's folder. The label set is ``prepare.labels`` or, when null,
the sorted unique labels. Labels, splits, speakers and ids are stripped of surrounding whitespace (``"joy "`` is
``joy``); labels differing only in case (``Joy``/``joy``) stay distinct classes but are warned about.
Structural faults (missing columns, duplicate keys, unknown splits or labels; an
empty, header-only or non-UTF-8 file) raise a one-line ``UserError`` naming the file or rows; bad media or
times become row statuses.

Regression (``prepare.targets``: a list of column names, e.g. ``[valence, arousal]``): those columns hold each
row's targets as numbers, in that order, and the table has no classes (``label`` null, ``label_id`` -1; its
``targets`` metadata names them). The ``label`` column is then optional and must be absent or empty. A row with
every target cell empty is unlabelled (``targets`` null); a row with some empty and some filled, or a cell that is
not a finite number (text, ``nan``, ``inf``), stops the run with one line naming the column and manifest lines.
In a Parquet manifest a NaN in a float column counts as an empty cell, ±inf as a bad one.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.adapters import TARGET_ABS_LIMIT, Prepared, probe, rel_path, utf8_fault
from pipeline.errors import UserError
from pipeline.extraction.media import span_error
from pipeline.schema import SPLITS

log = logging.getLogger("merc.prepare.manifest")

REQUIRED = ["utterance_id", "speaker", "text", "label", "split"]
OPTIONAL = ["media_path", "dialogue_id", "start_s", "end_s", "audio_path"]
HEADER = ",".join(REQUIRED + OPTIONAL)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist: set prepare.root to a .csv or .parquet file")
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        else:  # strings stay strings ("007" is an id, not 7); times are converted below
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"manifest {path} is empty: write a header line ({HEADER}) and one row per utterance "
                        "(see README, manifest)") from None
    except UnicodeDecodeError:
        raise UserError(f"manifest {path} is not UTF-8 text ({utf8_fault(path)}): save it as UTF-8") from None
    except (OSError, ValueError) as e:
        raise UserError(f"manifest {path} cannot be read as {'Parquet' if path.suffix.lower() == '.parquet' else 'CSV'}"
                        f" ({type(e).__name__}: {e}): give a .csv (UTF-8) or .parquet file") from None
    if df.empty:
        raise UserError(f"manifest {path} has no utterance rows (header only?): add one row per utterance under "
                        f"the header {HEADER}")
    # object columns holding None for blanks (pandas' string dtype would turn them back into NaN)
    blank = lambda v: v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())
    return pd.DataFrame({c: pd.Series([None if blank(v) else v for v in df[c]], dtype=object) for c in df.columns})


def _rows(df: pd.DataFrame, mask: pd.Series, n: int = 5) -> list[int]:
    """Manifest line numbers (header = line 1) of the first ``n`` offending rows."""
    return [i + 2 for i in df.index[mask][:n]]


def _number(v) -> float | None:
    """A target cell as a float; None when it is not one finite number within ±``TARGET_ABS_LIMIT`` (text, nan,
    inf, 1e300, a boolean)."""
    if isinstance(v, (bool, np.bool_)):
        return None
    try:
        x = float(v.strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) and abs(x) <= TARGET_ABS_LIMIT else None


def _targets(df: pd.DataFrame, names: list[str], path: Path) -> list[list[float] | None]:
    """Each row's target values in ``names`` order (None: every target cell empty, an unlabelled row)."""
    reserved = [c for c in names if c in REQUIRED + OPTIONAL + ["targets"]]
    if reserved:
        raise UserError(f"prepare.targets {names}: {reserved} are manifest columns with another meaning; name the "
                        "target columns otherwise (e.g. valence, arousal, score)")
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise UserError(f"manifest {path} lacks the target columns {missing} named by prepare.targets; its columns "
                        f"are {list(df.columns)}")
    faults = []
    values = {}
    for c in names:
        values[c] = df[c].map(lambda v: None if v is None else _number(v))
        bad = df[c].notna() & values[c].isna()
        if bad.any():
            shown = [str(v) for v in df.loc[bad, c][:3]]
            faults.append(f"column {c!r} on lines {_rows(df, bad)} (got {shown})")
    if faults:
        raise UserError(f"manifest {path}: target values that are not finite numbers within ±{TARGET_ABS_LIMIT:g} in "
                        f"{'; '.join(faults)}: write numbers, or leave every target cell of an unlabelled row empty")
    filled = pd.DataFrame({c: df[c].notna() for c in names})
    half = filled.any(axis=1) & ~filled.all(axis=1)
    if half.any():
        raise UserError(f"manifest {path}: rows with some target columns {names} empty and others filled on lines "
                        f"{_rows(df, half)}: fill every target, or leave them all empty (unlabelled)")
    full = filled.all(axis=1).to_numpy()
    arr = np.array([[np.nan if x is None else x for x in values[c]] for c in names], dtype=np.float64).T
    return [row.tolist() if ok else None for row, ok in zip(arr, full)]


def _map_labels(df: pd.DataFrame, label_map, path: Path) -> tuple[pd.DataFrame, dict]:
    """Apply ``prepare.label_map`` ({label: new label | None}): renamed labels merge classes, None drops the rows
    (counted as ``dropped_<label>``); positions in each dialogue are renumbered so they stay 0..n-1, as the IEMOCAP
    adapter's 4-class protocol does with the codes it drops."""
    if not label_map:
        return df, {}
    if not isinstance(label_map, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                                  for k, v in label_map.items()):
        raise UserError(f"prepare.label_map must map label names to a label name or null, e.g. "
                        f"{{excited: happy, frustrated: null}}; got {label_map!r}")
    unknown = sorted(set(label_map) - set(df.label.dropna().astype(str)))
    if unknown:
        raise UserError(f"prepare.label_map names labels {unknown} that manifest {path} does not have")
    drop = df.label.isin([k for k, v in label_map.items() if v is None])
    dropped = {f"dropped_{k}": int((df.label == k).sum()) for k, v in sorted(label_map.items()) if v is None}
    df = df[~drop].copy()
    df["label"] = [label_map.get(x, x) if x is not None else None for x in df.label]
    # rows keep their index, so errors below still name manifest lines
    df["utterance_id"] = (df.groupby("dialogue_id").utterance_id.rank(method="first") - 1).astype(int)
    return df, dropped


def load(root: str | Path, params: dict, adapter: str = "manifest") -> Prepared:
    path = Path(root)
    df = _read(path)
    for c in ("label", "split", "speaker", "dialogue_id", "utterance_id"):  # "joy " is joy, " train" is train
        if c in df.columns:
            df[c] = pd.Series([v.strip() if isinstance(v, str) else v for v in df[c]], index=df.index, dtype=object)
    names = list(params.get("targets") or [])
    required = [c for c in REQUIRED if not (names and c == "label")]  # regression: the label column is optional
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"manifest {path} lacks columns {missing}; required {required}, optional {OPTIONAL}")
    if names:
        if "label" not in df.columns:
            df["label"] = None
        labelled = df.label.notna()
        if labelled.any():
            raise UserError(f"manifest {path}: prepare.targets {names} makes this a regression corpus, but the label "
                            f"column is filled on lines {_rows(df, labelled)}: empty it or drop the column")
        df["targets"] = _targets(df, names, path)
    if "media_path" not in df.columns:
        log.info("manifest %s has no media_path column: a text-only corpus", path)
    for c in OPTIONAL:
        if c not in df.columns:
            df[c] = None
    if df.utterance_id.isna().any():
        raise UserError(f"manifest {path}: utterance_id empty on lines {_rows(df, df.utterance_id.isna())}")
    if df.dialogue_id.isna().all():  # each clip its own dialogue
        df["dialogue_id"], df["utterance_id"] = df.utterance_id.astype(str), 0
    elif df.dialogue_id.isna().any():
        raise UserError(f"manifest {path}: dialogue_id empty on lines {_rows(df, df.dialogue_id.isna())}")
    else:
        ids = pd.to_numeric(df.utterance_id, errors="coerce")
        bad = ids.isna() | (ids != ids.round())
        if bad.any():
            raise UserError(f"manifest {path}: utterance_id must be an integer position when dialogue_id is "
                             f"given; lines {_rows(df, bad)}")
        df["utterance_id"] = ids.astype(int)
    df["dialogue_id"] = df.dialogue_id.astype(str)
    df, dropped = _map_labels(df, params.get("label_map"), path)
    bad = ~df.split.isin(SPLITS)
    if bad.any():
        raise UserError(f"manifest {path}: unknown splits {sorted(set(map(str, df.split[bad])))} on lines "
                         f"{_rows(df, bad)}; use {list(SPLITS)}")
    dup = df.duplicated(["dialogue_id", "utterance_id"], keep=False)
    if dup.any():
        keys = df.loc[dup, ["dialogue_id", "utterance_id"]].drop_duplicates().values.tolist()[:5]
        raise UserError(f"manifest {path}: duplicate keys {keys} on lines {_rows(df, dup, 10)}")
    present = sorted(set(df.label.dropna().astype(str)))
    labels = [str(x) for x in params["labels"]] if params.get("labels") and not names else present
    unknown = sorted(set(present) - set(labels))
    if unknown:
        lines = _rows(df, df.label.astype(str).isin(unknown) & df.label.notna(), 10)
        near = {u: x for u in unknown for x in labels if u.lower() == x.lower()}
        raise UserError(f"manifest {path}: labels {unknown} are not in prepare.labels {labels} (lines {lines})"
                        + (f"; case differs: {near}" if near else ""))
    folded: dict[str, list[str]] = {}
    for x in present:
        folded.setdefault(x.lower(), []).append(x)
    for variants in folded.values():
        if len(variants) > 1:
            lines = {v: _rows(df, df.label == v, 5) for v in variants}
            log.warning("manifest %s: labels %s differ only in case and are %d separate classes (lines %s); write "
                        "them the same way if they are one emotion", path, variants, len(variants), lines)
    unparsable = pd.Series(False, index=df.index)
    for c in ("start_s", "end_s"):
        num = pd.to_numeric(df[c], errors="coerce")
        unparsable |= df[c].notna() & num.isna()  # reported per row as bad_times below
        df[c] = num
    df["unparsable"] = unparsable
    base = path.parent
    out = []
    for r in df.itertuples(index=False):
        start, end = (None if pd.isna(x) else float(x) for x in (r.start_s, r.end_s))
        media = Path(rel_path(base / r.media_path)) if r.media_path else None  # errors name it as stored
        audio = rel_path(base / r.audio_path) if r.audio_path else None
        status, error, dur = "no_media", "manifest row has no media_path", None
        if media is not None:
            status, error, dur = probe(media, end) if params["probe_media"] else ("ok", None, None)
            why = f"start_s/end_s are not numbers: got {start}, {end}" if r.unparsable else span_error(start, end)
            if status == "ok" and why:
                status, error = "bad_times", f"{why} (need numbers 0 <= start_s < end_s, or neither)"
        out.append(dict(
            dialogue_id=r.dialogue_id, utterance_id=r.utterance_id, speaker=r.speaker, text=r.text or "",
            label=None if r.label is None else str(r.label), split=r.split,
            media_path=str(media) if media else None, start_s=start, end_s=end, audio_path=audio,
            annot_duration_s=end - start if start is not None and end is not None else None,
            media_duration_s=dur, status=status, error=error, source=f"adapter={adapter} file={rel_path(path)}",
            targets=r.targets if names else None,
        ))
    res = pd.DataFrame(out)
    counts = {f"{s}_utterances": int((res.split == s).sum()) for s in SPLITS}
    counts.update({f"status_{k}": int(v) for k, v in res.status.value_counts().items() if k != "ok"})
    counts.update(dropped)
    if names:
        counts["unlabelled_utterances"] = int(res.targets.isna().sum())
    log.info("manifest %s: %d utterances, %s %s, %s", path, len(res), "targets" if names else "labels",
             names or labels, counts)
    return Prepared(res, labels, counts, targets=names)
