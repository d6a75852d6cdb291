"""Stage ``prepare``: a dataset adapter → the utterance table (``pipeline.schema.UTTERANCE_SCHEMA``).

Adapters (``pipeline/adapters``), chosen by ``prepare.dataset``:
  * ``meld``: the official MELD CSVs plus, when present, MELD.Raw's clip folders (text-only without them);
    known MELD.Raw defects become row statuses; split sizes are checked against the official ones.
  * ``demo``: the embedded demo corpus in ``data/demo``, laid out exactly like MELD.Raw and read by the MELD
    adapter (without the official-size check); it lets the whole pipeline run offline from a fresh clone.
  * ``iemocap``: ``IEMOCAP_full_release`` (Sessions 1-5), 6- or 4-class protocol, Session 5 as test;
    ``prepare.target: dimensional``: regression on the annotators' mean valence, arousal, dominance.
  * ``mosei``: CMU-MOSEI's raw release (segment transcripts, videos, label.csv or the SDK's .csd + folds);
    2- or 7-class sentiment, or ``prepare.target: sentiment``: regression on the score in [-3, 3].
  * ``manifest``: a CSV/Parquet listing any corpus's utterances (see the README); ``prepare.targets`` names
    numeric columns to regress on instead of classes.
  * ``features``: a pre-extracted feature pickle (DialogueRNN/MMGCN or Ada2I layout, read by a restricted
    unpickler); the extract stages then serve its vectors (``pipeline.extraction.imported``).

The table's schema metadata records the label set (``labels``; empty for a regression corpus), the regression
target names (``targets``, absent for classification) and provenance (adapter, root, params, counts). Run: ``python -m pipeline.prepare`` (reads ``prepare`` from params.yaml).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.adapters import TARGET_ABS_LIMIT, _probe, features, iemocap, manifest, meld, mosei
from pipeline.common import atomic_write_table, load_params, setup_logging
from pipeline.errors import MissingFileError, UserError, run_main
from pipeline.extraction.media import span_error
from pipeline.schema import KEY, SPLITS, UTTERANCE_SCHEMA, validate

log = logging.getLogger("merc.prepare")

ADAPTERS = {"meld": meld.load, "demo": meld.load, "iemocap": iemocap.load, "manifest": manifest.load,
            "features": features.load, "mosei": mosei.load}
# Every ``prepare`` parameter and its default; params.yaml may leave out any but dataset and root.
DEFAULTS = dict(
    target="emotion",       # meld/demo: emotion | sentiment; iemocap: emotion | dimensional (regression on
                            # valence, arousal, dominance); mosei: sentiment2 | sentiment7 | sentiment (regression)
    check_counts="warn",    # meld: warn | strict | off
    max_excess_s=10.0,      # meld: clip longer than its CSV span by more than this → long_media
    max_clip_s=60.0,        # meld: clip longer than this → long_media (whatever the CSV says)
    probe_media=True,       # read container durations (header only)
    iemocap_classes=6,      # iemocap: 6 | 4
    dev_fraction=0.2,       # iemocap: share of training dialogues held out as dev
    seed=0,                 # iemocap: seed of that draw
    labels=None,            # manifest: the label set (None: sorted unique labels); features: class names in index order
    targets=None,           # manifest: regression target columns, e.g. [valence, arousal] (None: classification)
    label_map=None,         # manifest: {label: new label | null}; null drops those rows (IEMOCAP 4-class from the
                            # 6-class transcripts: {excited: happy, frustrated: null})
    features_format="auto",  # features: auto | dialoguernn | ada2i (pipeline/adapters/features.py)
    features_label_key=None,  # features: which label set of a pickle that has several (Ada2I's MOSEI: 2class | 7class)
)


def prepare(dataset: str, root: str | Path, out: str | Path, params: dict | None = None) -> pa.Table:
    """Run adapter ``dataset`` on ``root`` and write the utterance table to ``out`` atomically."""
    if dataset not in ADAPTERS:
        raise UserError(f"params.yaml prepare.dataset: unknown dataset {dataset!r}; use one of {sorted(ADAPTERS)}")
    unknown = set(params or {}) - set(DEFAULTS) - {"dataset", "root"}
    if unknown:
        raise UserError(f"unknown prepare params {sorted(unknown)} in params.yaml; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **{k: v for k, v in (params or {}).items() if k not in ("dataset", "root")}}
    check_labels(p["labels"])
    check_target_columns(p["targets"], dataset, p["labels"])
    _probe.cache_clear()  # the probe cache lives for one run: files may change between runs in one process
    try:
        res = ADAPTERS[dataset](root, p, dataset)
    except FileNotFoundError as e:
        if isinstance(e, UserError):
            raise
        raise MissingFileError(f"prepare.root {root}: {e}") from e
    df = res.rows.reindex(columns=[c for c in UTTERANCE_SCHEMA.names if c != "label_id"])
    df = df.astype(object).where(df.notna(), None)  # NaN → null in every column
    flag_bad_spans(df)
    dup = df.duplicated(KEY)
    if dup.any():
        raise UserError(f"prepare.root {root}: duplicate (dialogue_id, utterance_id) keys "
                        f"{df.loc[dup, KEY].values.tolist()[:5]}: each utterance must appear once")
    check_targets(df, res.targets, root)
    index = {name: i for i, name in enumerate(res.labels)}
    stray = set(df.label.dropna()) - set(index)
    if stray:  # adapters only emit labels of their set; this guards the contract
        raise ValueError(f"labels {sorted(stray)} are not in the label set {res.labels}")
    df["label_id"] = [index.get(x, -1) if x is not None else -1 for x in df.label]
    df = df.sort_values(["split", "dialogue_id", "utterance_id"], key=_natural_key).reset_index(drop=True)
    # no absolute path (e.g. the resolved root): a clone at another path must produce the same bytes
    provenance = dict(adapter=dataset, root=str(root), params=p, counts=res.counts)
    table = validate(pa.Table.from_pandas(df, preserve_index=False), UTTERANCE_SCHEMA)
    meta = {"labels": json.dumps(res.labels), "provenance": json.dumps(provenance, sort_keys=True, default=str)}
    if res.targets:
        meta["targets"] = json.dumps(list(res.targets))
    table = table.replace_schema_metadata(meta)
    atomic_write_table(table, out)
    log.info("wrote %s: %d utterances, labels %s, statuses %s", out, len(df), res.labels,
             df.status.value_counts().to_dict())
    return table


def check_targets(df: pd.DataFrame, targets: list[str], root) -> None:
    """The regression contract every adapter's rows must meet: with ``targets`` named, ``label`` is null and each
    row's ``targets`` is None (unlabelled) or one finite number within ±``TARGET_ABS_LIMIT`` (1e6) per target;
    without, ``targets`` is None. Beyond the bound a value is a data error (1e300 would pass here and overflow the
    loss in training, blamed on ``train.lr``). Adapters name the offending lines of their own files first; this
    guards what reaches the table."""
    if not targets:
        if df.targets.notna().any():
            raise ValueError("adapter returned targets values without naming its targets")
        return
    if df.label.notna().any():
        raise ValueError("a regression corpus has no class labels: adapter returned both")
    bad = []
    for key, v in zip(zip(df.dialogue_id, df.utterance_id), df.targets):
        if v is None:
            continue
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.array([np.nan])
        if arr.shape != (len(targets),) or not np.isfinite(arr).all() or (np.abs(arr) > TARGET_ABS_LIMIT).any():
            bad.append(key)
    if bad:
        raise UserError(f"prepare.root {root}: {len(bad)} utterance(s) have target values that are not "
                        f"{len(targets)} finite number(s) within ±{TARGET_ABS_LIMIT:g} ({', '.join(targets)}), "
                        f"e.g. {bad[:5]}: fix them or leave the row unlabelled")
    df["targets"] = [None if v is None else [float(x) for x in v] for v in df.targets]


def _check_names(values, key: str, what: str, example: str, once: str) -> None:
    """A ``prepare.<key>`` list: null, or distinct non-empty strings; anything else is a one-line ``UserError``."""
    if values is None:
        return
    if not isinstance(values, list) or not values:
        raise UserError(f"params.yaml prepare.{key} must be null or a non-empty list of {what} (e.g. {example}), "
                        f"got {values!r}")
    odd = [x for x in values if not isinstance(x, str) or not x.strip()]
    if odd:
        raise UserError(f"params.yaml prepare.{key} must hold {what} as strings; {odd} are not (quote them in YAML: "
                        "'1', 'yes')")
    dup = sorted({x for x in values if values.count(x) > 1})
    if dup:
        raise UserError(f"params.yaml prepare.{key} lists {dup} more than once: {once}")


def check_labels(labels) -> None:
    """``prepare.labels``: null, or a list of distinct non-empty strings (YAML reads ``[yes, no]`` as booleans
    and ``1`` as a number: quote them); anything else is a one-line ``UserError``."""
    _check_names(labels, "labels", "label names", "[neutral, joy, anger]", "each label once, in label order")


def check_target_columns(targets, dataset: str, labels) -> None:
    """``prepare.targets``: null, or (manifest only) a list of distinct non-empty column names, without
    ``prepare.labels`` (a regression corpus has no classes); anything else is a one-line ``UserError``."""
    if targets is None:
        return
    _check_names(targets, "targets", "manifest column names", "[valence, arousal]", "each target column once")
    if dataset != "manifest":
        raise UserError(f"params.yaml prepare.targets is for the manifest adapter, not {dataset!r}: set it to null "
                        "(iemocap regresses with prepare.target: dimensional, mosei with prepare.target: sentiment)")
    if labels is not None:
        raise UserError(f"params.yaml sets both prepare.targets {targets} (regression) and prepare.labels {labels} "
                        "(classes): set prepare.labels to null")


def flag_bad_spans(df: pd.DataFrame) -> None:
    """Every adapter's rows: a negative or non-finite time, or a span shorter than one audio sample, is
    ``bad_times`` (media stages then never decode it), whatever the adapter checked itself."""
    for i, (status, start, end) in enumerate(zip(df.status, df.start_s, df.end_s)):
        err = span_error(start, end) if status == "ok" else None
        if err:
            df.iloc[i, df.columns.get_loc("status")] = "bad_times"
            df.iloc[i, df.columns.get_loc("error")] = err


def _natural_key(col: pd.Series) -> pd.Series:
    # "train_dia10" sorts after "train_dia9", "Ses02F_impro01" after "Ses01M_script03_2": zero-pad numbers.
    if col.name == "dialogue_id":
        return col.str.replace(r"\d+", lambda m: m.group().zfill(12), regex=True)
    if col.name == "split":
        return col.map({s: i for i, s in enumerate(SPLITS)})
    return col


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/prepared/utterances.parquet")
    args = ap.parse_args()
    p = load_params("prepare")
    prepare(p["dataset"], p["root"], args.out, p)


if __name__ == "__main__":
    run_main(main)
