"""Step ``report``: every result table regenerated from the experiments that exist.

Reads ``dvc exp show --json`` (all branches, their experiments and queued-sweep results) — or a saved copy
of it — and writes Markdown tables and PNGs under ``reports/results/``:

  model_comparison.md   one row per configuration: weighted F1, macro F1, accuracy as mean ± std over seeds,
                        seeds, parameter count, and the experiments it came from
  ablations.md          per model: configurations that differ from the reference config (params.yaml) only
                        in that model's ``model_params`` or in ``train.weighted_loss``
  modalities.md         per model: T, A, V, T+A, T+V, A+V, T+A+V (SUMMER Table 3 / Ada2I Table 3 layout),
                        configurations that differ from the reference only in ``train.modalities``
  per_class_f1.md/.png  per-class F1 of every configuration
  README.md             all of the above on one page

Runs are grouped by their parameters with the seed removed; mean ± std is over the seeds of a group
(sample std, ddof=1; a single seed shows its value and n=1). A row always names its experiments.

Run: ``python -m pipeline.report [--exp-json FILE] [--require model=summer]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.common import atomic_write_text, load_params, setup_logging
from pipeline.errors import UserError, run_main
from pipeline.metrics import mean_std
from pipeline.plots import plot_grouped_bars

log = logging.getLogger("merc.report")

METRICS_FILE = "reports/metrics.json"
PARAMS_FILE = "params.yaml"
MODALITY_ORDER = "tav"
MODALITY_COLUMNS = ["T", "A", "V", "T+A", "T+V", "A+V", "T+A+V"]
# Params that do not change a result (throughput knobs) and the seed, which is what we average over.
IGNORED = {"text.batch_size", "text.shard_size", "audio.shard_size", "audio.ssl.batch_size", "visual.shard_size",
           "train.seed", "train.seeds", "text.finetune.seed"}


class ReportError(UserError):
    """A report that cannot be made; the message says what to run."""


@dataclass
class Run:
    name: str
    rev: str
    params: dict
    metrics: dict

    def seed_metrics(self) -> dict:
        """Seed → metrics; a multi-seed run (``train.seeds``) stores one dict per seed under ``seeds``.

        With a fine-tuned text encoder the seed is the pair (``text.finetune.seed``, train seed): runs that
        fine-tune under different seeds are independent samples of the same configuration.
        """
        ft = (self.params.get("text") or {}).get("finetune") or {}
        tag = (lambda s: (ft.get("seed"), s)) if ft.get("enabled") else (lambda s: s)  # noqa: E731
        seeds = self.metrics.get("seeds")
        if isinstance(seeds, dict) and seeds:  # evaluate writes {seed: metrics} (lists do not survive exp show)
            seeds = list(seeds.values())
        if isinstance(seeds, list) and seeds:
            return {tag(m.get("seed", i)): {"n_params": self.metrics.get("n_params"), **m} for i, m in enumerate(seeds)}
        return {tag((self.params.get("train") or {}).get("seed")): self.metrics}


@dataclass
class Group:
    """Runs that share every parameter but the seed."""

    config: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def modalities(self) -> str:
        return modality_label(self.config.get("train.modalities", "tav"))

    def by_seed(self) -> dict:
        """One metrics dict per distinct seed: rerunning a seed adds no independent sample."""
        out = {}
        for r in self.runs:
            out.update(r.seed_metrics())
        return out

    def values(self, key: str) -> np.ndarray:
        return np.asarray([m[key] for m in self.by_seed().values() if key in m], dtype=float)

    def per_class_f1(self) -> dict[str, float]:
        out: dict[str, list] = {}
        for m in self.by_seed().values():
            f1 = m.get("per_class_f1") or {c: v["f1"] for c, v in (m.get("per_class") or {}).items()}
            for c, v in f1.items():
                out.setdefault(c, []).append(v)
        return {c: float(np.mean(v)) for c, v in out.items()}

    def name(self) -> str:
        return ", ".join(sorted({r.name for r in self.runs}))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def modality_label(mods) -> str:
    """``['t','a']`` or ``"ta"`` → ``"T+A"`` in T, A, V order."""
    s = "".join(mods) if isinstance(mods, (list, tuple)) else str(mods)
    return "+".join(m.upper() for m in MODALITY_ORDER if m in s.lower())


def config_of(params: dict) -> dict:
    """The parameters that define a result: everything but throughput knobs, seeds and other models' params."""
    flat = flatten(params)
    model = params.get("model")
    cfg = {k: v for k, v in flat.items()
           if k not in IGNORED and not (k.startswith("model_params.") and not k.startswith(f"model_params.{model}."))}
    if "train.modalities" in cfg:
        cfg["train.modalities"] = modality_label(cfg["train.modalities"])
    return cfg


def runs_from_exp_show(data: list, include_workspace: bool = False) -> list[Run]:
    """Runs with test metrics from ``dvc exp show --json`` output (baselines and their experiments)."""
    runs, seen = [], set()

    def add(entry: dict, fallback_name: str) -> None:
        d = entry.get("data") or {}
        metrics = ((d.get("metrics") or {}).get(METRICS_FILE) or {}).get("data")
        params = ((d.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
        rev = entry.get("rev") or d.get("rev") or ""
        if entry.get("error") or not metrics or not params or rev in seen:
            return
        if rev == "workspace" and not include_workspace:
            return
        seen.add(rev)
        runs.append(Run(entry.get("name") or d.get("name") or fallback_name, rev, params, metrics))

    for baseline in data:
        add(baseline, (baseline.get("name") or baseline.get("rev", ""))[:12])
        for exp in baseline.get("experiments") or []:
            for r in exp.get("revs") or []:
                add(r, r.get("rev", "")[:7])
    return runs


def load_exp_show(path: str | None = None) -> list:
    if path:
        return json.loads(Path(path).read_text())
    proc = subprocess.run(["dvc", "exp", "show", "--json", "--all-branches"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReportError(f"`dvc exp show --json` failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[str, Group] = {}
    for r in runs:
        cfg = config_of(r.params)
        key = json.dumps(cfg, sort_keys=True, default=str)
        groups.setdefault(key, Group(cfg)).runs.append(r)
    return list(groups.values())


def diff(cfg: dict, ref: dict) -> dict:
    keys = set(cfg) | set(ref)
    return {k: cfg.get(k) for k in sorted(keys) if cfg.get(k) != ref.get(k)}


def fmt(values: np.ndarray) -> str:
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:.4f}"
    mean, std = mean_std(values)
    return f"{mean:.4f} ± {std:.4f}"


def n_seeds(g: Group) -> int:
    return len(g.values("weighted_f1"))


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def describe(d: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in d.items()) or "reference"


def reference_config(params: dict, model: str) -> dict:
    return config_of({**params, "model": model})


def tables(groups: list[Group], params: dict) -> dict[str, str]:
    """Markdown of every table, keyed by file stem."""
    groups = sorted(groups, key=lambda g: (g.model, -np.nan_to_num(g.values("weighted_f1").mean() if n_seeds(g) else 0)))
    out = {}
    rows = []
    for g in groups:
        n_params = g.values("n_params")
        rows.append([g.model, g.modalities, fmt(g.values("weighted_f1")), fmt(g.values("macro_f1")),
                     fmt(g.values("accuracy")), n_seeds(g), f"{int(n_params[0]):,}" if n_params.size else "–",
                     describe(diff(g.config, reference_config(params, g.model))), g.name()])
    out["model_comparison"] = md_table(
        ["model", "modalities", "weighted F1", "macro F1", "accuracy", "seeds", "params", "config vs params.yaml",
         "experiments"], rows)

    abl, mod = [], []
    for model in sorted({g.model for g in groups}):
        ref = reference_config(params, model)
        mine = [g for g in groups if g.model == model]
        ab_rows = [[describe(diff(g.config, ref)), fmt(g.values("weighted_f1")), fmt(g.values("macro_f1")), n_seeds(g),
                    g.name()] for g in mine
                   if all(k.startswith(f"model_params.{model}.") or k == "train.weighted_loss" for k in diff(g.config, ref))]
        if ab_rows:
            abl.append(f"### {model}\n\n" + md_table(["variant", "weighted F1", "macro F1", "seeds", "experiments"], ab_rows))
        cells = {c: "–" for c in MODALITY_COLUMNS}
        for g in mine:
            d = diff(g.config, ref)
            if set(d) <= {"train.modalities"} and g.modalities in cells:
                cells[g.modalities] = fmt(g.values("weighted_f1"))
        if any(v != "–" for v in cells.values()):
            mod.append([model] + [cells[c] for c in MODALITY_COLUMNS])
    out["ablations"] = "\n".join(abl) if abl else "No configuration of any model matches its reference config.\n"
    out["modalities"] = (md_table(["model"] + MODALITY_COLUMNS, mod) + "\nCells: test weighted F1 (mean ± std over "
                         "seeds); everything but `train.modalities` as in params.yaml.\n") if mod else \
        "No modality-subset runs yet (`dvc exp run -S train.modalities=[t,a]` …).\n"

    classes = list(dict.fromkeys(c for g in groups for c in g.per_class_f1()))
    out["per_class_f1"] = md_table(["model", "modalities", "config"] + classes,
                                   [[g.model, g.modalities, describe(diff(g.config, reference_config(params, g.model)))]
                                    + [f"{g.per_class_f1().get(c, float('nan')):.3f}" for c in classes] for g in groups])
    return out


def write_report(runs: list[Run], params: dict, out_dir: str | Path) -> dict[str, str]:
    if not runs:
        raise ReportError(f"no experiment with {METRICS_FILE} found: run `dvc repro` or `dvc exp run` "
                          "(or queue a sweep, see README) first")
    groups = group_runs(runs)
    md = tables(groups, params)
    out_dir = Path(out_dir)
    for stem, text in md.items():
        atomic_write_text(text, out_dir / f"{stem}.md")
    bars = {f"{g.model} {g.modalities} ({g.name()[:20]})": g.per_class_f1() for g in groups}
    plot_grouped_bars(bars, out_dir / "per_class_f1.png", "test F1", "Per-class F1 (mean over seeds)")
    page = ["# Results (generated by `python -m pipeline.report`; do not edit)\n",
            f"{len(runs)} runs in {len(groups)} configurations. Test split; checkpoints selected on dev.\n",
            "## Model comparison\n", md["model_comparison"], "## Modality combinations\n", md["modalities"],
            "## Ablations\n", md["ablations"], "## Per-class F1\n", md["per_class_f1"],
            "![per-class F1](per_class_f1.png)\n"]
    atomic_write_text("\n".join(page), out_dir / "README.md")
    log.info("wrote %s: %d runs, %d configurations", out_dir, len(runs), len(groups))
    return md


def check_required(runs: list[Run], required: list[str]) -> None:
    """``key=value`` (flattened params, e.g. ``model=summer``) must match at least one run."""
    for req in required:
        key, _, value = req.partition("=")
        if not any(str(flatten(r.params).get(key)) == value for r in runs):
            have = sorted({str(flatten(r.params).get(key)) for r in runs})
            raise ReportError(f"no experiment with {key}={value} (have: {have}); run `dvc exp run -S {key}={value}`")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp-json", help="saved `dvc exp show --json` output (default: run it)")
    ap.add_argument("--out", default="reports/results")
    ap.add_argument("--require", action="append", default=[], help="key=value that some run must have")
    ap.add_argument("--include-workspace", action="store_true")
    args = ap.parse_args()
    try:
        runs = runs_from_exp_show(load_exp_show(args.exp_json), args.include_workspace)
        check_required(runs, args.require)
        write_report(runs, load_params(), args.out)
    except ReportError as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    run_main(main)
