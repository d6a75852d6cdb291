"""Baselines: concat late-fusion MLP (context-free) and a dialogue GRU (bc-LSTM-style context, GRU cell).

bc-LSTM: Poria et al., "Context-Dependent Sentiment Analysis in User-Generated Videos", ACL 2017 — a
bidirectional recurrent layer over the utterances of a conversation on top of utterance features.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import MLPHead, ModalityProjector, masked_bigru
from models.registry import register_model


@register_model("concat_mlp")
class ConcatMLP(nn.Module):
    """Project each modality, concatenate, classify each utterance independently."""

    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.proj = ModalityProjector(input_dims, hidden, dropout)
        self.head = MLPHead(hidden * len(input_dims), hidden, n_classes, dropout)

    def forward(self, feats, present, mask, speaker):
        z = self.proj(feats, present)
        return self.head(torch.cat([z[m] for m in self.proj.modalities], dim=-1))


@register_model("dialogue_gru")
class DialogueGRU(nn.Module):
    """Concat fusion → speaker embedding added → bidirectional GRU over the dialogue → classifier."""

    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, dropout: float = 0.2,
                 max_speakers: int = 16):
        super().__init__()
        self.proj = ModalityProjector(input_dims, hidden, dropout)
        self.fuse = nn.Linear(hidden * len(input_dims), hidden)
        self.speaker = nn.Embedding(max_speakers, hidden)
        self.max_speakers = max_speakers
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = MLPHead(2 * hidden + hidden, hidden, n_classes, dropout)

    def forward(self, feats, present, mask, speaker):
        z = self.proj(feats, present)
        u = self.fuse(torch.cat([z[m] for m in self.proj.modalities], dim=-1))
        u = u + self.speaker(speaker.clamp(max=self.max_speakers - 1))
        ctx = masked_bigru(self.gru, u, mask)
        return self.head(torch.cat([ctx, u], dim=-1))
