"""One video → utterances (subtitles or ASR) → speakers (subtitles or diarization) → predictions table.

Per-utterance ``status`` (the most severe that applies; ``error`` lists every reason):
  ``ok``             predicted from every modality the bundle uses that could be extracted
  ``overlap``        the cue overlaps another cue (both are predicted; each one's audio/visual span holds the other's
                     speech too)
  ``clipped``        the cue runs past the end of the video: its audio/visual span is cut at the end
  ``bad_times``      the cue ends before it starts: text only
  ``outside_video``  the cue starts after the video ends: text only
  ``no_features``    no modality could be extracted (e.g. an empty cue outside the video): no prediction
Per-modality statuses (``t_status``, ``a_status``, ``v_status``: ``ok``/``silent``/``no_face``/``error``) are the
extract stages' own; ``modalities`` lists those present.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.extraction.media import MediaError, _open, load_audio

log = logging.getLogger("merc.predict")
SAMPLE_RATE = 16000
SEVERITY = ("ok", "overlap", "clipped", "bad_times", "outside_video", "no_features")


class PredictError(UserError):
    """A video/subtitle problem that stops the run (one line: what to fix)."""


@dataclass
class Utterance:
    start_s: float
    end_s: float
    text: str
    speaker: str | None = None
    text_source: str = "subtitles"
    speaker_source: str = "subtitles"
    status: str = "ok"
    notes: list[str] = field(default_factory=list)
    media: bool = True  # whether the span is inside the video (audio/visual may be extracted)

    def flag(self, status: str, note: str) -> None:
        if SEVERITY.index(status) > SEVERITY.index(self.status):
            self.status = status
        self.notes.append(note)


def probe(video: str | Path) -> dict:
    """Duration and streams from the container header; a missing, empty or corrupt file is a ``PredictError``."""
    try:
        with _open(video) as c:
            has_audio, has_video = bool(c.streams.audio), bool(c.streams.video)
            dur = c.duration / 1e6 if c.duration is not None else None
            if dur is None:
                ds = [float(s.duration * s.time_base) for s in c.streams if s.duration and s.time_base]
                dur = max(ds) if ds else None
    except MediaError as e:
        raise PredictError(str(e)) from e
    if not has_audio and not has_video:
        raise PredictError(f"{video} has neither an audio nor a video stream")
    if not dur or dur <= 0:
        raise PredictError(f"{video} has no duration in its header (empty or truncated file)")
    return {"duration_s": float(dur), "has_audio": has_audio, "has_video": has_video}


def from_cues(cues, duration: float) -> list[Utterance]:
    """Subtitle cues → utterances with their time statuses (outside, clipped, bad times, overlaps)."""
    utts = []
    for c in cues:
        u = Utterance(float(c.start_s), float(c.end_s), c.text, c.speaker,
                      speaker_source="subtitles" if c.speaker else "none")
        if u.end_s <= u.start_s:
            u.flag("bad_times", f"cue ends ({u.end_s:.3f} s) before it starts ({u.start_s:.3f} s): text only")
            u.media = False
        elif u.start_s >= duration:
            u.flag("outside_video", f"cue starts at {u.start_s:.3f} s, after the video ends ({duration:.3f} s): "
                   "text only")
            u.media = False
        elif u.end_s > duration:
            u.flag("clipped", f"cue ends at {u.end_s:.3f} s, after the video ({duration:.3f} s): span cut")
            u.end_s = duration
        utts.append(u)
    for i, a in enumerate(utts):
        for j, b in enumerate(utts):
            if i != j and a.media and b.media and min(a.end_s, b.end_s) - max(a.start_s, b.start_s) > 1e-3:
                a.flag("overlap", f"overlaps cue {j + 1} ({max(a.start_s, b.start_s):.2f}-"
                       f"{min(a.end_s, b.end_s):.2f} s)")
    return utts


def diarize(utts: list[Utterance], audio: np.ndarray | None, n_speakers: int | None, threshold: float) -> None:
    """Fill missing speakers by clustering GE2E embeddings of the utterances' audio (``pipeline.predict.diarize``)."""
    from pipeline.predict.diarize import Diarizer, cluster, speaker_names

    todo = [u for u in utts if not u.speaker]
    if not todo:
        return
    if audio is None:
        for u in todo:
            u.notes.append("no speaker: the video has no audio to diarize")
        return
    sig = [audio[int(u.start_s * SAMPLE_RATE):int(u.end_s * SAMPLE_RATE)] if u.media else None for u in todo]
    names = speaker_names(cluster(Diarizer().embed(sig), n_speakers, threshold))
    for u, name in zip(todo, names):
        u.speaker, u.speaker_source = name, "diarization" if name else "none"
        if not name:
            u.notes.append("no speaker: too little voiced audio to embed")


def analyse(video: str | Path, predictor, subtitles: str | Path | None = None, n_speakers: int | None = None,
            asr_model: str | Path | None = None, threshold: float | None = None) -> tuple[pd.DataFrame, dict]:
    """The predictions table of ``video`` (one row per utterance) and the seconds each step took."""
    from pipeline.predict.diarize import THRESHOLD

    video = Path(video)
    info = probe(video)
    timings: dict[str, float] = {}
    audio = None
    if info["has_audio"]:
        try:
            audio = load_audio(video, SAMPLE_RATE)[0]
        except MediaError as e:  # a broken audio stream: treated as none (subtitles still work)
            log.warning("%s: audio unusable (%s)", video, e)
            info["has_audio"] = False
    if subtitles:
        from pipeline.predict.subtitles import read_subtitles

        utts = from_cues(read_subtitles(subtitles), info["duration_s"])
    else:
        if audio is None:
            raise PredictError(f"{video} has no usable audio stream: nothing to transcribe; give --subtitles FILE")
        from pipeline.predict.asr import Transcriber

        t0 = time.perf_counter()
        segs = Transcriber(asr_model).transcribe(audio)
        timings["asr"] = time.perf_counter() - t0
        if not segs:
            raise PredictError(f"no speech found in {video} (Whisper/VAD returned no segment); give --subtitles FILE")
        utts = [Utterance(s.start_s, min(s.end_s, info["duration_s"]), s.text, text_source="asr",
                          speaker_source="none") for s in segs]
    t0 = time.perf_counter()
    diarize(utts, audio, n_speakers, THRESHOLD if threshold is None else threshold)
    timings["diarization"] = time.perf_counter() - t0
    rows = [dict(dialogue_id=video.stem, utterance_id=i, speaker=u.speaker, text=u.text,
                 media_path=str(video) if u.media else None, start_s=u.start_s if u.media else None,
                 end_s=u.end_s if u.media else None, audio_path=None,
                 error=None if u.media else "utterance outside the video") for i, u in enumerate(utts)]
    predictor.timings = {}
    probs, feats = predictor.predict(rows)
    timings.update(predictor.timings)
    return table(utts, probs, feats, predictor.bundle.labels), {**timings, **info}


def table(utts: list[Utterance], probs: np.ndarray, feats: dict, labels: list[str]) -> pd.DataFrame:
    rows = []
    for i, u in enumerate(utts):
        present = "".join(m for m in ("t", "a", "v") if m in feats and feats[m]["present"][i])
        row = dict(utterance=i, start_s=round(u.start_s, 3), end_s=round(u.end_s, 3), speaker=u.speaker or "unknown",
                   speaker_source=u.speaker_source, text=u.text, text_source=u.text_source)
        if present:
            k = int(np.argmax(probs[i]))
            row.update(predicted=labels[k], confidence=round(float(probs[i, k]), 4))
        else:
            u.flag("no_features", "no modality could be extracted: no prediction")
            row.update(predicted="", confidence=np.nan)
        row.update({f"p_{c}": round(float(p), 6) if present else np.nan for c, p in zip(labels, probs[i])})
        row["modalities"] = present
        for m in ("t", "a", "v"):
            rec = feats[m]["records"][i] if m in feats else None
            row[f"{m}_status"] = rec["status"] if rec else ""
            if rec and rec["status"] != "ok" and rec.get("error"):
                u.notes.append(f"{m}: {rec['error']}")
        vrec = feats["v"]["records"][i] if "v" in feats else {}
        row["face_tracks"] = vrec.get("n_tracks", "")
        row["face_box"] = " ".join(f"{v:g}" for v in vrec["face_box"]) if vrec.get("face_box") else ""
        row.update(status=u.status, error="; ".join(u.notes))
        rows.append(row)
    return pd.DataFrame(rows)
