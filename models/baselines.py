"""Baselines: text-only MLP, concat late-fusion MLP, dialogue GRU and bc-LSTM.

bc-LSTM: Poria et al., "Context-Dependent Sentiment Analysis in User-Generated Videos", ACL 2017 — contextual
bidirectional LSTMs over the utterances of a conversation: one per modality (unimodal contextual features),
then one over their concatenation (the hierarchical variant, Sec. 3.3), then a per-utterance classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import MLPHead, ModalityProjector, SpeakerEmbedding, masked_rnn
from models.registry import register_model


@register_model("text_mlp")
class TextMLP(nn.Module):
    """Text features only, each utterance classified on its own (the unimodal reference point)."""

    required_modalities = ("t",)

    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        if "t" not in input_dims:
            raise ValueError(f"text_mlp needs the text modality; got {sorted(input_dims)}")
        self.proj = ModalityProjector({"t": input_dims["t"]}, hidden, dropout)
        self.head = MLPHead(hidden, hidden, n_classes, dropout)

    def forward(self, feats, present, mask, speaker):
        return self.head(self.proj(feats, present)["t"])


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
        self.speaker = SpeakerEmbedding(max_speakers, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = MLPHead(2 * hidden + hidden, hidden, n_classes, dropout)

    def forward(self, feats, present, mask, speaker):
        z = self.proj(feats, present)
        u = self.fuse(torch.cat([z[m] for m in self.proj.modalities], dim=-1)) + self.speaker(speaker)
        ctx = masked_rnn(self.gru, u, mask)
        return self.head(torch.cat([ctx, u], dim=-1))


@register_model("bc_lstm")
class BcLSTM(nn.Module):
    """Hierarchical bc-LSTM: per-modality contextual BiLSTM → concatenation → fusion BiLSTM → classifier."""

    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.proj = ModalityProjector(input_dims, hidden, dropout)
        self.uni = nn.ModuleDict({m: nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)
                                  for m in input_dims})
        self.fuse = nn.LSTM(hidden * len(input_dims), hidden // 2, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.head = MLPHead(hidden, hidden, n_classes, dropout)

    def forward(self, feats, present, mask, speaker):
        z = self.proj(feats, present)
        ctx = torch.cat([self.drop(masked_rnn(self.uni[m], z[m], mask)) for m in self.proj.modalities], dim=-1)
        return self.head(self.drop(masked_rnn(self.fuse, ctx, mask)))
