"""Experiments → runs → configurations, per corpus; each run's files (git-tracked or in the DVC cache)."""
from __future__ import annotations

import copy
import io
import json
import logging
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from pipeline.analysis import corpus_info  # noqa: F401 (re-exported)
from pipeline.errors import UserError
from pipeline.training.metrics import mean_std

log = logging.getLogger("merc.report")

METRICS_FILE = "reports/metrics.json"
DEV_METRICS_FILE = "reports/dev/metrics.json"
TEACHER_METRICS_FILE = "reports/teacher/metrics.json"
PARAMS_FILE = "params.yaml"
MODALITY_ORDER = "tav"
# Params that do not change a result (throughput knobs), the seed (what we average over) and the recipe's name
# (a label: the parameters it sets are in the config anyway).
IGNORED = {"text.batch_size", "text.shard_size", "audio.shard_size", "audio.ssl.batch_size", "visual.shard_size",
           "train.seed", "train.seeds", "text.finetune.seed", "model_params.summer.teacher.seed", "recipe"}
IGNORED_PREFIXES = ("runtime.",)  # where the extract stages run: their tables are the same either way
NO_RECIPE = (None, "none", "")


class ReportError(UserError):
    """A report that cannot be made; the message says what to run."""


# ------------------------------------------------------------------------------------------------------ corpus
@dataclass(frozen=True)
class Corpus:
    """What a result is measured on: adapter (dataset), target, label set; ``source`` names a manifest file."""

    adapter: str
    target: str
    labels: tuple[str, ...]
    source: str = ""
    targets: tuple[str, ...] = ()  # regression target names (issue #20); empty: classification

    @property
    def regression(self) -> bool:
        return bool(self.targets)

    @property
    def key(self) -> str:
        return f"{self.adapter}:{self.source}:{self.target}:{','.join(self.labels)}:{','.join(self.targets)}"

    @property
    def family(self) -> str:
        """iemocap | meld | demo | the manifest's name: which paper tables (IEMOCAP or MELD columns) it feeds."""
        if self.adapter == "iemocap" or "iemocap" in self.source.lower():
            return "iemocap"
        return self.adapter if self.adapter != "manifest" else (self.source or "manifest")

    @property
    def name(self) -> str:
        base = {"meld": "MELD", "iemocap": "IEMOCAP", "demo": "demo (MELD layout)", "mosei": "CMU-MOSEI",
                "features": f"{self.source or 'features'} (feature pickle)"}.get(self.adapter)
        base = base or f"{self.source or 'manifest'} (manifest)"
        if self.targets:
            return f"{base} — {self.target}, regression on {', '.join(self.targets)}"
        n = len(self.labels)
        return f"{base} — {self.target}, {n if n else '?'} classes" + (f" ({', '.join(self.labels)})" if n else "")

    @property
    def slug(self) -> str:
        s = f"{self.adapter}{'_' + self.source if self.source else ''}_{self.target}_" + \
            (f"{len(self.labels)}" if not self.targets else "r" + str(len(self.targets)))
        return "".join(c if c.isalnum() or c in "_-" else "_" for c in s)


def corpus_from_info(info: dict) -> Corpus:
    """From the ``corpus`` block ``evaluate`` writes into metrics.json (the utterance table's provenance)."""
    split = lambda v: tuple(x for x in (v.split(",") if isinstance(v, str) else (v or ())) if x)  # noqa: E731
    return Corpus(str(info.get("adapter")), str(info.get("target") or "emotion"), split(info.get("labels") or ""),
                  str(info.get("source") or ""), split(info.get("targets") or ""))


def corpus_from_params(params: dict) -> Corpus:
    """Fallback for runs whose metrics predate the ``corpus`` block: the label set the adapter would give."""
    p = params.get("prepare") or {}
    adapter = str(p.get("dataset", "demo"))
    if adapter in ("meld", "demo"):
        from pipeline.adapters.meld import TARGETS

        target = str(p.get("target") or "emotion")
        return Corpus(adapter, target, tuple(TARGETS.get(target, (None, ()))[1]))
    if adapter == "iemocap":
        from pipeline.adapters.iemocap import PROTOCOLS

        return Corpus(adapter, "emotion", tuple(PROTOCOLS.get(int(p.get("iemocap_classes") or 6), ([],))[0]))
    labels = tuple(str(x) for x in (p.get("labels") or ()))
    return Corpus(adapter, "emotion", labels, Path(str(p.get("root") or "")).stem)


# --------------------------------------------------------------------------------------------------------- runs
def _git_reader(rev: str) -> Callable[[str], bytes | None]:
    """Files of experiment ``rev``: git-tracked ones (``cache: false`` outputs: metrics, predictions, plots) by
    ``git show``, DVC-cached ones (utterance table, checkpoint) by their md5 in that rev's dvc.lock."""
    def read(path: str) -> bytes | None:
        if rev == "workspace":
            f = Path(path)
            return f.read_bytes() if f.is_file() else None
        proc = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True)
        if proc.returncode == 0:
            return proc.stdout
        lock = subprocess.run(["git", "show", f"{rev}:dvc.lock"], capture_output=True)
        if lock.returncode != 0:
            return None
        for stage in (yaml.safe_load(lock.stdout) or {}).get("stages", {}).values():
            for out in stage.get("outs") or []:
                md5 = out.get("md5") or ""
                if out.get("path") == path and md5 and not md5.endswith(".dir"):
                    f = Path(".dvc/cache/files/md5") / md5[:2] / md5[2:]
                    return f.read_bytes() if f.is_file() else None
        return None

    return read


@dataclass
class Run:
    name: str
    rev: str
    params: dict
    metrics: dict
    dev_metrics: dict | None = None
    teacher_metrics: dict | None = None
    read: Callable[[str], bytes | None] | None = None  # path → bytes of this run's file (None: absent)

    @property
    def corpus(self) -> Corpus:
        info = self.metrics.get("corpus")
        return corpus_from_info(info) if isinstance(info, dict) and info.get("adapter") else corpus_from_params(self.params)

    @property
    def recipe(self) -> str | None:
        r = self.params.get("recipe")
        return None if r in NO_RECIPE else str(r)

    def file(self, path: str) -> bytes | None:
        try:
            return (self.read or _git_reader(self.rev))(path)
        except OSError as e:
            log.warning("%s: cannot read %s: %s", self.name, path, e)
            return None

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
        if isinstance(seeds, list) and seeds and all(isinstance(m, dict) for m in seeds):
            return {tag(m.get("seed", i)): {"n_params": self.metrics.get("n_params"), **m} for i, m in enumerate(seeds)}
        return {tag((self.params.get("train") or {}).get("seed")): self.metrics}


@dataclass
class Group:
    """Runs on one corpus that share every parameter but the seed."""

    corpus: Corpus
    config: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.config.get("model"))

    @property
    def modalities(self) -> str:
        return modality_label(self.config.get("train.modalities", "tav"))

    @property
    def recipe(self) -> str | None:
        return next((r.recipe for r in self.runs if r.recipe), None)

    def by_seed(self) -> dict:
        """One metrics dict per distinct seed: rerunning a seed adds no independent sample."""
        out = {}
        for r in self.runs:
            out.update(r.seed_metrics())
        return out

    def values(self, key: str) -> np.ndarray:
        """``key`` per seed; a metric only the run level has (e.g. one a per-seed record lacks) per run."""
        v = [m[key] for m in self.by_seed().values() if isinstance(m.get(key), (int, float))]
        if not v:
            v = [r.metrics[key] for r in self.runs if isinstance(r.metrics.get(key), (int, float))]
        return np.asarray(v, dtype=float)

    def dev_values(self, key: str) -> np.ndarray:
        """``key`` of ``reports/dev/metrics.json`` (evaluate --split dev), one value per run."""
        return np.asarray([r.dev_metrics[key] for r in self.runs
                           if isinstance((r.dev_metrics or {}).get(key), (int, float))], dtype=float)

    def per_class(self, field_: str = "f1") -> dict[str, float]:
        """Mean of a per-class field: F1 over seeds (each seed's ``per_class_f1``); precision, recall, support
        (and any other field) over runs, from each run's ``per_class`` (its dev-selected seed, as evaluate
        writes it)."""
        out: dict[str, list] = {}
        if field_ == "f1":
            sources = [m.get("per_class_f1") if isinstance(m.get("per_class_f1"), dict) else
                       {c: v.get("f1") for c, v in (m.get("per_class") or {}).items() if isinstance(v, dict)}
                       for m in self.by_seed().values()]
        else:
            sources = [{c: v.get(field_) for c, v in (r.metrics.get("per_class") or {}).items() if isinstance(v, dict)}
                       for r in self.runs]
        for vals in sources:
            for c, v in (vals or {}).items():
                if isinstance(v, (int, float)):
                    out.setdefault(c, []).append(v)
        return {c: float(np.mean(v)) for c, v in out.items()}

    def selected(self) -> Run:
        """The run whose files (predictions, t-SNE, checkpoint) stand for the group: the best test-free choice,
        i.e. the highest dev weighted F1 (selection on dev, never on test)."""
        return max(self.runs, key=lambda r: (r.metrics.get("dev_weighted_f1") or r.metrics.get("dev_pearson_r") or -1,
                                             r.name))

    def name(self) -> str:
        return ", ".join(sorted({r.name for r in self.runs}))

    def label(self) -> str:
        """A row's name: the recipe when there is one, else the model."""
        return f"{self.recipe} ({self.model})" if self.recipe else self.model


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def modality_label(mods) -> str:
    """``['t','a']`` or ``"ta"`` → ``"T+A"`` in T, A, V order."""
    s = "".join(mods) if isinstance(mods, (list, tuple)) else str(mods)
    return "+".join(m.upper() for m in MODALITY_ORDER if m in s.lower())


YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def yaml_number(v):
    """``1e-05`` as a float: PyYAML (YAML 1.1) reads an exponent without a dot as a string, DVC's parser as a
    number, so one setting saved by both would look like two."""
    return float(v) if isinstance(v, str) and YAML11_FLOAT.fullmatch(v) else v


def config_of(params: dict) -> dict:
    """The parameters that define a result: everything but throughput knobs, seeds and other models' params."""
    flat = {k: yaml_number(v) for k, v in flatten(params).items()}
    model = params.get("model")
    cfg = {k: v for k, v in flat.items()
           if k not in IGNORED and not k.startswith(IGNORED_PREFIXES)
           and not (k.startswith("model_params.") and not k.startswith(f"model_params.{model}."))}
    if "train.modalities" in cfg:
        cfg["train.modalities"] = modality_label(cfg["train.modalities"])
    return cfg


def diff(cfg: dict, ref: dict, skip_prefix: tuple[str, ...] = (), common_only: bool = True) -> dict:
    """Keys whose values differ. With ``common_only``, a key only one side has is a parameter added to
    params.yaml after the other run (it ran with that parameter's then-built-in behaviour): not a difference,
    except ``model``; without, every key of ``cfg`` whose value ``ref`` does not have."""
    keys = (set(cfg) & set(ref)) | ({"model"} & (set(cfg) | set(ref))) if common_only else set(cfg)
    return {k: cfg.get(k) for k in sorted(keys)
            if cfg.get(k) != ref.get(k) and not k.startswith(skip_prefix)}


def runs_from_exp_show(data: list, include_workspace: bool = False) -> list[Run]:
    """Runs with test metrics from ``dvc exp show --json`` output (baselines and their experiments)."""
    runs, seen = [], set()

    def add(entry: dict, fallback_name: str) -> None:
        d = entry.get("data") or {}
        files = d.get("metrics") or {}
        metrics = (files.get(METRICS_FILE) or {}).get("data")
        params = ((d.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
        rev = entry.get("rev") or d.get("rev") or ""
        if entry.get("error") or not metrics or not params or rev in seen:
            return
        why = corrupt(metrics, params)
        if why:  # one bad experiment must not sink the report: name it and go on
            log.warning("report: skipped experiment %s (%s): %s", entry.get("name") or d.get("name") or fallback_name,
                        rev[:12], why)
            return
        if rev == "workspace" and not include_workspace:
            return
        seen.add(rev)
        runs.append(Run(entry.get("name") or d.get("name") or fallback_name, rev, params, metrics,
                        (files.get(DEV_METRICS_FILE) or {}).get("data"),
                        (files.get(TEACHER_METRICS_FILE) or {}).get("data")))

    if not isinstance(data, list):
        raise ReportError(f"`dvc exp show --json` output must be a list of baselines, got {type(data).__name__}")
    for baseline in data:
        if not isinstance(baseline, dict):
            log.warning("report: skipped a `dvc exp show` entry that is a %s, not an object", type(baseline).__name__)
            continue
        add(baseline, str(baseline.get("name") or baseline.get("rev", ""))[:12])
        for exp in baseline.get("experiments") or []:
            for r in (exp.get("revs") or []) if isinstance(exp, dict) else []:
                if isinstance(r, dict):
                    add(r, str(r.get("rev", ""))[:7])
    return runs


# top-level metrics.json keys that are numbers (or null: an undefined Pearson r) when evaluate wrote them
NUMERIC = ("n", "n_params", "accuracy", "weighted_f1", "macro_f1", "dev_weighted_f1", "dev_pearson_r", "pearson_r",
           "mae", "ccc", "mse", "corr", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7")


def corrupt(metrics, params) -> str | None:
    """Why an experiment's metrics/params cannot be reported (a hand-edited or damaged metrics.json), or None."""
    if not isinstance(metrics, dict) or not isinstance(params, dict):
        return f"metrics/params are a {type(metrics).__name__}/{type(params).__name__}, not objects"
    number = lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))  # noqa: E731
    bad = [k for k in NUMERIC if k in metrics and not number(metrics[k])]
    bad += [k for k in metrics if k.endswith("_std") and not number(metrics[k])]
    if bad:
        return f"{METRICS_FILE} values {sorted(set(bad))} are not numbers (e.g. {metrics[bad[0]]!r:.60})"
    for key in ("seeds", "per_class", "corpus", "per_target"):
        if key in metrics and not isinstance(metrics[key], dict):
            return f"{METRICS_FILE} {key} is a {type(metrics[key]).__name__}, not an object"
    for seed, m in (metrics.get("seeds") or {}).items():
        if not isinstance(m, dict) or any(k in m and not number(m[k]) for k in NUMERIC):
            return f"{METRICS_FILE} seeds.{seed} holds values that are not numbers"
    if not all(isinstance(v, dict) for v in (metrics.get("per_class") or {}).values()):
        return f"{METRICS_FILE} per_class entries are not objects"
    return None


def load_exp_show(path: str | None = None) -> list:
    """``dvc exp show --json --all-branches``; on a detached HEAD (not a branch tip) also HEAD's experiments."""
    if path:
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ReportError(f"--exp-json {path}: cannot read it ({e.strerror or e})") from None
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ReportError(f"--exp-json {path} is not JSON ({' '.join(str(e).split())[:160]}): save the output "
                              "of `dvc exp show --json` there") from None
    calls = [["dvc", "exp", "show", "--json", "--all-branches"]]
    if subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], capture_output=True).returncode != 0:
        calls.append(["dvc", "exp", "show", "--json"])
    out = []
    for cmd in calls:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ReportError(f"`{' '.join(cmd[:3])} --json` failed: {proc.stderr.strip()[-500:]}")
        out += json.loads(proc.stdout)
    return out


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with equal corpus and config form a group; then a group whose config agrees with another's on every
    key both have (runs from before a parameter existed) joins it — most keys first, so into the newest."""
    exact: dict[str, Group] = {}
    for r in runs:
        cfg = config_of(r.params)
        key = r.corpus.key + "|" + json.dumps(cfg, sort_keys=True, default=str)
        exact.setdefault(key, Group(r.corpus, cfg)).runs.append(r)
    merged: list[Group] = []
    for g in sorted(exact.values(), key=lambda g: -len(g.config)):
        home = next((h for h in merged if h.corpus == g.corpus and not diff(g.config, h.config)), None)
        if home is None:
            merged.append(g)
        else:
            home.runs.extend(g.runs)
    return merged


def by_corpus(groups: list[Group]) -> dict[Corpus, list[Group]]:
    out: dict[Corpus, list[Group]] = {}
    for g in groups:
        out.setdefault(g.corpus, []).append(g)
    # demo last: real corpora first
    return dict(sorted(out.items(), key=lambda kv: (kv[0].adapter == "demo", kv[0].name)))


# ---------------------------------------------------------------------------------------------------- reference
def set_dotted(params: dict, changes: dict) -> dict:
    p = copy.deepcopy(params)
    for key, value in changes.items():
        node = p
        *parents, last = key.split(".")
        for k in parents:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[last] = value
    return p


def recipe_changes(name: str | None, recipes_dir: str | Path = "recipes") -> dict:
    """The ``set`` block of ``recipes/<name>.yaml`` (empty when there is no such file)."""
    if not name:
        return {}
    f = Path(recipes_dir) / f"{name}.yaml"
    if not f.is_file():
        return {}
    try:
        return dict((yaml.safe_load(f.read_text()) or {}).get("set") or {})
    except yaml.YAMLError as e:
        log.warning("recipe %s unreadable: %s", f, e)
        return {}


def reference(groups: list[Group], params: dict, model: str) -> Group | None:
    """The reference configuration of ``model`` among one corpus's ``groups``: a recipe run first (a paper's
    setting on this dataset), then the one closest to params.yaml (fewest differing keys outside ``prepare``),
    then the one with more seeds. Ablation and modality tables compare with it."""
    mine = [g for g in groups if g.model == model]
    if not mine:
        return None

    def score(g: Group):
        base = config_of(set_dotted({**params, "model": model}, recipe_changes(g.recipe)))
        return (0 if g.recipe else 1, len(diff(g.config, base, ("prepare.",))), -len(g.values("weighted_f1")),
                g.name())

    return min(mine, key=score)


def fmt(values: np.ndarray, scale: float = 1.0, digits: int = 4) -> str:
    values = np.asarray(values, dtype=float) * scale
    if values.size == 0:
        return "–"
    if np.isnan(values).any():  # an undefined value (a null Pearson r) in any seed: the mean is undefined too
        return "n/a"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def read_csv(run: Run, path: str):
    import pandas as pd

    from pipeline.common import csv_unsafe

    raw = run.file(path)
    # predictions.csv is spreadsheet-safe (a leading ' before =+-@): the ids and labels as they were
    return None if raw is None else csv_unsafe(pd.read_csv(io.BytesIO(raw)))
