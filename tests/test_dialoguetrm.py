"""DialogueTRM (Mao et al. 2021): causal K-window context (Eq. 2–3), context-free a/v (Eq. 4–6), MGIF gates by
hand (Eq. 7–11), Eq. 15's slot order, PyTorch-default transformers (§5.2), the dimensional head (Eq. 17)."""
import pytest
import torch

from modelkit import one_thread, overfit, overfit_ce, toy_batch  # noqa: F401  (one_thread: autouse)

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
