"""Speaker diarization over utterances: Resemblyzer GE2E embeddings + agglomerative clustering.

Resemblyzer's ``VoiceEncoder`` (a 3-layer LSTM trained with the GE2E loss; its weights ship in the wheel) embeds each
utterance's audio (volume-normalised, long silences removed by its WebRTC VAD) into a 256-d unit vector; scikit-learn's
``AgglomerativeClustering`` (cosine distance, average linkage) groups them into ``n_speakers`` speakers, or, when that
is not given, merges clusters while their mean distance is below ``threshold``. Speakers are named ``SPEAKER_1``,
``SPEAKER_2``, … in order of their first utterance. Utterances with too little voiced audio to embed get no speaker.
"""
from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

log = logging.getLogger("merc.predict")
SAMPLE_RATE = 16000
MIN_VOICED_S = 0.3  # not in Resemblyzer: our choice; below this the GE2E LSTM sees under 30 mel frames
SILENCE_RMS = 1e-4  # as params audio.silence_rms
THRESHOLD = 0.35    # not in Resemblyzer: our choice; cosine distance below which clusters merge (GE2E embeddings
                    # of one voice are typically > 0.75 similar, of two voices < 0.65)


class Diarizer:
    def __init__(self, device: str | None = None):
        import torch
        from resemblyzer import VoiceEncoder

        with contextlib.redirect_stdout(io.StringIO()):  # it prints its load time
            self.encoder = VoiceEncoder(device or ("cuda" if torch.cuda.is_available() else "cpu"), verbose=False)

    def embed(self, signals: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """One unit GE2E vector per 16 kHz signal (None: no signal or too little voiced audio)."""
        from resemblyzer import preprocess_wav

        out = []
        for s in signals:
            if s is None or s.size < MIN_VOICED_S * SAMPLE_RATE or np.sqrt(np.mean(np.square(s))) < SILENCE_RMS:
                out.append(None)  # (silence would be normalised by a gain of 1/0)
                continue
            wav = preprocess_wav(s.astype(np.float32, copy=False))  # already 16 kHz: no resampling
            e = self.encoder.embed_utterance(wav) if wav.size >= MIN_VOICED_S * SAMPLE_RATE else None
            out.append(e if e is not None and np.isfinite(e).all() else None)
        return out


def cluster(embeddings: list[np.ndarray | None], n_speakers: int | None = None,
            threshold: float = THRESHOLD) -> list[int | None]:
    """Cluster index per embedding (0, 1, … by first appearance); None where there is no embedding."""
    idx = [i for i, e in enumerate(embeddings) if e is not None]
    labels: list[int | None] = [None] * len(embeddings)
    if not idx:
        return labels
    if len(idx) == 1 or n_speakers == 1:
        raw = np.zeros(len(idx), dtype=int)
    else:
        from sklearn.cluster import AgglomerativeClustering

        x = np.stack([embeddings[i] for i in idx])
        if n_speakers is not None:
            algo = AgglomerativeClustering(n_clusters=min(n_speakers, len(idx)), metric="cosine", linkage="average")
        else:
            algo = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="cosine",
                                           linkage="average")
        raw = algo.fit_predict(x)
    rename: dict[int, int] = {}
    for i, r in zip(idx, raw):
        labels[i] = rename.setdefault(int(r), len(rename))
    return labels


def speaker_names(labels: list[int | None]) -> list[str | None]:
    return [None if k is None else f"SPEAKER_{k + 1}" for k in labels]
