"""The audio extractors and their builder, shared by the ``extract_audio`` stage and the model bundle.

``AudioDecoder`` (decoding, silence and duration checks), ``AudioExtractor`` and its subclasses
(``OpenSmileExtractor``, ``SSLExtractor``, ``Emotion2vecExtractor``; what each computes: the stage's docstring).
``build_audio_extractor(p)`` is the one way one is made from an ``audio`` params section: the stage builds it
(a factory under Ray), the bundle (``pipeline.training.bundle.Bundle.extractors``) from the section it recorded.
``relevant_config(p)``: the part of the section (and a local model's digest) that the stage's shards depend on.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

from pipeline.errors import UserError
from pipeline.extraction.media import MediaError, load_audio
from pipeline.extraction.runners import weights_digest
from pipeline.extraction.shards import FeatureExtractor
from pipeline.schema import nonfinite_error

log = logging.getLogger("merc.extract_audio")
SAMPLE_RATE = 16000


class AudioDecoder:
    """The CPU half of every audio extractor: decoding, silence and duration checks, no model.

    Apart from the extractor so that ``runtime: ray`` can decode on CPU workers while the model's actors
    embed (``pipeline.extraction.runners.run_sharded(decoder=...)``); the local runner calls it inside ``process``.
    """

    def __init__(self, max_duration_s: float | None = 30.0, silence_rms: float = 1e-4):
        self.max_duration_s, self.silence_rms = max_duration_s, silence_rms

    def decode(self, row: dict) -> tuple[np.ndarray | None, dict]:
        """The clip's samples, or ``None`` with a record saying why there is no vector."""
        # The utterance's own audio file when the corpus has one (IEMOCAP's sentences/wav), else its span
        # [start_s, end_s) of the clip or recording (whole clip when the times are null).
        path = row.get("audio_path") or row.get("media_path")
        if not path:
            return None, dict(status="error", error=row.get("error") or "no media for this utterance")
        span = {} if row.get("audio_path") else {"start_s": row.get("start_s"), "end_s": row.get("end_s")}
        try:
            signal, truncated = load_audio(path, SAMPLE_RATE, self.max_duration_s, **span)
        except MediaError as e:
            return None, dict(status="error", error=str(e))
        rec = dict(duration_s=signal.size / SAMPLE_RATE, truncated=truncated,
                   rms=float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))))
        if truncated:
            log.warning("%s: audio cut at %.1f s (audio.max_duration_s)", path, self.max_duration_s)
        if rec["rms"] < self.silence_rms:
            return None, dict(rec, status="silent", error=f"RMS {rec['rms']:.2e} below audio.silence_rms")
        return signal, rec


class AudioExtractor(FeatureExtractor):
    """Decoding (``AudioDecoder``) then ``embed`` of the decodable clips; subclasses implement ``embed``."""

    needs_media = True  # flagged utterances (bad_times, missing_media, no_media, …) are never decoded

    base_fields = [pa.field("duration_s", pa.float32()), pa.field("rms", pa.float32()),
                   pa.field("truncated", pa.bool_())]

    def __init__(self, max_duration_s: float | None = 30.0, silence_rms: float = 1e-4):
        self.max_duration_s, self.silence_rms = max_duration_s, silence_rms
        self.decoder = AudioDecoder(max_duration_s, silence_rms)
        self.extra_fields = list(self.base_fields)

    def embed(self, signals: list[np.ndarray]) -> list[dict]:  # pragma: no cover - interface
        """One ``{"feature": vector, **extra columns}`` per signal."""
        raise NotImplementedError

    def load(self, row: dict) -> tuple[np.ndarray | None, dict]:
        return self.decoder.decode(row)

    def process(self, rows: list[dict]) -> list[dict]:
        return self.infer(rows, [self.load(row) for row in rows])

    def infer(self, rows: list[dict], decoded: list[tuple[np.ndarray | None, dict]]) -> list[dict]:
        """Records for ``rows`` from their ``AudioDecoder.decode`` results (signal or None, record)."""
        records, todo = [], []
        for i, (signal, rec) in enumerate(decoded):
            records.append(dict(rec))
            if signal is not None:
                todo.append((i, signal))
        if todo:
            for (i, _), out in zip(todo, self.embed([s for _, s in todo])):
                err = nonfinite_error(self.name, out["feature"])
                if err:
                    records[i].update(status="error", error=err)
                else:
                    records[i].update(out, status="ok", error=None)
        return records


class OpenSmileExtractor(AudioExtractor):
    def __init__(self, feature_set: str = "eGeMAPSv02", max_duration_s: float | None = 30.0,
                 silence_rms: float = 1e-4, lld: bool = False):
        import opensmile

        super().__init__(max_duration_s, silence_rms)
        try:
            fs = opensmile.FeatureSet[feature_set]
        except KeyError:
            raise UserError(f"params.yaml audio.feature_set {feature_set!r} unknown; try eGeMAPSv02 or "
                            "ComParE_2016") from None
        self.smile = opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.Functionals)
        self.smile_lld = opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.LowLevelDescriptors) \
            if lld else None
        self.name = f"opensmile:{feature_set}"
        self.dim = len(self.smile.feature_names)
        if lld:
            n_lld = len(self.smile_lld.feature_names)
            self.extra_fields.append(pa.field("lld", pa.list_(pa.list_(pa.float32(), n_lld))))

    def features(self, signal: np.ndarray) -> np.ndarray:
        return self.smile.process_signal(signal, SAMPLE_RATE).to_numpy(dtype=np.float32).reshape(-1)

    def embed(self, signals: list[np.ndarray]) -> list[dict]:
        out = []
        for s in signals:
            rec = {"feature": self.features(s)}
            if self.smile_lld is not None:
                rec["lld"] = list(self.smile_lld.process_signal(s, SAMPLE_RATE).to_numpy(dtype=np.float32))
            out.append(rec)
        return out


def load_speech_encoder(name: str, device: str):
    """A Hugging Face speech encoder and its feature extractor (normalisation) by id or local path."""
    from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

    try:
        model = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load speech encoder {name!r} (params.yaml audio.ssl.model): {e}. Give a local "
                        "directory with config + weights, or a Hugging Face id reachable from here.") from e
    try:
        fe = AutoFeatureExtractor.from_pretrained(name)
    except (OSError, ValueError):
        # Checkpoints saved without preprocessor_config.json: wav2vec2-style zero-mean unit-variance input.
        log.warning("%s has no feature-extractor config; using Wav2Vec2FeatureExtractor(do_normalize=True)", name)
        fe = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True, return_attention_mask=True)
    return fe, model.to(device).eval()


class SSLExtractor(AudioExtractor):
    def __init__(self, model: str, layer: str | int = "mean", chunk_s: float = 20.0, batch_size: int = 4,
                 store_frames: bool = False, max_duration_s: float | None = 30.0, silence_rms: float = 1e-4,
                 device: str | None = None):
        super().__init__(max_duration_s, silence_rms)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.fe, self.model = load_speech_encoder(model, self.device)
        self.name, self.dim = f"ssl:{model}:{layer}", int(self.model.config.hidden_size)
        self.layer, self.chunk, self.batch_size = layer, int(chunk_s * SAMPLE_RATE), batch_size
        self.store_frames = store_frames
        if store_frames:
            self.extra_fields.append(pa.field("frames", pa.list_(pa.list_(pa.float32(), self.dim))))

    def _select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # hidden_states[0] is the CNN feature projection; 1..L are the transformer layers.
        if self.layer == "last":
            return hidden_states[-1]
        if self.layer == "mean":
            return torch.stack(hidden_states[1:]).mean(0)
        return hidden_states[int(self.layer)]

    @torch.inference_mode()
    def embed(self, signals: list[np.ndarray]) -> list[dict]:
        # Cut every clip into chunks, run the chunks length-sorted in batches, then pool frames per clip.
        chunks = [(i, s[o : o + self.chunk]) for i, s in enumerate(signals) for o in range(0, len(s), self.chunk)]
        chunks = [(i, c) for i, c in chunks if len(c) >= 400] or [(i, s) for i, s in enumerate(signals)]
        chunks.sort(key=lambda ic: len(ic[1]))
        frames: list[list[np.ndarray]] = [[] for _ in signals]
        for b in range(0, len(chunks), self.batch_size):
            batch = chunks[b : b + self.batch_size]
            inp = self.fe([c for _, c in batch], sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt",
                          return_attention_mask=True)
            mask = inp.get("attention_mask")
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
                out = self.model(inp["input_values"].to(self.device),
                                 attention_mask=None if mask is None else mask.to(self.device),
                                 output_hidden_states=True)
            h = self._select(out.hidden_states).float().cpu()
            n_frames = self.model._get_feat_extract_output_lengths(torch.tensor([len(c) for _, c in batch]))
            for (i, _), x, n in zip(batch, h, n_frames.tolist()):
                frames[i].append(x[: max(1, min(n, x.shape[0]))].numpy())
        out = []
        for f in frames:
            seq = np.concatenate(f) if f else np.zeros((1, self.dim), np.float32)
            rec = {"feature": seq.mean(0)}
            if self.store_frames:
                rec["frames"] = list(seq)
            out.append(rec)
        return out


def load_emotion2vec(path: str, device: str = "cpu"):
    """FunASR's ``Emotion2vec`` built from ``<path>/config.yaml`` with the weights of ``<path>/model.pt``.

    Weights are read with ``torch.load(weights_only=True)`` (no unpickling of code); FunASR's own wrappers
    (``state_dict`` / ``model``) and a ``module.`` prefix are unwrapped. The classification head of the
    fine-tuned variants (``proj``) may be absent or extra: only the encoder is used. Missing package or
    files → a one-line ``RuntimeError`` saying what to install or where to put the checkpoint.
    """
    from pathlib import Path

    import yaml

    try:
        from funasr.models.emotion2vec.model import Emotion2vec
    except ImportError as e:
        raise RuntimeError(f"audio.extractor emotion2vec needs FunASR: pip install --no-deps funasr==1.4.16 "
                           f"(+ kaldiio, librosa; see requirements*.txt) — import failed: {e}") from None
    folder = Path(path)
    cfg_file, weights = folder / "config.yaml", folder / "model.pt"
    if not cfg_file.is_file() or not weights.is_file():
        raise RuntimeError(f"no emotion2vec checkpoint at {path!r}: audio.emotion2vec.model must be a folder with "
                           "config.yaml and model.pt as FunASR ships it (e.g. iic/emotion2vec_base)")
    conf = yaml.safe_load(cfg_file.read_text())
    if not isinstance(conf, dict) or "model_conf" not in conf:
        raise RuntimeError(f"{cfg_file} has no model_conf: not a FunASR emotion2vec config")
    model = Emotion2vec(model_conf=conf["model_conf"])  # vocab_size absent: no classification head
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("proj.")]
    if missing or unexpected:
        raise RuntimeError(f"{weights} does not fit {cfg_file}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return conf["model_conf"], model.to(device).eval()


class Emotion2vecExtractor(AudioExtractor):
    """emotion2vec utterance vectors (mean of the last layer's frames) and, optionally, the frames."""

    MIN_SAMPLES = 400  # one frame of the conv stack (25 ms): shorter clips are zero-padded to it

    def __init__(self, model: str, store_frames: bool = False, max_duration_s: float | None = 30.0,
                 silence_rms: float = 1e-4, device: str | None = None):
        super().__init__(max_duration_s, silence_rms)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        conf, self.model = load_emotion2vec(model, self.device)
        self.normalize = bool(conf.get("normalize", False))
        self.name, self.dim = f"emotion2vec:{model}", int(conf["embed_dim"])
        self.store_frames = store_frames
        if store_frames:
            self.extra_fields.append(pa.field("frames", pa.list_(pa.list_(pa.float32(), self.dim))))

    @torch.inference_mode()
    def frames(self, signal: np.ndarray) -> np.ndarray:
        """``[L, dim]`` last-layer frames of one clip, as FunASR's ``Emotion2vec.inference`` computes them."""
        if signal.size < self.MIN_SAMPLES:
            signal = np.pad(signal, (0, self.MIN_SAMPLES - signal.size))
        x = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32)).to(self.device).view(1, -1)
        if self.normalize:
            x = torch.nn.functional.layer_norm(x, x.shape)
        return self.model.extract_features(x, padding_mask=None)["x"][0].float().cpu().numpy()

    def embed(self, signals: list[np.ndarray]) -> list[dict]:
        # one clip at a time, as FunASR's inference: no padding inside the batch, so no padding mask needed
        out = []
        for s in signals:
            seq = self.frames(s)
            rec = {"feature": seq.mean(0)}
            if self.store_frames:
                rec["frames"] = list(seq)
            out.append(rec)
        return out


def build_audio_extractor(p: dict) -> AudioExtractor:
    """The audio extractor of params section ``p`` (``audio.extractor`` picks the class)."""
    common = dict(max_duration_s=p["max_duration_s"], silence_rms=p["silence_rms"])
    if p["extractor"] == "opensmile":
        return OpenSmileExtractor(p["feature_set"], lld=p.get("lld", False), **common)
    if p["extractor"] == "ssl":
        s = p["ssl"]
        return SSLExtractor(s["model"], s["layer"], s["chunk_s"], s["batch_size"], s["store_frames"], **common)
    if p["extractor"] == "emotion2vec":
        e = p["emotion2vec"]
        return Emotion2vecExtractor(e["model"], e.get("store_frames", False), **common)
    raise UserError(f"params.yaml audio.extractor must be opensmile or ssl, or emotion2vec; got {p['extractor']!r}")


def relevant_config(p: dict) -> dict:
    """The params that change this stage's output (the other extractor's settings do not)."""
    drop = {"ssl"} if p["extractor"] == "opensmile" else {"feature_set", "lld"}
    drop |= {"emotion2vec"} if p["extractor"] != "emotion2vec" else {"ssl"}
    config = {k: v for k, v in p.items() if k not in drop and k != "shard_size"}
    if p["extractor"] in ("ssl", "emotion2vec"):  # a local encoder's bytes, not only its path, decide validity
        config["weights_digest"] = weights_digest(p[p["extractor"]]["model"])
    return config
