"""DialogueTRM — Mao et al., "DialogueTRM: Exploring Multi-Modal Emotional Dynamics in a Conversation",
Findings of EMNLP 2021 (preprint arXiv:2010.07637).

Intra-modal emotion dynamics (Sec. 3.2, Eq. 2–6): a hierarchical transformer per modality. The utterance-level
encoder is the extract stage's feature extractor; here each modality is projected to ``hidden`` and passed through
``layers`` dialogue-level transformer blocks whose attention is restricted by a context mask (Eq. 5–6: masked
positions get −∞ before the softmax). ``window[m]`` chooses the context preference per modality: an integer K
lets an utterance see the utterances within K turns (context-dependent; the paper's default for text), ``0``
only itself (context-free: the block degenerates to a feed-forward network; the paper's choice for audio and
visual), ``null`` the whole dialogue.

Inter-modal dynamics — Multi-Grained Interactive Fusion (MGIF, Sec. 3.3):
  * neuron-grained ("prototype dependency", Eq. 7–14): a multimodal gate per ordered modality pair (i, j),
    g_ij = σ(W_g [h_i; h_j] + b_g), h_ij = g_ij ⊙ h_i + (1 − g_ij) ⊙ tanh(W_ij h_j + b_ij); three modalities give
    six gated vectors. (Inferred: the gate follows the paper's description of neuron-level mixing of a
    modality with its partner; the exact parametrisation of Eq. 7–14 is our reading.)
  * vector-grained ("representation dependency", Eq. 15–16): a transformer over [CLS; six gated vectors]
    (plus a learned position/type embedding per slot, inferred: attention is otherwise order-blind); the CLS
    output is the utterance representation.
  * discriminator (Eq. 17): two layers with tanh, then softmax (in the loss).

Ablations (paper Tables 4–5): ``window`` per modality (context-dependent vs context-free);
``gates: false`` (MGIF without prototype dependency: the transformer sees the unimodal vectors),
``rep_transformer: false`` (without representation dependency: the mean of the gated vectors);
``fusion: add | concat | max`` replaces MGIF by a plain fusion of the unimodal vectors.
"""
from __future__ import annotations

from itertools import permutations

import torch
import torch.nn as nn

from models.layers import MLPHead, ModalityProjector, TransformerEncoder, attention_mask, pool_modalities
from models.registry import register_model


class PairGate(nn.Module):
    """Neuron-grained multimodal gate h_ij = g ⊙ h_i + (1 − g) ⊙ tanh(W h_j), g = σ(W_g [h_i; h_j])."""

    def __init__(self, d: int):
        super().__init__()
        self.gate, self.partner = nn.Linear(2 * d, d), nn.Linear(d, d)

    def forward(self, hi: torch.Tensor, hj: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([hi, hj], dim=-1)))
        return g * hi + (1 - g) * torch.tanh(self.partner(hj))


@register_model("dialoguetrm")
class DialogueTRM(nn.Module):
    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, heads: int = 4,
                 layers: int = 1, window: dict | None = None, fusion: str = "mgif", gates: bool = True,
                 rep_transformer: bool = True, rep_layers: int = 1, dropout: float = 0.2):
        super().__init__()
        if fusion not in ("mgif", "add", "concat", "max"):
            raise ValueError(f"dialoguetrm: fusion is mgif|add|concat|max; got {fusion!r}")
        self.proj = ModalityProjector(input_dims, hidden, dropout)
        mods = self.proj.modalities
        window = {"t": 4, "a": 0, "v": 0, **(window or {})}
        self.window = {m: window.get(m, 0) for m in mods}
        self.intra = nn.ModuleDict({m: TransformerEncoder(hidden, heads, layers, dropout) for m in mods})
        self.fusion = fusion
        self.pairs = list(permutations(mods, 2)) if fusion == "mgif" and gates else []
        self.gates = nn.ModuleDict({i + j: PairGate(hidden) for i, j in self.pairs})
        self.rep = None
        if fusion == "mgif" and rep_transformer:
            n_slots = len(self.pairs) or len(mods)
            self.cls = nn.Parameter(torch.randn(hidden) * 0.02)
            self.slot = nn.Parameter(torch.randn(n_slots + 1, hidden) * 0.02)
            self.rep = TransformerEncoder(hidden, heads, rep_layers, dropout)
        d_out = hidden * len(mods) if fusion == "concat" else hidden
        self.head = MLPHead(d_out, hidden, n_classes, dropout, act=nn.Tanh)

    def forward(self, feats, present, mask, speaker):
        z = self.proj(feats, present)
        valid = {m: present[m] & mask for m in z}
        h = {m: self.intra[m](x, attention_mask(mask, valid[m], self.window[m])) * valid[m].unsqueeze(-1).to(x.dtype)
             for m, x in z.items()}
        mods = self.proj.modalities
        if self.fusion != "mgif":
            return self.head(pool_modalities([h[m] for m in mods], [valid[m] for m in mods], self.fusion))
        if self.pairs:  # neuron-grained: gated vectors, valid when either side is real
            vecs = [self.gates[i + j](h[i], h[j]) for i, j in self.pairs]
            ok = [valid[i] | valid[j] for i, j in self.pairs]
        else:
            vecs, ok = [h[m] for m in mods], [valid[m] for m in mods]
        if self.rep is None:
            return self.head(pool_modalities(vecs, ok, "mean"))
        # vector-grained: a transformer over [CLS; slots] of each utterance (B·T short sequences)
        B, T, d = vecs[0].shape
        x = torch.stack([self.cls.expand(B, T, d), *vecs], dim=2) + self.slot  # [B, T, 1 + S, d]
        ok = torch.stack([mask, *ok], dim=2).reshape(B * T, -1)
        out = self.rep(x.reshape(B * T, -1, d), attention_mask(ok, ok))
        return self.head(out[:, 0].reshape(B, T, d))
