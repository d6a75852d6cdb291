"""Stage ``evaluate``: the dev-selected checkpoint(s) on the test split → metrics, confusion matrix, predictions.

Writes (fixed paths, so ``dvc metrics diff`` / ``dvc exp show`` compare runs of any model):
  reports/metrics.json          accuracy, weighted/macro F1 (mean over the checkpoint's seeds) and their ``*_std``,
                                per-seed results (``seeds``), per-class P/R/F1/support, item counts
  reports/plots/confusion.csv   one row per test utterance (actual, predicted): DVC ``confusion`` template
  reports/confusion.png         the confusion matrix (counts) as a heatmap with emotion names
  reports/confusion_normalized.png   the same, each row divided by its total (recall on the diagonal)
  reports/curves.png            per-epoch train/dev loss, accuracy, weighted F1 (from DVCLive's TSVs)
  reports/predictions.csv       dialogue_id, utterance_id, actual, predicted

Run: ``python -m pipeline.evaluate``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models import get_model
from pipeline.common import atomic_write_text, setup_logging
from pipeline.dataset import Standardizer, dialogues, load_corpus, model_sequences
from pipeline.engine import predict, resolve_device
from pipeline.metrics import classification_metrics, confusion, mean_std
from pipeline.plots import plot_confusion, plot_curves

log = logging.getLogger("merc.evaluate")
SUMMARY = ("accuracy", "weighted_f1", "macro_f1")


def evaluate(checkpoint: str, utterances: str, reports: str, split: str = "test",
             feature_dirs: dict | None = None, live_plots: str | None = None) -> dict:
    """Every seed's checkpoint on ``split``: mean ± std metrics; confusion/predictions of the dev-selected seed."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    labels = ckpt["labels"]
    corpus = model_sequences(load_corpus(utterances, ckpt["modalities"], feature_dirs), ckpt["model"], ckpt["cfg"],
                             feature_dirs)  # Frame mode: the sequences the model was trained on
    norm = Standardizer(ckpt["norm"]["mean"], ckpt["norm"]["std"])
    data = dialogues(corpus, split, norm)
    if not data:
        raise RuntimeError(f"no labelled {split} dialogues in {utterances}")
    device = resolve_device()
    model = get_model(ckpt["model"], input_dims=ckpt["input_dims"], n_classes=len(labels), **ckpt["cfg"]).to(device)
    runs = ckpt.get("runs") or [{k: ckpt.get(k, 0) for k in ("seed", "state_dict", "epoch", "dev_weighted_f1")}]
    per_seed, selected = [], None
    for run in runs:
        model.load_state_dict(run["state_dict"])
        pred, y, _, keys = predict(model, data, 16, device)
        m = classification_metrics(y, pred, labels)
        per_seed.append({"seed": int(run["seed"]), **{k: m[k] for k in SUMMARY},
                         "selected_epoch": int(run["epoch"]), "dev_weighted_f1": float(run["dev_weighted_f1"]),
                         "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()}})
        if selected is None or run["seed"] == ckpt.get("seed"):
            selected = (m, pred, y, keys, run)
    m, pred, y, keys, run = selected
    metrics = {k: mean_std([s[k] for s in per_seed])[0] for k in SUMMARY}
    metrics.update({f"{k}_std": mean_std([s[k] for s in per_seed])[1] for k in SUMMARY})
    metrics.update(
        n=m["n"],
        per_class=m["per_class"],  # of the dev-selected seed, as are the confusion matrix and predictions
        model=ckpt["model"],
        n_params=sum(p.numel() for p in model.parameters()),
        split=split,
        modalities="".join(ckpt["modalities"]),
        selected_seed=int(run["seed"]),
        selected_epoch=int(run["epoch"]),
        dev_weighted_f1=float(run["dev_weighted_f1"]),
        # keyed by seed, not a list: `dvc exp show --json` drops lists from metrics, and the report reads it
        seeds={str(r["seed"]): r for r in per_seed},
        items={
            "skipped_unlabelled": corpus.skipped.get(split, 0),
            # Per modality, how many of this split's utterances had no usable vector and why.
            **{f"{m}_{status}": n for m, c in corpus.status_counts.items() for status, n in c[split].items()
               if status != "ok"},
        },
    )
    out = Path(reports)
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", out / "metrics.json")
    names = np.asarray(labels)
    rows = pd.DataFrame({"dialogue_id": [k[0] for k in keys], "utterance_id": [k[1] for k in keys],
                         "actual": names[y], "predicted": names[pred]})
    (out / "plots").mkdir(parents=True, exist_ok=True)
    atomic_write_text(rows[["actual", "predicted"]].to_csv(index=False), out / "plots" / "confusion.csv")
    atomic_write_text(rows.to_csv(index=False), out / "predictions.csv")
    cm = confusion(y, pred, len(labels))
    plot_confusion(cm, labels, out / "confusion.png")
    plot_confusion(cm, labels, out / "confusion_normalized.png", normalize=True)
    if live_plots and Path(live_plots).exists():
        plot_curves(live_plots, out / "curves.png")
    log.info("%s %s over %d seed(s): accuracy %.4f ± %.4f, weighted F1 %.4f ± %.4f, macro F1 %.4f ± %.4f",
             ckpt["model"], split, len(per_seed), *(metrics[k + s] for k in SUMMARY for s in ("", "_std")))
    return metrics


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="data/model/model.pt")
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--live-plots", default="reports/train/plots/metrics")
    args = ap.parse_args()
    evaluate(args.checkpoint, args.utterances, args.reports, live_plots=args.live_plots)


if __name__ == "__main__":
    main()
