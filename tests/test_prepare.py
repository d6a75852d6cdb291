import json

import pyarrow.compute as pc
import pytest

from conftest import SHARED
from pipeline.common import read_utterances
from pipeline.prepare import prepare
from pipeline.schema import EMOTIONS, UTTERANCE_SCHEMA


def test_demo_table(demo_utterances):
    t = read_utterances(demo_utterances)
    assert t.schema.equals(UTTERANCE_SCHEMA)
    df = t.to_pandas()
    assert len(df) >= 24 and df.dialogue_id.nunique() >= 4
    assert set(df.split) == {"train", "dev", "test"}
    for e in EMOTIONS:  # every emotion at least twice
        assert (df.label == e).sum() >= 2, e
    assert not df.duplicated(["dialogue_id", "utterance_id"]).any()
    # MELD ids restart per split: keys are made unique by the split prefix.
    assert {"train_dia0", "dev_dia0", "test_dia0"} <= set(df.dialogue_id)
    missing = df[df.status == "missing_media"]
    assert list(zip(missing.dialogue_id, missing.utterance_id)) == [("test_dia1", 3)]
    assert "not found" in missing.error.iloc[0]
    assert df.media_path.str.startswith("data/demo/").all()  # relative: same in every clone
    # utterances keep dialogue order
    d0 = df[df.dialogue_id == "train_dia0"].utterance_id.tolist()
    assert d0 == sorted(d0)


@pytest.mark.skipif(not (SHARED / "meld").exists(), reason="../shared/data/meld absent")
def test_meld_text_only_official_counts(tmp_path):
    t = prepare("meld", SHARED / "meld", tmp_path / "u.parquet")
    df = t.to_pandas()
    counts = df.groupby("split").agg(n=("utterance_id", "size"), d=("dialogue_id", "nunique"))
    assert counts.loc["train"].tolist() == [9989, 1038]
    assert counts.loc["dev"].tolist() == [1109, 114]
    assert counts.loc["test"].tolist() == [2610, 280]
    assert (df.status == "no_media").all() and df.media_path.isna().all()
    assert (df.label_id >= 0).all()
    assert pc.sum(pc.equal(t.column("label"), "neutral")).as_py() == 6436


def test_unknown_dataset_and_root(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare("nope", tmp_path, tmp_path / "u.parquet")
    with pytest.raises(FileNotFoundError, match="prepare.root"):
        prepare("meld", tmp_path / "absent", tmp_path / "u.parquet")


def test_demo_params_are_the_defaults(demo_utterances, tmp_path):
    """params.yaml's prepare section gives the demo table the stage fixture makes with the code defaults."""
    from pipeline.common import load_params

    p = load_params("prepare")
    t = prepare(p["dataset"], p["root"], tmp_path / "u.parquet", p)
    fixture = read_utterances(demo_utterances)
    assert t.equals(fixture)  # the same rows, statuses, errors and sources whether root is absolute or not
    assert json.loads(t.schema.metadata[b"provenance"])["params"] == json.loads(
        fixture.schema.metadata[b"provenance"])["params"]
