"""Regression task (issue #20): metrics against hand computation, every registered model's regression head
learning synthetic text-dependent targets through the engine, and train → evaluate on a regression table."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from modelkit import one_thread  # noqa: F401  (autouse)

from models import get_model, list_models, model_class
from pipeline.training.engine import Engine, EngineConfig, ccc_loss, predict, resolve_monitor
from pipeline.training.metrics import ccc, mosei_metrics, pearson_r, regression_metrics
from pipeline.schema import UTTERANCE_SCHEMA, feature_schema

DIMS = {"t": 12, "a": 6, "v": 5}
TARGETS = ["valence", "arousal"]


def test_regression_metrics_by_hand():
    y, p = np.array([1.0, 2, 3, 4]), np.array([2.0, 2, 4, 5])
    # ȳ = 2.5, p̄ = 3.25: Σ dy·dp = 5.5, Σ dy² = 5, Σ dp² = 6.75
    assert pearson_r(y, p) == pytest.approx(5.5 / np.sqrt(5 * 6.75))
    # cov 1.375, var y 1.25, var p 1.6875, (ȳ − p̄)² 0.5625 → 2.75 / 3.5
    assert ccc(y, p) == pytest.approx(2.75 / 3.5)
    m = regression_metrics(np.stack([y, -y], 1), np.stack([p, -y], 1), ["a", "b"])
    assert m["per_target"]["a"] == pytest.approx({"pearson_r": 0.946729, "mae": 0.75, "ccc": 2.75 / 3.5,
                                                  "mse": 0.75}, rel=1e-5)
    assert m["per_target"]["b"] == pytest.approx({"pearson_r": 1.0, "mae": 0.0, "ccc": 1.0, "mse": 0.0})
    assert m["pearson_r"] == pytest.approx((0.946729 + 1) / 2, rel=1e-5) and m["mae"] == pytest.approx(0.375)
    assert pearson_r(y, np.ones(4)) is None  # constant prediction: r undefined → null (issue #28)
    assert float(ccc_loss(torch.tensor(p)[:, None], torch.tensor(y)[:, None])) == pytest.approx(1 - 2.75 / 3.5)


def test_mosei_metrics_by_hand():
    y = np.array([-2.0, 0.0, 1.0, 0.4, -0.5])
    p = np.array([-1.0, 0.5, -0.2, 1.0, -3.0])
    m = mosei_metrics(y, p)
    assert m["acc2_has0"] == pytest.approx(4 / 5)  # y ≥ 0 vs p ≥ 0: only the third disagrees
    assert m["acc2_non0"] == pytest.approx(3 / 4)  # the 0 dropped; y > 0 vs p > 0
    assert m["acc7"] == pytest.approx(1 / 5)  # rounded classes: only 0 vs 0.5 → 0 agree
    assert m["mae"] == pytest.approx(np.abs(y - p).mean()) and m["corr"] == pytest.approx(pearson_r(y, p))


def test_monitor_resolves_to_pearson_r():
    assert resolve_monitor("weighted_f1", "regression") == "pearson_r"
    assert resolve_monitor("loss", "regression") == "loss"
    with pytest.raises(ValueError, match="regression metric"):
        resolve_monitor("pearson_r", "classification")


def synthetic(n=40, seed=0, K=2):
    """Dialogues whose targets are fixed functions of each utterance's text vector (plus a little noise)."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).standard_normal((DIMS["t"], K)) / np.sqrt(DIMS["t"])
    out = []
    for k in range(n):
        T = int(rng.integers(2, 6))
        feats = {m: rng.standard_normal((T, d)).astype(np.float32) for m, d in DIMS.items()}
        y = feats["t"] @ w + 0.05 * rng.standard_normal((T, K))
        out.append(dict(dialogue_id=f"d{k}", utterance_id=np.arange(T), label=np.full(T, -100),
                        speaker=rng.integers(0, 2, T), feats=feats, present={m: np.ones(T, bool) for m in DIMS},
                        target=y.astype(np.float32)))
    return out


REGRESSION_MODELS = [n for n in list_models()]


@pytest.mark.parametrize("name", REGRESSION_MODELS)
def test_every_model_learns_text_dependent_targets(name):
    mods = list(getattr(model_class(name), "required_modalities", ())) or ["t", "a", "v"]
    dims = {m: DIMS[m] for m in mods}
    cfg = {"hidden": 16}
    if "task" in __import__("inspect").signature(model_class(name)).parameters:
        cfg["task"] = "regression"
    if name == "summer":
        cfg.update(experts=2, dialoguernn_dim=16)  # the 256-d default DialogueRNN only costs time here
    torch.manual_seed(0)
    model = get_model(name, input_dims=dims, n_classes=len(TARGETS), **cfg)
    pick = lambda ds: [{**d, "feats": {m: d["feats"][m] for m in mods},  # noqa: E731
                        "present": {m: d["present"][m] for m in mods}} for d in ds]
    train_d, dev_d, test_d = pick(synthetic(48, 0)), pick(synthetic(12, 1)), pick(synthetic(16, 2))
    eng = Engine(model, EngineConfig(epochs=25, batch_size=4, lr=3e-3, patience=25), "cpu", None, [], TARGETS)
    res = eng.fit(train_d, dev_d)
    assert res["score_name"] == "pearson_r" and res["monitor"] == "pearson_r"
    assert res["dev_pearson_r"] == res["dev_score"] == max(h["dev"]["pearson_r"] for h in res["history"])
    model.load_state_dict(res["state_dict"])
    pred, y, _, _ = predict(model, test_d, 8, "cpu")
    assert pred.shape == y.shape == (sum(len(d["label"]) for d in test_d), 2)
    r = regression_metrics(y, pred, TARGETS)
    assert r["pearson_r"] > 0.5, (name, r)  # random predictions give r ≈ 0


def test_models_with_label_losses_have_a_regression_variant():
    """A model whose auxiliary losses read the labels must take ``task`` (build_model refuses it otherwise)."""
    import inspect

    for name in list_models():
        cls = model_class(name)
        if hasattr(cls, "aux_loss"):
            assert "task" in inspect.signature(cls).parameters, name


def write_regression_corpus(root, n_dialogues=(16, 5, 6), seed=0):
    """An utterance table with two targets that depend on the text vector, and a text feature table."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 2))
    rows, feats = [], []
    for split, n in zip(("train", "dev", "test"), n_dialogues):
        for d in range(n):
            for u in range(int(rng.integers(2, 5))):
                x = rng.standard_normal(8).astype(np.float32)
                y = x @ w
                rows.append(dict(dialogue_id=f"{split}_{d}", utterance_id=u, speaker="A", text="t", label=None,
                                 label_id=-1, split=split, media_path=None, start_s=None, end_s=None,
                                 audio_path=None, annot_duration_s=None, media_duration_s=None, status="no_media",
                                 error=None, source="synthetic", targets=[float(y[0]), float(y[1])]))
                feats.append(dict(dialogue_id=f"{split}_{d}", utterance_id=u, status="ok", error=None,
                                  feature=x.tolist()))
    rows[0]["targets"] = None  # an unlabelled row: skipped, counted
    table = pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA).replace_schema_metadata(
        {"labels": "[]", "targets": json.dumps(TARGETS), "provenance": json.dumps({"adapter": "manifest"})})
    pq.write_table(table, root / "utt.parquet")
    (root / "text").mkdir()
    pq.write_table(pa.Table.from_pylist(feats, schema=feature_schema(8, "synthetic")),
                   root / "text" / "part-00000.parquet")
    return root / "utt.parquet", {"t": str(root / "text")}


def test_train_and_evaluate_a_regression_table(tmp_path):
    from pipeline.evaluate import evaluate
    from pipeline.train import train

    utt, fdirs = write_regression_corpus(tmp_path)
    params = {"model": "dialogue_gru", "model_params": {"dialogue_gru": {"hidden": 16}},
              "train": dict(modalities="t", seeds=[0, 1], epochs=30, batch_size=4, lr=5e-3, patience=30,
                            regression_loss="mse")}
    res = train(params, str(utt), tmp_path / "model.pt", tmp_path / "live", fdirs)
    assert res["score_name"] == "pearson_r" and res["best_dev_pearson_r"] > 0.5
    seeds = json.loads((tmp_path / "live" / "seeds.json").read_text())
    assert seeds["task"] == "regression" and "dev_pearson_r_mean" in seeds
    ck = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ck["targets"] == TARGETS and "dev_pearson_r" in ck["runs"][0]
    m = evaluate(tmp_path / "model.pt", str(utt), tmp_path / "reports", feature_dirs=fdirs)
    assert m["task"] == "regression" and m["pearson_r"] > 0.5 and "pearson_r_std" in m
    assert set(m["per_target"]) == set(TARGETS) and set(m["seeds"]) == {"0", "1"}
    import pandas as pd

    pr = pd.read_csv(tmp_path / "reports" / "predictions.csv")
    assert list(pr.columns) == ["dialogue_id", "utterance_id", "valence_true", "valence_pred", "arousal_true",
                                "arousal_pred"]
    assert len(pr) == m["n"] and m["items"]["skipped_unlabelled"] == 0  # row 0 is a train row
    sel = m["seeds"][str(m["selected_seed"])]["per_target"]
    for t in TARGETS:  # the file's columns give back the metrics of the selected seed
        assert pearson_r(pr[f"{t}_true"], pr[f"{t}_pred"]) == pytest.approx(sel[t]["pearson_r"], abs=1e-4)
        assert np.abs(pr[f"{t}_true"] - pr[f"{t}_pred"]).mean() == pytest.approx(sel[t]["mae"], abs=1e-4)
    from PIL import Image

    with Image.open(tmp_path / "reports" / "scatter.png") as im:
        assert json.loads(im.text["merc:scatter"]) == {"targets": TARGETS, "n": m["n"]}
    with Image.open(tmp_path / "reports" / "confusion.png") as im:
        assert "regression run" in im.text["merc:message"]
    tsne = pd.read_csv(tmp_path / "reports" / "plots" / "tsne.csv")
    assert set(tsne.label) <= {"valence low", "valence mid", "valence high"}
    from pipeline.summary import summarize

    text = summarize(tmp_path / "reports")
    assert f"mean Pearson r {m['pearson_r']:.4f} ± {m['pearson_r_std']:.4f}" in text
    assert "targets: valence, arousal" in text and "dev mean Pearson r" in text
    assert "scatter.png" in text and "confusion.png" not in text


def test_ccc_loss_trains_and_classification_checkpoint_mismatch(tmp_path):
    from pipeline.errors import UserError
    from pipeline.evaluate import evaluate
    from pipeline.train import train

    utt, fdirs = write_regression_corpus(tmp_path)
    params = {"model": "concat_mlp", "model_params": {"concat_mlp": {"hidden": 16}},
              "train": dict(modalities="t", seed=0, epochs=20, batch_size=4, lr=5e-3, patience=20,
                            regression_loss="ccc")}
    res = train(params, str(utt), tmp_path / "model.pt", tmp_path / "live", fdirs)
    assert res["best_dev_pearson_r"] > 0.5
    # a regression checkpoint against a classification table: one line saying so
    t = pq.read_table(utt)
    meta = dict(t.schema.metadata)
    meta.pop(b"targets")
    pq.write_table(t.replace_schema_metadata(meta), tmp_path / "cls.parquet")
    with pytest.raises(UserError, match="trained for targets"):
        evaluate(tmp_path / "model.pt", str(tmp_path / "cls.parquet"), tmp_path / "r2", feature_dirs=fdirs)


def test_report_has_a_regression_section(tmp_path):
    """Two seeds of a MOSEI sentiment regression run → its corpus section with r, CCC, MAE and Table 4's columns."""
    from pipeline.report import write_report
    from pipeline.report.runs import Run

    def seed(s, r):
        return {"seed": s, "pearson_r": r, "ccc": r - 0.1, "mae": 0.8, "mse": 1.0, "acc2_has0": 0.7,
                "f1_has0": 0.69, "acc2_non0": 0.75, "f1_non0": 0.74, "acc7": 0.4, "corr": r, "dev_pearson_r": r,
                "per_target": {"sentiment": {"pearson_r": r, "mae": 0.8, "ccc": r - 0.1, "mse": 1.0}}}

    metrics = {"task": "regression", "pearson_r": 0.6, "dev_pearson_r": 0.6, "model": "dialogue_gru",
               "corpus": {"adapter": "mosei", "target": "sentiment", "labels": "", "targets": "sentiment"},
               "seeds": {"0": seed(0, 0.5), "1": seed(1, 0.7)}}
    params = {"model": "dialogue_gru", "prepare": {"dataset": "mosei", "target": "sentiment"},
              "train": {"modalities": "tav", "seeds": [0, 1]}}
    md = write_report([Run("exp-a", "abc", params, metrics)], params, tmp_path, analyses=False)
    table = md["model_comparison"]
    assert "CMU-MOSEI — sentiment, regression on sentiment" in table
    assert "0.600 ± 0.141" in table  # mean r over the two seeds ± sample std
    assert "Acc-2 (non-0)" in table and "75.00 ± 0.00" in table


def test_demo_regression_manifest_is_current():
    """data/demo/regression.csv is what data/demo/regression_manifest.py writes (the committed demo clips,
    one row per utterance, targets from its fixed per-emotion table)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "demo" / "regression_manifest.py"
    spec = importlib.util.spec_from_file_location("regression_manifest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.build()
    assert mod.OUT.read_text(encoding="utf-8") == text
    rows = text.splitlines()
    assert len(rows) == 1 + 59 and rows[0].endswith("valence,arousal")
    assert rows[2].endswith(f"{mod.VA['joy'][0]},{mod.VA['joy'][1]}")  # train dia0 utt1 is joy (demo CSV)
