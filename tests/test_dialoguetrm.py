"""DialogueTRM (Mao et al. 2021): causal K-window context (Eq. 2–3), context-free a/v (Eq. 4–6), MGIF gates by
hand (Eq. 7–11), Eq. 15's slot order, PyTorch-default transformers (§5.2), the dimensional head (Eq. 17)."""
import pytest
import torch

from modelkit import assert_same_rows, comparable, one_thread, overfit, overfit_ce, toy_batch  # noqa: F401

from models import get_model
from models.dialoguetrm import context_mask

DIMS = {"t": 16, "a": 12, "v": 8}


def build(mods="tav", n_classes=7, **cfg):
    torch.manual_seed(0)
    return get_model("dialoguetrm", input_dims={m: DIMS[m] for m in mods}, n_classes=n_classes,
                     **{"hidden": 16, "dropout": 0.0, **cfg}).eval()


def changed(feats, b, t, mods, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = {m: f.clone() for m, f in feats.items()}
    for m in mods:
        out[m][b, t] = torch.randn(out[m].shape[-1], generator=g)
    return out


def test_context_mask_is_eq3_and_eq6():
    valid = torch.ones(1, 6, dtype=torch.bool)
    m = context_mask(valid, 2)[0].int()
    # ρ̄_i: turns i-K..i allowed, the future never
    assert m.tolist()[4] == [0, 0, 1, 1, 1, 0]
    assert m.tolist()[0] == [1, 0, 0, 0, 0, 0]
    assert context_mask(valid, 0)[0].equal(torch.eye(6, dtype=torch.bool))  # ρ̇_i: only itself
    assert context_mask(valid, None)[0].equal(torch.ones(6, 6, dtype=torch.bool).tril())
    assert context_mask(valid, 2, causal=False)[0, 1].int().tolist() == [1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("mods", ["t", "ta", "tav"])
def test_later_turns_never_change_earlier_outputs(mods):
    """Eq. 2–3: r_i (and so turn i's logits) is unchanged when any later turn changes, in every modality."""
    model = build(mods, window=2)
    feats, present, mask, speaker, _ = toy_batch(DIMS, mods)
    out = model(feats, present, mask, speaker)
    for t in range(1, 5):
        out2 = model(changed(feats, 0, t, mods, seed=t), present, mask, speaker)
        torch.testing.assert_close(out2[0, :t], out[0, :t])
        assert (out2[0, t] - out[0, t]).abs().max() > 1e-4


def test_earlier_turn_inside_k_changes_output_outside_k_does_not():
    model = build("ta", window=2)
    feats, present, mask, speaker, _ = toy_batch(DIMS, "ta")
    out = model(feats, present, mask, speaker)
    out2 = model(changed(feats, 0, 1, "t"), present, mask, speaker)  # text of turn 1
    assert (out2[0, 3] - out[0, 3]).abs().max() > 1e-4  # 3 - 1 = 2 ≤ K
    torch.testing.assert_close(out2[0, 4], out[0, 4])  # 4 - 1 = 3 > K
    out3 = model(changed(feats, 0, 1, "a"), present, mask, speaker)  # audio is context-free (Eq. 6)
    torch.testing.assert_close(out3[0, [0, 2, 3, 4]], out[0, [0, 2, 3, 4]])
    assert (out3[0, 1] - out[0, 1]).abs().max() > 1e-4


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_window_mode_input_keeps_every_depth_within_k(layers):
    """``window_mode: input``: r_i depends on turns i−K … i only, at any depth — a turn K + 1 back never
    changes it; ``every_layer`` (the mask in each layer) with ≥ 2 layers reaches n·K turns back, so it does."""
    feats, present, mask, speaker, _ = toy_batch(DIMS, "t")
    pert = changed(feats, 0, 1, "t")  # turn 1; target turn 4 is K + 1 = 3 back
    for mode in ("input", "every_layer"):
        model = build("t", window=2, layers=layers, window_mode=mode)
        d4 = (model(pert, present, mask, speaker)[0, 4] - model(feats, present, mask, speaker)[0, 4]).abs().max()
        d3 = (model(pert, present, mask, speaker)[0, 3] - model(feats, present, mask, speaker)[0, 3]).abs().max()
        assert d3 > 1e-4  # turn 1 is within K of turn 3 in both modes
        if mode == "input" or layers == 1:
            assert d4 < 1e-6, (mode, layers)
        else:
            assert d4 > 1e-4, (mode, layers)


def test_window_mode_input_is_the_transformer_over_each_window_by_hand():
    """Eq. 2 literally: r_i = Transformer(W_i) read at i, with W_i = (f_i−K, …, f_i) the target's window run on
    its own (no mask inside it), padding and the dialogue's start excluded; a 2-layer transformer."""
    model = build("t", window=2, layers=2, window_mode="input")
    feats, present, mask, speaker, _ = toy_batch(DIMS, "t")
    r, _ = model.intra_modal(feats, present, mask)
    enc, x = model.intra["t"], feats["t"]  # hidden = 16 = the text width: no projection (Identity)
    with torch.no_grad():
        for b, i in [(0, 4), (0, 2), (0, 1), (0, 0), (1, 2)]:
            by_hand = enc(x[b : b + 1, max(0, i - 2) : i + 1])[0, -1]
            torch.testing.assert_close(r["t"][b, i], by_hand, atol=1e-5, rtol=1e-5)
    # context-free (Eq. 6) is the same in both modes
    free = {m: build("t", window=2, layers=2, window_mode=m, context={"t": "free"}) for m in ("input", "every_layer")}
    torch.testing.assert_close(free["input"](feats, present, mask, speaker),
                               free["every_layer"](feats, present, mask, speaker), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="window_mode"):
        build("t", window_mode="once")


def test_context_switches_table4():
    feats, present, mask, speaker, _ = toy_batch(DIMS, "ta")
    # context-dependent audio: turn 1's audio now reaches turn 2
    model = build("ta", window=2, context={"a": "dependent"})
    out = model(feats, present, mask, speaker)
    out2 = model(changed(feats, 0, 1, "a"), present, mask, speaker)
    assert (out2[0, 2] - out[0, 2]).abs().max() > 1e-4
    # context-free text: only turn 1 itself changes
    model = build("ta", window=2, context={"t": "free"})
    out = model(feats, present, mask, speaker)
    out2 = model(changed(feats, 0, 1, "t"), present, mask, speaker)
    torch.testing.assert_close(out2[0, [0, 2, 3, 4]], out[0, [0, 2, 3, 4]])
    # causal: false (not the paper) — a later turn inside K changes an earlier output
    model = build("ta", window=2, causal=False)
    out = model(feats, present, mask, speaker)
    out2 = model(changed(feats, 0, 2, "t"), present, mask, speaker)
    assert (out2[0, 0] - out[0, 0]).abs().max() > 1e-4


def test_transformers_are_pytorch_defaults_with_their_own_heads():
    """§5.2: PyTorch TransformerEncoder with default parameters; MGIF's transformer has its own head count."""
    model = build(heads=4, rep_heads=2, layers=2, rep_layers=3)
    layer = model.intra["t"].layers[0]
    assert isinstance(layer, torch.nn.TransformerEncoderLayer) and len(model.intra["t"].layers) == 2
    assert not layer.norm_first and layer.activation_relu_or_gelu == 1  # post-LN, ReLU
    assert layer.linear1.out_features == 2048 and layer.self_attn.num_heads == 4
    assert model.rep.layers[0].self_attn.num_heads == 2 and len(model.rep.layers) == 3
    assert isinstance(model.proj["t"], torch.nn.Identity)  # text as is when its width is the model's
    assert isinstance(model.proj["a"], torch.nn.Linear)  # §5.2: a/v projected to the model width
    assert build(hidden=32).proj["t"].out_features == 32  # documented: a projection when widths differ


def test_paper_size_instantiates():
    """§5.2 sizes: 6×12-head×768 intra-modal transformers, 4×8-head×768 MGIF transformer, 100-d a / 512-d v."""
    torch.manual_seed(0)
    model = get_model("dialoguetrm", input_dims={"t": 768, "a": 100, "v": 512}, n_classes=6, hidden=768,
                      heads=12, layers=6, rep_heads=8, rep_layers=4, dropout=0.1)
    n = sum(p.numel() for p in model.parameters())
    layer = 768 * 768 * 4 + 4 * 768 + 2 * 768 * 2048 + 2048 + 768 + 4 * 768  # one encoder layer
    gates = 3 * (2 * (768 * 768 + 768) + 2 * 768 * 768 + 768)
    expected = 3 * 6 * layer + 4 * layer + 100 * 768 + 768 + 512 * 768 + 768 + gates + 768 + \
        768 * 768 + 768 + 768 * 6 + 6
    assert n == expected


def test_mgif_gate_matches_eq7_to_11_by_hand():
    model = build("tav", window=2)
    feats, present, mask, speaker, _ = toy_batch(DIMS, "tav")
    r, valid = model.intra_modal(feats, present, mask)
    g = model.gates["ta"]
    ru, ra = r["t"][0, 2], r["a"][0, 2]
    hu = torch.tanh(g.w_i.weight @ ru + g.w_i.bias)  # Eq. 7
    ha = torch.tanh(g.w_j.weight @ ra + g.w_j.bias)  # Eq. 8
    z = torch.sigmoid(g.w_z.weight @ torch.cat([ru, ra]) + g.w_z.bias)  # Eq. 9
    h_ua, h_au = g(r["t"], r["a"])
    torch.testing.assert_close(h_ua[0, 2], z * hu)  # Eq. 10
    torch.testing.assert_close(h_au[0, 2], (1 - z) * ha)  # Eq. 11
    torch.testing.assert_close(h_ua[0, 2] / hu + h_au[0, 2] / ha, torch.ones(16))  # z + (1 - z) = 1


def test_eq15_sequence_order_and_cls_output():
    model = build("tav", window=2)
    feats, present, mask, speaker, _ = toy_batch(DIMS, "tav")
    seen = {}
    model.rep.register_forward_hook(lambda mod, args, kwargs, out: seen.update(x=args[0], out=out),
                                    with_kwargs=True)
    logits = model(feats, present, mask, speaker)
    r, _ = model.intra_modal(feats, present, mask)
    expect = [model.cls]
    for pair in ("ta", "tv", "av"):
        expect += list(model.gates[pair](r[pair[0]], r[pair[1]]))  # h_ua, h_au, h_uv, h_vu, h_av, h_va
    x = seen["x"].reshape(3, 5, 7, 16)
    torch.testing.assert_close(x[0, 2, 0], expect[0])
    for k in range(1, 7):
        torch.testing.assert_close(x[0, 2, k], expect[k][0, 2])
    torch.testing.assert_close(logits, model.head(seen["out"][:, 0].reshape(3, 5, 16)))  # o_i at e_CLS


def test_ablations_change_the_head_input():
    feats, present, mask, speaker, _ = toy_batch(DIMS, "tav")
    m = build(rep_transformer=False)  # w/o representation dependency: six gated vectors concatenated
    assert m.rep is None and m.head.net[0].in_features == 6 * 16
    assert m(feats, present, mask, speaker).shape == (3, 5, 7)
    m = build(gates=False)  # w/o prototype dependency: [e_CLS; r_u; r_a; r_v]
    assert not m.pairs and m.rep is not None
    m = build("t")  # "-U": nothing to fuse
    assert m.fusion == "none" and m.head.net[0].in_features == 16
    m = build(gate_weights="modality")
    assert m.gates["ta"].w_i is m.gates["tv"].w_i and m.gates["ta"].w_j is not m.gates["tv"].w_j


def test_absent_modality_slots_are_left_out():
    model = build("tav", window=2)
    feats, present, mask, speaker, _ = toy_batch(DIMS, "tav")
    present["v"][0, 2] = False
    out = model(feats, present, mask, speaker)
    h = model.gates["tv"](*[torch.zeros(1, 16)] * 2)
    assert h[0].abs().sum() > 0  # tanh(bias) of a zero vector is not zero: the slot must be masked instead
    feats["v"][0, 2] = 50.0
    torch.testing.assert_close(model(feats, present, mask, speaker), out)


def test_bad_switches_are_one_clear_error():
    with pytest.raises(ValueError, match="dependent\\|free"):
        build(context={"t": "yes"})
    with pytest.raises(ValueError, match="gate_weights"):
        build(gate_weights="shared")


@pytest.mark.parametrize("cfg", [{}, {"rep_transformer": False}, {"gates": False}])
def test_overfits_tiny_batch(cfg):
    assert overfit_ce(build(**cfg).train(), DIMS, lr=3e-3).item() < 0.1


def test_dimensional_head_learns_synthetic_targets():
    """Eq. 17 DE: W_D tanh(W_O o) with one output per target (valence, arousal, expectancy, power), MSE."""
    m = build(n_classes=4).train()
    feats, present, mask, speaker, _ = toy_batch(DIMS, B=4, T=6, seed=1)
    w = torch.randn(DIMS["t"], 4, generator=torch.Generator().manual_seed(2))
    target = torch.tanh(feats["t"] @ w / 4)  # depends on the utterance's text

    def step():
        pred = m(feats, present, mask, speaker)
        loss = torch.nn.functional.mse_loss(pred[mask], target[mask])
        return loss, pred.detach()

    pred = overfit(m, step, steps=200, lr=3e-3)
    p, y = pred[mask], target[mask]
    r = [torch.corrcoef(torch.stack([p[:, k], y[:, k]]))[0, 1] for k in range(4)]
    assert min(r) > 0.9, r


def recipe_model(name: str, offline: bool = False):
    """The model a recipe file configures, at its (paper) size, from ``recipes/<name>.yaml``."""
    import yaml

    from conftest import ROOT

    r = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    s = {**r["set"], **(r["offline"] if offline else {})}
    model = s["model"]
    cfg = {k.rsplit(".", 1)[1]: v for k, v in s.items() if k.startswith(f"model_params.{model}.")}
    t = 384 if offline else 768  # MiniLM / BERT-base
    v = 256 if s.get("visual.backbone", "fer_cnn") == "fer_cnn" else 512  # fer_cnn / r3d_18
    dims = {m: d for m, d in {"t": t, "a": 88, "v": v}.items() if m in s["train.modalities"]}
    return model, cfg, dims


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("name", ["dialoguetrm_iemocap", "dialoguetrm_meld", "m2fnet_meld"])
def test_recipe_models_instantiate_and_run(name, offline):
    model, cfg, dims = recipe_model(name, offline)
    torch.manual_seed(0)
    m = get_model(model, input_dims=dims, n_classes=7, **cfg)
    feats, present, mask, speaker, label = toy_batch(dims, "".join(dims), B=3, T=3)
    out = m(feats, present, mask, speaker)
    assert out.shape == (3, 3, 7) and torch.isfinite(out).all()
    if model == "dialoguetrm" and not offline:  # §5.2 sizes reached the model
        assert m.intra["t"].layers[0].self_attn.num_heads == 12 and len(m.intra["t"].layers) == 6
        assert m.rep is None or (len(m.rep.layers) == 4 and m.rep.layers[0].self_attn.num_heads == 8)
        assert isinstance(m.proj["t"], torch.nn.Identity)  # 768-d BERT used as is


# ---- Table 5 advanced single-grained fusions: Bilinear (MCB), GMU, MulT ----

@pytest.mark.parametrize("fusion", ["bilinear", "gmu", "mult"])
@pytest.mark.parametrize("mods", ["t", "a", "v", "ta", "tv", "av", "tav"])
def test_table5_fusions_shapes_on_every_subset(fusion, mods):
    model = build(mods, fusion=fusion, bilinear_dim=40)
    feats, present, mask, speaker, _ = toy_batch(DIMS, mods)
    out = model(feats, present, mask, speaker)
    assert out.shape == (3, 5, 7) and torch.isfinite(out).all()
    M = len(mods)
    if M == 1:  # "-U": nothing to fuse, whichever fusion is asked for
        assert model.fusion == "none" and not hasattr(model, "fuser")
        return
    width = {"bilinear": 40, "gmu": 16, "mult": M * (M - 1) * 16}[fusion]
    assert model.head.net[0].in_features == width


def sketch_matrix(h, s, d):
    """The Count Sketch Ψ(·, h, s) as an explicit ``[n, d]`` matrix: column h[i] of row i holds s[i]."""
    S = torch.zeros(len(h), d)
    S[torch.arange(len(h)), h] = s
    return S


def test_mcb_equals_the_outer_product_projected_by_the_sketch():
    """Fukui et al. Alg. 1: FFT⁻¹(FFT Ψ(x) ⊙ FFT Ψ(q)) is the count sketch of x ⊗ q under the hash
    (h_x[i] + h_q[j]) mod d and sign s_x[i]·s_q[j] — computed here explicitly, entry by entry."""
    torch.manual_seed(1)
    from models.dialoguetrm import MCB
    n, d = 4, 5
    mcb = MCB(3, n, d)
    x, q, w = torch.randn(3, n).unbind(0)
    S = [sketch_matrix(mcb.h[k], mcb.s[k], d) for k in range(3)]
    torch.testing.assert_close(mcb.sketch(x, 0), x @ S[0])  # Ψ(x) = x S
    # bimodal: the explicit outer product x ⊗ q (n² entries) projected by the outer-product sketch
    outer2 = torch.zeros(n * n, d)
    for i in range(n):
        for j in range(n):
            outer2[i * n + j, (mcb.h[0, i] + mcb.h[1, j]) % d] = mcb.s[0, i] * mcb.s[1, j]
    expect2 = torch.outer(x, q).reshape(-1) @ outer2
    ok = torch.tensor(True)
    got2 = mcb.compact([x, q, w], [ok, ok, ~ok])  # third input absent: the compact product of the other two
    torch.testing.assert_close(got2, expect2)
    # trimodal (our documented extension): the order-3 tensor sketch of x ⊗ q ⊗ w
    expect3 = torch.zeros(d)
    for i in range(n):
        for j in range(n):
            for k in range(n):
                idx = (mcb.h[0, i] + mcb.h[1, j] + mcb.h[2, k]) % d
                expect3[idx] += mcb.s[0, i] * mcb.s[1, j] * mcb.s[2, k] * x[i] * q[j] * w[k]
    torch.testing.assert_close(mcb.compact([x, q, w], [ok, ok, ok]), expect3)
    # then signed square root and L2 normalisation
    y = torch.sign(expect3) * expect3.abs().sqrt()
    torch.testing.assert_close(mcb([x, q, w], [ok, ok, ok]), y / y.norm())
    assert mcb.compact([x, q, w], [~ok] * 3).abs().sum() == 0  # nothing present → zeros


def test_mcb_sketch_is_fixed_and_saved():
    """Algorithm 1 samples h, s once: they are buffers (no gradient, in the checkpoint), not parameters."""
    model = build("tav", fusion="bilinear")
    names = dict(model.named_buffers())
    assert {"fuser.h", "fuser.s"} <= set(names) and not any("fuser" in n for n, _ in model.named_parameters())
    assert set(names["fuser.s"].unique().tolist()) == {-1.0, 1.0}
    assert names["fuser.h"].max() < 8 * 16  # default d = 8 · hidden (documented choice)


def test_gmu_matches_its_equations_and_gates_saturate():
    from models.dialoguetrm import GMU
    torch.manual_seed(0)
    d = 4
    ok = torch.ones(2, dtype=torch.bool)
    x1, x2, x3 = torch.randn(3, 2, d).unbind(0)
    x1[:, 0] = torch.tensor([1.0, -1.0])  # the coordinate the saturated gates read
    g = GMU(["t", "a"], d)
    assert list(g.w_z) == ["t"]  # bimodal: one gate z, and 1 − z for the other modality
    h1, h2 = torch.tanh(x1 @ g.w_h["t"].weight.T), torch.tanh(x2 @ g.w_h["a"].weight.T)
    z = torch.sigmoid(torch.cat([x1, x2], -1) @ g.w_z["t"].weight.T)
    torch.testing.assert_close(g([x1, x2], [ok, ok]), z * h1 + (1 - z) * h2)
    with torch.no_grad():
        g.w_z["t"].weight.zero_()
        g.w_z["t"].weight[:, 0] = 100.0  # z = σ(±100): row 0 takes h_1 only, row 1 h_2 only
    out = g([x1, x2], [ok, ok])
    torch.testing.assert_close(out[0], h1[0])
    torch.testing.assert_close(out[1], h2[1])
    # trimodal: one independent sigmoid gate per modality (no softmax: gates need not sum to one)
    g3 = GMU(["t", "a", "v"], d)
    hs = [torch.tanh(x @ g3.w_h[m].weight.T) for m, x in zip("tav", (x1, x2, x3))]
    with torch.no_grad():
        for m in "tav":
            g3.w_z[m].weight.zero_()
    torch.testing.assert_close(g3([x1, x2, x3], [ok] * 3), 0.5 * sum(hs))
    with torch.no_grad():
        g3.w_z["t"].weight[:, 0] = 100.0
        g3.w_z["a"].weight[:, 0] = -100.0
        g3.w_z["v"].weight[:, 0] = 100.0  # row 0: z_t = z_v = 1, z_a = 0; row 1: only z_a = 1
    out = g3([x1, x2, x3], [ok] * 3)
    torch.testing.assert_close(out[0], hs[0][0] + hs[2][0])
    torch.testing.assert_close(out[1], hs[1][1])
    absent = torch.tensor([True, False])
    torch.testing.assert_close(g3([x1, x2, x3], [ok, ok, absent])[1], hs[1][1])  # absent v: h_v is masked
    # the GMU equations have no biases
    assert {n for n, _ in g3.named_parameters()} == {f"w_{k}.{m}.weight" for k in "hz" for m in "tav"}


def test_mult_is_causal_and_context_dependent_for_every_modality():
    """MulT attends over the K-window context in all modalities (DialogueTRM §5.4); never the future."""
    model = build("tav", fusion="mult", window=2)
    assert len(model.fuser.cross) == 6 and model.fuser.mem["t"].blocks[0].attn.h == model.rep_heads
    assert model.fuser.mem["t"].norm.normalized_shape == (32,)  # Z_α = [Z_β1→α; Z_β2→α]: 2·hidden wide
    assert model.fuser.mem["t"].blocks[0].ff[0].out_features == 2048  # ff_dim, as the model's other transformers
    assert model.fuser.cross["ta"].blocks[0].ln_kv is not None  # crossmodal: LN on the source stream too
    feats, present, mask, speaker, _ = toy_batch(DIMS, "tav")
    out = model(feats, present, mask, speaker)
    for t in range(1, 5):
        for m in "tav":
            out2 = model(changed(feats, 0, t, m, seed=t), present, mask, speaker)
            torch.testing.assert_close(out2[0, :t], out[0, :t])  # the future never reaches the past
            assert (out2[0, t] - out[0, t]).abs().max() > 1e-4
    # audio is context-free in the intra-modal transformer, but MulT's attention carries turn 1's audio to turn 2
    out2 = model(changed(feats, 0, 1, "a"), present, mask, speaker)
    assert (out2[0, 2] - out[0, 2]).abs().max() > 1e-4
    # window 0: MulT sees only the utterance itself (and a/v are context-free): turn 1's audio stays in turn 1
    model0 = build("tav", fusion="mult", window=0)
    out = model0(feats, present, mask, speaker)
    out2 = model0(changed(feats, 0, 1, "a"), present, mask, speaker)
    torch.testing.assert_close(out2[0, [0, 2, 3, 4]], out[0, [0, 2, 3, 4]])


def test_mult_masks_absent_sources_padding_and_the_future():
    model = build("tav", fusion="mult", window=2)
    seen = {}
    model.fuser.cross["tv"].register_forward_hook(lambda mod, args, out: seen.update(mask=args[2]))
    feats, present, mask, speaker, _ = toy_batch(DIMS, "tav")
    present["v"][0, 1] = False
    model(feats, present, mask, speaker)
    m = seen["mask"]  # text queries attending to visual keys
    assert not m[0, :, 1].any()  # the absent visual row is no key
    assert not m[1, :, 3:].any() and not m[1, 3:].any()  # dialogue 1's padding: neither key nor query
    assert m[0, 3].tolist() == [False, False, True, True, False]  # turns 3−K … 3 (1 is absent), no future
    assert m[0, 4].tolist() == [False, False, True, True, True]


@pytest.mark.parametrize("fusion,cfg", [("bilinear", {}), ("gmu", {}), ("mult", {}), ("mult", {"causal": False})])
def test_table5_fusions_ignore_padding_and_absent_rows(fusion, cfg):
    model = build("tav", fusion=fusion, window=2, **cfg)
    feats, present, mask, speaker, _ = toy_batch(DIMS, "tav")
    present["v"][0, 1] = False
    out = comparable(model, feats, present, mask, speaker)  # logits (bilinear: MCB's product before the signed sqrt)
    garbage = {m: f.masked_fill(~mask.unsqueeze(-1), 77.0) for m, f in feats.items()}
    garbage["v"][0, 1] = -40.0  # an absent row: its values must not matter
    present2 = {m: p | ~mask for m, p in present.items()}  # "present" padding must not leak either
    assert_same_rows(model, comparable(model, garbage, present2, mask, speaker)[mask], out[mask])
    # a second, all-padding tail does not change the real outputs (MulT's positions count from turn 0)
    pad = lambda x, v: torch.cat([x, torch.full((x.shape[0], 2, *x.shape[2:]), v, dtype=x.dtype)], 1)  # noqa: E731
    out2 = comparable(model, {m: pad(f, 9.0) for m, f in feats.items()}, {m: pad(p, True) for m, p in present.items()},
                      pad(mask, False), pad(speaker, 0))
    assert_same_rows(model, out2[:, :5][mask], out[mask])


def test_unknown_fusion_is_one_clear_error():
    with pytest.raises(ValueError, match="bilinear\\|gmu\\|mult"):
        build(fusion="tensor")


@pytest.mark.parametrize("fusion", ["bilinear", "gmu", "mult"])
def test_table5_fusions_overfit_tiny_batch(fusion):
    assert overfit_ce(build(fusion=fusion).train(), DIMS, lr=3e-3).item() < 0.1
