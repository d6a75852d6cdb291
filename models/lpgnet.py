"""LPGNet — He & Xiao, "LPGNet: A Lightweight Network with Parallel Attention and Gated Fusion for Multimodal
Emotion Recognition", 2025 (arXiv:2508.08925; ../shared/papers/lpgnet.txt). Builds on SDT (Ma et al., IEEE TMM
2023), whose structure it lightens.

Regression (``task: regression``, set by ``train`` from the prepared table; issue #20) — not in the paper: our
choice, because §3.6 is written for classes: the heads output one value per target, the unimodal heads' CE
becomes an MSE on the targets and L_KL an MSE between each unimodal output and the fused one (detached as the
KL's teacher), λ weights unchanged.

Paper → code (section / equation of the paper):
  §3.1, §3.3 (1)  X_s = Conv1D(X_s), s ∈ {t, a}: a Conv1d per modality into ``hidden``
                  (``ModalityProjector(kind="conv1d")``), kernel ``conv_kernel`` = 1 as the text says ("kernel size
                  1"). The same sentence gives it a second purpose, "localized context modeling across adjacent
                  utterances", which a kernel of 1 cannot serve: ``conv_kernel: 3`` (any odd k, zero "same"
                  padding; padded and absent entries enter as zeros) is that reading. No dropout after it
                  (``proj_dropout: false``: the formula has none; ``true`` = SDT's dropout on the encoder input).
                  Its bias: not in the paper: our choice (``proj_bias: false``), because SDT's official code
                  (model.py, ``nn.Conv1d(..., kernel_size=1, bias=False)``), whose input layer LPGNet keeps, has
                  none. No speaker embeddings anywhere (``speaker`` is ignored).
  §3.3 (2)        Attention(Q, K, V) = Softmax(QKᵀ/√d) V, four parallel branches (``LPIABranch.attn``):
                    X_tt = Attention(X_t, X_t, X_t)     X_aa = Attention(X_a, X_a, X_a)
                    X_at = Attention(X_a, X_t, X_t)     X_ta = Attention(X_t, X_a, X_a)
                  Branch ``xy`` has queries from x and keys/values from y (``operand_order: paper``, the formulas
                  as written). ``operand_order: swapped`` gives ``xy`` queries from y and keys/values from x —
                  SDT's "a→t" convention, which is how the prose "audio-to-text interaction" can also be read;
                  we follow the formulas because §3.4 pairs H_at with text (T_fused = Linear([H_t; H_at])) and
                  X_at's values are text in the written operands. ``heads`` defaults to 1: the formula has one
                  softmax scaled by √d. Learned Q/K/V/output projections: not in the formula; our choice,
                  because §3.3 calls them attention "blocks" (SDT's blocks have them). No dropout on the attention
                  weights (``attn_dropout: false``): A = Softmax(S) has none and §3.3 (4) places the method's one
                  Dropout in the FFN, so §4.3's rate 0.1 is that one; ``true`` drops the attention weights at
                  ``dropout`` as SDT's official MultiHeadedAttention does.
  §3.3 (3)        Mask-aware scores: boolean masks over valid utterances (frames in the Frame mode) of query and
                  key modality (``attention_mask``); the whole dialogue is visible. S = QKᵀ/√d on the mask,
                  −10⁹ off it, A = Softmax(S) (``mask_fill: paper``): a query with no valid key (a text utterance
                  of a dialogue without audio, in X_ta) attends uniformly to all keys, which are all zeroed
                  inputs, so it gets the value projection of zero whatever the padding length.
                  ``mask_fill: zero`` gives such a query an all-zero attention row instead (the convention of
                  ``layers.MultiHeadAttention`` the other models share). Padded queries' rows differ too, but the
                  branch output is zeroed there (below). In low precision the fill is the dtype's most negative
                  value when −10⁹ is out of range (float16).
  §3.3 (4)        Two-stage residual enhancement, per branch (the four outputs stay separate):
                    A_conv = Conv2D(Mean(Â)) — 1×1 conv → BatchNorm → LeakyReLU (``GlobalCompression``; the
                    text's 1×1 "Conv2D" over d channels is a per-vector linear map, written as a kernel-1
                    Conv1d; the LeakyReLU slope: not in the paper: our choice, because none is given —
                    PyTorch's default 0.01). "Mean"
                    is read as the mean over the utterance axis (valid positions only), the result "broadcast
                    back to the sequence dimension" (``compression: global``, the text's reading);
                    ``compression: per_utterance`` applies the block to every utterance of Â instead. Under
                    ``global`` the attention output reaches X_final only as one vector per dialogue (issue #27
                    measured a spread of 1e-7 over a dialogue's utterances; the tests check it is one vector), so the utterance-specific
                    part of X_final is the query Q alone; ``per_utterance`` keeps Â's per-utterance attention.
                    FFN(x) = W₂ Dropout(GELU(W₁ LayerNorm(x))), d_ff = ``ff_mult``·d: the text says "typically
                    2d or 4d" and picks neither; 2 here (our choice, because it is the lighter one of a network
                    built to be "lightweight"), 4 by ``ff_mult: 4``.
                    X_final = Q + A_conv + FFN(A_conv), Q = the branch's query input. X_final is zeroed at padded
                    query positions: not in the paper: our choice, because a padded position holds no utterance;
                    every later step (BatchNorm statistics, the means, the loss) reads valid positions only, so
                    no real output changes, and padding stays inert under any switch.
  §3.4 (1)        Unimodal gated fusion, one gate per branch: Z = σ(W_g H), H_gated = Z ⊙ H (four
                  ``UnimodalGate``s: H_t, H_a, H_at, H_ta), then T_fused = Linear([H_t; H_at]),
                  A_fused = Linear([H_a; H_ta]) (``fuse``; with one branch per stream: Linear(H)).
  §3.4 (2)        Multimodal gated fusion: α_T = Softmax(W T_fused), α_A = Softmax(W A_fused),
                  F_final = α_T·T_fused + α_A·A_fused. The softmax runs over the modality axis of
                  F = [T_fused, A_fused] ∈ R^{B×U×2×d}, per feature, with one shared W (``gate_softmax: modality``,
                  as F's definition implies); ``gate_softmax: feature`` is the formula read per modality
                  (softmax over the d features of W·X_fused).
  §3.5            E = W_c F_final + b_c; L_task = CE (the engine's task loss).
  §3.6            Students E_m = W_m ReLU(H_m) + b_m on H_m = the gated intra branch (H_t, H_a: the symbols of
                  §3.4; ``student_input: fused`` uses T_fused / A_fused instead). L_CE^m = CE(Ŷ_m);
                  L_KL^m = (1/N) Σ_i Σ_j ŷ^m_τ log(ŷ^m_τ / ŷ^teacher_τ) = KL(student ‖ teacher) as written
                  (``kl_direction: student_teacher``; ``teacher_student`` is the usual distillation direction).
                  L = λ_task·L_task + λ_CE·Σ_m L_CE^m + λ_KL·Σ_m L_KL^m; λ = 1.5, 1.0, 0.3 (Table 6), τ = 1 (§4.3).
  §4.4, Table 2   LPGNet(Frame) (``mode: frame``): each utterance is its own sequence of text tokens and audio
                  frames (truncated to ``max_len`` = 512); U is the token/frame axis. Inputs are
                  ``feats[m]: [B, T, L, F]`` with frame masks ``present[m]: [B, T, L]`` (``pipeline.training.dataset``
                  with ``sequences``: ``{a: frames}`` = ``audio.ssl.store_frames`` / the ``emotion2vec`` extractor's
                  frames; ``{t: frames}`` = the text stage's token states, ``text.store_tokens``: the
                  utterance's own tokens, BERT's 512 at most). A modality given as one vector per utterance
                  (``[B, T, F]``; ``sequences.<m>: null``, e.g. openSMILE audio, which has no frames) is a
                  one-frame sequence. Text alone works (``train.modalities: t``; ``recipes/lpgnet_iemocap4_frame``).
                  Both modalities are padded to one length, as the paper pads both to 512, so
                  [H_t; H_at] align position by position; F_final is averaged over the positions valid in any
                  modality into the utterance vector (not in the paper: our choice, the classifier of §3.5
                  needs one vector per utterance), and each student averages its H_m over its valid frames.

Not in the paper — our choices, switchable:
  * ``positions`` (default false): sinusoidal positions added after the projection (SDT has them; the paper
    describes none).
  * The teacher is detached in L_KL (``detach_teacher``): §3.6 transfers knowledge teacher → student.
  * BatchNorm statistics come from valid positions only (``MaskedBatchNorm1d``): padding must not move them.
  * Engine contract: the engine adds its own (possibly class-weighted) task CE once, so ``aux_loss`` adds
    (λ_task − 1)·CE as ``task_extra``; unimodal CEs use the engine's class weights. Heads and distillation are
    training-only: in eval mode ``forward`` returns plain logits.
  * With visual features (T+A+V, beyond the paper) every ordered pair is a branch; stream y fuses its intra
    branch and every ``xy``.

Ablations (Table 3): ``inter: false`` (no X_at, X_ta), ``intra: false`` (no X_tt, X_aa), ``ffn: false``
(X_final = Q + A_conv), ``dual_gate: false`` (no gates: F_final = mean of the Linear-fused streams — the table
names the ablation only, so which fusion replaces the gates is our reading: the plainest one that still uses
both streams); unimodal = ``train.modalities=t`` (or ``a``). Beyond Table 3 (not in the paper, for analysis):
``distill: false`` and ``compress: false`` (A_conv = Â). §4.3's hidden 768 is set by the recipes (default 128,
CPU-sized). The Frame mode pads to the batch's longest sequence (≤ 512), not to 512: the same outputs, because
padded keys are zeroed inputs (under either ``mask_fill``) and padded queries are zeroed and never averaged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (FeedForward, MaskedBatchNorm1d, ModalityProjector, MultiHeadAttention, PointwiseConv1d,
                           SoftmaxModalityFusion, UnimodalGate, attention_mask, check_task, ordered,
                           sinusoidal_positions, task_loss)
from models.registry import register_model

CHOICES = {"operand_order": ("paper", "swapped"), "compression": ("global", "per_utterance"),
           "gate_softmax": ("modality", "feature"), "kl_direction": ("student_teacher", "teacher_student"),
           "student_input": ("intra", "fused"), "mode": ("utterance", "frame"), "mask_fill": ("paper", "zero")}
MASK_FILL = {"paper": -1e9, "zero": None}  # §3.3 (3) "−10⁹ otherwise" | layers' all-zero row for a keyless query


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, tau: float = 1.0,
                    direction: str = "student_teacher", detach_teacher: bool = True) -> torch.Tensor:
    """§3.6 L_KL^m averaged over the ``valid`` positions, at temperature τ.

    ``student_teacher``: Σ_j ŷ^m_j log(ŷ^m_j / ŷ^teacher_j) (the paper's formula); ``teacher_student``: the
    reverse. Positions are selected first and both sides are log-probabilities, so padding cannot give
    0·log 0 (NaN). No valid position → a zero that still depends on ``student``.
    """
    if direction not in CHOICES["kl_direction"]:
        raise ValueError(f"lpgnet: kl_direction is student_teacher|teacher_student; got {direction!r}")
    if not valid.any():
        return student.sum() * 0.0
    teacher = teacher.detach() if detach_teacher else teacher
    s = F.log_softmax(student[valid].float() / tau, dim=-1)
    t = F.log_softmax(teacher[valid].float() / tau, dim=-1)
    p, log_p, log_q = (s.exp(), s, t) if direction == "student_teacher" else (t.exp(), t, s)
    return (p * (log_p - log_q)).sum(-1).mean()


def _mse_to_teacher(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor,
                    detach_teacher: bool = True) -> torch.Tensor:
    """Regression counterpart of ``distillation_kl``: MSE between the student's and the teacher's outputs."""
    if not valid.any():
        return student.sum() * 0.0
    teacher = teacher.detach() if detach_teacher else teacher
    return F.mse_loss(student[valid].float(), teacher[valid].float())


def masked_ce(logits: torch.Tensor, label: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor | None):
    """Cross-entropy over ``valid`` positions (class-weighted like the engine's); zero when none is valid."""
    return task_loss(logits, {"label": label, "mask": valid}, valid, weight)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [N, U, d]`` over the valid positions of each row → ``[N, d]`` (zeros when none)."""
    w = valid.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


class GlobalCompression(nn.Module):
    """§3.3 (4) stage one: 1×1 convolution → BatchNorm → LeakyReLU."""

    def __init__(self, d: int):
        super().__init__()
        self.conv, self.bn, self.act = PointwiseConv1d(d, d), MaskedBatchNorm1d(d), nn.LeakyReLU()

    def forward(self, c: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(c), valid))


class LPIABranch(nn.Module):
    """One of the parallel branches: Â = Attention(Q, K, V), then X_final = Q + A_conv + FFN(A_conv) (§3.3)."""

    def __init__(self, d: int, heads: int, dropout: float, ff_mult: int, compress: bool, compression: str, ffn: bool,
                 attn_dropout: float = 0.0, mask_fill: float | None = MASK_FILL["paper"]):
        super().__init__()
        self.attn = MultiHeadAttention(d, heads, attn_dropout, mask_fill)
        self.compress = GlobalCompression(d) if compress else None
        self.global_mean = compression == "global"
        # FFN(x) = W2 Dropout(GELU(W1 LayerNorm(x)))
        self.ffn = nn.Sequential(nn.LayerNorm(d), FeedForward(d, ff_mult, dropout)) if ffn else None

    def forward(self, q: torch.Tensor, kv: torch.Tensor, q_valid: torch.Tensor, k_valid: torch.Tensor):
        a_hat = self.attn(q, kv, attention_mask(q_valid, k_valid))
        if self.compress is None:
            a_conv = a_hat
        elif self.global_mean:  # Conv2D(Mean(Â)): mean over the valid positions, broadcast back
            rows = q_valid.any(1, keepdim=True)  # [N, 1]
            a_conv = self.compress(masked_mean(a_hat, q_valid).unsqueeze(1), rows).expand_as(a_hat)
        else:
            a_conv = self.compress(a_hat, q_valid)
        out = q + a_conv
        if self.ffn is not None:
            out = out + self.ffn(a_conv)
        return out * q_valid.unsqueeze(-1).to(out.dtype)


class FeatureSoftmaxFusion(nn.Module):
    """§3.4 (2) read per modality: α_m = softmax over the features of W X_m; F = Σ_m α_m ⊙ X_m."""

    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, d, bias=False)

    def forward(self, vectors: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
        return sum(self.fc(x).softmax(-1) * x * v.unsqueeze(-1).to(x.dtype) for x, v in zip(vectors, valid))


@register_model("lpgnet")
class LPGNet(nn.Module):
    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, heads: int = 1,
                 ff_mult: int = 2, dropout: float = 0.1, intra: bool = True, inter: bool = True,
                 compress: bool = True, compression: str = "global", ffn: bool = True, dual_gate: bool = True,
                 gate_softmax: str = "modality", operand_order: str = "paper", positions: bool = False,
                 distill: bool = True, student_input: str = "intra", kl_direction: str = "student_teacher",
                 detach_teacher: bool = True, lambda_task: float = 1.5, lambda_ce: float = 1.0,
                 lambda_kl: float = 0.3, tau: float = 1.0, mode: str = "utterance", max_len: int = 512,
                 sequences: dict | None = None, mask_fill: str = "paper", attn_dropout: bool = False,
                 proj_dropout: bool = False, proj_bias: bool = False, conv_kernel: int = 1,
                 task: str = "classification"):
        super().__init__()
        self.task = check_task(task, "lpgnet")
        for k, v in dict(operand_order=operand_order, compression=compression, gate_softmax=gate_softmax,
                         kl_direction=kl_direction, student_input=student_input, mode=mode,
                         mask_fill=mask_fill).items():
            if v not in CHOICES[k]:
                raise ValueError(f"lpgnet: {k} is {'|'.join(CHOICES[k])}; got {v!r}")
        if not (intra or inter):
            raise ValueError("lpgnet: intra and inter attention cannot both be off (LPIA would be empty)")
        if tau <= 0:
            raise ValueError(f"lpgnet: temperature tau must be > 0; got {tau}")
        if conv_kernel < 1 or conv_kernel % 2 == 0:
            raise ValueError(f"lpgnet: conv_kernel must be odd and >= 1 (§3.3 (1): 1); got {conv_kernel}")
        self.proj = ModalityProjector(input_dims, hidden, dropout if proj_dropout else 0.0, kind="conv1d",
                                      kernel=conv_kernel, bias=proj_bias)
        self.modalities = mods = ordered(input_dims)
        if inter and len(mods) == 1:
            inter = False  # one modality: only its intra branch exists
        # stream y ← branches "yy" (intra) and "xy" (inter, x ≠ y): T_fused = Linear([H_tt; H_at])
        self.streams = {y: ([y + y] if intra else []) + ([x + y for x in mods if x != y] if inter else [])
                        for y in mods}
        if not any(self.streams.values()):
            raise ValueError("lpgnet: intra: false with a single modality leaves no attention branch")
        attn = dict(attn_dropout=dropout if attn_dropout else 0.0, mask_fill=MASK_FILL[mask_fill])
        self.branch = nn.ModuleDict({n: LPIABranch(hidden, heads, dropout, ff_mult, compress, compression, ffn, **attn)
                                     for y in mods for n in self.streams[y]})
        self.operand_order, self.positions, self.dual_gate = operand_order, positions, dual_gate
        self.fuse = nn.ModuleDict({y: nn.Linear(hidden * len(self.streams[y]), hidden) for y in mods})
        if dual_gate:
            self.gate = nn.ModuleDict({n: UnimodalGate(hidden) for n in self.branch})
            fusion = SoftmaxModalityFusion if gate_softmax == "modality" else FeatureSoftmaxFusion
            # a softmax over a single modality is the constant 1: built only when there is something to weigh
            self.fusion = fusion(hidden) if len(mods) > 1 or gate_softmax == "feature" else None
        self.head = nn.Linear(hidden, n_classes)
        self.distill = distill
        # H_m is the gated intra branch; without intra branches only the fused stream can feed the student
        self.student_input = student_input if intra else "fused"
        if distill:
            self.uni_head = nn.ModuleDict({m: nn.Sequential(nn.ReLU(), nn.Linear(hidden, n_classes)) for m in mods})
        self.kl_direction, self.detach_teacher = kl_direction, detach_teacher
        self.lambda_task, self.lambda_ce, self.lambda_kl, self.tau = lambda_task, lambda_ce, lambda_kl, tau
        self.mode, self.max_len = mode, max_len

    @staticmethod
    def sequence_inputs(cfg: dict, modalities) -> dict[str, str] | None:
        """Which feature column holds each modality's frame sequence in the Frame mode (for ``pipeline.training.dataset``)."""
        if cfg.get("mode", "utterance") != "frame":
            return None
        cols = cfg.get("sequences") or {"a": "frames"}
        return {m: c for m, c in cols.items() if m in modalities and c}  # null: one vector per utterance

    def operands(self, name: str) -> tuple[str, str]:
        """(query modality, key/value modality) of branch ``name``."""
        x, y = name[0], name[1]
        return (x, y) if self.operand_order == "paper" else (y, x)

    def lpia(self, x: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """§3.3 (2)–(4): the branch outputs X_final, kept separate (name → [N, U, d])."""
        out = {}
        for name, branch in self.branch.items():
            q, k = self.operands(name)
            out[name] = branch(x[q], x[k], valid[q], valid[k])
        return out

    def core(self, feats, present):
        """Sequences ``[N, U, F]`` → (F_final, its valid positions, student inputs {m: (H_m, valid)})."""
        mods = self.modalities
        x = self.proj(feats, present)
        valid = {m: present[m] for m in mods}
        if self.positions:
            any_x = x[mods[0]]
            pe = sinusoidal_positions(any_x.shape[1], any_x.shape[2], any_x.device, any_x.dtype)
            x = {m: (v + pe) * valid[m].unsqueeze(-1).to(v.dtype) for m, v in x.items()}
        h = self.lpia(x, valid)
        bvalid = {n: valid[self.operands(n)[0]] for n in h}  # a branch output lives at its queries' positions
        if self.dual_gate:
            h = {n: self.gate[n](v) for n, v in h.items()}  # §3.4 (1): H = σ(W_g X) ⊙ X per branch
        fused, svalid = {}, {}
        for y, names in self.streams.items():  # T_fused = Linear([H_t; H_at]), A_fused = Linear([H_a; H_ta])
            fused[y] = self.fuse[y](torch.cat([h[n] for n in names], -1))
            svalid[y] = torch.stack([bvalid[n] for n in names]).any(0)
            fused[y] = fused[y] * svalid[y].unsqueeze(-1).to(fused[y].dtype)
        if self.dual_gate and self.fusion is not None:
            z = self.fusion([fused[m] for m in mods], [svalid[m] for m in mods])
        elif self.dual_gate:
            z = fused[mods[0]]
        else:  # w/o dual-gated fusion: the streams' mean over the valid ones
            ok = torch.stack([svalid[m] for m in mods], -1).unsqueeze(-1).to(fused[mods[0]].dtype)
            z = (torch.stack([fused[m] for m in mods], -2) * ok).sum(-2) / ok.sum(-2).clamp(min=1)
        zvalid = torch.stack([svalid[m] for m in mods]).any(0)
        if self.student_input == "intra":
            students = {m: (h[m + m], valid[m]) for m in mods}
        else:
            students = {m: (fused[m], svalid[m]) for m in mods}
        return z, zvalid, students

    def forward(self, feats, present, mask, speaker):
        del speaker  # LPGNet is speaker-independent by design: no speaker embeddings
        mods = self.modalities
        if self.mode == "frame":
            return self._forward_frames(feats, present, mask)
        valid = {m: present[m] & mask for m in mods}
        z, _, students = self.core(feats, valid)
        logits = self.head(z)  # §3.5
        if not (self.training and self.distill):
            return logits
        uni = {m: self.uni_head[m](hm) for m, (hm, _) in students.items()}
        uvalid = {m: v for m, (_, v) in students.items()}
        return self._distill(logits, uni, uvalid)

    def _forward_frames(self, feats, present, mask):
        """§4.4 LPGNet(Frame): every real utterance is one sequence of tokens/frames; one prediction each."""
        mods = self.modalities
        B, T = mask.shape
        keep = mask.reshape(-1)
        seqs, fvalid = {}, {}
        for m in mods:
            f, p = feats[m], present[m]
            if f.dim() == 3:  # an utterance vector: a one-frame sequence
                f, p = f.unsqueeze(2), p.unsqueeze(2)
            f, p = f[:, :, : self.max_len], p[:, :, : self.max_len]
            seqs[m] = f.reshape(B * T, *f.shape[2:])[keep]
            fvalid[m] = p.reshape(B * T, -1)[keep] & True
        L = max(s.shape[1] for s in seqs.values())  # one length for all (the paper pads both to 512)
        for m in mods:
            pad = L - seqs[m].shape[1]
            if pad:
                seqs[m] = F.pad(seqs[m], (0, 0, 0, pad))
                fvalid[m] = F.pad(fvalid[m], (0, pad), value=False)
        z, zvalid, students = self.core(seqs, fvalid)
        logit_u = self.head(masked_mean(z, zvalid))
        logits = logit_u.new_zeros(B * T, logit_u.shape[-1])
        logits[keep] = logit_u
        logits = logits.view(B, T, -1)
        if not (self.training and self.distill):
            return logits
        uni, uvalid = {}, {}
        for m, (hm, v) in students.items():
            u = hm.new_zeros(B * T, hm.shape[-1])
            u[keep] = masked_mean(hm, v)
            uni[m] = self.uni_head[m](u).view(B, T, -1)
            ok = torch.zeros(B * T, dtype=torch.bool, device=mask.device)
            ok[keep] = v.any(1)
            uvalid[m] = ok.view(B, T)
        return self._distill(logits, uni, uvalid)

    def _distill(self, logits, uni, uvalid):
        if self.task == "regression":
            # not in the paper: our choice. §3.6's KL matches class distributions; a regression output has none,
            # so each unimodal student regresses the fused teacher's prediction (MSE; teacher detached as in KL)
            kl = sum(_mse_to_teacher(uni[m], logits, uvalid[m], self.detach_teacher) for m in uni)
            return {"logits": logits, "unimodal": uni, "valid": uvalid, "losses": {"kl": self.lambda_kl * kl}}
        kl = sum(distillation_kl(uni[m], logits, uvalid[m], self.tau, self.kl_direction, self.detach_teacher)
                 for m in uni)
        return {"logits": logits, "unimodal": uni, "valid": uvalid, "losses": {"kl": self.lambda_kl * kl}}

    def aux_loss(self, out, batch) -> dict[str, torch.Tensor]:
        """Label-dependent terms: (λ_task − 1)·L(fused) and λ_CE·Σ_m L(unimodal head m), L = the class-weighted CE
        (regression: the MSE on the targets, ``task_loss``)."""
        if not isinstance(out, dict):
            return {}
        w = batch.get("class_weight")
        losses = {"uni_ce": self.lambda_ce * sum(task_loss(out["unimodal"][m], batch, v, w)
                                                 for m, v in out["valid"].items())}
        if self.lambda_task != 1.0:
            losses["task_extra"] = (self.lambda_task - 1.0) * task_loss(out["logits"], batch, weight=w)
        return losses
