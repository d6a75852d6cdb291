"""CMU-MOSEI from its raw release layout (``prepare.dataset: mosei``, ``prepare.root``: the ``CMU_MOSEI`` folder).

Segments (utterances) of each YouTube video (one monologue = one "dialogue", one speaker):
  * text and times from ``Raw/Transcript/Segmented/Combined/<video>.txt``, lines
    ``<video>___<segment>___<start>___<end>___<text>``;
  * media: the pre-cut ``Raw/Videos/Segmented/Combined/<video>_<segment>.mp4`` when present, else the full
    ``Raw/Videos/Full/Combined/<video>.mp4`` with the segment's ``start_s``/``end_s``;
  * sentiment in [−3, 3] and the split from either
      - ``label.csv`` (the CSV export most repositories use, MMSA's layout: ``video_id, clip_id, text, label,
        …, mode`` with mode train | valid | test), or
      - CMU-MultimodalSDK's ``CMU_MOSEI_Labels.csd`` (HDF5, read with h5py: per video ``features`` [n, 7],
        column 0 the sentiment, and ``intervals`` [n, 2] matched to the transcript's segment times) plus
        ``folds.json`` — ``{"train": [video ids], "valid": [...], "test": [...]}``, the SDK's standard folds
        (``cmu_mosei_std_folds``), which the user exports once.
``prepare.target``: ``sentiment2`` (negative < 0 vs non-negative ≥ 0, the "has-0" acc2 of the literature),
``sentiment7`` (round(clip(s, −3, 3)): −3 … +3), or ``sentiment``: regression on the raw score (targets
``["sentiment"]``, ``label`` null; the score as given, not clipped). Defects become statuses or counts, never failures: a missing
video → ``missing_media``; a segment ending past its video → ``bad_times``; a transcript segment without a label
→ dropped and counted (``unlabelled_segments``); a label without a transcript segment keeps the CSV's text and
is ``missing_media`` unless its pre-cut clip exists.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.adapters import Prepared, probe, rel_path
from pipeline.errors import UserError
from pipeline.schema import SPLITS

log = logging.getLogger("merc.prepare.mosei")

TARGETS = {"sentiment2": ["negative", "non-negative"], "sentiment7": ["-3", "-2", "-1", "0", "+1", "+2", "+3"]}
REGRESSION = "sentiment"  # prepare.target for the regression on the score itself
SPLIT_NAMES = {"train": "train", "valid": "dev", "dev": "dev", "test": "test"}
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


def _labels_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"video_id": str, "clip_id": str})
    need = {"video_id", "clip_id", "label", "mode"}
    if not need <= set(df.columns):
        raise MoseiError(f"{path} lacks columns {sorted(need - set(df.columns))} (MMSA layout: video_id, clip_id, "
                         "text, label, …, mode)")
    df = df.rename(columns={"mode": "split_name", "label": "score", "clip_id": "segment"})
    if "text" not in df.columns:
        df["text"] = None
    return df[["video_id", "segment", "score", "split_name", "text"]]


def _labels_csd(path: Path, folds_path: Path, trans: dict) -> tuple[pd.DataFrame, int]:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is pinned in requirements.txt
        raise MoseiError("reading CMU_MOSEI_Labels.csd needs h5py (pip install -r requirements.txt)") from None
    if not folds_path.is_file():
        raise MoseiError(f"{folds_path} not found: export the SDK's standard folds as "
                         '{"train": [...], "valid": [...], "test": [...]} (video ids) next to the .csd')
    folds = json.loads(folds_path.read_text())
    split_of = {vid: name for name, vids in folds.items() for vid in vids}
    rows, unmatched = [], 0
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
    bad = labels.score.isna() | ~np.isfinite(pd.to_numeric(labels.score, errors="coerce").astype(float))
    if bad.any():
        raise MoseiError(f"{root}: non-numeric sentiment for segments "
                         f"{labels.loc[bad, ['video_id', 'segment']].values.tolist()[:5]}")
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

