"""LPGNet (models/lpgnet.py): branches per modality subset, training-only self-distillation, the paper's loss
weighting through the engine hooks, ablation switches, padding safety and the masked KL / BatchNorm."""
import json
import math

import numpy as np
import pytest
import torch

from modelkit import one_thread, overfit, toy_batch, toy_dialogues  # noqa: F401  (one_thread: autouse)
import torch.nn.functional as F

from models import get_model
from models.layers import MaskedBatchNorm1d, SoftmaxModalityFusion
from models.lpgnet import MASK_FILL, distillation_kl, masked_ce
from pipeline.training.engine import Engine, EngineConfig, split_output

DIMS = {"t": 16, "a": 12, "v": 8}
SUBSETS = ["t", "a", "v", "ta", "tv", "av", "tav"]
ABLATIONS = [{"inter": False}, {"intra": False}, {"ffn": False}, {"dual_gate": False}, {"compress": False},
             {"positions": True}, {"distill": False}, {"lambda_task": 1.0}, {"operand_order": "swapped"},
             {"compression": "per_utterance"}, {"gate_softmax": "feature"}, {"student_input": "fused"},
             {"kl_direction": "teacher_student"}, {"detach_teacher": False}, {"heads": 4}, {"ff_mult": 4},
             {"mask_fill": "zero"}, {"attn_dropout": True, "proj_dropout": True, "proj_bias": True},
             {"conv_kernel": 3}]


def batch(mods="ta", B=3, T=5, seed=0):
    return toy_batch(DIMS, mods, B, T, seed, short=2, speakers=False)


def build(mods="ta", **cfg):
    torch.manual_seed(0)
    return get_model("lpgnet", input_dims={m: DIMS[m] for m in mods}, n_classes=7, **{"hidden": 16, **cfg})


def total_loss(model, out, label, mask, weight=None):
    """What the engine optimises: weighted task CE + forward losses + aux_loss terms."""
    logits, aux = split_output(out)
    aux.update(model.aux_loss(out, {"label": label, "mask": mask, "class_weight": weight}))
    task = F.cross_entropy(logits.reshape(-1, 7), label.reshape(-1), weight=weight, ignore_index=-100)
    return task + sum(aux.values()), aux


@pytest.mark.parametrize("mods", SUBSETS)
def test_forward_backward_every_subset(mods):
    model = build(mods)
    feats, present, mask, speaker, label = batch(mods)
    out = model(feats, present, mask, speaker)
    assert set(out["unimodal"]) == set(mods) and out["logits"].shape == (3, 5, 7)
    loss, aux = total_loss(model, out, label, mask)
    assert set(aux) == {"kl", "uni_ce", "task_extra"}
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    for m in mods:  # each unimodal head is trained (CE + KL)
        assert model.uni_head[m][-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mods,cfg,branches", [
    ("ta", {}, {"tt", "aa", "at", "ta"}),  # the paper's four-way parallel attention
    ("tav", {}, {"tt", "aa", "vv", "at", "vt", "ta", "va", "tv", "av"}),  # all ordered pairs with V
    ("t", {}, {"tt"}),
    ("tav", {"inter": False}, {"tt", "aa", "vv"}),
    ("ta", {"intra": False}, {"at", "ta"}),
])
def test_attention_branches(mods, cfg, branches):
    assert set(build(mods, **cfg).branch) == branches


def test_inter_attention_mixes_modalities():
    """With inter branches, the text stream T_fused depends on audio at other turns; with inter off not."""
    feats, present, mask, speaker, _ = batch("ta")
    moved = {m: f.clone() for m, f in feats.items()}
    moved["a"][0, 3] += 5.0
    valid = {m: present[m] & mask for m in feats}
    for cfg, changes in (({}, True), ({"inter": False}, False)):
        model = build("ta", student_input="fused", **cfg).eval()
        t0 = model.core(feats, valid)[2]["t"][0]
        t1 = model.core(moved, valid)[2]["t"][0]
        assert ((t0[0, 0] - t1[0, 0]).abs().max() > 1e-4) == changes


def _streams(model, feats, present, mask):
    x = model.proj(feats, present)
    return x, {m: present[m] & mask for m in x}


def test_eval_forward_is_plain_logits_and_heads_get_no_gradient():
    model = build("tav").eval()
    feats, present, mask, speaker, label = batch("tav")
    out = model(feats, present, mask, speaker)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 5, 7)
    assert model.aux_loss(out, {"label": label, "mask": mask}) == {}
    F.cross_entropy(out.reshape(-1, 7), label.reshape(-1), ignore_index=-100).backward()
    for n, p in model.uni_head.named_parameters():
        assert p.grad is None, n
    assert model.head.weight.grad is not None
    model.train()
    out = model(feats, present, mask, speaker)
    assert isinstance(out, dict) and out["losses"]["kl"] > 0 and set(out["unimodal"]) == {"t", "a", "v"}


def test_speaker_is_ignored():
    model = build("ta").eval()
    feats, present, mask, speaker, _ = batch("ta")
    torch.testing.assert_close(model(feats, present, mask, speaker), model(feats, present, mask, speaker + 3))


@pytest.mark.parametrize("mods", ["ta", "tav", "a"])
@pytest.mark.parametrize("cfg", ABLATIONS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_ablations_build_and_run(cfg, mods):
    if len(mods) == 1 and cfg.get("intra") is False:
        with pytest.raises(ValueError, match="no attention branch"):
            build(mods, **cfg)
        return
    model = build(mods, **cfg)
    feats, present, mask, speaker, label = batch(mods)
    out = model(feats, present, mask, speaker)
    loss, aux = total_loss(model, out, label, mask)
    assert ("kl" in aux) == cfg.get("distill", True)
    assert ("task_extra" in aux) == (cfg.get("distill", True) and cfg.get("lambda_task", 1.5) != 1.0)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    assert model(feats, present, mask, speaker).shape == (3, 5, 7)
    if cfg.get("ffn", True) is False:
        assert all(b.ffn is None for b in model.branch.values())
    if cfg.get("dual_gate", True) is False:
        assert not hasattr(model, "gate")


def test_intra_and_inter_both_off_is_an_error():
    with pytest.raises(ValueError, match="intra and inter"):
        build("ta", intra=False, inter=False)


def test_overfits_tiny_batch_with_the_full_objective():
    model = build("ta", dropout=0.0)
    feats, present, mask, speaker, label = batch("ta")
    aux = overfit(model, lambda: total_loss(model, model(feats, present, mask, speaker), label, mask))
    logits = model(feats, present, mask, speaker)
    assert (logits[mask].argmax(-1) == label[mask]).all()
    assert aux["uni_ce"] < 0.5 and aux["kl"] < 0.5


def test_padded_batch_gives_finite_loss_and_same_real_outputs_in_training():
    """Heavy padding (garbage features, 'present' flags set there) must neither produce NaN nor change the
    training-mode outputs of real utterances: BatchNorm statistics and the KL see real utterances only."""
    model = build("tav", dropout=0.0)
    feats, present, mask, speaker, label = batch("tav")
    out = model(feats, present, mask, speaker)
    pad = lambda x, v: torch.cat([x, torch.full((*x.shape[:1], 4, *x.shape[2:]), v, dtype=x.dtype)], 1)  # noqa: E731
    feats2 = {m: pad(f.masked_fill(~mask.unsqueeze(-1), 1e4), 1e4) for m, f in feats.items()}
    present2 = {m: pad(p | ~mask, True) for m, p in present.items()}
    mask2, label2 = pad(mask, False), pad(label, -100)
    out2 = model(feats2, present2, mask2, pad(speaker, 0))
    torch.testing.assert_close(out["logits"][mask], out2["logits"][mask2])
    torch.testing.assert_close(out["losses"]["kl"], out2["losses"]["kl"])
    loss, _ = total_loss(model, out2, label2, mask2)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_kl_is_zero_when_student_matches_teacher():
    teacher = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    valid = torch.tensor([[True, False]])
    assert distillation_kl(teacher.clone(), teacher, valid, tau=2.0).item() == pytest.approx(0.0, abs=1e-7)
    # a padded position whose teacher is all zeros / the student extreme must not matter (no NaN)
    student = teacher.clone()
    student[0, 1] = torch.tensor([1e9, -1e9, 0.0])
    assert distillation_kl(student, teacher, valid).item() == pytest.approx(0.0, abs=1e-7)
    # hand values at temperature τ: student‖teacher (the paper) and teacher‖student (the switch)
    s = torch.tensor([[[0.0, 0.0, 0.0]]])
    t = torch.tensor([[[1.0, 0.0, 0.0]]])
    q = torch.softmax(t[0, 0] / 2.0, -1).tolist()
    one = torch.ones(1, 1, dtype=torch.bool)
    st = sum(1 / 3 * np.log((1 / 3) / qj) for qj in q)
    ts = sum(qj * np.log(qj / (1 / 3)) for qj in q)
    assert st != pytest.approx(ts, rel=1e-3)
    assert distillation_kl(s, t, one, tau=2.0).item() == pytest.approx(st, rel=1e-5)
    assert distillation_kl(s, t, one, tau=2.0, direction="student_teacher").item() == pytest.approx(st, rel=1e-5)
    assert distillation_kl(s, t, one, tau=2.0, direction="teacher_student").item() == pytest.approx(ts, rel=1e-5)
    with pytest.raises(ValueError, match="kl_direction"):
        distillation_kl(s, t, one, direction="forward")
    # the teacher is detached: only the student gets a gradient
    s.requires_grad_(True)
    t.requires_grad_(True)
    distillation_kl(s, t, torch.ones(1, 1, dtype=torch.bool)).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    assert distillation_kl(s, t, torch.zeros(1, 1, dtype=torch.bool)).item() == 0.0


def test_loss_equals_the_papers_weighting():
    """Engine task CE + hooks = λ_task·CE(z) + λ_CE·Σ CE(m) + λ_KL·Σ KL(m), class weights included."""
    model = build("ta", lambda_task=1.5, lambda_ce=1.0, lambda_kl=0.3)
    feats, present, mask, speaker, label = batch("ta")
    present["a"][0, 1] = False  # the audio head is not trained on an utterance without audio
    w = torch.tensor([0.5, 1.0, 2.0, 1.0, 3.0, 1.0, 0.7])
    out = model(feats, present, mask, speaker)
    loss, _ = total_loss(model, out, label, mask, w)
    z, uni = out["logits"], out["unimodal"]
    ce = lambda lg, keep: F.cross_entropy(lg[keep], label[keep], weight=w)  # noqa: E731
    va = mask & present["a"]
    # §3.6: KL(student ‖ teacher) = Σ ŷ_m log(ŷ_m / ŷ_teacher), on the gated intra branches' heads
    kl = lambda lg, keep: F.kl_div(F.log_softmax(z.detach()[keep], -1), F.log_softmax(lg[keep], -1),  # noqa: E731
                                   reduction="batchmean", log_target=True)
    expected = 1.5 * ce(z, mask) + 1.0 * (ce(uni["t"], mask) + ce(uni["a"], va)) + 0.3 * (kl(uni["t"], mask)
                                                                                         + kl(uni["a"], va))
    torch.testing.assert_close(loss, expected)


def test_masked_ce_without_valid_positions_is_zero():
    lg = torch.randn(1, 2, 7, requires_grad=True)
    assert masked_ce(lg, torch.tensor([[-100, -100]]), torch.ones(1, 2, dtype=torch.bool), None).item() == 0.0


def test_masked_batchnorm_uses_valid_positions_only():
    bn = MaskedBatchNorm1d(4)
    x = torch.randn(2, 3, 4)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    y = bn(x.masked_fill(~valid.unsqueeze(-1), 1e6), valid)  # garbage outside must not enter the statistics
    ref = torch.nn.functional.batch_norm(x[valid], None, None, training=True)
    torch.testing.assert_close(y[valid], ref)
    assert (y[~valid] == 0).all()
    torch.testing.assert_close(bn.running_mean, 0.1 * x[valid].mean(0))
    one = torch.tensor([[True, False, False], [False, False, False]])
    assert torch.isfinite(bn(x, one)).all()  # a single valid position in training: running statistics


def test_softmax_fusion_ignores_absent_modalities():
    fuse = SoftmaxModalityFusion(3)
    a, b = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    ok_a = torch.tensor([[True, True]])
    ok_b = torch.tensor([[False, True]])
    out = fuse([a, b], [ok_a, ok_b])
    torch.testing.assert_close(out[0, 0], a[0, 0])  # only a present: weight 1
    w = torch.softmax(torch.stack([fuse.fc(a[0, 1]), fuse.fc(b[0, 1])]), 0)
    torch.testing.assert_close(out[0, 1], w[0] * a[0, 1] + w[1] * b[0, 1])
    assert (fuse([a, b], [~ok_a, ok_b & False]) == 0).all()


def dialogues(n=6, seed=0, mods="ta"):
    return toy_dialogues(DIMS, n, seed, mods, min_len=1, absent_v=False)


def test_engine_runs_lpgnet_with_class_weights():
    """Through the shared engine: aux terms are logged, and task_extra = (λ_task − 1)·(weighted task CE)."""
    model = build("ta")
    w = torch.tensor([0.5, 1.0, 2.0, 1.0, 3.0, 1.0, 0.7])
    res = Engine(model, EngineConfig(epochs=2, batch_size=2, lr=3e-3), "cpu", w).fit(dialogues(), dialogues(3, 1))
    row = res["history"][0]["train"]
    assert {"aux_kl", "aux_uni_ce", "aux_task_extra"} <= set(row)
    assert row["aux_task_extra"] == pytest.approx(0.5 * row["loss"], rel=1e-5)
    assert all(np.isfinite(v) for r in res["history"] for split in r.values() for v in split.values())


@pytest.mark.parametrize("mods", ["ta", "tav"])
def test_bf16_autocast_keeps_padding_finite(mods):
    """The engine trains under bf16 autocast on CUDA; CPU autocast stands in here: fully padded utterances
    (no valid modality) and absent modalities must not turn the masked softmax / BatchNorm / KL into NaN."""
    model = build(mods)
    feats, present, mask, speaker, label = batch(mods)
    present[mods[-1]][0, 1] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(feats, present, mask, speaker)
        loss, _ = total_loss(model, out, label, mask)
    assert out["logits"].dtype == torch.bfloat16 and torch.isfinite(out["logits"]).all()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_lpia_keeps_four_branches_with_four_gates_and_linear_fusions():
    """§3.3–3.4: X_tt, X_aa, X_at, X_ta stay separate [B, U, d]; one gate each; T_fused = Linear([H_tt; H_at])."""
    model = build("ta").eval()
    feats, present, mask, speaker, _ = batch("ta")
    h = model.lpia(*_streams(model, feats, present, mask))
    assert set(h) == {"tt", "aa", "at", "ta"} and all(v.shape == (3, 5, 16) for v in h.values())
    assert set(model.gate) == {"tt", "aa", "at", "ta"}
    assert model.streams == {"t": ["tt", "at"], "a": ["aa", "ta"]}
    assert model.fuse["t"].in_features == 32 and model.fuse["t"].out_features == 16
    valid = {m: present[m] & mask for m in feats}
    z, _, students = model.core(feats, valid)
    # by hand: gates → Linear fusions → softmax over the two modalities, per feature
    g = {n: h[n] * torch.sigmoid(model.gate[n].fc(h[n])) for n in h}
    tf = model.fuse["t"](torch.cat([g["tt"], g["at"]], -1))
    af = model.fuse["a"](torch.cat([g["aa"], g["ta"]], -1))
    a = torch.softmax(torch.stack([model.fusion.fc(tf), model.fusion.fc(af)]), 0)
    torch.testing.assert_close(z[mask], (a[0] * tf + a[1] * af)[mask])
    torch.testing.assert_close(students["t"][0], g["tt"])  # H_t = GatedFusion(X_tt)


def test_operand_order_paper_vs_swapped():
    """X_at = Attention(X_a, X_t, X_t): its rows are audio positions — an utterance without audio has none;
    swapped (SDT's reading), X_at is indexed by text queries and exists there."""
    feats, present, mask, speaker, _ = batch("ta")
    present["a"][0, 1] = False
    for order, zero in (("paper", True), ("swapped", False)):
        model = build("ta", operand_order=order).eval()
        h = model.lpia(*_streams(model, feats, present, mask))
        assert bool((h["at"][0, 1] == 0).all()) == zero
        assert model.operands("at") == (("a", "t") if order == "paper" else ("t", "a"))


def test_global_compression_is_broadcast_over_the_utterances():
    """A_conv = Conv(Mean(Â)) is one vector per dialogue: X_final − Q is the same at every valid utterance
    (global); per_utterance makes it differ."""
    feats, present, mask, speaker, _ = batch("ta")
    for comp, same in (("global", True), ("per_utterance", False)):
        model = build("ta", compression=comp).eval()
        x, valid = _streams(model, feats, present, mask)
        d = model.lpia(x, valid)["tt"] - x["t"]
        diff = (d[0, 1:] - d[0, :1]).abs().max()
        assert (diff < 1e-5) == same
        assert (d[1, 3:] == 0).all()  # padding stays zero


def test_feature_softmax_gate_by_hand():
    from models.lpgnet import FeatureSoftmaxFusion

    fuse = FeatureSoftmaxFusion(3)
    a, b = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    ok = torch.tensor([[True, True]])
    out = fuse([a, b], [ok, torch.tensor([[True, False]])])
    exp = torch.softmax(fuse.fc(a), -1) * a + torch.softmax(fuse.fc(b), -1) * b * torch.tensor([1.0, 0.0]).view(1, 2, 1)
    torch.testing.assert_close(out, exp)
    m1, m2 = build("ta").eval(), build("ta", gate_softmax="feature").eval()
    feats, present, mask, speaker, _ = batch("ta")
    assert not torch.allclose(m1(feats, present, mask, speaker), m2(feats, present, mask, speaker))


def test_kl_direction_switch_changes_the_loss_as_by_hand():
    feats, present, mask, speaker, label = batch("ta")
    kls = {}
    for d in ("student_teacher", "teacher_student"):
        model = build("ta", kl_direction=d, dropout=0.0)
        out = model(feats, present, mask, speaker)
        z, uni = out["logits"].detach(), out["unimodal"]
        by_hand = 0.0
        for m in "ta":
            ps, pt = F.softmax(uni[m][mask], -1), F.softmax(z[mask], -1)
            p, q = (ps, pt) if d == "student_teacher" else (pt, ps)
            by_hand = by_hand + (p * (p.log() - q.log())).sum(-1).mean()
        torch.testing.assert_close(out["losses"]["kl"], 0.3 * by_hand)
        kls[d] = out["losses"]["kl"].item()
    assert kls["student_teacher"] != pytest.approx(kls["teacher_student"], rel=1e-4)


def test_detach_teacher_switch():
    feats, present, mask, speaker, _ = batch("ta")
    for detach in (True, False):
        model = build("ta", detach_teacher=detach, lambda_task=1.0)
        model(feats, present, mask, speaker)["losses"]["kl"].backward()
        assert (model.head.weight.grad is None) == detach


def test_invalid_switch_values_are_errors():
    for k in ("operand_order", "compression", "gate_softmax", "kl_direction", "student_input", "mode", "mask_fill"):
        with pytest.raises(ValueError, match=k):
            build("ta", **{k: "nope"})
    for k in (0, 2):
        with pytest.raises(ValueError, match="conv_kernel"):
            build("ta", conv_kernel=k)


def identity_attention(d=2, **kw):
    """One head with identity Q/K/V/output maps (zero biases): Attention(Q, K, V) = Softmax(QKᵀ/√d) V exactly."""
    from models.layers import MultiHeadAttention

    att = MultiHeadAttention(d, 1, **kw)
    with torch.no_grad():
        for lin in (att.q, att.k, att.v, att.o):
            lin.weight.copy_(torch.eye(d))
            lin.bias.zero_()
    return att


def test_mask_fill_paper_is_uniform_for_a_keyless_query_zero_is_zero():
    """§3.3 (3): S = −10⁹ off the mask, A = Softmax(S). Query 0 may see keys 0, 1; query 1 sees none: with the
    paper's fill its row is uniform over all three keys, with ``zero`` it is all zero. Hand-computed."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    kv = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]])
    mask = torch.tensor([[[True, True, False], [False, False, False]]])
    s0 = torch.tensor([1.0, 0.0]) / math.sqrt(2)  # query 0 · keys 0, 1
    w0 = torch.softmax(s0, 0)
    row0 = w0[0] * kv[0, 0] + w0[1] * kv[0, 1]
    for fill, row1 in (("paper", kv[0].mean(0)), ("zero", torch.zeros(2))):
        att = identity_attention(mask_fill=MASK_FILL[fill])
        out = att(x, kv, mask)[0]
        torch.testing.assert_close(out[0], row0)
        torch.testing.assert_close(out[1], row1)


def test_mask_fill_in_the_model_a_dialogue_without_audio():
    """X_ta (text queries, audio keys) of a dialogue with no audio at all: the paper's fill gives every text
    utterance Attention = o(v(0)) (uniform over zeroed keys), ``zero`` gives o(0); real outputs elsewhere and the
    padding invariance are unchanged."""
    feats, present, mask, speaker, _ = batch("ta")
    present["a"][0] = False
    for fill in ("paper", "zero"):
        model = build("ta", mask_fill=fill).eval()
        x, valid = _streams(model, feats, present, mask)
        att = model.branch["ta"].attn
        out = att(x["t"], x["a"], valid["t"].unsqueeze(2) & valid["a"].unsqueeze(1))
        v0 = att.v.bias if fill == "paper" else torch.zeros_like(att.v.bias)
        torch.testing.assert_close(out[0], att.o(v0).expand(5, -1))
        logits = model(feats, present, mask, speaker)
        assert torch.isfinite(logits).all()
        pad = {m: torch.cat([f, torch.randn(3, 4, f.shape[-1])], 1) for m, f in feats.items()}
        ppad = {m: torch.cat([p, torch.zeros(3, 4, dtype=torch.bool)], 1) for m, p in present.items()}
        mpad = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
        torch.testing.assert_close(model(pad, ppad, mpad, speaker)[:, :5][mask], logits[mask])


def test_dropout_only_where_the_paper_puts_it():
    """Default: no dropout on the attention weights nor after the Conv1D (the FFN keeps its Dropout);
    ``attn_dropout``/``proj_dropout`` add them (SDT's official layers). Two training passes agree or differ."""
    feats, present, mask, speaker, _ = batch("ta")
    for on in (False, True):
        model = build("ta", dropout=0.5, attn_dropout=on, proj_dropout=on).train()
        assert model.branch["tt"].ffn[1][2].p == 0.5
        x1, x2 = model.proj(feats, present), model.proj(feats, present)
        assert torch.equal(x1["t"], x2["t"]) != on
        valid = {m: present[m] & mask for m in "ta"}
        att = model.branch["ta"].attn
        pair = valid["t"].unsqueeze(2) & valid["a"].unsqueeze(1)
        assert torch.equal(att(x1["t"], x1["a"], pair), att(x1["t"], x1["a"], pair)) != on


def test_proj_bias_switch():
    """``proj_bias: false`` (SDT's official bias-free Conv1d): a zero input projects to zero; ``true``: to the
    bias at present utterances, still zero at absent ones."""
    feats, present, mask, speaker, _ = batch("ta")
    zero = {m: torch.zeros_like(f) for m, f in feats.items()}
    for bias in (False, True):
        model = build("ta", proj_bias=bias).eval()
        x = model.proj(zero, present)["t"]
        conv = model.proj.proj["t"][0]
        assert (conv.bias is not None) == bias
        exp = conv.bias.detach().expand_as(x) * present["t"].unsqueeze(-1) if bias else torch.zeros_like(x)
        torch.testing.assert_close(x, exp)


def test_conv_kernel_mixes_adjacent_utterances_by_hand():
    """§3.3 (1): kernel 1 (the text) maps each utterance alone; ``conv_kernel: 3`` ("adjacent utterances") gives
    out_i = W₋ x_{i−1} + W₀ x_i + W₊ x_{i+1}, with padded/absent neighbours entering as zeros."""
    feats, present, mask, speaker, _ = batch("ta")
    present["t"][0, 3] = False
    feats["t"][1, 3:] = 1e3  # padding of dialogue 1: must not reach its last real utterance
    for k in (1, 3):
        model = build("ta", conv_kernel=k).eval()
        w = model.proj.proj["t"][0].weight.detach()  # [hidden, F, k]
        x = feats["t"] * present["t"].unsqueeze(-1)
        out = model.proj(feats, present)["t"]
        for b, i in ((0, 2), (0, 4), (1, 2), (2, 0)):
            exp = sum(w[:, :, j] @ x[b, i + j - k // 2] for j in range(k) if 0 <= i + j - k // 2 < 5)
            torch.testing.assert_close(out[b, i], exp * present["t"][b, i])
        changed = dict(feats, t=feats["t"].clone())
        changed["t"][0, 1] += 1.0  # a neighbour of utterances 0 and 2
        out2 = model.proj(changed, present)["t"]
        assert torch.equal(out2[0, 0], out[0, 0]) == (k == 1) and torch.equal(out2[0, 2], out[0, 2]) == (k == 1)


# --- LPGNet(Frame), §4.4: token/frame sequences per utterance --------------------------------------------------

def frame_batch(B=2, T=3, L=(6, 4), seed=0):
    """Dialogue batch of sequences: feats [B, T, L, F], present [B, T, L] (frames), dialogue 1 has 2 turns."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2:] = False
    feats, present = {}, {}
    for m, n in zip("ta", L):
        feats[m] = torch.randn(B, T, n, DIMS[m], generator=g)
        lengths = torch.randint(1, n + 1, (B, T), generator=g)
        present[m] = (torch.arange(n).view(1, 1, n) < lengths.unsqueeze(-1)) & mask.unsqueeze(-1)
        feats[m] = feats[m] * present[m].unsqueeze(-1)
    label = torch.randint(0, 7, (B, T), generator=g).masked_fill(~mask, -100)
    return feats, present, mask, torch.zeros(B, T, dtype=torch.long), label


@pytest.mark.parametrize("cfg", [{}, {"operand_order": "swapped"}, {"compression": "per_utterance"},
                                 {"dual_gate": False}, {"positions": True}])
def test_frame_mode_forward_backward_and_masking_invariance(cfg):
    model = build("ta", mode="frame", dropout=0.0, **cfg)
    feats, present, mask, speaker, label = frame_batch()
    out = model(feats, present, mask, speaker)
    assert out["logits"].shape == (2, 3, 7) and (out["logits"][1, 2] == 0).all()
    loss, _ = total_loss(model, out, label, mask)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # more padding frames, filled with garbage, and a padded dialogue turn: same predictions, same KL
    pad = 5
    feats2 = {m: torch.cat([f.masked_fill(~present[m].unsqueeze(-1), 1e4),
                            torch.full((*f.shape[:2], pad, f.shape[3]), 1e4)], 2) for m, f in feats.items()}
    present2 = {m: torch.cat([p, torch.zeros(*p.shape[:2], pad, dtype=torch.bool)], 2) for m, p in present.items()}
    out2 = model(feats2, present2, mask, speaker)
    torch.testing.assert_close(out["logits"], out2["logits"])
    torch.testing.assert_close(out["losses"]["kl"], out2["losses"]["kl"])
    model.eval()
    torch.testing.assert_close(model(feats, present, mask, speaker), model(feats2, present2, mask, speaker))


def test_frame_mode_truncates_to_max_len_and_takes_utterance_vectors():
    model = build("ta", mode="frame", max_len=3).eval()
    feats, present, mask, speaker, _ = frame_batch()
    cut = {m: f[:, :, :3] for m, f in feats.items()}
    cut_p = {m: p[:, :, :3] for m, p in present.items()}
    torch.testing.assert_close(model(feats, present, mask, speaker), model(cut, cut_p, mask, speaker))
    # text as one vector per utterance (no token sequences stored): a one-frame sequence
    feats["t"], present["t"] = feats["t"][:, :, 0], mask.clone()
    assert torch.isfinite(model(feats, present, mask, speaker)).all()


def test_frame_mode_overfits_tiny_batch():
    model = build("ta", mode="frame", dropout=0.0)
    feats, present, mask, speaker, label = frame_batch()
    overfit(model, lambda: total_loss(model, model(feats, present, mask, speaker), label, mask))
    logits = model(feats, present, mask, speaker)
    assert (logits[mask].argmax(-1) == label[mask]).all()


def _write_features(directory, utt, dim, frames_of=None):
    """A feature table as the extract stages write it; ``frames_of(i, label)`` → the row's stored sequence."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import feature_schema

    rng = np.random.default_rng(len(str(directory)))
    rows = utt.to_pylist()
    extra = [pa.field("frames", pa.list_(pa.list_(pa.float32(), dim)))] if frames_of else []
    cols = {k: [] for k in ("dialogue_id", "utterance_id", "status", "error", "feature")}
    cols.update({"frames": []} if frames_of else {})
    for i, r in enumerate(rows):
        ok = not (frames_of and i == 1)  # one silent audio row: no vector, no frames
        seq = frames_of(i, r["label_id"]) if frames_of and ok else None
        vec = seq.mean(0) if seq is not None else rng.standard_normal(dim).astype(np.float32)
        cols["dialogue_id"].append(r["dialogue_id"])
        cols["utterance_id"].append(r["utterance_id"])
        cols["status"].append("ok" if ok else "silent")
        cols["error"].append(None if ok else "RMS below audio.silence_rms")
        cols["feature"].append(vec if ok else np.zeros(dim, np.float32))
        if frames_of:
            cols["frames"].append(list(seq) if seq is not None else None)
    directory.mkdir(parents=True)
    table = pa.table(cols, schema=feature_schema(dim, "test", extra))
    pq.write_table(table, directory / "part-00000.parquet")
    return directory


def test_frame_mode_trains_on_stored_sequences(tmp_path, demo_utterances):
    """LPGNet(Frame) end to end: audio frames stored by the extract stage (``frames`` column, variable length),
    text as utterance vectors; dataset → sequences [B, T, L, F] with frame masks → train → evaluate."""
    import pyarrow.parquet as pq

    from pipeline.training.dataset import Standardizer, collate, dialogues, load_corpus, model_sequences, read_sequences
    from pipeline.evaluate import evaluate
    from pipeline.train import train

    utt = pq.read_table(demo_utterances, columns=["dialogue_id", "utterance_id", "label_id"])
    rng = np.random.default_rng(0)

    def frames(i, label):  # the label is planted in every frame: a model reading the frames can learn it
        n = 3 + i % 5
        x = rng.standard_normal((n, 8)).astype(np.float32) * 0.3
        x[:, max(label, 0) % 8] += 2.0
        return x

    dirs = {"t": _write_features(tmp_path / "t", utt, 6), "a": _write_features(tmp_path / "a", utt, 8, frames)}
    table = pq.read_table(dirs["a"] / "part-00000.parquet")
    seqs = read_sequences(table, "frames", max_len=4)
    assert [len(s) for s in seqs[:6]] == [3, 0, 4, 4, 4, 3]  # cut at max_len; the silent row has none
    cfg = {"hidden": 16, "mode": "frame", "max_len": 4, "dropout": 0.0, "positions": True}
    corpus = model_sequences(load_corpus(demo_utterances, ["t", "a"], dirs), "lpgnet", cfg, dirs)
    assert set(corpus.seqs) == {"a"}  # no token sequences stored for text: it stays one vector per utterance
    norm = Standardizer().fit(corpus, corpus.split_rows("train"))
    b = collate(dialogues(corpus, "train", norm)[:2])
    assert b["feats"]["a"].dim() == 4 and b["feats"]["a"].shape[2] == 4 and b["feats"]["t"].dim() == 3
    assert b["present"]["a"].shape == b["feats"]["a"].shape[:3]
    assert (b["present"]["a"].any(-1) <= b["mask"]).all()
    assert b["feats"]["a"][~b["present"]["a"]].abs().sum() == 0  # padding frames are zero
    params = {"model": "lpgnet", "model_params": {"lpgnet": cfg},
              "train": dict(modalities=["t", "a"], seed=0, epochs=8, batch_size=2, lr=1e-2, weight_decay=0.0,
                            grad_clip=1.0, patience=20, weighted_loss=False)}
    ckpt = tmp_path / "model.pt"
    res = train(params, demo_utterances, ckpt, tmp_path / "live", dirs)
    assert np.isfinite(res["best_dev_weighted_f1"])
    hist = json.loads((tmp_path / "live" / "seeds.json").read_text())["seeds"][0]["history"]
    assert hist[-1]["train"]["accuracy"] > 0.8  # the planted frames are learnt
    assert hist[-1]["train"]["aux_kl"] >= 0
    m = evaluate(ckpt, demo_utterances, tmp_path / "reports", feature_dirs=dirs)
    assert 0.0 <= m["weighted_f1"] <= 1.0


def test_frame_mode_without_the_column_is_one_clear_error(tmp_path, demo_utterances):
    import pyarrow.parquet as pq

    from pipeline.training.dataset import load_corpus, model_sequences

    utt = pq.read_table(demo_utterances, columns=["dialogue_id", "utterance_id", "label_id"])
    dirs = {"t": _write_features(tmp_path / "t", utt, 6), "a": _write_features(tmp_path / "a", utt, 8)}
    corpus = load_corpus(demo_utterances, ["t", "a"], dirs)
    with pytest.raises(ValueError, match="store_frames"):
        model_sequences(corpus, "lpgnet", {"mode": "frame"}, dirs)
    assert model_sequences(corpus, "lpgnet", {"mode": "utterance"}, dirs).seqs == {}


def test_per_utterance_compression_by_hand_and_it_trains():
    """``compression: per_utterance``: A_conv = LeakyReLU(BN(Conv(Â))) at every utterance (eval BatchNorm), then
    X_final = Q + A_conv + FFN(A_conv) — by hand at the valid positions; text alone fits a tiny batch."""
    feats, present, mask, speaker, label = batch("ta")
    model = build("ta", compression="per_utterance").eval()
    bn = model.branch["tt"].compress.bn
    bn.running_mean.uniform_(-0.5, 0.5)  # non-trivial statistics, so the hand computation checks the BN too
    bn.running_var.uniform_(0.5, 2.0)
    x, valid = _streams(model, feats, present, mask)
    br = model.branch["tt"]
    a_hat = br.attn(x["t"], x["t"], valid["t"].unsqueeze(2) & valid["t"].unsqueeze(1))
    conv = br.compress.conv(a_hat)
    bn_out = (conv - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    a_conv = F.leaky_relu(bn_out)
    want = x["t"] + a_conv + br.ffn(a_conv)
    got = model.lpia(x, valid)["tt"]
    torch.testing.assert_close(got[valid["t"]], want[valid["t"]], rtol=1e-5, atol=1e-5)
    d = got - x["t"]
    assert (d[0, 1:] - d[0, :1]).abs().max() > 1e-3  # per utterance, unlike global
    text = build("t", compression="per_utterance", dropout=0.0)
    f, p, m, s, y = batch("t")
    overfit(text, lambda: total_loss(text, text(f, p, m, s), y, m), steps=120)
    assert (text(f, p, m, s)[m].argmax(-1) == y[m]).all()


def test_frame_mode_text_tokens_alone(tmp_path, demo_utterances):
    """LPGNet(Frame) on text alone: the token states ``text.store_tokens`` writes (column ``frames`` of the text
    table) become the text sequence (``sequences: {t: frames}``), and the model learns a label planted in them."""
    import pyarrow.parquet as pq

    from pipeline.training.dataset import Standardizer, collate, dialogues, load_corpus, model_sequences
    from pipeline.train import train

    utt = pq.read_table(demo_utterances, columns=["dialogue_id", "utterance_id", "label_id"])
    rng = np.random.default_rng(1)

    def tokens(i, label):
        x = rng.standard_normal((2 + i % 4, 6)).astype(np.float32) * 0.3
        x[:, max(label, 0) % 6] += 2.0
        return x

    dirs = {"t": _write_features(tmp_path / "t", utt, 6, tokens)}
    cfg = {"hidden": 16, "mode": "frame", "max_len": 8, "dropout": 0.0, "sequences": {"t": "frames", "a": "frames"}}
    corpus = model_sequences(load_corpus(demo_utterances, ["t"], dirs), "lpgnet", cfg, dirs)
    assert set(corpus.seqs) == {"t"}  # audio is not a chosen modality: its entry is ignored
    b = collate(dialogues(corpus, "train", Standardizer().fit(corpus, corpus.split_rows("train")))[:2])
    assert b["feats"]["t"].dim() == 4 and b["present"]["t"].shape == b["feats"]["t"].shape[:3]
    params = {"model": "lpgnet", "model_params": {"lpgnet": cfg},
              "train": dict(modalities=["t"], seed=0, epochs=8, batch_size=2, lr=1e-2, weight_decay=0.0,
                            grad_clip=1.0, patience=20, weighted_loss=False)}
    res = train(params, demo_utterances, tmp_path / "model.pt", tmp_path / "live", dirs)
    assert np.isfinite(res["best_dev_weighted_f1"])
    hist = json.loads((tmp_path / "live" / "seeds.json").read_text())["seeds"][0]["history"]
    assert hist[-1]["train"]["accuracy"] > 0.8
