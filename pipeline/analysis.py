"""Analyses every model gets: emotion shift, t-SNE of the fused representations, efficiency.

* ``emotion_shift``: accuracy / weighted F1 on test utterances that exhibit an intra-speaker emotion shift,
  an inter-speaker emotion shift, or no shift (DialogueTRM §5.4 "Emotion shift cases", Table 6). Definitions
  (the paper's, by its example: "from person A at T+1 to person A at T+3" and "from person B at T+2 to
  person A at T+3"):
    - intra-speaker shift: the same speaker's previous utterance in the dialogue carries another gold label;
    - inter-speaker shift: the immediately preceding utterance is another speaker's and carries another label;
    - no shift: the utterance has a preceding utterance and is neither (an utterance may be both intra and
      inter, as in the paper, whose per-conversation counts 13.2 + 22.0 overlap);
  an unlabelled predecessor is skipped (not our choice to count it as a shift: its label is unknown); the
  first utterance of a dialogue is in none of the three.
* ``representations`` / ``tsne_coords`` / ``write_tsne``: the input of the model's classifier (the fused
  utterance representation) for every test utterance, projected with scikit-learn's TSNE (SUMMER Fig. 6) to
  ``reports/plots/tsne.csv`` (DVC scatter plot) and ``reports/tsne.png``. A model may define
  ``represent(feats, present, mask, speaker) -> [B, T, d]``; otherwise the input of its ``classifier``,
  ``head`` or ``fc`` module is captured with a forward pre-hook (not in the papers: our choice, because every
  registered model ends in one of these and no model file then needs an edit).
* ``efficiency``: parameters, FLOPs per dialogue (``torch.utils.flop_counter``), inference latency per dialogue
  and a training epoch's time, for every registered model at the sizes ``params.yaml`` (+ a recipe) gives —
  LPGNet's "lightweight" claim made measurable. Run: ``python -m pipeline.analysis efficiency``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from sklearn.metrics import accuracy_score, f1_score

from pipeline.common import atomic_write_text
from pipeline.schema import corpus_info  # noqa: F401 (re-exported: the report reads it from here)

log = logging.getLogger("merc.analysis")
SHIFT_CASES = ("all", "no_shift", "intra_shift", "inter_shift")
CLASSIFIER_ATTRS = ("classifier", "head", "fc")


def plot_scatter(df: pd.DataFrame, path: str | Path, title: str) -> None:
    """Points (x, y) coloured by ``label``."""
    from pipeline.training.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    for lab, sub in df.groupby("label", sort=True):
        ax.scatter(sub.x, sub.y, s=8, alpha=0.75, label=f"{lab} ({len(sub)})")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(df):
        ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)



# ----------------------------------------------------------------------------------------------- emotion shift
def shift_flags(utterances: pd.DataFrame) -> pd.DataFrame:
    """``utterances`` (dialogue_id, utterance_id, speaker, label; label None when unlabelled) → the same rows
    with boolean ``intra_shift``, ``inter_shift``, ``no_shift`` (definitions in the module docstring)."""
    df = utterances.sort_values(["dialogue_id", "utterance_id"]).reset_index(drop=True)
    intra = np.zeros(len(df), bool)
    inter = np.zeros(len(df), bool)
    has_prev = np.zeros(len(df), bool)
    for _, idx in df.groupby("dialogue_id", sort=False).indices.items():
        last_by_speaker: dict = {}
        prev = None  # (speaker, label) of the preceding utterance
        for i in idx:
            spk, lab = df.at[i, "speaker"], df.at[i, "label"]
            lab = None if pd.isna(lab) else lab  # unlabelled (None or NaN after a parquet round trip)
            if prev is not None and lab is not None:
                has_prev[i] = True
                if prev[0] != spk and prev[1] is not None and prev[1] != lab:
                    inter[i] = True
                mine = last_by_speaker.get(spk)
                if mine is not None and mine != lab:
                    intra[i] = True
            if lab is not None:
                last_by_speaker[spk] = lab
            prev = (spk, lab)
    df["intra_shift"], df["inter_shift"] = intra, inter
    df["no_shift"] = has_prev & ~intra & ~inter
    return df


def emotion_shift(utterances: pd.DataFrame, predictions: pd.DataFrame) -> dict:
    """Accuracy, weighted F1, count and count per dialogue of each case on the predicted utterances.

    ``utterances``: the utterance table rows of one split (dialogue_id, utterance_id, speaker, label);
    ``predictions``: dialogue_id, utterance_id, predicted (and ``actual``, ignored: the gold label comes from
    the utterance table). Flags use every utterance of the dialogue; metrics only the predicted ones.
    """
    flags = shift_flags(utterances[["dialogue_id", "utterance_id", "speaker", "label"]])
    pred = predictions[["dialogue_id", "utterance_id", "predicted"]].astype({"utterance_id": int})
    flags = flags.astype({"utterance_id": int})
    df = flags.merge(pred, on=["dialogue_id", "utterance_id"], how="inner")
    df = df[df.label.notna()]
    n_dialogues = max(df.dialogue_id.nunique(), 1)
    out = {}
    for case in SHIFT_CASES:
        sub = df if case == "all" else df[df[case]]
        y, p = sub.label.astype(str).to_numpy(), sub.predicted.astype(str).to_numpy()
        out[case] = {"n": int(len(sub)), "per_dialogue": len(sub) / n_dialogues,
                     "accuracy": float(accuracy_score(y, p)) if len(sub) else float("nan"),
                     "weighted_f1": float(f1_score(y, p, average="weighted", zero_division=0)) if len(sub) else float("nan")}
    return out


# ------------------------------------------------------------------------------------ representations + t-SNE
def _classifier(model: nn.Module) -> nn.Module:
    for attr in CLASSIFIER_ATTRS:
        mod = getattr(model, attr, None)
        if isinstance(mod, nn.Module):
            return mod
    raise ValueError(f"{type(model).__name__} has no represent() and no {'/'.join(CLASSIFIER_ATTRS)} module")


def _capture(model: nn.Module):
    """Forward hooks that capture the fused representation → (handles, getter of the last batch's ``[B, T, d]``)."""
    import torch.nn.functional as F

    if getattr(model, "registry_name", "") == "ada2i" and hasattr(model, "afw") and hasattr(model, "encoders"):
        # Ada2I with AMW never calls ``fc``: its classifier reads the features after the last AFW layer (the
        # encoders' outputs without AFW), L2-normalised per modality when AMW is on — the same here.
        store: dict = {}
        if len(model.afw):
            handles = [model.afw[-1].register_forward_hook(lambda _m, _a, out: store.update(out[0]))]
        else:
            handles = [model.encoders[m].register_forward_hook(lambda _m, _a, out, m=m: store.__setitem__(m, out))
                       for m in model.modalities]

        def get():
            parts = [store[m] for m in model.modalities]
            return torch.cat([F.normalize(p, dim=-1) for p in parts] if model.amw else parts, dim=-1)

        return handles, get
    captured: list[torch.Tensor] = []
    module = _classifier(model)
    handles = [module.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))]

    def get():
        if not captured:
            raise ValueError(f"{type(model).__name__}: its classifier module is not called by forward; "
                             "define represent(feats, present, mask, speaker)")
        return captured[-1]  # the call that produced the returned logits is the last one

    return handles, get


@torch.no_grad()
def representations(model: nn.Module, data: list[dict], device: str = "cpu", batch_size: int = 16):
    """Fused utterance representations ``[N, d]`` (float32) and their (dialogue_id, utterance_id) keys."""
    from pipeline.training.dataset import collate

    model.eval()
    handles, get = ([], None) if hasattr(model, "represent") else _capture(model)
    feats, keys = [], []
    try:
        for s in range(0, len(data), batch_size):
            chunk = data[s: s + batch_size]
            b = collate(chunk, device)
            args = (b["feats"], b["present"], b["mask"], b["speaker"])
            if get is None:
                z = model.represent(*args)
            else:
                model(*args)
                z = get()
            feats.append(z[b["mask"]].float().cpu())
            keys += [(d["dialogue_id"], int(u)) for d in chunk for u in d["utterance_id"]]
    finally:
        for h in handles:
            h.remove()
    return torch.cat(feats).numpy(), keys


def tsne_coords(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``x``; perplexity min(30, (n-1)/3) so tiny test sets work (sklearn needs perplexity < n)."""
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("non-finite values in the representations: no t-SNE")
    n = len(x)
    if n < 3:
        return np.zeros((n, 2)) if n else np.zeros((0, 2))
    perplexity = float(max(1.0, min(30.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def write_tsne(model: nn.Module, data: list[dict], labels: list[str], reports: str | Path, device: str = "cpu",
               max_points: int = 5000, point_labels: list[str] | None = None) -> Path:
    """``reports/plots/tsne.csv`` (x, y, label, dialogue_id, utterance_id; one row per utterance) + ``reports/tsne.png``.

    ``point_labels``: each utterance's legend name in ``data`` order (regression: a target's tertile) instead of
    its class from ``labels``."""
    out = Path(reports)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    try:
        x, keys = representations(model, data, device)
    except (ValueError, KeyError, IndexError) as e:  # a model we cannot read: an empty table that says so
        log.warning("no t-SNE: %s", e)
        atomic_write_text("x,y,label,dialogue_id,utterance_id\n", out / "plots" / "tsne.csv")
        plot_scatter(pd.DataFrame(columns=["x", "y", "label"]), out / "tsne.png", f"no t-SNE: {e}"[:120])
        return out / "plots" / "tsne.csv"
    y = np.concatenate([d["label"] for d in data])
    names = np.asarray(labels)
    shown = np.asarray(point_labels, dtype=object) if point_labels is not None else \
        np.asarray([names[i] if i >= 0 else "unlabelled" for i in y], dtype=object)
    if len(x) > max_points:  # keep t-SNE's cost bounded; a fixed draw so reruns agree
        keep = np.sort(np.random.default_rng(0).choice(len(x), max_points, replace=False))
        x, shown, keys = x[keep], shown[keep], [keys[i] for i in keep]
    xy = tsne_coords(x)
    df = pd.DataFrame({"x": xy[:, 0].round(4), "y": xy[:, 1].round(4),
                       "label": list(shown),
                       "dialogue_id": [k[0] for k in keys], "utterance_id": [k[1] for k in keys]})
    atomic_write_text(df.to_csv(index=False), out / "plots" / "tsne.csv")
    plot_scatter(df, out / "tsne.png", "t-SNE of the fused test representations (SUMMER Fig. 6)")
    return out / "plots" / "tsne.csv"


# -------------------------------------------------------------------------------------------------- efficiency
def _lstm_flops(module: nn.LSTM, inputs) -> int:
    """Matrix FLOPs of an LSTM call (torch's counter has no formula for ``aten.lstm``): per step, direction and
    layer, 4 gates × 2 × (input·hidden + hidden·hidden), the count torch gives a GRU with 3 gates."""
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = int(x.batch_sizes.sum())
    else:
        steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
    dirs = 2 if module.bidirectional else 1
    h = module.hidden_size
    total = 0
    for layer in range(module.num_layers):
        d_in = module.input_size if layer == 0 else h * dirs
        total += steps * dirs * 4 * 2 * (d_in * h + h * h)
    return total


def count_flops(model: nn.Module, *inputs) -> int:
    """FLOPs of one forward call (``torch.utils.flop_counter``: a multiply-add counts 2), with PyTorch's fused
    attention fast path off (the counter does not see inside it) and LSTMs counted by ``_lstm_flops``."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    extra = [0]
    hooks = [m.register_forward_hook(lambda mod, args, _out: extra.__setitem__(0, extra[0] + _lstm_flops(mod, args)))
             for m in model.modules() if isinstance(m, nn.LSTM)]
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for h in hooks:
            h.remove()
    return int(fc.get_total_flops()) + extra[0]


def synthetic_dialogues(n: int, dims: dict[str, int], n_classes: int, length: int | None = None,
                        seed: int = 0) -> list[dict]:
    """Random dialogues (MELD-like lengths, mean ≈ 9.6, or a fixed ``length``) in the engine's format."""
    rng = np.random.default_rng(seed)
    lengths = [length] * n if length else np.clip(np.rint(rng.gamma(2.0, 4.8, n)), 1, 24).astype(int)
    return [dict(dialogue_id=f"d{k}", utterance_id=np.arange(T), label=rng.integers(0, n_classes, T),
                 speaker=rng.integers(0, 2, T),
                 feats={m: rng.standard_normal((T, d), dtype=np.float32) for m, d in dims.items()},
                 present={m: np.ones(T, bool) for m in dims}) for k, T in enumerate(lengths)]


def efficiency(name: str, cfg: dict, dims: dict[str, int], n_classes: int, train_cfg: dict | None = None,
               dialogue_len: int = 10, epoch_dialogues: int = 0, repeats: int = 5) -> dict:
    """Parameters, FLOPs and inference latency for one dialogue of ``dialogue_len`` utterances; with
    ``epoch_dialogues`` > 0 also the time of one training epoch over that many random MELD-like dialogues."""
    from models import get_model
    from pipeline.training.dataset import collate
    from pipeline.training.engine import Engine, EngineConfig, seed_everything

    seed_everything(0)
    cfg = dict(cfg)
    if cfg.get("teacher_path"):  # an untrained teacher of the same size costs the same
        cfg["teacher_path"] = None
    model = get_model(name, input_dims=dims, n_classes=n_classes, **cfg)
    b = collate(synthetic_dialogues(1, dims, n_classes, dialogue_len), "cpu")
    args = (b["feats"], b["present"], b["mask"], b["speaker"])
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()),
           "flops_per_dialogue": count_flops(model, *args), "dialogue_len": dialogue_len}
    with torch.no_grad():
        model(*args)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(*args)
            times.append(time.perf_counter() - t0)
    row["latency_ms_per_dialogue"] = 1000 * float(np.median(times))
    if epoch_dialogues:
        ecfg = EngineConfig.from_params(train_cfg or {})
        engine = Engine(model, ecfg, device="cpu", labels=[str(i) for i in range(n_classes)])
        data = synthetic_dialogues(epoch_dialogues, dims, n_classes, seed=1)
        t0 = time.perf_counter()
        engine.train_epoch(data, np.random.default_rng(0), epoch=0)
        row["train_s_per_epoch"] = time.perf_counter() - t0
        row["epoch_dialogues"] = epoch_dialogues
    return row


def efficiency_table(rows: list[dict]) -> str:
    head = ("| model | params | GFLOPs / dialogue | inference ms / dialogue | train s / epoch |\n"
            "|---|---:|---:|---:|---:|\n")
    body = "".join(f"| {r['model']} | {r['params']:,} | {r['flops_per_dialogue'] / 1e9:.4f} | "
                   f"{r['latency_ms_per_dialogue']:.1f} | "
                   f"{r['train_s_per_epoch']:.1f} |\n" if "train_s_per_epoch" in r else
                   f"| {r['model']} | {r['params']:,} | {r['flops_per_dialogue'] / 1e9:.4f} | "
                   f"{r['latency_ms_per_dialogue']:.1f} | – |\n" for r in rows)
    return head + body


def _recipe_overlay(params: dict, recipe: str | None) -> dict:
    """params.yaml with a recipe's ``set`` applied (dotted keys); the recipe file is ``recipes/<name>.yaml``."""
    import copy

    import yaml

    p = copy.deepcopy(params)
    if not recipe:
        return p
    path = Path("recipes") / f"{recipe}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no recipe {path}")
    for key, value in (yaml.safe_load(path.read_text()).get("set") or {}).items():
        node = p
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return p


def main() -> None:
    from models import list_models
    from pipeline.common import load_params, setup_logging

    setup_logging()
    ap = argparse.ArgumentParser(description="Efficiency of every registered model (params, FLOPs, latency, epoch)")
    ap.add_argument("what", choices=["efficiency"])
    ap.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    ap.add_argument("--dims", default="t=768,a=6373,v=512", help="feature widths, e.g. t=1024,a=6373,v=512")
    ap.add_argument("--modalities", default="tav")
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--dialogue-len", type=int, default=10, help="utterances per dialogue (MELD mean ≈ 9.6)")
    ap.add_argument("--epoch-dialogues", type=int, default=1038, help="0: skip the epoch timing (MELD train: 1038)")
    ap.add_argument("--recipe", action="append", default=[], help="model=recipe_name: that model at its recipe sizes")
    ap.add_argument("--out", default="reports/results/efficiency")
    args = ap.parse_args()
    dims_all = {k: int(v) for k, v in (kv.split("=") for kv in args.dims.split(","))}
    dims = {m: dims_all[m] for m in args.modalities}
    recipes = dict(r.split("=", 1) for r in args.recipe)
    params = load_params()
    rows = []
    for name in args.models or list_models():
        p = _recipe_overlay(params, recipes.get(name))
        cfg = (p.get("model_params") or {}).get(name) or {}
        rows.append(efficiency(name, cfg, dims, args.classes, p.get("train"), args.dialogue_len, args.epoch_dialogues))
        rows[-1]["recipe"] = recipes.get(name, "params.yaml")
        log.info("%s", rows[-1])
    out = Path(args.out)
    atomic_write_text(json.dumps(rows, indent=1) + "\n", out.with_suffix(".json"))
    md = (efficiency_table(rows) + f"\nFeatures {args.dims} ({args.modalities}), {args.classes} classes; FLOPs "
          f"(torch.utils.flop_counter) and latency for one {args.dialogue_len}-utterance dialogue on CPU with "
          f"{torch.get_num_threads()} thread(s); epoch: {args.epoch_dialogues} random MELD-like dialogues.\n")
    atomic_write_text(md, out.with_suffix(".md"))
    log.info("wrote %s.{md,json}", out)


if __name__ == "__main__":
    main()
