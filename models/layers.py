"""Layers shared by the models: one masked multi-head attention / transformer block used by every model.

Every model takes the same batch:
    feats:      {modality: FloatTensor[B, T, D_m]}  per-utterance features, zero where absent
    present:    {modality: BoolTensor[B, T]}        the modality is real for this utterance
    mask:       BoolTensor[B, T]                    the utterance exists (False = dialogue padding)
    speaker:    LongTensor[B, T]                    speaker index within the dialogue
and returns logits ``[B, T, n_classes]`` (or a dict with ``logits`` and auxiliary ``losses``: see
``pipeline.training.engine``). ``input_dims`` holds only the chosen modalities, so a model must build its
modules from it and may not assume text, audio and visual are all there.

Regression (issue #20): the same models are built with ``n_classes = K`` targets, so their last linear layer is
the regression head (one output per target); the batch then carries ``task == "regression"`` and ``target``
``[B, T, K]``. Models whose auxiliary losses need the labels take a ``task`` argument and use ``task_loss``.

Attention masks are boolean ``[B, Tq, Tk]``, True = may attend. Every parameter a model creates must be used
in forward (the tests check every gradient exists), so optional parts are built only when they are used.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MODALITY_ORDER = ("t", "a", "v")
TASKS = ("classification", "regression")


def check_task(task: str, model: str) -> str:
    if task not in TASKS:
        raise ValueError(f"{model}: task is classification|regression; got {task!r}")
    return task


def task_loss(pred: torch.Tensor, batch: dict, valid: torch.Tensor | None = None,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """A supervised auxiliary loss on the batch's task over ``valid`` real utterances (default ``mask``):
    cross-entropy on ``label`` (class-weighted by ``weight``), or the mean squared error on ``target`` in
    regression. No valid position → a zero that still depends on ``pred``."""
    valid = batch["mask"] if valid is None else valid & batch["mask"]
    if batch.get("task") == "regression":
        if not valid.any():
            return pred.sum() * 0.0
        return F.mse_loss(pred[valid].float(), batch["target"][valid].float())
    label = batch["label"]
    keep = valid & (label >= 0)
    if not keep.any():
        return pred.sum() * 0.0
    return F.cross_entropy(pred[keep].float(), label[keep], weight=weight)


def ordered(modalities) -> list[str]:
    """Modalities in the canonical t, a, v order (text first: models use it as the anchor)."""
    return sorted(modalities, key=lambda m: MODALITY_ORDER.index(m) if m in MODALITY_ORDER else len(MODALITY_ORDER))


class PointwiseConv1d(nn.Conv1d):
    """Conv1d with kernel size 1 over the utterances of ``[B, T, D]`` sequences (channels last in and out).

    A per-utterance linear map, written as the papers that use "1D convolution" projections (SDT, LPGNet) do.
    An odd ``kernel`` > 1 (zero "same" padding) mixes each utterance with its ``kernel // 2`` neighbours per side.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True, kernel: int = 1):
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"conv kernel must be odd and >= 1 (same-length output); got {kernel}")
        super().__init__(d_in, d_out, kernel_size=kernel, padding=kernel // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ModalityProjector(nn.Module):
    """Per-modality projection into a shared width, absent modalities zeroed.

    ``kind="mlp"``: LayerNorm → Linear → GELU → Dropout; ``kind="conv1d"``: a kernel-``kernel`` Conv1d (bias-free
    unless ``bias``) → Dropout (the temporal-convolution input layer of SDT / LPGNet).
    """

    def __init__(self, input_dims: dict[str, int], hidden: int, dropout: float = 0.1, kind: str = "mlp",
                 kernel: int = 1, bias: bool = False):
        super().__init__()
        if kind not in ("mlp", "conv1d"):
            raise ValueError(f"projector kind is mlp|conv1d; got {kind!r}")
        self.modalities, self.kernel = ordered(input_dims), kernel if kind == "conv1d" else 1
        make = {"mlp": lambda d: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)),
                "conv1d": lambda d: nn.Sequential(PointwiseConv1d(d, hidden, bias=bias, kernel=kernel),
                                                  nn.Dropout(dropout))}[kind]
        self.proj = nn.ModuleDict({m: make(d) for m, d in input_dims.items()})

    def forward(self, feats: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Multiply (not only mask later) so an absent modality's values can never reach any later layer; a kernel
        # wider than 1 also sees its neighbours, so their absent entries enter as zeros.
        on = {m: present[m].unsqueeze(-1) for m in self.modalities}
        x = {m: feats[m].masked_fill(~on[m], 0.0) if self.kernel > 1 else feats[m] for m in self.modalities}
        return {m: self.proj[m](x[m]) * on[m].to(feats[m].dtype) for m in self.modalities}


class MLPHead(nn.Module):
    """Two-layer classifier (``act`` GELU by default; DialogueTRM's Eq. 17 uses tanh)."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, dropout: float = 0.1, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpeakerEmbedding(nn.Embedding):
    """Speaker index within the dialogue → vector; indices beyond ``max_speakers`` share the last row."""

    def forward(self, speaker: torch.Tensor) -> torch.Tensor:
        return super().forward(speaker.clamp(max=self.num_embeddings - 1))


def masked_rnn(rnn: nn.RNNBase, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run a batch-first GRU/LSTM over each dialogue's real utterances only (packed): padding never leaks in."""
    lengths = mask.sum(1).clamp(min=1).cpu()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


masked_bigru = masked_rnn  # the name the first models used


def attention_mask(q_valid: torch.Tensor, k_valid: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """``[B, Tq, Tk]``: query i may attend key j when both are valid and, with ``window``, |i − j| ≤ window.

    ``window=None`` is the whole dialogue (context-dependent), ``0`` the utterance itself (context-free).
    """
    m = q_valid.unsqueeze(2) & k_valid.unsqueeze(1)
    if window is not None:
        i = torch.arange(q_valid.shape[1], device=m.device)
        j = torch.arange(k_valid.shape[1], device=m.device)
        m = m & ((i[:, None] - j[None, :]).abs() <= window)
    return m


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention (Vaswani et al. 2017, Eq. 1) with a boolean mask.

    A query with no allowed key gets a zero output instead of NaN (softmax over nothing) or an average of
    padding, so absent modalities and padded utterances contribute nothing. ``mask_fill`` (a score, e.g. −1e9)
    instead fills masked scores with that value and keeps the softmax as is: a query with no allowed key then
    attends uniformly to all keys (what a paper's "−10⁹ otherwise" computes).
    """

    def __init__(self, d: int, heads: int, dropout: float = 0.0, mask_fill: float | None = None):
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not divisible by {heads} heads")
        self.h, self.dh, self.mask_fill = heads, d // heads, mask_fill
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        kv = x if kv is None else kv
        (B, Tq, d), Tk = x.shape, kv.shape[1]
        q = self.q(x).view(B, Tq, self.h, self.dh).transpose(1, 2)
        k = self.k(kv).view(B, Tk, self.h, self.dh).transpose(1, 2)
        v = self.v(kv).view(B, Tk, self.h, self.dh).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.dh)
        if mask is not None and self.mask_fill is not None:  # low precision: the dtype's most negative value
            a = s.masked_fill(~mask.unsqueeze(1), max(self.mask_fill, torch.finfo(s.dtype).min)).softmax(-1)
        elif mask is not None:
            m = mask.unsqueeze(1)
            s = s.masked_fill(~m, torch.finfo(s.dtype).min)
            a = s.softmax(-1) * m  # rows with no allowed key become all-zero
        else:
            a = s.softmax(-1)
        out = (self.drop(a) @ v).transpose(1, 2).reshape(B, Tq, d)
        return self.o(out)


class FeedForward(nn.Sequential):
    """Position-wise feed-forward network Linear → GELU → Dropout → Linear (width ``ff_dim`` or ``ff_mult · d``)."""

    def __init__(self, d: int, ff_mult: int = 2, dropout: float = 0.1, ff_dim: int | None = None):
        f = ff_dim or ff_mult * d
        super().__init__(nn.Linear(d, f), nn.GELU(), nn.Dropout(dropout), nn.Linear(f, d))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + MHA(LN x, LN kv) then x + FFN(LN x).

    Self-attention by default; ``cross=True`` gives it a LayerNorm for a separate key/value stream
    (cross-modal attention). Pre-LN keeps deep stacks trainable without warm-up.
    """

    def __init__(self, d: int, heads: int, dropout: float = 0.1, ff_mult: int = 2, cross: bool = False,
                 ff_dim: int | None = None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ln_kv = nn.LayerNorm(d) if cross else None
        self.attn = MultiHeadAttention(d, heads, dropout)
        self.ff = FeedForward(d, ff_mult, dropout, ff_dim)  # ff_dim (e.g. PyTorch's 2048) overrides the multiple
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kv: torch.Tensor | None = None):
        h = self.ln1(x)
        if (kv is None) != (self.ln_kv is None):
            raise ValueError("a cross block needs kv; a self-attention block takes none")
        x = x + self.drop(self.attn(h, h if kv is None else self.ln_kv(kv), mask))
        return x + self.drop(self.ff(self.ln2(x)))


class TransformerEncoder(nn.Module):
    """A stack of self-attention ``TransformerBlock``s sharing one mask, with a final LayerNorm."""

    def __init__(self, d: int, heads: int, layers: int, dropout: float = 0.1, ff_dim: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(d, heads, dropout, ff_dim=ff_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def pool_modalities(vectors: list[torch.Tensor], valid: list[torch.Tensor], how: str) -> torch.Tensor:
    """Fuse per-modality ``[B, T, d]`` vectors: ``add`` | ``mean`` (over valid ones) | ``max`` | ``concat``.

    Invalid (absent) vectors are left out of ``mean``/``max``; an utterance with none valid gets zeros.
    """
    if how == "concat":
        return torch.cat(vectors, dim=-1)
    x = torch.stack(vectors, dim=-2)  # [B, T, M, d]
    ok = torch.stack(valid, dim=-1).unsqueeze(-1)  # [B, T, M, 1]
    if how == "add":
        return (x * ok).sum(-2)
    if how == "mean":
        return (x * ok).sum(-2) / ok.sum(-2).clamp(min=1)
    if how == "max":
        out = x.masked_fill(~ok, torch.finfo(x.dtype).min).max(-2).values
        return out * ok.any(-2)
    raise ValueError(f"unknown pooling {how!r}; use add, mean, max or concat")


def sinusoidal_positions(T: int, d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[T, d]`` sine/cosine position encoding (Vaswani et al. 2017, Sec. 3.5); utterance index = position."""
    pos = torch.arange(T, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return pe.to(dtype)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over the channels of ``[B, T, d]`` whose statistics come from the valid positions only.

    Padding and absent modalities would otherwise enter the batch mean/variance (and make real outputs depend
    on how much padding a batch has). Invalid positions come out as zeros. A training batch with a single valid
    position cannot give a variance: it is normalised with the running statistics instead.
    """

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        v = x[valid]
        if v.shape[0] == 0:
            return torch.zeros_like(x)
        if self.training and v.shape[0] < 2:
            y = nn.functional.batch_norm(v, self.running_mean, self.running_var, self.weight, self.bias,
                                         False, 0.0, self.eps)
        else:
            y = super().forward(v)
        return x.new_zeros(x.shape, dtype=y.dtype).index_put((valid,), y)


class UnimodalGate(nn.Module):
    """Feature-wise self gate x ⊙ σ(W x) (SDT's unimodal-level gated fusion; LPGNet's first gate)."""

    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x))


class SoftmaxModalityFusion(nn.Module):
    """Σ_m α_m ⊙ x_m with α = softmax over modalities of W x_m, per feature (SDT's multimodal-level gate).

    Absent modalities get no weight; an utterance with none valid gets zeros.
    """

    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, d, bias=False)

    def forward(self, vectors: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(vectors, dim=-2)  # [B, T, M, d]
        ok = torch.stack(valid, dim=-1).unsqueeze(-1)  # [B, T, M, 1]
        s = self.fc(x)
        s = s.masked_fill(~ok, torch.finfo(s.dtype).min)  # s's own dtype: bf16 under autocast
        return (s.softmax(-2) * ok * x).sum(-2)
