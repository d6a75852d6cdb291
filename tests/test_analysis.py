"""Analyses: emotion shift against a hand computation, t-SNE files, representations of every model, FLOPs."""
import numpy as np
import pandas as pd
import pytest
import torch

from modelkit import one_thread, toy_dialogues  # noqa: F401  (one_thread: autouse)

from models import get_model, list_models
from pipeline.analysis import (_classifier, count_flops, efficiency, efficiency_table, emotion_shift, representations,
                               shift_flags, write_tsne)
from pipeline.training.engine import predict

DIMS = {"t": 16, "a": 12, "v": 8}

# Two speakers. d1: A neu | B neu | B joy | A joy | B ang | A ang | A ang ; d2: A sad | B (unlabelled) | A sad
DIALOGUE = pd.DataFrame({
    "dialogue_id": ["d1"] * 7 + ["d2"] * 3,
    "utterance_id": list(range(7)) + list(range(3)),
    "speaker": list("ABBABAA") + list("ABA"),
    "label": ["neutral", "neutral", "joy", "joy", "anger", "anger", "anger", "sadness", None, "sadness"],
})
PRED = pd.DataFrame({"dialogue_id": ["d1"] * 7 + ["d2"] * 2, "utterance_id": list(range(7)) + [0, 2],
                     "predicted": ["neutral", "joy", "joy", "neutral", "anger", "anger", "joy", "sadness", "sadness"]})


def test_shift_flags_by_hand():
    f = shift_flags(DIALOGUE).set_index(["dialogue_id", "utterance_id"])
    # d1: 0 first; 1 B after A, same label → no shift; 2 B's previous neutral → intra; 3 A's previous neutral →
    # intra (preceding B joy = same label: not inter); 4 B anger after A joy → inter, and B's previous joy → intra;
    # 5 A's previous joy → intra; 6 same label as A's previous → no shift
    assert f.loc["d1"].intra_shift.tolist() == [False, False, True, True, True, True, False]
    assert f.loc["d1"].inter_shift.tolist() == [False, False, False, False, True, False, False]
    assert f.loc["d1"].no_shift.tolist() == [False, True, False, False, False, False, True]
    # d2: the unlabelled turn is skipped; the third is A's sadness again → no shift
    assert f.loc["d2"].no_shift.tolist() == [False, False, True]
    assert not f.loc["d2"].intra_shift.any() and not f.loc["d2"].inter_shift.any()


def test_emotion_shift_metrics_by_hand():
    s = emotion_shift(DIALOGUE, PRED)
    assert s["all"]["n"] == 9 and s["all"]["accuracy"] == pytest.approx(6 / 9)
    assert s["no_shift"]["n"] == 3 and s["no_shift"]["accuracy"] == pytest.approx(1 / 3)
    assert s["intra_shift"]["n"] == 4 and s["intra_shift"]["accuracy"] == pytest.approx(3 / 4)
    assert s["inter_shift"]["n"] == 1 and s["inter_shift"]["accuracy"] == 1.0
    assert s["intra_shift"]["per_dialogue"] == pytest.approx(2.0)  # 4 shifts over the 2 dialogues
    # intra: gold joy joy anger anger, predicted joy neutral anger anger → F1 joy 2/3, anger 1 (weights 2, 2)
    assert s["intra_shift"]["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 1) / 4)


@pytest.mark.parametrize("name", list_models())
def test_representations_are_what_the_classifier_reads(name):
    torch.manual_seed(0)
    model = get_model(name, input_dims=DIMS, n_classes=7, hidden=16).eval()
    data = toy_dialogues(DIMS, n=4)
    x, keys = representations(model, data)
    n = sum(len(d["label"]) for d in data)
    assert x.shape[0] == n == len(keys) and x.ndim == 2 and np.isfinite(x).all()
    assert keys[:2] == [("d0", 0), ("d0", 1)]
    _, _, logits, _ = predict(model, data, 16, "cpu")
    if name == "ada2i":  # AMW: logits = Σ_m norm(h_m) · norm(W_m)ᵀ + b, rep = [norm(h_t); norm(h_a); norm(h_v)]
        w = torch.cat([model._normalized_weight(m) for m in model.modalities], 1)  # Eq. 8's amw_norm
        with torch.no_grad():
            again = torch.from_numpy(x) @ w.T + model.fc.bias
            if model.mlp is not None:  # paper_equations: Eq. 9's MLP head reads the AMW scores
                again = model.mlp(again)
    else:
        with torch.no_grad():
            again = _classifier(model)(torch.from_numpy(x))
    torch.testing.assert_close(again, logits, rtol=1e-4, atol=1e-4)


def test_tsne_files_one_point_per_test_utterance(tmp_path):
    torch.manual_seed(0)
    model = get_model("dialogue_gru", input_dims=DIMS, n_classes=7, hidden=16)
    data = toy_dialogues(DIMS, n=6)
    labels = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    write_tsne(model, data, labels, tmp_path)
    df = pd.read_csv(tmp_path / "plots" / "tsne.csv")
    n = sum(len(d["label"]) for d in data)
    assert len(df) == n and list(df.columns) == ["x", "y", "label", "dialogue_id", "utterance_id"]
    assert np.isfinite(df[["x", "y"]].to_numpy()).all() and df[["x", "y"]].std().min() > 0
    assert df.label.tolist() == [labels[i] for d in data for i in d["label"]]
    assert (tmp_path / "tsne.png").stat().st_size > 1000


def test_tsne_of_a_model_without_classifier_is_an_empty_table(tmp_path):
    class NoHead(torch.nn.Module):
        def forward(self, feats, present, mask, speaker):
            return feats["t"][..., :7]

    write_tsne(NoHead(), toy_dialogues(DIMS, n=2), [str(i) for i in range(7)], tmp_path)
    assert pd.read_csv(tmp_path / "plots" / "tsne.csv").empty and (tmp_path / "tsne.png").exists()


def test_flops_of_a_linear_match_the_hand_count():
    lin = torch.nn.Linear(16, 7)
    x = torch.randn(5, 16)
    assert count_flops(lin, x) == 2 * 5 * 16 * 7  # one multiply-add = 2 FLOPs per weight per row


def test_flops_of_recurrent_and_attention_layers():
    x = torch.randn(2, 5, 16)
    # GRU by torch's formula: per step 3 gates × 2 × (in·h + h·h); the LSTM by ours with 4 gates, two directions
    assert count_flops(torch.nn.GRU(16, 8, batch_first=True), x) == 2 * 5 * 3 * 2 * (16 * 8 + 8 * 8)
    assert count_flops(torch.nn.LSTM(16, 8, batch_first=True, bidirectional=True), x) == 2 * 5 * 2 * 4 * 2 * (16 * 8 + 8 * 8)
    # attention in eval mode (PyTorch's fused fast path) is still counted: 4 projections + QK^T + AV
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    assert count_flops(mha, x, x, x) == 2 * (4 * 2 * 5 * 16 * 16 + 2 * 2 * 5 * 5 * 16)


def test_efficiency_row_and_table():
    row = efficiency("concat_mlp", {"hidden": 16}, DIMS, 7, {"epochs": 1, "batch_size": 2}, dialogue_len=4,
                     epoch_dialogues=3, repeats=2)
    model = get_model("concat_mlp", input_dims=DIMS, n_classes=7, hidden=16)
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["flops_per_dialogue"] > 2 * 4 * 16 * 7 and row["latency_ms_per_dialogue"] > 0
    assert row["train_s_per_epoch"] > 0
    md = efficiency_table([row])
    assert md.splitlines()[2].startswith(f"| concat_mlp | {row['params']:,} |")


def test_evaluate_writes_corpus_and_tsne_of_every_test_utterance(tmp_path, demo_utterances, demo_features):
    """The evaluate stage on the demo: the corpus block from the table's provenance, t-SNE CSV + PNG."""
    import json

    from pipeline.evaluate import evaluate
    from pipeline.train import train

    p = {"model": "dialogue_gru", "model_params": {"dialogue_gru": {"hidden": 16}},
         "train": dict(modalities=["t"], seed=0, epochs=2, batch_size=2, lr=3e-3, weight_decay=0.0, grad_clip=1.0,
                       patience=5, weighted_loss=False)}
    train(p, demo_utterances, tmp_path / "m.pt", tmp_path / "live", demo_features)
    evaluate(tmp_path / "m.pt", demo_utterances, tmp_path / "r", feature_dirs=demo_features)
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["corpus"] == {"adapter": "demo", "target": "emotion", "labels": ",".join(
        ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]), "targets": "", "source": ""}
    tsne = pd.read_csv(tmp_path / "r" / "plots" / "tsne.csv")
    pred = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert len(tsne) == len(pred) == m["n"]
    assert list(zip(tsne.dialogue_id, tsne.utterance_id)) == list(zip(pred.dialogue_id, pred.utterance_id))
    assert tsne.label.tolist() == pred.actual.tolist()
    assert (tmp_path / "r" / "tsne.png").stat().st_size > 1000
