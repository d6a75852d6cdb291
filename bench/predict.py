"""Benchmark of ``python -m pipeline.predict``: seconds per minute of video for ASR, diarization, feature extraction
(text, audio, visual) and the model, on this machine.

Builds one conversation video per demo dialogue (``pipeline.predict.demo``), loads the bundle's predictor once, runs
one warm-up video (model loading and numba's first-call compilation of librosa are excluded: they are paid once per
process, and printed as ``load``), then every video twice: without subtitles (ASR + diarization) and with them.

Run: ``python -m bench.predict [--bundle data/model/bundle] [--dialogues 8]`` (after ``dvc repro train``).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench.predict")
DIALOGUES = [("train", d) for d in range(5)] + [("dev", 0), ("dev", 1), ("test", 0), ("test", 1)]
STEPS = ("asr", "diarization", "extract_t", "extract_a", "extract_v", "model")


def main() -> None:
    from pipeline.training.bundle import load_bundle
    from pipeline.common import setup_logging
    from pipeline.predict.core import Predictor
    from pipeline.predict.demo import build_conversation
    from pipeline.predict.video import analyse

    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="data/model/bundle")
    ap.add_argument("--dialogues", type=int, default=len(DIALOGUES))
    args = ap.parse_args()
    t0 = time.perf_counter()
    predictor = Predictor(load_bundle(args.bundle))
    with tempfile.TemporaryDirectory() as tmp:
        convs = [build_conversation(Path(tmp) / f"{s}{d}", split=s, dialogue=d) for s, d in
                 DIALOGUES[: args.dialogues]]
        analyse(convs[0]["video"], predictor)  # warm-up: Whisper, Resemblyzer, librosa's numba kernels
        load = time.perf_counter() - t0
        res = {}
        for mode in ("asr", "subtitles"):
            total, seconds, n = {k: 0.0 for k in STEPS}, 0.0, 0
            for c in convs:
                _, info = analyse(c["video"], predictor, c["srt"] if mode == "subtitles" else None)
                for k in STEPS:
                    total[k] += info.get(k, 0.0)
                seconds += info["duration_s"]
                n += len(c["cues"])
            res[mode] = ({k: v * 60 / seconds for k, v in total.items()}, seconds, n)
    print(f"\nload (bundle, extractors, Whisper, Resemblyzer, first calls): {load:.1f} s")
    print("\n| utterances from | video (s) | " + " | ".join(STEPS) + " | total |")
    print("|---|---|" + "---|" * (len(STEPS) + 1))
    for mode, (per_min, seconds, n) in res.items():
        print(f"| {mode} | {seconds:.1f} ({n} cues) | " + " | ".join(f"{per_min[k]:.2f}" for k in STEPS) +
              f" | {sum(per_min.values()):.2f} |")
    print("(seconds per minute of video)")


if __name__ == "__main__":
    main()
