"""The one training engine every model uses: dialogue batches in, a best-on-dev model out.

Per epoch: shuffled dialogue batches (``pipeline.training.dataset.collate``: padding masked, absent modalities flagged),
CUDA + bf16 autocast when a GPU is there (CPU otherwise), (inverse-frequency weighted) cross-entropy plus any
auxiliary losses, backward, model hook, gradient clipping, optimiser step; then dev metrics, the lr scheduler and
early stopping on the dev monitor, and the best-on-dev weights kept. Only train and dev are ever seen here.

Options (``EngineConfig`` = the ``train:`` params; the defaults are the project's own recipe):
  * ``optimizer``: ``adamw`` (decoupled weight decay, Loshchilov & Hutter) | ``adam`` (coupled L2: the decay
    term ``weight_decay · θ`` is added to the gradient before Adam's moment estimates, torch's ``Adam``).
  * ``scheduler``: ``plateau`` (ReduceLROnPlateau on the monitor, ``lr_patience``/``lr_factor``, once per
    epoch) | ``linear_warmup`` (per optimiser step k = 0 … T−1, T = epochs · steps per epoch:
    lr_k = lr · (k+1)/W for k < W, then lr · (T−k)/(T−W), W = ``warmup_steps`` — linear warm-up, then linear
    decay towards 0 at the last step; DialogueTRM §5.2; the same formula as ``pipeline.finetune_text``) |
    ``none`` (constant lr).
  * ``plateau_monitor``: the dev metric the plateau scheduler watches when it differs from ``monitor``
    (null: ``monitor``) — Ada2I's official code steps its plateau on dev loss but selects on dev F1.
  * ``monitor``: the dev metric for the best checkpoint, the plateau scheduler and early stopping:
    ``weighted_f1`` (higher is better) | ``loss`` (dev cross-entropy with the training class weights; lower
    is better). Ties keep the earliest epoch.
  * ``early_stopping``: stop after ``patience`` epochs without a better monitor; ``false`` runs all
    ``epochs`` and still returns the best-on-dev weights.
  * ``grad_clip``: max global L2 norm of the gradients (null or 0: no clipping); ``clip_before_hooks``: clip
    before the model's ``before_step`` hook (Ada2I's official code clips before its modulation) instead of
    after it (default).
  * ``weighted_loss``: class weights in the CE, w_c = N / (C · n_c) over the training labels
    (``class_weights``); ``false``: unweighted CE.
  * ``regression_loss`` (regression tasks only): ``mse`` (mean squared error over the real utterances and the
    targets) | ``ccc`` (1 − the mean over targets of Lin's CCC computed over the batch's real utterances, the
    AVEC-style objective).

Regression (issue #20; ``Engine(..., targets=[names])``, the dialogues carry ``target`` ``[n, K]``): the model's
``[B, T, K]`` output is the prediction (its head is ``n_classes = K`` wide — one linear output per target), the
task loss is ``regression_loss``, and the dev metrics are ``pearson_r`` (mean over targets), ``mae``, ``ccc``
and ``loss``. ``monitor: weighted_f1`` (the default) means the task's primary dev metric: mean Pearson r in
regression (``pearson_r`` may be named directly). Pearson r is undefined (``None``) over fewer than 2 dev
utterances or constant predictions/targets: from the first such epoch the checkpoint is selected on dev loss,
with a warning, and the plateau scheduler skips epochs whose monitor is undefined. A batch without a labelled
utterance contributes nothing: its losses are zeros, and (single process) no optimiser step is taken.
Models with label-dependent auxiliary losses read ``batch["task"]`` and ``batch["target"]``
(``models.layers.task_loss``).

Model contract (``models.layers``): ``forward(feats, present, mask, speaker)`` returns logits ``[B, T, C]``.
Optional hooks, so models with extra objectives plug in without a second training loop:
  * ``forward`` may return a dict ``{"logits": ..., "losses": {name: scalar}}``; the losses (already weighted by
    the model) are added to the task loss in training and logged per epoch as ``train/aux_<name>``.
  * ``aux_loss(out, batch) -> {name: scalar}``: the same, for losses that need the labels (``batch["label"]``,
    padding = -100), e.g. distillation or modality-disparity terms. Called in training only; the task loss's
    class weights reach it as ``batch["class_weight"]`` (None when unweighted), so extra CE terms can match it.
  * ``before_step(epoch=, step=)``: after backward, before the optimiser step and (unless
    ``clip_before_hooks``) before clipping — gradient modulation (e.g. Ada2I's 1 − tanh(α·ρ)) edits ``p.grad``
    here.
  * ``after_step(epoch=, step=, lr=)``: after the optimiser step (``lr``: the step's learning rate) — e.g.
    Ada2I Eq. 19's parameter noise η·h(θ). Under DDP it must act identically on every rank.
  * ``epoch_logs() -> {name: float}``: extra per-epoch values logged as ``train/<name>`` (e.g. ρ per modality).

Multi-GPU / multi-process (``torchrun --nproc-per-node N``): ``init_distributed`` reads torchrun's environment
and starts the process group (NCCL on CUDA, gloo on CPU); the Engine then wraps the model in
DistributedDataParallel, gives each rank its share of the epoch's seeded dialogue permutation
(DistributedSampler semantics: the same permutation on every rank, padded to a multiple of N, rank r takes
every N-th), splits ``batch_size`` (the global batch) over the ranks, and gathers train and dev metrics so
every rank takes the same dev-based decisions (lr cut, early stop, best epoch). Hooks are called on the bare
model; ``before_step`` sees the all-reduced gradients, and what it changes is averaged over the ranks again so
the replicas stay identical. Writing (DVCLive, checkpoint) is the caller's job on rank 0 (``is_main``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.training.dataset import collate
from pipeline.errors import NonFiniteError, UserError
from pipeline.training.metrics import classification_metrics, defined, regression_metrics
from pipeline.schema import EMOTIONS

log = logging.getLogger("merc.engine")
MODALITIES = ("t", "a", "v")


def parse_modalities(spec: str | list | tuple) -> list[str]:
    """``"tav"``, ``"ta"``, ``[t, a, v]`` … → ``["t", "a", "v"]`` (canonical order); bad or repeated names raise."""
    mods = list(spec) if not isinstance(spec, str) else list(spec.replace(",", "").replace(" ", ""))
    bad = [m for m in mods if m not in MODALITIES]
    if not mods or bad or len(set(mods)) != len(mods):
        raise UserError(f"train.modalities must be a non-empty subset of {MODALITIES} (e.g. 'tav', 'ta'); got {spec!r}")
    return [m for m in MODALITIES if m in mods]


def check_engine_params(tp: dict, where: str = "train") -> None:
    """One-line ``UserError`` for engine settings that cannot train (``epochs: 0`` would save no weights)."""
    def bad(key, need):
        v = tp[key]
        hint = " (YAML reads 1e-3 as text: write 0.001)" if isinstance(v, str) and "e" in v.lower() else ""
        return UserError(f"params.yaml {where}.{key} must be {need}, got {v!r}{hint}")

    for key in ("epochs", "batch_size", "patience", "lr_patience"):
        if key in tp and not (key in ("patience", "lr_patience") and tp[key] is None) and \
                (isinstance(tp[key], bool) or not isinstance(tp[key], int) or tp[key] < 1):
            raise bad(key, "a whole number >= 1")
    for key in ("lr",):
        if key in tp and (isinstance(tp[key], bool) or not isinstance(tp[key], (int, float))
                          or not np.isfinite(tp[key]) or tp[key] <= 0):
            raise bad(key, "a number > 0 (e.g. 0.001)")
    for key in ("weight_decay", "grad_clip"):
        if key in tp and tp[key] is not None and (isinstance(tp[key], bool) or not isinstance(tp[key], (int, float))
                                                  or not np.isfinite(tp[key]) or tp[key] < 0):
            raise bad(key, "a number >= 0")
    if "lr_factor" in tp and not (isinstance(tp["lr_factor"], (int, float)) and 0 < tp["lr_factor"] <= 1):
        raise bad("lr_factor", "in (0, 1]")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless a process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs and writes outputs."""
    return world()[0] == 0


def init_distributed() -> tuple[int, int]:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns (rank, world size).

    NCCL when CUDA is there (each rank on GPU ``LOCAL_RANK``, so ``"cuda"`` means that GPU), gloo on CPU.
    """
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        log.info("rank %d of %d (%s)", dist.get_rank(), n, dist.get_backend())
    return world()


def rank_share(n: int, rank: int, size: int) -> np.ndarray:
    """Positions of an epoch's permutation that ``rank`` trains on: padded to a multiple of ``size`` by
    wrapping around (as torch's DistributedSampler), then every ``size``-th; every rank gets as many."""
    if size == 1:
        return np.arange(n)
    total = -(-n // size) * size
    return (np.arange(total) % n)[rank::size]


def _gather(obj, size: int) -> list:
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """w_c = N / (C · n_c); classes absent from training get weight 1 (they never appear in the loss)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("plateau", "linear_warmup", "none")
MONITORS = ("weighted_f1", "loss", "pearson_r")
HIGHER_IS_BETTER = ("weighted_f1", "pearson_r")
REGRESSION_LOSSES = ("mse", "ccc")


@dataclass
class EngineConfig:
    """The ``train`` params the loop reads (extra keys such as ``seed`` or ``modalities`` are ignored here).

    The defaults are the project's recipe (AdamW, plateau on dev weighted F1, early stop, clip 1.0 after hooks)."""

    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0    # max gradient L2 norm; null or 0: no clipping
    patience: int = 8           # epochs without a better dev monitor before stopping
    lr_patience: int = 3        # ReduceLROnPlateau on the dev monitor
    lr_factor: float = 0.5
    weighted_loss: bool = True
    amp: bool = True            # bf16 autocast on CUDA; no effect on CPU
    optimizer: str = "adamw"    # adamw (decoupled decay) | adam (coupled L2)
    scheduler: str = "plateau"  # plateau | linear_warmup | none
    warmup_steps: int = 0       # linear_warmup: optimiser steps of linear warm-up
    monitor: str = "weighted_f1"  # weighted_f1 | loss: dev metric for best epoch, plateau, early stopping
    early_stopping: bool = True   # false: run all epochs (the best-on-dev weights are still kept)
    clip_before_hooks: bool = False  # clip before the model's before_step hook (Ada2I official) or after it
    plateau_monitor: str | None = None  # the plateau scheduler's dev metric (null: monitor)
    regression_loss: str = "mse"  # regression tasks: mse | ccc

    def __post_init__(self):
        if self.plateau_monitor is not None and self.plateau_monitor not in MONITORS:
            raise ValueError(f"train.plateau_monitor must be null or one of {', '.join(MONITORS)}; "
                             f"got {self.plateau_monitor!r}")
        for key, allowed in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("monitor", MONITORS),
                             ("regression_loss", REGRESSION_LOSSES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"train.{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        if self.scheduler == "linear_warmup" and int(self.warmup_steps) < 0:
            raise ValueError(f"train.warmup_steps must be >= 0; got {self.warmup_steps!r}")

    @classmethod
    def from_params(cls, tp: dict) -> "EngineConfig":
        return cls(**{f.name: tp[f.name] for f in fields(cls) if f.name in tp})


def linear_warmup_factor(k: int, warmup: int, total: int) -> float:
    """lr multiplier at optimiser step ``k`` (0-based): (k+1)/W while k < W, then (T−k)/(T−W) down towards 0."""
    if k < warmup:
        return (k + 1) / warmup
    return max(0.0, (total - k) / max(total - warmup, 1))


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean over targets of Lin's CCC, ``pred``/``target`` ``[N, K]`` (population moments over N)."""
    pm, tm = pred.mean(0), target.mean(0)
    cov = ((pred - pm) * (target - tm)).mean(0)
    ccc = 2 * cov / (pred.var(0, unbiased=False) + target.var(0, unbiased=False) + (pm - tm) ** 2 + 1e-8)
    return 1 - ccc.mean()


def regression_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The regression task loss over the real utterances (``mask``) of ``[B, T, K]`` predictions and targets;
    a zero that still depends on ``pred`` when there is none (a mean over nothing would be NaN)."""
    if not mask.any():
        return pred.float().sum() * 0.0
    p, t = pred.float()[mask], target.float()[mask]
    return F.mse_loss(p, t) if kind == "mse" else ccc_loss(p, t)


def resolve_monitor(monitor: str, task: str) -> str:
    """``weighted_f1`` is the task's primary metric: mean Pearson r in regression; r has no classification use."""
    if task == "regression" and monitor == "weighted_f1":
        return "pearson_r"
    if task == "classification" and monitor == "pearson_r":
        raise ValueError("train.monitor: pearson_r is a regression metric; use weighted_f1 or loss")
    return monitor


def split_output(out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A model's output → (logits, auxiliary losses)."""
    if isinstance(out, dict):
        return out["logits"], dict(out.get("losses") or {})
    return out, {}


def _autocast(device: str, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, data: list[dict], batch_size: int, device: str, amp: bool = True):
    """Predictions, labels, logits ``[N, C]`` (float32, CPU) and (dialogue_id, utterance_id) keys for ``data``.

    Regression data (dialogues with ``target``): the predictions are the outputs ``[N, K]`` themselves and the
    labels the targets ``[N, K]``."""
    model.eval()
    labels, logits_all, keys = [], [], []
    regression = bool(data) and "target" in data[0]
    for s in range(0, len(data), batch_size):
        chunk = data[s : s + batch_size]
        b = collate(chunk, device)
        with _autocast(device, amp):
            logits, _ = split_output(model(b["feats"], b["present"], b["mask"], b["speaker"]))
        m = b["mask"]
        logits_all.append(logits[m].float().cpu())
        labels.append((b["target"] if regression else b["label"])[m].cpu())
        keys += [(d["dialogue_id"], int(u)) for d in chunk for u in d["utterance_id"]]
    logits = torch.cat(logits_all)
    pred = logits.numpy().copy() if regression else logits.argmax(-1).numpy()
    return pred, torch.cat(labels).numpy(), logits, keys


class Engine:
    """Trains one model under one config; ``fit`` returns the best-on-dev weights and the per-epoch history."""

    def __init__(self, model: nn.Module, cfg: EngineConfig, device: str | None = None,
                 weight: torch.Tensor | None = None, labels: list[str] = EMOTIONS, targets: list[str] | None = None):
        self.device = device or resolve_device()
        self.model, self.cfg, self.labels = model.to(self.device), cfg, labels
        self.targets = list(targets or [])
        self.task = "regression" if self.targets else "classification"
        self.monitor = resolve_monitor(cfg.monitor, self.task)
        self.plateau_monitor = resolve_monitor(cfg.plateau_monitor or cfg.monitor, self.task)
        self.rank, self.world_size = world()
        self.net = model  # what training calls: the bare model, or its DDP wrapper
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: a model may leave an absent modality's branch out of the graph
            self.net = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()]
                                               if self.device.startswith("cuda") else None,
                                               find_unused_parameters=True)
        self.weight = weight.to(self.device) if weight is not None and cfg.weighted_loss and \
            self.task == "classification" else None
        # adam: torch adds weight_decay·θ to the gradient (coupled L2); adamw decays θ directly (decoupled)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = None       # per-epoch scheduler (plateau), stepped with the dev monitor
        self.step_sched = None  # per-step scheduler (linear_warmup), built by ``fit`` once T is known
        if cfg.scheduler == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt, mode="max" if self.plateau_monitor in HIGHER_IS_BETTER else "min",
                factor=cfg.lr_factor,
                patience=cfg.lr_patience)

    def steps_per_epoch(self, n_train: int) -> int:
        """Optimiser steps in one epoch over ``n_train`` dialogues (this rank's share under DDP)."""
        batch_size = self.cfg.batch_size if self.world_size == 1 else max(1, self.cfg.batch_size // self.world_size)
        return math.ceil(len(rank_share(n_train, self.rank, self.world_size)) / batch_size)

    def _clip(self) -> None:
        if self.cfg.grad_clip:  # null / 0: no clipping
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)

    def loss(self, logits: torch.Tensor, label: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        """The task loss: (weighted) cross-entropy, or ``regression_loss`` on ``batch["target"]``."""
        if self.task == "regression":
            return regression_loss(logits, batch["target"], batch["mask"], self.cfg.regression_loss)
        if not (label >= 0).any():  # no labelled utterance: a mean over none is NaN; contribute nothing
            return logits.float().sum() * 0.0
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), label.reshape(-1),
                               weight=self.weight, ignore_index=-100)

    def _labelled(self, b: dict) -> torch.Tensor:
        """The utterances of batch ``b`` that carry a label (classification) or targets (regression)."""
        return b["mask"] if self.task == "regression" else b["mask"] & (b["label"] >= 0)

    def _train_metrics(self, y: np.ndarray, pred: np.ndarray) -> dict:
        if self.task == "regression":
            m = regression_metrics(y, pred, self.targets)
            return {k: m[k] for k in ("pearson_r", "mae", "ccc")}
        m = classification_metrics(y, pred, self.labels)
        return {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1")}

    def train_epoch(self, data: list[dict], rng: np.random.Generator, epoch: int = 0) -> dict:
        """One pass over ``data`` in a seeded random order; metrics come from the training batches themselves.

        Under DDP each rank takes its share of the same permutation, in batches of ``batch_size / N``."""
        model, cfg = self.model, self.cfg
        model.train()
        order = rng.permutation(len(data))
        batch_size = cfg.batch_size
        if self.world_size > 1:
            order = order[rank_share(len(order), self.rank, self.world_size)]
            batch_size = max(1, cfg.batch_size // self.world_size)
        sums: dict[str, float] = {}
        preds, labels, n_total = [], [], 0
        for step, s in enumerate(range(0, len(order), batch_size)):
            b = collate([data[i] for i in order[s : s + batch_size]], self.device)
            b["class_weight"] = self.weight
            with _autocast(self.device, cfg.amp):
                out = self.net(b["feats"], b["present"], b["mask"], b["speaker"])
                logits, aux = split_output(out)
                if hasattr(model, "aux_loss"):
                    aux.update(model.aux_loss(out, b))
            task = self.loss(logits, b["label"], b)
            loss = task + sum(aux.values()) if aux else task
            keep = self._labelled(b)
            n = int(keep.sum())
            if n == 0 and self.world_size == 1:
                # nothing to learn from: no update at all (a zero loss would still move Adam's moments and apply
                # weight decay). Under DDP every rank must reach backward's all-reduce, so the zero loss goes on.
                self._check_finite({"task": task, **{f"aux_{k}": v for k, v in aux.items()}}, epoch, step)
                log.debug("epoch %d step %d: no labelled utterance in the batch, skipped", epoch, step)
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            # stop at the first NaN/inf instead of training on (and saving) garbage; after backward, so under
            # DDP every rank reaches the gradient check (the all-reduce spreads a NaN to all of them)
            self._check_finite({"task": task, **{f"aux_{k}": v for k, v in aux.items()}}, epoch, step)
            if cfg.clip_before_hooks:
                self._clip()
            if hasattr(model, "before_step"):
                model.before_step(epoch=epoch, step=step)
                if self.world_size > 1:
                    self._average_grads()  # a hook using rank-local statistics must not split the replicas
            if not cfg.clip_before_hooks:
                self._clip()
            if hasattr(model, "before_step"):
                self._check_finite({}, epoch, step, "after before_step")  # a hook may divide by zero too
            self.opt.step()
            if hasattr(model, "after_step"):
                model.after_step(epoch=epoch, step=step, lr=self.opt.param_groups[0]["lr"])
            if self.step_sched is not None:
                self.step_sched.step()
            n_total += n  # labelled utterances: the loss terms are means over them
            for k, v in {"loss": task, **{f"aux_{k}": v for k, v in aux.items()}}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            if self.task == "regression":
                preds.append(logits.detach()[keep].float().cpu())
                labels.append(b["target"][keep].cpu())
            else:
                preds.append(logits.detach()[keep].argmax(-1).cpu())
                labels.append(b["label"][keep].cpu())
        if not labels:  # every batch was skipped (no labelled utterance anywhere): nothing was learnt
            raise UserError("training data has no labelled utterance in any batch: check the prepare stage's "
                            "labels / targets")
        y, pred = torch.cat(labels).numpy(), torch.cat(preds).numpy()
        if self.world_size > 1:  # the epoch's metrics over all ranks' batches
            parts = _gather((sums, n_total, y, pred), self.world_size)
            sums = {k: sum(p[0].get(k, 0.0) for p in parts) for k in parts[0][0]}
            n_total = sum(p[1] for p in parts)
            y, pred = np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])
        out = {k: v / max(n_total, 1) for k, v in sums.items()}
        out.update(self._train_metrics(y, pred), lr=self.opt.param_groups[0]["lr"])
        if hasattr(model, "epoch_logs"):
            logs = model.epoch_logs()
            if self.world_size > 1:  # rank-local statistics (e.g. per-modality ρ): their mean over ranks
                parts = _gather(logs, self.world_size)
                logs = {k: float(np.mean([p[k] for p in parts if k in p])) for k in logs}
            out.update(logs)
        return out

    def _check_finite(self, terms: dict, epoch: int, step: int, when: str = "") -> None:
        """``NonFiniteError`` naming epoch, step and the loss term, or else the parameter whose gradient, is NaN/inf.

        One device sync per check (all flags stacked); names are looked up only once something is wrong."""
        grads = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        flags = [torch.isfinite(v.detach()).all() for v in terms.values()] + [torch.isfinite(g).all() for _, g in grads]
        if not flags or bool(torch.stack(flags).all()):
            return
        where = f"training stopped at epoch {epoch} step {step}{f' ({when})' if when else ''}"
        hint = (f"lower train.lr (now {self.opt.param_groups[0]['lr']:g}), keep train.grad_clip on, or check "
                "the features")
        for name, v in terms.items():
            if not torch.isfinite(v.detach()).all():
                raise NonFiniteError(f"{where}: loss term {name!r} is {float(v.detach()):g} ({hint})")
        bad = next(n for (n, g) in grads if not torch.isfinite(g).all())
        raise NonFiniteError(f"{where}: the gradient of {bad!r} is non-finite though every loss term is finite "
                             f"({hint})")

    def _average_grads(self) -> None:
        for p in self.model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world_size

    def evaluate(self, data: list[dict]) -> dict:
        """Dev/test metrics; under DDP each rank predicts every N-th dialogue and all ranks get all logits."""
        if self.world_size > 1:
            share = data[self.rank :: self.world_size]
            width = len(self.targets) if self.task == "regression" else len(self.labels)
            empty_y = np.zeros((0, width), np.float32) if self.task == "regression" else np.zeros(0, np.int64)
            mine = predict(self.model, share, self.cfg.batch_size, self.device, self.cfg.amp)[1:3] if share \
                else (empty_y, torch.zeros(0, width))  # fewer dialogues than ranks
            parts = _gather(mine, self.world_size)
            y = np.concatenate([p[0] for p in parts])
            logits = torch.cat([p[1] for p in parts])
            pred = logits.numpy().copy() if self.task == "regression" else logits.argmax(-1).numpy()
            return self._metrics(y, pred, logits)
        pred, y, logits, _ = predict(self.model, data, self.cfg.batch_size, self.device, self.cfg.amp)
        return self._metrics(y, pred, logits)

    def _metrics(self, y: np.ndarray, pred: np.ndarray, logits: torch.Tensor) -> dict:
        if self.task == "regression":  # the training loss over the whole split (CCC over it, not per batch)
            t = torch.from_numpy(np.asarray(y, np.float32))
            loss = F.mse_loss(logits, t) if self.cfg.regression_loss == "mse" else ccc_loss(logits, t)
            m = regression_metrics(y, pred, self.targets)
            return {"loss": float(loss), **{k: m[k] for k in ("pearson_r", "mae", "ccc")}}
        m = classification_metrics(y, pred, self.labels)
        weight = None if self.weight is None else self.weight.cpu()
        loss = F.cross_entropy(logits, torch.from_numpy(y), weight=weight)  # same loss as training: comparable
        return {"loss": float(loss), **{k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1")}}

    def fit(self, train_d: list[dict], dev_d: list[dict], seed: int = 0, live=None, desc: str = "train") -> dict:
        """Train until ``epochs`` or early stop; keep the best-on-dev-monitor weights (earliest on ties).

        Returns the best epoch's ``dev_score`` (the task's primary dev metric, named by ``score_name``: weighted F1,
        or mean Pearson r in regression; also under ``dev_weighted_f1`` / ``dev_pearson_r``) and ``dev_loss``
        (whatever the monitor), ``epoch``, ``state_dict``, ``epochs_run`` and the per-epoch ``history``."""
        cfg = self.cfg
        if cfg.scheduler == "linear_warmup":
            total = cfg.epochs * self.steps_per_epoch(len(train_d))
            if cfg.warmup_steps >= total:
                log.warning("train.warmup_steps %d >= %d training steps: the lr never decays", cfg.warmup_steps,
                            total)
            self.step_sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda k: linear_warmup_factor(k, int(cfg.warmup_steps), total))
        rng = np.random.default_rng(seed)
        monitor = self.monitor  # "loss" from the first epoch whose dev monitor is undefined (see below)
        maximize = monitor in HIGHER_IS_BETTER
        score = "pearson_r" if self.task == "regression" else "weighted_f1"
        best = {"dev_score": -1.0, "score_name": score, f"dev_{score}": -1.0, "dev_loss": None, "epoch": -1,
                "state_dict": None}
        best_value = -math.inf if maximize else math.inf
        history, bad = [], 0
        for epoch in tqdm(range(self.cfg.epochs), desc=desc, unit="epoch", leave=False, disable=self.rank > 0):
            row = {"train": self.train_epoch(train_d, rng, epoch), "dev": self.evaluate(dev_d)}
            history.append(row)
            if live is not None:
                for split, metrics in row.items():
                    for k, v in metrics.items():
                        if defined(v):  # an undefined r is not a point on the curve
                            live.log_metric(f"{split}/{k}", v)
                live.next_step()
            if not defined(row["dev"][monitor]):
                # Pearson r is undefined (fewer than 2 dev rows, or constant predictions/targets): it cannot rank
                # epochs, and scoring it 0 would. Select on dev loss from here on, the incumbent keeping its loss.
                log.warning("epoch %d: dev %s is undefined (fewer than 2 dev utterances, or constant predictions or "
                            "targets): selecting the checkpoint on dev loss from this epoch on", epoch, monitor)
                monitor, maximize = "loss", False
                best_value = best["dev_loss"] if best["dev_loss"] is not None else math.inf
            value = row["dev"][monitor]
            if self.sched is not None:
                plateau = row["dev"][self.plateau_monitor]
                if defined(plateau):
                    self.sched.step(plateau)
                else:
                    log.warning("epoch %d: dev %s is undefined: the plateau scheduler skips this epoch", epoch,
                                self.plateau_monitor)
            if value > best_value if maximize else value < best_value:
                state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                best_value, bad = value, 0
                best = {"dev_score": row["dev"][score], "score_name": score, f"dev_{score}": row["dev"][score],
                        "dev_loss": row["dev"]["loss"], "epoch": epoch, "state_dict": state}
            else:
                bad += 1
            if cfg.early_stopping and bad >= cfg.patience:
                log.info("early stop at epoch %d (best dev %s %.4f at epoch %d)", epoch, monitor, best_value,
                         best["epoch"])
                break
        # ``monitor``: what selected the returned epoch ("loss" after a fallback); dev_score may then be None
        return {**best, "monitor": monitor, "epochs_run": len(history), "history": history}


__all__ = ["Engine", "EngineConfig", "check_engine_params", "class_weights", "init_distributed", "is_main",
           "linear_warmup_factor", "parse_modalities", "predict", "rank_share", "regression_loss", "resolve_device",
           "resolve_monitor", "seed_everything", "split_output", "world"]
