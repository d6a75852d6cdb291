"""Emotions of your own video: ``python -m pipeline.predict VIDEO [--subtitles FILE] [--bundle DIR] [--out DIR]
[--speakers N] [--asr-model DIR]``.

Reads only the model bundle: ``--bundle DIR`` (``data/model/bundle``: the one the ``train`` stage wrote), by
default the committed ``data/default_bundle`` (MELD text, frozen MiniLM, built by
``python -m pipeline.predict.build_default``). Without ``--subtitles``, faster-whisper transcribes the audio
(``--asr-model``: a CTranslate2 Whisper directory; default: the packaged tiny.en). Speakers come from ``NAME:`` prefixes or WebVTT voice tags, else from diarization (``--speakers N``, or
estimated with ``--speaker-threshold``). Writes ``predictions.csv``, ``timeline.png`` and ``index.html`` into ``--out``
(created if missing; each file atomically; nothing else in it is touched). A problem with the inputs, ``--out``
included, ends the run before any work with one line saying what to fix (exit status 2).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pipeline.common import setup_logging

log = logging.getLogger("merc.predict")
DEFAULT_BUNDLE = "data/default_bundle"  # built by `python -m pipeline.predict.build_default`, committed


def default_bundle() -> Path:
    """The committed default bundle: ``data/default_bundle`` here, else the one of this checkout."""
    here = Path(DEFAULT_BUNDLE)
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / DEFAULT_BUNDLE


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.splitlines()[0])
    ap.add_argument("video", help="the conversation video (any container/codec FFmpeg reads)")
    ap.add_argument("--subtitles", help=".srt or .vtt with the utterances (else ASR)")
    ap.add_argument("--bundle", help="model bundle directory, e.g. data/model/bundle (what `dvc repro` trained); "
                    "default: the packaged data/default_bundle (MELD text, frozen MiniLM: its README.md says more)")
    ap.add_argument("--out", default="reports/predict", help="output directory (default: %(default)s)")
    ap.add_argument("--speakers", type=int, help="number of speakers for diarization (default: estimated)")
    ap.add_argument("--speaker-threshold", type=float, help="cosine distance that separates speakers when "
                    "--speakers is not given (default: pipeline.predict.diarize.THRESHOLD)")
    ap.add_argument("--asr-model", help="CTranslate2 Whisper model directory (default: packaged tiny.en)")
    ap.add_argument("--embed-max-mb", type=float, default=25.0,
                    help="embed the video in index.html up to this size, else copy it beside (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.speakers is not None and args.speakers < 1:
        ap.error("--speakers must be at least 1")
    return args


def run(args: argparse.Namespace) -> Path:
    from pipeline.training.bundle import load_bundle
    from pipeline.predict.core import Predictor
    from pipeline.predict.outputs import check_out, summary, write_outputs
    from pipeline.predict.video import analyse

    from pipeline.predict.subtitles import read_subtitles
    from pipeline.predict.video import probe

    t0 = time.perf_counter()
    check_out(args.out, [p for p in (args.video, args.subtitles) if p])  # an --out it cannot own: before any work
    probe(args.video)  # input mistakes first: before minutes of model loading
    if args.subtitles:
        read_subtitles(args.subtitles)
    bundle = load_bundle(args.bundle or default_bundle())
    log.info("model bundle: %s (%s, modalities %s, %d labels)%s", args.bundle or DEFAULT_BUNDLE, bundle.meta["model"],
             "".join(bundle.modalities), len(bundle.labels), "" if args.bundle else " — the default; --bundle DIR "
             "picks another (data/model/bundle: the one `dvc repro` trained)")
    predictor = Predictor(bundle)
    df, info = analyse(args.video, predictor, args.subtitles, args.speakers, args.asr_model, args.speaker_threshold)
    meta = {"bundle": str(args.bundle or DEFAULT_BUNDLE), "model": bundle.meta["model"], "modalities": "".join(bundle.modalities),
            "trained seed": bundle.meta.get("seed"), "dev weighted F1": round(bundle.meta.get("dev_weighted_f1", 0), 4),
            "utterances from": "subtitles" if args.subtitles else "ASR", "duration (s)": round(info["duration_s"], 2)}
    out = write_outputs(args.out, df, bundle.labels, Path(args.video), info["duration_s"], meta, args.embed_max_mb)
    log.info("%s", summary(df))
    steps = {k: round(v, 2) for k, v in info.items() if k in ("asr", "diarization", "model") or k.startswith("extract")}
    log.info("wrote %s/{predictions.csv,timeline.png,index.html} in %.1f s (steps: %s)", out,
             time.perf_counter() - t0, steps)
    return out


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    from pipeline.errors import EXIT_USER_ERROR, UserError, debug

    try:
        run(args)
    except UserError as e:  # bundle, video, subtitles, ASR model, or any stage's own one-line error
        if debug():
            raise
        print(f"predict: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
