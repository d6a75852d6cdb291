"""Engine options (``train:`` params): each one changes the loop as documented in ``pipeline/training/engine.py``."""
from __future__ import annotations

import pytest
import torch

from pipeline.training.engine import Engine, EngineConfig, linear_warmup_factor
from modelkit import one_thread, toy_dialogues  # noqa: F401  (one_thread: autouse fixture)

DIMS = {"t": 4}


class Tiny(torch.nn.Module):
    """A linear classifier in the model contract; ``before_step`` records and optionally scales the gradients."""

    def __init__(self, scale: float | None = None):
        super().__init__()
        self.lin = torch.nn.Linear(DIMS["t"], 7)
        self.scale, self.hook_norms = scale, []

    def forward(self, feats, present, mask, speaker):
        return self.lin(feats["t"])

    def before_step(self, epoch, step):
        self.hook_norms.append(grad_norm(self))
        if self.scale is not None:
            for p in self.parameters():
                p.grad.mul_(self.scale)


def grad_norm(model) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))


def data(n=5, seed=0):
    return toy_dialogues(DIMS, n, seed, mods="t")


def record_steps(engine: Engine) -> list[dict]:
    """The lr and gradient norm each optimiser step is taken with (a step pre-hook)."""
    seen = []
    engine.opt.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append({"lr": opt.param_groups[0]["lr"], "norm": grad_norm(engine.model)}))
    return seen


def scripted(engine: Engine, dev: list[dict], states: list) -> None:
    """Replace dev evaluation by a fixed sequence of dev metrics; keep each epoch's weights in ``states``."""
    it = iter(dev)

    def evaluate(_):
        states.append({k: v.clone() for k, v in engine.model.state_dict().items()})
        return {"accuracy": 0.0, "macro_f1": 0.0, **next(it)}

    engine.evaluate = evaluate


def test_linear_warmup_lr_trace_by_hand():
    # 5 dialogues, batch 2 -> 3 steps per epoch; 3 epochs -> T = 9 steps; W = 4 warm-up steps, lr 0.1:
    # steps 0..3: 0.1·(k+1)/4 = .025 .05 .075 .1; steps 4..8: 0.1·(9-k)/5 = .1 .08 .06 .04 .02
    torch.manual_seed(0)
    cfg = EngineConfig(epochs=3, batch_size=2, lr=0.1, scheduler="linear_warmup", warmup_steps=4,
                       early_stopping=False)
    engine = Engine(Tiny(), cfg, "cpu")
    seen = record_steps(engine)
    engine.fit(data(), data(2, 1))
    assert [s["lr"] for s in seen] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.08, 0.06, 0.04, 0.02])
    assert linear_warmup_factor(9, 4, 9) == 0.0  # one step past the last: 0


def test_no_scheduler_keeps_lr_and_plateau_follows_monitor_direction():
    torch.manual_seed(0)
    engine = Engine(Tiny(), EngineConfig(epochs=2, batch_size=2, lr=0.1, scheduler="none"), "cpu")
    seen = record_steps(engine)
    engine.fit(data(), data(2, 1))
    assert {s["lr"] for s in seen} == {0.1} and engine.sched is None and engine.step_sched is None
    # falling dev loss with falling dev F1: monitor=loss never cuts the lr, monitor=weighted_f1 cuts it
    dev = [{"loss": 1.0 - 0.1 * e, "weighted_f1": 0.5 - 0.1 * e} for e in range(4)]
    lrs = {}
    for monitor in ("loss", "weighted_f1"):
        engine = Engine(Tiny(), EngineConfig(epochs=4, batch_size=2, lr=0.1, lr_patience=0, lr_factor=0.5,
                                             monitor=monitor, early_stopping=False), "cpu")
        scripted(engine, dev, [])
        res = engine.fit(data(), data(2, 1))
        lrs[monitor] = [row["train"]["lr"] for row in res["history"]]
    assert lrs["loss"] == [0.1] * 4
    assert lrs["weighted_f1"] == pytest.approx([0.1, 0.1, 0.05, 0.025])  # cut after epochs 1 and 2


def test_plateau_monitor_steps_on_its_own_metric():
    """Ada2I's official split: the plateau watches dev loss, selection stays on dev weighted F1."""
    dev = [{"loss": 1.0 - 0.1 * e, "weighted_f1": 0.5 - 0.1 * e} for e in range(4)]  # loss falls, F1 falls
    torch.manual_seed(0)
    engine = Engine(Tiny(), EngineConfig(epochs=4, batch_size=2, lr=0.1, lr_patience=0, lr_factor=0.5,
                                         monitor="weighted_f1", plateau_monitor="loss", early_stopping=False), "cpu")
    scripted(engine, dev, [])
    res = engine.fit(data(), data(2, 1))
    assert [row["train"]["lr"] for row in res["history"]] == [0.1] * 4  # loss keeps improving: no cut
    assert res["epoch"] == 0  # but the best epoch is the best F1 one
    with pytest.raises(ValueError, match="plateau_monitor"):
        EngineConfig(plateau_monitor="accuracy")


def test_adam_couples_weight_decay_adamw_decouples():
    """Zero loss gradient: AdamW shrinks θ by lr·wd·θ; Adam sees g = wd·θ and moves θ by ≈ lr (normalised)."""
    out = {}
    for name in ("adam", "adamw"):
        model = Tiny()
        with torch.no_grad():
            model.lin.weight.fill_(1.0)
        engine = Engine(model, EngineConfig(lr=0.1, weight_decay=0.01, optimizer=name), "cpu")
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        engine.opt.step()
        out[name] = model.lin.weight[0, 0].item()
    assert out["adamw"] == pytest.approx(1.0 - 0.1 * 0.01, abs=1e-7)
    assert out["adam"] == pytest.approx(1.0 - 0.1, abs=1e-5)  # m̂/√v̂ = g/|g| = 1 on the first step


def test_monitor_loss_selects_lowest_dev_loss_epoch():
    dev = [{"loss": 1.0, "weighted_f1": 0.2}, {"loss": 0.5, "weighted_f1": 0.3},
           {"loss": 0.7, "weighted_f1": 0.6}, {"loss": 0.9, "weighted_f1": 0.4}]
    picked = {}
    for monitor in ("loss", "weighted_f1"):
        torch.manual_seed(0)
        engine, states = Engine(Tiny(), EngineConfig(epochs=4, batch_size=2, monitor=monitor), "cpu"), []
        scripted(engine, dev, states)
        res = engine.fit(data(), data(2, 1))
        picked[monitor] = res["epoch"]
        for k, v in res["state_dict"].items():  # the returned weights are that epoch's
            torch.testing.assert_close(v, states[res["epoch"]][k], rtol=0, atol=0)
        assert res["dev_loss"] == dev[res["epoch"]]["loss"]
        assert res["dev_weighted_f1"] == dev[res["epoch"]]["weighted_f1"]
    assert picked == {"loss": 1, "weighted_f1": 2}


def test_early_stopping_off_runs_all_epochs_and_keeps_best():
    dev = [{"loss": 1.0, "weighted_f1": 0.5 - 0.05 * e} for e in range(6)]  # best at epoch 0, then worse
    runs = {}
    for early in (True, False):
        torch.manual_seed(0)
        engine = Engine(Tiny(), EngineConfig(epochs=6, batch_size=2, patience=2, early_stopping=early), "cpu")
        scripted(engine, dev, [])
        runs[early] = engine.fit(data(), data(2, 1))
    assert runs[True]["epochs_run"] == 3  # epoch 0 best, 2 worse epochs -> stop
    assert runs[False]["epochs_run"] == 6 and len(runs[False]["history"]) == 6
    assert runs[False]["epoch"] == 0


@pytest.mark.parametrize("before, clip, hook_max, step_max", [
    (True, 0.01, 0.01, 0.1),     # clipped to 0.01, then the hook scales by 10: the step sees 0.1
    (False, 0.01, None, 0.01),   # the hook sees raw gradients, the clip after it bounds the step
    (False, None, None, None),   # no clipping at all
    (False, 0, None, None),      # 0 means no clipping too
])
def test_clip_before_or_after_hooks(before, clip, hook_max, step_max):
    torch.manual_seed(0)
    model = Tiny(scale=10.0)
    engine = Engine(model, EngineConfig(epochs=1, batch_size=2, lr=1e-3, grad_clip=clip,
                                        clip_before_hooks=before), "cpu")
    seen = record_steps(engine)
    engine.fit(data(), data(2, 1))
    hook, step = model.hook_norms, [s["norm"] for s in seen]
    assert len(hook) == len(step) == 3
    if hook_max is None:
        assert min(hook) > 0.01  # raw gradients are well above the clip (so the cases differ)
        if step_max is None:
            assert step == pytest.approx([10 * h for h in hook])
    else:
        assert max(hook) == pytest.approx(hook_max, rel=1e-4)
    if step_max is not None:
        assert max(step) == pytest.approx(step_max, rel=1e-4)


def test_bad_option_is_one_clear_error():
    with pytest.raises(ValueError, match=r"train.optimizer must be one of adamw, adam; got 'sgd'"):
        EngineConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="train.monitor"):
        EngineConfig.from_params({"monitor": "accuracy"})


def test_defaults_are_the_project_recipe():
    """An empty ``train:`` block is today's engine: AdamW, plateau on dev weighted F1 (max), early stop, clip 1.0."""
    cfg = EngineConfig.from_params({})
    engine = Engine(Tiny(), cfg, "cpu")
    assert isinstance(engine.opt, torch.optim.AdamW) and engine.opt.defaults["weight_decay"] == 0.01
    assert isinstance(engine.sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and engine.sched.mode == "max"
    assert (cfg.grad_clip, cfg.clip_before_hooks, cfg.early_stopping, cfg.patience) == (1.0, False, True, 8)
