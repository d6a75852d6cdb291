"""LPGNet (models/lpgnet.py): branches per modality subset, training-only self-distillation, the paper's loss
weighting through the engine hooks, ablation switches, padding safety and the masked KL / BatchNorm."""
import numpy as np
import pytest
import torch

from modelkit import one_thread, overfit, toy_batch, toy_dialogues  # noqa: F401  (one_thread: autouse)
import torch.nn.functional as F

from models import get_model
from models.layers import MaskedBatchNorm1d, SoftmaxModalityFusion
from models.lpgnet import distillation_kl, masked_ce
from pipeline.engine import Engine, EngineConfig, split_output

DIMS = {"t": 16, "a": 12, "v": 8}
SUBSETS = ["t", "a", "v", "ta", "tv", "av", "tav"]
ABLATIONS = [{"inter": False}, {"intra": False}, {"ffn": False}, {"dual_gate": False}, {"compress": False},
             {"positions": False}, {"distill": False}, {"lambda_task": 1.0}]


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
    assert set(build(mods, **cfg).attn) == branches


def test_inter_attention_mixes_modalities():
    """With inter branches, text logits depend on audio at other turns; with inter off (and no gates) not."""
    feats, present, mask, speaker, _ = batch("ta")
    moved = {m: f.clone() for m, f in feats.items()}
    moved["a"][0, 3] += 5.0
    for cfg, changes in (({}, True), ({"inter": False, "dual_gate": False, "distill": False}, False)):
        model = build("ta", **cfg).eval()
        t0 = model.lpia(*_streams(model, feats, present, mask))["t"]
        t1 = model.lpia(*_streams(model, moved, present, mask))["t"]
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
        assert not hasattr(model, "ff")
    if cfg.get("dual_gate", True) is False:
        assert not hasattr(model, "uni_gate")


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
    # hand value: KL(p‖q) = Σ p log(p/q) at temperature τ
    s = torch.tensor([[[0.0, 0.0, 0.0]]])
    t = torch.tensor([[[1.0, 0.0, 0.0]]])
    p = torch.softmax(t[0, 0] / 2.0, -1)
    expected = (p * (p.log() - np.log(1 / 3))).sum().item()
    assert distillation_kl(s, t, torch.ones(1, 1, dtype=torch.bool), tau=2.0).item() == pytest.approx(expected, rel=1e-5)
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
    kl = lambda lg, keep: F.kl_div(F.log_softmax(lg[keep], -1), F.softmax(z.detach()[keep], -1),  # noqa: E731
                                   reduction="batchmean")
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
