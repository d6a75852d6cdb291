"""Context construction on hand-made dialogues; context-aware extraction and fine-tuning on tiny encoders."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.extraction.text_context import DialogueIndex, build_pair

#            d    u  speaker  text
DIALOGUES = [("d1", 0, "Ann", "a0"), ("d1", 1, "Bob", "b1"), ("d1", 2, "Ann", "a2"), ("d1", 3, "Bob", "b3"),
             ("d1", 4, "Ann", "a4"), ("d1", 5, "Ann", "a5"), ("d2", 0, "Ann", "x0"), ("d2", 1, "Cy", "x1")]


@pytest.fixture
def index():
    # shuffled on purpose: order comes from utterance_id, not from the table's row order
    rows = DIALOGUES[::-1]
    return DialogueIndex(*zip(*rows))


def test_utterance_mode(index):
    assert build_pair(index, "d1", 4, "utterance") == ("a4", None)


def test_dialoguetrm_same_speaker_window(index):
    # Ann at t=4, window 3 → turns 1..3 → only Ann's a2
    assert build_pair(index, "d1", 4, "dialoguetrm", window=3) == ("a4", "a2")
    assert build_pair(index, "d1", 4, "dialoguetrm", window=8) == ("a4", "a0 a2")
    assert build_pair(index, "d1", 0, "dialoguetrm") == ("a0", None)  # no past: no second segment
    # never looks ahead unless asked; never crosses into d2
    assert build_pair(index, "d1", 2, "dialoguetrm", window=8) == ("a2", "a0")
    assert build_pair(index, "d1", 2, "dialoguetrm", window=3, future=True) == ("a2", "a0 a4 a5")
    assert build_pair(index, "d2", 0, "dialoguetrm", future=True) == ("x0", None)


def test_speaker_mode_budget_keeps_recent_whole_turns(index):
    first, ctx = build_pair(index, "d1", 3, "speaker", budget=100)
    assert first == "Bob: b3" and ctx == "Ann: a0 Bob: b1 Ann: a2"
    # each turn costs 2 words here: a budget of 4 keeps the two most recent turns, whole
    assert build_pair(index, "d1", 3, "speaker", budget=4)[1] == "Bob: b1 Ann: a2"
    assert build_pair(index, "d1", 3, "speaker", budget=3)[1] == "Ann: a2"
    assert build_pair(index, "d1", 5, "speaker", budget=2, future=True)[1] == "Ann: a4"
    assert build_pair(index, "d2", 1, "speaker", future=True) == ("Cy: x1", "Ann: x0")
    with pytest.raises(ValueError, match="text.context"):
        build_pair(index, "d1", 0, "nope")


# Issue #27: a K = 14 same-speaker dialogue whose context does not fit max_length = 40
WORDS = ["red", "blue", "green", "black", "white", "brown", "pink", "gold", "gray", "cat", "dog", "cow", "pig", "hen"]
LONG = [("L", i, "A", f"{w} {w} {w}") for i, w in enumerate(WORDS)] + [("L", 14, "A", "the end")]


def test_length_limit_keeps_the_nearest_whole_turns():
    """Word counts by hand: target 2 + [CLS]/[SEP]/[SEP] 3 leave 35 of 40 tokens = 11 whole 3-word turns, the
    11 NEAREST (turns 3–13) in dialogue order; turns 0–2 (the oldest) are dropped, never a part of a turn."""
    index = DialogueIndex(*zip(*LONG))
    first, ctx = build_pair(index, "L", 14, "dialoguetrm", window=14, max_length=40)
    assert first == "the end" and ctx == " ".join(f"{w} {w} {w}" for w in WORDS[3:])
    assert build_pair(index, "L", 14, "dialoguetrm", window=14)[1].startswith("red red red")  # no limit: all 14
    # 36 leaves 31 tokens: 10 whole turns (30), not 10 turns and a third of one
    assert build_pair(index, "L", 14, "dialoguetrm", window=14, max_length=36)[1].split()[0] == "white"
    # the target alone fills the input: no context (the encoder then cuts the target itself)
    assert build_pair(index, "L", 14, "dialoguetrm", window=14, max_length=5) == ("the end", None)
    # speaker mode: the same limit with "A: " prefixes (4 words per turn, target "A: the end" = 3 words)
    _, ctx = build_pair(index, "L", 14, "speaker", budget=1000, max_length=40)
    assert ctx == " ".join(f"A: {w} {w} {w}" for w in WORDS[6:])  # 34 of 40 - 3 - 3 = 34: 8 turns (6–13)
    # future turns come after the past ones and only while room is left
    past3 = "green green green black black black white white white"  # turns 2–4 before turn 5 ("brown ×3")
    assert build_pair(index, "L", 5, "dialoguetrm", window=3, future=True, max_length=3 + 3 + 9)[1] == past3
    assert build_pair(index, "L", 5, "dialoguetrm", window=3, future=True, max_length=3 + 3 + 14)[1] == \
        past3 + " pink pink pink"  # then turn 6; turn 7 does not fit


def test_real_tokenizer_keeps_the_nearest_turns_in_both_routes(tmp_path):
    """The frozen route (``extract_text``) and the end-to-end route (``text_e2e``) with MiniLM's WordPiece: each
    colour word is one token, so 40 tokens hold turns 3–13 whole (38 tokens: a 12th turn would make 41) — the
    pair is exactly [CLS] target [SEP] those [SEP]."""
    from test_extract_text import tiny_encoder

    from pipeline.extraction.text import TextExtractor
    from pipeline.extraction.textenc import tokenize_pairs
    from pipeline.training import text_e2e

    path = tiny_encoder(tmp_path, "bert")
    index = DialogueIndex(*zip(*LONG))
    ex = TextExtractor(path, context="dialoguetrm", window=14, max_length=40, index=index, device="cpu")
    pair = ex.pair({"dialogue_id": "L", "utterance_id": 14, "text": "the end"})
    expected = ("the end", " ".join(f"{w} {w} {w}" for w in WORDS[3:]))
    assert pair == expected
    enc, _ = tokenize_pairs(ex.tok, [pair], 40)
    assert ex.tok.decode(enc["input_ids"][0]) == "[CLS] the end [SEP] " + expected[1] + " [SEP]"
    c = text_e2e.config({"text_encoder": {"model": path, "window": 14, "max_length": 40}})
    rows, ok = text_e2e.token_matrix(index, [("L", 14)], ex.tok, c)
    n = int(rows[0, 80:120].sum())
    assert ok[0] and n == 38 and ex.tok.decode(rows[0, :n].astype(int).tolist()) == \
        "[CLS] the end [SEP] " + expected[1] + " [SEP]"
    # an over-long context handed in directly is cut from its OLDEST end (the safety net)
    ids, _, _ = text_e2e.encode_pair(ex.tok, "the end", " ".join(f"{w} {w} {w}" for w in WORDS), 40)
    assert ex.tok.decode(ids).endswith("hen hen hen [SEP]") and len(ids) == 40


def test_segment_ids_and_target_pooling(tmp_path):
    from test_extract_text import tiny_encoder

    from pipeline.extraction.textenc import load_encoder, tokenize_pairs

    tok, _ = load_encoder(tiny_encoder(tmp_path, "bert"))
    enc, target = tokenize_pairs(tok, [("hello there", "some earlier context words")], max_length=64)
    tt = enc["token_type_ids"][0].tolist()
    n_first = len(tok.tokenize("hello there"))
    assert tt[: n_first + 2] == [0] * (n_first + 2) and set(tt[n_first + 2 :]) == {1}  # [CLS] a [SEP] | b [SEP]
    assert target[0].sum() == n_first  # pooling mask = the target's own tokens, no special tokens
    # context is truncated, never the target
    enc, target = tokenize_pairs(tok, [("hello there", "word " * 200)], max_length=16)
    assert enc["input_ids"].shape[1] == 16 and target[0].sum() == n_first


def utterance_table(tmp_path, texts_labels):
    rows = []
    for i, (d, u, spk, text, label, split) in enumerate(texts_labels):
        rows.append(dict(dialogue_id=d, utterance_id=u, speaker=spk, text=text, label=label,
                         label_id=["neutral", "joy"].index(label), split=split, media_path=None, start_s=None,
                         end_s=None, status="no_media", error=None, source="t"))
    from pipeline.schema import UTTERANCE_SCHEMA

    table = pa.Table.from_pylist([{k: r.get(k) for k in UTTERANCE_SCHEMA.names} for r in rows], schema=UTTERANCE_SCHEMA)
    table = table.replace_schema_metadata({"labels": json.dumps(["neutral", "joy"])})
    pq.write_table(table, tmp_path / "u.parquet")
    return tmp_path / "u.parquet"


def test_context_changes_vectors_but_not_utterance_mode(tmp_path, index):
    from test_extract_text import tiny_encoder

    from pipeline.extraction.text import TextExtractor

    path = tiny_encoder(tmp_path, "roberta")
    rows = [{"dialogue_id": "d1", "utterance_id": 4, "text": "a4"}]
    plain = TextExtractor(path).process(rows)[0]["feature"]
    ctx = TextExtractor(path, context="dialoguetrm", index=index).process(rows)[0]["feature"]
    alone = TextExtractor(path, context="dialoguetrm", index=index).process(
        [{"dialogue_id": "d1", "utterance_id": 0, "text": "a0"}])[0]["feature"]
    assert ctx.shape == plain.shape == alone.shape and not np.allclose(ctx, plain)
    with pytest.raises(ValueError, match="dialogue index"):
        TextExtractor(path, context="speaker")


def test_finetune_selects_on_dev_and_is_deterministic(tmp_path):
    from test_extract_text import tiny_encoder

    from pipeline.finetune_text import finetune

    data = []
    for k in range(12):
        split = "train" if k < 8 else "dev" if k < 10 else "test"
        data += [(f"d{k}", 0, "A", "what a lovely happy day", "joy", split),
                 (f"d{k}", 1, "B", "the report is on the desk", "neutral", split)]
    utt = utterance_table(tmp_path, data)
    p = dict(model=tiny_encoder(tmp_path, "bert"), pooling="mean", layers=2, context="speaker", window=4,
             budget=32, future=False, max_length=64,
             finetune=dict(enabled=True, out=str(tmp_path / "enc"), epochs=3, lr=3e-3, batch_size=4, seed=0))
    info = finetune(utt, p, tmp_path / "enc")
    # trivially separable: learnt within 3 epochs (2 epochs at lr 1e-3 were not enough for every random init)
    assert info["epoch"] in (0, 1, 2) and info["dev_weighted_f1"] == 1.0
    assert (tmp_path / "enc" / "model.safetensors").exists() and not (tmp_path / "enc.tmp").exists()
    info2 = finetune(utt, p, tmp_path / "enc2")
    from safetensors.numpy import load_file

    a, b = load_file(tmp_path / "enc" / "model.safetensors"), load_file(tmp_path / "enc2" / "model.safetensors")
    assert info == info2 and all(np.array_equal(a[k], b[k]) for k in a)
    # the fine-tuned encoder is loadable by the extractor, and differs from the base
    from pipeline.extraction.text import TextExtractor

    row = [{"dialogue_id": "d0", "utterance_id": 0, "text": "what a lovely happy day"}]
    tuned = TextExtractor(str(tmp_path / "enc")).process(row)[0]["feature"]
    base = TextExtractor(p["model"]).process(row)[0]["feature"]
    assert not np.allclose(tuned, base)
    # disabled: only a marker remains, no stale encoder
    off = finetune(utt, {**p, "finetune": {**p["finetune"], "enabled": False}}, tmp_path / "enc")
    assert off == {"enabled": False} and sorted(x.name for x in (tmp_path / "enc").iterdir()) == ["DISABLED.json"]


def test_grouped_order_is_a_permutation_with_less_padding():
    import numpy as np

    from pipeline.finetune_text import _grouped_order

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    order = _grouped_order(lengths, 16, np.random.default_rng(1), group=10)
    assert sorted(order.tolist()) == list(range(1000))  # every example once
    pad = lambda o: sum(int(lengths[o[s:s + 16]].max() * len(o[s:s + 16]) - lengths[o[s:s + 16]].sum())  # noqa: E731
                        for s in range(0, len(o), 16))
    assert pad(order) < 0.5 * pad(np.random.default_rng(1).permutation(1000))
    again = _grouped_order(lengths, 16, np.random.default_rng(1), group=10)
    assert (order == again).all()  # same seed, same order
