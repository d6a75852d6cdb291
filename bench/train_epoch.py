"""Benchmark: one training epoch per model on MELD-sized random features, through the shared engine.

MELD's train split: 1038 dialogues, 9989 utterances (1–24 per dialogue, mean ≈ 9.6); dev: 114 dialogues.
Features: text 768-d (RoBERTa-base size), audio 6373-d (openSMILE ComParE_2016), visual 512-d. Each model uses its
``model_params`` from params.yaml and the engine settings of ``train`` (batch size, weighted loss, …).

Run: ``python bench/train_epoch.py [--models m2fnet dialoguetrm] [--threads 2] [--json out.json] [--epoch 3]``
(``--epoch 3`` times an epoch with Ada2I's gradient modulation on: it starts at the 4th epoch).
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from models import get_model, list_models  # noqa: E402
from pipeline.common import load_params, setup_logging  # noqa: E402
from pipeline.training.engine import Engine, EngineConfig, class_weights, parse_modalities, seed_everything  # noqa: E402
from pipeline.schema import EMOTIONS  # noqa: E402

log = logging.getLogger("merc.bench")
DIMS = {"t": 768, "a": 6373, "v": 512}
# MELD train emotion frequencies (neutral, surprise, fear, sadness, joy, disgust, anger)
MELD_CLASS_P = np.array([4710, 1205, 268, 683, 1743, 271, 1109], dtype=np.float64)


def meld_like(n_dialogues: int, mods: list[str], seed: int = 0) -> list[dict]:
    """Random dialogues with MELD-like lengths (gamma, mean ≈ 9.6, clipped to 1..24) and label frequencies."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.gamma(2.0, 4.8, n_dialogues)), 1, 24).astype(int)
    out = []
    for k, T in enumerate(lengths):
        present = {m: rng.random(T) > (0.0 if m == "t" else 0.05) for m in mods}  # a few absent a/v rows
        out.append(dict(dialogue_id=f"d{k}", utterance_id=np.arange(T),
                        label=rng.choice(len(EMOTIONS), T, p=MELD_CLASS_P / MELD_CLASS_P.sum()),
                        speaker=rng.integers(0, 3, T),
                        feats={m: rng.standard_normal((T, DIMS[m]), dtype=np.float32) * present[m][:, None]
                               for m in mods},
                        present=present))
    return out


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    ap.add_argument("--modalities", default="tav")
    ap.add_argument("--dialogues", type=int, default=1038)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--dims", default=None,
                    help="feature widths, e.g. t=768,a=300,v=342 (Ada2I's official MELD features); default t=768,a=6373,v=512")
    ap.add_argument("--epoch", type=int, default=0,
                    help="epoch index the timed epoch reports to the model's hooks (e.g. 3: Ada2I's modulation is on)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dims:
        DIMS.update({k: int(v) for k, v in (kv.split("=") for kv in args.dims.split(","))})
    params = load_params()
    mods = parse_modalities(args.modalities)
    cfg = EngineConfig.from_params(params["train"])
    train_d, dev_d = meld_like(args.dialogues, mods, 0), meld_like(114, mods, 1)
    weight = class_weights(np.concatenate([d["label"] for d in train_d]), len(EMOTIONS))
    n_utt = sum(len(d["label"]) for d in train_d)
    log.info("%d train dialogues, %d utterances, modalities %s, batch %d, %d threads, %s", len(train_d), n_utt,
             "".join(mods), cfg.batch_size, torch.get_num_threads(), "cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in args.models or list_models():
        seed_everything(0)
        mcfg = dict(params["model_params"].get(name) or {})
        if mcfg.get("teacher_path"):  # a trained teacher fits real feature widths; an untrained one times the same
            mcfg["teacher_path"] = None
        model = get_model(name, input_dims={m: DIMS[m] for m in mods}, n_classes=len(EMOTIONS), **mcfg)
        engine = Engine(model, cfg, weight=weight)
        t0 = time.perf_counter()
        engine.train_epoch(train_d, np.random.default_rng(0), epoch=args.epoch)
        t1 = time.perf_counter()
        engine.evaluate(dev_d)
        t2 = time.perf_counter()
        rows.append({"model": name, "params": sum(p.numel() for p in model.parameters()),
                     "train_s_per_epoch": round(t1 - t0, 2), "dev_eval_s": round(t2 - t1, 2),
                     # ru_maxrss is the process peak so far (KiB on Linux): per model when run one model at a time
                     "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)})
        log.info("%s: %.1f s/epoch", name, t1 - t0)
    table = ["| model | params | train s/epoch | dev eval s | peak RSS GB (process, so far) |", "|---|---:|---:|---:|---:|"]
    table += [f"| {r['model']} | {r['params']:,} | {r['train_s_per_epoch']:.1f} | {r['dev_eval_s']:.1f} | "
              f"{r['peak_rss_gb']:.2f} |" for r in rows]
    log.info("epoch time on MELD-sized random features\n%s", "\n".join(table))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
