"""Layers shared by the models.

Every model takes the same batch (``models.layers.Batch`` fields):
    feats:      {modality: FloatTensor[B, T, D_m]}  per-utterance features, zero where absent
    present:    {modality: BoolTensor[B, T]}        the modality is real for this utterance
    mask:       BoolTensor[B, T]                    the utterance exists (False = dialogue padding)
    speaker:    LongTensor[B, T]                    speaker index within the dialogue
and returns logits ``[B, T, n_classes]``.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ModalityProjector(nn.Module):
    """Per-modality LayerNorm → Linear → GELU → Dropout into a shared width, absent modalities zeroed."""

    def __init__(self, input_dims: dict[str, int], hidden: int, dropout: float = 0.1):
        super().__init__()
        self.modalities = sorted(input_dims)
        self.proj = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout))
             for m, d in input_dims.items()}
        )

    def forward(self, feats: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.proj[m](feats[m]) * present[m].unsqueeze(-1).to(feats[m].dtype) for m in self.modalities}


class MLPHead(nn.Module):
    """Two-layer classifier."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def masked_bigru(gru: nn.GRU, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run ``gru`` over each dialogue's real utterances only (packed), so padding never leaks in."""
    lengths = mask.sum(1).clamp(min=1).cpu()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = gru(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out
