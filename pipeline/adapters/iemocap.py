"""IEMOCAP (``IEMOCAP_full_release/Session{1..5}/``), 6- or 4-class protocol.

Per dialogue: utterance ids, times and text from ``dialog/transcriptions/<dialog>.txt``
(``Ses01F_impro01_F000 [006.2901-008.2357]: text``); labels from ``dialog/EmoEvaluation/<dialog>.txt``
(``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[v, a, d]``); speaker from the utterance id (the
letter opening its last part, with the session: ``Ses01_F``; the F/M in ``Ses01F`` names who wore the
markers, not who speaks); ``media_path`` is the dialogue's ``dialog/avi/DivX/<dialog>.avi`` with the
utterance's ``start_s``/``end_s``, ``audio_path`` its ``sentences/wav/<dialog>/<utt>.wav``.
Protocols (``prepare.target: emotion``, ``prepare.iemocap_classes``): 6-class (hap sad neu ang exc fru) and
4-class (exc merged into hap); other labels are dropped and counted. ``prepare.target: dimensional``: regression
on the bracketed ``[v, a, d]`` of each summary line (the annotators' mean valence, activation, dominance on
IEMOCAP's 1-5 scale), targets ``valence, arousal, dominance``; every utterance is kept whatever its categorical
code (xxx and oth included: every turn has dimensional ratings), ``label`` is null and ``iemocap_classes`` is not
used. A triple that is not three finite numbers stops the run naming the file and line. Test = Session 5
(speaker-independent); dev = a seeded fraction of the *training dialogues*, in both modes.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.adapters import Prepared, probe, rel_path
from pipeline.errors import UserError

log = logging.getLogger("merc.prepare.iemocap")

# classes → (label set in order, IEMOCAP code → label)
PROTOCOLS = {
    6: (["happy", "sad", "neutral", "angry", "excited", "frustrated"],
        {"hap": "happy", "sad": "sad", "neu": "neutral", "ang": "angry", "exc": "excited", "fru": "frustrated"}),
    4: (["angry", "happy", "neutral", "sad"],
        {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral", "sad": "sad"}),
}
# dimensional targets in the order of EmoEvaluation's [V, A, D]; IEMOCAP calls arousal "activation"
DIMENSIONS = ["valence", "arousal", "dominance"]
TARGETS = ("emotion", "dimensional")
TEST_SESSION = 5
TRANSCRIPT = re.compile(r"(Ses\d+[FM]_\S+)\s+\[(\d+(?:\.\d*)?)-(\d+(?:\.\d*)?)\]:\s?(.*)")
EVALUATION = re.compile(r"\[(\d+(?:\.\d*)?) - (\d+(?:\.\d*)?)\]\t(Ses\d+[FM]_\S+)\t(\w+)\t")
TRIPLE = re.compile(r"\[([^\[\]]*)\]")  # what follows EVALUATION's match: "[2.5000, 2.5000, 2.5000]"


def _dimensions(rest: str, ev_file: Path, lineno: int) -> list[float]:
    """The ``[v, a, d]`` after a summary line's code, as three finite floats; else a ``UserError`` naming the line."""
    m = TRIPLE.match(rest.strip())
    try:
        vals = [float(x) for x in m[1].split(",")] if m else []
    except ValueError:
        vals = []
    if len(vals) != 3 or not np.isfinite(vals).all():
        raise UserError(f"{ev_file} line {lineno}: expected [valence, activation, dominance] as three numbers after "
                        f"the emotion code, got {rest.strip()!r}: fix the line (or use prepare.target: emotion)")
    return vals


def _transcripts(path: Path) -> dict[str, str]:
    """utterance id → text (lines that are not utterances, e.g. stray notes, are skipped)."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = TRANSCRIPT.fullmatch(line.strip())
        if m:
            out[m[1]] = m[4].strip()
    return out


def _speaker(utt: str) -> str | None:
    """``Ses01F_impro01_M013`` → ``Ses01_M`` (None for ids without an F/M speaker part)."""
    last = utt.rsplit("_", 1)[-1]
    return f"{utt[:5]}_{last[0]}" if last[:1] in ("F", "M") else None


def load(root: str | Path, params: dict, adapter: str = "iemocap") -> Prepared:
    root = Path(root)
    target = params.get("target", "emotion")
    if target not in TARGETS:
        raise UserError(f"prepare.target={target!r} for iemocap: use emotion (categorical, prepare.iemocap_classes) "
                        "or dimensional (regression on valence, arousal, dominance)")
    dimensional = target == "dimensional"
    classes = int(params["iemocap_classes"])
    if classes not in PROTOCOLS and not dimensional:  # the class protocol plays no part in the dimensional mode
        raise ValueError(f"prepare.iemocap_classes={classes}; use 6 or 4")
    labels, code_map = PROTOCOLS.get(classes, PROTOCOLS[6])
    protocol = "target=dimensional" if dimensional else f"classes={classes}"
    sessions = sorted(root.glob("Session[0-9]*"))
    if not sessions:
        raise FileNotFoundError(f"no Session1..5 folders under {root}: set prepare.root to IEMOCAP_full_release")
    if len(sessions) != 5:
        log.warning("IEMOCAP root %s has %d sessions (%s), not 5", root, len(sessions), [s.name for s in sessions])
    rows, dropped, counts = [], Counter(), Counter()
    for session in sessions:
        for ev_file in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            dialog = ev_file.stem
            text = {}
            tr_file = session / "dialog" / "transcriptions" / f"{dialog}.txt"
            if tr_file.exists():
                text = _transcripts(tr_file)
            else:
                log.warning("%s: no transcription %s", dialog, tr_file)
            avi = Path(rel_path(session / "dialog" / "avi" / "DivX" / f"{dialog}.avi"))  # errors name it so
            source = f"adapter={adapter} file={rel_path(ev_file)}"
            lines = ev_file.read_text(encoding="utf-8", errors="replace").splitlines()
            for lineno, line in enumerate(lines, 1):
                m = EVALUATION.match(line)
                if not m:
                    continue
                start, end, utt, code = float(m[1]), float(m[2]), m[3], m[4]
                vad = _dimensions(line[m.end():], ev_file, lineno) if dimensional else None
                if not dimensional and code not in code_map:
                    dropped[code] += 1
                    continue
                status, error, dur = probe(avi, end) if params["probe_media"] else ("ok", None, None)
                wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                if not wav.exists():  # the audio can still be cut from the dialogue's avi
                    counts["wav_missing"] += 1
                if utt not in text:
                    counts["no_transcript"] += 1
                rows.append(dict(
                    dialogue_id=dialog, utt=utt, speaker=_speaker(utt), text=text.get(utt, ""),
                    label=None if dimensional else code_map[code], targets=vad, session=int(session.name[7:]),
                    media_path=str(avi),
                    start_s=start, end_s=end, audio_path=rel_path(wav) if wav.exists() else None,
                    annot_duration_s=end - start, media_duration_s=dur, status=status, error=error,
                    source=f"{source} utt={utt} {protocol}" + (f" code={code}" if dimensional else ""),
                ))
    if not rows:
        raise ValueError(f"no utterances of the {'dimensional' if dimensional else f'{classes}-class'} protocol "
                         f"under {root}")
    df = pd.DataFrame(rows).sort_values(["dialogue_id", "start_s", "utt"])
    df["utterance_id"] = df.groupby("dialogue_id").cumcount()  # position in the dialogue, by start time
    df["split"] = _splits(df, params["dev_fraction"], params["seed"])
    counts.update({f"dropped_{k}": v for k, v in sorted(dropped.items())})
    counts.update({f"{s}_{k}": int(v) for s, g in df.groupby("split")
                   for k, v in [("utterances", len(g)), ("dialogues", g.dialogue_id.nunique())]})
    counts.update({f"status_{k}": int(v) for k, v in df.status.value_counts().items() if k != "ok"})
    log.info("IEMOCAP %s: kept %d utterances, dropped %s; %s", protocol, len(df), dict(dropped) or "-",
             dict(counts))
    if dimensional:
        return Prepared(df.drop(columns=["utt", "session"]), [], dict(counts), targets=list(DIMENSIONS))
    return Prepared(df.drop(columns=["utt", "session"]), list(labels), dict(counts))


def _splits(df: pd.DataFrame, dev_fraction: float, seed: int) -> pd.Series:
    """Session 5 → test; a seeded draw of whole training dialogues → dev (never a per-utterance split)."""
    train_dialogues = sorted(df.dialogue_id[df.session != TEST_SESSION].unique())
    n = len(train_dialogues)
    # at least one dev dialogue when asked for, and never all of them
    n_dev = min(n - 1, max(1, round(dev_fraction * n))) if dev_fraction > 0 and n > 1 else 0
    dev = set(np.random.default_rng(seed).choice(train_dialogues, n_dev, replace=False)) if n_dev else set()
    split = np.where(df.session == TEST_SESSION, "test", np.where(df.dialogue_id.isin(dev), "dev", "train"))
    return pd.Series(split, index=df.index)
