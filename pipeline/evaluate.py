"""Stage ``evaluate``: the dev-selected checkpoint(s) on the test split → metrics, confusion matrix, predictions.

Writes (fixed paths, so ``dvc metrics diff`` / ``dvc exp show`` compare runs of any model):
  reports/metrics.json          accuracy, weighted/macro F1, macro/weighted precision and recall, one-vs-all
                                binary accuracy/F1 (``pipeline.training.metrics``; mean over the checkpoint's seeds) and
                                their ``*_std``, per-seed results (``seeds``), per-class P/R/F1/support/accuracy,
                                item counts
  reports/plots/confusion.csv   one row per test utterance (actual, predicted): DVC ``confusion`` template
  reports/confusion.png         the confusion matrix (counts) as a heatmap with emotion names
  reports/confusion_normalized.png   the same, each row divided by its total (recall on the diagonal)
  reports/curves.png            per-epoch train/dev loss, accuracy, weighted F1 (from DVCLive's TSVs)
  reports/predictions.csv       dialogue_id, utterance_id, actual, predicted
  reports/plots/tsne.csv, reports/tsne.png   t-SNE of the dev-selected seed's fused test representations
  reports/scatter.png           regression runs: predicted vs true per target (a classification run writes a
                                one-line PNG saying so; a regression run does the same for the confusion PNGs)

Regression checkpoints (a table with ``targets``, issue #20): metrics.json holds ``pearson_r``, ``mae``, ``ccc``,
``mse`` (means over the targets, mean ± std over seeds), ``per_target`` of the dev-selected seed and, for a
single ``sentiment`` target (CMU-MOSEI), ``acc2_has0``, ``f1_has0``, ``acc2_non0``, ``f1_non0``, ``acc7``,
``corr``; predictions.csv has ``<target>_true``/``<target>_pred`` columns; the t-SNE is coloured by the tertile
of the first target.

Run: ``python -m pipeline.evaluate`` (test split, the DVC stage). ``python -m pipeline.evaluate --split dev`` writes
the same files for the dev split under ``reports/dev/`` (M2FNet Table 5 is on validation); the test split is read
only by this module, never by training or selection.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.analysis import write_tsne
from pipeline.schema import corpus_info
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training import text_e2e
from pipeline.common import atomic_write_text, csv_safe, setup_logging
from pipeline.training.dataset import Standardizer, dialogues, model_sequences
from pipeline.training.engine import predict, resolve_device
from pipeline.errors import UserError, run_main
from pipeline.training.metrics import (MOSEI_SCALARS, REG_SCALARS, SCALARS, classification_metrics, confusion, mean_std,
                              mosei_metrics, regression_metrics)
from pipeline.training.plots import plot_confusion, plot_curves, plot_message, plot_regression_scatter
from pipeline.training.build import build_model
from pipeline.training.scoring import SUMMARY, score_seeds

log = logging.getLogger("merc.evaluate")
SPLIT_REPORTS = {"test": "reports", "dev": "reports/dev"}
CHECKPOINT_KEYS = ("model", "cfg", "input_dims", "modalities", "norm", "labels", "state_dict")


def write_predictions(rows: pd.DataFrame, path: Path) -> None:
    """``predictions.csv``, spreadsheet-safe: a text cell starting with ``=``, ``+``, ``-`` or ``@`` (a dialogue id,
    a label name) gets a leading ``'`` so a spreadsheet shows it instead of running it (``common.csv_safe``)."""
    atomic_write_text(csv_safe(rows).to_csv(index=False), path)


def evaluate(checkpoint: str, utterances: str, reports: str, split: str = "test",
             feature_dirs: dict | None = None, live_plots: str | None = None) -> dict:
    """Every seed's checkpoint on ``split``: mean ± std metrics; confusion/predictions of the dev-selected seed."""
    ckpt = load_checkpoint(checkpoint, "model checkpoint", "re-create it with the train stage (`dvc repro train`)")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"model checkpoint {checkpoint} lacks {missing}: not a checkpoint of this merc's train "
                        "stage; re-create it (`dvc repro train`)")
    labels = ckpt["labels"]
    e2e = ckpt.get("text_encoder")  # end-to-end text: token rows instead of the text feature table
    corpus = text_e2e.corpus_with_tokens(utterances, ckpt["modalities"], feature_dirs, e2e)
    corpus = model_sequences(corpus, ckpt["model"], ckpt["cfg"], feature_dirs)  # Frame mode: as trained
    targets = list(ckpt.get("targets") or [])
    if targets != corpus.targets:
        raise UserError(f"model checkpoint {checkpoint} was trained for "
                        f"{'targets ' + str(targets) if targets else 'classes'} but {utterances} has "
                        f"{'targets ' + str(corpus.targets) if corpus.targets else 'classes'}: retrain "
                        "(`dvc repro train`)")
    norm = Standardizer.from_state(ckpt["norm"])
    if e2e:
        text_e2e.keep_tokens(norm)
    data = dialogues(corpus, split, norm)
    if not data:
        raise UserError(f"no labelled {split} dialogues in {utterances}: check the prepare stage's output")
    device = resolve_device()
    model = text_e2e.with_encoder(
        lambda d: build_model(ckpt["model"], ckpt["cfg"], d, len(targets or labels),
                              where=f"model checkpoint {checkpoint} (model {ckpt['model']!r})",
                              task=corpus.task),
        ckpt["input_dims"], e2e, device)[0].to(device)
    if targets:
        return _evaluate_regression(ckpt, model, data, corpus, utterances, reports, split, device, live_plots)
    runs = ckpt.get("runs") or [{k: ckpt.get(k, 0) for k in ("seed", "state_dict", "epoch", "dev_weighted_f1")}]
    per_seed, (m, pred, y, keys, run), metrics = score_seeds(
        model, runs, data, device, ckpt.get("seed"), lambda y, p: classification_metrics(y, p, labels), SUMMARY,
        lambda run, m: {"dev_weighted_f1": float(run["dev_weighted_f1"]),
                        "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()}})
    metrics.update(
        n=m["n"],
        per_class=m["per_class"],  # of the dev-selected seed, as are the confusion matrix and predictions
        model=ckpt["model"],
        n_params=sum(p.numel() for p in model.parameters()),
        split=split,
        dataset=_dataset(corpus),
        corpus=corpus_info(utterances),  # dataset/target/label set from the table's provenance (report)
        modalities="".join(ckpt["modalities"]),
        selected_seed=int(run["seed"]),
        selected_epoch=int(run["epoch"]),
        dev_weighted_f1=float(run["dev_weighted_f1"]),
        # keyed by seed, not a list: `dvc exp show --json` drops lists from metrics, and the report reads it
        seeds={str(r["seed"]): r for r in per_seed},
        # per modality, how many of the split's utterances had a usable vector
        present={m: int(p[corpus.split_rows(split)].sum()) for m, p in corpus.present.items()},
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
    write_predictions(rows, out / "predictions.csv")
    model.load_state_dict(run["state_dict"])  # the dev-selected seed: its fused representations → t-SNE
    write_tsne(model, data, labels, out, device)
    cm = confusion(y, pred, len(labels))
    plot_confusion(cm, labels, out / "confusion.png")
    plot_confusion(cm, labels, out / "confusion_normalized.png", normalize=True)
    if live_plots and Path(live_plots).exists():
        plot_curves(live_plots, out / "curves.png")
    plot_message(out / "scatter.png", "classification run: no predicted-vs-true scatter; see confusion.png")
    log.info("%s %s over %d seed(s): accuracy %.4f ± %.4f, weighted F1 %.4f ± %.4f, macro F1 %.4f ± %.4f",
             ckpt["model"], split, len(per_seed), *(metrics[k + s] for k in SUMMARY[:3] for s in ("", "_std")))
    return metrics


def _evaluate_regression(ckpt, model, data, corpus, utterances, reports, split, device, live_plots) -> dict:
    """``evaluate`` for a regression checkpoint (see the module docstring)."""
    targets = corpus.targets
    mosei = targets == ["sentiment"]  # CMU-MOSEI's sentiment score: the literature's acc2/acc7/F1 as well
    runs = ckpt.get("runs") or [{k: ckpt.get(k, 0) for k in ("seed", "state_dict", "epoch", "dev_pearson_r")}]
    scalars = REG_SCALARS + (tuple(k for k in MOSEI_SCALARS if k != "mae") if mosei else ())
    def score(y, pred):
        m = regression_metrics(y, pred, targets)
        if mosei:
            m.update({k: v for k, v in mosei_metrics(y, pred).items() if k != "mae"})
        return m

    per_seed, (m, pred, y, keys, run), metrics = score_seeds(
        model, runs, data, device, ckpt.get("seed"), score, scalars,
        lambda run, m: {"dev_pearson_r": _maybe(run["dev_pearson_r"]), "per_target": m["per_target"]})
    metrics.update(
        task="regression", targets=targets, n=m["n"], per_target=m["per_target"], model=ckpt["model"],
        n_params=sum(p.numel() for p in model.parameters()), split=split, dataset=_dataset(corpus),
        corpus=corpus_info(utterances), modalities="".join(ckpt["modalities"]), selected_seed=int(run["seed"]),
        selected_epoch=int(run["epoch"]), dev_pearson_r=_maybe(run["dev_pearson_r"]),
        seeds={str(r["seed"]): r for r in per_seed},
        present={mod: int(p[corpus.split_rows(split)].sum()) for mod, p in corpus.present.items()},
        items={"skipped_unlabelled": corpus.skipped.get(split, 0),
               **{f"{mod}_{status}": n for mod, c in corpus.status_counts.items() for status, n in c[split].items()
                  if status != "ok"}},
    )
    out = Path(reports)
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", out / "metrics.json")
    rows = pd.DataFrame({"dialogue_id": [k[0] for k in keys], "utterance_id": [k[1] for k in keys],
                         **{c: v for j, t in enumerate(targets)
                            for c, v in ((f"{t}_true", y[:, j]), (f"{t}_pred", pred[:, j].round(6)))}})
    (out / "plots").mkdir(parents=True, exist_ok=True)
    write_predictions(rows, out / "predictions.csv")
    atomic_write_text("actual,predicted\n", out / "plots" / "confusion.csv")  # no classes: DVC's declared plot
    note = f"regression run ({', '.join(targets)}): no confusion matrix; see scatter.png"
    plot_message(out / "confusion.png", note)
    plot_message(out / "confusion_normalized.png", note)
    plot_regression_scatter(y, pred, targets, out / "scatter.png", m["per_target"])
    model.load_state_dict(run["state_dict"])
    write_tsne(model, data, [], out, device, point_labels=tertile_names(data, targets[0]))
    if live_plots and Path(live_plots).exists():
        plot_curves(live_plots, out / "curves.png", metrics=("loss", "pearson_r", "ccc", "mae"))
    log.info("%s %s over %d seed(s): mean Pearson r %s ± %s, CCC %s ± %s, MAE %s ± %s", ckpt["model"], split,
             len(per_seed), *("undefined" if metrics[k + s] is None else f"{metrics[k + s]:.4f}"
                              for k in ("pearson_r", "ccc", "mae") for s in ("", "_std")))
    return metrics


def _maybe(x) -> float | None:
    """A stored metric as a float, ``None`` where it is undefined (a null Pearson r)."""
    return None if x is None or x != x else float(x)


def tertile_names(data: list[dict], target: str) -> list[str]:
    """Per utterance of ``data`` (in order), its first target's tertile over the split: ``<target> low|mid|high``
    (the t-SNE's colours in regression; not in any paper: our choice, a scatter needs a discrete legend)."""
    v = np.concatenate([d["target"][:, 0] for d in data])
    lo, hi = np.quantile(v, [1 / 3, 2 / 3])
    return [f"{target} {'low' if x <= lo else 'high' if x > hi else 'mid'}" for x in v]


def _dataset(corpus) -> str:
    """The prepare adapter that made the utterance table (``demo``, ``meld``, …), from its provenance metadata."""
    raw = (corpus.utterances.schema.metadata or {}).get(b"provenance")
    try:
        return str(json.loads(raw).get("adapter", "unknown")) if raw else "unknown"
    except (ValueError, AttributeError):
        return "unknown"


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="data/model/model.pt")
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--split", choices=sorted(SPLIT_REPORTS), default="test",
                    help="test (the stage) or dev (M2FNet Table 5's validation numbers)")
    ap.add_argument("--reports", default=None, help="output folder (default: reports, or reports/dev for --split dev)")
    ap.add_argument("--live-plots", default="reports/train/plots/metrics")
    args = ap.parse_args()
    evaluate(args.checkpoint, args.utterances, args.reports or SPLIT_REPORTS[args.split], split=args.split,
             live_plots=args.live_plots)


if __name__ == "__main__":
    run_main(main)
