"""DDP training under torchrun: 2 CPU processes (gloo) on the demo features, and every registered model on toy
dialogues against one process. Run as a script, this file is the rank program of the latter (``ddp_runs``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modelkit import one_thread, toy_dialogues  # noqa: F401  (one_thread: autouse)
from models import get_model, list_models
from pipeline.training.engine import Engine, EngineConfig, init_distributed, rank_share, seed_everything, world
from pipeline.train import train

ROOT = Path(__file__).resolve().parents[1]

# Run by torchrun in each rank: records which rank opened DVCLive / saved the checkpoint, and its result.
RANK_SCRIPT = """
import json, os, sys
import dvclive
import torch
import pipeline.train as T

calls = []
save = T.save_checkpoint
T.save_checkpoint = lambda *a, **k: (calls.append("checkpoint"), save(*a, **k))[1]

class Live(dvclive.Live):
    def __init__(self, *a, **k):
        calls.append("live")
        super().__init__(*a, **k)

dvclive.Live = Live
args = json.loads(sys.argv[1])
if args.get("hooked"):  # a model using every engine hook, registered in the ranks only
    import torch
    import torch.distributed as dist
    from models.baselines import DialogueGRU
    from models.registry import register_model

    @register_model("ddp_hooked")
    class Hooked(DialogueGRU):
        steps = 0

        def forward(self, *a):
            logits = super().forward(*a)
            return {"logits": logits, "losses": {"l2": 1e-4 * logits.float().pow(2).mean()}}

        def aux_loss(self, out, batch):
            return {"lab": 0.0 * out["logits"].sum() + float((batch["label"] >= 0).float().mean())}

        def before_step(self, epoch, step):
            self.steps += 1
            for p in self.parameters():  # rank-dependent edit: the engine must keep replicas identical
                if p.grad is not None:
                    p.grad.mul_(1.0 + dist.get_rank())

        def epoch_logs(self):
            out = {"steps": float(self.steps), "rank_marker": float(dist.get_rank())}
            self.steps = 0
            type(self).checksum = [float(p.double().sum()) for p in self.parameters()]
            return out
result = T.train(args["params"], args["utterances"], args["out"], args["live"], args["features"])
import torch.distributed as dist
info = {"checksum": Hooked.checksum if args.get("hooked") else None, "result": result, "calls": calls,
        "world": dist.get_world_size(), "backend": dist.get_backend()}
with open(os.path.join(args["results"], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump(info, f)
dist.barrier()
dist.destroy_process_group()
"""


def params(epochs=6):
    return {"model": "dialogue_gru", "model_params": {"dialogue_gru": {"hidden": 32}},
            "train": dict(modalities="ta", seed=0, epochs=epochs, batch_size=4, lr=3e-3, weight_decay=0.01,
                          grad_clip=1.0, patience=10, weighted_loss=True)}


@pytest.mark.parametrize("n,size", [(10, 2), (7, 2), (5, 3), (1, 2), (4, 1)])
def test_rank_share_covers_every_dialogue_with_equal_shares(n, size):
    shares = [rank_share(n, r, size) for r in range(size)]
    assert len({len(s) for s in shares}) == 1  # same number of steps on every rank: no collective hangs
    assert set(np.concatenate(shares)) == set(range(n))
    assert sum(len(s) for s in shares) - n < size  # padding: fewer than one extra per rank


def torchrun(tmp_path, demo_utterances, demo_features, p: dict, hooked: bool = False) -> list[dict]:
    """``torchrun --standalone --nproc-per-node 2`` of RANK_SCRIPT on CPU; each rank's record."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    (tmp_path / "results").mkdir()
    args = {"params": p, "utterances": str(demo_utterances), "out": str(tmp_path / "ddp" / "model.pt"),
            "live": str(tmp_path / "ddp" / "live"), "features": {m: str(x) for m, x in demo_features.items()},
            "results": str(tmp_path / "results"), "hooked": hooked}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), json.dumps(args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / "results" / f"rank{r}.json").read_text()) for r in range(2)]


def test_torchrun_two_gloo_ranks_match_single_process(tmp_path, demo_utterances, demo_features):
    ranks = torchrun(tmp_path, demo_utterances, demo_features, params())
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    assert ranks[0]["calls"] == ["live", "checkpoint"] and ranks[1]["calls"] == []  # rank 0 writes, only
    assert ranks[0]["result"] == ranks[1]["result"]  # gathered dev metrics: the same selection on every rank

    ckpt = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # the bare model's weights
    assert ckpt["epoch"] == ranks[0]["result"]["best_epoch"]
    seeds = json.loads((tmp_path / "ddp" / "live" / "seeds.json").read_text())
    assert len(seeds["seeds"][0]["history"]) == 6
    steps = (tmp_path / "ddp" / "live" / "plots" / "metrics" / "dev" / "weighted_f1.tsv").read_text().splitlines()
    assert len(steps) == 1 + 6  # one writer: header + one row per epoch, no duplicates

    single = train(params(), demo_utterances, tmp_path / "one" / "model.pt", tmp_path / "one" / "live",
                   demo_features)
    # same global batch and schedule; the gradient is averaged per rank instead of per batch: close, not equal
    assert abs(single["best_dev_weighted_f1"] - ranks[0]["result"]["best_dev_weighted_f1"]) < 0.1
    # the model learnt the same way: dev F1 well above a constant guess on both
    assert min(single["best_dev_weighted_f1"], ranks[0]["result"]["best_dev_weighted_f1"]) > 0.3


def test_hooks_run_on_the_bare_model_under_ddp(tmp_path, demo_utterances, demo_features):
    p = params(epochs=2)
    p["model"], p["model_params"] = "ddp_hooked", {"ddp_hooked": {"hidden": 16}}
    ranks = torchrun(tmp_path, demo_utterances, demo_features, p, hooked=True)
    assert ranks[0]["result"] == ranks[1]["result"]
    metrics = tmp_path / "ddp" / "live" / "plots" / "metrics" / "train"

    def column(name):
        rows = (metrics / f"{name}.tsv").read_text().splitlines()[1:]
        return [float(r.split("\t")[-1]) for r in rows]

    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # rank-dependent gradient edits: replicas stay equal
    assert column("rank_marker") == [0.5, 0.5]  # epoch_logs: the mean over both ranks
    steps = column("steps")
    assert len(steps) == 2 and steps[0] == steps[1] > 0  # before_step once per step, same steps per rank
    assert all(v > 0 for v in column("aux_l2")) and all(0 < v <= 1 for v in column("aux_lab"))


# --- every registered model under DDP (issue #28) --------------------------------------------------------------
#
# What DDP computes: rank r takes its share B_r of the global batch, and the gradients of its own loss L(B_r) are
# averaged over the W ranks. Where every loss term is a mean over utterances and the shares hold as many utterances,
# (1/W)·Σ_r ∇L(B_r) = ∇L(∪_r B_r): one process on the full batch takes the same step, and the engine's logged losses
# (the utterance-weighted mean of the ranks' means) are the full batch's means. A sum over utterances matches when
# each rank scales its sum by W (SUMMER's ``ikd_reduction: sum`` does). So each model runs in a configuration where
# that holds (MODEL_CFG: no dropout or Gumbel noise — random draws differ between ranks and one process —, no batch
# statistics), on dialogues of one length (the same utterance count per rank), with an unweighted CE (a
# class-weighted mean's normaliser Σ w differs per share).
# In their default settings these differ from one process, by design of data parallelism, and are not compared:
#   * summer: the SDMoE / global routers' μ, σ of W_g come from the rank's share (Eq. 3), Gumbel noise (Eq. 4);
#   * lpgnet: BatchNorm statistics over the rank's share (``compress``), as in any DDP without SyncBatchNorm;
#   * ada2i: the modulation coefficients k_m come from the rank's share (the engine averages k_m·g over the ranks),
#     and the official gradient noise (``noise_target: gradient``) is drawn per rank, then averaged;
#   * every model: dropout masks.
# The default pass trains those models as configured (Ada2I's modulation from step 1, so its hooks run) and checks
# that they train: finite losses, the same logs on both ranks, identical replicas.
DDP_DIMS = {"t": 16, "a": 12, "v": 8}
MODEL_CFG = {"summer": {"moe": "plain", "global_moe": "dense"},
             "summer_teacher": {"moe": "plain"}, "lpgnet": {"compress": False}, "ada2i": {"modulation": False}}
DEFAULT_CFG = {"summer": {}, "summer_teacher": {}, "lpgnet": {}, "ada2i": {"start_mod": 1}}
STEPS = 3  # epochs of one global batch each: one optimiser step per epoch, so each epoch's logs are that step's
DDP_ENGINE = dict(epochs=STEPS, batch_size=4, lr=1e-3, weight_decay=0.01, grad_clip=1.0, weighted_loss=False,
                  scheduler="none", early_stopping=False)


def train_models(configs: dict[str, dict]) -> dict:
    """Each model of ``configs`` (name → its params), seeded alike, trained ``STEPS`` steps by the engine on 4
    dialogues of 5 turns; per model: each step's logged losses, gradients (as the optimiser receives them: reduced
    over the ranks, clipped) and the final weights, and the optimiser's settings."""
    data = toy_dialogues(DDP_DIMS, n=4, seed=3, min_len=5)  # T = rng.integers(5, 6) = 5; v absent in turn 0 of each
    out = {}
    for name, cfg in configs.items():
        seed_everything(0)
        model = get_model(name, input_dims=DDP_DIMS, n_classes=7, hidden=16, **cfg)
        engine = Engine(model, EngineConfig(**DDP_ENGINE), "cpu")
        grads, opt_step = [], engine.opt.step

        def record(*a, **k):
            grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
            return opt_step(*a, **k)

        engine.opt.step = record
        res = engine.fit(data, data[:2], seed=0)
        group = engine.opt.param_groups[0]
        out[name] = {"train": [row["train"] for row in res["history"]], "grads": grads,
                     "params": {n: p.detach().clone() for n, p in model.named_parameters()},
                     "adam": [*group["betas"], group["eps"]]}
    return out


def exact_configs() -> dict[str, dict]:
    return {name: {"dropout": 0.0, **MODEL_CFG.get(name, {})} for name in list_models()}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> list[dict]:
    """One torchrun (2 gloo ranks on CPU) training every model: each rank's ``{"exact": …, "default": …}``."""
    base = tmp_path_factory.mktemp("ddp_models")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, str(base)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "\n".join(ln for ln in proc.stderr.splitlines() if ln.startswith("[rank"))[-3000:]
    return [torch.load(base / f"rank{r}.pt", weights_only=True) for r in range(2)]


def adam_tolerance(one: dict, ddp: dict, n: str, lr: float) -> torch.Tensor:
    """Per element, how far two Adam trajectories may drift given their gradients' measured differences.

    Adam's step u = m̂/(√v̂ + ε) moves by |Δu| ≲ |Δm̂|/(√v̂ + ε) + |m̂|·|Δ√v̂|/(√v̂ + ε)² ≤ 2·max_t|Δg_t|/(√v̂ + ε)
    (|m̂| ≲ √v̂); summed over the steps (× lr), plus the float32 rounding of θ_t itself (2 ulp per step). Where a
    gradient is 0 in exact arithmetic (an attention key bias: softmax ignores a shift shared by all keys) both runs
    get rounding noise, √v̂ is that noise and the bound is ~2·lr per step: such weights may differ, by design of Adam.
    """
    b1, b2, eps = one["adam"]
    v, dg, tol = 0.0, 0.0, 0.0
    for s, (g, h) in enumerate(zip(one["grads"], ddp["grads"])):
        v = b2 * v + (1 - b2) * g[n] * g[n]
        dg = torch.maximum(torch.as_tensor(dg), (h[n] - g[n]).abs())
        tol = tol + 2 * lr * dg / ((v / (1 - b2 ** (s + 1))).sqrt() + eps)
    steps = len(one["grads"])  # θ_t's magnitude along the way: at most |θ| + steps·lr (Adam's |u| ≲ 1)
    return tol + 2 * steps * torch.finfo(torch.float32).eps * (one["params"][n].abs() + steps * lr)


def test_every_model_trains_under_ddp_as_in_one_process(ddp_runs):
    single = train_models(exact_configs())
    assert set(ddp_runs[0]["exact"]) == set(single) == set(list_models())
    for name, one in single.items():
        ddp, other = ddp_runs[0]["exact"][name], ddp_runs[1]["exact"][name]
        for n, p in ddp["params"].items():  # replicas: bit for bit
            assert torch.equal(p, other["params"][n]), (name, n)
        assert len(ddp["grads"]) == len(one["grads"]) == STEPS
        keys = {k for k in one["train"][0] if k == "loss" or k.startswith("aux_")}
        assert keys == {k for k in ddp["train"][0] if k == "loss" or k.startswith("aux_")}, name
        # losses: the same means over the same 40 utterances (a few hundred float32 terms through the model), summed
        # in another order and from other padding widths: rounding ~ε·√terms ≈ 1e-6 relative; measured ≤ 7e-7
        for s, (a, b) in enumerate(zip(ddp["train"], one["train"])):
            for k in keys:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (name, s, k)
        # gradients, every step: the same sums in another order; atol scaled to the step's largest component (the
        # rounding of a sum is relative to its terms, not to the result: exact zeros come out as noise); measured
        # ≤ 1.2e-6 of that scale
        for s, (g_ddp, g_one) in enumerate(zip(ddp["grads"], one["grads"])):
            assert set(g_ddp) == set(g_one), name
            scale = max(float(g.abs().max()) for g in g_one.values())
            for n in g_one:
                torch.testing.assert_close(g_ddp[n], g_one[n], rtol=1e-4, atol=1e-5 * scale,
                                           msg=lambda m, s=s, n=n: f"{name} step {s} {n}: {m}")
        # weights: within what those gradient differences allow through Adam (measured ≤ 0.5 of the bound)
        for n, p in one["params"].items():
            if n in one["grads"][0]:
                drift = (ddp["params"][n] - p).abs()
                assert (drift <= adam_tolerance(one, ddp, n, DDP_ENGINE["lr"])).all(), (name, n, float(drift.max()))
            else:  # no gradient (a frozen or unused weight): untouched on both
                assert torch.equal(ddp["params"][n], p), (name, n)


def test_models_train_under_ddp_in_their_default_configuration(ddp_runs):
    for name in DEFAULT_CFG:
        runs = [r["default"][name] for r in ddp_runs]
        assert len(runs[0]["train"]) == STEPS
        for row in runs[0]["train"]:
            assert all(np.isfinite(v) for v in row.values()), (name, row)
        assert runs[0]["train"] == runs[1]["train"]  # metrics gathered over both ranks
        for n, p in runs[0]["params"].items():  # rank-local hooks and noise are averaged: replicas stay equal
            assert torch.equal(p, runs[1]["params"][n]), (name, n)
    rho = [row for row in ddp_runs[0]["default"]["ada2i"]["train"]]
    assert all("rho_t" in row for row in rho)  # Ada2I's modulation statistics ran (epoch_logs, mean over ranks)


if __name__ == "__main__":  # the rank script of ``ddp_runs``: ``torchrun --nproc-per-node 2 tests/test_ddp.py DIR``
    import torch.distributed as dist

    torch.set_num_threads(1)
    init_distributed()
    result = {"exact": train_models(exact_configs()), "default": train_models(DEFAULT_CFG)}
    torch.save(result, Path(sys.argv[1]) / f"rank{world()[0]}.pt")
    dist.barrier()
    dist.destroy_process_group()
