"""The bundle's features → its model over a whole conversation: the part of predict that needs no video.

``Predictor(bundle)`` loads the bundle's model and its extractors once (``Bundle.extractors``: the extract stages'
own builders with the recorded settings, every check a one-line ``BundleError``); ``predict(rows)`` runs one
conversation given as rows shaped like the utterance table (``media_path``, ``start_s``, ``end_s``, ``text``,
``speaker``): ``Bundle.featurize`` (the stages' own ``process`` calls, batching and per-item statuses), the
training split's standardisation, then the model over the utterances in order, exactly as ``pipeline.evaluate``
feeds a dialogue. A model that fine-tuned its text encoder end to end (``train.text_encoder``) gets token rows
(``text_e2e.TokenRows``) that its encoder, rebuilt from the bundle, encodes.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from pipeline.training.bundle import Bundle
from pipeline.training.text_e2e import keep_tokens

log = logging.getLogger("merc.predict")


class Predictor:
    """A bundle's model and extractors, loaded once; ``predict(rows)`` runs one conversation."""

    def __init__(self, bundle: Bundle, device: str | None = None):
        self.bundle, self.device = bundle, device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = bundle.build_model().to(self.device)
        self.norm = bundle.standardizer()
        if bundle.e2e:
            keep_tokens(self.norm)  # token ids reach the model's encoder unchanged, as in train/evaluate
        self.extractors = bundle.extractors(self.device)  # built now: a bundle that cannot serve fails here
        self.timings: dict[str, float] = {}

    def features(self, rows: list[dict]) -> dict[str, dict]:
        """``Bundle.featurize`` on this predictor's device, timed into ``timings``."""
        return self.bundle.featurize(rows, self.device, self.timings)

    def predict(self, rows: list[dict], feats: dict | None = None) -> tuple[np.ndarray, dict]:
        """Class probabilities ``[n, C]`` for one conversation's rows in order (NaN rows: no modality present)."""
        from pipeline.training.engine import predict

        feats = feats or self.features(rows)
        n = len(rows)
        names = {s: k for k, s in enumerate(dict.fromkeys(r["speaker"] or "unknown" for r in rows))}
        cap = int(self.bundle.meta["cfg"].get("max_speakers") or 0)
        speaker = np.asarray([names[r["speaker"] or "unknown"] for r in rows], np.int64)
        if cap:
            speaker = np.minimum(speaker, cap - 1)  # more voices than the model has speaker slots: share the last
        d = dict(dialogue_id=rows[0]["dialogue_id"] if rows else "video", utterance_id=np.arange(n, dtype=np.int64),
                 label=np.zeros(n, np.int64), speaker=speaker,
                 feats={m: self.norm(m, f["x"], f["present"]) for m, f in feats.items()},
                 present={m: f["present"] for m, f in feats.items()})
        t0 = time.perf_counter()
        _, _, logits, _ = predict(self.model, [d], 1, self.device)
        self.timings["model"] = self.timings.get("model", 0.0) + time.perf_counter() - t0
        probs = torch.softmax(logits.float(), -1).numpy().astype(np.float64)
        none = ~np.any(np.stack([f["present"] for f in feats.values()]), 0) if feats else np.ones(n, bool)
        probs[none] = np.nan
        if not np.isfinite(probs[~none]).all():
            raise RuntimeError("the model returned non-finite probabilities")
        return probs, feats
