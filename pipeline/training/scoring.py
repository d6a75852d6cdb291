"""Every seed's weights scored on a split: what evaluate reports and what a bundle's model card states."""
from __future__ import annotations

from pipeline.training.engine import predict
from pipeline.training.metrics import SCALARS, mean_std

SUMMARY = SCALARS  # every scalar metric: mean and std over seeds


def score_seeds(model, runs, data, device, selected_seed, score, scalars, extra):
    """Every seed's weights on ``data``: per-seed records (``scalars`` + ``extra(run, metrics)``), the selected
    seed's (metrics, predictions, truth, keys, run) and the mean/std over seeds of each scalar."""
    per_seed, selected = [], None
    for run in runs:
        model.load_state_dict(run["state_dict"])
        pred, y, _, keys = predict(model, data, 16, device)
        m = score(y, pred)
        per_seed.append({"seed": int(run["seed"]), **{k: m[k] for k in scalars},
                         "selected_epoch": int(run["epoch"]), **extra(run, m)})
        if selected is None or run["seed"] == selected_seed:
            selected = (m, pred, y, keys, run)
    summary = {k: mean_std([s[k] for s in per_seed])[0] for k in scalars}
    summary.update({f"{k}_std": mean_std([s[k] for s in per_seed])[1] for k in scalars})
    return per_seed, selected, summary
