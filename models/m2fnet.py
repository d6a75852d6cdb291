"""M2FNet — Gao, "A Stable Transformer-based Multimodal Framework for Dialogue Emotion Recognition with
Speaker-Aware Context Modeling" (the seed paper, ``../shared/papers/m2fnet.txt``).

The paper has no equations; its components map to code as follows:
  * §3.2 modality-specific features (BERT text, acoustic, pooled visual): the extract stages' utterance vectors.
  * §3.3 transformer-based multimodal fusion: "transforming [the modality features] into a shared space for
    multi-head self-attention ... over the text, audio and visual streams". Each chosen modality is projected into
    the shared width ``hidden`` (``ModalityProjector``), and the utterance's (up to three) modality tokens go
    through ``fusion_layers`` self-attention transformer blocks; attention never crosses utterances (no
    per-modality dialogue encoder before fusion, unlike Chudasama et al. 2022). Which tokens attend is not in the
    paper: our choice, because §3.4 gives the dialogue context to the GRU alone and Table 5's "w/o GRU Context" is
    "No recurrent context modeling" — so fusion stays within the utterance. Absent modalities are masked out.
    Not in the paper: our choice, because one vector per utterance must reach the GRU — the fused tokens are
    averaged over the utterance's present modalities.
  * §3.4 speaker-aware context: "a GRU is used after multi-modal fusion ... in order of dialogue ... context from
    previous utterances"; the Limitations call it "one-way": a unidirectional GRU over the dialogue's fused
    utterances, so utterance t only sees turns ≤ t. The speaker mechanism is not specified. Not in the paper: our
    choice, because speaker identity must reach the GRU somehow — a learned speaker embedding (speaker index within
    the dialogue) is added to the GRU input (``speaker: false`` drops it).
  * §3.5 classification: "a fully connected classification layer" + softmax: a single ``nn.Linear`` (softmax in
    the loss).
  * §3.6 / §3.7 / §4.5 / Table 2 training (inverse-frequency weighted CE, AdamW, gradient clipping,
    ReduceLROnPlateau and early stopping on validation loss, the model selected on validation): engine options,
    set in ``recipes/m2fnet_meld.yaml``. The paper has no numbered equations and gives no widths, heads, layers,
    dropout, lr, batch size or epochs (§3.8, §4.6 only say they were tuned): every such value is ours.

Ablations (Table 5, on the validation split; each a ``-S`` override of ``recipes/m2fnet_meld.yaml``, text alone
with ``--offline``): ``fusion: concat`` ("w/o Transformer Fusion": concatenation of the
projected modalities + a linear map instead of self-attention), ``context: none`` ("w/o GRU Context": no
recurrent context modelling and no speaker embedding — each utterance is classified from its own features alone,
no dialogue context at all), ``train.weighted_loss: false`` ("w/o Weighted Loss", an engine switch).

Chudasama et al.'s M2FNet (per-modality dialogue transformers, text-query cross-attention, BiGRU), which this
module implemented before, is not kept: its paper is not among the project's sources, so its details could not be
checked, and its cross-modal attention + BiGRU design is covered by LPGNet / SUMMER / bc_lstm.

Readings and our choices (reviewed against m2fnet.txt; each justified or a switch):
  * §3.7 "All the modalities are trained together end-to-end" vs the Limitations' "default pretrained modal-wise
    feature extractors" (fine-tuning named as future work): read as the fusion network trained jointly on frozen
    extractor features, so the recipe keeps BERT frozen (``text.finetune.enabled: false``; ``train.text_encoder``
    or the ``finetune_text`` stage would fine-tune it). §3.6 says "validation performance", §4.5 "validation loss": the recipe follows §4.5.
  * Not in the paper: our choices, because Gao gives no form — the projector (LayerNorm→Linear→GELU→Dropout), the
    fusion transformer (pre-LN, GELU, FFN 2×d, final LayerNorm), no modality-type embedding, absent modalities
    masked out of fusion, dropout before the classifier, the Linear after concatenation in ``fusion: concat``,
    ``context: none`` dropping the speaker embedding too (no context at all). Defaults are CPU-sized; the recipe
    sets its (our-choice) sizes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import ModalityProjector, SpeakerEmbedding, TransformerEncoder, masked_rnn, pool_modalities
from models.registry import register_model


@register_model("m2fnet")
class M2FNet(nn.Module):
    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, heads: int = 4,
                 fusion_layers: int = 1, fusion: str = "attention", context: str = "gru", speaker: bool = True,
                 dropout: float = 0.2, max_speakers: int = 16):
        super().__init__()
        if fusion not in ("attention", "concat") or context not in ("gru", "none"):
            raise ValueError(f"m2fnet: fusion is attention|concat, context is gru|none; got {fusion}, {context}")
        # §3.3: each modality into the shared space (width ``hidden``; not in the paper: our choice)
        self.proj = ModalityProjector(input_dims, hidden, dropout)
        mods = self.proj.modalities
        self.fusion = fusion
        if fusion == "attention":  # §3.3: multi-head self-attention over the utterance's modality tokens
            self.fuse = TransformerEncoder(hidden, heads, fusion_layers, dropout)
        else:  # Table 5 "w/o Transformer Fusion": concatenation instead
            self.fuse = nn.Linear(hidden * len(mods), hidden)
        self.context = context
        self.speaker = SpeakerEmbedding(max_speakers, hidden) if context == "gru" and speaker else None
        if context == "gru":  # §3.4: one-way GRU over the dialogue
            self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, n_classes)  # §3.5: a single fully connected layer (+ softmax in the loss)

    def fused(self, feats, present, mask) -> torch.Tensor:
        """§3.3: one fused vector per utterance ``[B, T, hidden]``; it depends on that utterance's features only."""
        z = self.proj(feats, present)
        mods = self.proj.modalities
        valid = [present[m] & mask for m in mods]
        if self.fusion == "concat":
            return self.fuse(torch.cat([z[m] for m in mods], dim=-1))
        B, T, d = z[mods[0]].shape
        tokens = torch.stack([z[m] for m in mods], dim=2).reshape(B * T, len(mods), d)  # the utterance's t/a/v
        ok = torch.stack(valid, dim=2).reshape(B * T, len(mods))
        out = self.fuse(tokens, ok.unsqueeze(2) & ok.unsqueeze(1)).reshape(B, T, len(mods), d)
        return pool_modalities(list(out.unbind(2)), valid, "mean")

    def forward(self, feats, present, mask, speaker):
        u = self.fused(feats, present, mask)
        if self.context == "gru":
            if self.speaker is not None:
                u = u + self.speaker(speaker)
            u = masked_rnn(self.gru, u, mask)  # packed: padding never enters; one-way: no future turns
        return self.fc(self.drop(u))
