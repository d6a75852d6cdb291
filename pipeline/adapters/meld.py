"""MELD: the official ``{train,dev,test}_sent_emo.csv`` plus, when present, MELD.Raw's clip folders.

MELD.Raw's known defects become row statuses, never a failed run: the corrupt ``train dia125_utt3``
(``corrupt_media``), the missing ``dev dia110_utt7`` (``missing_media``), clips minutes long that hold
far more than their utterance (``long_media``: container duration exceeds the CSV's EndTime-StartTime by
more than ``max_excess_s``, or exceeds ``max_clip_s`` — for some the CSV times are wrong as well; media
dropped), and unannotated or oddly named files such as
``final_videos_testdia101_utt0.mp4`` (ignored, counted). Without clip folders it runs text-only.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from pipeline.adapters import Prepared, csv_lines, probe, read_csv, rel_path
from pipeline.errors import UserError
from pipeline.schema import EMOTIONS

log = logging.getLogger("merc.prepare.meld")

SPLITS = {  # split → (CSV, clip folder), as MELD.Raw ships them
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
COLUMNS = ["Utterance", "Speaker", "Dialogue_ID", "Utterance_ID"]
OFFICIAL = {"train": (9989, 1038), "dev": (1109, 114), "test": (2610, 280)}  # utterances, dialogues
SENTIMENTS = ["neutral", "positive", "negative"]
TARGETS = {"emotion": ("Emotion", EMOTIONS), "sentiment": ("Sentiment", SENTIMENTS)}
CLIP = re.compile(r"dia(\d+)_utt(\d+)\.mp4")


def _seconds(ts) -> float | None:
    """MELD's ``HH:MM:SS,mmm`` → seconds (None when absent or malformed)."""
    m = re.fullmatch(r"(\d+):(\d+):(\d+)[,.](\d+)", str(ts).strip())
    return None if m is None else int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + int(m[4]) / 10 ** len(m[4])


def _scan(clip_dir: Path, annotated: set[tuple[int, int]], split: str, counts: dict) -> None:
    """Count (and log) files no CSV row points at: odd names and unannotated clips are ignored."""
    odd, extra = [], []
    for f in sorted(clip_dir.iterdir()):
        m = CLIP.fullmatch(f.name)
        if m is None:
            odd.append(f.name)
        elif (int(m[1]), int(m[2])) not in annotated:
            extra.append(f.name)
    counts[f"{split}_ignored_odd_names"], counts[f"{split}_ignored_unannotated"] = len(odd), len(extra)
    if odd or extra:
        log.warning("%s: ignored %d oddly named files (e.g. %s) and %d clips without a CSV row (e.g. %s)",
                    split, len(odd), odd[:3], len(extra), extra[:3])


def _check_rows(df: pd.DataFrame, csv_path: Path, label_col: str, labels) -> None:
    """Ids must be whole numbers and labels one of the set (case and surrounding blanks aside): a typo'd
    emotion must not turn its utterance silently unlabelled."""
    for col in ("Dialogue_ID", "Utterance_ID"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | (num != num.round()) | (num < 0)
        if bad.any():
            raise UserError(f"{csv_path}: {col} is not a whole number on lines {csv_lines(bad)} (got "
                            f"{df.loc[bad, col].astype(str).tolist()[:3]})")
    norm = df[label_col].astype(str).str.strip().str.lower()
    bad = df[label_col].notna() & ~norm.isin(list(labels))
    if bad.any():
        raise UserError(f"{csv_path}: {label_col} values {sorted(set(df.loc[bad, label_col].astype(str)))[:5]} on "
                        f"lines {csv_lines(bad)} are not in {list(labels)}")


def load(root: str | Path, params: dict, adapter: str = "meld") -> Prepared:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MELD root {root} does not exist: set prepare.root in params.yaml")
    target = params["target"]
    if target not in TARGETS:
        raise UserError(f"prepare.target={target!r}; use one of {sorted(TARGETS)}")
    label_col, labels = TARGETS[target]
    frames, counts = [], {}
    for split, (csv_name, folder) in SPLITS.items():
        csv_path = root / csv_name
        if not csv_path.exists():
            raise FileNotFoundError(f"{csv_path} is missing: a MELD root holds {[c for c, _ in SPLITS.values()]}")
        df = read_csv(csv_path, "MELD CSV", ", ".join(COLUMNS + [label_col]))
        lacking = [c for c in COLUMNS + [label_col] if c not in df.columns]
        if lacking:
            raise UserError(f"{csv_path} lacks MELD columns {lacking}")
        _check_rows(df, csv_path, label_col, labels)
        clip_dir = root / folder
        has_clips = clip_dir.is_dir()
        if has_clips:
            _scan(clip_dir, set(zip(df.Dialogue_ID.astype(int), df.Utterance_ID.astype(int))), split, counts)
        else:
            log.warning("%s: no clip folder %s, running text-only", split, clip_dir)
        starts = df["StartTime"].map(_seconds) if "StartTime" in df else pd.Series([None] * len(df))
        ends = df["EndTime"].map(_seconds) if "EndTime" in df else pd.Series([None] * len(df))
        rows = []
        for r, t0, t1 in zip(df.itertuples(index=False), starts, ends):
            d, u = int(r.Dialogue_ID), int(r.Utterance_ID)
            label = str(getattr(r, label_col)).strip().lower()
            span = t1 - t0 if t0 is not None and t1 is not None and t1 > t0 else None
            media, dur, status, error = None, None, "no_media", f"no clip folder {clip_dir}"
            if has_clips:
                clip = clip_dir / f"dia{d}_utt{u}.mp4"
                media = rel_path(clip)
                if params["probe_media"]:
                    status, error, dur = probe(Path(media))
                else:
                    status, error = ("ok", None) if clip.exists() else ("missing_media", f"file not found: {media}")
                if status == "ok" and dur is not None and (
                        dur > params["max_clip_s"] or (span is not None and dur - span > params["max_excess_s"])):
                    # These clips hold minutes of the episode, not the utterance: no stage should decode them.
                    # Both tests are needed: for test dia38_utt4 / dia220_utt0 the CSV span is wrong too (305 s, 235 s).
                    error = f"clip {media} lasts {dur:.1f} s but its CSV span is " + (
                        f"{span:.1f} s" if span is not None else "unknown") + f" (max_clip_s {params['max_clip_s']})"
                    status, media = "long_media", None
            rows.append(dict(
                dialogue_id=f"{split}_dia{d}", utterance_id=u, speaker=str(r.Speaker), text=str(r.Utterance),
                label=label if label in labels else None, split=split, media_path=media,
                annot_duration_s=span, media_duration_s=dur, status=status, error=error,
                source=f"adapter={adapter} file={rel_path(csv_path)} target={target}",
            ))
        part = pd.DataFrame(rows)
        frames.append(part)
        n_dia = part.dialogue_id.nunique()
        counts[f"{split}_utterances"], counts[f"{split}_dialogues"] = len(part), n_dia
        bad = part.status[part.status != "ok"].value_counts().to_dict() if has_clips else {}
        counts.update({f"{split}_{k}": int(v) for k, v in bad.items()})
        log.info("%s: %d utterances, %d dialogues; media statuses %s", split, len(part), n_dia, bad or "-")
    if adapter == "meld":
        check_counts(counts, params["check_counts"])
    return Prepared(pd.concat(frames, ignore_index=True), list(labels), counts)


def check_counts(counts: dict, mode: str) -> None:
    """Compare split sizes with MELD's official ones: ``warn`` logs, ``strict`` raises, ``off`` (subsets) skips."""
    if mode == "off":
        return
    if mode not in ("warn", "strict"):
        raise UserError(f"prepare.check_counts={mode!r}; use warn | strict | off")
    diff = [f"{s} {counts[f'{s}_utterances']} utterances / {counts[f'{s}_dialogues']} dialogues "
            f"(official {n} / {d})" for s, (n, d) in OFFICIAL.items()
            if (counts[f"{s}_utterances"], counts[f"{s}_dialogues"]) != (n, d)]
    if diff:
        msg = ("MELD split sizes differ from the official release: " + "; ".join(diff)
               + ". Check prepare.root; for a deliberate subset set prepare.check_counts: off")
        if mode == "strict":
            raise UserError(msg)
        log.warning(msg)
    else:
        log.info("MELD split sizes match the official release")
