"""SUMMER (models/summer.py) and its teacher stage (pipeline/train_teacher.py): every modality subset and ablation,
the frozen teacher (its own SDMoE on and off), dynamic routing (Eq. 3-4), the DynAttn mask and attenuation (Eq. 7-8)
against hand computations, IKD per branch (Eq. 11-15) against a hand-computed toy and under padding, the
paper-size model, and the two phases on the demo."""
import json
import math

import numpy as np
import pytest
import torch

from modelkit import one_thread, overfit, toy_batch, toy_dialogues  # noqa: F401  (one_thread: autouse)
import torch.nn.functional as F

from models import get_model
from models.layers import masked_rnn
from models.summer import (DialogueRNN, DynamicRouter, DynAttention, Summer, SummerTeacher, dynattn_mask,
                           smooth_targets)
from pipeline.training.dataset import Standardizer
from pipeline.training.engine import Engine, EngineConfig, split_output
from pipeline.train_teacher import save_teacher, teacher_defaults

DIMS = {"t": 16, "a": 12, "v": 8}
SUBSETS = ["t", "a", "v", "ta", "tv", "av", "tav"]
TINY = {"hidden": 16, "heads": 4, "experts": 3}
VARIANTS = [{}, {"moe": "plain"}, {"fusion": "self_attention"}, {"ikd": False},
            {"fusion": "self_attention", "ikd": False}, {"moe": "plain", "fusion": "self_attention", "ikd": False},
            {"fusion_layers": 2, "branch_query": "anchor"}, {"teacher": {"moe": "none", "modality": "a"}},
            {"global_moe": "dense", "gate_context": False, "route_stats": "expert", "route_renorm": True},
            {"smooth_form": "printed", "engine_ce": True, "inner_loss": "l2", "kl_direction": "teacher_student",
             "learn_phi": False, "audio_reduce": 6, "dialoguernn": []},
            {"share_experts": True, "phi_bound": "sigmoid", "smooth_norm": "utterances", "ikd_reduction": "mean"}]
IKD_KEYS = {"ikd_cross", "ikd_align", "ikd_inner", "smooth"}
VIDS = ["default" if not c else ",".join(f"{k}={v}" for k, v in c.items()) for c in VARIANTS]


def batch(mods="tav", B=3, T=5, seed=0):
    return toy_batch(DIMS, mods, B, T, seed)


def build(mods="tav", **cfg):
    torch.manual_seed(0)
    return get_model("summer", input_dims={m: DIMS[m] for m in mods}, n_classes=7, **{**TINY, **cfg})


def full_loss(model, feats, present, mask, speaker, label):
    """What the engine optimises: task CE + every auxiliary loss (IKD, label smoothing)."""
    logits = model(feats, present, mask, speaker)
    aux = model.aux_loss(logits, {"mask": mask, "label": label})
    task = F.cross_entropy(logits.reshape(-1, 7), label.reshape(-1), ignore_index=-100)
    return task + sum(aux.values()), aux


@pytest.mark.parametrize("mods", SUBSETS)
@pytest.mark.parametrize("cfg", VARIANTS, ids=VIDS)
def test_forward_backward_every_subset(mods, cfg):
    model = build(mods, **cfg)
    feats, present, mask, speaker, label = batch(mods)
    loss, aux = full_loss(model, feats, present, mask, speaker, label)
    assert model(feats, present, mask, speaker).shape == (3, 5, 7)
    expect = (IKD_KEYS | ({"engine_ce"} if not cfg.get("engine_ce") else set())) if cfg.get("ikd", True) else set()
    assert set(aux) == expect and all(torch.isfinite(v) for v in aux.values())
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert not any(n.startswith("teacher.") for n, _ in model.named_parameters())  # frozen: buffers only
    has_teacher = cfg.get("ikd", True) or cfg.get("fusion", "hcmf") == "hcmf"
    assert (model.teacher is not None) == has_teacher


@pytest.mark.parametrize("cfg", VARIANTS, ids=VIDS)
def test_padding_and_absent_modalities_do_not_leak(cfg):
    model = build("tav", **cfg).eval()
    feats, present, mask, speaker, _ = batch("tav")
    out = model(feats, present, mask, speaker)
    pad = lambda x, v: torch.cat([x, torch.full((*x.shape[:1], 3, *x.shape[2:]), v, dtype=x.dtype)], 1)  # noqa: E731
    feats2 = {m: pad(f.masked_fill(~mask.unsqueeze(-1), 123.0), 55.0) for m, f in feats.items()}
    present2 = {m: pad(p | ~mask, True) for m, p in present.items()}
    mask2, speaker2 = pad(mask, False), pad(speaker.masked_fill(~mask, 1), 1)
    torch.testing.assert_close(out[mask], model(feats2, present2, mask2, speaker2)[mask2])
    for m in "tav":
        present[m][0, 2] = False
    out = model(feats, present, mask, speaker)
    for m in "tav":
        feats[m][0, 2] = 99.0
    torch.testing.assert_close(out, model(feats, present, mask, speaker))


OVERFIT = [{}, {"moe": "plain"}, {"fusion": "self_attention"}, {"ikd": False}, {"teacher": {"modality": "a"}},
           {"fusion_layers": 2}]


@pytest.mark.parametrize("cfg", OVERFIT, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_every_ablation_overfits_a_tiny_batch(cfg):
    """The objective the engine optimises (Eq. 15 alone by default: the engine's CE is cancelled) fits 13 labels."""
    model = build("ta", dropout=0.0, **{"experts": 2, **cfg})  # t + a: both cross directions, no DialogueRNN loop
    feats, present, mask, speaker, label = batch("ta")
    overfit(model, lambda: full_loss(model, feats, present, mask, speaker, label), steps=80)
    logits = model(feats, present, mask, speaker)
    assert (logits[mask].argmax(-1) == label[mask]).all()


def test_dynattn_mask_hand_computed_3x3():
    """Eq. 7: M_ij = 1 where |s_tr − s_st| > 0.5 (exactly 0.5 is not masked)."""
    s_tr = torch.tensor([[1.0, 0.25, -0.5], [0.0, 1.0, 0.5], [0.25, 0.25, 0.25]]).view(1, 1, 3, 3)
    s_st = torch.tensor([[0.375, 0.125, 0.25], [0.0, 0.25, 0.5], [1.0, -0.5, 0.75]]).view(1, 1, 3, 3)
    # |diff| = [[.625, .125, .75], [0, .75, 0], [.75, .75, .5]]
    expect = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0]])
    torch.testing.assert_close(dynattn_mask(s_tr, s_st)[0, 0], expect, rtol=0, atol=0)
    assert dynattn_mask(s_tr, s_st, threshold=0.7)[0, 0].sum() == 4  # only the .75s
    # different head counts: compared on head means
    two = torch.cat([s_st, s_st + 2.0], 1)  # head mean = s_st + 1
    torch.testing.assert_close(dynattn_mask(s_tr, two)[0, 0], (abs(s_tr - s_st - 1) > 0.5).float()[0, 0])


def identity_attention(phi=0.5, learn_phi=True, **kw):
    att = DynAttention(2, 1, phi=phi, learn_phi=learn_phi, **kw)
    with torch.no_grad():
        for lin in (att.q, att.k, att.v, att.o):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    return att


def test_dynattn_attenuation_against_hand_computation():
    """Eq. 8 with Q = K = V = x (identity projections, one head, d = 2): out_i = Σ_j (1 − φ M_ij) softmax_j(s_i) x_j."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    s = [[1 / math.sqrt(2) * (a[0] * b[0] + a[1] * b[1]) for b in x[0].tolist()] for a in x[0].tolist()]
    guide = torch.tensor(s).view(1, 1, 3, 3).clone()
    guide[0, 0, 0, 2] += 1.0  # the teacher disagrees on (0, 2) and (2, 1) only
    guide[0, 0, 2, 1] -= 0.75
    att = identity_attention(phi=0.5)
    out, scores = att(x, guide=guide)
    torch.testing.assert_close(scores[0, 0], torch.tensor(s))
    expect = []
    for i in range(3):
        e = [math.exp(v) for v in s[i]]
        a = [v / sum(e) for v in e]
        a = [w * (1 - 0.5 * ((i, j) in {(0, 2), (2, 1)})) for j, w in enumerate(a)]  # attenuated, not renormalised
        expect.append([sum(a[j] * x[0, j, c].item() for j in range(3)) for c in range(2)])
    torch.testing.assert_close(out[0], torch.tensor(expect))
    plain, _ = att(x)  # without a guide: ordinary attention
    assert (plain[0, 0] - out[0, 0]).abs().sum() > 0.05 and torch.allclose(plain[0, 1], out[0, 1])
    # padding keys never count: a masked key gets no weight whatever the teacher says
    mask = torch.tensor([[[True, True, False]] * 3])
    out_m, _ = att(x, mask=mask, guide=guide)
    e0 = [math.exp(v) for v in s[0][:2]]
    torch.testing.assert_close(out_m[0, 0], torch.tensor([e0[0] / sum(e0), e0[1] / sum(e0)]))


def test_phi_is_learned_or_set():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    guide = torch.full((1, 1, 3, 3), 5.0)  # every pair differs by > 0.5: all attenuated
    att = identity_attention(phi=0.3)
    out, _ = att(x, guide=guide)
    out.sum().backward()
    assert isinstance(att.phi, torch.nn.Parameter) and att.phi.grad is not None and att.phi.grad.abs() > 0
    torch.testing.assert_close(out, 0.7 * att(x)[0].detach())  # (1 − φ) times plain attention (o is linear, b = 0)
    fixed = identity_attention(phi=0.3, learn_phi=False)
    assert "phi" not in dict(fixed.named_parameters()) and float(fixed.phi) == pytest.approx(0.3)
    # in the student: one φ per DynAttn block, learnable unless learn_phi=false
    model = build("ta")
    names = [n for n, _ in model.named_parameters() if n.endswith(".phi")]
    assert len(names) == 2 + 2  # intra t, a + cross ta, at (one level)
    feats, present, mask, speaker, label = batch("ta")
    full_loss(model, feats, present, mask, speaker, label)[0].backward()
    assert all(dict(model.named_parameters())[n].grad is not None for n in names)
    assert not [n for n, _ in build("ta", learn_phi=False).named_parameters() if n.endswith(".phi")]


def test_phi_bound_keeps_the_attenuation_a_mask():
    """Eq. 8's φ has no range in the paper. ``phi_bound: none`` (default) stores φ itself: a φ > 1 flips the sign of
    the attenuated weights; ``sigmoid`` stores ρ with φ = σ(ρ) ∈ (0, 1): at most a full mask, never a flip."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    guide = torch.full((1, 1, 3, 3), 5.0)  # every pair attenuated
    plain = identity_attention()(x)[0].detach()
    att = identity_attention(phi=0.3, phi_bound="sigmoid")
    assert att.phi.item() == pytest.approx(math.log(0.3 / 0.7)) and att.phi_value.item() == pytest.approx(0.3)
    torch.testing.assert_close(att(x, guide=guide)[0], 0.7 * plain)
    free = identity_attention(phi=0.3)
    with torch.no_grad():
        att.phi.fill_(50.0)  # far past any φ = 1, as unbounded learning could go
        free.phi.fill_(3.0)
    torch.testing.assert_close(att(x, guide=guide)[0], torch.zeros_like(plain))  # φ → 1: fully masked
    torch.testing.assert_close(free(x, guide=guide)[0], -2.0 * plain)  # (1 − 3)·A: negative attention
    with pytest.raises(ValueError, match="phi_bound"):
        DynAttention(2, 1, phi=1.5, phi_bound="sigmoid")
    with pytest.raises(ValueError, match="phi_bound"):
        build("ta", phi_bound="tanh")
    assert build("ta", phi_bound="sigmoid", phi=0.25).epoch_logs()["phi_mean"] == pytest.approx(0.25)


def test_share_experts_is_one_bigru_per_modality_scaled_by_the_gate_mass():
    """§3.4 read literally (E_i = BiGRU(U_e); "parameters are shared within intra-modal components but remain
    independent across inter-modal components"): one BiGRU per modality, so Eq. 5 = (Σ_i Ĝ_i)·BiGRU(U_e); with
    nothing outside the band Σ_i Ĝ_i = 1/T, i.e. the plain BiGRU. The default keeps ``experts`` distinct ones."""
    shared, own = build("ta", share_experts=True), build("ta")
    for m in "ta":
        assert len(shared.moe[m].experts) == 1 and len(own.moe[m].experts) == 3
    assert shared.moe["t"].experts[0] is not shared.moe["a"].experts[0]
    n_gru = sum(p.numel() for p in own.moe["t"].experts[0].parameters())
    assert sum(p.numel() for p in own.parameters()) - sum(p.numel() for p in shared.parameters()) == 2 * 2 * n_gru
    moe = shared.moe["t"].eval()
    torch.manual_seed(1)
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 4, 32)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    g = moe.weights(x, mask, ctx)
    rnn = masked_rnn(moe.experts[0], x, mask)
    torch.testing.assert_close(moe(x, mask, mask, ctx), moe.norm(x + g.sum(-1, keepdim=True) * rnn))
    torch.testing.assert_close(g.sum(-1), torch.ones(2, 4))  # T = 1 and no statistics yet: nothing dropped
    torch.testing.assert_close(moe(x, mask, mask, ctx), moe.norm(x + rnn))
    t = SummerTeacher({"t": DIMS["t"]}, 7, hidden=16, heads=4, experts=3, share_experts=True)
    assert len(t.moe.experts) == 1


def test_dynamic_routing_keeps_exactly_the_band():
    """Eq. 3: weights whose logit W_g lies outside (μ − 2σ, μ + 2σ) are zero, the others are Softmax(W_g)/T."""
    w = torch.zeros(1, 12, 3)
    w[0, 11, 0] = 10.0  # one extreme logit
    w[0, 5, 1] = -1.0
    valid = torch.ones(1, 12, dtype=torch.bool)
    r = DynamicRouter(3, route_sigma=2.0, temperature=2.0).train()
    flat = w.flatten()
    mu, sd = flat.mean(), flat.std(unbiased=False)  # over every entry of W_g ("tensor")
    expect = (w - mu).abs() < 2 * sd
    keep = r.band(w, valid)
    torch.testing.assert_close(keep, expect)
    assert not keep[0, 11, 0] and keep.sum() == 35
    r.eval()  # running statistics = the first batch's: the same band, no noise
    g = r(w, valid)
    torch.testing.assert_close(g, w.softmax(-1) * expect / 2.0)
    torch.testing.assert_close(r(w[:, 11:], valid[:, 11:]), g[:, 11:])  # independent of the rest of the batch
    # per expert: the statistics of each column
    re = DynamicRouter(3, stats="expert").train()
    col = (w - w.mean(1, keepdim=True)).abs() < 2 * w.std(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(re.band(w, valid), col | (w.std(1, unbiased=False, keepdim=True) == 0))
    # per token over 3 experts: |z| ≤ √2 < 2, so nothing can ever leave the band
    assert DynamicRouter(3, stats="token").band(torch.randn(2, 7, 3) * 50, torch.ones(2, 7, dtype=torch.bool)).all()
    # padding takes no part in the statistics
    wp = torch.cat([w, torch.full((1, 4, 3), 1e3)], 1)
    vp = torch.cat([valid, torch.zeros(1, 4, dtype=torch.bool)], 1)
    torch.testing.assert_close(DynamicRouter(3).train().band(wp, vp)[:, :12], expect)
    # renormalised variant: the kept weights sum to 1
    rn = DynamicRouter(3, renorm=True).eval()
    rn.running_mean.fill_(0.0)
    rn.running_std.fill_(float(sd))
    torch.testing.assert_close(rn(w, valid).sum(-1), torch.ones(1, 12))


def test_gumbel_tau_is_learned_and_logged():
    model = build("ta")
    feats, present, mask, speaker, label = batch("ta")
    loss, _ = full_loss(model, feats, present, mask, speaker, label)
    loss.backward()
    assert model.moe["t"].router.log_tau.grad.abs() > 0
    logs = model.epoch_logs()
    assert {"tau_t", "tau_a", "tau_global", "route_dropped_t", "route_dropped_global", "dyn_masked",
            "phi_mean"} <= set(logs)
    assert logs["tau_t"] == pytest.approx(1.0) and 0 <= logs["route_dropped_t"] <= 1 and 0 <= logs["dyn_masked"] <= 1
    assert not any(k.startswith("tau") for k in build("ta", moe="plain", global_moe="dense").epoch_logs())


def test_smooth_targets_follow_eq14():
    """Eq. 14's "where": ε on the true class, (1 − ε)/(C − 1) on each other class."""
    q = smooth_targets(torch.tensor([2, 0]), 5, 0.8)
    torch.testing.assert_close(q, torch.tensor([[0.05, 0.05, 0.8, 0.05, 0.05], [0.8, 0.05, 0.05, 0.05, 0.05]]))
    with pytest.raises(ValueError, match="true class"):
        build("t", smooth_eps=0.1)  # 0.1 < 1/7: not a smoothing of the true label


def hand_model(**cfg):
    """Two branches (t, a), 3 classes, hidden 4; the frozen teacher's classifier is W = [I_3 | 0], b = 0."""
    torch.manual_seed(0)
    m = get_model("summer", input_dims={"t": 4, "a": 4}, n_classes=3, hidden=4, heads=2, experts=2, **cfg)
    m.teacher.classifier.weight.copy_(torch.eye(3, 4))
    m.teacher.classifier.bias.zero_()
    return m


def test_ikd_per_branch_against_hand_computation():
    model = hand_model(smooth_eps=0.9, kappa1=1.0, kappa2=0.5, kappa3=2.0, kappa4=3.0, smooth_form="printed")
    f_t, f_a = torch.tensor([[[2.0, 0, 0, 0]]]), torch.zeros(1, 1, 4)
    h_t, logits = torch.tensor([[[0.0, 1, 0, 0]]]), torch.tensor([[[1.0, 0, 0]]])
    model._cache = {"logits": logits, "branches": [f_t, f_a], "h_t": h_t}
    aux = model.aux_loss(logits, {"mask": torch.ones(1, 1, dtype=torch.bool), "label": torch.tensor([[0]])})

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    pbar, pt, pa = softmax([0, 1, 0]), softmax([2, 0, 0]), softmax([0, 0, 0])
    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q))  # noqa: E731  Eq. 11: KL(p_hat || p_bar)
    assert aux["ikd_cross"].item() == pytest.approx(1.0 * (kl(pt, pbar) + kl(pa, pbar)), rel=1e-5)
    assert aux["ikd_align"].item() == pytest.approx(0.5 * (-math.log(pt[0]) - math.log(pa[0])), rel=1e-5)  # Eq. 12
    assert aux["ikd_inner"].item() == pytest.approx(2.0 * ((4 + 1) / 4 + (0 + 1) / 4), rel=1e-5)  # Eq. 13, MSE
    p = softmax([1, 0, 0])
    q = [0.9, 0.05, 0.05]
    assert aux["smooth"].item() == pytest.approx(3.0 * -sum(a * b for a, b in zip(p, q)), rel=1e-5)  # Eq. 14
    assert aux["engine_ce"].item() == pytest.approx(math.log(p[0]), rel=1e-5)  # cancels the engine's CE
    # the other readings: usual KD direction, L2 norm (the formula), soft-target CE (the text; the default)
    model = hand_model(smooth_eps=0.9, kl_direction="teacher_student", inner_loss="l2", engine_ce=True)
    model._cache = {"logits": logits, "branches": [f_t, f_a], "h_t": h_t}
    aux = model.aux_loss(logits, {"mask": torch.ones(1, 1, dtype=torch.bool), "label": torch.tensor([[0]])})
    assert aux["ikd_cross"].item() == pytest.approx(kl(pbar, pt) + kl(pbar, pa), rel=1e-5)
    assert aux["ikd_inner"].item() == pytest.approx(math.sqrt(5) + 1.0, rel=1e-5)
    assert aux["smooth"].item() == pytest.approx(2.0 * -sum(b * math.log(a) for a, b in zip(p, q)), rel=1e-5)
    assert "engine_ce" not in aux


def test_eq14_denominator_and_the_sum_over_utterances_by_hand():
    """Two utterances, 3 classes. Eq. 14's denominator: over the N utterances per class (as printed,
    ``smooth_norm: utterances``) or over the classes (default), in both loss forms; Eq. 11–14 summed over the
    utterances (Eq. 11–13's Σ_{i=1}^N, default) or averaged (``ikd_reduction: mean``): a factor N = 2 on each."""
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]]])
    f_t, f_a = torch.tensor([[[2.0, 0, 0, 0], [0, 1.0, 0, 0]]]), torch.zeros(1, 2, 4)
    h_t = torch.tensor([[[0.0, 1, 0, 0], [1.0, 0, 0, 0]]])
    batch2 = {"mask": torch.ones(1, 2, dtype=torch.bool), "label": torch.tensor([[0, 1]])}

    def run(**cfg):
        model = hand_model(smooth_eps=0.8, kappa4=1.0, **cfg)
        model._cache = {"logits": logits, "branches": [f_t, f_a], "h_t": h_t}
        return model.aux_loss(logits, batch2)

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    L = logits[0].tolist()
    q = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]
    by_utt = [[math.exp(L[i][j]) / sum(math.exp(L[k][j]) for k in range(2)) for j in range(3)] for i in range(2)]
    by_cls = [softmax(L[i]) for i in range(2)]
    for norm, P in (("utterances", by_utt), ("classes", by_cls)):
        printed = [-sum(P[i][j] * q[i][j] for j in range(3)) for i in range(2)]
        ce = [-sum(q[i][j] * math.log(P[i][j]) for j in range(3)) for i in range(2)]
        for form, per in (("printed", printed), ("ce", ce)):
            for red, div in (("sum", 1), ("mean", 2)):
                aux = run(smooth_norm=norm, smooth_form=form, ikd_reduction=red)
                assert aux["smooth"].item() == pytest.approx(sum(per) / div, rel=1e-5), (norm, form, red)
    summed, mean = run(), run(ikd_reduction="mean")
    for k in IKD_KEYS:
        assert summed[k].item() == pytest.approx(2 * mean[k].item(), rel=1e-5)
    assert summed["engine_ce"].item() == pytest.approx(mean["engine_ce"].item())  # the engine's CE is a mean
    # Eq. 12 summed by hand: branches t (teacher logits [2,0,0], [0,1,0]) and a (zeros), labels 0, 1
    align = -math.log(softmax([2, 0, 0])[0]) - math.log(softmax([0, 1, 0])[1]) + 2 * math.log(3)
    assert summed["ikd_align"].item() == pytest.approx(align, rel=1e-5)


def test_engine_ce_is_cancelled_exactly():
    """With engine_ce=false the engine's (class-weighted) CE + aux has the gradient of Eq. 15 alone."""
    model = build("ta", dropout=0.0).eval()
    model.training = True  # forward keeps its cache; submodules stay in eval (no Gumbel noise)
    feats, present, mask, speaker, label = batch("ta")
    w = torch.linspace(0.5, 2.0, 7)
    grads = []
    for with_engine in (True, False):
        model.zero_grad()
        logits = model(feats, present, mask, speaker)
        aux = model.aux_loss(logits, {"mask": mask, "label": label, "class_weight": w})
        if with_engine:
            loss = F.cross_entropy(logits.reshape(-1, 7), label.reshape(-1), weight=w, ignore_index=-100) \
                + sum(aux.values())
        else:
            loss = sum(v for k, v in aux.items() if k != "engine_ce")
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_padded_batch_gives_finite_ikd_losses_equal_to_unpadded(reduction):
    """Heavy padding (one dialogue of 1 turn in a batch of 3) gives finite per-branch terms equal to those of the
    real utterances alone: summed over them (Eq. 11–13's Σ_i, the default) or their mean (``ikd_reduction``)."""
    model = build("tav", ikd_reduction=reduction).eval()  # eval: no Gumbel noise or dropout: both calls agree
    feats, present, mask, speaker, label = batch("tav", B=3, T=6)
    mask[0, :] = False
    mask[0, 0] = True
    label = label.masked_fill(~mask, -100)
    model.training = True  # only to make forward keep what aux_loss needs; submodules stay in eval mode
    logits = model(feats, present, mask, speaker)
    aux = model.aux_loss(logits, {"mask": mask, "label": label})
    assert set(aux) == IKD_KEYS | {"engine_ce"} and all(torch.isfinite(v) for v in aux.values())
    sum(aux.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    cut = lambda x, b, n: x[b : b + 1, :n]  # noqa: E731
    per = []
    for b in range(3):
        n = int(mask[b].sum())
        lg = model({m: cut(f, b, n) for m, f in feats.items()}, {m: cut(p, b, n) for m, p in present.items()},
                   cut(mask, b, n), cut(speaker, b, n))
        per.append((n, model.aux_loss(lg, {"mask": cut(mask, b, n), "label": cut(label, b, n)})))
    N = sum(n for n, _ in per)
    for k in ("ikd_cross", "ikd_align", "ikd_inner", "smooth", "engine_ce"):
        if reduction == "sum" and k != "engine_ce":  # Σ over every real utterance of the batch
            torch.testing.assert_close(aux[k], sum(a[k] for _, a in per), rtol=1e-4, atol=1e-5)
        else:  # per-utterance means (the engine's CE always): the utterance-weighted mean
            torch.testing.assert_close(aux[k], sum(n * a[k] for n, a in per) / N, rtol=1e-4, atol=1e-5)


def test_dialoguernn_is_causal_and_speaker_aware():
    torch.manual_seed(0)
    rnn = DialogueRNN(4, 6, max_speakers=4)
    u = torch.randn(2, 5, 4)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    spk = torch.tensor([[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]])
    out = rnn(u, mask, spk)
    assert out.shape == (2, 5, 6) and not out[1, 3:].any()  # padding outputs are zero
    u2 = u.clone()
    u2[:, 3:] = 7.0  # later turns (and padding) never change earlier outputs
    torch.testing.assert_close(rnn(u2, mask, spk)[:, :3], out[:, :3])
    spk2 = spk.clone()
    spk2[0, 2] = 1  # turn 2 by the other speaker: its party state differs
    assert (rnn(u, mask, spk2)[0, 2] - out[0, 2]).abs().max() > 1e-4


def test_paper_size_model_instantiates():
    """§4.3: hidden 1024, 4 heads, 6 fusion layers; MELD inputs t/a/v 768/6373 (ComParE → 512)/1000 (→ 256)."""
    with torch.device("meta"):
        model = get_model("summer", input_dims={"t": 768, "a": 6373, "v": 1000}, n_classes=7, hidden=1024, heads=4,
                          fusion_layers=6, audio_reduce=512, dialoguernn=["v"],
                          teacher={"hidden": 1024, "layers": 6})
    n = sum(p.numel() for p in model.parameters())
    print(f"SUMMER paper size: {n:,} trainable parameters")
    assert len(model.intra) == 6 and len(model.cross[0]) == 6 and model.head.in_features == 1024
    assert model.front.reduce.out_features == 512 and model.front.dims == {"t": 768, "a": 512, "v": 256}
    assert len(model.teacher.blocks) == 6 and n > 100_000_000


@pytest.mark.parametrize("moe", ["sdmoe", "none"])
def test_teacher_with_and_without_its_sdmoe(moe):
    """§3.5: the teacher is pre-trained with its own SDMoE; ``moe: none`` is the Fig. 4 comparison."""
    torch.manual_seed(0)
    t = SummerTeacher({"t": DIMS["t"]}, 7, hidden=16, heads=4, layers=2, moe=moe, experts=3)
    assert (t.moe is not None) == (moe == "sdmoe")
    feats, present, mask, speaker, _ = batch("t")
    h, scores = t.encode(feats, present, mask, speaker)
    assert h.shape == (3, 5, 16) and len(scores) == 2 and scores[0].shape == (3, 4, 5, 5)
    res = Engine(t, EngineConfig(epochs=1, batch_size=2, lr=3e-3), "cpu").fit(dialogues(mods="t"),
                                                                            dialogues(3, 1, "t"), seed=0)
    assert ("tau_moe" in res["history"][0]["train"]) == (moe == "sdmoe")


def tiny_teacher(tmp_path, modality="t", hidden=16):
    """A briefly trained tiny teacher saved the way stage train_teacher saves it."""
    torch.manual_seed(3)
    arch = {**teacher_defaults(), "hidden": hidden, "heads": 4}
    t = SummerTeacher({modality: DIMS[modality]}, 7, modality=modality, **arch)
    data = dialogues(mods=modality)
    res = Engine(t, EngineConfig(epochs=2, batch_size=2, lr=3e-3), "cpu").fit(data, data[:3], seed=0)
    norm = Standardizer({modality: np.zeros(DIMS[modality])}, {modality: np.ones(DIMS[modality])})
    path = tmp_path / "teacher.pt"
    save_teacher(path, modality, arch, {modality: DIMS[modality]}, [str(i) for i in range(7)], norm, res)
    return path, res["state_dict"]


def dialogues(n=6, seed=0, mods="tav"):
    return toy_dialogues(DIMS, n, seed, mods, absent_v=False)


def test_teacher_is_loaded_and_stays_frozen_through_engine_training(tmp_path):
    path, saved = tiny_teacher(tmp_path)
    model = build("tav", teacher_path=str(path))
    teacher = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    for k, v in saved.items():  # the student's teacher is the saved one
        torch.testing.assert_close(teacher[k], v, rtol=0, atol=0)
    assert all(not v.requires_grad for v in model.teacher.state_dict().values())
    student0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    assert model.training and not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())  # its dropout is off too
    seen = []  # the teacher's mode and grad state every time it runs inside the engine's training steps
    model.teacher.blocks[-1].register_forward_hook(
        lambda mod, args, out: seen.append((mod.training, out[0].requires_grad, torch.is_grad_enabled())))
    res = Engine(model, EngineConfig(epochs=2, batch_size=2, lr=1e-2), "cpu", torch.ones(7)).fit(
        dialogues(), dialogues(3, seed=1), seed=0)
    assert seen and not any(training or needs_grad or grad_on for training, needs_grad, grad_on in seen)
    assert {"aux_ikd_cross", "aux_ikd_align", "aux_ikd_inner", "aux_smooth", "aux_engine_ce", "tau_t",
            "dyn_masked"} <= set(res["history"][0]["train"])
    model.train()  # as the engine does each epoch
    assert not model.teacher.training
    for k, v in model.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher[k], rtol=0, atol=0)
    assert any(not torch.equal(student0[n], p) for n, p in model.named_parameters())  # the student did learn
    # the checkpoint round trip (evaluate rebuilds from cfg, then load_state_dict) reproduces the outputs
    clone = build("tav", teacher_path=str(path))
    clone.load_state_dict(res["state_dict"])
    model.load_state_dict(res["state_dict"])
    feats, present, mask, speaker, _ = batch("tav")
    torch.testing.assert_close(clone.eval()(feats, present, mask, speaker), model.eval()(feats, present, mask, speaker))


def test_teacher_mismatches_are_errors(tmp_path):
    path, _ = tiny_teacher(tmp_path)
    with pytest.raises(ValueError, match="hidden"):
        build("tav", hidden=32, teacher_path=str(path))
    with pytest.raises(ValueError, match="'t' teacher needs"):
        build("av", teacher_path=str(path))
    with pytest.raises(ValueError, match="retrain"):
        build("tav", teacher_path=str(path), teacher={"modality": "a"})
    with pytest.raises(FileNotFoundError, match="train_teacher"):
        build("tav", teacher_path=str(tmp_path / "nope.pt"))
    # no teacher at all when neither IKD nor the teacher-guided fusion needs one
    assert build("av", teacher_path=str(path), ikd=False, fusion="self_attention").teacher is None


def test_teacher_modality_choice(tmp_path):
    path, _ = tiny_teacher(tmp_path, modality="a")
    model = build("tav", teacher_path=str(path), teacher={"modality": "a"})
    assert model.teacher.modality == "a"
    feats, present, mask, speaker, label = batch("tav")
    loss, _ = full_loss(model, feats, present, mask, speaker, label)
    assert torch.isfinite(loss)
    with torch.no_grad():
        base = model.eval()(feats, present, mask, speaker)
        feats["t"] = feats["t"] + 1.0  # the audio teacher ignores text; the student does not
        assert (model(feats, present, mask, speaker) - base).abs().max() > 0


def test_two_phases_on_demo(tmp_path, demo_utterances, demo_features):
    """Phase 1 (teacher stage) then phase 2 (student through the train stage), then evaluate rebuilds the student."""
    from pipeline.evaluate import evaluate
    from pipeline.train import train
    from pipeline.train_teacher import train_teacher

    tcfg = {"modality": "t", "hidden": 32, "heads": 4, "epochs": 3, "batch_size": 2, "lr": 3e-3, "seed": 0}
    summary = train_teacher(tcfg, demo_utterances, tmp_path / "teacher.pt", tmp_path / "tm.json", demo_features)
    assert json.loads((tmp_path / "tm.json").read_text()) == summary and summary["modality"] == "t"
    assert 0 <= summary["test_weighted_f1"] <= 1 and summary["test_n"] == 12  # the teacher's own test row
    ck = torch.load(tmp_path / "teacher.pt", weights_only=True)  # plain contents only
    assert ck["arch"]["hidden"] == 32 and ck["input_dims"] == {"t": 384} and len(ck["labels"]) == 7
    cfg = {"hidden": 32, "experts": 2, "teacher_path": str(tmp_path / "teacher.pt"), "teacher": tcfg}
    params = {"model": "summer", "model_params": {"summer": cfg},
              "train": dict(modalities="tav", seed=0, epochs=2, batch_size=2, lr=3e-3, patience=5)}
    train(params, demo_utterances, tmp_path / "model.pt", tmp_path / "live", demo_features)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    for k, v in ck["state_dict"].items():  # the frozen teacher travels unchanged inside the student's checkpoint
        torch.testing.assert_close(saved["state_dict"][f"teacher.{k}"], v, rtol=0, atol=0)
    m = evaluate(tmp_path / "model.pt", demo_utterances, tmp_path / "reports", feature_dirs=demo_features)
    assert m["model"] == "summer" and m["n"] == 12 and 0 <= m["weighted_f1"] <= 1
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert "aux_ikd_cross" in live["train"] and "tau_t" in live["train"]


def test_split_output_contract():
    """forward returns plain logits (the engine's contract); the IKD terms come from aux_loss."""
    model = build("ta")
    feats, present, mask, speaker, _ = batch("ta")
    logits, aux = split_output(model(feats, present, mask, speaker))
    assert logits.shape == (3, 5, 7) and aux == {}
    assert isinstance(model, Summer)


def test_absent_modality_is_no_global_moe_candidate_unless_routed():
    """``absent: drop`` (default): an utterance's absent modality gets Eq. 6 weight 0 — the dense softmax and the
    sparse router run over the present branches only, with band statistics over them; ``route`` (the earlier
    behaviour) weighs every branch. A row with no candidate (padding) stays finite."""
    from models.summer import GlobalMoE
    torch.manual_seed(0)
    f = [torch.randn(1, 4, 6) for _ in range(3)]
    valid = torch.tensor([[True, True, True, False]])
    avail = torch.ones(1, 4, 3, dtype=torch.bool)
    avail[0, 1, 2] = False  # utterance 1 lacks modality 3
    avail[0, 3] = False  # padding: nothing
    dense = GlobalMoE(6, 3, sparse=False)
    w = dense.v_g(torch.stack(f, -2)).squeeze(-1)
    out = dense(f, valid, avail)
    g1 = w[0, 1, :2].softmax(-1)  # the two present branches only
    torch.testing.assert_close(out[0, 1], g1[0] * f[0][0, 1] + g1[1] * f[1][0, 1])
    torch.testing.assert_close(out[0, 0], dense(f, valid)[0, 0])  # all present: as routed
    assert torch.isfinite(out).all() and (out[0, 3] == 0).all()
    routed = dense(f, valid)[0, 1]
    assert not torch.allclose(routed, out[0, 1])
    sparse = GlobalMoE(6, 3, sparse=True)
    sparse.router.train()
    g = sparse.router(sparse.v_g(torch.stack(f, -2)).squeeze(-1), valid, avail)
    assert g[0, 1, 2] == 0 and (g[0, 3] == 0).all() and torch.isfinite(g).all()
    ev = avail & valid.unsqueeze(-1)  # "tensor" statistics over the 8 available entries only
    wv = sparse.v_g(torch.stack(f, -2)).squeeze(-1).detach()
    torch.testing.assert_close(sparse.router.running_mean[0], wv[ev].mean())


@pytest.mark.parametrize("absent", ["drop", "route"])
def test_ikd_skips_an_absent_branch_unless_routed(absent):
    """Utterance 1 lacks audio: with ``drop`` Eq. 11–13 of branch a sum over utterance 0 only (by hand); ``route``
    counts the absent branch's features at utterance 1 too. The student end to end: both train finitely."""
    model = hand_model(smooth_eps=0.9, kappa4=1.0, absent=absent)
    f_t = torch.tensor([[[2.0, 0, 0, 0], [0, 1.0, 0, 0]]])
    f_a = torch.tensor([[[0.0, 0, 1.0, 0], [5.0, 0, 0, 0]]])
    h_t = torch.tensor([[[0.0, 1, 0, 0], [1.0, 0, 0, 0]]])
    logits = torch.zeros(1, 2, 3)
    on = torch.ones(1, 2, dtype=torch.bool)
    a_on = torch.tensor([[True, False]]) if absent == "drop" else on
    model._cache = {"logits": logits, "branches": [f_t, f_a], "h_t": h_t, "branch_valid": [on, a_on],
                    "teacher_valid": on}
    aux = model.aux_loss(logits, {"mask": on, "label": torch.tensor([[0, 1]])})

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q))  # noqa: E731
    pbar = [softmax([0, 1, 0]), softmax([1, 0, 0])]
    rows_a = [0] if absent == "drop" else [0, 1]
    zt, za = [[2, 0, 0], [0, 1, 0]], [[0, 0, 1], [5, 0, 0]]
    cross = sum(kl(softmax(zt[i]), pbar[i]) for i in (0, 1)) + sum(kl(softmax(za[i]), pbar[i]) for i in rows_a)
    align = -math.log(softmax(zt[0])[0]) - math.log(softmax(zt[1])[1]) \
        - sum(math.log(softmax(za[i])[[0, 1][i]]) for i in rows_a)
    ft, fa, ht = f_t[0].tolist(), f_a[0].tolist(), h_t[0].tolist()
    mse = lambda x, y: sum((a - b) ** 2 for a, b in zip(x, y)) / 4  # noqa: E731
    inner = sum(mse(ft[i], ht[i]) for i in (0, 1)) + sum(mse(fa[i], ht[i]) for i in rows_a)
    assert aux["ikd_cross"].item() == pytest.approx(cross, rel=1e-5)
    assert aux["ikd_align"].item() == pytest.approx(align, rel=1e-5)
    assert aux["ikd_inner"].item() == pytest.approx(inner, rel=1e-5)
    student = build("tav", absent=absent)
    feats, present, mask, speaker, label = batch("tav")
    present["a"][0, 1:3] = False
    present["v"][:] = False  # a modality absent from the whole batch
    loss, aux = full_loss(student, feats, present, mask, speaker, label)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in aux.values())
    loss.backward()
    student.eval()
    out = student(feats, present, mask, speaker)
    feats["a"][0, 1:3] = 77.0  # absent values never matter, in either mode
    torch.testing.assert_close(out, student(feats, present, mask, speaker))
