"""train → evaluate on the demo features: dev-selected checkpoint, metrics file, confusion data."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.evaluate import evaluate
from pipeline.schema import EMOTIONS
from pipeline.training.engine import class_weights
from pipeline.train import train


def params(model, modalities=("t", "a", "v"), epochs=6, seed=0):
    return {"model": model, "model_params": {model: {"hidden": 32}},
            "train": dict(modalities=list(modalities), seed=seed, epochs=epochs, batch_size=2, lr=3e-3,
                          weight_decay=0.01, grad_clip=1.0, patience=10, weighted_loss=True)}


def test_class_weights_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    torch.testing.assert_close(w, torch.tensor([4 / 9, 4 / 3, 1.0]))


@pytest.mark.parametrize("model", ["dialogue_gru", "concat_mlp"])
def test_train_and_evaluate_demo(tmp_path, demo_utterances, demo_features, model):
    ckpt = tmp_path / "model.pt"
    res = train(params(model), demo_utterances, ckpt, tmp_path / "live", demo_features)
    assert 0 <= res["best_epoch"] < 6
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert {"train", "dev"} <= set(live) and "weighted_f1" in live["dev"]
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == res["best_epoch"]  # the checkpoint is the best-on-dev epoch
    assert saved["input_dims"] == {"t": 384, "a": 88, "v": 256}

    m = evaluate(ckpt, demo_utterances, tmp_path / "reports", feature_dirs=demo_features,
                 live_plots=tmp_path / "live" / "plots" / "metrics")
    on_disk = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert on_disk["weighted_f1"] == pytest.approx(m["weighted_f1"])
    assert set(on_disk["per_class"]) == set(EMOTIONS)
    assert on_disk["n"] == 12  # demo test split: 12 labelled utterances, the missing clip included (text)
    # the test split's missing clip keeps prepare's status (missing_media) in audio and visual
    assert on_disk["items"]["a_missing_media"] == 1 and on_disk["items"]["v_missing_media"] == 1
    cm = pd.read_csv(tmp_path / "reports" / "plots" / "confusion.csv")
    assert len(cm) == 12 and set(cm.columns) == {"actual", "predicted"}
    assert (cm.actual == cm.predicted).mean() == pytest.approx(on_disk["accuracy"])
    from pipeline.training.plots import read_png_matrix

    drawn = np.asarray(read_png_matrix(tmp_path / "reports" / "confusion.png")["matrix"])
    assert drawn.sum() == 12 and np.trace(drawn) == (cm.actual == cm.predicted).sum()
    assert (tmp_path / "reports" / "confusion_normalized.png").stat().st_size > 1000
    assert (tmp_path / "reports" / "curves.png").stat().st_size > 1000
    assert on_disk["n_params"] == sum(p.numel() for p in saved["state_dict"].values())


def test_training_is_deterministic(tmp_path, demo_utterances, demo_features):
    a = train(params("dialogue_gru", ("t",), epochs=3), demo_utterances, tmp_path / "a.pt", tmp_path / "la",
              demo_features)
    b = train(params("dialogue_gru", ("t",), epochs=3), demo_utterances, tmp_path / "b.pt", tmp_path / "lb",
              demo_features)
    assert a == b
    sa, sb = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    for k in sa["state_dict"]:
        torch.testing.assert_close(sa["state_dict"][k], sb["state_dict"][k], rtol=0, atol=0)
    train(params("dialogue_gru", ("t",), epochs=3, seed=1), demo_utterances, tmp_path / "c.pt", tmp_path / "lc",
          demo_features)
    sc = torch.load(tmp_path / "c.pt", weights_only=True)
    assert any(not torch.equal(sa["state_dict"][k], sc["state_dict"][k]) for k in sa["state_dict"])


def test_text_model_learns_demo(tmp_path, demo_utterances, demo_features):
    """Real features carry signal: text-only training beats chance on dev by a margin."""
    res = train(params("concat_mlp", ("t",), epochs=25), demo_utterances, tmp_path / "m.pt", tmp_path / "l",
                demo_features)
    assert res["best_dev_weighted_f1"] > 0.5


def test_seeds_report_mean_and_std(tmp_path, demo_utterances, demo_features):
    """`train.seeds`: one model per seed; evaluate reports test mean ± std over them (modalities as a string)."""
    p = params("concat_mlp", epochs=3)
    p["train"].update(modalities="ta", seeds=[0, 1])
    res = train(p, demo_utterances, tmp_path / "m.pt", tmp_path / "live", demo_features)
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert [r["seed"] for r in saved["runs"]] == [0, 1] and saved["modalities"] == ["t", "a"]
    assert saved["seed"] == res["seed"] and saved["dev_weighted_f1"] == max(r["dev_weighted_f1"] for r in saved["runs"])
    seeds = json.loads((tmp_path / "live" / "seeds.json").read_text())
    assert [s["seed"] for s in seeds["seeds"]] == [0, 1] and len(seeds["seeds"][0]["history"]) == 3
    m = evaluate(tmp_path / "m.pt", demo_utterances, tmp_path / "reports", feature_dirs=demo_features)
    per_seed = [s["weighted_f1"] for s in m["seeds"].values()]
    assert [s["seed"] for s in m["seeds"].values()] == [0, 1] and list(m["seeds"]) == ["0", "1"]
    assert m["weighted_f1"] == pytest.approx(np.mean(per_seed))
    assert m["weighted_f1_std"] == pytest.approx(np.std(per_seed, ddof=1))  # sample std over seeds
    assert {"accuracy_std", "macro_f1_std"} <= set(m) and m["selected_seed"] == res["seed"]
