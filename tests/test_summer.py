"""SUMMER (models/summer.py) and its teacher stage (pipeline/train_teacher.py): every modality subset and ablation,
the frozen teacher, dynamic routing, DynAttn mask, IKD losses under padding, and the two phases on the demo."""
import json

import numpy as np
import pytest
import torch

from modelkit import one_thread, overfit, toy_batch, toy_dialogues  # noqa: F401  (one_thread: autouse)
import torch.nn.functional as F

from models import get_model
from models.summer import SDMoE, Summer, SummerTeacher, dynattn_mask
from pipeline.dataset import Standardizer
from pipeline.engine import Engine, EngineConfig, split_output
from pipeline.train_teacher import save_teacher, teacher_defaults

DIMS = {"t": 16, "a": 12, "v": 8}
SUBSETS = ["t", "a", "v", "ta", "tv", "av", "tav"]
TINY = {"hidden": 16, "heads": 4, "experts": 3}
VARIANTS = [{}, {"moe": "plain"}, {"fusion": "self_attention"}, {"ikd": False},
            {"fusion": "self_attention", "ikd": False}, {"moe": "plain", "fusion": "self_attention", "ikd": False}]
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
    expect = {"smooth"} | ({"ikd_kl", "ikd_ce", "ikd_mse"} if cfg.get("ikd", True) else set())
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


def test_overfits_tiny_batch_with_ikd():
    model = build("tav", dropout=0.0)
    feats, present, mask, speaker, label = batch("tav")
    overfit(model, lambda: full_loss(model, feats, present, mask, speaker, label))
    logits = model(feats, present, mask, speaker)
    assert (logits[mask].argmax(-1) == label[mask]).all()
    # label smoothing (ε = 0.1, 7 classes) caps confidence: its optimum has CE = −log(0.9 + 0.1/7) ≈ 0.09
    assert F.cross_entropy(logits[mask], label[mask]).item() < 0.25


def test_dynamic_routing_drops_outliers():
    moe = SDMoE(hidden=8, experts=3, route_sigma=2.0).train()
    g = torch.tensor([[0.3, 0.3, 0.4]] * 11 + [[0.95, 0.03, 0.02]]).unsqueeze(0)  # [1, 12, 3]; token 11 an outlier
    valid = torch.ones(1, 12, dtype=torch.bool)
    out = moe.route(g, valid)
    # token 11's weights are far outside mu +- 2 sigma for every expert: all would go, so they are kept as they are
    torch.testing.assert_close(out[0, 11], g[0, 11])
    g2 = g.clone()
    g2[0, 11] = torch.tensor([0.3, 0.02, 0.68])  # only experts 1 and 2 lie outside: dropped, expert 0 renormalised
    out2 = moe.route(g2, valid)
    torch.testing.assert_close(out2[0, 11], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(out2[0, :11], g2[0, :11])  # inliers untouched
    assert moe.dropped[0] == 3 + 2  # three weights of the first call's outlier, two of the second's
    # padding neither counts in the statistics nor gets routed away
    g3 = torch.cat([g2, torch.full((1, 4, 3), 5.0)], 1)
    out3 = moe.route(g3, torch.cat([valid, torch.zeros(1, 4, dtype=torch.bool)], 1))
    torch.testing.assert_close(out3[0, :12], out2[0])
    # evaluation uses the running statistics: a token's weights do not depend on the rest of the batch
    moe.eval()
    one = moe.route(g2[:, 11:], valid[:, 11:])
    torch.testing.assert_close(one[0, 0], moe.route(g2, valid)[0, 11])


def test_gumbel_temperature_is_learned_and_logged():
    model = build("ta")
    feats, present, mask, speaker, label = batch("ta")
    loss, _ = full_loss(model, feats, present, mask, speaker, label)
    loss.backward()
    assert model.moe["t"].log_tau.grad.abs() > 0
    logs = model.epoch_logs()
    assert set(logs) == {"tau_t", "tau_a", "route_dropped_t", "route_dropped_a"}
    assert logs["tau_t"] == pytest.approx(1.0) and 0 <= logs["route_dropped_t"] <= 1
    assert "log_tau" not in dict(build("ta", moe="plain").moe["t"].named_parameters())


def test_dynattn_mask_from_teacher_features():
    h = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [7.0, 7.0]]])  # last turn is padding
    mask = torch.tensor([[True, True, True, True, False]])
    m = dynattn_mask(h, mask)[0]
    assert m.diagonal()[:4].all() and not m[4].any() and not m[:, 4].any()
    assert m[0, 1] and not m[0, 3] and not m[0, 2]  # turn 0 keeps the similar turn 1, not the opposite turn 3
    assert dynattn_mask(h, mask, threshold=-10.0)[0][:4, :4].all()  # a low threshold keeps the whole dialogue


def test_padded_batch_gives_finite_ikd_losses_equal_to_unpadded():
    """Heavy padding (one dialogue of 1 turn in a batch of 6) must not produce NaN (SDT's kl_div pitfall), and the
    losses must equal those of the real utterances alone."""
    model = build("tav").eval()  # eval: no Gumbel noise or dropout, so both calls compute the same thing
    feats, present, mask, speaker, label = batch("tav", B=3, T=6)
    mask[0, :] = False
    mask[0, 0] = True
    label = label.masked_fill(~mask, -100)
    model.training = True  # only to make forward keep what aux_loss needs; submodules stay in eval mode
    logits = model(feats, present, mask, speaker)
    aux = model.aux_loss(logits, {"mask": mask, "label": label})
    assert all(torch.isfinite(v) for v in aux.values())
    sum(aux.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the same losses from the batch cut to the real part of dialogue 1 and 2 only + dialogue 0 alone
    cut = lambda x, b, n: x[b : b + 1, :n]  # noqa: E731
    per = []
    for b in range(3):
        n = int(mask[b].sum())
        lg = model({m: cut(f, b, n) for m, f in feats.items()}, {m: cut(p, b, n) for m, p in present.items()},
                   cut(mask, b, n), cut(speaker, b, n))
        per.append((n, model.aux_loss(lg, {"mask": cut(mask, b, n), "label": cut(label, b, n)})))
    N = sum(n for n, _ in per)
    for k in ("ikd_kl", "ikd_ce", "smooth"):  # per-utterance means: the padded batch is their weighted mean
        torch.testing.assert_close(aux[k], sum(n * a[k] for n, a in per) / N, rtol=1e-4, atol=1e-5)


def test_label_smoothing_term_makes_the_loss_proportional_to_smoothed_ce():
    model = build("t", ikd=False, label_smoothing=0.1)
    feats, present, mask, speaker, label = batch("t")
    logits = model(feats, present, mask, speaker)
    aux = model.aux_loss(logits, {"mask": mask, "label": label})
    ce = F.cross_entropy(logits[mask], label[mask])
    smoothed = F.cross_entropy(logits[mask], label[mask], label_smoothing=0.1)
    torch.testing.assert_close(ce + aux["smooth"], smoothed / 0.9)


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
    model.teacher.encoder.register_forward_hook(
        lambda mod, args, out: seen.append((mod.training, out.requires_grad, torch.is_grad_enabled())))
    res = Engine(model, EngineConfig(epochs=2, batch_size=2, lr=1e-2), "cpu", torch.ones(7)).fit(
        dialogues(), dialogues(3, seed=1), seed=0)
    assert seen and not any(training or needs_grad or grad_on for training, needs_grad, grad_on in seen)
    assert {"aux_ikd_kl", "aux_ikd_ce", "aux_ikd_mse", "aux_smooth", "tau_t"} <= set(res["history"][0]["train"])
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
    ck = torch.load(tmp_path / "teacher.pt", weights_only=True)
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
    assert "aux_ikd_kl" in live["train"] and "tau_t" in live["train"]


def test_split_output_contract():
    """forward returns plain logits (the engine's contract); the IKD terms come from aux_loss."""
    model = build("ta")
    feats, present, mask, speaker, _ = batch("ta")
    logits, aux = split_output(model(feats, present, mask, speaker))
    assert logits.shape == (3, 5, 7) and aux == {}
    assert isinstance(model, Summer)
