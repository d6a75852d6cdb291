"""Ada2I: AFW / AMW maths, disparity ratio and gradient modulation (Eq. 16–19) through the engine hooks,
every modality subset, ablations, padding and the per-epoch ρ logs."""
import math

import pytest
import torch

from modelkit import one_thread, toy_batch, toy_dialogues  # noqa: F401  (one_thread: autouse)
import torch.nn.functional as F

from models import get_model
from models.ada2i import disparity_ratio, modulation_coefficients, official_heads
from pipeline.training.engine import Engine, EngineConfig

DIMS = {"t": 16, "a": 12, "v": 8}
SUBSETS = ["t", "a", "v", "ta", "tv", "av", "tav"]
TINY = dict(hidden=16, rank=3, ff_dim=32)


def build(mods="tav", **cfg):
    torch.manual_seed(0)
    return get_model("ada2i", input_dims={m: DIMS[m] for m in mods}, n_classes=7, **{**TINY, **cfg})


def batch(mods="tav", B=3, T=5, seed=0):
    return toy_batch(DIMS, mods, B, T, seed, speakers=False)


def train_step(model, b, epoch=0, burn=0):
    """One engine-order step without the optimiser: forward, aux_loss, backward, before_step (``burn``: draws from
    the global RNG first, as another DDP rank's different batch shapes would have)."""
    feats, present, mask, speaker, label = b
    out = model(feats, present, mask, speaker)
    aux = {**out["losses"], **model.aux_loss(out, {"label": label, "mask": mask, "class_weight": None})}
    loss = F.cross_entropy(out["logits"].reshape(-1, 7), label.reshape(-1), ignore_index=-100) + sum(aux.values())
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    coef = dict(model._coef or {})
    torch.rand(burn)
    model.before_step(epoch=epoch, step=0)
    return loss, grads, coef


def test_official_head_rule():
    assert [official_heads(d) for d in (768, 300, 342, 88, 256, 13, 17)] == [6, 5, 6, 8, 8, 13, 1]


def test_coefficient_hand_computed():
    rho = disparity_ratio({"t": 0.6, "a": 0.3, "v": 0.2})
    assert rho == pytest.approx({"t": 3.0, "a": 1.5, "v": 1.0})
    k = modulation_coefficients(rho, alpha=0.42)
    # 1 − tanh(0.42·3) = 1 − tanh(1.26), 1 − tanh(0.63); the weakest modality (ρ = 1) keeps its gradient
    assert k == pytest.approx({"t": 0.148944, "a": 0.441951, "v": 1.0}, abs=1e-5)
    assert modulation_coefficients({"t": 1.0, "a": 1.0}, 0.5) == {"t": 1.0, "a": 1.0}


def test_scores_from_unimodal_logits():
    """aux_loss: s_m = mean softmax probability of the label → ρ → k, from hand-made unimodal logits."""
    model = build()
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    label = torch.tensor([[0, 3, 6], [2, 5, -100]])
    p_label = {"t": math.log(18.0), "a": math.log(6.0), "v": 0.0}  # p(label) = 0.75, 0.5, 1/7 over 7 classes
    uni = {}
    for m, x in p_label.items():
        logit = torch.zeros(2, 3, 7)
        logit.scatter_(2, label.clamp(min=0).unsqueeze(-1), x)
        logit[1, 2] = 50.0  # padding: must not count
        uni[m] = (logit, mask.clone())
    model._uni = uni
    model.aux_loss(None, {"label": label, "mask": mask})
    rho = {"t": 0.75 * 7, "a": 0.5 * 7, "v": 1.0}
    assert model._coef == pytest.approx({m: 1 - math.tanh(0.42 * r) if r > 1 else 1.0 for m, r in rho.items()})
    logs = model.epoch_logs()
    assert {k: v for k, v in logs.items() if k.startswith("rho_")} == pytest.approx({f"rho_{m}": r for m, r in rho.items()})
    assert {k: v for k, v in logs.items() if k.startswith("score_")} == pytest.approx(
        {"score_t": 0.75, "score_a": 0.5, "score_v": 1 / 7})
    assert model.epoch_logs() == {}  # reset after each epoch


@pytest.mark.parametrize("mods", SUBSETS)
def test_forward_backward_every_subset(mods):
    model = build(mods, start_mod=1)
    loss, grads, coef = train_step(model, batch(mods))
    assert torch.isfinite(loss)
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    logs = model.epoch_logs()
    if len(mods) == 1:  # no disparity with one modality: nothing modulated, nothing logged
        assert coef == {} and logs == {}
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=0)
    else:
        assert set(coef) == set(mods) and min(coef.values()) <= 1.0
        rho = {k: v for k, v in logs.items() if k.startswith("rho_")}
        assert set(rho) == {f"rho_{m}" for m in mods} and min(rho.values()) == pytest.approx(1.0)
        assert {f"score_{m}" for m in mods} | {f"wnorm_{m}_c{k}" for m in mods for k in range(7)} \
            == set(logs) - set(rho)


def test_dominant_encoder_gradients_scaled():
    model = build(start_mod=1, noise=False)
    _, grads, coef = train_step(model, batch())
    dominant = min(coef, key=coef.get)
    assert coef[dominant] < 1.0
    for n, p in model.named_parameters():
        m = n.split(".")[1] if n.startswith("encoders.") else None
        k = coef[m] if m else 1.0  # only the modality encoders are modulated
        torch.testing.assert_close(p.grad, grads[n] * k, rtol=1e-6, atol=0)
    weakest = max(coef, key=coef.get)
    assert coef[weakest] == 1.0


def test_modulation_window_and_noise():
    b = batch()
    model = build(start_mod=3, end_mod=4, noise=False)
    for epoch, on in [(0, False), (1, False), (2, True), (3, True), (4, False)]:  # 1-based epochs 3..4
        _, grads, coef = train_step(model, b, epoch=epoch)
        assert min(coef.values()) < 1.0  # some modality dominates: the check is not vacuous
        params = dict(model.named_parameters())
        for m, k in coef.items():
            name = f"encoders.{m}.encoder.blocks.0.ff.0.weight"
            torch.testing.assert_close(params[name].grad, grads[name] * (k if on else 1.0))
    noisy = build(start_mod=1, noise=True, noise_target="gradient")  # the official code's Eq. 19
    _, grads, coef = train_step(noisy, b)
    name = "encoders.a.encoder.blocks.0.ff.0.weight"
    g = dict(noisy.named_parameters())[name].grad
    scaled = grads[name] * coef["a"]
    noise = g - scaled
    assert noise.abs().max() > 0
    # Eq. 19: σ = std of the modulated gradient (+1e-8)
    assert noise.std().item() == pytest.approx(scaled.std().item(), rel=0.15)
    for n, p in noisy.named_parameters():  # noise only on the modality encoders
        if not n.startswith("encoders."):
            torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=0)
    # DDP: two replicas (same seed, same all-reduced gradient) add the same noise, so the engine's re-average
    # keeps σ (per-rank draws would average to σ/√W)
    twin = build(start_mod=1, noise=True, noise_target="gradient")
    train_step(twin, b, burn=5)
    torch.testing.assert_close(dict(twin.named_parameters())[name].grad, g, rtol=0, atol=0)


@pytest.mark.parametrize("paper", [True, False])
def test_afw_layer_matches_tensor_ring_equations(paper):
    """Eq. 3–7 for two modalities, recomputed with explicit einsums: the paper's (softmax(·/√rank) over the key
    axis, contraction with every modality's pooled core) and the official code's (neither)."""
    model = build("ta", dropout=0.0, paper_equations=paper).eval()
    layer = model.afw[0]
    g = torch.Generator().manual_seed(3)
    h = {m: torch.randn(2, 4, 16, generator=g) for m in ("t", "a")}
    valid = {m: torch.ones(2, 4, dtype=torch.bool) for m in ("t", "a")}
    valid["a"][1, 3] = False
    out, _ = layer(h, valid, with_loss=False)

    def core(m):
        x = h[m]
        q = torch.einsum("bti,btj->btij", layer.q1[m](x), layer.q2[m](x))
        k = torch.einsum("bti,btj->btij", layer.k1[m](x), layer.k2[m](x))
        return (q * k / math.sqrt(3)).softmax(-1) if paper else q * k

    G = {m: core(m) for m in h}
    P = {m: torch.einsum("btij,bt->bij", G[m], valid[m].float()) / valid[m].sum(1).float()[:, None, None]
         for m in h}
    for m, other in (("t", "a"), ("a", "t")):
        A = torch.einsum("btij,bjk->btik", G[m], P[other])
        if paper:  # Eq. 6 in t, a order: ×A^(t) ×A^(a), the modality's own core included
            A = torch.einsum("btij,bjk,bkl->btil", G[m], P["t"], P["a"])
        w = layer.weights[m](A.reshape(2, 4, -1))
        torch.testing.assert_close(out[m], w * h[m] + 0.55 * h[m])


def test_feature_loss_sum_is_eq12_and_mean_the_official():
    """Eq. 12 (``sum``): Σ_m ‖Att − Âtt‖₁ per utterance over B utterances; ``mean``: over every element — their
    ratio is (elements counted) / B on a batch with an absent modality row and padding."""
    feats, present, mask, speaker, _ = batch()
    present = {m: p.clone() for m, p in present.items()}
    present["v"][0, 1] = False
    losses = {}
    for red in ("sum", "mean"):
        model = build(feature_reduction=red, afw_layers=1, dropout=0.0)
        losses[red] = model(feats, present, mask, speaker)["losses"]["feature"].item()
    n_elem = sum(int((present[m] & mask).sum()) for m in "tav") * TINY["hidden"]
    n_utt = int(mask.sum())  # every real utterance has text here
    assert losses["sum"] / losses["mean"] == pytest.approx(n_elem / n_utt, rel=1e-5)
    assert build(paper_equations=False).afw[0].feature_reduction == "mean"


def test_eq19_noise_on_the_parameters_after_the_step():
    """``noise_target: parameter`` (paper Eq. 19): gradients are only scaled by k_m; after the update each encoder
    parameter moves by η·σ·ε with σ = std of its unmodulated gradient; the same (epoch, step) draws the same ε."""
    b = batch()
    model = build(start_mod=1, noise=True)
    assert model.noise_target == "parameter"
    _, grads, coef = train_step(model, b)
    name = "encoders.a.encoder.blocks.0.ff.0.weight"
    p = dict(model.named_parameters())[name]
    torch.testing.assert_close(p.grad, grads[name] * coef["a"])  # no noise on the gradient
    before = p.detach().clone()
    encoder_params = {id(x) for n, x in model.named_parameters() if n.startswith("encoders.")}
    assert model._sigma and {id(x) for x in model._sigma} <= encoder_params  # σ only for the modality encoders
    sigma = model._sigma[p]
    assert sigma == pytest.approx(grads[name].std().item(), rel=1e-5)
    model.after_step(epoch=0, step=0, lr=0.5)
    step = p.detach() - before
    assert step.std().item() == pytest.approx(0.5 * sigma, rel=0.15) and abs(step.mean().item()) < 0.2 * sigma
    twin = build(start_mod=1, noise=True)
    train_step(twin, b)
    twin.after_step(epoch=0, step=0, lr=0.5)
    torch.testing.assert_close(dict(twin.named_parameters())[name].detach(), p.detach())  # DDP replicas agree
    assert not model._sigma  # consumed by after_step


def test_feature_loss_targets():
    b = batch()
    losses = {}
    for target in ("attention", "output"):
        model = build(feature_target=target)
        out = model(*b[:4])
        assert set(out["losses"]) == {"feature"} and out["losses"]["feature"].item() > 0
        losses[target] = out["losses"]["feature"].item()
        assert model.eval()(*b[:4])["losses"] == {}  # training only
    assert losses["attention"] != losses["output"]
    assert "feature" not in build(afw=False)(*b[:4])["losses"]


@pytest.mark.parametrize("norm", ["class", "hidden", "matrix"])
def test_amw_normalises_weights_and_features(norm):
    """Eq. 8: AMW logits ignore the scale of what ``amw_norm`` normalises — a class row of W^m (paper), a hidden
    unit's column (official), the whole block — and not the others'; without AMW every scale matters."""
    b = batch(seed=1)
    h = TINY["hidden"]
    scalings = {"class": (slice(2, 3), slice(0, h)), "hidden": (slice(None), slice(3, 4)),
                "matrix": (slice(None), slice(0, h))}  # rows = classes, columns = modality t's block
    for amw in (True, False):
        for what, (rows, cols) in scalings.items():
            model = build(amw=amw, amw_norm=norm).eval()
            out = model(*b[:4])["logits"]
            with torch.no_grad():
                model.fc.weight[rows, cols] *= 5.0
            changed = (model(*b[:4])["logits"] - out).abs().max()
            # scaling the whole block changes no normalisation's output; a row or a column only its own
            invariant = amw and what in (norm, "matrix")
            assert (changed < 1e-5) if invariant else (changed > 1e-3), (norm, amw, what)
    assert build(paper_equations=True).amw_norm == "class" and build(paper_equations=False).amw_norm == "hidden"
    model = build(amw=False).eval()
    feats, present, mask, speaker, _ = b
    logits = model(feats, present, mask, speaker)["logits"]
    assert logits.shape == (3, 5, 7)


@pytest.mark.parametrize("cfg", [{"afw": False}, {"amw": False}, {"modulation": False}, {"noise": False},
                                 {"afw": False, "amw": False, "modulation": False}])
def test_ablations_build_and_run(cfg):
    model = build(start_mod=1, **cfg)
    assert len(model.afw) == (0 if cfg.get("afw") is False else 2)
    _, grads, coef = train_step(model, batch())
    assert coef  # ρ is measured in every variant
    if cfg.get("modulation") is False:  # ... but never applied
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=0)
    assert {"rho_t", "rho_a", "rho_v"} <= set(model.epoch_logs())


def test_padded_batch_finite():
    """Padding, an utterance with every modality absent and a dialogue without audio: finite loss and gradients."""
    feats, present, mask, speaker, label = batch(B=4, T=6)
    for m in present:
        present[m][0, 1] = False
    present["a"][3] = False
    feats = {m: f.masked_fill(~present[m].unsqueeze(-1), 1e4) for m, f in feats.items()}
    model = build(start_mod=1)
    loss, _, coef = train_step(model, (feats, present, mask, speaker, label))
    assert torch.isfinite(loss) and coef
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), n


def test_overfits_tiny_batch_with_modulation():
    """Full training step as the engine runs it (hooks on, modulation + noise from epoch 1)."""
    model = build(start_mod=1, dropout=0.0)
    b = batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(100):
        loss, _, _ = train_step(model, b)
        opt.step()
        model.after_step(epoch=0, step=i, lr=1e-2)  # Eq. 19's parameter noise, as the engine calls it
    out = model.eval()(*b[:4])["logits"]
    acc = (out.argmax(-1) == b[4])[b[2]].float().mean()
    ce = F.cross_entropy(out.reshape(-1, 7), b[4].reshape(-1), ignore_index=-100)
    assert acc == 1.0 and ce.item() < 0.5 and torch.isfinite(loss)


def dialogues(n=6, seed=0, mods="tav"):
    return toy_dialogues(DIMS, n, seed, mods)


@pytest.mark.parametrize("mods", ["ta", "tav"])
def test_engine_logs_rho_per_epoch(mods):
    torch.manual_seed(0)
    model = get_model("ada2i", input_dims={m: DIMS[m] for m in mods}, n_classes=7, start_mod=2, **TINY)
    res = Engine(model, EngineConfig(epochs=3, batch_size=2, lr=3e-3, patience=5), "cpu", torch.ones(7)).fit(
        dialogues(mods=mods), dialogues(3, seed=1, mods=mods))
    for row in res["history"]:
        train = row["train"]
        rho = {k: v for k, v in train.items() if k.startswith("rho_")}
        assert set(rho) == {f"rho_{m}" for m in mods}
        assert all(math.isfinite(v) and v >= 1.0 for v in rho.values())
        assert train["aux_feature"] > 0 and train["aux_modal"] > 0
        assert all(0 < train[f"score_{m}"] < 1 for m in mods)
        assert all(train[f"wnorm_{m}_c{k}"] > 0 for m in mods for k in range(7))


def test_paper_equations_switch_changes_the_output_and_both_overfit():
    b = batch()
    outs = {}
    for paper in (True, False):
        model = build(paper_equations=paper, start_mod=1, dropout=0.0)
        assert (model.mlp is not None) == paper
        outs[paper] = model.eval()(*b[:4])["logits"]
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(100):
            loss, _, _ = train_step(model, b)
            opt.step()
        out = model.eval()(*b[:4])["logits"]
        assert (out.argmax(-1) == b[4])[b[2]].all(), paper
    assert not torch.allclose(outs[True], outs[False])


def test_paper_mlp_head_and_modal_loss():
    """Eq. 9: the output is MLP(Z^{m-adapt}); Eq. 13: L_modal = CE(Z^{m-adapt}), class-weighted like the task."""
    model = build()
    feats, present, mask, speaker, label = batch()
    out = model(feats, present, mask, speaker)
    torch.testing.assert_close(out["logits"], model.mlp(out["z_adapt"]))
    w = torch.linspace(0.5, 2.0, 7)
    aux = model.aux_loss(out, {"label": label, "mask": mask, "class_weight": w})
    expected = F.cross_entropy(out["z_adapt"][mask], label[mask], weight=w)
    torch.testing.assert_close(aux["modal"], expected)
    official = build(paper_equations=False)
    out = official(feats, present, mask, speaker)
    assert "z_adapt" not in out and official.aux_loss(out, {"label": label, "mask": mask}) == {}


def test_cosine_score_eq16():
    """Paper Eq. 16 scores softmax(cos⟨W_k^m, Z^m⟩ + b_k/M); the official code softmax(W^m Z^m + b/M)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 16, generator=g)
    for paper in (True, False):
        model = build(paper_equations=paper)
        w, b = model.fc.weight[:, :16], model.fc.bias / 3
        cos = torch.stack([F.cosine_similarity(z, w[k].expand_as(z), dim=-1) for k in range(7)], -1)
        expected = (cos if paper else z @ w.T) + b
        torch.testing.assert_close(model._unimodal_logits("t", z), expected)


def test_score_and_weight_norm_logs():
    model = build(start_mod=1)
    train_step(model, batch())
    train_step(model, batch(seed=2))
    logs = model.epoch_logs()
    for m in "tav":
        j = "tav".index(m)
        norms = model.fc.weight[:, j * 16:(j + 1) * 16].norm(dim=1)
        for k in range(7):
            assert logs[f"wnorm_{m}_c{k}"] == pytest.approx(norms[k].item())
        assert 0 < logs[f"score_{m}"] < 1


def test_clip_before_modulation_on_a_planted_large_gradient():
    """Official order (``train.clip_before_hooks: true``): the planted huge gradient is clipped to grad_clip,
    then modulated and noised, so the gradient the optimiser sees is no longer of norm grad_clip and stays
    small. After-hook order: the noise (σ from the huge gradient) is clipped with everything: norm = grad_clip."""
    import numpy as np

    norms = {}
    for before in (True, False):
        torch.manual_seed(0)
        model = get_model("ada2i", input_dims={m: DIMS[m] for m in "ta"}, n_classes=7, start_mod=1, **TINY)
        model.encoders["a"].out.weight.register_hook(lambda g: g + 1e6)  # the planted gradient
        eng = Engine(model, EngineConfig(epochs=1, batch_size=6, lr=0.0, grad_clip=2.0, clip_before_hooks=before),
                     "cpu", torch.ones(7))
        real_step = eng.opt.step

        def step(*a, real_step=real_step, model=model, before=before, **k):
            norms[before] = float(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm())
            return real_step(*a, **k)

        eng.opt.step = step
        eng.train_epoch(dialogues(6, mods="ta"), np.random.default_rng(0), epoch=0)
    assert norms[False] == pytest.approx(2.0, rel=1e-4)
    assert norms[True] != pytest.approx(2.0, rel=1e-3) and norms[True] < 20.0


@pytest.mark.parametrize("paper", [True, False])
def test_paper_equations_alone_selects_every_sub_switch(paper):
    """One switch gives the whole path: every ``null`` sub-switch follows ``paper_equations`` (issue #27); a set
    value still pins its own switch."""
    model = build(paper_equations=paper)
    printed = dict(amw_norm="class", feature_reduction="sum", noise_target="parameter", feature_target="attention")
    official = dict(amw_norm="hidden", feature_reduction="mean", noise_target="gradient", feature_target="output")
    want = printed if paper else official
    got = dict(amw_norm=model.amw_norm, feature_reduction=model.afw[0].feature_reduction,
               noise_target=model.noise_target, feature_target=model.feature_target)
    assert got == want and all(layer.feature_target == want["feature_target"] for layer in model.afw)
    assert (model.mlp is not None) == paper and model.afw[0].paper == paper  # Eq. 4/6/9/16 follow it too
    pinned = build(paper_equations=paper, feature_target="attention", feature_reduction="sum")
    assert pinned.feature_target == "attention" and pinned.afw[0].feature_reduction == "sum"
    with pytest.raises(ValueError, match="feature_target"):
        build(feature_target="weights")
