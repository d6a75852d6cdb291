"""Stage ``finetune_text``: fine-tune the text encoder on the train split, select the epoch on dev.

The encoder (``text.model``) gets a linear classification head on its pooled output (same ``text.context``
inputs and ``text.pooling`` as extraction) and is trained with cross-entropy and AdamW; after each epoch
dev weighted F1 decides whether the encoder is kept. The best encoder + tokenizer are saved with
``save_pretrained`` to ``text.finetune.out`` (written to a temp dir, then renamed); ``extract_text`` then
reads vectors from it. The test split is never read. This is the text teacher later models distil from.
With ``text.finetune.enabled: false`` the stage only writes a marker file, so the pipeline shape is fixed.

``text.finetune.out`` must be the stage's declared output (``data/text_encoder`` in dvc.yaml) or a folder
inside it: anything else is refused. The stage deletes only files it wrote itself (listed in its marker,
``finetune.json`` / ``DISABLED.json``), never whatever else the folder holds.

Run: ``python -m pipeline.finetune_text`` (reads ``text`` from params.yaml).
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
from tqdm import tqdm

from pipeline.common import load_params, setup_logging
from pipeline.errors import UserError, run_main
from pipeline.training.metrics import classification_metrics
from pipeline.schema import label_names
from pipeline.extraction.text_context import DialogueIndex, build_pair
from pipeline.extraction.textenc import encode_batch, load_encoder, pair_limits, tokenize_pairs

log = logging.getLogger("merc.finetune_text")


def _examples(table, index: DialogueIndex, p: dict, tok, split: str) -> tuple[list, np.ndarray]:
    rows = [r for r in table.to_pylist() if r["split"] == split and r["label_id"] >= 0 and (r["text"] or "").strip()]
    # whole context turns, the nearest to the target first, within max_length (as extract_text builds them)
    pairs = [build_pair(index, r["dialogue_id"], r["utterance_id"], p["context"], p["window"], p["budget"],
                        p["future"], **pair_limits(tok, p["max_length"])) for r in rows]
    return pairs, np.asarray([r["label_id"] for r in rows], dtype=np.int64)


def _batches(pairs, order, size):
    """Batches of one pair kind (with / without context), as ``tokenize_pairs`` needs."""
    for s in range(0, len(order), size):
        idx = list(order[s : s + size])
        for kind in (False, True):
            sub = [i for i in idx if (pairs[i][1] is not None) == kind]
            if sub:
                yield sub


def _grouped_order(lengths: np.ndarray, size: int, rng: np.random.Generator, group: int = 50) -> np.ndarray:
    """A random order whose consecutive ``size`` items have similar lengths (less padding, same examples).

    Like Hugging Face's ``group_by_length``: shuffle, cut into mega-batches of ``group`` batches, sort each
    by length, then shuffle the batch order so long and short batches interleave across the epoch.
    """
    order = rng.permutation(len(lengths))
    mega = size * group
    batches = []
    for s in range(0, len(order), mega):
        chunk = order[s : s + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))]) if batches else order


DECLARED_OUT = "data/text_encoder"  # the stage's `outs` in dvc.yaml
MARKERS = ("finetune.json", "DISABLED.json")
# What save_pretrained writes for the encoders we use; only for folders from before markers listed their files.
LEGACY_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
                "spiece.model", "sentencepiece.bpe.model", "generation_config.json")


def check_out(out: str | Path, declared: str | Path = DECLARED_OUT) -> Path:
    """``out`` if it is the declared output folder or inside it; else a one-line ``UserError``."""
    out, root = Path(out), Path(declared)
    if out.resolve() != root.resolve() and root.resolve() not in out.resolve().parents:
        raise UserError(f"params.yaml text.finetune.out is {str(out)!r}, outside the finetune_text stage's output "
                        f"{declared} (dvc.yaml): set it to {declared} (or a folder inside it)")
    return out


def _own_files(out: Path) -> list[str]:
    """The files a previous run of this stage wrote into ``out`` (from its marker)."""
    names = []
    for marker in MARKERS:
        if (out / marker).is_file():
            try:
                listed = json.loads((out / marker).read_text()).get("files")
            except (ValueError, AttributeError):
                listed = None
            names += [marker, *(listed if isinstance(listed, list) else LEGACY_FILES)]
    # only plain names inside ``out``: a crafted marker must not point elsewhere
    return sorted({n for n in names if isinstance(n, str) and n and Path(n).name == n and n not in (".", "..")})


def _clear_own(out: Path) -> None:
    """Delete what this stage wrote before (a previous encoder must not look current), nothing else."""
    for name in _own_files(out):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def finetune(utterances: str | Path, p: dict, out: str | Path, device: str | None = None,
             declared: str | Path | None = None) -> dict:
    """Fine-tune (or, disabled, write the marker) into ``out``; ``declared``: refuse ``out`` outside it."""
    f = p["finetune"]
    out = check_out(out, declared) if declared is not None else Path(out)
    if not f["enabled"]:
        out.mkdir(parents=True, exist_ok=True)
        _clear_own(out)
        (out / "DISABLED.json").write_text(json.dumps({"enabled": False, "files": []}) + "\n")
        return {"enabled": False}
    random.seed(f["seed"])
    np.random.seed(f["seed"])
    torch.manual_seed(f["seed"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    table = pq.read_table(utterances)
    labels = label_names(table.schema)
    index = DialogueIndex.from_table(table)
    tok, model = load_encoder(p["model"], device)
    head = nn.Linear(model.config.hidden_size, len(labels)).to(device)
    train_x, train_y = _examples(table, index, p, tok, "train")
    dev_x, dev_y = _examples(table, index, p, tok, "dev")
    if not len(train_y) or not len(dev_y):
        raise RuntimeError("fine-tuning needs labelled train and dev utterances with text")
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=f["lr"], weight_decay=0.01)
    rng = np.random.default_rng(f["seed"])
    n_tokens = lambda pair: sum(len(x) for x in pair if isinstance(x, str))  # noqa: E731  (chars: a cheap proxy)
    lengths = np.asarray([n_tokens(x) for x in train_x])
    # Linear warm-up then linear decay to 0, the usual BERT fine-tuning schedule (Devlin et al. 2019).
    total = f["epochs"] * sum(1 for _ in _batches(train_x, np.arange(len(train_y)), f["batch_size"]))
    warm = int(f.get("warmup", 0.1) * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / max(warm, 1) if k < warm else max(0.0, (total - k) / max(total - warm, 1)))
    out.mkdir(parents=True, exist_ok=True)
    best, tmp = -1.0, out / ".finetune.tmp"  # inside the output: nothing outside it is created or deleted
    for epoch in range(f["epochs"]):
        model.train()
        order = _grouped_order(lengths, f["batch_size"], rng)
        for idx in tqdm(list(_batches(train_x, order, f["batch_size"])), desc=f"finetune epoch {epoch}", unit="batch"):
            enc, target = tokenize_pairs(tok, [train_x[i] for i in idx], p["max_length"])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = head(encode_batch(model, enc.to(device), target, p["pooling"], p["layers"]))
            loss = nn.functional.cross_entropy(logits.float(), torch.from_numpy(train_y[idx]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
        pred = np.zeros(len(dev_y), dtype=np.int64)
        with torch.inference_mode():
            for idx in _batches(dev_x, np.arange(len(dev_y)), 64):
                enc, target = tokenize_pairs(tok, [dev_x[i] for i in idx], p["max_length"])
                pred[idx] = head(encode_batch(model, enc.to(device), target, p["pooling"], p["layers"])).argmax(-1).cpu().numpy()
        dev_f1 = classification_metrics(dev_y, pred, labels)["weighted_f1"]
        log.info("epoch %d: dev weighted F1 %.4f", epoch, dev_f1)
        if dev_f1 > best:
            best = dev_f1
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            files = sorted(x.name for x in tmp.iterdir())
            (tmp / "finetune.json").write_text(json.dumps({"epoch": epoch, "dev_weighted_f1": dev_f1,
                                                           "base": p["model"], "labels": labels,
                                                           "files": files}, indent=2))
    _clear_own(out)
    for name in sorted(x.name for x in tmp.iterdir() if x.name != "finetune.json") + ["finetune.json"]:
        (tmp / name).replace(out / name)  # the marker last: it says the folder holds a complete encoder
    tmp.rmdir()
    return json.loads((out / "finetune.json").read_text())


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    args = ap.parse_args()
    p = load_params("text")
    log.info("%s", finetune(args.utterances, p, p["finetune"]["out"], declared=DECLARED_OUT))


if __name__ == "__main__":
    run_main(main)
