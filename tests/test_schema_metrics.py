import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.common import atomic_write_table, read_utterances
from pipeline.training.metrics import classification_metrics
from pipeline.schema import EMOTIONS, UTTERANCE_SCHEMA, feature_matrix, feature_schema, label_names, validate


def test_utterance_schema_round_trip(tmp_path):
    rows = [dict(dialogue_id="train_dia0", utterance_id=0, speaker="A", text="hi", label="joy", label_id=4,
                 split="train", media_path="rec.avi", start_s=1.5, end_s=2.25, audio_path=None,
                 annot_duration_s=0.75, media_duration_s=None, status="ok", error=None, source="test",
                 targets=None)]
    t = pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA)
    atomic_write_table(t.replace_schema_metadata({"labels": json.dumps(["neg", "pos"])}), tmp_path / "u.parquet")
    back = read_utterances(tmp_path / "u.parquet")
    assert back.schema.equals(UTTERANCE_SCHEMA)
    assert back.to_pylist() == rows
    # a table written before regression targets existed reads back with a null targets column
    old = t.drop(["targets"]).replace_schema_metadata({"labels": json.dumps(["neg", "pos"])})
    atomic_write_table(old, tmp_path / "old.parquet")
    assert read_utterances(tmp_path / "old.parquet").to_pylist() == rows
    assert label_names(back.schema) == ["neg", "pos"]  # the label set survives validation
    assert label_names(t.schema) == EMOTIONS  # tables without one are MELD's
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_validate_names_missing_columns():
    with pytest.raises(ValueError, match="label_id"):
        validate(pa.table({"dialogue_id": ["a"]}), UTTERANCE_SCHEMA)


def test_feature_schema_and_matrix(tmp_path):
    s = feature_schema(3, "demo", [pa.field("face_found", pa.bool_())])
    t = pa.table({"dialogue_id": ["d", "d"], "utterance_id": [0, 1], "status": ["ok", "error"],
                  "error": [None, "bad clip"], "feature": [np.arange(3, dtype=np.float32), np.zeros(3, np.float32)],
                  "face_found": [True, False]}, schema=s)
    pq.write_table(t, tmp_path / "f.parquet")
    back = pq.read_table(tmp_path / "f.parquet")
    assert back.schema.metadata[b"dim"] == b"3"
    m = feature_matrix(back)
    assert m.dtype == np.float32 and m.shape == (2, 3)
    np.testing.assert_array_equal(m[0], [0, 1, 2])


def test_metrics_hand_computed():
    # 3 classes used out of 7: y_true = [0,0,1,1,2], y_pred = [0,1,1,1,0]
    y, p = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    m = classification_metrics(y, p, EMOTIONS)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # class 0: P=1/2 R=1/2 F=1/2; class 1: P=2/3 R=1 F=0.8; class 2: P=0 R=0 F=0
    assert m["per_class"]["neutral"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["surprise"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["surprise"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["fear"]["support"] == 1 and m["per_class"]["fear"]["f1"] == 0
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 1 * 0) / 5)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3)
