"""Bundle → extractors → features → the model over a whole conversation: the part of predict that needs no video.

``Predictor(bundle)`` rebuilds the extract stages' own extractor classes (``TextExtractor``, the audio stage's
``build_extractor``, ``FaceExtractor``) with the settings recorded in the bundle, checks that they produce features of
the recorded names and widths, and runs them on rows shaped like the utterance table (``media_path``, ``start_s``,
``end_s``, ``text``, ``speaker``): the same ``process`` calls, so the same batching (text batched by length, faces
batched per clip), the same per-item statuses. A model that fine-tuned its text encoder end to end
(``train.text_encoder``) gets token rows instead of text vectors (``TokenRows``: train's own ``token_matrix``, the
video being one dialogue), which its encoder, rebuilt from the bundle, encodes. Features are standardised with the
training split's statistics and the model sees the utterances of one conversation in order, exactly as
``pipeline.evaluate`` feeds a dialogue.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.training.bundle import Bundle, BundleError
from pipeline.common import file_digest
from pipeline.extract_visual import FaceExtractor, choose_speaker_track, link_tracks
from pipeline.extraction.shards import process_safely
from pipeline.training.text_e2e import keep_tokens, token_matrix

log = logging.getLogger("merc.predict")


class TrackedFaceExtractor(FaceExtractor):
    """The visual stage's extractor, also reporting the chosen face track's mean box (``face_box``) per clip.

    The track is recomputed from the detections ``detect`` returned, with the stage's own ``link_tracks`` and
    ``choose_speaker_track`` (cheap, deterministic): the same track the feature came from.
    """

    def detect(self, frames):
        self._dets = super().detect(frames)
        return self._dets

    def faces_of(self, frames):
        rec, faces = super().faces_of(frames)
        if faces is not None:
            tracks = link_tracks(self._dets)
            tr = tracks[choose_speaker_track(tracks, frames[0].shape[1], frames[0].shape[0])]
            rec["face_box"] = [round(float(v), 1) for v in np.stack(tr.boxes).mean(0)]
        return rec, faces


class TokenRows:
    """End to end text (``train.text_encoder``): the model's ``t`` input is token rows, built exactly as
    ``text_e2e.attach_tokens`` builds them for train/evaluate (``token_matrix``: Eq. 1's utterance + context pair
    under the recorded context mode, window, budget, max_length, segment/[SEP] switches); the model's own
    fine-tuned encoder turns them into vectors. ``index`` is the conversation (set per video by ``features``)."""

    def __init__(self, c: dict, tok):
        self.c, self.tok, self.context = c, tok, c["context"]
        self.name, self.dim = f"tokens:{c['model']}", 4 * int(c["max_length"])
        self.index = None

    def process(self, rows: list[dict]) -> list[dict]:
        from pipeline.extraction.text_context import DialogueIndex

        index = self.index or DialogueIndex([r["dialogue_id"] for r in rows], [r["utterance_id"] for r in rows],
                                            [r["speaker"] or "" for r in rows], [r["text"] for r in rows])
        x, ok = token_matrix(index, [(r["dialogue_id"], r["utterance_id"]) for r in rows], self.tok, self.c)
        L = self.dim // 4
        return [dict(status="ok", error=None, feature=x[i], n_tokens=int(x[i, 2 * L : 3 * L].sum())) if ok[i]
                else dict(status="error", error="empty transcript", feature=None, n_tokens=0)
                for i in range(len(rows))]


def token_rows(bundle: Bundle) -> TokenRows:
    """The e2e bundle's tokenizer, resolved offline and checked against the recorded digest (one-line errors)."""
    from pipeline.training.text_e2e import load_tokenizer, tokenizer_digest

    c, rec = bundle.e2e, (bundle.meta.get("e2e_encoder") or {}).get("tokenizer") or {}
    if not rec.get("sha256"):
        raise BundleError(f"{bundle.path}: the bundle records no tokenizer digest for its end-to-end text encoder "
                          f"{c['model']!r} ({rec.get('error', 'not recorded')}): retrain (`dvc repro train`)")
    try:
        tok = load_tokenizer({"model": rec.get("model") or c["model"]})
        got = tokenizer_digest(tok)
    except (RuntimeError, ValueError, OSError) as e:
        raise BundleError(f"the bundle needs the tokenizer of its end-to-end text encoder {c['model']!r} "
                          f"(sha256 {rec['sha256'][:12]}…), not available here: put its files at that path (or "
                          f"in the Hugging Face cache) ({str(e).splitlines()[0][:200]})") from e
    if got != rec["sha256"]:
        raise BundleError(f"the tokenizer at {c['model']!r} differs from the one the model was trained with "
                          f"(sha256 {got[:12]}… here, {rec['sha256'][:12]}… in the bundle)")
    return TokenRows(c, tok)


def _build(kind: str, factory):
    try:
        return factory()
    except (RuntimeError, OSError, ValueError, ImportError, KeyError) as e:
        raise BundleError(f"the bundle's {kind} extractor cannot be rebuilt here: {str(e).splitlines()[0]}") from e


def build_extractors(bundle: Bundle, device: str | None = None) -> dict:
    """The bundle's extractors by modality; a missing encoder or a width mismatch is a one-line ``BundleError``."""
    ex, settings = {}, bundle.meta.get("extractors") or {}
    for m in bundle.modalities:
        section = {"t": "text", "a": "audio", "v": "visual"}[m]
        if m == "t" and bundle.e2e:  # token rows for the model's own encoder: no text feature extractor
            ex[m] = token_rows(bundle)
            continue
        recorded = ((bundle.meta.get("features") or {}).get(m) or {}).get("feature_name") or ""
        if recorded.startswith("imported:"):
            raise BundleError(f"the model was trained on {section} features imported from a pickle ({recorded}), "
                              "which no extractor here can compute from a video: train on extracted features")
        p = settings.get(section)
        if not p:
            raise BundleError(f"{bundle.path}: the bundle records no {section!r} extractor settings (trained without "
                              f"params.{section}); retrain with `dvc repro train`")
        if m == "t":
            from pipeline.extract_text import TextExtractor
            from pipeline.extraction.text_context import DialogueIndex

            enc = settings.get("text_encoder") or {"model": p["model"], "sha256": None}
            if enc.get("sha256"):  # a fine-tuned encoder: its exact weights, or nothing
                weights = Path(enc["model"]) / "model.safetensors"
                if not weights.is_file():
                    raise BundleError(f"the bundle needs its fine-tuned text encoder {enc['model']} (sha256 "
                                      f"{enc['sha256'][:12]}…), absent here: run `dvc repro finetune_text` or "
                                      "copy it")
                if file_digest(weights) != enc["sha256"]:
                    raise BundleError(f"{weights} differs from the fine-tuned encoder the bundle was trained with "
                                      f"(sha256 {enc['sha256'][:12]}…)")
            index = DialogueIndex([], [], [], [])  # replaced per conversation (context modes read it)
            ex[m] = _build("text", lambda: TextExtractor(
                enc["model"], p["pooling"], p["max_length"], p["batch_size"], p.get("layers", 1),
                p.get("context", "utterance"), p.get("window", 8), p.get("budget", 256), p.get("future", False),
                index, device))
        elif m == "a":
            from pipeline.extract_audio import build_extractor

            ex[m] = _build("audio", lambda: build_extractor(p))
        else:
            want = settings.get("visual_weights_sha256")
            if want and (not Path(p["weights"]).is_file() or file_digest(p["weights"]) != want):
                raise BundleError(f"the bundle needs the visual checkpoint {p['weights']} (sha256 {want[:12]}…), "
                                  "absent or different here")
            ex[m] = _build("visual", lambda: TrackedFaceExtractor.from_params(p))
        want_dim, got = bundle.meta["input_dims"][m], ex[m].dim
        if got != want_dim:
            raise BundleError(f"the rebuilt {section} extractor {ex[m].name} gives {got}-d vectors; the model was "
                              f"trained on {want_dim}-d")
        name = ((bundle.meta.get("features") or {}).get(m) or {}).get("feature_name")
        if name and name != ex[m].name:
            raise BundleError(f"the rebuilt {section} extractor is {ex[m].name!r}; the model was trained on "
                              f"{name!r} features")
    return ex


class Predictor:
    """A bundle's model and extractors, loaded once; ``predict(rows)`` runs one conversation."""

    def __init__(self, bundle: Bundle, device: str | None = None):
        self.bundle, self.device = bundle, device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = bundle.build_model().to(self.device)
        self.norm = bundle.standardizer()
        if bundle.e2e:
            keep_tokens(self.norm)  # token ids reach the model's encoder unchanged, as in train/evaluate
        self.extractors = build_extractors(bundle, device)
        self.timings: dict[str, float] = {}

    def features(self, rows: list[dict]) -> dict[str, dict]:
        """Per modality: raw vectors ``x``, ``present`` mask and the extractor's per-row records."""
        out = {}
        for m, ex in self.extractors.items():
            if m == "t" and ex.context != "utterance":
                from pipeline.extraction.text_context import DialogueIndex

                ex.index = DialogueIndex([r["dialogue_id"] for r in rows], [r["utterance_id"] for r in rows],
                                         [r["speaker"] or "" for r in rows], [r["text"] for r in rows])
            t0 = time.perf_counter()
            recs = process_safely(ex, rows)
            self.timings[f"extract_{m}"] = self.timings.get(f"extract_{m}", 0.0) + time.perf_counter() - t0
            x = np.zeros((len(rows), ex.dim), np.float32)
            present = np.zeros(len(rows), bool)
            for i, r in enumerate(recs):
                f = r.get("feature")
                if r["status"] == "ok" and f is not None:
                    f = np.asarray(f, np.float32)
                    if np.isfinite(f).all():
                        x[i], present[i] = f, True
                    else:
                        r.update(status="error", error=f"{ex.name} returned non-finite values")
                elif r["status"] == "ok":
                    r.update(status="error", error=f"{ex.name} returned no vector")
            out[m] = {"x": x, "present": present, "records": recs}
        return out

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
