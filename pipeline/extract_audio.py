"""Stage ``extract_audio``: openSMILE functionals on 16 kHz mono audio demuxed from each clip.

``audio.feature_set``: ``eGeMAPSv02`` (88-d, default) or ``ComParE_2016`` (6373-d). The samples passed
to ``opensmile.Smile.process_signal`` are exactly those decoded by ``pipeline.media.load_audio``.
Silent clips (RMS below ``audio.silence_rms``) get status ``silent`` and no vector, not garbage.

Run: ``python -m pipeline.extract_audio`` (reads ``audio`` from params.yaml).
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pyarrow as pa

from pipeline.common import FeatureExtractor, load_params, run_sharded, setup_logging
from pipeline.media import MediaError, load_audio

log = logging.getLogger("merc.extract_audio")
SAMPLE_RATE = 16000


class OpenSmileExtractor(FeatureExtractor):
    extra_fields = [
        pa.field("duration_s", pa.float32()),
        pa.field("rms", pa.float32()),
        pa.field("truncated", pa.bool_()),
    ]

    def __init__(self, feature_set: str = "eGeMAPSv02", max_duration_s: float | None = 30.0,
                 silence_rms: float = 1e-4):
        import opensmile

        try:
            fs = opensmile.FeatureSet[feature_set]
        except KeyError:
            raise ValueError(f"audio.feature_set {feature_set!r} unknown; try eGeMAPSv02 or ComParE_2016") from None
        self.smile = opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.Functionals)
        self.name = f"opensmile:{feature_set}"
        self.dim = len(self.smile.feature_names)
        self.max_duration_s, self.silence_rms = max_duration_s, silence_rms

    def features(self, signal: np.ndarray) -> np.ndarray:
        return self.smile.process_signal(signal, SAMPLE_RATE).to_numpy(dtype=np.float32).reshape(-1)

    def process_one(self, row: dict) -> dict:
        if not row["media_path"]:
            return dict(status="error", error=row["error"] or "no media for this utterance")
        try:
            signal, truncated = load_audio(row["media_path"], SAMPLE_RATE, self.max_duration_s)
        except MediaError as e:
            return dict(status="error", error=str(e))
        rec = dict(duration_s=signal.size / SAMPLE_RATE, truncated=truncated,
                   rms=float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))))
        if truncated:
            log.warning("%s: audio cut at %.1f s (audio.max_duration_s)", row["media_path"], self.max_duration_s)
        if rec["rms"] < self.silence_rms:
            return dict(rec, status="silent", error=f"RMS {rec['rms']:.2e} below audio.silence_rms")
        feat = self.features(signal)
        if not np.all(np.isfinite(feat)):
            return dict(rec, status="error", error=f"openSMILE returned {int((~np.isfinite(feat)).sum())} non-finite values")
        return dict(rec, status="ok", error=None, feature=feat)

    def process(self, rows: list[dict]) -> list[dict]:
        return [self.process_one(r) for r in rows]


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/features/audio")
    args = ap.parse_args()
    p = load_params("audio")
    ex = OpenSmileExtractor(p["feature_set"], p["max_duration_s"], p["silence_rms"])
    run_sharded(ex, args.utterances, args.out, config=p, shard_size=p["shard_size"])


if __name__ == "__main__":
    main()
