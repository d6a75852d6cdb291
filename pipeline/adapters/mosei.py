"""CMU-MOSEI from its raw release layout (``prepare.dataset: mosei``, ``prepare.root``: the ``CMU_MOSEI`` folder).

Segments (utterances) of each YouTube video (one monologue = one "dialogue", one speaker):
  * text and times from ``Raw/Transcript/Segmented/Combined/<video>.txt``, lines
    ``<video>___<segment>___<start>___<end>___<text>``;
  * media: the pre-cut ``Raw/Videos/Segmented/Combined/<video>_<segment>.mp4`` when present, else the full
    ``Raw/Videos/Full/Combined/<video>.mp4`` with the segment's ``start_s``/``end_s``;
  * sentiment in [−3, 3] and the split from either
      - ``label.csv`` (the CSV export most repositories use, MMSA's layout: ``video_id, clip_id, text, label,
        …, mode`` with mode train | valid | test; ``dev``, this pipeline's name for valid, is accepted too), or
      - CMU-MultimodalSDK's ``CMU_MOSEI_Labels.csd`` (HDF5, read with h5py: per video ``features`` [n, 7],
        column 0 the sentiment, and ``intervals`` [n, 2] matched to the transcript's segment times) plus
        ``folds.json`` — ``{"train": [video ids], "valid": [...], "test": [...]}``, the SDK's standard folds
        (``cmu_mosei_std_folds``; its names ``standard_train_fold`` … are accepted as keys), which the user
        exports once.
``prepare.target``: ``sentiment2`` (negative < 0 vs non-negative ≥ 0, the "has-0" acc2 of the literature),
``sentiment7`` (round(clip(s, −3, 3)): −3 … +3), or ``sentiment``: regression on the raw score (targets
``["sentiment"]``, ``label`` null; the score as given, not clipped). Defects become statuses or counts, never failures: a missing
video → ``missing_media``; a segment ending past its video → ``bad_times``; a transcript segment without a label
→ dropped and counted (``unlabelled_segments``); a label without a transcript segment keeps the CSV's text and
is ``missing_media`` unless its pre-cut clip exists.

Refused with one line naming the ``label.csv`` lines (header = line 1) or the ``folds.json`` problem: a ``mode``
other than train / valid / test / dev (``validation``, ``Train``, an empty cell: a split must never be dropped
silently), a ``(video_id, clip_id)`` listed twice (two utterances, possibly with conflicting scores), a score
that is not a number or beyond ``TARGET_ABS_LIMIT`` (1e6); an empty, unreadable or non-UTF-8 ``label.csv``; a
``folds.json`` that is not ``{fold: [video ids]}`` with known fold names, or lists a video in two folds.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.adapters import TARGET_ABS_LIMIT, Prepared, csv_lines, probe, read_csv, rel_path, utf8_fault
from pipeline.errors import UserError
from pipeline.schema import SPLITS

log = logging.getLogger("merc.prepare.mosei")

TARGETS = {"sentiment2": ["negative", "non-negative"], "sentiment7": ["-3", "-2", "-1", "0", "+1", "+2", "+3"]}
REGRESSION = "sentiment"  # prepare.target for the regression on the score itself
# label.csv modes / folds.json keys → our splits: MMSA's and the SDK's spellings, and "dev" (our own name for valid).
# Nothing else is guessed ("validation", "Train", "val" are refused): a misspelt split must not vanish.
SPLIT_NAMES = {"train": "train", "valid": "dev", "dev": "dev", "test": "test"}
SDK_FOLDS = {"standard_train_fold": "train", "standard_valid_fold": "valid", "standard_test_fold": "test"}
TRANSCRIPT_DIR = Path("Raw/Transcript/Segmented/Combined")
SEGMENT_DIR = Path("Raw/Videos/Segmented/Combined")
FULL_DIR = Path("Raw/Videos/Full/Combined")
TIME_TOLERANCE_S = 0.05  # .csd intervals vs transcript times (both written to the millisecond)


class MoseiError(UserError):
    """The folder does not hold what this adapter reads: the message says what to supply."""


def label_of(score: float, target: str) -> str:
    if target == "sentiment2":
        return TARGETS[target][int(score >= 0)]
    return TARGETS[target][int(np.rint(np.clip(score, -3, 3))) + 3]


def transcripts(root: Path) -> dict[str, list[tuple[str, float, float, str]]]:
    """video → [(segment id, start, end, text)] in time order."""
    out: dict[str, list] = {}
    folder = root / TRANSCRIPT_DIR
    for path in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.strip().split("___", 4)
            if len(parts) != 5:
                continue
            vid, seg, start, end, text = parts
            try:
                out.setdefault(vid, []).append((seg, float(start), float(end), text.strip()))
            except ValueError:
                continue  # a malformed time: the segment cannot be cut, it is dropped like an unlabeled one
    for segs in out.values():
        segs.sort(key=lambda s: s[1])
    return out


def _lines(mask) -> list[int]:
    """label.csv line numbers (header = line 1) of the first rows where ``mask`` holds."""
    return csv_lines(mask)


def _labels_csv(path: Path) -> pd.DataFrame:
    df = read_csv(path, "CMU-MOSEI", "video_id, clip_id, text, label, …, mode", dtype={"video_id": str, "clip_id": str})
    need = {"video_id", "clip_id", "label", "mode"}
    if not need <= set(df.columns):
        raise MoseiError(f"{path} lacks columns {sorted(need - set(df.columns))} (MMSA layout: video_id, clip_id, "
                         "text, label, …, mode)")
    df = df.rename(columns={"mode": "split_name", "label": "score", "clip_id": "segment"})
    if "text" not in df.columns:
        df["text"] = None
    df = df[["video_id", "segment", "score", "split_name", "text"]].reset_index(drop=True)
    bad = ~df.split_name.isin(list(SPLIT_NAMES))
    if bad.any():
        raise MoseiError(f"{path}: mode {sorted(set(map(str, df.split_name[bad])))} on lines {_lines(bad)} is not "
                         f"one of {list(SPLIT_NAMES)} (MMSA/CMU SDK spellings; write 'valid' for the validation "
                         "split): no split is guessed or dropped")
    empty = df.video_id.isna() | df.segment.isna()
    if empty.any():
        raise MoseiError(f"{path}: video_id or clip_id empty on lines {_lines(empty)}")
    dup = df.duplicated(["video_id", "segment"], keep=False)
    if dup.any():
        keys = df.loc[dup, ["video_id", "segment"]].drop_duplicates().values.tolist()[:5]
        conflict = df[dup].groupby(["video_id", "segment"]).score.nunique(dropna=False).gt(1).any()
        raise MoseiError(f"{path}: (video_id, clip_id) {keys} listed more than once on lines {_lines(dup)}"
                         f"{' with different scores' if conflict else ''}: keep one row per segment")
    return df


def _folds(path: Path) -> dict[str, str]:
    """``folds.json`` → video id → fold name (train | valid | test); malformed files are a ``MoseiError``."""
    try:
        folds = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MoseiError(f"{path} is not UTF-8 text ({utf8_fault(path)}): save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise MoseiError(f"{path} is not JSON ({e.msg} at line {e.lineno} column {e.colno}): write "
                         '{"train": [video ids], "valid": [...], "test": [...]}') from None
    if not isinstance(folds, dict) or not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                                              for v in folds.values()):
        raise MoseiError(f"{path} must map each fold name to a list of video id strings, as "
                         '{"train": [...], "valid": [...], "test": [...]}')
    names = {k: SDK_FOLDS.get(k, k) for k in folds}
    unknown = sorted(k for k, v in names.items() if v not in SPLIT_NAMES)
    if unknown:
        raise MoseiError(f"{path}: unknown folds {unknown}; use train, valid, test (or the SDK's "
                         f"{sorted(SDK_FOLDS)})")
    split_of: dict[str, str] = {}
    twice = []
    for key, vids in folds.items():
        for vid in vids:
            if split_of.setdefault(vid, names[key]) != names[key]:
                twice.append(vid)
    if twice:
        raise MoseiError(f"{path}: videos {sorted(set(twice))[:5]} are in more than one fold")
    return split_of


def _labels_csd(path: Path, folds_path: Path, trans: dict) -> tuple[pd.DataFrame, int]:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is pinned in requirements.txt
        raise MoseiError("reading CMU_MOSEI_Labels.csd needs h5py (pip install -r requirements.txt)") from None
    if not folds_path.is_file():
        raise MoseiError(f"{folds_path} not found: export the SDK's standard folds as "
                         '{"train": [...], "valid": [...], "test": [...]} (video ids) next to the .csd')
    split_of = _folds(folds_path)
    rows, unmatched = [], 0
    try:
        with h5py.File(path, "r") as f:
            data = f[next(iter(f.keys()))]["data"]
            for vid in data:
                feats, ivals = np.asarray(data[vid]["features"]), np.asarray(data[vid]["intervals"])
                segs = trans.get(vid, [])
                for (start, end), score in zip(ivals, feats[:, 0]):
                    seg = next((s for s in segs if abs(s[1] - start) < TIME_TOLERANCE_S
                                and abs(s[2] - end) < TIME_TOLERANCE_S), None)
                    if seg is None:
                        unmatched += 1  # a label with no transcript segment: no text, no times
                        continue
                    rows.append(dict(video_id=vid, segment=seg[0], score=float(score),
                                     split_name=split_of.get(vid), text=None))
    except (OSError, KeyError, StopIteration, ValueError, TypeError, IndexError) as e:
        raise MoseiError(f"{path} is not a CMU SDK label file (<name>/data/<video>/features [n, 7] and intervals "
                         f"[n, 2]): {type(e).__name__}: {' '.join(str(e).split())[:160]}") from None
    return pd.DataFrame(rows, columns=["video_id", "segment", "score", "split_name", "text"]), unmatched


def load(root: str | Path, params: dict, adapter: str = "mosei") -> Prepared:
    root = Path(root)
    target = params.get("target")
    if target not in TARGETS and target != REGRESSION:
        raise MoseiError(f"prepare.target={target!r} for mosei: use sentiment2, sentiment7 or sentiment (regression "
                         "on the score in [-3, 3])")
    regression = target == REGRESSION
    trans = transcripts(root)
    counts: dict = {}
    if (root / "label.csv").is_file():
        labels = _labels_csv(root / "label.csv")
    elif (root / "CMU_MOSEI_Labels.csd").is_file():
        labels, counts["labels_without_segment"] = _labels_csd(root / "CMU_MOSEI_Labels.csd", root / "folds.json",
                                                               trans)
    else:
        raise MoseiError(f"{root}: neither label.csv (MMSA layout) nor CMU_MOSEI_Labels.csd + folds.json found")
    score = pd.to_numeric(labels.score, errors="coerce").astype(float)
    bad = labels.score.isna() | ~np.isfinite(score) | (score.abs() > TARGET_ABS_LIMIT)
    if bad.any():
        where = f" on label.csv lines {_lines(bad)}" if (root / "label.csv").is_file() else ""
        raise MoseiError(f"{root}: sentiment scores {labels.score[bad].astype(str).tolist()[:5]} for segments "
                         f"{labels.loc[bad, ['video_id', 'segment']].values.tolist()[:5]}{where} are not finite "
                         f"numbers within ±{TARGET_ABS_LIMIT:g}")
    labels["score"] = score
    labels["split"] = labels.split_name.map(SPLIT_NAMES)
    no_split = labels.split.isna()
    counts["no_split_segments"] = int(no_split.sum())  # videos outside the standard folds
    labels = labels[~no_split]
    labelled = set(zip(labels.video_id, labels.segment.astype(str)))
    counts["unlabelled_segments"] = sum((vid, s[0]) not in labelled for vid, segs in trans.items() for s in segs)
    seg_times = {(vid, s[0]): s for vid, segs in trans.items() for s in segs}
    rows = []
    for vid, group in labels.groupby("video_id", sort=True):
        group = group.assign(start=[seg_times.get((vid, str(s)), (None, np.inf))[1] for s in group.segment])
        for i, r in enumerate(group.sort_values(["start", "segment"]).itertuples(index=False)):
            seg = seg_times.get((vid, str(r.segment)))
            text = seg[3] if seg else (r.text if isinstance(r.text, str) else "")
            cut = root / SEGMENT_DIR / f"{vid}_{r.segment}.mp4"
            full = root / FULL_DIR / f"{vid}.mp4"
            start = end = None
            if cut.is_file():
                media = cut
                status, error, dur = probe(cut)
            elif seg is not None:
                media, start, end = full, seg[1], seg[2]
                status, error, dur = probe(full, end)
                if status == "ok" and not (0 <= start < end):
                    status, error = "bad_times", f"segment {vid}_{r.segment}: start {start} end {end}"
            else:
                media, status, dur = None, "missing_media", None
                error = f"segment {vid}_{r.segment}: no pre-cut clip and no transcript times to cut {full.name}"
            rows.append(dict(dialogue_id=vid, utterance_id=i, speaker=vid, text=text,
                             label=None if regression else label_of(float(r.score), target), split=r.split,
                             targets=[float(r.score)] if regression else None,
                             media_path=rel_path(media) if media is not None else None, start_s=start, end_s=end,
                             audio_path=None, annot_duration_s=(seg[2] - seg[1]) if seg else None, media_duration_s=dur,
                             status=status, error=error,
                             source=f"adapter={adapter} video={vid} segment={r.segment} score={float(r.score):.4f}"))
    df = pd.DataFrame(rows)
    counts.update({f"{s}_utterances": int((df.split == s).sum()) for s in SPLITS})
    counts.update({f"status_{k}": int(v) for k, v in df.status.value_counts().items() if k != "ok"})
    log.info("mosei %s: %d segments of %d videos, %s", root, len(df), df.dialogue_id.nunique(), counts)
    if regression:
        return Prepared(df, [], counts, targets=[REGRESSION])
    return Prepared(df, TARGETS[target], counts)

