"""Stage ``train``: a registered model on dialogue batches, checkpoint selected on dev weighted F1.

Inverse-frequency weighted cross-entropy (``train.weighted_loss``), AdamW, gradient clipping, early stopping
on dev weighted F1; the test split is never read here. Per-epoch train/dev loss, accuracy, weighted and
macro F1 go to DVCLive (``reports/train``; plots/metrics are declared in dvc.yaml, ``dvcyaml=False``).

Run: ``python -m pipeline.train`` (reads ``model``, ``model_params.<model>`` and ``train`` from params.yaml).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from models import get_model
from pipeline.common import load_params, setup_logging
from pipeline.dataset import Standardizer, collate, dialogues, load_corpus
from pipeline.metrics import classification_metrics
from pipeline.schema import label_names

log = logging.getLogger("merc.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """w_c = N / (C · n_c); classes absent from training get weight 1 (they never appear in the loss)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict(model: nn.Module, data: list[dict], batch_size: int, device: str):
    """Predictions, labels, (dialogue_id, utterance_id) keys and summed loss inputs for ``data``."""
    model.eval()
    preds, labels, logits_all, keys = [], [], [], []
    for s in range(0, len(data), batch_size):
        chunk = data[s : s + batch_size]
        b = collate(chunk, device)
        logits = model(b["feats"], b["present"], b["mask"], b["speaker"])
        m = b["mask"]
        logits_all.append(logits[m].float().cpu())
        preds.append(logits[m].argmax(-1).cpu())
        labels.append(b["label"][m].cpu())
        keys += [(d["dialogue_id"], int(u)) for d in chunk for u in d["utterance_id"]]
    return torch.cat(preds).numpy(), torch.cat(labels).numpy(), torch.cat(logits_all), keys


def train(params: dict, utterances: str, out: str, live_dir: str, feature_dirs: dict | None = None) -> dict:
    tp = params["train"]
    name = params["model"]
    cfg = dict(params.get("model_params", {}).get(name) or {})
    seed_everything(tp["seed"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    corpus = load_corpus(utterances, tp["modalities"], feature_dirs)
    norm = Standardizer().fit(corpus, corpus.split_rows("train"))
    train_d, dev_d = dialogues(corpus, "train", norm), dialogues(corpus, "dev", norm)
    if not train_d or not dev_d:
        raise RuntimeError("train needs labelled train and dev dialogues: check the prepare stage's output")
    labels = label_names(corpus.utterances.schema)  # the prepared table's label set (MELD, IEMOCAP, ...)
    model = get_model(name, input_dims=corpus.dims, n_classes=len(labels), **cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s (%s params) on %s, modalities %s", name, f"{n_params:,}", device, tp["modalities"])
    y_train = np.concatenate([d["label"] for d in train_d])
    weight = class_weights(y_train, len(labels)).to(device) if tp["weighted_loss"] else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=-100)
    opt = torch.optim.AdamW(model.parameters(), lr=tp["lr"], weight_decay=tp["weight_decay"])
    rng = np.random.default_rng(tp["seed"])

    from dvclive import Live

    best, best_epoch, bad_epochs = -1.0, -1, 0
    with Live(live_dir, dvcyaml=False, save_dvc_exp=False, report=None) as live:
        live.log_param("n_params", n_params)
        for epoch in tqdm(range(tp["epochs"]), desc=f"train {name}", unit="epoch"):
            model.train()
            order = rng.permutation(len(train_d))
            total, count = 0.0, 0
            for s in range(0, len(order), tp["batch_size"]):
                b = collate([train_d[i] for i in order[s : s + tp["batch_size"]]], device)
                logits = model(b["feats"], b["present"], b["mask"], b["speaker"])
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), b["label"].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), tp["grad_clip"])
                opt.step()
                n = int(b["mask"].sum())
                total, count = total + loss.item() * n, count + n
            for split, data in (("train", train_d), ("dev", dev_d)):
                pred, y, logits, _ = predict(model, data, tp["batch_size"], device)
                m = classification_metrics(y, pred, labels)
                live.log_metric(f"{split}/loss", float(nn.functional.cross_entropy(logits, torch.from_numpy(y))))
                for k in ("accuracy", "weighted_f1", "macro_f1"):
                    live.log_metric(f"{split}/{k}", m[k])
            dev_f1 = m["weighted_f1"]  # the last split logged is dev
            if dev_f1 > best:
                best, best_epoch, bad_epochs = dev_f1, epoch, 0
                save_checkpoint(out, model, name, cfg, corpus.dims, tp, norm, epoch, dev_f1, labels)
            else:
                bad_epochs += 1
            live.next_step()
            if bad_epochs >= tp["patience"]:
                log.info("early stop at epoch %d (best dev weighted F1 %.4f at epoch %d)", epoch, best, best_epoch)
                break
        live.summary["best"] = {"dev_weighted_f1": best, "epoch": best_epoch}
    return {"best_dev_weighted_f1": best, "best_epoch": best_epoch}


def save_checkpoint(out, model, name, cfg, dims, tp, norm, epoch, dev_f1, labels) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save({"model": name, "cfg": cfg, "input_dims": dims, "modalities": tp["modalities"],
                "state_dict": model.state_dict(), "norm": norm.state(), "labels": labels,
                "epoch": epoch, "dev_weighted_f1": dev_f1}, tmp)
    os.replace(tmp, out)


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/model/model.pt")
    ap.add_argument("--live", default="reports/train")
    args = ap.parse_args()
    result = train(load_params(), args.utterances, args.out, args.live)
    log.info("best dev weighted F1 %.4f at epoch %d", result["best_dev_weighted_f1"], result["best_epoch"])


if __name__ == "__main__":
    main()
