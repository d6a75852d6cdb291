"""SUMMER — Li, Yu, Huang, Yan, "Unimodal-driven Distillation in Multimodal Emotion Recognition with Dynamic
Fusion", ICME 2025 (arXiv:2503.23721): Sparse Dynamic Mixture of Experts, Hierarchical Cross-Modal Fusion and
Interactive Knowledge Distillation from a frozen unimodal teacher.

Two phases (the teacher has its own DVC stage, ``pipeline.train_teacher``, so it is cached across model switches):
  1. ``summer_teacher``: a unimodal model (text by default) trained with the shared engine and saved.
  2. ``summer``: the multimodal student; it loads that teacher, freezes it (weights kept as buffers: part of the
     checkpoint, invisible to the optimiser, always in eval mode) and uses it for the DynAttn mask and the IKD losses.

Paper pipeline and where it lives here:
  * Eq. 1–2, utterance embedding (``UtteranceEmbedding``): each modality's features projected to ``hidden``
    (shared ``ModalityProjector``), plus a speaker identity embedding and an absolute (sinusoidal) position
    encoding of the turn in the dialogue.
  * Eq. 3–5, SDMoE (``SDMoE``, per modality): ``experts`` BiGRU experts over the dialogue; a token-wise gate whose
    logits are relaxed with Gumbel noise at a learnable temperature τ (Eq. 4, ``F.gumbel_softmax``; noise only in
    training); dynamic routing (Eq. 5) drops a gate weight lying outside μ_e ± k·σ_e (k = ``route_sigma`` = 2) and
    renormalises the rest. Residual + LayerNorm around the mixture.
  * Eq. 6, Global MoE (``GlobalMoE``): a softmax gate over the concatenated HCMF branch outputs weights them into
    one utterance representation h_S.
  * Eq. 7–8, teacher-guided DynAttn (``dynattn_mask``): cosine similarity of the frozen teacher's features between
    turns; query i may attend key j when s_ij ≥ μ_i + ``dyn_threshold``·σ_i (row statistics over the dialogue's
    turns), the turn itself always.
  * Eq. 9–10, HCMF: intra-modal DynAttn per modality (residual transformer blocks), then hierarchical cross-modal
    fusion text → audio → visual (the running fused stream is the query, the next modality key/value), each level a
    residual cross-attention block. Branches = the intra-modal outputs and every fusion level.
  * Eq. 11–15, IKD (``aux_loss``): the teacher's classifier applied to student features h_S — KL to the teacher's
    own predictions (temperature ``kd_temperature``) and CE to the labels (label-smoothed) — plus the inner MSE
    between h_S and the teacher features h_T; κ weights ``kappa_kl``, ``kappa_ce``, ``kappa_mse``.

Interpretations (the paper leaves these open; our choices):
  * Routing statistics μ_e, σ_e are per expert over the batch's real utterances in training (the weight of one
    utterance is an outlier among the batch's weights for that expert: per utterance over a handful of experts a
    value can never lie 2σ out). Evaluation uses running estimates (momentum ``route_momentum``, like batch norm)
    so a prediction never depends on the rest of the batch.
  * Label smoothing ε of the task loss: the engine's cross-entropy stays as it is and ``aux_loss`` adds
    ε/(1−ε)·H(u, p), which makes the total proportional to the label-smoothed CE (1−ε)·CE + ε·H(u, p).
  * The KL term uses log-space targets (``log_target=True``) over real utterances only: a probability target
    that is exactly 0 at padding gives NaN from the first step (the pitfall of SDT's code under recent torch).
  * Student and teacher share the width (``hidden``), so the teacher's classifier and the MSE apply to h_S
    directly; a mismatch is an error rather than a silent projection.
  * With no ``teacher_path`` (unit tests, benchmarks) the frozen teacher is an untrained one of the configured
    shape, on ``teacher.modality`` or, when the student lacks it, its first modality; a warning says so.

Ablations (paper Tables 3–4): ``moe: plain`` (softmax gate, no Gumbel noise, τ or routing), ``fusion:
self_attention`` (plain per-modality self-attention instead of teacher-guided hierarchical fusion), ``ikd:
false`` (no distillation losses), ``teacher.modality`` (t | a | v: the teacher stage retrains), and the modality
subsets through ``train.modalities``.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (ModalityProjector, SpeakerEmbedding, TransformerBlock, TransformerEncoder,
                           attention_mask, masked_rnn, ordered, sinusoidal_positions)
from models.registry import register_model

log = logging.getLogger("merc.models.summer")

TEACHER_ARCH = ("hidden", "heads", "layers", "dropout", "max_speakers")  # the teacher-block keys that shape it


class UtteranceEmbedding(nn.Module):
    """Eq. 1–2: x_m = Proj_m(f_m) + SpkEmb(speaker) + PE(position), for every modality in ``input_dims``."""

    def __init__(self, input_dims: dict[str, int], hidden: int, dropout: float, max_speakers: int):
        super().__init__()
        self.proj = ModalityProjector(input_dims, hidden, dropout)
        self.speaker = SpeakerEmbedding(max_speakers, hidden)
        self.modalities = self.proj.modalities

    def forward(self, feats, present, speaker) -> dict[str, torch.Tensor]:
        z = self.proj(feats, present)
        any_z = next(iter(z.values()))
        ctx = self.speaker(speaker) + sinusoidal_positions(any_z.shape[1], any_z.shape[2], any_z.device, any_z.dtype)
        return {m: x + ctx for m, x in z.items()}


@register_model("summer_teacher")
class SummerTeacher(nn.Module):
    """SUMMER's unimodal teacher: Eq. 1–2 embedding → dialogue transformer → features h_T → linear classifier.

    Trained first (stage ``train_teacher``); its ``features`` and ``classifier`` are what the student distils from.
    """

    required_modalities = ("t",)  # with the default modality; `modality` picks another

    def __init__(self, input_dims: dict[str, int], n_classes: int, modality: str = "t", hidden: int = 128,
                 heads: int = 4, layers: int = 1, dropout: float = 0.2, max_speakers: int = 16):
        super().__init__()
        if modality not in input_dims:
            raise ValueError(f"summer_teacher needs the {modality!r} modality; got {sorted(input_dims)}")
        self.modality = modality
        self.embed = UtteranceEmbedding({modality: input_dims[modality]}, hidden, dropout, max_speakers)
        self.encoder = TransformerEncoder(hidden, heads, layers, dropout)
        self.classifier = nn.Linear(hidden, n_classes)

    def features(self, feats, present, mask, speaker) -> torch.Tensor:
        x = self.embed({self.modality: feats[self.modality]}, {self.modality: present[self.modality]}, speaker)
        return self.encoder(x[self.modality], attention_mask(mask, mask))

    def forward(self, feats, present, mask, speaker):
        return self.classifier(self.features(feats, present, mask, speaker))


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a buffer of the same name: it stays in ``state_dict`` (and moves
    with ``.to``) but is no parameter, so no optimiser, weight decay or gradient can ever touch it."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            del sub._parameters[name]
            sub.register_buffer(name, None if p is None else p.detach())
    return module.eval()


class SDMoE(nn.Module):
    """Eq. 3–5: BiGRU experts over the dialogue mixed by a token-wise gate (sparse: Gumbel + τ + dynamic routing)."""

    def __init__(self, hidden: int, experts: int, sparse: bool = True, route_sigma: float = 2.0,
                 tau: float = 1.0, route_momentum: float = 0.1, dropout: float = 0.1):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"summer: hidden must be even (BiGRU experts of hidden/2 per direction); got {hidden}")
        self.gate = nn.Linear(hidden, experts)
        self.experts = nn.ModuleList(nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True)
                                     for _ in range(experts))
        self.norm, self.drop = nn.LayerNorm(hidden), nn.Dropout(dropout)
        self.sparse, self.k, self.momentum = sparse, route_sigma, route_momentum
        if sparse:
            self.log_tau = nn.Parameter(torch.tensor(math.log(tau)))  # learnable temperature (Eq. 4)
            self.register_buffer("running_mean", torch.full((experts,), 1.0 / experts))
            self.register_buffer("running_std", torch.ones(experts))  # wide at first: nothing dropped
        self.dropped = [0.0, 0.0]  # dropped, total gate weights since the last reset (logged per epoch)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(min=1e-2)

    def route(self, g: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Eq. 5: zero gate weights outside μ_e ± k·σ_e (per expert), renormalise; batch statistics in training
        (running ones updated), running statistics in eval. An utterance whose weights would all go keeps them."""
        if self.training and int(valid.sum()) > 1:
            sel = g.detach()[valid]  # [N, E]
            mu, sd = sel.mean(0), sel.std(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mu.to(self.running_mean.dtype), self.momentum)
                self.running_std.lerp_(sd.to(self.running_std.dtype), self.momentum)
        else:
            mu, sd = self.running_mean, self.running_std
        keep = (g.detach() - mu).abs() <= self.k * sd + 1e-6
        kept = g * keep
        s = kept.sum(-1, keepdim=True)
        out = torch.where(s > 0, kept / s.clamp(min=1e-9), g)
        if self.training:
            self.dropped[0] += float((~keep & valid.unsqueeze(-1)).sum())
            self.dropped[1] += float(valid.sum()) * g.shape[-1]
        return out

    def weights(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)
        if not self.sparse:
            return logits.softmax(-1)  # plain MoE ablation
        tau = self.tau
        g = F.gumbel_softmax(logits, tau=tau) if self.training else (logits / tau).softmax(-1)  # Eq. 4
        return self.route(g, valid)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        g = self.weights(x, valid)  # [B, T, E]
        out = sum(g[..., e : e + 1] * masked_rnn(expert, x, mask) for e, expert in enumerate(self.experts))
        return self.norm(x + self.drop(out))


class GlobalMoE(nn.Module):
    """Eq. 6: a softmax gate over the concatenated branch outputs weights the branches into one vector."""

    def __init__(self, hidden: int, branches: int):
        super().__init__()
        self.gate = nn.Linear(hidden * branches, branches)

    def forward(self, branches: list[torch.Tensor]) -> torch.Tensor:
        w = self.gate(torch.cat(branches, dim=-1)).softmax(-1)  # [B, T, K]
        return (torch.stack(branches, dim=-1) * w.unsqueeze(-2)).sum(-1)


def dynattn_mask(h_t: torch.Tensor, mask: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Eq. 7–8, teacher-guided DynAttn mask ``[B, T, T]``: i may attend j when the teacher's features make j at
    least as similar to i as μ_i + threshold·σ_i (cosine similarity, statistics over the dialogue's real turns);
    every turn may attend itself; padding never takes part."""
    h = F.normalize(h_t.float(), dim=-1)
    s = h @ h.transpose(1, 2)  # [B, T, T]
    pair = attention_mask(mask, mask)
    n = pair.sum(-1, keepdim=True).clamp(min=1)
    mu = (s * pair).sum(-1, keepdim=True) / n
    sd = (((s - mu) ** 2) * pair).sum(-1, keepdim=True).div(n).sqrt()
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return pair & ((s >= mu + threshold * sd - 1e-6) | eye)


@register_model("summer")
class Summer(nn.Module):
    """The SUMMER student (see the module docstring); returns logits and keeps what ``aux_loss`` needs."""

    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, heads: int = 4,
                 experts: int = 4, moe: str = "sdmoe", fusion: str = "hcmf", ikd: bool = True,
                 route_sigma: float = 2.0, tau: float = 1.0, route_momentum: float = 0.1, dyn_threshold: float = 0.0,
                 kd_temperature: float = 1.0, kappa_kl: float = 1.0, kappa_ce: float = 1.0, kappa_mse: float = 1.0,
                 label_smoothing: float = 0.1, dropout: float = 0.2, max_speakers: int = 16,
                 teacher_path: str | None = None, teacher: dict | None = None):
        super().__init__()
        if moe not in ("sdmoe", "plain") or fusion not in ("hcmf", "self_attention"):
            raise ValueError(f"summer: moe is sdmoe|plain, fusion is hcmf|self_attention; got {moe}, {fusion}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"summer: label_smoothing must be in [0, 1); got {label_smoothing}")
        self.embed = UtteranceEmbedding(input_dims, hidden, dropout, max_speakers)
        mods = self.modalities = self.embed.modalities
        self.moe = nn.ModuleDict({m: SDMoE(hidden, experts, moe == "sdmoe", route_sigma, tau, route_momentum, dropout)
                                  for m in mods})
        self.fusion, self.dyn_threshold = fusion, dyn_threshold
        self.intra = nn.ModuleDict({m: TransformerBlock(hidden, heads, dropout) for m in mods})
        # HCMF's hierarchy: the first modality (text when chosen) is the anchor, the others fused in t, a, v order.
        self.cross = nn.ModuleDict({m: TransformerBlock(hidden, heads, dropout, cross=True) for m in mods[1:]}) \
            if fusion == "hcmf" else None
        n_branches = len(mods) + (len(mods) - 1 if fusion == "hcmf" else 0)
        self.global_moe = GlobalMoE(hidden, n_branches) if n_branches > 1 else None
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, n_classes)
        self.ikd, self.T, self.eps = ikd, kd_temperature, label_smoothing
        self.kappa = {"kl": kappa_kl, "ce": kappa_ce, "mse": kappa_mse}
        self.teacher = self._teacher(input_dims, n_classes, hidden, heads, dropout, max_speakers, teacher_path,
                                     dict(teacher or {})) if (ikd or fusion == "hcmf") else None
        self._cache: dict = {}

    @staticmethod
    def _teacher(input_dims, n_classes, hidden, heads, dropout, max_speakers, path, tcfg) -> SummerTeacher:
        if path:
            from pipeline.checkpoint import load_checkpoint  # weights_only: a teacher file cannot run code

            ck = load_checkpoint(path, "summer teacher", "run the train_teacher stage (`dvc repro train_teacher`) "
                                 "or set model_params.summer.teacher_path")
            missing = [k for k in ("modality", "arch", "input_dims", "labels", "state_dict") if k not in ck]
            if missing:
                raise ValueError(f"summer: the teacher at {path} lacks {missing}: retrain it (dvc repro train_teacher)")
            m, arch = ck["modality"], ck["arch"]
            if tcfg.get("modality", m) != m:
                raise ValueError(f"summer: the teacher at {path} is a {m!r} teacher but teacher.modality is "
                                 f"{tcfg['modality']!r}: retrain it (dvc repro train_teacher)")
            if m not in input_dims or input_dims[m] != ck["input_dims"][m]:
                raise ValueError(f"summer: the {m!r} teacher needs {m!r} features of width {ck['input_dims'][m]}; "
                                 f"the student has {input_dims} (choose train.modalities containing {m!r}, "
                                 "or a teacher modality the student has)")
            if len(ck["labels"]) != n_classes or arch["hidden"] != hidden:
                raise ValueError(f"summer: teacher ({len(ck['labels'])} classes, hidden {arch['hidden']}) does not "
                                 f"match the student ({n_classes} classes, hidden {hidden})")
            t = SummerTeacher({m: input_dims[m]}, n_classes, modality=m, **arch)
            t.load_state_dict(ck["state_dict"])
        else:
            m = tcfg.get("modality", "t")
            m = m if m in input_dims else ordered(input_dims)[0]
            arch = {"hidden": hidden, "heads": heads, "dropout": dropout, "max_speakers": max_speakers,
                    **{k: tcfg[k] for k in TEACHER_ARCH if k in tcfg}}
            if arch["hidden"] != hidden:
                raise ValueError(f"summer: teacher.hidden {arch['hidden']} must equal hidden {hidden}")
            log.warning("summer: no teacher_path, so the frozen %r teacher is UNTRAINED (fine for tests only)", m)
            t = SummerTeacher({m: input_dims[m]}, n_classes, modality=m, **arch)
        return freeze_as_buffers(t)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: no dropout, whatever the engine asks of the student
        return self

    def forward(self, feats, present, mask, speaker):
        valid = {m: present[m] & mask for m in self.modalities}
        x = self.embed(feats, present, speaker)
        x = {m: self.moe[m](x[m], mask, valid[m]) for m in self.modalities}  # SDMoE (Eq. 3–5)
        h_t = z_t = None
        if self.teacher is not None and (self.fusion == "hcmf" or self.training):
            with torch.no_grad():
                h_t = self.teacher.features(feats, present, mask, speaker)
                z_t = self.teacher.classifier(h_t)
        if self.fusion == "hcmf":
            dyn = dynattn_mask(h_t, mask, self.dyn_threshold)  # Eq. 7–8
            keys = {m: dyn & valid[m].unsqueeze(1) for m in self.modalities}
            z = {m: self.intra[m](x[m], keys[m]) for m in self.modalities}  # intra-modal DynAttn
            branches = [z[m] for m in self.modalities]
            u = z[self.modalities[0]]
            for m, block in self.cross.items():  # Eq. 9–10: text → audio → visual
                u = block(u, keys[m], kv=z[m])
                branches.append(u)
        else:  # ablation: plain self-attention per modality over the whole dialogue
            branches = [self.intra[m](x[m], attention_mask(mask, valid[m])) for m in self.modalities]
        h = branches[0] if self.global_moe is None else self.global_moe(branches)  # Eq. 6
        h = self.norm(h)
        logits = self.head(h)
        if self.training:  # for aux_loss, called by the engine right after this forward
            self._cache = {"logits": logits, "h": h, "h_t": h_t, "z_t": z_t}
        return logits

    def aux_loss(self, out, batch) -> dict[str, torch.Tensor]:
        """Eq. 11–15 on the real utterances: κ_kl·KL + κ_ce·CE (teacher classifier on h_S)
        + κ_mse·MSE(h_S, h_T), and the label-smoothing term of the task loss."""
        c, self._cache = self._cache, {}
        if not c or c["logits"] is not out:
            raise RuntimeError("summer.aux_loss needs the output of the forward call just before it (training mode)")
        valid = batch["mask"] & (batch["label"] >= 0)
        logits, y = c["logits"][valid].float(), batch["label"][valid]
        losses = {}
        if self.eps > 0:
            losses["smooth"] = self.eps / (1 - self.eps) * (-logits.log_softmax(-1).mean(-1)).mean()
        if self.ikd:
            h, h_t = c["h"][valid].float(), c["h_t"][valid].float()
            z_s2t = self.teacher.classifier(c["h"])[valid].float()  # the teacher's classifier on student features
            T = self.T
            kl = F.kl_div((z_s2t / T).log_softmax(-1), (c["z_t"][valid].float() / T).log_softmax(-1),
                          reduction="batchmean", log_target=True) * T * T
            ce = F.cross_entropy(z_s2t, y, label_smoothing=self.eps)
            losses.update(ikd_kl=self.kappa["kl"] * kl, ikd_ce=self.kappa["ce"] * ce,
                          ikd_mse=self.kappa["mse"] * F.mse_loss(h, h_t))
        return losses

    def epoch_logs(self) -> dict[str, float]:
        """τ and the share of gate weights dropped by dynamic routing, per modality (then reset)."""
        logs = {}
        for m, moe in self.moe.items():
            if moe.sparse:
                logs[f"tau_{m}"] = float(moe.tau.detach())
                logs[f"route_dropped_{m}"] = moe.dropped[0] / max(moe.dropped[1], 1.0)
                moe.dropped = [0.0, 0.0]
        return logs
