"""Feature pickles: the restricted unpickler, the DialogueRNN/MMGCN and Ada2I layouts, and training on them."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.adapters.features import IEMOCAP6, FeaturePickleError, synthetic
from pipeline.extraction.imported import imported_or
from pipeline.prepare import prepare
from pipeline.extraction.runners import run_sharded
from pipeline.extraction.safe_pickle import UnsafePickleError, safe_load
from pipeline.schema import EMOTIONS


class Boom:
    """Unpickling this runs a shell command (what a crafted feature file does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"text": {"d": [np.zeros(3)]}, "x": Boom(marker)}))
    with pytest.raises(UnsafePickleError, match="refused to load posix.system"):
        safe_load(bad)
    assert not marker.exists()
    evil = tmp_path / "eval.pkl"
    evil.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")  # a hand-written protocol-0 call of eval
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load(evil)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_loads_numpy_and_containers(tmp_path, protocol):
    from collections import OrderedDict

    obj = (OrderedDict(a=[np.arange(3, dtype=np.float32)]), {"s": {1, 2}}, [np.float64(2.5), "x", b"y"],
           np.zeros((2, 2), dtype=np.int64))
    p = tmp_path / "ok.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = safe_load(p)
    assert got[0]["a"][0].dtype == np.float32 and got[0]["a"][0].tolist() == [0, 1, 2]
    assert got[1] == {"s": {1, 2}} and got[2][0] == 2.5 and got[3].shape == (2, 2)


def write_dialoguernn(path, visual=True, extra=False, onehot=False, protocol=2):
    d, train, test = synthetic()
    if onehot:  # MELD: one-hot speaker vectors over 9 speakers
        d["spk"] = {k: [np.eye(9)[0 if s == "M" else 4].tolist() for s in v] for k, v in d["spk"].items()}
    items = [d["ids"], d["spk"], d["lab"], d["t"], d["a"]] + ([d["v"]] if visual else []) + \
            [d["sent"], set(train), set(test)] + ([{k: [0] * len(v) for k, v in d["lab"].items()}] if extra else [])
    path.write_bytes(pickle.dumps(tuple(items), protocol=protocol))
    return d, train, test


def test_dialoguernn_iemocap_layout(tmp_path):
    pkl = tmp_path / "IEMOCAP_features.pkl"
    d, train, test = write_dialoguernn(pkl)
    t = prepare("features", pkl, tmp_path / "u.parquet", {"dev_fraction": 0.2, "seed": 0})
    rows = t.to_pylist()
    assert len(rows) == sum(len(v) for v in d["lab"].values())
    assert json.loads(t.schema.metadata[b"labels"]) == IEMOCAP6
    by_split = {s: {r["dialogue_id"] for r in rows if r["split"] == s} for s in ("train", "dev", "test")}
    assert by_split["test"] == set(test)                      # the pickle's test ids, untouched
    assert by_split["train"] | by_split["dev"] == set(train) and len(by_split["dev"]) == round(0.2 * len(train))
    r = next(r for r in rows if r["dialogue_id"] == test[0] and r["utterance_id"] == 1)
    assert r["speaker"] == d["spk"][test[0]][1] and r["text"] == d["sent"][test[0]][1]
    assert r["label"] == IEMOCAP6[d["lab"][test[0]][1]] and r["status"] == "ok" and r["media_path"] is None
    prov = json.loads(t.schema.metadata[b"provenance"])
    assert prov["counts"]["features_dims"] == {"t": 10, "a": 6, "v": 4} and len(prov["counts"]["features_sha256"]) == 64


def test_meld_layouts_and_label_names(tmp_path):
    pkl = tmp_path / "MELD_features_raw1.pkl"
    write_dialoguernn(pkl, visual=True, extra=True, onehot=True, protocol=4)
    t = prepare("features", pkl, tmp_path / "u.parquet", {"labels": list(EMOTIONS[:6])})
    assert {r["speaker"] for r in t.to_pylist()} == {"speaker0", "speaker4"}
    novis = tmp_path / "MELD_features_raw.pkl"  # DialogueRNN's MELD file: no visual item
    write_dialoguernn(novis, visual=False, extra=True)
    prov = json.loads(prepare("features", novis, tmp_path / "u2.parquet", {}).schema.metadata[b"provenance"])
    assert prov["counts"]["features_dims"] == {"t": 10, "a": 6}


def test_ada2i_layout_with_validation_and_label_sets(tmp_path):
    d, train, test = synthetic(n_classes=7)
    obj = {"trainVid": train[:-3], "valVid": train[-3:], "testVid": test, "speaker": d["spk"],
           "label": {"2class": {k: [int(x > 2) for x in v] for k, v in d["lab"].items()}, "7class": d["lab"]},
           "text": d["t"], "audio": d["a"], "visual": d["v"], "sentence": d["sent"]}
    pkl = tmp_path / "mosei_data.pkl"
    pkl.write_bytes(pickle.dumps(obj))
    with pytest.raises(FeaturePickleError, match="features_label_key"):
        prepare("features", pkl, tmp_path / "u.parquet", {})
    t = prepare("features", pkl, tmp_path / "u.parquet", {"features_label_key": "7class"})
    dev = {r["dialogue_id"] for r in t.to_pylist() if r["split"] == "dev"}
    assert dev == set(train[-3:])  # the pickle's own validation ids
    assert json.loads(t.schema.metadata[b"labels"]) == EMOTIONS


def test_inconsistent_pickle_is_named(tmp_path):
    d, train, test = synthetic()
    d["a"][train[0]] = d["a"][train[0]][:-1]  # one vector short
    pkl = tmp_path / "bad.pkl"
    pkl.write_bytes(pickle.dumps((d["ids"], d["spk"], d["lab"], d["t"], d["a"], d["v"], d["sent"], train, test)))
    with pytest.raises(FeaturePickleError, match=f"dialogue {train[0]}: audio vectors have shape"):
        prepare("features", pkl, tmp_path / "u.parquet", {})


@pytest.mark.parametrize("model", ["dialogue_gru", "ada2i"])
def test_imported_features_train(tmp_path, model):
    """Prepare → each extract stage serves the pickle's vectors → a model trains on t+a+v and learns the text."""
    from pipeline.common import load_params
    from pipeline.train import train

    pkl = tmp_path / "IEMOCAP_features.pkl"
    d, train_ids, test = write_dialoguernn(pkl)
    d["t"][test[0]][0, 0] = np.nan  # one non-finite vector: an error row, never a NaN feature
    pkl.write_bytes(pickle.dumps((d["ids"], d["spk"], d["lab"], d["t"], d["a"], d["v"], d["sent"], set(train_ids),
                                  set(test))))
    utt = tmp_path / "u.parquet"
    prepare("features", pkl, utt, {"dev_fraction": 0.2})
    dirs = {}
    for m in "tav":
        ex, cfg = imported_or(utt, m, lambda: pytest.fail("the stage's own extractor must not be built"), {})
        assert cfg["imported"]
        dirs[m] = run_sharded(ex, utt, tmp_path / m, config=cfg, shard_size=32)
    text = pq.read_table(dirs["t"]).to_pylist()
    bad = [r for r in text if r["status"] != "ok"]
    assert len(bad) == 1 and "non-finite text vector" in bad[0]["error"] and test[0] in bad[0]["error"]
    vis = pq.read_table(dirs["v"])
    assert vis.schema.field("feature").type.list_size == 4
    params = load_params()
    params["model"] = model
    if model == "ada2i":  # CPU-test sizes (the official widths take seconds per epoch here)
        # feature_reduction mean (the official L1Loss): Eq. 12's printed sum makes L_feature ≈ d·M times larger,
        # and 12 epochs at these sizes then reach only ~0.24 dev weighted F1 (measured)
        params["model_params"]["ada2i"].update(hidden=32, ff_dim=64, encoder_dim={"t": None, "a": None, "v": None},
                                               dropout=0.1, feature_reduction="mean")
    params["train"] = {**params["train"], "modalities": "tav", "epochs": 12, "patience": 12, "seeds": [0]}
    res = train(params, str(utt), str(tmp_path / "model.pt"), str(tmp_path / "live"), dirs)
    # the text vectors carry the label: far above chance (≈ 0.17 weighted F1 for 6 balanced classes);
    # dialogue_gru reaches ~0.9, Ada2I (paper equations, 12 epochs at these sizes) ~0.44
    assert res["best_dev_weighted_f1"] > 0.35


def test_stage_without_pickle_keeps_its_extractor(demo_utterances):
    sentinel = object()
    assert imported_or(demo_utterances, "t", sentinel, {"k": 1}) == (sentinel, {"k": 1})
