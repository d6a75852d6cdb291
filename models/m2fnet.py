"""M2FNet — Chudasama et al., "M2FNet: Multi-modal Fusion Network for Emotion Recognition in Conversation",
CVPR Workshops 2022 (arXiv:2206.02187).

Paper pipeline and where it lives here:
  1. Utterance-level feature extractors (RoBERTa text; audio/visual extractors trained with the adaptive-margin
     triplet loss): out of scope — the extract stages provide utterance features.
  2. Dialogue-level modality encoders: per modality, a transformer encoder over the utterances of the dialogue
     (``encoder_layers``), here after a projection into the shared width ``hidden``.
  3. Multi-head attention fusion (Sec. 3.3, Fig. 3): the text stream is the query, audio and visual are keys and
     values; ``fusion_layers`` fusion layers are stacked, each feeding its output as the next query.
     Inferred detail: one cross-attention ``TransformerBlock`` per non-query modality in every layer, applied in
     turn (residual + FFN); text is the query when present, else the first chosen modality.
  4. Context over the dialogue with speaker awareness → classifier. Our reading of the issue: a bidirectional
     GRU over fused utterances plus a speaker embedding (``context: gru``), then a two-layer head.

Ablations (paper Table 5): ``fusion: concat`` (no transformer fusion: concatenation + linear), ``context: none``
(no GRU context), and no weighted loss (``train.weighted_loss: false``, an engine switch).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import (MLPHead, ModalityProjector, SpeakerEmbedding, TransformerBlock, TransformerEncoder,
                           attention_mask, masked_rnn)
from models.registry import register_model


@register_model("m2fnet")
class M2FNet(nn.Module):
    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, heads: int = 4,
                 encoder_layers: int = 1, fusion_layers: int = 5, fusion: str = "attention", context: str = "gru",
                 dropout: float = 0.2, max_speakers: int = 16):
        super().__init__()
        if fusion not in ("attention", "concat") or context not in ("gru", "none"):
            raise ValueError(f"m2fnet: fusion is attention|concat, context is gru|none; got {fusion}, {context}")
        self.proj = ModalityProjector(input_dims, hidden, dropout)
        mods = self.proj.modalities
        self.query, self.keys = mods[0], mods[1:]  # ordered(): text first when chosen
        self.encoders = nn.ModuleDict({m: TransformerEncoder(hidden, heads, encoder_layers, dropout) for m in mods}) \
            if encoder_layers else None
        self.fusion = fusion
        if fusion == "attention":
            # One ModuleDict per fusion layer: the query stream attends to each other modality in turn.
            self.fuse = nn.ModuleList(
                nn.ModuleDict({m: TransformerBlock(hidden, heads, dropout, cross=True) for m in self.keys})
                for _ in range(fusion_layers if self.keys else 0))
        else:
            self.fuse = nn.Linear(hidden * len(mods), hidden)
        self.context = context
        if context == "gru":
            self.speaker = SpeakerEmbedding(max_speakers, hidden)
            self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = MLPHead(hidden * (3 if context == "gru" else 1), hidden, n_classes, dropout)

    def forward(self, feats, present, mask, speaker):
        z = self.proj(feats, present)
        valid = {m: present[m] & mask for m in z}
        if self.encoders is not None:
            z = {m: self.encoders[m](x, attention_mask(mask, valid[m])) * valid[m].unsqueeze(-1).to(x.dtype)
                 for m, x in z.items()}
        if self.fusion == "attention":
            u = z[self.query]
            for layer in self.fuse:
                for m, block in layer.items():
                    u = block(u, attention_mask(mask, valid[m]), kv=z[m])
        else:
            u = self.fuse(torch.cat([z[m] for m in self.proj.modalities], dim=-1))
        if self.context == "gru":
            u = u + self.speaker(speaker)
            u = torch.cat([masked_rnn(self.gru, u, mask), u], dim=-1)
        return self.head(u)
