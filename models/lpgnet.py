"""LPGNet — He & Xiao, "LPGNet: A Lightweight Network with Parallel Attention and Gated Fusion for Multimodal
Emotion Recognition", 2025 (arXiv:2508.08925). Builds on SDT (Ma et al., "A Transformer-Based Model with
Self-Distillation for Multimodal ERC", IEEE TMM 2023; github.com/butterfliesss/SDT), whose structure it lightens.

Paper (Sec. 3) → here:
  1. LPIA, modality-wise local encoding (Sec. 3.3 (1)): a kernel-1 Conv1d per modality into ``hidden``
     (``ModalityProjector(kind="conv1d")``). No speaker embeddings anywhere (``speaker`` is ignored).
  2. Four-way parallel attention (Sec. 3.3 (2)): one single-layer dot-product attention per branch, all run
     side by side instead of stacked transformer layers: tt (intra-text), aa (intra-acoustic), at (audio keys →
     text stream), ta (text keys → audio stream). The branch ``s→m`` updates stream ``m``: queries from ``m``,
     keys/values from ``s`` (SDT's ``a_t``: audio attends for text).
     With visual features (T+A+V, beyond the paper) the pairs generalise to every ordered pair: each stream
     ``m`` gets its intra branch ``m→m`` and one inter branch ``s→m`` per other modality ``s`` — 3 intra + 6
     inter branches for tav, as in SDT's nine transformers; any subset works (one modality: intra only).
  3. Mask-aware attention (Sec. 3.3 (3)): boolean masks (``attention_mask``) over real, present utterances of
     query and key modality; the whole dialogue is visible (no window: SDT's choice).
  4. Two-stage residual enhancement (Sec. 3.3 (4)): (i) global compression — the mean of the stream's branch
     outputs through 1×1 Conv1d → BatchNorm → LeakyReLU, added to the stream's input; (ii) a position-wise
     FFN with a residual (pre-LayerNorm, as SDT's PositionwiseFeedForward).
  5. Dual-gated fusion (Sec. 3.4): unimodal gates u_m = h_m ⊙ σ(W_m h_m), then softmax modality weights
     α = softmax_m(W u_m) per feature and z = Σ_m α_m ⊙ u_m (``UnimodalGate``, ``SoftmaxModalityFusion``).
  6. Emotion classifier on z (a linear layer, SDT's ``all_output_layer``).
  7. Self-distillation (Sec. 3.5): unimodal heads (ReLU → Dropout → Linear on u_m, as SDT) trained with hard
     CE and a KL to the fused prediction at temperature τ. Total loss
     L = λ_task·CE(z) + λ_CE·Σ_m CE(m) + λ_KL·Σ_m KL(softmax(z/τ) ‖ softmax(ŷ_m/τ)), λ = 1.5, 1.0, 0.3 (Table 6).

Interpretations (the published text leaves these open; chosen here, see also README):
  * "the mean" fed to global compression is the mean over the stream's parallel branch outputs (per utterance),
    BatchNorm statistics come from real, present utterances only (``MaskedBatchNorm1d``).
  * Sinusoidal utterance positions are added after the projection (``positions``), as SDT does; the paper
    removes speaker embeddings, not positions — set ``positions: false`` to drop them too.
  * KL: teacher = fused logits, detached; students = unimodal heads; computed on each student's real, present
    utterances only, with log-probabilities on both sides (``log_target=True``: no 0·log 0 at padding); summed
    over modalities, averaged over utterances, no τ² factor (SDT). Unimodal CEs use the engine's class weights.
  * Engine contract: the engine adds its own (weighted) task CE once, so ``aux_loss`` adds (λ_task − 1)·CE(z)
    as ``task_extra``: the optimised total equals the paper's weighting exactly.
  * Heads and distillation are training-only: in eval mode ``forward`` returns plain logits.

Ablations (Table 3) as params: ``inter: false`` (no inter-modal attention), ``intra: false`` (no intra-modal
attention), ``ffn: false`` (no position-wise FFN), ``dual_gate: false`` (streams averaged over present
modalities instead of the two gates), unimodal = ``train.modalities=t`` (or ``a``); plus ``distill: false``
(fused CE only) and ``compress: false`` (no global compression stage).
"""
from __future__ import annotations

from itertools import permutations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (FeedForward, MaskedBatchNorm1d, ModalityProjector, MultiHeadAttention,
                           PointwiseConv1d, SoftmaxModalityFusion, UnimodalGate, attention_mask, pool_modalities,
                           sinusoidal_positions)
from models.registry import register_model


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, tau: float = 1.0):
    """KL(softmax(teacher/τ) ‖ softmax(student/τ)) averaged over the ``valid`` positions; teacher detached.

    Positions are selected before the divergence and both sides are log-probabilities, so padding can never
    produce 0·log 0 (NaN) terms. No valid position → a zero that still depends on ``student`` (gradient 0).
    """
    if not valid.any():
        return student.sum() * 0.0
    s = F.log_softmax(student[valid].float() / tau, dim=-1)
    t = F.log_softmax(teacher.detach()[valid].float() / tau, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True)


def masked_ce(logits: torch.Tensor, label: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor | None):
    """Cross-entropy over ``valid`` positions (class-weighted like the engine's); zero when none is valid."""
    keep = valid & (label >= 0)
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), label[keep], weight=weight)


class GlobalCompression(nn.Module):
    """Stage one of LPIA's residual enhancement: 1×1 Conv1d → BatchNorm → LeakyReLU (Sec. 3.3 (4))."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.conv, self.bn = PointwiseConv1d(d, d), MaskedBatchNorm1d(d)
        self.act, self.drop = nn.LeakyReLU(), nn.Dropout(dropout)

    def forward(self, c: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.bn(self.conv(c), valid)))


@register_model("lpgnet")
class LPGNet(nn.Module):
    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, heads: int = 4,
                 ff_mult: int = 1, dropout: float = 0.2, intra: bool = True, inter: bool = True,
                 compress: bool = True, ffn: bool = True, dual_gate: bool = True, positions: bool = True,
                 distill: bool = True, lambda_task: float = 1.5, lambda_ce: float = 1.0, lambda_kl: float = 0.3,
                 tau: float = 1.0):
        super().__init__()
        if not (intra or inter):
            raise ValueError("lpgnet: intra and inter attention cannot both be off (LPIA would be empty)")
        if tau <= 0:
            raise ValueError(f"lpgnet: temperature tau must be > 0; got {tau}")
        self.proj = ModalityProjector(input_dims, hidden, dropout, kind="conv1d")
        mods = self.proj.modalities
        # Branch s→m: stream m attends to modality s. T+A: tt, aa (intra), at, ta (inter); T+A+V: all pairs.
        self.sources = {m: ([m] if intra else []) + ([s for s in mods if s != m] if inter else []) for m in mods}
        pairs = [(s, m) for m in mods for s in self.sources[m]]
        assert not inter or set(permutations(mods, 2)) <= set(pairs)
        self.attn = nn.ModuleDict({s + m: MultiHeadAttention(hidden, heads, dropout) for s, m in pairs})
        with_branches = [m for m in mods if self.sources[m]]
        self.compress = nn.ModuleDict({m: GlobalCompression(hidden, dropout) for m in with_branches}) \
            if compress else None
        if ffn:
            self.ff_norm = nn.ModuleDict({m: nn.LayerNorm(hidden) for m in mods})
            self.ff = nn.ModuleDict({m: FeedForward(hidden, ff_mult, dropout) for m in mods})
        self.ffn, self.positions, self.dual_gate = ffn, positions, dual_gate
        self.drop = nn.Dropout(dropout)
        if dual_gate:
            self.uni_gate = nn.ModuleDict({m: UnimodalGate(hidden) for m in mods})
            # softmax over a single modality is the constant 1: only built when there is something to weigh
            self.fusion = SoftmaxModalityFusion(hidden) if len(mods) > 1 else None
        self.head = nn.Linear(hidden, n_classes)
        self.distill = distill
        if distill:
            self.uni_head = nn.ModuleDict({m: nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))
                                           for m in mods})
        self.lambda_task, self.lambda_ce, self.lambda_kl, self.tau = lambda_task, lambda_ce, lambda_kl, tau

    def lpia(self, x: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Parallel branch attentions per stream, then the two residual stages (Sec. 3.3)."""
        h = {}
        for m, xm in x.items():
            if self.sources[m]:
                outs = [self.attn[s + m](xm, x[s], attention_mask(valid[m], valid[s])) for s in self.sources[m]]
                c = torch.stack(outs).mean(0)  # the branches run in parallel; their mean is compressed
                xm = xm + (self.compress[m](c, valid[m]) if self.compress is not None else self.drop(c))
            if self.ffn:
                xm = xm + self.drop(self.ff[m](self.ff_norm[m](xm)))
            h[m] = xm * valid[m].unsqueeze(-1).to(xm.dtype)
        return h

    def forward(self, feats, present, mask, speaker):
        del speaker  # LPGNet is speaker-independent by design: no speaker embeddings
        x = self.proj(feats, present)
        mods = self.proj.modalities
        valid = {m: present[m] & mask for m in mods}
        if self.positions:
            any_x = x[mods[0]]
            pe = sinusoidal_positions(any_x.shape[1], any_x.shape[2], any_x.device, any_x.dtype)
            x = {m: (v + pe) * valid[m].unsqueeze(-1).to(v.dtype) for m, v in x.items()}
        h = self.lpia(x, valid)
        if self.dual_gate:
            u = {m: self.uni_gate[m](h[m]) for m in mods}
            z = self.fusion([u[m] for m in mods], [valid[m] for m in mods]) if self.fusion is not None else u[mods[0]]
        else:
            u = h
            z = pool_modalities([h[m] for m in mods], [valid[m] for m in mods], "mean")
        logits = self.head(self.drop(z))
        if not (self.training and self.distill):
            return logits
        uni = {m: self.uni_head[m](u[m]) for m in mods}
        kl = sum(distillation_kl(uni[m], logits, valid[m], self.tau) for m in mods)
        return {"logits": logits, "unimodal": uni, "valid": valid, "losses": {"kl": self.lambda_kl * kl}}

    def aux_loss(self, out, batch) -> dict[str, torch.Tensor]:
        """Label-dependent terms: (λ_task − 1)·CE(fused) and λ_CE·Σ_m CE(unimodal head m)."""
        if not isinstance(out, dict):
            return {}
        label, w = batch["label"], batch.get("class_weight")
        losses = {"uni_ce": self.lambda_ce * sum(masked_ce(out["unimodal"][m], label, v, w)
                                                 for m, v in out["valid"].items())}
        if self.lambda_task != 1.0:
            losses["task_extra"] = (self.lambda_task - 1.0) * masked_ce(out["logits"], label, label >= 0, w)
        return losses
