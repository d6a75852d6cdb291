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
result = T.train(args["params"], args["utterances"], args["out"], args["live"], args["features"])
import torch.distributed as dist
info = {"result": result, "calls": calls, "world": dist.get_world_size(), "backend": dist.get_backend()}
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


def test_torchrun_two_gloo_ranks_match_single_process(tmp_path, demo_utterances, demo_features):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    (tmp_path / "results").mkdir()
    args = {"params": params(), "utterances": str(demo_utterances), "out": str(tmp_path / "ddp" / "model.pt"),
            "live": str(tmp_path / "ddp" / "live"), "features": {m: str(p) for m, p in demo_features.items()},
            "results": str(tmp_path / "results")}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), json.dumps(args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "results" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    assert ranks[0]["calls"] == ["live", "checkpoint"] and ranks[1]["calls"] == []  # rank 0 writes, only
    assert ranks[0]["result"] == ranks[1]["result"]  # gathered dev metrics: the same selection on every rank

    ckpt = torch.load(tmp_path / "ddp" / "model.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # the bare model's weights
    assert ckpt["epoch"] == ranks[0]["result"]["best_epoch"]
    seeds = json.loads((tmp_path / "ddp" / "live" / "seeds.json").read_text())
    assert len(seeds["seeds"][0]["history"]) == 6
    steps = (tmp_path / "ddp" / "live" / "plots" / "metrics" / "dev" / "weighted_f1.tsv").read_text().splitlines()
    assert len(steps) == 1 + 6  # one writer: header + one row per epoch, no duplicates

    single = train(params(), demo_utterances, tmp_path / "one" / "model.pt", tmp_path / "one" / "live",
                   demo_features)
    # same global batch and schedule; the gradient is averaged per rank instead of per batch: close, not equal
    assert abs(single["best_dev_weighted_f1"] - ranks[0]["result"]["best_dev_weighted_f1"]) < 0.15
    # the model learnt the same way: dev F1 well above a constant guess on both
    assert min(single["best_dev_weighted_f1"], ranks[0]["result"]["best_dev_weighted_f1"]) > 0.3
