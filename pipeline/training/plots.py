"""PNG figures rendered offline with matplotlib (DVC's HTML plots load a CDN; these do not)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

CONFUSION_KEY = "merc:confusion"  # PNG text chunk holding the drawn matrix, so image and data can be checked


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, labels: list[str], path: str | Path, normalize: bool = False) -> np.ndarray:
    """Heatmap of ``cm`` (rows actual, columns predicted); ``normalize`` divides each row by its total.

    Returns the matrix drawn, which is also stored in the PNG's ``merc:confusion`` text chunk.
    """
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    drawn = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    im = ax.imshow(drawn, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    top = drawn.max() if drawn.size else 0
    for i in range(drawn.shape[0]):
        for j in range(drawn.shape[1]):
            ax.text(j, i, f"{drawn[i, j]:.2f}" if normalize else int(drawn[i, j]), ha="center", va="center",
                    color="white" if drawn[i, j] > top / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_title("test confusion matrix" + (" (row-normalised)" if normalize else " (counts)"))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    meta = {CONFUSION_KEY: json.dumps({"labels": labels, "matrix": drawn.round(6).tolist()})}
    fig.savefig(path, dpi=110, metadata=meta)
    plt.close(fig)
    return drawn


def read_png_matrix(path: str | Path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text[CONFUSION_KEY])


def _read_tsv(path: Path) -> tuple[list[float], list[float]]:
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    metric = [k for k in rows[0] if k not in ("step", "timestamp")][0] if rows else None
    return [float(r["step"]) for r in rows], [float(r[metric]) for r in rows]


def plot_curves(live_plots: str | Path, path: str | Path, metrics=("loss", "accuracy", "weighted_f1")) -> list[str]:
    """Per-epoch train/dev curves from DVCLive's TSVs (``<live>/plots/metrics/{train,dev}/<metric>.tsv``).

    Returns the metrics drawn (those with data).
    """
    plt = _plt()
    live_plots = Path(live_plots)
    drawn = [m for m in metrics if any((live_plots / s / f"{m}.tsv").exists() for s in ("train", "dev"))]
    if not drawn:
        return []
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn), 3.4), squeeze=False)
    for ax, m in zip(axes[0], drawn):
        for split in ("train", "dev"):
            f = live_plots / split / f"{m}.tsv"
            if f.exists():
                x, y = _read_tsv(f)
                ax.plot(x, y, marker=".", label=split)
        ax.set_title(m.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_message(path: str | Path, text: str) -> None:
    """A PNG holding one line of text: the fixed-path figure of a run it does not apply to (a regression run's
    confusion matrix, a classification run's scatter), so DVC's declared plots always exist and say why."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"merc:message": text})
    plt.close(fig)


def plot_regression_scatter(y: np.ndarray, pred: np.ndarray, targets: list[str], path: str | Path,
                            stats: dict | None = None) -> None:
    """Predicted vs true, one panel per target, with the identity line and (from ``stats``) r / CCC / MAE."""
    plt = _plt()
    k = len(targets)
    fig, axes = plt.subplots(1, k, figsize=(4.0 * k, 3.8), squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[0], targets)):
        t, p = y[:, j], pred[:, j]
        ax.scatter(t, p, s=6, alpha=0.5)
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        st = (stats or {}).get(name)
        r = "undefined" if not st or st["pearson_r"] is None else f"{st['pearson_r']:.3f}"  # constant y or ŷ
        ax.set_title(name if not st else f"{name}: r {r}, CCC {st['ccc']:.3f}, MAE {st['mae']:.3f}",
                     fontsize=9)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"merc:scatter": json.dumps({"targets": targets, "n": int(len(y))})})
    plt.close(fig)


def plot_grouped_bars(rows: dict[str, dict[str, float]], path: str | Path, ylabel: str, title: str) -> None:
    """Grouped bar chart: one group per column key, one bar per row (e.g. per-class F1 per model)."""
    plt = _plt()
    names = list(rows)
    cats = list(dict.fromkeys(c for r in rows.values() for c in r))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cats) + 2), 3.8))
    for k, name in enumerate(names):
        ax.bar(np.arange(len(cats)) + k * width, [rows[name].get(c, np.nan) for c in cats], width, label=name)
    ax.set_xticks(np.arange(len(cats)) + width * (len(names) - 1) / 2, cats, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
