"""DialogueTRM — Mao et al., "DialogueTRM: Exploring Multi-Modal Emotional Dynamics in a Conversation",
Findings of EMNLP 2021 (``../shared/papers/dialoguetrm.txt``).

Intra-modal emotion dynamics (§4.1):
  * Eq. 1 (self dependency): f_(u) = BERT([CLS] u [SEP] indi-context [SEP]) at [CLS] — the text stage with
    ``text.context: dialoguetrm``, ``text.pooling: cls`` (frozen vectors), or end-to-end fine-tuned inside
    ``train`` (``train.text_encoder``, ``pipeline/training/text_e2e.py``). Both use one K (``window``) for the indi-context.
  * Eq. 2–3 (inter-personal dependency): r_i,(u) = Transformer(F_(u), ρ̄_i): a PyTorch ``nn.TransformerEncoder``
    with default parameters (§5.2: post-LN, ReLU, FFN 2048, dropout 0.1; paper size 6 layers, 12 heads, 768) whose
    mask ρ̄_i lets turn i attend the K previous turns and itself, never the future (``causal: true``). Switch:
    ``causal: false`` is a symmetric window |i − j| ≤ K (not the paper). ``window: null`` = every previous turn.
    Where the window acts (``window_mode``):
      - ``input`` (default, the literal reading): Eq. 2 is one transformer pass PER TARGET i under ITS mask ρ̄_i,
        and r_i is that pass's output at i. Eq. 3 defines ρ̄_i as "an L-length attention mask" — one 0/1 vector
        per i (0…0 1…1 1 0…0), i.e. a key mask that holds for every query and every layer of that pass — which
        "masks the future and distant historical information, enforcing emotional interactions to be within a
        K-length conv-context". So the pass sees only the window W_i = (f_max(1,i−K), …, f_i): we run the
        transformer once over each W_i (every position of W_i attends every valid position of W_i, in every
        layer) and read position i. r_i depends on turns i−K … i only, whatever the depth.
      - ``every_layer``: one pass over the whole dialogue with the L×L mask whose row i is ρ̄_i (PyTorch's
        ``mask=``), applied in each of the layers: turn i attends i−K … i in every layer, so after n layers r_i
        depends on up to n·K earlier turns (6K = 84 at the paper's size) — "interactions within a K-length
        conv-context" then hold per layer only.
      §5.2's memory remark — "Our hardware (11GB GPU memory) affords a maximum context window of 14. A larger
      context can achieve better performance" — supports ``input``: it ties memory to K. In one masked pass over
      the dialogue (``every_layer``) the transformer's memory does not depend on K at all (it is L×L whatever K;
      only Eq. 1's indi-context grows with K, and BERT caps that at 512 tokens); with one pass per target over its
      K + 1 turns, the work and memory grow with K (and with BERT fine-tuned inside each target's window, K + 1
      encoder passes per target). Both are switches so both can be run; context-free ρ̇_i (Eq. 6, K = 0) is the
      same in both modes.
  * Eq. 4–6 (context-free acoustic / visual): the same transformer with ρ̇_i = only turn i itself. The context
    preference per modality is ``context: {t: dependent, a: free, v: free}`` (Table 4 flips it per modality).
  * §5.2 inputs: audio (100-d) and visual (512-d) are projected to ``hidden`` by a linear layer; text is used as
    is. Not in the paper: when the text width differs from ``hidden`` (e.g. MiniLM's 384 vs a 128 model), a linear
    projection is added — it is the identity case of the paper otherwise. No position embeddings: the paper adds
    none to its PyTorch transformer (the causal window is the only order signal).
Inter-modal emotion dynamics — Multi-Grained Interactive Fusion (MGIF, §4.2):
  * Eq. 7–11 (prototype dependency, the multi-modal gate): h_u = tanh(W_U r_u), h_a = tanh(W_A r_a),
    z = σ(W_Z [r_u; r_a]), h_ua = z ⊙ h_u, h_au = (1 − z) ⊙ h_a. Eq. 12–14: one GATE per unordered pair (u,a),
    (u,v), (a,v): six vectors. Ambiguity: whether GATE(u,a) and GATE(u,v) share W_U. Literal reading (default,
    ``gate_weights: pair``): each GATE has its own W's; ``gate_weights: modality`` shares W_m across a modality's
    pairs (W_Z stays per pair). Not in the paper: the linear maps have biases (PyTorch's default).
  * Eq. 15–16 (representation dependency): M_i = [e_CLS; h_ua; h_au; h_uv; h_vu; h_av; h_va] (the paper's order)
    into a transformer (paper: 4 layers, 8 heads, 768; its own head count ``rep_heads``), mask ρ_i all ones;
    o_i = output at e_CLS. Its layer type — PyTorch's default ``nn.TransformerEncoderLayer`` (post-LN, ReLU, FFN
    ``ff_dim``, ``dropout``), as the intra-modal one — is not in the paper: our choice, because §5.2 gives this
    transformer's size only and builds the intra-modal one "with PyTorch API using default parameters". Without position/slot embeddings attention is order-blind (the literal reading);
    ``slot_embeddings: true`` adds a learned embedding per slot (documented option, not in the paper).
  * Eq. 17–18 (discriminator): P_i = softmax(W_C tanh(W_O o_i)) for categorical emotions (softmax in the loss);
    W_D tanh(W_O o_i) for dimensional emotions — the same two-layer head with one output per target (valence,
    arousal, expectancy, power) trained with MSE: build with ``n_classes = number of targets``. Not in the paper:
    the width of W_O (``head_hidden``, default ``hidden``).
Absent modalities (not in the paper, which always has its modalities): an absent r is zero, its gated vectors
are zero and masked out of the representation transformer. With a single modality (the paper's "-U" setting)
there is nothing to fuse: the discriminator reads r directly.

Ablations: Table 3 "remove transformer" → ``intra_transformer: false`` (r = projected f; the segment-embedding
and [SEP] removals are text-input switches, see ``pipeline/training/text_e2e.py``; the paper removes them step by step,
cumulatively); Table 4 → ``context`` per modality — ``context.t: free`` is u̇, "BERT-base ... without modeling
self dependency" (Table 3): ``train`` then also feeds the encoder the utterance alone (Eq. 1 without ϕ;
``text_e2e.context_free_text``), or refuses frozen features extracted with context;
Table 5 → ``rep_transformer: false`` ("w/o representation dependency": the six gated vectors concatenated into the
head), ``gates: false`` ("w/o prototype dependency": the transformer over [e_CLS; r_u; r_a; r_v]), the simple
fusions ``fusion: add | concat | max`` over r, and the "advanced single-grained" ones, each after its own paper
and applied at the same place (on r, into the Eq. 17 head): ``fusion: bilinear`` — MCB (Fukui et al. 2016):
count sketches, FFT circular convolution to ``bilinear_dim`` outputs (default 8·hidden, our choice), signed sqrt,
L2; three modalities: one order-3 tensor sketch (product of the three FFTs; our extension, see ``MCB``);
``fusion: gmu`` — GMU (Arevalo et al.): h_m = tanh(W_m r_m), bimodal z·h_1 + (1 − z)·h_2, else Σ_m z_m·h_m with
z_m = σ(W_z,m [r_1; …; r_M]); ``fusion: mult`` — MulT (Tsai et al. 2019): a crossmodal transformer per ordered
modality pair, then a self-attention transformer per target over [Z_β1→α; Z_β2→α], position i per utterance,
every attention inside the causal K-window for all modalities (DialogueTRM: MulT "forces all the modalities to
use context-dependent settings"); its size is ``rep_layers``/``rep_heads`` (our choice).

Readings and our choices (reviewed against dialoguetrm.txt; each justified or a switch): §3's indi-/conv-context
definitions are Eq. 1's text context and Eq. 3's window; Eq. 18 (argmax for CE, P_i itself for DE) is the
engine's prediction (``pipeline/training/engine.py``); §5.1 (MELD without visual) is in the recipes; "linear
layer" for the audio/visual projection, e_CLS ~ N(0, 0.02), no dropout in the Eq. 17 head, MSE
for the dimensional head and, with two modalities, M_i = [e_CLS; h_ua; h_au] are not in the paper: our choices,
because the text does not give them. Defaults are CPU-sized; the recipes set §5.2's sizes.
"""
from __future__ import annotations

from itertools import combinations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (MLPHead, TransformerBlock, TransformerEncoder, attention_mask, pool_modalities,
                           sinusoidal_positions)
from models.registry import register_model

CONTEXTS = ("dependent", "free")
WINDOW_MODES = ("input", "every_layer")  # where Eq. 3's K-window acts (module docstring)
FUSIONS = ("mgif", "add", "concat", "max", "bilinear", "gmu", "mult")  # Table 5


def window_mask(q_valid: torch.Tensor, k_valid: torch.Tensor, window: int | None,
                causal: bool = True) -> torch.Tensor:
    """``[B, T, T]``: query i may attend key j when both are valid and i − K ≤ j ≤ i (``causal``; |i − j| ≤ K
    otherwise); ``window=None`` every previous turn."""
    T = q_valid.shape[1]
    m = attention_mask(q_valid, k_valid, window)
    if causal:
        m = m & torch.ones(T, T, dtype=torch.bool, device=m.device).tril()
    return m


def context_mask(valid: torch.Tensor, window: int | None, causal: bool = True) -> torch.Tensor:
    """Eq. 3 / Eq. 6 as a boolean ``[B, T, T]`` (True = may attend): key j is allowed for query i when it is
    valid and i − K ≤ j ≤ i (``causal``; |i − j| ≤ K otherwise); ``window=0`` is ρ̇ (only itself), ``None`` every
    previous turn. The diagonal is always allowed so that no row is empty (a padded or absent query's output is
    discarded later); without it PyTorch's attention would give NaN."""
    m = window_mask(torch.ones_like(valid), valid, window, causal)
    return m | torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)


def run_windowed(enc: nn.TransformerEncoder, x: torch.Tensor, ok: torch.Tensor, window: int | None, causal: bool,
                 heads: int) -> torch.Tensor:
    """``window_mode: input`` (Eq. 2–3 literally): r_i = output at i of ``enc`` run over i's own window only.

    ``x`` [B, T, d], ``ok`` [B, T] (a real turn where the modality is present). Target i's window holds the turns
    i − K … i (``causal``; i − K … i + K otherwise; ``window=None``: every turn, as ``context_mask``); its keys
    are the valid turns of the window plus i itself (always, so no row is empty — a padded/absent target's output
    is discarded later), for every query of the pass and every layer: ρ̄_i as a key mask. The B·T windows run as
    one batch of sequences of length K + 1 (2K + 1); outside the dialogue is padding (masked)."""
    B, T, d = x.shape
    k = T - 1 if window is None else min(window, T - 1)
    off = torch.arange(-k, (0 if causal else k) + 1, device=x.device)
    idx = torch.arange(T, device=x.device).unsqueeze(1) + off  # [T, W]: the turns of each target's window
    inside = (idx >= 0) & (idx < T)
    idx = idx.clamp(0, T - 1)
    keys = ok[:, idx] & inside  # [B, T, W]
    keys[..., k] = True  # slot k is the target itself
    W = idx.shape[1]
    allowed = keys.reshape(B * T, 1, W).expand(-1, W, -1)
    out = run_masked(enc, x[:, idx].reshape(B * T, W, d), allowed, heads)[:, k]
    return out.reshape(B, T, d)


def torch_transformer(d: int, heads: int, layers: int, ff_dim: int, dropout: float) -> nn.TransformerEncoder:
    """§5.2 "implemented with PyTorch API using default parameters": post-LN, ReLU, FFN ``ff_dim`` (2048)."""
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=ff_dim, dropout=dropout, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def run_masked(enc: nn.TransformerEncoder, x: torch.Tensor, allowed: torch.Tensor, heads: int) -> torch.Tensor:
    """``enc`` over ``x`` [N, S, d] with a per-sequence boolean ``allowed`` [N, S, S] (PyTorch masks the True ones)."""
    return enc(x, mask=~allowed.repeat_interleave(heads, dim=0))


class Gate(nn.Module):
    """Eq. 7–11: h_i = tanh(W_I r_i), h_j = tanh(W_J r_j), z = σ(W_Z [r_i; r_j]); returns (z ⊙ h_i, (1 − z) ⊙ h_j).

    ``w_i``/``w_j`` are passed in so that ``gate_weights: modality`` can share them across pairs.
    """

    def __init__(self, d: int, w_i: nn.Linear, w_j: nn.Linear):
        super().__init__()
        self.w_i, self.w_j = w_i, w_j
        self.w_z = nn.Linear(2 * d, d)

    def forward(self, r_i: torch.Tensor, r_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_i = torch.tanh(self.w_i(r_i))  # Eq. 7
        h_j = torch.tanh(self.w_j(r_j))  # Eq. 8
        z = torch.sigmoid(self.w_z(torch.cat([r_i, r_j], dim=-1)))  # Eq. 9
        return z * h_i, (1 - z) * h_j  # Eq. 10, 11 ("1 −": the position-wise normalisation)


class MCB(nn.Module):
    """Table 5 "Bilinear": Multimodal Compact Bilinear pooling (Fukui et al. 2016, Algorithm 1).

    Ψ(x, h, s) is the Count Sketch (Charikar et al.): y[h[i]] += s[i]·x[i] with fixed random h ∈ {0…d−1}^n,
    s ∈ {±1}^n per input (sampled once, never learned, as MCB's Algorithm 1); the sketch of the outer product is
    the circular convolution of the sketches, Ψ(x ⊗ q) = Ψ(x) ∗ Ψ(q) = FFT⁻¹(FFT(Ψ(x)) ⊙ FFT(Ψ(q))), d outputs.
    Then the signed square root and L2 normalisation that follow MCB in Fukui et al.'s VQA architecture (their
    released network: CompactBilinear → SignedSqrt → L2Normalize).
    Three modalities: MCB's Algorithm 1 is written for two inputs; not in the paper: our choice, because the
    convolution identity holds for any number of factors (the Tensor Sketch of Pham & Pagh 2013 that MCB builds
    on) — Ψ(r_u ⊗ r_a ⊗ r_v) = FFT⁻¹(FFT Ψ(r_u) ⊙ FFT Ψ(r_a) ⊙ FFT Ψ(r_v)), one joint trilinear sketch.
    Absent modality (not in either paper): its FFT factor is 1 (the FFT of the unit impulse, the convolution
    identity), i.e. the compact product of the modalities that are present; none present → zeros.
    """

    def __init__(self, n_inputs: int, d_in: int, d_out: int):
        super().__init__()
        self.d = d_out
        # buffers (not parameters): saved with the checkpoint so a reloaded model sketches identically
        self.register_buffer("h", torch.randint(0, d_out, (n_inputs, d_in)))
        self.register_buffer("s", torch.randint(0, 2, (n_inputs, d_in)).float() * 2 - 1)

    def sketch(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Ψ(x, h_k, s_k): ``[..., d_in]`` → ``[..., d]``."""
        return x.new_zeros(*x.shape[:-1], self.d).index_add_(-1, self.h[k], x * self.s[k])

    def compact(self, xs: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
        """The compact multilinear product before normalisation (float32: torch.fft has no bf16 kernels)."""
        prod = None
        for k, (x, ok) in enumerate(zip(xs, valid)):
            f = torch.fft.rfft(self.sketch(x.float(), k), n=self.d)
            f = torch.where(ok.unsqueeze(-1), f, torch.ones_like(f))
            prod = f if prod is None else prod * f
        y = torch.fft.irfft(prod, n=self.d)
        return y * torch.stack(valid, -1).any(-1, keepdim=True)

    def forward(self, xs: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
        y = self.compact(xs, valid)
        y = torch.sign(y) * torch.sqrt(y.abs() + 1e-12)  # signed sqrt (the eps keeps its gradient finite at 0)
        return F.normalize(y, dim=-1)


class GMU(nn.Module):
    """Table 5 "GMU": Gated Multimodal Unit (Arevalo et al. 2017/2020): h_m = tanh(W_m x_m); bimodal
    z = σ(W_z [x_1; x_2]), h = z ⊙ h_1 + (1 − z) ⊙ h_2; with M > 2 modalities the paper's generalisation, one
    gate per modality z_m = σ(W_z,m [x_1; …; x_M]) and h = Σ_m z_m ⊙ h_m (independent sigmoids, no softmax).
    No biases: the GMU equations have none. Absent modality: its x_m is zero and h_m is masked to zero."""

    def __init__(self, mods: list[str], d: int):
        super().__init__()
        self.mods = mods
        self.w_h = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m in mods})
        gated = mods[:1] if len(mods) == 2 else mods  # bimodal: one gate z, the other modality gets 1 − z
        self.w_z = nn.ModuleDict({m: nn.Linear(len(mods) * d, d, bias=False) for m in gated})

    def forward(self, xs: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
        h = [torch.tanh(self.w_h[m](x)) * ok.unsqueeze(-1) for m, x, ok in zip(self.mods, xs, valid)]
        x = torch.cat(xs, dim=-1)
        z = [torch.sigmoid(self.w_z[m](x)) for m in self.w_z]
        if len(self.mods) == 2:
            z.append(1 - z[0])
        return sum(zm * hm for zm, hm in zip(z, h))


class CrossmodalTransformer(nn.Module):
    """MulT crossmodal transformer β → α (Tsai et al. §3.2 "Crossmodal Transformers"; CM is §3.1's crossmodal
    attention): D layers, each attending to the low-level source Z^[0]_β, then a final LayerNorm (MulT's code).
    The paper writes Ẑ = CM(LN Z^[i−1], LN Z^[0]_β) + LN Z^[i−1] and Z^[i] = f_θ(LN Ẑ) + LN Ẑ; built from
    ``layers.TransformerBlock(cross=True)`` the residual is added to the un-normalised Z^[i−1] / Ẑ (pre-LN, as
    MulT's released code does), and its FFN is GELU (the text does not name the activation; the code uses ReLU)."""

    def __init__(self, d: int, heads: int, layers: int, ff_dim: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(d, heads, dropout, cross=True, ff_dim=ff_dim)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = z_a
        for block in self.blocks:
            x = block(x, mask, kv=z_b)
        return self.norm(x)


class MulT(nn.Module):
    """Table 5 "MulT" (Tsai et al. 2019), its frames → our utterances of one dialogue.

    §3.2 "Temporal Convolutions" / "Positional Embedding": Z^[0]_m = X̂_m + PE. X̂_m is r_m: the Conv1D only
    brings the modalities to one width (MulT's code skips it when widths agree, and r is ``hidden``-wide; a
    kernel wider than 1 would also see the next utterance); PE is the sinusoidal utterance-index encoding.
    "Crossmodal Transformers": one per ordered pair β → α (six for three modalities). "Self-Attention
    Transformers and Prediction": Z_α = [Z_β1→α; Z_β2→α] → a self-attention transformer (width (M − 1)·d); MulT
    takes its last element — per utterance i we take position i, which under the causal mask is the last element
    of the dialogue so far — and concatenates the M targets: M(M − 1)·d into Eq. 17's head (which replaces MulT's
    own residual block + output layer).
    Context: every attention (crossmodal and self) uses the K-window ρ̄ of Eq. 3 (``window``, ``causal``) for
    all modalities, as DialogueTRM describes its MulT baseline ("forces all the modalities to use
    context-dependent settings"); keys are real utterances where the source modality is present; an absent target
    modality's output is zeroed. Not in either paper: our choice, because DialogueTRM gives no MulT size — depth
    and heads are MGIF's fusion transformer's (``rep_layers``, ``rep_heads``) so Table 5 compares equal depths,
    and the FFN width is ``ff_dim`` (§5.2's PyTorch default 2048, as every transformer of this model; MulT's code
    uses 4·width: at §5.2's sizes (768 wide, 4 layers, 3 modalities) its fusion would have ~0.51 B parameters,
    ~0.32 B with 2048).
    """

    def __init__(self, mods: list[str], d: int, heads: int, layers: int, ff_dim: int, dropout: float):
        super().__init__()
        self.mods = mods
        self.cross = nn.ModuleDict({a + b: CrossmodalTransformer(d, heads, layers, ff_dim, dropout)
                                    for a in mods for b in mods if a != b})
        w = (len(mods) - 1) * d
        self.mem = nn.ModuleDict({a: TransformerEncoder(w, heads, layers, dropout, ff_dim=ff_dim) for a in mods})

    def forward(self, xs: list[torch.Tensor], valid: list[torch.Tensor], window: int | None,
                causal: bool) -> torch.Tensor:
        B, T, d = xs[0].shape
        pe = sinusoidal_positions(T, d, device=xs[0].device, dtype=xs[0].dtype)
        z0 = {m: x + pe for m, x in zip(self.mods, xs)}  # Z^[0] = X̂ + PE
        ok = dict(zip(self.mods, valid))
        outs = []
        for a in self.mods:
            z_a = torch.cat([self.cross[a + b](z0[a], z0[b], window_mask(ok[a], ok[b], window, causal))
                             for b in self.mods if b != a], dim=-1)  # [Z_β1→α; Z_β2→α]
            h = self.mem[a](z_a, window_mask(ok[a], ok[a], window, causal))  # the self-attention transformer
            outs.append(h * ok[a].unsqueeze(-1))
        return torch.cat(outs, dim=-1)


@register_model("dialoguetrm")
class DialogueTRM(nn.Module):
    def __init__(self, input_dims: dict[str, int], n_classes: int, hidden: int = 128, heads: int = 4,
                 layers: int = 1, ff_dim: int = 2048, window: int | None = 14, causal: bool = True,
                 window_mode: str = "input", context: dict | None = None, intra_transformer: bool = True, fusion: str = "mgif",
                 gates: bool = True, gate_weights: str = "pair", rep_transformer: bool = True, rep_layers: int = 1,
                 rep_heads: int = 4, slot_embeddings: bool = False, head_hidden: int | None = None,
                 bilinear_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"dialoguetrm: fusion is {'|'.join(FUSIONS)}; got {fusion!r}")
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"dialoguetrm: window_mode is {'|'.join(WINDOW_MODES)}; got {window_mode!r}")
        if gate_weights not in ("pair", "modality"):
            raise ValueError(f"dialoguetrm: gate_weights is pair|modality; got {gate_weights!r}")
        context = {"t": "dependent", "a": "free", "v": "free", **(context or {})}
        if any(c not in CONTEXTS for c in context.values()):
            raise ValueError(f"dialoguetrm: context values are dependent|free; got {context}")
        if window is not None and window < 0:
            raise ValueError(f"dialoguetrm: window (K) is a turn count >= 0 or null; got {window}")
        self.mods = sorted(input_dims, key="tav".index)
        self.heads, self.rep_heads, self.causal, self.window = heads, rep_heads, causal, window
        self.window_mode = window_mode
        self.context = {m: context[m] for m in self.mods}
        # §5.2: a/v projected to the model width; text as is (a projection only when its width differs)
        self.proj = nn.ModuleDict({m: nn.Identity() if m == "t" and d == hidden else nn.Linear(d, hidden)
                                   for m, d in input_dims.items()})
        self.intra = nn.ModuleDict({m: torch_transformer(hidden, heads, layers, ff_dim, dropout)
                                    for m in self.mods}) if intra_transformer else None  # Eq. 2, 4, 5
        self.fusion = fusion if len(self.mods) > 1 else "none"  # one modality ("-U"): nothing to fuse
        self.pairs = list(combinations(self.mods, 2)) if self.fusion == "mgif" and gates else []  # Eq. 12–14
        if self.pairs:
            shared = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in self.mods}) \
                if gate_weights == "modality" else None
            w = (lambda m: shared[m]) if shared is not None else (lambda m: nn.Linear(hidden, hidden))  # noqa: E731
            self.gates = nn.ModuleDict({i + j: Gate(hidden, w(i), w(j)) for i, j in self.pairs})
        n_vec = 2 * len(self.pairs) or len(self.mods)
        self.rep = None
        if self.fusion == "mgif" and rep_transformer:  # Eq. 15–16
            self.cls = nn.Parameter(torch.randn(hidden) * 0.02)  # e_CLS
            self.slot = nn.Parameter(torch.randn(n_vec + 1, hidden) * 0.02) if slot_embeddings else None
            self.rep = torch_transformer(hidden, rep_heads, rep_layers, ff_dim, dropout)
        d_head = hidden * n_vec if self.fusion == "concat" or (self.fusion == "mgif" and self.rep is None) else hidden
        M = len(self.mods)
        if self.fusion == "bilinear":
            # not in the paper: our choice, because DialogueTRM gives no size — MCB's d ≈ 8× its 2048-d inputs
            d_head = bilinear_dim or 8 * hidden
            self.fuser = MCB(M, hidden, d_head)
        elif self.fusion == "gmu":
            self.fuser = GMU(self.mods, hidden)
        elif self.fusion == "mult":
            self.fuser = MulT(self.mods, hidden, rep_heads, rep_layers, ff_dim, dropout)
            d_head = M * (M - 1) * hidden
        self.head = MLPHead(d_head, head_hidden or hidden, n_classes, dropout=0.0, act=nn.Tanh)  # Eq. 17

    def intra_modal(self, feats, present, mask) -> tuple[dict, dict]:
        """Eq. 2–6: r_i per modality ``[B, T, hidden]`` (zero where the modality is absent) and its validity."""
        r, valid = {}, {}
        for m in self.mods:
            ok = present[m] & mask
            x = self.proj[m](feats[m]) * ok.unsqueeze(-1).to(feats[m].dtype)
            if self.intra is not None:
                k = self.window if self.context[m] == "dependent" else 0  # ρ̄_i (Eq. 3) or ρ̇_i (Eq. 6)
                if self.window_mode == "input":  # one pass per target over its own window
                    x = run_windowed(self.intra[m], x, ok, k, self.causal, self.heads)
                else:  # one pass per dialogue, the window as a mask in every layer
                    x = run_masked(self.intra[m], x, context_mask(ok, k, self.causal), self.heads)
            r[m], valid[m] = x * ok.unsqueeze(-1).to(x.dtype), ok
        return r, valid

    def forward(self, feats, present, mask, speaker):
        r, valid = self.intra_modal(feats, present, mask)
        mods = self.mods
        if self.fusion == "none":
            return self.head(r[mods[0]])
        if self.fusion in ("bilinear", "gmu"):  # Table 5 advanced single-grained fusions
            return self.head(self.fuser([r[m] for m in mods], [valid[m] for m in mods]))
        if self.fusion == "mult":  # MulT: the context window K for every modality
            return self.head(self.fuser([r[m] for m in mods], [valid[m] for m in mods], self.window, self.causal))
        if self.fusion != "mgif":  # Table 5 simple fusions
            return self.head(pool_modalities([r[m] for m in mods], [valid[m] for m in mods], self.fusion))
        if self.pairs:  # Eq. 12–14, in Eq. 15's order: (ua, au), (uv, vu), (av, va)
            vecs, ok = [], []
            for i, j in self.pairs:
                h_ij, h_ji = self.gates[i + j](r[i], r[j])
                vecs += [h_ij * valid[i].unsqueeze(-1), h_ji * valid[j].unsqueeze(-1)]
                ok += [valid[i], valid[j]]
        else:  # "w/o prototype dependency": the unimodal representations
            vecs, ok = [r[m] for m in mods], [valid[m] for m in mods]
        if self.rep is None:  # "w/o representation dependency": concatenation into the discriminator
            return self.head(torch.cat(vecs, dim=-1))
        B, T, d = vecs[0].shape
        x = torch.stack([self.cls.expand(B, T, d), *vecs], dim=2)  # Eq. 15: M_i
        if self.slot is not None:
            x = x + self.slot
        # ρ_i all ones over the real slots (absent modalities' slots and padding are left out; e_CLS always in)
        keys = torch.stack([torch.ones_like(mask), *ok], dim=2).reshape(B * T, -1)
        allowed = keys.unsqueeze(1).expand(-1, keys.shape[1], -1)
        o = run_masked(self.rep, x.reshape(B * T, -1, d), allowed, self.rep_heads)[:, 0]  # Eq. 16: o_i at e_CLS
        return self.head(o.reshape(B, T, d))
