"""DDP training under torchrun: 2 CPU processes (gloo) on the demo features."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.engine import rank_share
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
