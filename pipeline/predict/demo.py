"""The predict demo: ``python -m pipeline.predict.demo`` (after ``bash scripts/run.sh``).

Builds a short conversation video from the demo clips with its subtitles, then predicts on it twice with the trained
bundle (``data/model/bundle``): from the subtitles into ``reports/predict/demo_subtitles/`` and from speech
recognition + diarization into ``reports/predict/demo_asr/`` (open each ``index.html``). ``--build-only`` just
writes the video.

Concatenates one demo dialogue's clips (default: test dialogue 0, six utterances by two speakers, the last clip with
two faces) into ``data/predict_demo/conversation.mp4`` (H.264 + AAC, clips letterboxed to a common frame size) and
writes ``conversation.srt`` (``Speaker: text`` cues) and ``conversation.vtt`` (``<v Speaker>`` voice tags) whose cues
span each clip. ``--no-audio`` leaves the audio stream out (the subtitles-only case).
"""
from __future__ import annotations

import argparse
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd

from pipeline.extraction.media import load_audio

log = logging.getLogger("merc.predict")
SAMPLE_RATE, FPS = 16000, 12  # the demo clips' rates (data/demo/README.md)
FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def _stamp(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def write_video(path: Path, frames: list[np.ndarray], audio: np.ndarray | None) -> None:
    """H.264 (yuv420p, ``FPS``) and, unless ``audio`` is None, mono AAC at 16 kHz."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "28", "preset": "fast", "threads": "1"}
        vs.codec_context.time_base = Fraction(1, FPS)
        ast = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio is not None else None
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        if ast is not None:
            for s in range(0, len(audio), 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, s:s + 1024]), format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts, af.time_base = SAMPLE_RATE, s, Fraction(1, SAMPLE_RATE)
                out.mux(ast.encode(af))
            out.mux(ast.encode(None))


def build_conversation(out_dir: str | Path = "data/predict_demo", root: str | Path = "data/demo", split: str = "test",
                       dialogue: int = 0, audio: bool = True, name: str = "conversation") -> dict[str, Path]:
    """Write ``<name>.mp4``, ``.srt`` and ``.vtt``; returns their paths (and the cues as ``cues``)."""
    root, out_dir = Path(root), Path(out_dir)
    df = pd.read_csv(root / f"{split}_sent_emo.csv")
    df = df[df["Dialogue_ID"] == dialogue].sort_values("Utterance_ID")
    clips = [(root / FOLDERS[split] / f"dia{dialogue}_utt{u}.mp4", r) for u, r in zip(df["Utterance_ID"],
                                                                                        df.to_dict("records"))]
    clips = [(p, r) for p, r in clips if p.is_file() and p.stat().st_size > 4096]  # skip missing/corrupt clips
    if not clips:
        raise FileNotFoundError(f"no usable clips of {split} dialogue {dialogue} in {root}")
    decoded = [(_frames(p), r, p) for p, r in clips]
    H = max(f[0].shape[0] for f, _, _ in decoded)
    W = max(f[0].shape[1] for f, _, _ in decoded)
    frames, sound, cues, t = [], [], [], 0.0
    for fs, r, p in decoded:
        h, w = fs[0].shape[:2]
        y, x = (H - h) // 2, (W - w) // 2
        for f in fs:  # letterbox onto a black canvas of the largest clip's size
            canvas = np.zeros((H, W, 3), np.uint8)
            canvas[y:y + h, x:x + w] = f
            frames.append(canvas)
        span = len(fs) / FPS
        a = load_audio(p, SAMPLE_RATE)[0][: int(round(span * SAMPLE_RATE))]
        sound.append(np.pad(a, (0, int(round(span * SAMPLE_RATE)) - a.size)))  # audio exactly as long as video
        cues.append(dict(start_s=t, end_s=t + span, speaker=r["Speaker"], text=r["Utterance"], emotion=r["Emotion"]))
        t += span
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"video": out_dir / f"{name}.mp4", "srt": out_dir / f"{name}.srt", "vtt": out_dir / f"{name}.vtt"}
    tmp = paths["video"].with_name(f".{name}.tmp.mp4")
    write_video(tmp, frames, np.concatenate(sound).astype(np.float32) if audio else None)
    tmp.replace(paths["video"])
    paths["srt"].write_text("".join(f"{i + 1}\n{_stamp(c['start_s'], ',')} --> {_stamp(c['end_s'], ',')}\n"
                                    f"{c['speaker']}: {c['text']}\n\n" for i, c in enumerate(cues)), encoding="utf-8")
    paths["vtt"].write_text("WEBVTT\n\n" + "".join(f"{_stamp(c['start_s'], '.')} --> {_stamp(c['end_s'], '.')}\n"
                                                   f"<v {c['speaker']}>{c['text']}\n\n" for c in cues),
                            encoding="utf-8")
    log.info("wrote %s (%.1f s, %d utterances) with %s and %s", paths["video"], t, len(cues), paths["srt"].name,
             paths["vtt"].name)
    return {**paths, "cues": cues}


def main() -> int:
    from pipeline.common import setup_logging

    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/predict_demo")
    ap.add_argument("--root", default="data/demo")
    ap.add_argument("--split", default="test", choices=sorted(FOLDERS))
    ap.add_argument("--dialogue", type=int, default=0)
    ap.add_argument("--no-audio", action="store_true", help="leave the audio stream out (subtitles only)")
    ap.add_argument("--build-only", action="store_true", help="write the video and subtitles, predict nothing")
    ap.add_argument("--bundle", default="data/model/bundle")
    ap.add_argument("--reports", default="reports/predict")
    args = ap.parse_args()
    conv = build_conversation(args.out, args.root, args.split, args.dialogue, not args.no_audio)
    if args.build_only:
        return 0
    from pipeline.predict.__main__ import main as predict

    rc = predict([str(conv["video"]), "--subtitles", str(conv["srt"]), "--bundle", args.bundle,
                  "--out", f"{args.reports}/demo_subtitles"])
    if rc == 0 and not args.no_audio:
        rc = predict([str(conv["video"]), "--bundle", args.bundle, "--out", f"{args.reports}/demo_asr"])
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
