"""SUMMER — Li, Yu, Huang, Yan, "Unimodal-driven Distillation in Multimodal Emotion Recognition with Dynamic
Fusion" (ICME 2025, arXiv:2503.23721; text: ``../shared/papers/summer.txt``, the anonymous double-blind review
version, whose equation numbers are the ones cited here: in it Eq. 11's number is printed after Eq. 9 and the
L_cross formula itself is unnumbered, and its denominator is printed p̂ too — read as p̄, the teacher's, from the
"where" clause). Regression (``task: regression``, issue #20; not in the paper: our choice) is described at
``Summer._ikd_regression``.
Section / equation → code:

  §3.3 / A.1 features (``FrontEnd``): audio "reduced to 512 dimensions" by a learned layer (``audio_reduce``);
      visual: a DialogueRNN (``DialogueRNN``, Majumder et al. 2019) then an FC to 256 (``dialoguernn``,
      ``dialoguernn_dim``). Text needs nothing here (speaker-marked context turns: ``text.context=speaker``).
      §3.3's "Finally, DialogueRNN is employed …" names no modality; A.1 places it on the visual stream, so the
      default is ``[v]`` (``dialoguernn: [t, a, v]`` is the all-modalities reading of §3.3's sentence).
  Eq. 1   S_j = V_s o_s                          ``UtteranceEmbedding.speaker`` (one-hot × V_s = an embedding row)
  Eq. 2   U_e = H + S + P                        ``UtteranceEmbedding.forward`` (P: sinusoidal, absolute turn index)
  Eq. 3   G_dyn = Softmax(W_g)/T in the band     ``DynamicRouter.band`` (μ ± 2σ on the gate logits W_g) and
          (μ−2σ, μ+2σ) of W_g, 0 outside           ``DynamicRouter.forward`` (… · keep / T)
  Eq. 4   Ĝ = softmax((W_g + g_noise)/τ)          ``DynamicRouter.forward`` (Gumbel noise in training, τ learnable)
  Eq. 5   M_sparse = Σ_i Ĝ_i E_o,i               ``SDMoE.forward`` (E_i = BiGRU_i(U_e), the auxiliary experts;
                                                 ``share_experts``: one BiGRU for all i)
  Eq. 6   H_fuse = Σ_i V_g F_o,i H_m,i           ``GlobalMoE`` (router logits V_g·f_i, sparse dynamic routing)
  Eq. 7   M_ij = 1 if |s_tr − s_st| > 0.5        ``dynattn_mask``
  Eq. 8   DynAttn = ((1 − φM) ⊙ Softmax(QKᵀ/√d)) V   ``DynAttention.forward``
  Eq. 9   H_ta = DynAttn_ta(Q^t, K^a, V^a)        ``Summer.forward`` (cross blocks ``cross[l]["ta"]``)
  Eq. 10  H_tav = DynAttn_tav(H_ta, K^v, V^v)     ``Summer.forward`` (``cross[l]["tv"]`` on the running H_ta)
  Eq. 11  L_cross = Σ_i KL(p̂_mi ‖ p̄_mi)          ``Summer.aux_loss`` → ``ikd_cross``
  Eq. 12  L_align = −Σ_i Σ_j gt log p̂_mi         ``Summer.aux_loss`` → ``ikd_align``
  Eq. 13  L_inner = Σ_i ‖f_tr − f_st,mi‖          ``Summer.aux_loss`` → ``ikd_inner``
  Eq. 14  L_smooth = −Σ_j softmax(p)_j δ(gt)_j    ``smooth_targets`` + ``Summer.aux_loss`` → ``smooth``
  Eq. 15  L_KD = κ1 L_cross + κ2 L_align + κ3 L_inner + κ4 L_smooth   (``kappa1`` … ``kappa4``)

§3.5 teacher (``SummerTeacher``, stage ``pipeline.train_teacher``): Eq. 1–2 embedding → its own SDMoE
(``moe: sdmoe``; ``none`` for the Fig. 4 comparison) → transformer layers whose attention scores s_tr = Q_tr K_trᵀ/√d
are exposed (``encode``) → LayerNorm → classifier. The student loads it, freezes it (weights held as buffers: in the
checkpoint, never optimised, always in eval mode) and uses its scores (Eq. 7), features (Eq. 13) and classifier
(Eq. 11–12).

HCMF (§3.5, Fig. 3b): ``fusion_layers`` levels (paper §4.3: 6); at each, every branch HCMF_m runs intra-modal
DynAttn (a residual pre-LN transformer block), then branch m queries the other modalities hierarchically in t, a, v
order (Eq. 9–10 written for HCMF_t: Q from the branch, K/V from the next modality, the running output as the next
query); the result continues as branch m. Branch outputs f_m (LayerNorm'd) are the Global MoE's experts F_o and the
IKD's intermediate features f_mi.

Readings of ambiguous text (the most literal one implemented — where the prose and a printed formula disagree, the
prose; where a literal reading contradicts the rest of its section, the reading that fits it, said so —; the
alternative is a switch):
  * §3.4 "Parameters are shared within intra-modal components but remain independent across inter-modal
    components", with E_i = BiGRU(U_e) (no expert index): ``share_experts: true`` is the literal reading, one
    BiGRU per modality serving as all n experts, so Eq. 5 collapses to (Σ_i Ĝ_i)·BiGRU(U_e): the routing only
    scales the one expert per token (by 1/T when the band drops nothing). The default (``false``) gives each of the n
    experts its own BiGRU, because the same paragraph has "a set of BiGRU experts" capturing semantics "at multiple
    levels" and Eq. 3 "dynamically adjusts the number of experts", which identical experts cannot do. The part
    of the sentence both readings share holds in both: nothing is shared across modalities (one SDMoE each).
  * Eq. 3's μ, σ are "the mean and standard deviation of the weights": ``route_stats: tensor`` takes them over all
    entries of W_g for the batch's real utterances (running estimates in evaluation, so a prediction never depends
    on the rest of the batch); ``expert`` per expert over utterances; ``token`` per utterance over its experts
    (with n ≤ 5 experts no value can lie 2σ out: nothing is ever dropped). The band is the open interval; with
    σ = 0 nothing is outside it.
  * Eq. 3 then Eq. 4: the Gumbel softmax at τ replaces Softmax(W_g); the band's zeros and the division by T stay
    (T: ``temperature``, a set hyper-parameter; τ: ``tau``, learnable). No renormalisation after the band
    (``route_renorm: true`` renormalises the kept weights). Evaluation: softmax(W_g/τ), no noise — not in the
    paper: our choice, because the Gumbel noise is introduced "to ensure differentiability during
    backpropagation" (training), and with it a prediction would be random.
  * SDMoE gate input, "a global representation of the multimodal context": ``gate_context: true`` feeds the gate
    [own token; mean of the utterance's present modalities; that mean averaged over the dialogue]; ``false`` only
    the own token.
  * Eq. 6: V_g is one learnable vector scoring each branch output (V_g × F_o); the scores are routed like Eq. 3–4
    (``global_moe: sparse``); ``dense`` = a plain softmax over the branches. The GMoE runs once, on the last
    level's branch outputs F_o = {f_t, f_a, f_v}, giving H_fuse, "the multimodal decision vector" the classifier
    reads, as Eq. 6 defines it; "our proposed GMoE can be applied to any layer for intermediate output processing"
    states a possibility, and what an intermediate GMoE's output would feed is not said, so there is no switch.
  * Eq. 7's s are the scaled scores QKᵀ/√d_h per head (what the softmax of Eq. 8 sees); with different head counts
    teacher and student are compared on their head means. Student level l uses teacher layer ⌊l·L_t/L⌋ (not in
    the paper). Eq. 8's (1 − φM) ⊙ Softmax(·)V is only well-formed on the attention weights: ((1 − φM) ⊙ A) V, not
    renormalised (as written). Its Σ_{i=1}^n is read as the sum over the n heads: concatenating the heads and
    applying the output projection W_o is Σ_i W_o,i head_i, i.e. multi-head attention. φ: one per DynAttn block,
    learnable from ``phi`` (``learn_phi: false`` keeps it set). The paper gives φ no range ("a dynamic adjustment
    factor that moderates the masking field"): ``phi_bound: none`` learns φ itself (not in the paper: our choice,
    because it adds no constraint the text does not state; ``phi_mean`` in the epoch logs shows where it goes);
    then φ > 1 turns the attenuation into negative weights and φ < 0 into amplification. ``phi_bound: sigmoid``
    learns ρ with φ = σ(ρ) ∈ (0, 1), initialised at ``phi``: between no mask and a full mask.
  * HCMF branches: ``branch_query: each`` — every branch queries the others, as "taking HCMF_t as an example"
    implies; ``anchor`` — only the first modality's branch does cross-modal fusion (Eq. 9–10 as printed).
  * Eq. 11 prints p̂ log(p̂/p̄) (student first): KL(student ‖ teacher), ``kl_direction: student_teacher``;
    ``teacher_student`` is the usual KD direction. ``kd_temperature`` (not in the paper, which has no temperature)
    defaults to 1; with T ≠ 1 the term is scaled by T² (Hinton et al.'s convention, keeping the gradient scale),
    inert at T = 1.
  * Eq. 11–13's Σ_{i=1}^N runs over the utterances: each term is summed over the batch's real utterances
    (``ikd_reduction: sum``, as printed); Eq. 14 has a free i and no Σ, and is reduced the same way, so that the κ's
    weigh the four terms as Eq. 15 prints them (κ4 "set with a higher weight"). ``mean`` averages every term
    instead. All four reduced alike, the two differ by the batch's utterance count N_b on the whole of Eq. 15: the
    κ ratios are unchanged and Adam's (§4.3) steps nearly so, but batches then count by their utterances, the
    coupled L2 weight decay and any gradient clipping meet an N_b-times larger gradient, and with
    ``engine_ce: true`` the engine's CE (a mean) weighs 1/N_b against Eq. 15.
  * Eq. 12's gt is the hard label (Eq. 14's "where" defines the soft targets for Eq. 14 only).
  * Eq. 13 is called MSE in the text but printed as an L2 norm: ``inner_loss: mse`` (the text), ``l2`` (the
    formula: per-utterance Euclidean norm), summed over the branches and reduced over the utterances as above.
    Its Σ_{j=1}^C has a summand without j, so it multiplies by the constant C, which κ3 (no value in the paper)
    absorbs: dropped.
  * Eq. 14: the target gives ε to the true class and (1−ε)/(C−1) to each other one (the "where" clause, read as
    written), so ``smooth_eps`` is the TRUE class's share (0.9 = the usual "smoothing 0.1" spread over the other
    classes; the other convention is the same family with ε ↦ 1−ε, so it needs no switch). ε ≤ 1/C would put no
    more mass on the true class than on the others and is rejected. The loss: the text says soft labels are used
    "instead of hard labels" (the CE with soft targets, −Σ_j q_j log softmax(p)_j: ``smooth_form: ce``); the
    printed formula has no log, −Σ_j softmax(p)_j q_j (``smooth_form: printed``). Text and formula disagree, so as
    for Eq. 13 the text decides (the printed form has no log, so its gradient through the softmax vanishes
    as a prediction saturates, right or wrong, and a confident error costs no more than a moderate one).
    The printed denominator Σ_i^N exp(p_{m_i}) runs over the utterances, reusing the numerator's own index i:
    ``smooth_norm: utterances`` is that (per class j, a softmax over the batch's N real utterances). The default,
    ``classes``, normalises over the C classes, because the text calls the term label smoothing with "soft labels
    instead of hard labels" (a distribution over classes per utterance), and a denominator over utterances would
    make each utterance's loss depend on the rest of its batch (and, for a batch of one utterance, be constant).
    It is never class-weighted unless ``smooth_class_weight: true``.
  * Eq. 15 is "our overall training objective": with ``engine_ce: false`` ``aux_loss`` returns ``engine_ce`` =
    −(the engine's CE, with its class weights), cancelling it exactly, so the student is trained on Eq. 15 alone;
    ``engine_ce: true`` keeps the engine's CE beside it. ``ikd: false`` (the "w/o IKD" ablation) = the engine's CE
    alone.

Absent modalities (``absent``; not in the paper: our choice, because the paper assumes every utterance has all
three and says nothing of a missing one): ``drop`` (default, as every other fusion here drops an absent modality)
— an utterance's branch f_m exists only where it has modality m: it is no candidate of the Global MoE (Eq. 6:
weight 0, left out of the router's softmax and of its band statistics), Eq. 12 of branch m runs over the
utterances that have m and Eq. 11/13 over those that have both m and the teacher's modality. ``route`` (the
earlier behaviour) routes and distils every branch at every utterance — an absent branch then carries only what
its speaker/position embedding and the other modalities' keys put there. The branch's own inputs are zeroed and
masked as keys in both.

Not in the paper (our choices, because the text gives no value or form), each with its reason:
  * Eq. 2 adds H_i^m, S_i and P_i, so they share one width: each modality is first projected to ``hidden``
    (``layers.ModalityProjector``: LayerNorm → Linear → GELU → Dropout).
  * Eq. 2's P is sinusoidal ("absolute position embeddings", form not given): it needs no maximum dialogue length
    and no parameters.
  * The student's classifier (Eq. 14's "student model's classifier") and the teacher's (Eq. 11–12) are single
    linear layers: the text names them and gives no form.
  * BiGRU experts of hidden/2 per direction: their concatenated outputs are ``hidden`` wide, the width of U_e that
    Eq. 5 sums them into.
  * τ is stored as log τ, read clamped at 1e-2: Eq. 4 divides by τ, which must stay positive under gradient steps;
    the floor stops a vanishing τ from making the softmax one-hot with exploding gradients.
  * Running μ, σ (momentum 0.1, BatchNorm's default) in evaluation: a prediction must not depend on the rest of
    its batch.
  * Residual + LayerNorm around each SDMoE: when the band zeroes every weight of a token, M_sparse = 0 and the
    residual keeps U_e (§3.5 introduces residual blocks for "smoother" fusion in the same spirit).
  * Pre-LN transformer blocks with FFN width 2·hidden; the LayerNorm on each branch output (so the teacher's
    classifier sees normalised features as in the teacher).
  * The teacher's transformer layers: Eq. 7 needs the teacher's attention scores s_tr, so it has attention layers
    ("BERT-like", §3.5); their number is ``teacher.layers``.
  * The κ values (κ4 "set with a higher weight": 2 vs 1).
  * DialogueRNN on the student's inputs (A.1 runs it at feature extraction; here it is trained with the student,
    as no separately trained one exists), unidirectional as Majumder et al.'s basic model.
With no ``teacher_path`` (tests, benchmarks) the frozen teacher is an untrained one of the configured shape; a
warning says so.

Ablations (paper Tables 3–4, Fig. 4): ``moe: plain`` (softmax gate over all experts), ``fusion: self_attention``
(plain per-modality self-attention instead of HCMF), ``ikd: false``, ``teacher.modality`` (t | a | v), the
teacher's ``teacher.moe: none``, ``fusion_layers``, and the modality subsets through ``train.modalities``.
Table 3's unimodal rows ("using the original attention mechanism model", §4.5) are read as the unimodal teacher
without its SDMoE (``teacher.moe: none``, ``teacher.modality``), whose test scores ``train_teacher`` writes to
reports/teacher/metrics.json; Tables 1–2's "Teacher Model" rows are the same stage with its SDMoE (the default).
"""
from __future__ import annotations

import inspect
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (ModalityProjector, MultiHeadAttention, SpeakerEmbedding, TransformerBlock, attention_mask,
                           check_task, masked_rnn, ordered, sinusoidal_positions, task_loss)
from models.registry import register_model

log = logging.getLogger("merc.models.summer")


# --------------------------------------------------------------------------------------------------- §3.3 / A.1
class DialogueRNN(nn.Module):
    """Majumder et al. 2019 (basic, unidirectional): per turn t with speaker s,
    g_t = GRU_G(g_{t−1}, u_t ⊕ q_{s,t−1}); c_t = Σ_j α_j g_j with α = softmax(u_tᵀ W_α g_{<t});
    q_{s,t} = GRU_P(q_{s,t−1}, u_t ⊕ c_t) (listeners keep their state); e_t = GRU_E(e_{t−1}, q_{s,t}) → output e_t.
    Padding is at the end of a dialogue, so it never reaches a real turn; its outputs are zero."""

    def __init__(self, d_in: int, d: int, max_speakers: int = 16):
        super().__init__()
        self.d, self.S = d, max_speakers
        self.g_cell, self.p_cell, self.e_cell = nn.GRUCell(d_in + d, d), nn.GRUCell(d_in + d, d), nn.GRUCell(d, d)
        self.att = nn.Linear(d, d_in, bias=False)

    def forward(self, u: torch.Tensor, mask: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        B, T, _ = u.shape
        sp = speaker.clamp(0, self.S - 1)
        q = u.new_zeros(B, self.S, self.d)
        g = e = u.new_zeros(B, self.d)
        hist, outs, rows = [], [], torch.arange(B, device=u.device)
        for t in range(T):
            ut, on = u[:, t], mask[:, t : t + 1]
            q_s = q[rows, sp[:, t]]
            g = torch.where(on, self.g_cell(torch.cat([ut, q_s], -1), g), g)
            if hist:
                H = torch.stack(hist, 1)  # [B, t, d] global states of the previous turns
                a = (self.att(H) * ut.unsqueeze(1)).sum(-1).masked_fill(~mask[:, :t], torch.finfo(H.dtype).min)
                c = (a.softmax(-1).unsqueeze(-1) * H).sum(1)
            else:
                c = torch.zeros_like(g)
            q_new = torch.where(on, self.p_cell(torch.cat([ut, c], -1), q_s), q_s)
            q = q + F.one_hot(sp[:, t], self.S).unsqueeze(-1).to(q.dtype) * (q_new - q_s).unsqueeze(1)
            e = torch.where(on, self.e_cell(q_new, e), e)
            hist.append(g)
            outs.append(e * on)
        return torch.stack(outs, 1)


class FrontEnd(nn.Module):
    """§3.3 / A.1 input layers: audio → Linear to ``audio_reduce`` (512 in the paper); each modality in
    ``dialoguernn`` (A.1: visual) → DialogueRNN → FC to ``dialoguernn_dim`` (256). Absent entries stay zero."""

    def __init__(self, input_dims: dict[str, int], audio_reduce: int | None, dialoguernn, dialoguernn_dim: int,
                 max_speakers: int):
        super().__init__()
        dims = dict(input_dims)
        self.reduce = nn.Linear(dims["a"], audio_reduce) if audio_reduce and "a" in dims else None
        if self.reduce is not None:
            dims["a"] = audio_reduce
        rnn_mods = [m for m in (dialoguernn or []) if m in dims]
        bad = [m for m in (dialoguernn or []) if m not in ("t", "a", "v")]
        if bad:
            raise ValueError(f"summer: dialoguernn lists modalities among t, a, v; got {dialoguernn!r}")
        self.rnn = nn.ModuleDict({m: DialogueRNN(dims[m], dialoguernn_dim, max_speakers) for m in rnn_mods})
        self.fc = nn.ModuleDict({m: nn.Linear(dialoguernn_dim, dialoguernn_dim) for m in rnn_mods})
        self.dims = {m: (dialoguernn_dim if m in self.rnn else d) for m, d in dims.items()}

    def forward(self, feats, present, mask, speaker) -> dict[str, torch.Tensor]:
        out = dict(feats)
        on = {m: present[m].unsqueeze(-1).to(f.dtype) for m, f in feats.items()}
        if self.reduce is not None:
            out["a"] = self.reduce(out["a"] * on["a"]) * on["a"]  # absent values never enter (nor leave)
        for m, rnn in self.rnn.items():
            out[m] = self.fc[m](rnn(out[m] * on[m], mask, speaker)) * on[m]
        return out


class UtteranceEmbedding(nn.Module):
    """Eq. 1–2: U_e = H_m + S_j + P_i: each modality projected to ``hidden`` (shared ``ModalityProjector``) plus the
    speaker identity embedding V_s·o_s and the absolute (sinusoidal) position of the turn."""

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


def global_context(x: dict[str, torch.Tensor], valid: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """§3.4 "a global representation of the multimodal context" for the gate: ``[B, T, 2h]`` = [mean of the
    utterance's present modalities; that mean averaged over the dialogue's real turns]."""
    w = torch.stack([valid[m] for m in x], -1).unsqueeze(-2).to(next(iter(x.values())).dtype)  # [B, T, 1, M]
    utt = (torch.stack(list(x.values()), -1) * w).sum(-1) / w.sum(-1).clamp(min=1)  # [B, T, h]
    on = mask.unsqueeze(-1).to(utt.dtype)
    dlg = (utt * on).sum(1, keepdim=True) / on.sum(1, keepdim=True).clamp(min=1)
    return torch.cat([utt, dlg.expand_as(utt)], -1)


# ----------------------------------------------------------------------------------------------------- §3.4
class DynamicRouter(nn.Module):
    """Eq. 3–4 on gate logits W_g ``[B, T, n]``: keep the logits inside (μ − kσ, μ + kσ) (k = ``route_sigma`` = 2),
    Gumbel-softmax them at the learnable τ (noise in training only), zero the rest and divide by T."""

    STATS = ("tensor", "expert", "token")

    def __init__(self, n: int, route_sigma: float = 2.0, tau: float = 1.0, temperature: float = 1.0,
                 stats: str = "tensor", renorm: bool = False, momentum: float = 0.1):
        super().__init__()
        if stats not in self.STATS or temperature <= 0 or tau <= 0:
            raise ValueError(f"summer: route_stats is one of {self.STATS}, temperature and tau > 0; "
                             f"got {stats!r}, {temperature}, {tau}")
        self.k, self.T, self.stats, self.renorm, self.momentum = route_sigma, temperature, stats, renorm, momentum
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau)))  # Eq. 4: τ is learnable
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_std", torch.full((n,), float("inf")))  # nothing dropped before any batch
        self.dropped = [0.0, 0.0]  # weights zeroed, weights routed since the last epoch_logs()

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(min=1e-2)

    def band(self, w: torch.Tensor, valid: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 3's condition: True where W_g ∈ (μ − kσ, μ + kσ); statistics per ``route_stats``, over the real
        utterances' entries (and, with ``avail`` ``[B, T, n]``, only the available candidates)."""
        w = w.detach().float()
        if avail is not None:  # masked statistics: unavailable candidates neither count nor pass
            ev = (avail & valid.unsqueeze(-1)).float()
            if self.stats == "token":
                n = ev.sum(-1, keepdim=True).clamp(min=1)
                mu = (w * ev).sum(-1, keepdim=True) / n
                sd = (((w - mu) ** 2 * ev).sum(-1, keepdim=True) / n).sqrt()
                return (((w - mu).abs() < self.k * sd) | (sd == 0)) & avail
            if self.training and int(ev.sum()) > 1:
                if self.stats == "tensor":
                    n = ev.sum()
                    mu = (w * ev).sum() / n
                    sd = (((w - mu) ** 2 * ev).sum() / n).sqrt()
                    mu, sd = mu.expand(w.shape[-1]), sd.expand(w.shape[-1])
                else:
                    n = ev.sum((0, 1)).clamp(min=1)
                    mu = (w * ev).sum((0, 1)) / n
                    sd = (((w - mu) ** 2 * ev).sum((0, 1)) / n).sqrt()
                self._update_running(mu, sd)
            else:
                mu, sd = self.running_mean, self.running_std
            return (((w - mu).abs() < self.k * sd) | (sd == 0)) & avail
        if self.stats == "token":
            mu, sd = w.mean(-1, keepdim=True), w.std(-1, unbiased=False, keepdim=True)
        elif self.training and int(valid.sum()) > 1:
            sel = w[valid]  # [N, n] real utterances only
            if self.stats == "tensor":
                mu, sd = sel.mean().expand(w.shape[-1]), sel.std(unbiased=False).expand(w.shape[-1])
            else:
                mu, sd = sel.mean(0), sel.std(0, unbiased=False)
            self._update_running(mu, sd)
        else:
            mu, sd = self.running_mean, self.running_std
        return ((w - mu).abs() < self.k * sd) | (sd == 0)

    @torch.no_grad()
    def _update_running(self, mu: torch.Tensor, sd: torch.Tensor) -> None:
        first = torch.isinf(self.running_std)
        self.running_mean.copy_(torch.where(first, mu, torch.lerp(self.running_mean, mu, self.momentum)))
        self.running_std.copy_(torch.where(first, sd, torch.lerp(self.running_std, sd, self.momentum)))

    def forward(self, w: torch.Tensor, valid: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
        """Routing weights ``[B, T, n]``; ``avail`` ``[B, T, n]`` (optional) marks the candidates that exist for
        each utterance: the others get weight 0 and are left out of the softmax and the band statistics."""
        keep = self.band(w, valid, avail)
        z = w.float()
        if self.training:  # Eq. 4: g_noise = −log(−log R), R ~ U(0, 1)
            r = torch.rand_like(w, dtype=torch.float32).clamp(1e-9, 1 - 1e-9)
            z = z - torch.log(-torch.log(r))
        z = z / self.tau
        if avail is not None:  # after the division: a finite fill, so a row with no candidate stays finite
            z = z.masked_fill(~avail, torch.finfo(z.dtype).min)
        g = z.softmax(-1)
        g = g * keep / self.T  # Eq. 3: zero outside the band, divide by T
        if self.renorm:
            s = g.sum(-1, keepdim=True)
            g = torch.where(s > 0, g / s.clamp(min=1e-12), g)
        if self.training:
            ev = valid.unsqueeze(-1) if avail is None else valid.unsqueeze(-1) & avail
            self.dropped[0] += float((~keep & ev).sum())
            self.dropped[1] += float(ev.expand_as(keep).sum())
        return g.to(w.dtype)


class SDMoE(nn.Module):
    """Eq. 3–5: ``experts`` BiGRU experts E_i = BiGRU_i(U_e), a token-wise gate W_g over [own token; global
    multimodal context], dynamic routing (``moe: sdmoe``) or a plain softmax gate (``moe: plain``),
    M_sparse = Σ_i G_i E_i; residual + LayerNorm around it (not in the paper)."""

    def __init__(self, hidden: int, experts: int, moe: str = "sdmoe", gate_context: bool = True,
                 route_sigma: float = 2.0, tau: float = 1.0, temperature: float = 1.0, route_stats: str = "tensor",
                 route_renorm: bool = False, route_momentum: float = 0.1, dropout: float = 0.1,
                 share_experts: bool = False):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"summer: hidden must be even (BiGRU experts of hidden/2 per direction); got {hidden}")
        if moe not in ("sdmoe", "plain"):
            raise ValueError(f"summer: moe is sdmoe|plain; got {moe!r}")
        self.gate_context = gate_context
        self.gate = nn.Linear(hidden * (3 if gate_context else 1), experts)
        self.shared = share_experts  # §3.4 "parameters are shared within intra-modal components", read literally
        self.experts = nn.ModuleList(nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True)
                                     for _ in range(1 if share_experts else experts))
        self.router = DynamicRouter(experts, route_sigma, tau, temperature, route_stats, route_renorm,
                                    route_momentum) if moe == "sdmoe" else None
        self.norm, self.drop = nn.LayerNorm(hidden), nn.Dropout(dropout)

    def weights(self, x, valid, context=None) -> torch.Tensor:
        w = self.gate(torch.cat([x, context], -1) if self.gate_context else x)  # W_g
        return w.softmax(-1) if self.router is None else self.router(w, valid)

    def forward(self, x, mask, valid, context=None) -> torch.Tensor:
        g = self.weights(x, valid, context)  # [B, T, E]
        if self.shared:  # n identical experts E_i = BiGRU(U_e): Eq. 5 = (Σ_i Ĝ_i)·BiGRU(U_e)
            out = g.sum(-1, keepdim=True) * masked_rnn(self.experts[0], x, mask)
        else:
            out = sum(g[..., e : e + 1] * masked_rnn(expert, x, mask) for e, expert in enumerate(self.experts))  # Eq. 5
        return self.norm(x + self.drop(out))


class GlobalMoE(nn.Module):
    """Eq. 6: router logits V_g·f_i for each branch output f_i (V_g one learnable vector, the "global dynamic
    adapter"), sparse dynamic routing (Eq. 3–4) or a dense softmax, H_fuse = Σ_i G_i f_i."""

    def __init__(self, hidden: int, branches: int, sparse: bool = True, **route):
        super().__init__()
        self.v_g = nn.Linear(hidden, 1)
        self.router = DynamicRouter(branches, **route) if sparse else None

    def forward(self, branches: list[torch.Tensor], valid: torch.Tensor,
                avail: torch.Tensor | None = None) -> torch.Tensor:
        """``avail`` ``[B, T, K]`` (``absent: drop``): a branch whose modality the utterance lacks is no candidate
        (weight 0, outside the softmax); None routes every branch (``absent: route``)."""
        f = torch.stack(branches, -2)  # [B, T, K, h]
        w = self.v_g(f).squeeze(-1)  # [B, T, K]
        if self.router is not None:
            g = self.router(w, valid, avail)
        elif avail is None:
            g = w.softmax(-1)
        else:
            g = w.float().masked_fill(~avail, torch.finfo(torch.float32).min).softmax(-1) * avail
            g = g.to(w.dtype)
        return (f * g.unsqueeze(-1)).sum(-2)


# ----------------------------------------------------------------------------------------------------- §3.5
def dynattn_mask(s_tr: torch.Tensor, s_st: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Eq. 7: M_ij = 1 where √((s_tr − s_st)²) = |s_tr − s_st| > threshold (0.5 in the paper), else 0. With
    different head counts (dim 1) both sides are compared on their head means."""
    if s_tr.shape[1] != s_st.shape[1]:
        s_tr, s_st = s_tr.mean(1, keepdim=True), s_st.mean(1, keepdim=True)
    return ((s_tr.float() - s_st.detach().float()).abs() > threshold).to(s_st.dtype)


class DynAttention(MultiHeadAttention):
    """Eq. 8: DynAttn = ((1 − φM) ⊙ Softmax(QKᵀ/√d)) V, M from Eq. 7 with the teacher's scores ``guide``; without
    a guide it is plain multi-head attention. ``forward`` also returns the scores s = QKᵀ/√d ``[B, H, Tq, Tk]``
    (the teacher exposes these for the student)."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0, phi: float | None = None, learn_phi: bool = True,
                 threshold: float = 0.5, phi_bound: str = "none"):
        super().__init__(d, heads, dropout)
        if phi_bound not in ("none", "sigmoid") or (phi_bound == "sigmoid" and phi is not None and not 0 < phi < 1):
            raise ValueError(f"summer: phi_bound is none|sigmoid (sigmoid needs 0 < phi < 1); got {phi_bound!r}, "
                             f"phi {phi}")
        self.threshold, self.bound = threshold, phi_bound
        if phi is not None:  # with phi_bound: sigmoid the stored value is the logit ρ, φ = σ(ρ)
            t = torch.tensor(float(phi) if phi_bound == "none" else math.log(phi / (1 - phi)))
            if learn_phi:
                self.phi = nn.Parameter(t)
            else:
                self.register_buffer("phi", t)
        else:
            self.phi = None
        self.masked = [0.0, 0.0]  # pairs attenuated, real pairs since the last epoch_logs()

    @property
    def phi_value(self) -> torch.Tensor:
        """Eq. 8's φ: the stored value (``phi_bound: none``) or σ(ρ) ∈ (0, 1) (``sigmoid``)."""
        return self.phi.sigmoid() if self.bound == "sigmoid" else self.phi

    def forward(self, x, kv=None, mask=None, guide=None):
        kv = x if kv is None else kv
        (B, Tq, d), Tk = x.shape, kv.shape[1]
        q = self.q(x).view(B, Tq, self.h, self.dh).transpose(1, 2)
        k = self.k(kv).view(B, Tk, self.h, self.dh).transpose(1, 2)
        v = self.v(kv).view(B, Tk, self.h, self.dh).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.dh)  # s_st (or s_tr in the teacher)
        m = None if mask is None else mask.unsqueeze(1)
        a = s.masked_fill(~m, torch.finfo(s.dtype).min).softmax(-1) * m if m is not None else s.softmax(-1)
        if guide is not None and self.phi is not None:
            M = dynattn_mask(guide, s, self.threshold)  # Eq. 7
            a = a * (1 - self.phi_value.to(a.dtype) * M)  # Eq. 8: attenuate, do not remove
            if self.training and m is not None:
                self.masked[0] += float((M * m).sum())
                self.masked[1] += float(m.sum()) * M.shape[1]
        out = (self.drop(a) @ v).transpose(1, 2).reshape(B, Tq, d)
        return self.o(out), s


class DynBlock(TransformerBlock):
    """A residual pre-LN transformer block (§3.5 "residual blocks") whose attention is ``DynAttention``."""

    def __init__(self, d: int, heads: int, dropout: float = 0.1, cross: bool = False, **dyn):
        super().__init__(d, heads, dropout, cross=cross)
        self.attn = DynAttention(d, heads, dropout, **dyn)

    def forward(self, x, mask=None, kv=None, guide=None):
        h = self.ln1(x)
        if (kv is None) != (self.ln_kv is None):
            raise ValueError("a cross block needs kv; a self-attention block takes none")
        a, s = self.attn(h, h if kv is None else self.ln_kv(kv), mask, guide)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.ln2(x))), s


def _route_kwargs(route_sigma, tau, temperature, route_stats, route_renorm, route_momentum) -> dict:
    return dict(route_sigma=route_sigma, tau=tau, temperature=temperature, stats=route_stats, renorm=route_renorm,
                momentum=route_momentum)


def _epoch_logs(module: nn.Module, prefix: str = "") -> dict[str, float]:
    """τ and share of routed weights dropped per router, share of attention pairs attenuated, mean φ (then reset)."""
    logs, masked, phis = {}, [0.0, 0.0], []
    for name, sub in module.named_modules():
        if name.startswith("teacher."):
            continue  # frozen: nothing to log
        if isinstance(sub, DynamicRouter):
            parts = name.split(".")  # moe.<m>.router (student), moe.router (teacher), global_moe.router
            key = "global" if parts[0] == "global_moe" else parts[1] if len(parts) > 2 else parts[0]
            logs[f"{prefix}tau_{key}"] = float(sub.tau.detach())
            logs[f"{prefix}route_dropped_{key}"] = sub.dropped[0] / max(sub.dropped[1], 1.0)
            sub.dropped = [0.0, 0.0]
        elif isinstance(sub, DynAttention):
            masked = [masked[0] + sub.masked[0], masked[1] + sub.masked[1]]
            sub.masked = [0.0, 0.0]
            if sub.phi is not None:
                phis.append(float(sub.phi_value.detach()))
    if masked[1]:
        logs[f"{prefix}dyn_masked"] = masked[0] / masked[1]
    if phis:
        logs[f"{prefix}phi_mean"] = sum(phis) / len(phis)
    return logs


# ----------------------------------------------------------------------------------------------- the teacher
@register_model("summer_teacher")
class SummerTeacher(nn.Module):
    """§3.5 unimodal teacher "pre-trained using the SDMoE module": Eq. 1–2 → SDMoE (``moe``: sdmoe | plain |
    none) → ``layers`` transformer layers exposing their scores s_tr → LayerNorm → classifier."""

    required_modalities = ("t",)  # with the default modality; `modality` picks another

    def __init__(self, input_dims: dict[str, int], n_classes: int, modality: str = "t", hidden: int = 128,
                 heads: int = 4, layers: int = 1, dropout: float = 0.2, max_speakers: int = 16, moe: str = "sdmoe",
                 experts: int = 4, gate_context: bool = True, route_sigma: float = 2.0, tau: float = 1.0,
                 temperature: float = 1.0, route_stats: str = "tensor", route_renorm: bool = False,
                 route_momentum: float = 0.1, audio_reduce: int | None = None, dialoguernn=("v",),
                 dialoguernn_dim: int = 256, share_experts: bool = False):
        super().__init__()
        if modality not in input_dims:
            raise ValueError(f"summer_teacher needs the {modality!r} modality; got {sorted(input_dims)}")
        if moe not in ("sdmoe", "plain", "none"):
            raise ValueError(f"summer_teacher: moe is sdmoe|plain|none; got {moe!r}")
        self.modality = modality
        self.front = FrontEnd({modality: input_dims[modality]}, audio_reduce, dialoguernn, dialoguernn_dim,
                              max_speakers)
        self.embed = UtteranceEmbedding(self.front.dims, hidden, dropout, max_speakers)
        self.moe = None if moe == "none" else SDMoE(
            hidden, experts, moe, gate_context, route_sigma, tau, temperature, route_stats, route_renorm,
            route_momentum, dropout, share_experts=share_experts)
        self.blocks = nn.ModuleList(DynBlock(hidden, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, n_classes)

    def encode(self, feats, present, mask, speaker) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features f_tr ``[B, T, h]`` and every layer's attention scores s_tr ``[B, H, T, T]`` (Eq. 7)."""
        m = self.modality
        f = self.front({m: feats[m]}, {m: present[m]}, mask, speaker)
        x = self.embed(f, {m: present[m]}, speaker)[m]
        if self.moe is not None:
            valid = present[m] & mask
            x = self.moe(x, mask, valid, global_context({m: x}, {m: valid}, mask))
        scores, pair = [], attention_mask(mask, mask)
        for block in self.blocks:
            x, s = block(x, pair)
            scores.append(s)
        return self.norm(x), scores

    def features(self, feats, present, mask, speaker) -> torch.Tensor:
        return self.encode(feats, present, mask, speaker)[0]

    def forward(self, feats, present, mask, speaker):
        return self.classifier(self.features(feats, present, mask, speaker))

    def epoch_logs(self) -> dict[str, float]:
        return _epoch_logs(self)


TEACHER_ARCH = tuple(k for k in inspect.signature(SummerTeacher).parameters
                     if k not in ("input_dims", "n_classes", "modality"))  # the teacher-block keys that shape it


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a buffer of the same name: it stays in ``state_dict`` (and moves
    with ``.to``) but is no parameter, so no optimiser, weight decay or gradient can ever touch it."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            del sub._parameters[name]
            sub.register_buffer(name, None if p is None else p.detach())
    return module.eval()


def smooth_targets(label: torch.Tensor, n_classes: int, eps: float) -> torch.Tensor:
    """Eq. 14's δ(gt): ε on the true class, (1 − ε)/(C − 1) on every other class (rows sum to 1)."""
    q = torch.full((*label.shape, n_classes), (1.0 - eps) / (n_classes - 1), device=label.device)
    return q.scatter(-1, label.unsqueeze(-1), eps)


# ------------------------------------------------------------------------------------------------ the student
@register_model("summer")
class Summer(nn.Module):
    """The SUMMER student (see the module docstring); returns logits and keeps what ``aux_loss`` needs."""

    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, heads: int = 4,
                 experts: int = 4, fusion_layers: int = 1, moe: str = "sdmoe", gate_context: bool = True,
                 route_sigma: float = 2.0, tau: float = 1.0, temperature: float = 1.0, route_stats: str = "tensor",
                 route_renorm: bool = False, route_momentum: float = 0.1, fusion: str = "hcmf",
                 branch_query: str = "each", dyn_threshold: float = 0.5, phi: float = 0.5, learn_phi: bool = True,
                 global_moe: str = "sparse", ikd: bool = True, kl_direction: str = "student_teacher",
                 kd_temperature: float = 1.0, inner_loss: str = "mse", smooth_eps: float = 0.9,
                 smooth_form: str = "ce", smooth_class_weight: bool = False, engine_ce: bool = False,
                 kappa1: float = 1.0, kappa2: float = 1.0, kappa3: float = 1.0, kappa4: float = 2.0,
                 audio_reduce: int | None = None, dialoguernn=("v",), dialoguernn_dim: int = 256,
                 dropout: float = 0.2, max_speakers: int = 16, teacher_path: str | None = None,
                 teacher: dict | None = None, share_experts: bool = False, phi_bound: str = "none",
                 smooth_norm: str = "classes", ikd_reduction: str = "sum", absent: str = "drop",
                 task: str = "classification"):
        super().__init__()
        self.task = check_task(task, "summer")
        choices = {"fusion": (fusion, ("hcmf", "self_attention")), "branch_query": (branch_query, ("each", "anchor")),
                   "global_moe": (global_moe, ("sparse", "dense")), "inner_loss": (inner_loss, ("mse", "l2")),
                   "kl_direction": (kl_direction, ("student_teacher", "teacher_student")),
                   "smooth_form": (smooth_form, ("ce", "printed")), "phi_bound": (phi_bound, ("none", "sigmoid")),
                   "smooth_norm": (smooth_norm, ("classes", "utterances")),
                   "ikd_reduction": (ikd_reduction, ("sum", "mean")), "absent": (absent, ("drop", "route"))}
        for key, (val, ok) in choices.items():
            if val not in ok:
                raise ValueError(f"summer: {key} is one of {'|'.join(ok)}; got {val!r}")
        if self.task == "classification" and not 1.0 / n_classes < smooth_eps < 1.0:
            raise ValueError(f"summer: smooth_eps is the true class's share of the Eq. 14 target (0.9 = usual "
                             f"smoothing 0.1); it must lie in (1/C, 1) = ({1 / n_classes:.3f}, 1); got {smooth_eps}")
        if fusion_layers < 1:
            raise ValueError(f"summer: fusion_layers must be >= 1; got {fusion_layers}")
        route = _route_kwargs(route_sigma, tau, temperature, route_stats, route_renorm, route_momentum)
        self.front = FrontEnd(input_dims, audio_reduce, dialoguernn, dialoguernn_dim, max_speakers)
        self.embed = UtteranceEmbedding(self.front.dims, hidden, dropout, max_speakers)
        mods = self.modalities = self.embed.modalities
        self.gate_context = gate_context
        self.moe = nn.ModuleDict({m: SDMoE(hidden, experts, moe, gate_context, route_sigma, tau, temperature,
                                           route_stats, route_renorm, route_momentum, dropout,
                                           share_experts=share_experts) for m in mods})
        self.fusion, self.L = fusion, fusion_layers
        guided = fusion == "hcmf"
        dyn = dict(phi=phi if guided else None, learn_phi=learn_phi, threshold=dyn_threshold, phi_bound=phi_bound)
        self.intra = nn.ModuleList(nn.ModuleDict({m: DynBlock(hidden, heads, dropout, **dyn) for m in mods})
                                   for _ in range(fusion_layers))
        anchors = (mods if branch_query == "each" else mods[:1]) if guided else []
        self.pairs = [(m, o) for m in anchors for o in mods if o != m]  # branch m queries o (Eq. 9–10 order)
        self.cross = nn.ModuleList(nn.ModuleDict({m + o: DynBlock(hidden, heads, dropout, cross=True, **dyn)
                                                  for m, o in self.pairs}) for _ in range(fusion_layers)) \
            if self.pairs else None
        self.branch_norm = nn.ModuleDict({m: nn.LayerNorm(hidden) for m in mods})
        self.global_moe = GlobalMoE(hidden, len(mods), global_moe == "sparse", **route) if len(mods) > 1 else None
        self.head = nn.Linear(hidden, n_classes)
        self.C, self.ikd, self.T, self.eps = n_classes, ikd, kd_temperature, smooth_eps
        self.kl_direction, self.inner_loss, self.smooth_form = kl_direction, inner_loss, smooth_form
        self.smooth_class_weight, self.engine_ce = smooth_class_weight, engine_ce
        self.smooth_norm, self.ikd_reduction, self.absent = smooth_norm, ikd_reduction, absent
        self.kappa = (kappa1, kappa2, kappa3, kappa4)
        self.teacher = self._teacher(input_dims, n_classes, hidden, heads, dropout, max_speakers, teacher_path,
                                     dict(teacher or {})) if (ikd or guided) else None
        self._cache: dict = {}

    @staticmethod
    def _teacher(input_dims, n_classes, hidden, heads, dropout, max_speakers, path, tcfg) -> SummerTeacher:
        if path:
            from pipeline.training.checkpoint import load_checkpoint  # weights_only: a teacher file cannot run code

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
            width = len(ck.get("targets") or ck["labels"])  # classes, or regression targets
            if width != n_classes or arch["hidden"] != hidden:
                raise ValueError(f"summer: teacher ({width} outputs, hidden {arch['hidden']}) does not "
                                 f"match the student ({n_classes} outputs, hidden {hidden})")
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
        f = self.front(feats, present, mask, speaker)
        x = self.embed(f, present, speaker)  # Eq. 1–2
        ctx = global_context(x, valid, mask) if self.gate_context else None
        z = {m: self.moe[m](x[m], mask, valid[m], ctx) for m in self.modalities}  # SDMoE, Eq. 3–5
        h_t, s_tr = None, None
        if self.teacher is not None and (self.fusion == "hcmf" or self.training):
            with torch.no_grad():
                h_t, s_tr = self.teacher.encode(feats, present, mask, speaker)
        keys = {m: attention_mask(mask, valid[m]) for m in self.modalities}
        for level in range(self.L):
            guide = s_tr[level * len(s_tr) // self.L] if self.fusion == "hcmf" and s_tr else None
            z = {m: self.intra[level][m](z[m], keys[m], guide=guide)[0] for m in self.modalities}  # intra DynAttn
            if self.cross is not None:  # Eq. 9–10: branch m's running output queries the next modality
                fused = {}
                for m, o in self.pairs:
                    u = fused.get(m, z[m])
                    fused[m] = self.cross[level][m + o](u, keys[o], kv=z[o], guide=guide)[0]
                z.update(fused)
        branches = [self.branch_norm[m](z[m]) for m in self.modalities]  # f_m: HCMF branch outputs
        # absent: drop — branch m exists only where the utterance has modality m (as every other fusion here)
        bvalid = [valid[m] if self.absent == "drop" else mask for m in self.modalities]
        avail = torch.stack(bvalid, -1) if self.absent == "drop" else None
        h = branches[0] if self.global_moe is None else self.global_moe(branches, mask, avail)  # Eq. 6
        logits = self.head(h)
        if self.training:  # for aux_loss, called by the engine right after this forward
            tm = self.teacher.modality if self.teacher is not None else None
            self._cache = {"logits": logits, "branches": branches, "h_t": h_t, "branch_valid": bvalid,
                           "teacher_valid": valid.get(tm, mask) if self.absent == "drop" else mask}
        return logits

    def aux_loss(self, out, batch) -> dict[str, torch.Tensor]:
        """Eq. 11–15 on the real utterances: per branch f_m, the teacher's classifier gives p̂_m; κ1·Σ KL(p̂_m, p̄)
        + κ2·Σ CE(p̂_m, gt) + κ3·Σ ‖f_tr − f_m‖ + κ4·L_smooth(student logits); ``engine_ce`` cancels the engine's
        CE when ``engine_ce: false`` (Eq. 15 is the whole objective)."""
        c, self._cache = self._cache, {}
        # the same values, not the same object: DistributedDataParallel hands the engine a new tensor for the output
        if not c or c["logits"].shape != out.shape or not torch.equal(c["logits"].detach(), out.detach()):
            raise RuntimeError("summer.aux_loss needs the output of the forward call just before it (training mode)")
        if not self.ikd:
            return {}
        label = batch["label"]
        valid = batch["mask"] if self.task == "regression" else batch["mask"] & (label >= 0)
        if not valid.any():  # no labelled utterance: every term is a mean over none (NaN); contribute nothing
            zero = out.sum() * 0.0
            names = ["ikd_cross", "ikd_align", "ikd_inner"] + ([] if self.task == "regression" else
                                                               ["smooth"] + ([] if self.engine_ce else ["engine_ce"]))
            return {k: zero for k in names}
        if self.task == "regression":
            return self._ikd_regression(c, batch)
        y = label[valid]
        # Eq. 11–14's Σ_i runs over the GLOBAL batch: under DDP the W ranks' gradients are averaged, so each rank's
        # sum counts W times (ikd_reduction: sum); means need no correction
        ws = torch.distributed.get_world_size() if self.ikd_reduction == "sum" and torch.distributed.is_available() \
            and torch.distributed.is_initialized() else 1
        n = y.numel() * ws if self.ikd_reduction == "sum" else 1  # Eq. 14's Σ over the N utterances | mean
        k4 = self.kappa[3] * n
        red = (lambda x: x.sum() * ws) if self.ikd_reduction == "sum" else (lambda x: x.mean())  # Eq. 11–13's Σ_i | mean
        T, teacher = self.T, self.teacher
        bvalid = c.get("branch_valid") or [batch["mask"]] * len(c["branches"])
        tvalid = c.get("teacher_valid", batch["mask"])
        cross = align = inner = 0.0
        for f_all, bv in zip(c["branches"], bvalid):
            # Eq. 12 needs the branch; Eq. 11 and 13 also the teacher's own modality (absent: drop)
            rows, pair = valid & bv, valid & bv & tvalid
            if not rows.any():  # the modality is absent from the whole batch: a zero that keeps the graph
                zero = f_all.sum() * 0.0
                cross, align, inner = cross + zero, align + zero, inner + zero
                continue
            z = teacher.classifier(f_all[rows].float())  # p̂_mi: student branch features, the teacher's classifier
            align = align + red(F.cross_entropy(z, label[rows], reduction="none"))  # Eq. 12 (hard labels)
            if not pair.any():
                cross, inner = cross + z.sum() * 0.0, inner + z.sum() * 0.0
                continue
            f, h_t = f_all[pair].float(), c["h_t"][pair].float()
            log_pbar = (teacher.classifier(h_t) / T).log_softmax(-1)  # p̄: the teacher's features, its classifier
            log_phat = (teacher.classifier(f) / T).log_softmax(-1)
            p, lp, lq = (log_phat.exp(), log_phat, log_pbar) if self.kl_direction == "student_teacher" \
                else (log_pbar.exp(), log_pbar, log_phat)
            cross = cross + red((p * (lp - lq)).sum(-1)) * T * T  # Eq. 11
            d = f - h_t
            inner = inner + red((d * d).mean(-1) if self.inner_loss == "mse" else d.norm(dim=-1))  # Eq. 13
        k1, k2, k3 = self.kappa[:3]
        logits = c["logits"][valid].float()
        q = smooth_targets(y, self.C, self.eps)  # Eq. 14's δ(gt)
        dim = 0 if self.smooth_norm == "utterances" else -1  # Eq. 14's denominator: over the N utterances | classes
        per = -(logits.softmax(dim) * q).sum(-1) if self.smooth_form == "printed" \
            else -(q * logits.log_softmax(dim)).sum(-1)
        cw = batch.get("class_weight")
        if self.smooth_class_weight and cw is not None:
            smooth = (per * cw[y]).sum() / cw[y].sum()
        else:
            smooth = per.mean()
        losses = {"ikd_cross": k1 * cross, "ikd_align": k2 * align, "ikd_inner": k3 * inner, "smooth": k4 * smooth}
        if not self.engine_ce:  # exactly the engine's task loss, negated: Eq. 15 alone is optimised
            full = out.float()
            losses["engine_ce"] = -F.cross_entropy(full.reshape(-1, full.shape[-1]), label.reshape(-1),
                                                   weight=cw, ignore_index=-100)
        return losses

    def _ikd_regression(self, c: dict, batch: dict) -> dict[str, torch.Tensor]:
        """IKD for a regression task — not in the paper: our choice, because Eq. 11–14 are defined on class
        distributions. Eq. 11: MSE between the teacher's regressor on f_m and on f_tr (in place of the KL);
        Eq. 12: MSE of the teacher's regressor on f_m against the targets (in place of the CE); Eq. 13 as
        written; Eq. 14 (the label-smoothed CE that trains the student's head) has no regression counterpart: the
        engine's task loss (MSE or CCC) takes its place, so ``engine_ce`` is ignored in regression — and since that
        loss is a mean over utterances, the IKD terms are means too (``ikd_reduction`` is not applied), so Eq. 15's
        κ ratios between the terms hold."""
        valid = batch["mask"]
        k1, k2, k3, _ = self.kappa
        teacher = self.teacher
        bvalid = c.get("branch_valid") or [valid] * len(c["branches"])
        tvalid = c.get("teacher_valid", valid)
        cross = align = inner = 0.0
        for f_all, bv in zip(c["branches"], bvalid):
            rows, pair = valid & bv, valid & bv & tvalid  # absent: drop, as for classification
            zero = f_all.sum() * 0.0
            if not rows.any():
                cross, align, inner = cross + zero, align + zero, inner + zero
                continue
            align = align + F.mse_loss(teacher.classifier(f_all[rows].float()), batch["target"][rows].float())
            if not pair.any():
                cross, inner = cross + zero, inner + zero
                continue
            f, h_t = f_all[pair].float(), c["h_t"][pair].float()
            cross = cross + F.mse_loss(teacher.classifier(f), teacher.classifier(h_t))
            d = f - h_t
            inner = inner + ((d * d).mean() if self.inner_loss == "mse" else d.norm(dim=-1).mean())
        return {"ikd_cross": k1 * cross, "ikd_align": k2 * align, "ikd_inner": k3 * inner}

    def epoch_logs(self) -> dict[str, float]:
        """τ and the share of weights dropped per router, the share of DynAttn pairs attenuated, mean φ."""
        return _epoch_logs(self)
