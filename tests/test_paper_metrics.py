"""The metrics the papers report (``pipeline.training.metrics``) against hand computations, and ``evaluate --split dev``."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from pipeline import evaluate as ev

from pipeline.training import dataset
from pipeline.training.metrics import SCALARS, classification_metrics, one_vs_all
from pipeline.schema import EMOTIONS

# y_true = [0,0,1,1,2], y_pred = [0,1,1,1,0]; classes seen: 0, 1, 2 (of 7)
#   class 0: P 1/2, R 1/2, F1 1/2;  class 1: P 2/3, R 1, F1 0.8;  class 2: P 0, R 0, F1 0
Y, P = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]


def test_macro_and_weighted_precision_recall_by_hand():
    m = classification_metrics(Y, P, EMOTIONS)
    assert m["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["macro_recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["weighted_precision"] == pytest.approx((2 * 1 / 2 + 2 * 2 / 3 + 1 * 0) / 5)
    assert m["weighted_recall"] == pytest.approx((2 * 1 / 2 + 2 * 1 + 0) / 5) == m["accuracy"]
    assert set(SCALARS) <= set(m)


def test_per_class_accuracy_is_recall():
    pc = classification_metrics(Y, P, EMOTIONS)["per_class"]
    assert pc["neutral"]["accuracy"] == pytest.approx(1 / 2)   # 1 of 2 neutral utterances right
    assert pc["surprise"]["accuracy"] == pytest.approx(1.0)
    assert pc["fear"]["accuracy"] == 0.0
    assert all(v["accuracy"] == v["recall"] for v in pc.values())


def test_one_vs_all_binary_accuracy_and_f1_by_hand():
    # class 0: truth 11000 vs pred 10001 -> 3/5 right; class 1: 00110 vs 01110 -> 4/5; class 2: 00001 vs 00000 -> 4/5
    m = classification_metrics(Y, P, EMOTIONS)
    assert m["ova_accuracy"] == pytest.approx((3 / 5 + 4 / 5 + 4 / 5) / 3)
    # positive-class binary F1 per class = that class's F1: mean (0.5 + 0.8 + 0) / 3
    assert m["ova_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3) == pytest.approx(m["macro_f1"])
    # support-weighted binary F1: class 0 (2·1/2 + 3·2/3)/5 = 3/5; class 1 (2·0.8 + 3·0.8)/5 = 0.8;
    # class 2: positive F1 0 (support 1), negative TP 4 FP 1 FN 0 -> 8/9 (support 4): (4·8/9)/5 = 32/45
    assert m["ova_f1_weighted"] == pytest.approx((3 / 5 + 4 / 5 + 32 / 45) / 3)


def test_one_vs_all_perfect_and_empty():
    y = np.array([1, 2, 3, 3])
    assert one_vs_all(y, y) == {"ova_accuracy": 1.0, "ova_f1": 1.0, "ova_f1_weighted": 1.0}
    assert one_vs_all(np.array([], int), np.array([], int))["ova_accuracy"] == 0.0


def test_evaluate_dev_split(tmp_path, demo_utterances, demo_features, monkeypatch):
    """``--split dev`` scores the dev-selected checkpoint on dev (its dev F1 = the one the engine selected on),
    into its own folder; the test split's files are not written there."""
    from pipeline.train import train

    params = {"model": "dialogue_gru", "model_params": {"dialogue_gru": {"hidden": 16}},
              "train": dict(modalities="t", seed=0, epochs=4, batch_size=2, lr=3e-3, weight_decay=0.01,
                            grad_clip=1.0, patience=10)}
    ckpt = tmp_path / "model.pt"
    train(params, demo_utterances, ckpt, tmp_path / "live", demo_features)
    monkeypatch.setattr(sys, "argv", ["evaluate", "--split", "dev", "--checkpoint", str(ckpt), "--utterances",
                                      str(demo_utterances), "--reports", str(tmp_path / "dev")])
    load = dataset.load_corpus  # evaluate reads the features through pipeline.training.dataset: point it at the fixture's
    monkeypatch.setattr(dataset, "load_corpus", lambda u, mods, fd=None: load(u, mods, demo_features))
    ev.main()
    m = json.loads((tmp_path / "dev" / "metrics.json").read_text())
    assert m["split"] == "dev" and m["n"] == 12  # the demo's dev split: 12 labelled utterances
    saved = torch.load(ckpt, weights_only=True)
    assert m["weighted_f1"] == pytest.approx(saved["dev_weighted_f1"], abs=1e-9)
    assert {"ova_accuracy", "macro_precision", "weighted_recall_std"} <= set(m)
    assert ev.SPLIT_REPORTS == {"test": "reports", "dev": "reports/dev"}
