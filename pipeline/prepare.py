"""Stage ``prepare``: a dataset adapter → the utterance table (``pipeline.schema.UTTERANCE_SCHEMA``).

Adapters:
  * ``meld``: the official MELD CSVs (``{train,dev,test}_sent_emo.csv``) plus, when present, MELD.Raw's
    clip folders. Without any clip folder (e.g. ``../shared/data/meld``) it runs text-only.
  * ``demo``: the embedded demo corpus in ``data/demo`` — laid out exactly like MELD.Raw, so it is read by
    the MELD adapter; it exists so that the whole pipeline runs offline from a fresh clone.

Run: ``python -m pipeline.prepare`` (reads ``prepare`` from params.yaml).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.common import atomic_write_table, load_params, setup_logging
from pipeline.schema import EMOTIONS, UTTERANCE_SCHEMA, validate

log = logging.getLogger("merc.prepare")

# MELD.Raw's split folders and CSV names.
MELD_SPLITS = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
MELD_COLUMNS = ["Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"]


def _media_path(path: Path) -> str:
    """Paths inside the repo are stored relative to it so the table is the same in every clone."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def load_meld(root: str | Path, adapter: str = "meld") -> pd.DataFrame:
    """MELD CSVs (+ clips when the split folders exist) → utterance rows."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MELD root {root} does not exist: set prepare.root in params.yaml")
    frames = []
    for split, (csv_name, folder) in MELD_SPLITS.items():
        csv_path = root / csv_name
        if not csv_path.exists():
            raise FileNotFoundError(f"{csv_path} is missing: a MELD root holds {[c for c, _ in MELD_SPLITS.values()]}")
        df = pd.read_csv(csv_path, encoding="utf-8")
        lacking = [c for c in MELD_COLUMNS if c not in df.columns]
        if lacking:
            raise ValueError(f"{csv_path} lacks MELD columns {lacking}")
        clip_dir = root / folder
        has_clips = clip_dir.is_dir()
        if not has_clips:
            log.warning("%s: no clip folder %s, running text-only", split, clip_dir)
        rows = []
        for r in df.itertuples(index=False):
            d, u = int(r.Dialogue_ID), int(r.Utterance_ID)
            label = str(r.Emotion).strip().lower()
            media, status, error = None, "ok", None
            if has_clips:
                clip = clip_dir / f"dia{d}_utt{u}.mp4"
                media = _media_path(clip)
                if not clip.exists():
                    status, error = "missing_media", f"clip {clip} not found"
            else:
                status, error = "no_media", f"no clip folder {clip_dir}"
            rows.append(
                dict(
                    dialogue_id=f"{split}_dia{d}",
                    utterance_id=u,
                    speaker=str(r.Speaker),
                    text=str(r.Utterance),
                    label=label if label in EMOTIONS else None,
                    label_id=EMOTIONS.index(label) if label in EMOTIONS else -1,
                    split=split,
                    media_path=media,
                    start_s=None,
                    end_s=None,
                    status=status,
                    error=error,
                    source=f"adapter={adapter} root={root} csv={csv_name}",
                )
            )
        frames.append(pd.DataFrame(rows))
        log.info("%s: %d utterances, %d dialogues", split, len(rows), len({r["dialogue_id"] for r in rows}))
    return pd.concat(frames, ignore_index=True)


ADAPTERS = {"meld": load_meld, "demo": lambda root: load_meld(root, adapter="demo")}


def prepare(dataset: str, root: str | Path, out: str | Path) -> pa.Table:
    if dataset not in ADAPTERS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(ADAPTERS)}")
    df = ADAPTERS[dataset](root)
    dup = df.duplicated(["dialogue_id", "utterance_id"])
    if dup.any():
        raise ValueError(f"duplicate keys: {df.loc[dup, ['dialogue_id', 'utterance_id']].values.tolist()[:5]}")
    df = df.sort_values(["split", "dialogue_id", "utterance_id"], key=_natural_key).reset_index(drop=True)
    table = validate(pa.Table.from_pandas(df, preserve_index=False), UTTERANCE_SCHEMA)
    atomic_write_table(table, out)
    bad = df[df.status != "ok"]
    log.info("wrote %s: %d utterances (%d without usable media)", out, len(df), len(bad))
    return table


def _natural_key(col: pd.Series) -> pd.Series:
    # "train_dia10" sorts after "train_dia9": order dialogues by their numeric id within a split.
    if col.name == "dialogue_id":
        return col.str.extract(r"(\d+)$")[0].astype(float).fillna(-1) if col.str.contains(r"\d$").all() else col
    if col.name == "split":
        return col.map({s: i for i, s in enumerate(("train", "dev", "test"))})
    return col


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/prepared/utterances.parquet")
    args = ap.parse_args()
    p = load_params("prepare")
    prepare(p["dataset"], p["root"], args.out)


if __name__ == "__main__":
    main()
