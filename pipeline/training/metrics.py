"""Classification and regression metrics in the layout every report reads.

Regression (``regression_metrics``, issue #20): per target Pearson r, MAE, Lin's CCC and MSE, and their means
over the targets (``pearson_r`` … — the dev selection uses the mean r); ``mosei_metrics`` adds CMU-MOSEI's
acc2 (both readings), F1, acc7, MAE and Corr from the sentiment score.

What the papers report, and the key here:
  * accuracy, weighted F1 (every paper; SUMMER's w-ACC = weighted per-class accuracy = accuracy), macro F1;
  * macro- and weighted-average precision and recall (M2FNet Table 3): ``macro_precision``, ``macro_recall``,
    ``weighted_precision``, ``weighted_recall`` (weights = true-class support, so weighted recall = accuracy);
  * per-class precision / recall / F1 / support and ``accuracy`` (SUMMER Tables 1-2 "ACC" per emotion: the
    share of that emotion's utterances predicted correctly, i.e. its recall);
  * LPGNet §4.1 "average binary accuracy and F1-score … one-vs-all … for each emotion class … averaged across
    all classes": for each class c, the binary problem "c vs the rest" (y == c against ŷ == c);
    ``ova_accuracy`` = mean over classes of its binary accuracy; ``ova_f1`` = mean over classes of the binary
    F1 of the positive class c (the literal reading; it equals macro F1); ``ova_f1_weighted`` = mean over
    classes of the binary problem's support-weighted F1 (positive and negative class), the per-emotion F1 of
    the earlier binary-IEMOCAP protocol (MulT's ``eval_iemocap``) — the alternative reading, reported beside it.

Averages over classes ("macro", one-vs-all) use the classes present in ``y_true`` or ``y_pred``
(scikit-learn's convention when ``labels`` is not forced), so a class absent from both does not count.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             precision_score, recall_score)

SCALARS = ("accuracy", "weighted_f1", "macro_f1", "macro_precision", "macro_recall", "weighted_precision",
           "weighted_recall", "ova_accuracy", "ova_f1", "ova_f1_weighted")


def one_vs_all(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """LPGNet §4.1: binary accuracy / F1 of "class c vs rest", averaged over the classes seen (see module doc)."""
    classes = np.union1d(y_true, y_pred)
    acc, f1, f1w = [], [], []
    for c in classes:
        t, p = y_true == c, y_pred == c
        acc.append(float((t == p).mean()))
        f1.append(float(f1_score(t, p, zero_division=0)))
        f1w.append(float(f1_score(t, p, average="weighted", zero_division=0)))
    mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
    return {"ova_accuracy": mean(acc), "ova_f1": mean(f1), "ova_f1_weighted": mean(f1w)}


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    """The scalars in ``SCALARS`` and per-class precision/recall/F1/support/accuracy over ``labels``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    avg = {f"{a}_{name}": float(fn(y_true, y_pred, average=a, zero_division=0))
           for a in ("macro", "weighted") for name, fn in (("precision", precision_score), ("recall", recall_score))}
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        **avg,
        **one_vs_all(y_true, y_pred),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
                   "accuracy": float(r[i])}  # SUMMER's per-emotion ACC = recall
            for i, name in enumerate(labels)
        },
    }


# ----------------------------------------------------------------------------------------------- regression
REG_SCALARS = ("pearson_r", "mae", "ccc", "mse")  # means over the targets; per target under ``per_target``
MOSEI_SCALARS = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "mae", "corr")


def pearson_r(y: np.ndarray, p: np.ndarray) -> float | None:
    """Pearson's r of two 1-D arrays; ``None`` where it is undefined: fewer than 2 rows, or either array constant
    (zero variance: 0/0). Not 0: an undefined r scored as 0 would rank a collapsed model and drive checkpoint
    selection. Consumers handle ``None`` explicitly (JSON ``null``; the engine then selects on dev loss)."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if len(y) < 2 or not (np.isfinite(y).all() and np.isfinite(p).all()):
        return None
    dy, dp = y - y.mean(), p - p.mean()
    den = np.sqrt((dy * dy).sum() * (dp * dp).sum())
    if not den > 0:
        return None
    return float(np.clip((dy * dp).sum() / den, -1.0, 1.0))


def defined(x) -> bool:
    """True for a metric value that exists: not ``None`` and not NaN."""
    return x is not None and not (isinstance(x, (float, np.floating)) and np.isnan(x))


def ccc(y: np.ndarray, p: np.ndarray) -> float:
    """Lin's concordance correlation coefficient 2·cov / (var_y + var_p + (ȳ − p̄)²), population moments."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if not len(y):
        return 0.0
    cov = ((y - y.mean()) * (p - p.mean())).mean()
    den = y.var() + p.var() + (y.mean() - p.mean()) ** 2
    return float(2 * cov / den) if den > 0 else 0.0


def regression_metrics(y_true, y_pred, targets: list[str]) -> dict:
    """Per target (``per_target``) and averaged over the targets: Pearson r, MAE, CCC, MSE. ``y`` is ``[N, K]``.
    ``pearson_r`` is ``None`` where undefined (``pearson_r``), and so is its mean over the targets."""
    y, p = np.asarray(y_true, np.float64).reshape(len(y_true), -1), np.asarray(y_pred, np.float64).reshape(len(y_pred), -1)
    per = {name: {"pearson_r": pearson_r(y[:, k], p[:, k]),
                  "mae": float(np.abs(y[:, k] - p[:, k]).mean()) if len(y) else 0.0,
                  "ccc": ccc(y[:, k], p[:, k]),
                  "mse": float(((y[:, k] - p[:, k]) ** 2).mean()) if len(y) else 0.0}
           for k, name in enumerate(targets)}
    # a mean over the targets is undefined (None) when any target's value is: r of a constant target or output
    out = {"n": int(len(y)), **{m: float(np.mean([v[m] for v in per.values()]))
                                if all(defined(v[m]) for v in per.values()) else None for m in REG_SCALARS}}
    out["per_target"] = per
    return out


def mosei_metrics(y_true, y_pred) -> dict:
    """CMU-MOSEI sentiment from regression outputs in [−3, 3], as the literature computes them (MulT's
    ``eval_mosei_senti``): ``acc2_has0``/``f1_has0``: negative (< 0) vs non-negative (≥ 0) over all segments;
    ``acc2_non0``/``f1_non0``: negative vs positive over the segments whose truth is not 0; F1s weighted by
    support; ``acc7``: both rounded after clipping to [−3, 3]; ``mae``; ``corr`` (Pearson r, ``None`` where
    undefined)."""
    y, p = np.asarray(y_true, np.float64).reshape(-1), np.asarray(y_pred, np.float64).reshape(-1)
    nz = y != 0
    out = {"acc2_has0": float(((y >= 0) == (p >= 0)).mean()) if len(y) else 0.0,
           "f1_has0": float(f1_score(y >= 0, p >= 0, average="weighted", zero_division=0)),
           "acc2_non0": float(((y[nz] > 0) == (p[nz] > 0)).mean()) if nz.any() else 0.0,
           "f1_non0": float(f1_score(y[nz] > 0, p[nz] > 0, average="weighted", zero_division=0)) if nz.any() else 0.0,
           "acc7": float((np.rint(np.clip(y, -3, 3)) == np.rint(np.clip(p, -3, 3))).mean()) if len(y) else 0.0,
           "mae": float(np.abs(y - p).mean()) if len(y) else 0.0,
           "corr": pearson_r(y, p)}
    return out


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1; 0 for a single value) over seeds, as plain floats; ``(None, None)`` when any
    value is undefined (``None``/NaN: e.g. a seed whose Pearson r is) — a mean over the others would hide it.

    The one definition used for every "mean ± std over seeds" in metrics files and report tables.
    """
    if any(not defined(v) for v in values):
        return None, None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0
