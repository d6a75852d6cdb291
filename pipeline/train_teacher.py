"""Stage ``train_teacher``: SUMMER's phase 1 — the unimodal teacher (``summer_teacher``) trained by the shared engine.

Reads ``model_params.summer.teacher`` (modality, architecture incl. its own SDMoE — paper §3.5 "pre-trained
using the SDMoE module", ``moe: none`` for the Fig. 4 comparison — and its own engine settings), so the student's
settings leave this stage cached, and ``model`` (below). Train split to fit, dev to select the epoch; the
test split is read once, after selection, only to report the teacher's own row (paper Tables 1–2 list it).
Writes the frozen-to-be teacher (``data/teacher/teacher.pt``: plain tensors/numbers/strings only — modality,
architecture, input widths, labels, normaliser, best-on-dev weights) and ``reports/teacher/metrics.json`` (its
dev scores at the selected epoch and its test scores). The student (``models.summer``) loads it from
``model_params.summer.teacher_path``.

Only ``model: summer`` pays for it: for any other model the stage trains nothing and writes the marker
``data/teacher/none.json`` (and empty teacher metrics). The stage reads ``model`` for this alone, so a switch
between SUMMER and another model re-runs it, and DVC's run cache restores a teacher trained before
("Stage 'train_teacher' is cached") instead of training it again.

Run: ``python -m pipeline.train_teacher``.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging

import numpy as np

from models import get_model
from models.summer import TEACHER_ARCH, SummerTeacher
from pipeline.training.checkpoint import save_checkpoint
from pipeline.common import atomic_write_text, load_params, setup_logging
from pipeline.training.dataset import Standardizer, dialogues, load_corpus, train_warnings
from pipeline.training.engine import (Engine, EngineConfig, check_engine_params, class_weights, parse_modalities, predict,
                             resolve_device, seed_everything)
from pipeline.errors import UserError, run_main
from pipeline.training.metrics import REG_SCALARS, classification_metrics, regression_metrics
from pipeline.schema import label_names

log = logging.getLogger("merc.train_teacher")


def train_teacher(tcfg: dict, utterances: str, out: str, metrics: str, feature_dirs: dict | None = None) -> dict:
    """Train the ``tcfg["modality"]`` teacher; save it to ``out`` and its dev and test scores to ``metrics``."""
    mods = parse_modalities(tcfg.get("modality", "t"))
    if len(mods) != 1:
        raise UserError(f"the SUMMER teacher is unimodal: model_params.summer.teacher.modality is t, a or v; got {tcfg['modality']!r}")
    m = mods[0]
    arch = {k: tcfg[k] for k in TEACHER_ARCH if k in tcfg}
    check_engine_params(tcfg, "model_params.summer.teacher")
    seed = int(tcfg.get("seed", 0))
    corpus = load_corpus(utterances, mods, feature_dirs)
    norm = Standardizer().fit(corpus, corpus.split_rows("train"))  # per modality: the student's text stats too
    train_d, dev_d = dialogues(corpus, "train", norm), dialogues(corpus, "dev", norm)
    if not train_d or not dev_d:
        raise UserError("train_teacher needs labelled train and dev dialogues: check the prepare stage's output")
    labels, targets = label_names(corpus.utterances.schema), corpus.targets
    train_warnings(corpus, labels)
    # regression: the teacher regresses the targets (its "classifier" is a K-output linear head)
    weight = None if targets else class_weights(np.concatenate([d["label"] for d in train_d]), len(labels))
    seed_everything(seed)
    model = get_model("summer_teacher", input_dims=corpus.dims, n_classes=len(targets or labels), modality=m,
                      **arch)
    device = resolve_device()
    log.info("teacher (%s) with %s params on %s", m, f"{sum(p.numel() for p in model.parameters()):,}", device)
    res = Engine(model, EngineConfig.from_params(tcfg), device, weight, labels, targets).fit(
        train_d, dev_d, seed=seed, desc=f"teacher {m}")
    save_teacher(out, m, {k: arch.get(k, v) for k, v in teacher_defaults().items()}, corpus.dims, labels, norm,
                 res, seed, targets)
    best = res["history"][res["epoch"]]["dev"]
    summary = {"modality": m, "epoch": res["epoch"], "epochs_run": res["epochs_run"],
               **{f"dev_{k}": v for k, v in best.items()}}
    test_d = dialogues(corpus, "test", norm)
    if test_d:  # the selected (best-on-dev) weights on test: the teacher's own row of Tables 1-2
        model.load_state_dict(res["state_dict"])
        pred, y, _, _ = predict(model, test_d, int(tcfg.get("batch_size", 8)), device)
        if targets:
            tm = regression_metrics(y, pred, targets)
            summary.update({f"test_{k}": tm[k] for k in REG_SCALARS}, test_n=tm["n"])
        else:
            tm = classification_metrics(y, pred, labels)
            summary.update({f"test_{k}": tm[k] for k in ("accuracy", "weighted_f1", "macro_f1")}, test_n=tm["n"],
                       test_per_class_f1={c: v["f1"] for c, v in tm["per_class"].items()})
    else:
        log.warning("teacher: no labelled test dialogues, so no test scores are written")
    atomic_write_text(json.dumps(summary, indent=1) + "\n", metrics)
    score = res["score_name"]
    log.info("teacher %s: best dev %s %.4f at epoch %d; test %s", m, score, res["dev_score"], res["epoch"],
             f"{summary['test_' + score]:.4f}" if "test_" + score in summary else "n/a")
    return summary


def teacher_defaults() -> dict:
    """The architecture keys of ``summer_teacher`` with their defaults (the student rebuilds exactly this shape)."""
    sig = inspect.signature(SummerTeacher).parameters
    return {k: sig[k].default for k in TEACHER_ARCH}


def save_teacher(out, modality: str, arch: dict, dims: dict, labels: list[str], norm: Standardizer, res: dict,
                 seed: int = 0, targets: list[str] | None = None) -> None:
    """The teacher checkpoint ``models.summer.Summer`` loads: modality, full architecture, widths, best weights
    (plain tensors and values: it is read with ``weights_only=True``)."""
    save_checkpoint({"model": "summer_teacher", "modality": modality, "arch": arch, "input_dims": dims,
                       "labels": labels, "norm": norm.state(), "state_dict": res["state_dict"], "epoch": res["epoch"],
                       "dev_weighted_f1": res.get("dev_weighted_f1", res.get("dev_score")), "seed": seed,
                       "targets": list(targets or [])}, out)


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/teacher/teacher.pt")
    ap.add_argument("--metrics", default="reports/teacher/metrics.json")
    args = ap.parse_args()
    params = load_params()
    if params.get("model") != "summer":
        skip_teacher(params.get("model"), args.out, args.metrics)
        return
    log.info("training the SUMMER teacher")
    train_teacher(params["model_params"]["summer"]["teacher"], args.utterances, args.out, args.metrics)


def skip_teacher(model: str | None, out: str, metrics: str) -> None:
    """No teacher for ``model``: the marker ``none.json`` beside where the teacher would be, empty metrics.

    The marker does not name the model, so every non-SUMMER model leaves the same bytes (``train`` and
    ``evaluate`` read the folder: it must not differ between them)."""
    from pathlib import Path

    log.info("model %s uses no SUMMER teacher: nothing to train", model)
    atomic_write_text(json.dumps({"teacher": None, "why": "only model summer uses a teacher"}) + "\n",
                      Path(out).parent / "none.json")
    atomic_write_text("{}\n", metrics)


if __name__ == "__main__":
    run_main(main)
