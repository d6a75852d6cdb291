"""A few lines on the last evaluation, for the end of ``scripts/run.sh`` (instead of an 80-column metrics table).

Reads ``reports/metrics.json`` (the evaluate stage) and says: dataset, model and modalities, test accuracy /
weighted F1 / macro F1 (± std over seeds when there are several), the dev-selected seed and epoch, item counts
per modality (usable vectors and why the others are missing), and where the confusion matrix, curves and
per-utterance predictions are.

Run: ``python -m pipeline.summary [--reports reports]``. The summary is the command's output, so it goes to
stdout (not to the log).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import MissingFileError, UserError, run_main

MODALITY_NAMES = {"t": "text", "a": "audio", "v": "visual"}
SUMMARY = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"))
REG_SUMMARY = (("pearson_r", "mean Pearson r"), ("ccc", "mean CCC"), ("mae", "mean MAE"))  # regression runs
# what the evaluate stage writes, as the summary lists it: one line per tuple
FILES = ((("confusion matrix", "confusion.png"), ("row-normalised", "confusion_normalized.png")),
         (("predicted vs true", "scatter.png"),),
         (("curves", "curves.png"), ("per utterance", "predictions.csv"), ("all numbers", "metrics.json")))


def _dataset(m: dict, params_file: Path) -> str:
    if m.get("dataset"):
        return str(m["dataset"])
    try:  # metrics from before the dataset was recorded: the current params say what was prepared
        import yaml

        return str(yaml.safe_load(params_file.read_text())["prepare"]["dataset"])
    except (OSError, KeyError, TypeError, ValueError):
        return "unknown"


def _items(m: dict) -> str:
    """``text 12/12 · audio 11/12 (1 error) · …; 3 unlabelled skipped``."""
    n, items, present = int(m.get("n", 0)), dict(m.get("items") or {}), dict(m.get("present") or {})
    parts = []
    for mod in m.get("modalities", ""):
        why = {k[len(mod) + 1:]: v for k, v in items.items() if k.startswith(f"{mod}_") and v}
        have = present.get(mod)
        count = f"{have}/{n}" if have is not None else f"{n - sum(why.values())}/{n}"
        reasons = ", ".join(f"{v} {k}" for k, v in sorted(why.items()))
        parts.append(f"{MODALITY_NAMES.get(mod, mod)} {count}" + (f" ({reasons})" if reasons else ""))
    out = " · ".join(parts)
    if items.get("skipped_unlabelled"):
        out += f"; {items['skipped_unlabelled']} unlabelled skipped"
    return out


def _num(x) -> str:
    """A metric for the summary; ``undefined`` for a null one (Pearson r of constant predictions)."""
    if x is None:
        return "undefined"
    return f"{float(x):.4f}"


def summarize(reports: str | Path = "reports", params_file: str | Path = "params.yaml") -> str:
    """The summary text of ``<reports>/metrics.json``."""
    reports = Path(reports)
    path = reports / "metrics.json"
    if not path.is_file():
        raise MissingFileError(f"no {path}: run the pipeline first (`dvc repro`, whose evaluate stage writes it)")
    try:
        m = json.loads(path.read_text())
        n_seeds = len(m.get("seeds") or {}) or 1
        regression = m.get("task") == "regression"
        scores = " · ".join(f"{label} {_num(m[k])}" + (f" ± {_num(m.get(k + '_std', 0.0))}" if n_seeds > 1 else "")
                            for k, label in (REG_SUMMARY if regression else SUMMARY))
        if regression:
            scores += f" (targets: {', '.join(m.get('targets') or [])})"
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not an evaluate-stage metrics file ({type(e).__name__}: {e}): re-run "
                        "`dvc repro evaluate`") from e
    n_params = m.get("n_params")
    lines = [
        f"dataset {_dataset(m, Path(params_file))} · model {m.get('model', '?')} · modalities "
        f"{m.get('modalities', '?')}" + (f" · {n_params:,} parameters" if isinstance(n_params, int) else ""),
        f"{m.get('split', 'test')} (n={m.get('n', '?')}, "
        f"{f'mean ± std over {n_seeds} seeds' if n_seeds > 1 else '1 seed'}): {scores}",
    ]
    if "selected_seed" in m:
        dev = ("mean Pearson r", m.get("dev_pearson_r", float("nan"))) if regression else \
            ("weighted F1", m.get("dev_weighted_f1", float("nan")))
        lines.append(f"selected on dev: seed {m['selected_seed']}, epoch {m.get('selected_epoch', '?')} "
                     f"(dev {dev[0]} {_num(dev[1])})")
    lines.append(f"items: {_items(m)}")
    for k, group in enumerate(FILES):
        if k == (0 if regression else 1):  # the other task's figure is a one-line placeholder
            continue
        there = [f"{what}: {reports / name}" for what, name in group if (reports / name).exists()]
        if there:
            lines.append(" · ".join(there))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    sys.stdout.write(summarize(args.reports, args.params))


if __name__ == "__main__":
    run_main(main)
