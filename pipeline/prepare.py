"""Stage ``prepare``: a dataset adapter → the utterance table (``pipeline.schema.UTTERANCE_SCHEMA``).

Adapters (``pipeline/adapters``), chosen by ``prepare.dataset``:
  * ``meld``: the official MELD CSVs plus, when present, MELD.Raw's clip folders (text-only without them);
    known MELD.Raw defects become row statuses; split sizes are checked against the official ones.
  * ``demo``: the embedded demo corpus in ``data/demo``, laid out exactly like MELD.Raw and read by the MELD
    adapter (without the official-size check); it lets the whole pipeline run offline from a fresh clone.
  * ``iemocap``: ``IEMOCAP_full_release`` (Sessions 1-5), 6- or 4-class protocol, Session 5 as test.
  * ``manifest``: a CSV/Parquet listing any corpus's utterances (see the README).

The table's schema metadata records the label set (``labels``) and provenance (adapter, root, params,
counts). Run: ``python -m pipeline.prepare`` (reads ``prepare`` from params.yaml).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.adapters import _probe, iemocap, manifest, meld
from pipeline.common import atomic_write_table, load_params, setup_logging
from pipeline.errors import run_main
from pipeline.media import span_error
from pipeline.schema import KEY, SPLITS, UTTERANCE_SCHEMA, validate

log = logging.getLogger("merc.prepare")

ADAPTERS = {"meld": meld.load, "demo": meld.load, "iemocap": iemocap.load, "manifest": manifest.load}
# Every ``prepare`` parameter and its default; params.yaml may leave out any but dataset and root.
DEFAULTS = dict(
    target="emotion",       # meld/demo: emotion | sentiment
    check_counts="warn",    # meld: warn | strict | off
    max_excess_s=10.0,      # meld: clip longer than its CSV span by more than this → long_media
    max_clip_s=60.0,        # meld: clip longer than this → long_media (whatever the CSV says)
    probe_media=True,       # read container durations (header only)
    iemocap_classes=6,      # iemocap: 6 | 4
    dev_fraction=0.2,       # iemocap: share of training dialogues held out as dev
    seed=0,                 # iemocap: seed of that draw
    labels=None,            # manifest: the label set (None: sorted unique labels)
)


def prepare(dataset: str, root: str | Path, out: str | Path, params: dict | None = None) -> pa.Table:
    """Run adapter ``dataset`` on ``root`` and write the utterance table to ``out`` atomically."""
    if dataset not in ADAPTERS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(ADAPTERS)}")
    unknown = set(params or {}) - set(DEFAULTS) - {"dataset", "root"}
    if unknown:
        raise ValueError(f"unknown prepare params {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **{k: v for k, v in (params or {}).items() if k not in ("dataset", "root")}}
    _probe.cache_clear()  # the probe cache lives for one run: files may change between runs in one process
    res = ADAPTERS[dataset](root, p, dataset)
    df = res.rows.reindex(columns=[c for c in UTTERANCE_SCHEMA.names if c != "label_id"])
    df = df.astype(object).where(df.notna(), None)  # NaN → null in every column
    flag_bad_spans(df)
    dup = df.duplicated(KEY)
    if dup.any():
        raise ValueError(f"duplicate keys: {df.loc[dup, KEY].values.tolist()[:5]}")
    index = {name: i for i, name in enumerate(res.labels)}
    stray = set(df.label.dropna()) - set(index)
    if stray:  # adapters only emit labels of their set; this guards the contract
        raise ValueError(f"labels {sorted(stray)} are not in the label set {res.labels}")
    df["label_id"] = [index.get(x, -1) if x is not None else -1 for x in df.label]
    df = df.sort_values(["split", "dialogue_id", "utterance_id"], key=_natural_key).reset_index(drop=True)
    # no absolute path (e.g. the resolved root): a clone at another path must produce the same bytes
    provenance = dict(adapter=dataset, root=str(root), params=p, counts=res.counts)
    table = validate(pa.Table.from_pandas(df, preserve_index=False), UTTERANCE_SCHEMA)
    table = table.replace_schema_metadata({"labels": json.dumps(res.labels),
                                           "provenance": json.dumps(provenance, sort_keys=True, default=str)})
    atomic_write_table(table, out)
    log.info("wrote %s: %d utterances, labels %s, statuses %s", out, len(df), res.labels,
             df.status.value_counts().to_dict())
    return table


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
