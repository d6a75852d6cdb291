"""Figures of the report: each PNG (matplotlib, offline) is written with its data file (CSV) beside it, so
``dvc plots show <csv>`` can draw it too."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common import atomic_write_text
from pipeline.analysis import plot_scatter  # noqa: F401 (re-exported)
from pipeline.training.plots import _plt, plot_grouped_bars

log = logging.getLogger("merc.report")


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    atomic_write_text(df.to_csv(index=False), path)
    return path


def plot_series(df: pd.DataFrame, path: str | Path, x: str, y: str, series: list[str], title: str,
                hline: float | None = None) -> None:
    """One panel per value of ``series[0]``, one line per value of the others (e.g. variant × modality)."""
    plt = _plt()
    panels = list(dict.fromkeys(df[series[0]]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = df[df[series[0]] == p]
        for key, line in sub.groupby(series[1:], sort=True) if len(series) > 1 else [("", sub)]:
            ax.plot(line[x], line[y], marker=".", label=str(key[0] if isinstance(key, tuple) else key))
        if hline is not None:
            ax.axhline(hline, color="grey", lw=0.8, ls="--")
        ax.set_title(str(p), fontsize=9)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bars_with_data(rows: dict[str, dict[str, float]], path: Path, ylabel: str, title: str) -> None:
    """Grouped bars + their CSV (row, category, value)."""
    write_csv(pd.DataFrame([{"row": r, "category": c, "value": v} for r, d in rows.items() for c, v in d.items()]),
              path.with_suffix(".csv"))
    plot_grouped_bars(rows, path, ylabel, title)


def read_tsv(raw: bytes | None) -> pd.DataFrame | None:
    if raw is None:
        return None
    return pd.read_csv(io.BytesIO(raw), sep="\t")


def classifier_weight_norms(state_dict: dict, modalities: list[str], labels: list[str]) -> pd.DataFrame:
    """Ada2I Fig. 5: per label, the L2 norm of each modality's block W_m of the classifier ``fc.weight``
    ([C, M·hidden], blocks in modality order), normalised over the modalities of that label."""
    w = np.asarray(state_dict["fc.weight"], dtype=float)
    blocks = np.split(w, len(modalities), axis=1)
    norms = np.stack([np.linalg.norm(b, axis=1) for b in blocks], axis=1)  # [C, M]
    share = norms / np.maximum(norms.sum(1, keepdims=True), 1e-12)
    return pd.DataFrame([{"label": labels[c] if c < len(labels) else str(c), "modality": m,
                          "norm": float(norms[c, j]), "share": float(share[c, j])}
                         for c in range(len(w)) for j, m in enumerate(modalities)])
