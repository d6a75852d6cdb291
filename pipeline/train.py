"""Stage ``train``: a registered model trained by the shared engine (``pipeline.training.engine``), once per seed.

``train.modalities`` picks the modality subset (``tav``, ``ta``, ``t``, … or a list); ``train.seeds: [..]`` trains
one model per seed (else ``train.seed``). The checkpoint holds every seed's best-on-dev weights (``runs``); its
top-level ``state_dict`` is the seed with the best dev weighted F1. Selection never sees the test split: it is
scored once, after every seed is selected, only for the bundle's model card (``card_facts``).
DVCLive (``reports/train``, ``dvcyaml=False``) logs the first seed's per-epoch curves and a summary with the dev
mean ± std over seeds; ``reports/train/seeds.json`` holds every seed's best epoch, dev F1 and history.

Run: ``python -m pipeline.train`` (reads ``model``, ``model_params.<model>`` and ``train`` from params.yaml).
Several GPUs (or CPU processes): ``torchrun --nproc-per-node N -m pipeline.train`` trains with DDP
(``pipeline.training.engine``); ``train.batch_size`` stays the global batch, and only rank 0 writes DVCLive, the
checkpoint and seeds.json. Every rank returns the same result.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from models import list_models
from pipeline.training.build import build_model  # noqa: F401 (train builds with it; re-exported)
from pipeline.training.bundle import write_bundle
from pipeline.training import text_e2e
from pipeline.training.checkpoint import save_checkpoint as save_plain
from pipeline.common import atomic_write_text, load_params, setup_logging
from pipeline.training.dataset import Standardizer, dialogues, load_corpus, model_sequences, train_warnings
from pipeline.training.engine import (Engine, EngineConfig, check_engine_params, class_weights, init_distributed,
                             parse_modalities, resolve_device, seed_everything)
from pipeline.errors import UserError, run_main
from pipeline.training.metrics import mean_std
from pipeline.schema import label_names

log = logging.getLogger("merc.train")



def train(params: dict, utterances: str, out: str, live_dir: str, feature_dirs: dict | None = None) -> dict:
    tp, name = params["train"], params["model"]
    if not isinstance(name, str) or name not in list_models():
        raise UserError(f"params.yaml model: unknown model {name!r}; use one of {list_models()}")
    cfg = dict((params.get("model_params") or {}).get(name) or {})
    mods = parse_modalities(tp["modalities"])
    check_engine_params(tp, "train")
    seeds = tp.get("seeds") or [tp.get("seed", 0)]
    if not isinstance(seeds, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise UserError(f"params.yaml train.seeds must be a list of whole numbers (or [] to use train.seed), "
                        f"got {seeds!r}")
    ecfg = EngineConfig.from_params(tp)
    rank, n_ranks = init_distributed()  # (0, 1) unless launched by torchrun
    device = resolve_device()
    e2e = text_e2e.config(tp, name, cfg)  # train.text_encoder: the text encoder fine-tuned here, end to end
    corpus = text_e2e.corpus_with_tokens(utterances, mods, feature_dirs, e2e,
                                         context_free=text_e2e.context_free_text(name, cfg))
    corpus = model_sequences(corpus, name, cfg, feature_dirs)  # LPGNet(Frame): stored frame sequences
    norm = Standardizer().fit(corpus, corpus.split_rows("train"))
    if e2e:
        text_e2e.keep_tokens(norm)  # token ids must reach the encoder unchanged
    train_d, dev_d = dialogues(corpus, "train", norm), dialogues(corpus, "dev", norm)
    if not train_d or not dev_d:
        raise UserError("train needs labelled train and dev dialogues: check the prepare stage's output "
                        "(data/prepared/utterances.parquet: its split and label columns)")
    labels = label_names(corpus.utterances.schema)  # the prepared table's label set (MELD, IEMOCAP, ...)
    targets = corpus.targets  # regression target names ([]: classification)
    task = corpus.task
    train_warnings(corpus, labels)
    weight = None if targets else class_weights(np.concatenate([d["label"] for d in train_d]), len(labels))
    n_out = len(targets) if targets else len(labels)  # regression: one linear output per target
    score = "pearson_r" if targets else "weighted_f1"  # the dev selection metric (EngineConfig: monitor)

    from dvclive import Live

    runs = []
    main = rank == 0
    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) if main else \
            contextlib.nullcontext() as live:
        for k, seed in enumerate(seeds):
            seed_everything(seed)  # before the model is built: same seed, same initial weights
            model, dims = text_e2e.with_encoder(
                lambda d: build_model(name, cfg, d, n_out, task=task), corpus.dims, e2e, device)
            n_params = sum(p.numel() for p in model.parameters())
            log.info("model %s (%s params) on %s%s, modalities %s, seed %d", name, f"{n_params:,}", device,
                     f" x{n_ranks} ranks" if n_ranks > 1 else "", "".join(mods), seed)
            res = Engine(model, ecfg, device, weight, labels, targets).fit(
                train_d, dev_d, seed=seed, live=live if k == 0 else None, desc=f"train {name} seed {seed}")
            runs.append({"seed": seed, **res})
            log.info("seed %d: best dev %s %s at epoch %d (selected on dev %s)", seed, score,
                     "undefined" if res["dev_score"] is None else f"{res['dev_score']:.4f}", res["epoch"],
                     res["monitor"])
        dev_mean, dev_std = mean_std([r["dev_score"] for r in runs])
        if main:
            live.log_param("n_params", n_params)
            live.summary["best"] = {f"dev_{score}": runs[0]["dev_score"], "epoch": runs[0]["epoch"]}
            live.summary["seeds"] = {"n": len(seeds), f"dev_{score}_mean": dev_mean, f"dev_{score}_std": dev_std}
    # the seed whose best epoch scores best on the dev monitor (earliest seed on ties)
    # (on dev loss when any seed's dev score is undefined — a null Pearson r cannot rank seeds)
    best = min(runs, key=lambda r: r["dev_loss"]) if ecfg.monitor == "loss" or \
        any(r["dev_score"] is None for r in runs) else max(runs, key=lambda r: r["dev_score"])
    result = {f"best_dev_{score}": best["dev_score"], "best_epoch": best["epoch"], "seed": best["seed"],
              f"dev_{score}_mean": dev_mean, f"dev_{score}_std": dev_std, "score_name": score,
              "best_dev_score": best["dev_score"], "dev_score_mean": dev_mean, "dev_score_std": dev_std}
    if not main:  # replicas are identical: rank 0 writes
        return result
    save_checkpoint(out, name, cfg, dims, mods, norm, runs, best, labels, e2e, targets)
    card = card_facts(utterances, corpus, norm, runs, n_params, targets, lambda: text_e2e.with_encoder(
        lambda d: build_model(name, cfg, d, n_out, task=task), corpus.dims, e2e, device)[0].to(device), device)
    write_bundle(Path(out).with_name("bundle"), params, name, cfg, labels, mods, dims, norm, best, feature_dirs,
                 text_encoder=e2e, targets=targets, card=card)
    summary = {"model": name, "modalities": "".join(mods), "n_params": n_params, "task": task,
               f"dev_{score}_mean": dev_mean, f"dev_{score}_std": dev_std, "selected_seed": best["seed"],
               "seeds": [{"seed": r["seed"], f"dev_{score}": r["dev_score"],
                          **{k: r[k] for k in ("epoch", "epochs_run", "history")}} for r in runs]}
    atomic_write_text(json.dumps(summary, indent=1) + "\n", Path(live_dir) / "seeds.json")
    return result


def card_facts(utterances, corpus, norm, runs: list[dict], n_params: int, targets: list[str], make_model,
               device) -> dict:
    """What the bundle's model card reports (``pipeline.training.model_card``): the corpus, labelled utterances per split,
    each seed's dev-selected epoch and score, and every seed's test metrics (mean, std); selection stayed on dev,
    these are measured once the bundle's seed is chosen, exactly as ``pipeline.evaluate`` measures them."""
    from pipeline.schema import corpus_info

    split_dialogues = {s: dialogues(corpus, s, norm) for s in ("train", "dev", "test")}
    facts = {"corpus": corpus_info(utterances), "n_params": int(n_params),
             "splits": {s: int(sum(len(d["label"]) for d in ds)) for s, ds in split_dialogues.items()},
             "seeds": [{"seed": int(r["seed"]), "epoch": int(r["epoch"]),
                        "dev_weighted_f1": float(r.get("dev_weighted_f1", r.get("dev_score", 0.0)))} for r in runs]}
    if targets or not split_dialogues["test"]:
        return facts  # regression (predict does not serve it) or no test split: the card says where to look
    from pipeline.training.scoring import SUMMARY, score_seeds
    from pipeline.training.metrics import classification_metrics

    labels = label_names(corpus.utterances.schema)
    _, (m, *_), summary = score_seeds(make_model(), runs, split_dialogues["test"], device, runs[0]["seed"],
                                 lambda y, p: classification_metrics(y, p, labels), SUMMARY, lambda run, m: {})
    facts["test"] = {"n": int(m["n"]), **{k: [float(summary[k]), float(summary[f"{k}_std"])]
                                          for k in ("weighted_f1", "macro_f1", "accuracy")}}
    return facts


def save_checkpoint(out, name, cfg, dims, mods, norm, runs, best, labels, text_encoder=None, targets=None) -> None:
    """Plain tensors and values only (``pipeline.training.checkpoint``): evaluate reads it with ``weights_only=True``.

    ``dev_weighted_f1`` (classification) or ``dev_pearson_r`` (regression; ``targets`` names them): the dev score."""
    score = "pearson_r" if targets else "weighted_f1"
    save_plain({"model": name, "cfg": cfg, "input_dims": dims, "modalities": mods, "norm": norm.state(),
                "text_encoder": text_encoder, "labels": labels, "targets": list(targets or []), "seed": best["seed"],
                "state_dict": best["state_dict"], "epoch": best["epoch"], f"dev_{score}": best["dev_score"],
                "runs": [{"seed": r["seed"], "state_dict": r["state_dict"], "epoch": r["epoch"],
                          f"dev_{score}": r["dev_score"]} for r in runs]},
               out)


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/model/model.pt")
    ap.add_argument("--live", default="reports/train")
    args = ap.parse_args()
    result = train(load_params(), args.utterances, args.out, args.live)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # rank 0's files are written before any rank exits
        dist.destroy_process_group()
    log.info("selected seed %d: dev %s %.4f at epoch %d (mean over seeds %.4f ± %.4f)", result["seed"],
             result["score_name"], result["best_dev_score"], result["best_epoch"], result["dev_score_mean"],
             result["dev_score_std"])


if __name__ == "__main__":
    run_main(main)
