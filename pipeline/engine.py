"""The one training engine every model uses: dialogue batches in, a best-on-dev model out.

Per epoch: shuffled dialogue batches (``pipeline.dataset.collate``: padding masked, absent modalities flagged),
CUDA + bf16 autocast when a GPU is there (CPU otherwise), (inverse-frequency weighted) cross-entropy plus any
auxiliary losses, backward, model hook, gradient clipping, AdamW step; then dev metrics, ReduceLROnPlateau and
early stopping on dev weighted F1, and the best-on-dev weights kept. Only train and dev are ever seen here.

Model contract (``models.layers``): ``forward(feats, present, mask, speaker)`` returns logits ``[B, T, C]``.
Optional hooks, so models with extra objectives plug in without a second training loop:
  * ``forward`` may return a dict ``{"logits": ..., "losses": {name: scalar}}``; the losses (already weighted by
    the model) are added to the task loss in training and logged per epoch as ``train/aux_<name>``.
  * ``aux_loss(out, batch) -> {name: scalar}``: the same, for losses that need the labels (``batch["label"]``,
    padding = -100), e.g. distillation or modality-disparity terms. Called in training only; the task loss's
    class weights reach it as ``batch["class_weight"]`` (None when unweighted), so extra CE terms can match it.
  * ``before_step(epoch=, step=)``: after backward, before clipping and the optimiser step — gradient
    modulation (e.g. Ada2I's 1 − tanh(α·ρ)) edits ``p.grad`` here.
  * ``epoch_logs() -> {name: float}``: extra per-epoch values logged as ``train/<name>`` (e.g. ρ per modality).
"""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.dataset import collate
from pipeline.metrics import classification_metrics
from pipeline.schema import EMOTIONS

log = logging.getLogger("merc.engine")
MODALITIES = ("t", "a", "v")


def parse_modalities(spec: str | list | tuple) -> list[str]:
    """``"tav"``, ``"ta"``, ``[t, a, v]`` … → ``["t", "a", "v"]`` (canonical order); bad or repeated names raise."""
    mods = list(spec) if not isinstance(spec, str) else list(spec.replace(",", "").replace(" ", ""))
    bad = [m for m in mods if m not in MODALITIES]
    if not mods or bad or len(set(mods)) != len(mods):
        raise ValueError(f"train.modalities must be a non-empty subset of {MODALITIES} (e.g. 'tav', 'ta'); got {spec!r}")
    return [m for m in MODALITIES if m in mods]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """w_c = N / (C · n_c); classes absent from training get weight 1 (they never appear in the loss)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


@dataclass
class EngineConfig:
    """The ``train`` params the loop reads (extra keys such as ``seed`` or ``modalities`` are ignored here)."""

    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    patience: int = 8           # epochs without a better dev weighted F1 before stopping
    lr_patience: int = 3        # ReduceLROnPlateau on dev weighted F1
    lr_factor: float = 0.5
    weighted_loss: bool = True
    amp: bool = True            # bf16 autocast on CUDA; no effect on CPU

    @classmethod
    def from_params(cls, tp: dict) -> "EngineConfig":
        return cls(**{f.name: tp[f.name] for f in fields(cls) if f.name in tp})


def split_output(out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A model's output → (logits, auxiliary losses)."""
    if isinstance(out, dict):
        return out["logits"], dict(out.get("losses") or {})
    return out, {}


def _autocast(device: str, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, data: list[dict], batch_size: int, device: str, amp: bool = True):
    """Predictions, labels, logits ``[N, C]`` (float32, CPU) and (dialogue_id, utterance_id) keys for ``data``."""
    model.eval()
    preds, labels, logits_all, keys = [], [], [], []
    for s in range(0, len(data), batch_size):
        chunk = data[s : s + batch_size]
        b = collate(chunk, device)
        with _autocast(device, amp):
            logits, _ = split_output(model(b["feats"], b["present"], b["mask"], b["speaker"]))
        m = b["mask"]
        logits_all.append(logits[m].float().cpu())
        labels.append(b["label"][m].cpu())
        keys += [(d["dialogue_id"], int(u)) for d in chunk for u in d["utterance_id"]]
    logits = torch.cat(logits_all)
    return logits.argmax(-1).numpy(), torch.cat(labels).numpy(), logits, keys


class Engine:
    """Trains one model under one config; ``fit`` returns the best-on-dev weights and the per-epoch history."""

    def __init__(self, model: nn.Module, cfg: EngineConfig, device: str | None = None,
                 weight: torch.Tensor | None = None, labels: list[str] = EMOTIONS):
        self.device = device or resolve_device()
        self.model, self.cfg, self.labels = model.to(self.device), cfg, labels
        self.weight = weight.to(self.device) if weight is not None and cfg.weighted_loss else None
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="max", factor=cfg.lr_factor,
                                                                patience=cfg.lr_patience)

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), label.reshape(-1),
                               weight=self.weight, ignore_index=-100)

    def train_epoch(self, data: list[dict], rng: np.random.Generator, epoch: int = 0) -> dict:
        """One pass over ``data`` in a seeded random order; metrics come from the training batches themselves."""
        model, cfg = self.model, self.cfg
        model.train()
        order = rng.permutation(len(data))
        sums: dict[str, float] = {}
        preds, labels, n_total = [], [], 0
        for step, s in enumerate(range(0, len(order), cfg.batch_size)):
            b = collate([data[i] for i in order[s : s + cfg.batch_size]], self.device)
            b["class_weight"] = self.weight
            with _autocast(self.device, cfg.amp):
                out = model(b["feats"], b["present"], b["mask"], b["speaker"])
                logits, aux = split_output(out)
                if hasattr(model, "aux_loss"):
                    aux.update(model.aux_loss(out, b))
            task = self.loss(logits, b["label"])
            loss = task + sum(aux.values()) if aux else task
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if hasattr(model, "before_step"):
                model.before_step(epoch=epoch, step=step)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.opt.step()
            n = int(b["mask"].sum())
            n_total += n
            for k, v in {"loss": task, **{f"aux_{k}": v for k, v in aux.items()}}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            preds.append(logits.detach()[b["mask"]].argmax(-1).cpu())
            labels.append(b["label"][b["mask"]].cpu())
        m = classification_metrics(torch.cat(labels).numpy(), torch.cat(preds).numpy(), self.labels)
        out = {k: v / max(n_total, 1) for k, v in sums.items()}
        out.update({k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1")}, lr=self.opt.param_groups[0]["lr"])
        if hasattr(model, "epoch_logs"):
            out.update(model.epoch_logs())
        return out

    def evaluate(self, data: list[dict]) -> dict:
        pred, y, logits, _ = predict(self.model, data, self.cfg.batch_size, self.device, self.cfg.amp)
        m = classification_metrics(y, pred, self.labels)
        weight = None if self.weight is None else self.weight.cpu()
        loss = F.cross_entropy(logits, torch.from_numpy(y), weight=weight)  # same loss as training: comparable
        return {"loss": float(loss), **{k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1")}}

    def fit(self, train_d: list[dict], dev_d: list[dict], seed: int = 0, live=None, desc: str = "train") -> dict:
        """Train until ``epochs`` or early stop; keep the best-dev-weighted-F1 weights (earliest on ties)."""
        rng = np.random.default_rng(seed)
        best = {"dev_weighted_f1": -1.0, "epoch": -1, "state_dict": None}
        history, bad = [], 0
        for epoch in tqdm(range(self.cfg.epochs), desc=desc, unit="epoch", leave=False):
            row = {"train": self.train_epoch(train_d, rng, epoch), "dev": self.evaluate(dev_d)}
            history.append(row)
            if live is not None:
                for split, metrics in row.items():
                    for k, v in metrics.items():
                        live.log_metric(f"{split}/{k}", v)
                live.next_step()
            dev_f1 = row["dev"]["weighted_f1"]
            self.sched.step(dev_f1)
            if dev_f1 > best["dev_weighted_f1"]:
                state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                best, bad = {"dev_weighted_f1": dev_f1, "epoch": epoch, "state_dict": state}, 0
            else:
                bad += 1
            if bad >= self.cfg.patience:
                log.info("early stop at epoch %d (best dev weighted F1 %.4f at epoch %d)", epoch,
                         best["dev_weighted_f1"], best["epoch"])
                break
        return {**best, "epochs_run": len(history), "history": history}


__all__ = ["Engine", "EngineConfig", "class_weights", "parse_modalities", "predict", "resolve_device",
           "seed_everything", "split_output"]
