"""Ada2I — Nguyen, Le, Mai and Le, "Ada2I: Enhancing Modality Balance for Multimodal Conversational Emotion
Recognition", ACM Multimedia 2024 (arXiv:2408.12895); official code: github.com/leson502/ADA2I.

Regression (``task: regression``, set by ``train`` from the prepared table; issue #20) — not in the paper: our
choice, because Eq. 13 and 16 are written for classes: L_modal is the MSE of Z^{m-adapt} on the targets and the
modality score s_m = exp(−MSE of modality m's unimodal prediction W_m h_m + b/M) ∈ (0, 1] (the true-class
probability's role: 1 = perfect), so Eq. 17–19 run unchanged.

Pipeline (equation numbers are the paper's):
  0. Eq. 1, the input: each utterance's t/a/v feature vectors (``feats``), a conversation of N utterances per
     dialogue (``mask``); a modality a row lacks is ``present`` false and masked everywhere.
  1. Per-modality encoders: a transformer over the utterances of the dialogue at the feature's width, then a
     linear map to ``hidden``. ``encoder_dim`` first projects a (too) wide feature to a set width — the
     default is the official MELD input widths (audio 300-d, visual 342-d), so a 6373-d ComParE vector
     does not get a 6373-wide transformer. ``heads: null`` takes the official rule (the first divisor of the
     width in 5..14, else 1); ``ff_dim`` is the FFN width (PyTorch's 2048 in the official encoder). The
     block is the shared pre-LN ``TransformerEncoder`` (GELU, final LayerNorm; the official one is PyTorch's
     post-LN ReLU layer — same parameter count up to the final LayerNorm).
  2. AFW, Adaptive Feature Weighting (``afw_layers`` stacked layers over all modalities):
       * Eq. 3–5, tensor-ring cores: per modality m, a query core G_q = (W_q1 h) ⊗ (W_q2 h) and a key core
         G_k = (W_k1 h) ⊗ (W_k2 h) (rank-``rank`` mode-1 Khatri–Rao, i.e. outer, products; [R, R] per
         utterance) and their Hadamard product G_m = G_q ∘ G_k.
       * Eq. 6, attention pooling: P_m = mean of G_m over the dialogue's valid utterances; the inter-modal
         contraction A_m = G_m · Π_{l≠m} P_l (matrix products in t, a, v order) → a linear map R² → hidden gives
         the feature weights w_m.
       * Eq. 7, feature-aware attention: h'_m = w_m ∘ h_m + β h_m, then dropout (not in the paper: our choice,
         because the official code applies it there).
       * Eq. 11–12, attention mapping network: ŵ_m = f_m(h_m) (one linear layer) and the L1 feature loss
         L_feature = Σ‖ŵ − w‖₁ (``feature_reduction``, below), summed over layers, added with weight 1 (training
         only; returned as the ``feature`` loss). ``feature_target`` (below): ``attention`` regresses w_m (Eq.
         11–12), ``output`` regresses h'_m before dropout — what the official code ends up computing (its
         ``_att = att`` aliases the list it then overwrites).
  3. AMW, Adaptive Modality Weighting (Eq. 8): the classifier W = [W_t | W_a | W_v] split per modality,
     logits = Σ_m norm(h_m) · norm(W_m)ᵀ + b, features L2-normalised over the hidden axis and each modality's
     weights over the class axis (as in the official code; no temperature). L_modal (Eq. 13) is the
     cross-entropy of these logits — the model's output, so it is the engine's task loss (the official code
     optimises exactly this cross-entropy plus L_feature). ``amw: false``: logits = W [h_t; h_a; h_v] + b.
  4. Training (Eq. 16–19), through the engine hooks — no second loop:
       * ``forward`` stashes each modality's unimodal logits W_m h_m + b/M (detached; the official score
         uses this un-normalised partition of the classifier even with AMW on);
       * ``aux_loss`` (it has the labels) scores each modality, s_m = mean over labelled utterances where m
         is present of softmax(W_m h_m + b/M)_y (Eq. 16; the official sum, divided by the count so modalities
         with missing rows compare fairly), and the disparity ratio ρ_m = s_m / min_m' s_m' (Eq. 17);
       * ``before_step`` (after backward) multiplies the gradients of modality m's encoder by
         k_m = 1 − tanh(α · ρ_m) when ρ_m > 1, else 1 (Eq. 18; exactly the official code: no shift by 1, so the
         weakest modality keeps its gradient and every other one is scaled by at most 1 − tanh(α)), then adds
         Gaussian noise N(0, σ²), σ = std of that (modulated) gradient + 1e-8, to every modality's encoder
         gradients (Eq. 19; official ``--normalize``). Active from epoch ``start_mod`` to ``end_mod``
         (1-based, official MELD: from epoch 4), with ≥ 2 modalities only.
       * ``epoch_logs`` reports the epoch mean of ρ_t, ρ_a, ρ_v (the paper's Fig. 4; DVCLive writes
         ``reports/train/plots/metrics/train/rho_<m>.tsv``).
     Clipping order: the official loop clips before modulation (so the noise is not clipped); the engine
     does that with ``train.clip_before_hooks: true`` (the Ada2I recipes), after the hook otherwise.

``paper_equations`` (default true: the paper; false: the official code, leson502/ADA2I, which produced the
paper's numbers, so the recipes set false and the printed equations are the one-switch row
``-S model_params.ada2i.paper_equations=true``) — where they differ:
  * Eq. 4: Θ_m = softmax(G_Q ⊙ G_K / √d_k). The softmax runs over the last core axis (r_w, the key axis of an
    attention row; the paper names no axis) and d_k = ``rank`` (that axis' size; the paper does not define
    d_k). The pooled A^(m) of Eq. 6 are means of Θ. Official: no softmax, no scaling (Θ = G_Q ⊙ G_K).
  * Eq. 6: Θ^m ×A^(t) ×A^(a) ×A^(v) contracts with every modality's pooled core, the modality's own included.
    Official: every other modality's only.
  * Eq. 9–10, 13–14: ŷ = MLP(Z^{m-adapt}) (Linear → ReLU → Linear, width ``hidden``: the paper gives none) is
    the model's output and L_cls (Eq. 10) its cross-entropy (the engine's task loss); L_modal (Eq. 13) is the
    cross-entropy of Z^{m-adapt} itself, returned by ``aux_loss`` as ``modal`` (class-weighted like the task
    loss). Official: no MLP; the prediction is Z^{m-adapt}, and L_modal is the only cross-entropy.
  * Eq. 16: s_m from softmax(cos⟨W_k^m, Z_j^m⟩ + b_k/M) — cosine between class k's weights of modality m and
    the utterance's features. Official: softmax(W^m Z^m + b/M), un-normalised logits.

Logged per epoch (``epoch_logs``; DVCLive → ``reports/train/plots/metrics/train/``): ρ_m (Fig. 4), the epoch
mean of s_m as ``score_<m>`` (Fig. 1b: per-modality unimodal scores) and, at the epoch's end, the L2 norm of
each class's AMW weight row per modality, ``wnorm_<m>_c<k>`` (Fig. 5).

Our additions for the shared data contract: padded utterances and absent modalities are masked everywhere
(encoder attention, AFW pooling, L_feature and the scores; the official code pools over padding).

Ablations (the paper's w/o AFW, w/o AMW, w/o modulation): ``afw: false`` (without AFW), ``amw: false`` (without AMW),
``modulation: false`` (without the modulation and its noise; ρ is still logged), ``noise: false``; modality
pairs (Table 3) by ``train.modalities``.

Official MELD settings (``run.sh``) → params.yaml ``model_params.ada2i``: hidden 200, tensor rank 6, α 0.42,
β 0.55, 2 AFW layers, 2 encoder layers, dropout 0.5, modulation with noise from epoch 4. Their training
settings are ``train`` params here: lr 1.3e-4, batch 10, 50 epochs, early stop 20 (Adam, clip-norm 2).
Size: 20.6 M parameters on the MELD-sized bench features (t/a/v 768/6373/512, of which 1.9 M is the 6373→300
audio projection); the official model on its 768/300/342-d MELD features has 18.6 M.

Four more places where the paper and the official code differ, each a switch whose ``null`` default follows
``paper_equations`` (paper when true, official when false), so ``paper_equations: false`` alone is the whole
official path (the recipes' setting) and ``true`` alone the whole printed one; a non-null value pins one switch:
  * ``feature_target`` — Eq. 11–12's target: ``attention`` (paper: Att_m, the feature weights w_m) | ``output``
    (official: h'_m, the AFW output before dropout, through the list aliasing described in step 2).
  * ``amw_norm`` — Eq. 8 divides W^m Z by ‖W^m‖‖Z‖. ``class`` (paper): each class row W_k^m normalised, so each
    modality's logit is cos⟨W_k^m, Z^m⟩ — the reading Eq. 16 states ("the cosine similarity between the output
    weights and the corresponding feature vectors"), MMCosine's [39], and the per-class weight norms of §5.2.2 /
    Fig. 5. ``hidden`` (official ``net.py``): each hidden unit's column normalised across classes. ``matrix``:
    the whole block by its Frobenius norm (Eq. 8's ‖W^m‖ read on its own). Z is normalised per utterance in all.
  * ``feature_reduction`` — Eq. 12: L_feature = (1/B) Σ_i Σ_m ‖Att − Âtt‖₁. ``sum`` (paper): the L1 norms summed
    over the modalities and the elements, divided by B = the utterances with at least one modality (Eq. 13's i is
    "the i-th sample", an utterance, as the engine's L_cls averages); ``mean`` (official ``nn.L1Loss``): the mean
    over every element (d·M times smaller: d = ``hidden``, M the modalities). Padding and absent rows are excluded
    in both (the official code averages over padding). Measured on a tiny batch (4 dialogues × ≤ 12 utterances,
    random N(0, 1) features, recipe sizes hidden 200, rank 6, dropout 0.5, training mode, mean of 3 seeds;
    ``torch.autograd.grad`` of each loss over all parameters): ‖∇L_feature‖ / ‖∇L_task‖ (L_task = the engine's CE + L_modal) is 133 with every printed equation
    (``paper_equations: true``, t/a/v at the MELD recipe widths 768/6373/1024) and 0.056 on the whole official
    path (``false``); changing only this switch gives 133 (sum) vs 0.22 (mean), the d·M = 600 factor. At the
    recipes' clip (``train.grad_clip: 2.0``) the printed sum leaves the task gradient a norm of 0.015 of the 2.0
    step (the feature term takes the rest), the official mean 1.96–2.0. Text only (MiniLM 384-d): 113 vs 0.17
    (printed vs official; d = 200), task gradient after the clip 0.018 vs 1.97. This is why the literal
    equations stall (README, MELD row): the printed Eq. 12 drowns Eq. 10/13 under the official clip.
  * ``noise_target`` — Eq. 19: θ_{t+1} = θ_t − η k_m g̃ + η h(θ_t), h ~ N(0, Σ^sgd(θ_t)): noise on the *parameters*
    after the update, scaled by the learning rate. ``parameter`` (paper): ``after_step`` adds η·σ·ε to each
    modulated encoder parameter, σ = the std of its (unmodulated, all-reduced) gradient — Σ^sgd is the gradient's
    covariance, which the paper does not say how to estimate: its isotropic per-tensor estimate is our choice, the
    one OGM-GE and the official code use; ε is drawn from a generator seeded by (epoch, step), so DDP replicas
    stay identical. ``gradient`` (official ``apply_modulation``, from OGM-GE): g ← k·g + N(0, (std(k·g) + 1e-8)²)
    before the optimiser. Eq. 18's k_m scales the gradient in both: under the paper's SGD that is the same as
    scaling the step; under Adam (the official optimiser) a constant gradient scale is largely normalised away —
    which is the official code's behaviour too, so we keep it.
Also mapped: Eq. 2 (per-modality Transformer encoder, §3.1) = ``ModalityEncoder`` (pre-LN, GELU, no positional
encoding, projected to ``hidden`` — not in the paper: our choice, because the text names only "Transformer");
Eq. 15 (the base update) = the engine's optimiser step. Eq. 6 averages Θ "across the modality dimension d_m":
read literally that would average away the utterance axis N of Att ∈ ℝ^{N×d_m}; the mean over the dialogue's
utterances (the official ``G_qk.mean(dim=1)``, masked here) is the only axis that leaves A^(m) ∈ ℝ^{r_s×r_w} as
the paper states, so that is what we do. Eq. 7's Att_m Z^m is element-wise (both are N × d_m). Not in the paper:
our choices, because the text leaves them open (each as the official code): one ``rank`` serves r_s and r_w; Φ_m
(Eq. 11, "a feed-forward neural network") is one Linear; Eq. 16 scores use the post-AFW features; for modality
pairs Eq. 6 contracts over those present. The paper's hyper-parameter table (Table 2) has no body in ada2i.txt,
so every size and training setting is the official code's (``run.sh``, ``train.py``; the recipes).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import TransformerEncoder, attention_mask, check_task, ordered, task_loss
from models.registry import register_model


def official_heads(d: int) -> int:
    """The official encoder's head count: the first divisor of ``d`` in 5..14, else 1."""
    return next((h for h in range(5, 15) if d % h == 0), 1)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, T, ...]`` over the valid steps of each row (zeros when none is valid)."""
    w = valid.to(x.dtype).view(*valid.shape, *([1] * (x.dim() - 2)))
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


def disparity_ratio(scores: dict[str, float]) -> dict[str, float]:
    """Eq. 17: ρ_m = s_m / min_m' s_m' (the weakest modality has ρ = 1)."""
    low = max(min(scores.values()), 1e-12)
    return {m: s / low for m, s in scores.items()}


def modulation_coefficients(rho: dict[str, float], alpha: float) -> dict[str, float]:
    """Eq. 18 as in the official code: k_m = 1 − tanh(α · ρ_m) if ρ_m > 1, else 1."""
    return {m: 1.0 - math.tanh(alpha * r) if r > 1 else 1.0 for m, r in rho.items()}


class ModalityEncoder(nn.Module):
    """Per-modality dialogue encoder: [projection →] transformer over the utterances → linear to ``hidden``."""

    def __init__(self, d_in: int, d_enc: int | None, hidden: int, heads: int | None, layers: int, ff_dim: int | None,
                 dropout: float):
        super().__init__()
        d = d_enc or d_in
        self.inp = nn.Linear(d_in, d) if d != d_in else nn.Identity()
        self.encoder = TransformerEncoder(d, heads or official_heads(d), layers, dropout, ff_dim=ff_dim)
        self.out = nn.Linear(d, hidden)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = valid.unsqueeze(-1).to(x.dtype)
        x = self.encoder(self.inp(x * keep), attention_mask(mask, valid))  # absent rows are neither read nor kept
        return self.out(x) * keep


class AFWLayer(nn.Module):
    """One Adaptive Feature Weighting layer over all modalities (Eq. 3–7) with its mapping network (Eq. 11–12)."""

    def __init__(self, modalities: list[str], d: int, rank: int, beta: float, dropout: float, feature_target: str,
                 paper_equations: bool = True, feature_reduction: str = "sum"):
        super().__init__()
        self.modalities, self.beta, self.feature_target = modalities, beta, feature_target
        self.feature_reduction = feature_reduction
        self.paper, self.rank = paper_equations, rank

        def cores():
            return nn.ModuleDict({m: nn.Linear(d, rank) for m in modalities})

        self.q1, self.q2, self.k1, self.k2 = cores(), cores(), cores(), cores()
        self.weights = nn.ModuleDict({m: nn.Linear(rank * rank, d) for m in modalities})
        self.mapping = nn.ModuleDict({m: nn.Linear(d, d) for m in modalities})  # Eq. 11 (training only)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: dict[str, torch.Tensor], valid: dict[str, torch.Tensor], with_loss: bool):
        # Eq. 3–5: query and key cores (outer products of two rank-R projections), their Hadamard product.
        g = {m: (self.q1[m](x).unsqueeze(-1) * self.q2[m](x).unsqueeze(-2))
             * (self.k1[m](x).unsqueeze(-1) * self.k2[m](x).unsqueeze(-2)) for m, x in h.items()}
        if self.paper:  # Eq. 4: Θ = softmax(G_Q ⊙ G_K / √d_k) over the key axis, d_k = rank
            g = {m: (v / math.sqrt(self.rank)).softmax(-1) for m, v in g.items()}
        pooled = {m: masked_mean(g[m], valid[m]).unsqueeze(1) for m in g}  # Eq. 6's A^(m): [B, 1, R, R]
        out, err, n = {}, 0.0, 0
        if self.feature_reduction == "sum":  # Eq. 12's B: utterances with at least one modality
            n_utt = int(torch.stack([valid[m] for m in self.modalities]).any(0).sum())
        for m in self.modalities:
            a = g[m]
            for l in self.modalities:  # Eq. 6: ×A^(t) ×A^(a) ×A^(v) (official: the other modalities only)
                if l != m or self.paper:
                    a = a @ pooled[l]
            w = self.weights[m](a.flatten(-2))
            y = w * h[m] + self.beta * h[m]  # Eq. 7
            if with_loss:  # Eq. 11–12 over the valid rows only
                target = w if self.feature_target == "attention" else y
                diff = (self.mapping[m](h[m]) - target).float().abs().sum(-1)  # fp32 sum under bf16 autocast
                err = err + (diff * valid[m].to(diff.dtype)).sum()
                n += int(valid[m].sum()) * w.shape[-1]
            out[m] = self.drop(y)
        if with_loss and self.feature_reduction == "sum":  # (1/B) Σ_i Σ_m ‖·‖₁
            return out, err / max(n_utt, 1)
        return out, (err / max(n, 1) if with_loss else None)  # official nn.L1Loss: mean over elements


@register_model("ada2i")
class Ada2I(nn.Module):
    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 200,
                 encoder_dim: int | dict | None = None, heads: int | None = None, encoder_layers: int = 2,
                 ff_dim: int | None = 2048, afw: bool = True, afw_layers: int = 2, rank: int = 6, beta: float = 0.55,
                 feature_target: str | None = None, amw: bool = True, modulation: bool = True, alpha: float = 0.42,
                 start_mod: int = 4, end_mod: int | None = None, noise: bool = True, dropout: float = 0.5,
                 paper_equations: bool = True, amw_norm: str | None = None, feature_reduction: str | None = None,
                 noise_target: str | None = None, task: str = "classification"):
        super().__init__()
        self.task = check_task(task, "ada2i")
        paper = paper_equations
        amw_norm = amw_norm or ("class" if paper else "hidden")
        feature_reduction = feature_reduction or ("sum" if paper else "mean")
        noise_target = noise_target or ("parameter" if paper else "gradient")
        feature_target = feature_target or ("attention" if paper else "output")
        for key, val, ok in (("amw_norm", amw_norm, ("class", "hidden", "matrix")),
                             ("feature_target", feature_target, ("attention", "output")),
                             ("feature_reduction", feature_reduction, ("sum", "mean")),
                             ("noise_target", noise_target, ("parameter", "gradient"))):
            if val not in ok:
                raise ValueError(f"ada2i: {key} is null|{'|'.join(ok)}; got {val!r}")
        self.amw_norm, self.noise_target, self.feature_target = amw_norm, noise_target, feature_target
        self._sigma: dict = {}  # noise_target parameter: per parameter, σ from before_step, used by after_step
        # Gradient noise is drawn from a generator seeded by (this seed, epoch, step): every DDP replica adds the
        # same noise to the same (already all-reduced) gradient, so the engine's re-averaging keeps σ (noise drawn
        # per rank would shrink to σ/√W). Its seed is the run's (torch.initial_seed(): what seeding set, the same on
        # every rank), read without drawing from the global RNG.
        self._noise_seed = int(torch.initial_seed()) % (2**31 - 1)
        self.modalities = mods = ordered(input_dims)
        dims = encoder_dim if isinstance(encoder_dim, dict) else {m: encoder_dim for m in mods}
        self.encoders = nn.ModuleDict({m: ModalityEncoder(input_dims[m], dims.get(m), hidden, heads, encoder_layers,
                                                          ff_dim, dropout) for m in mods})
        self.afw = nn.ModuleList(AFWLayer(mods, hidden, rank, beta, dropout, feature_target, paper_equations,
                                          feature_reduction) for _ in range(afw_layers if afw else 0))
        self.fc = nn.Linear(hidden * len(mods), n_classes)  # W = [W_t | W_a | W_v]: one block per modality
        self.paper = paper_equations
        # Eq. 9: ŷ = MLP(Z^{m-adapt}) with ReLU (paper only; the official prediction is Z^{m-adapt})
        self.mlp = nn.Sequential(nn.Linear(n_classes, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)) \
            if paper_equations else None
        self.hidden, self.amw = hidden, amw
        self.modulation, self.alpha, self.noise = modulation, alpha, noise
        self.start_mod, self.end_mod = start_mod, end_mod
        self._uni = None      # per step: {m: (unimodal logits, valid)} from forward, read by aux_loss
        self._coef = None     # per step: {m: k_m} from aux_loss, applied by before_step
        self._rho_sum: dict[str, list[float]] = {}  # per epoch: {m: [sum ρ_m, steps]}
        self._score_sum: dict[str, list[float]] = {}  # per epoch: {m: [sum s_m, steps]}

    def _partition(self, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality m's block W_m of the classifier and its bias share b / M."""
        j = self.modalities.index(m)
        return self.fc.weight[:, j * self.hidden:(j + 1) * self.hidden], self.fc.bias / len(self.modalities)

    def forward(self, feats, present, mask, speaker):
        mods = self.modalities
        valid = {m: present[m] & mask for m in mods}
        h = {m: self.encoders[m](feats[m], valid[m], mask) for m in mods}
        losses, feature = {}, 0.0
        for layer in self.afw:
            h, err = layer(h, valid, with_loss=self.training)
            if err is not None:
                feature = feature + err
        if self.training and len(self.afw):
            losses["feature"] = feature
        if self.amw:  # Eq. 8: features normalised per utterance, each modality's weights by ``amw_norm``
            logits = sum(F.normalize(h[m], dim=-1) @ self._normalized_weight(m).T for m in mods)
            logits = logits + self.fc.bias
        else:
            logits = self.fc(torch.cat([h[m] for m in mods], dim=-1))
        if self.training and len(mods) >= 2:
            with torch.no_grad():
                self._uni = {m: (self._unimodal_logits(m, h[m]), valid[m]) for m in mods}
        if self.mlp is None:
            return {"logits": logits, "losses": losses}
        return {"logits": self.mlp(logits), "z_adapt": logits, "losses": losses}

    def _normalized_weight(self, m: str) -> torch.Tensor:
        """Eq. 8's W^m / ‖W^m‖ (``amw_norm``): per class row, per hidden unit (official) or the whole block."""
        w = self._partition(m)[0]  # [C, hidden]
        if self.amw_norm == "class":
            return F.normalize(w, dim=1)
        if self.amw_norm == "hidden":
            return F.normalize(w, dim=0)
        return w / w.norm().clamp(min=1e-12)

    def _unimodal_logits(self, m: str, z: torch.Tensor) -> torch.Tensor:
        """Eq. 16's per-class input: cos⟨W_k^m, Z^m⟩ + b_k/M (paper) or W^m Z^m + b/M (official)."""
        w, b = self._partition(m)
        if self.paper:
            return F.normalize(z, dim=-1) @ F.normalize(w, dim=-1).T + b
        return z @ w.T + b

    def aux_loss(self, out, batch) -> dict:
        """L_modal (Eq. 13, paper_equations only) and Eq. 16–17: scores → disparity ratios → coefficients."""
        losses = {}
        if isinstance(out, dict) and "z_adapt" in out and self.task == "regression":
            losses["modal"] = task_loss(out["z_adapt"], batch)  # Eq. 13 with the MSE in place of the CE
        elif isinstance(out, dict) and "z_adapt" in out:
            # the engine's class-weighted CE over the labelled utterances; 0 (not NaN) when the batch has none
            losses["modal"] = task_loss(out["z_adapt"], batch, weight=batch.get("class_weight"))
        self._scores(batch)
        return losses

    @torch.no_grad()
    def _scores(self, batch) -> None:
        uni, self._uni = self._uni, None
        if uni is None:
            return
        label = batch["label"]
        regression = self.task == "regression"
        labelled = batch["mask"] if regression else label >= 0  # padding is -100
        scores = {}
        for m, (logit, valid) in uni.items():
            sel = valid & labelled
            if sel.any() and regression:
                # not in the paper: our choice. Eq. 16 scores a modality by its confidence in the true class, in
                # (0, 1]; a regression output has none, so s_m = exp(−MSE of its unimodal prediction), also in
                # (0, 1] with 1 = perfect: the better modality still gets the larger score.
                err = (logit[sel].float() - batch["target"][sel].float()).pow(2).mean()
                scores[m] = float(torch.exp(-err))
            elif sel.any():
                p = logit[sel].float().softmax(-1).gather(1, label[sel].unsqueeze(1))
                scores[m] = float(p.mean())
        if len(scores) >= 2:
            rho = disparity_ratio(scores)
            self._coef = modulation_coefficients(rho, self.alpha)
            for sums, values in ((self._rho_sum, rho), (self._score_sum, scores)):
                for m, r in values.items():
                    acc = sums.setdefault(m, [0.0, 0])
                    acc[0] += r
                    acc[1] += 1

    def modulating(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based, as the engine counts) is in the official 1-based [start, end]."""
        e = epoch + 1
        return self.modulation and e >= self.start_mod and (self.end_mod is None or e <= self.end_mod)

    @torch.no_grad()
    def before_step(self, epoch: int, step: int) -> None:
        """Eq. 18–19: scale each modality encoder's gradients by k_m; ``noise_target: gradient`` (official) then adds
        N(0, (std + 1e-8)²) noise to them, ``parameter`` (paper) keeps σ = std(g) for ``after_step``."""
        coef, self._coef = self._coef, None
        self._sigma = {}
        if not coef or not self.modulating(epoch):
            return
        gen = None
        for m, k in coef.items():
            for p in self.encoders[m].parameters():
                if p.grad is None:
                    continue
                if self.noise and self.noise_target == "parameter" and p.grad.numel() > 1:
                    self._sigma[p] = float(p.grad.std())  # Σ^sgd(θ_t): the unmodulated gradient's spread
                p.grad.mul_(k)
                if self.noise and self.noise_target == "gradient" and p.grad.numel() > 1:  # one element: no std
                    if gen is None:
                        gen = torch.Generator(device="cpu").manual_seed(
                            (self._noise_seed * 1_000_003 + 7_919 * (epoch + 1) + step) % (2**63 - 1))
                    # in place: on CPU drawing the normals (~12 ns each) is this hook's whole cost
                    eps = torch.randn(p.grad.shape, generator=gen, dtype=torch.float32)
                    p.grad.add_(eps.to(device=p.grad.device, dtype=p.grad.dtype).mul_(p.grad.std() + 1e-8))

    @torch.no_grad()
    def after_step(self, epoch: int, step: int, lr: float) -> None:
        """Eq. 19 (``noise_target: parameter``): θ ← θ + η·σ·ε after the optimiser's update, ε ~ N(0, I) from a
        generator seeded by (epoch, step) so every DDP replica adds the same noise."""
        sigma, self._sigma = self._sigma, {}
        if not sigma:
            return
        gen = torch.Generator(device="cpu").manual_seed(1_000_003 * (epoch + 1) + step)
        for p, s in sigma.items():
            eps = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
            p.add_(eps, alpha=lr * s)

    def epoch_logs(self) -> dict:
        """Epoch means of ρ_m (Fig. 4) and s_m (Fig. 1b), then reset; per-class AMW weight norms (Fig. 5)."""
        out = {f"rho_{m}": s / n for m, (s, n) in self._rho_sum.items() if n}
        out.update({f"score_{m}": s / n for m, (s, n) in self._score_sum.items() if n})
        if out:  # an epoch was trained: the weights' state at its end
            with torch.no_grad():
                for m in self.modalities:
                    for k, v in enumerate(self._partition(m)[0].norm(dim=1).tolist()):
                        out[f"wnorm_{m}_c{k}"] = v
        self._rho_sum, self._score_sum = {}, {}
        return out
