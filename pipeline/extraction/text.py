"""The text extractor and its builder, shared by the ``extract_text`` stage and the model bundle.

``build_text_extractor(p)`` is the one way a ``TextExtractor`` is made from a ``text`` params section: the stage
builds it through ``text_extractor`` (a factory, so Ray actors each load the encoder), the bundle
(``pipeline.training.bundle.Bundle.extractors``) from the section it recorded, so predict's vectors are the stage's.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import pyarrow as pa
import torch

from pipeline.errors import UserError
from pipeline.extraction.shards import FeatureExtractor
from pipeline.extraction.text_context import DialogueIndex, build_pair
from pipeline.extraction.textenc import (encode_batch, encoder_and_config, encoder_path, load_encoder, pair_limits,
                                         tokenize_pairs)
from pipeline.schema import nonfinite_error

log = logging.getLogger("merc.extract_text")


class TextExtractor(FeatureExtractor):
    """Utterance vectors, optionally with conversational context (``pipeline.extraction.text_context``).

    Pooling is over the target utterance's own tokens (segment 0: ``mean``) or the first token (``cls``);
    ``layers`` = k averages the last k hidden layers. The context holds whole turns, the nearest to the target
    kept first, within ``max_length`` (``text_context.build_pair``); the target is never cut for context.
    ``store_tokens``: also store the target utterance's token states (same layers, its own tokens only) as the
    list column ``frames`` — the text token sequence of LPGNet(Frame) §4.4
    (``model_params.lpgnet.sequences: {t: frames, a: frames}``).
    """

    extra_fields = [pa.field("n_tokens", pa.int32())]
    store_tokens = False

    def __init__(self, model: str, pooling: str = "mean", max_length: int = 128, batch_size: int = 32,
                 layers: int = 1, context: str = "utterance", window: int = 8, budget: int = 256,
                 future: bool = False, index: DialogueIndex | None = None, device: str | None = None,
                 store_tokens: bool = False):
        if pooling not in ("mean", "cls"):
            raise UserError(f"params.yaml text.pooling must be mean or cls, got {pooling!r}")
        if context != "utterance" and index is None:
            raise ValueError(f"text.context={context!r} needs the dialogue index of the utterance table")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok, self.model = load_encoder(model, self.device)
        self.name = f"text:{model}:{context}"
        self.dim = int(self.model.config.hidden_size)
        self.pooling, self.max_length, self.batch_size, self.layers = pooling, max_length, batch_size, layers
        self.context, self.window, self.budget, self.future, self.index = context, window, budget, future, index
        self.store_tokens = bool(store_tokens)
        if self.store_tokens:  # per instance: the class attribute is shared by every extractor
            self.extra_fields = [*type(self).extra_fields,
                                 pa.field("frames", pa.list_(pa.list_(pa.float32(), self.dim)))]

    def pair(self, row: dict) -> tuple[str, str | None]:
        if self.context == "utterance":
            return row["text"], None
        return build_pair(self.index, row["dialogue_id"], row["utterance_id"], self.context, self.window,
                          self.budget, self.future, **pair_limits(self.tok, self.max_length))

    @torch.inference_mode()
    def encode(self, pairs: list[tuple[str, str | None]]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and token counts, batched by length (pairs and single texts in separate batches); with
        ``store_tokens`` each pair's token states land in ``self.last_tokens`` (in ``pairs`` order)."""
        out = np.zeros((len(pairs), self.dim), dtype=np.float32)
        n_tok = np.zeros(len(pairs), dtype=np.int32)
        self.last_tokens = [None] * len(pairs)
        size = lambda i: len(pairs[i][0]) + len(pairs[i][1] or "")  # noqa: E731
        order = sorted(range(len(pairs)), key=lambda i: (pairs[i][1] is not None, size(i)))
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        batches = [[i for i in b if pairs[i][1] is None] for b in batches] + \
                  [[i for i in b if pairs[i][1] is not None] for b in batches]
        for idx in (b for b in batches if b):
            enc, target = tokenize_pairs(self.tok, [pairs[i] for i in idx], self.max_length)
            enc = enc.to(self.device)
            toks = [] if self.store_tokens else None
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
                vec = encode_batch(self.model, enc, target, self.pooling, self.layers, tokens=toks)
            out[idx] = vec.float().cpu().numpy()
            for i, t in zip(idx, toks or []):
                self.last_tokens[i] = t.float().cpu().numpy()
            n_tok[idx] = enc["attention_mask"].sum(1).cpu().numpy()
        return out, n_tok

    def process(self, rows: list[dict]) -> list[dict]:
        good = [i for i, r in enumerate(rows) if r["text"] and r["text"].strip()]
        records = [dict(status="error", error="empty transcript", feature=None, n_tokens=0) for _ in rows]
        if good:
            vecs, n_tok = self.encode([self.pair(rows[i]) for i in good])
            for j, i in enumerate(good):
                err = nonfinite_error(self.name, vecs[j])  # e.g. fp16 overflow in a fine-tuned encoder
                records[i] = dict(status="error" if err else "ok", error=err, feature=None if err else vecs[j],
                                  n_tokens=int(n_tok[j]))
                if self.store_tokens:
                    tok = self.last_tokens[j]
                    bad = err or nonfinite_error(self.name + " tokens", tok)
                    records[i].update(status="error" if bad else "ok", error=bad,
                                      feature=None if bad else vecs[j], frames=None if bad else list(tok))
        if self.store_tokens:
            for r in records:
                r.setdefault("frames", None)
        return records


def build_text_extractor(p: dict, index: DialogueIndex | None = None, device: str | None = None,
                         model_path: str | None = None) -> TextExtractor:
    """The ``TextExtractor`` of params section ``p``; ``index``: the turns context modes read; ``model_path``: the
    encoder to load when already resolved (default: ``textenc.encoder_path(p)``, the fine-tuned one if enabled)."""
    # .get with the class defaults: a bundle written before a key existed still rebuilds its extractor
    return TextExtractor(model_path or encoder_path(p), p["pooling"], p["max_length"], p["batch_size"],
                         p.get("layers", 1), p.get("context", "utterance"), p.get("window", 8), p.get("budget", 256),
                         p.get("future", False), index, device, store_tokens=bool(p.get("store_tokens", False)))


def text_extractor(p: dict, index: DialogueIndex | None = None) -> tuple[functools.partial, dict]:
    """The text stage's extractor for params section ``p`` (a factory of ``build_text_extractor``: under runtime
    ray each actor loads the encoder itself) and the config its shards are fingerprinted with; ``index``: the
    whole table's turns, for context modes that read other utterances."""
    model, config = encoder_and_config(p)
    return functools.partial(build_text_extractor, p, index, model_path=model), config
