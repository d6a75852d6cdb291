"""The sharded runner: resume after a crash, fingerprint invalidation, atomic shards."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.common import read_features
from pipeline.extraction.runners import run_sharded
from pipeline.extraction.shards import FeatureExtractor
from pipeline.schema import UTTERANCE_SCHEMA, feature_matrix


class Counting(FeatureExtractor):
    name, dim = "count", 2
    extra_fields = [pa.field("seen", pa.int32())]

    def __init__(self, crash_on=None):
        self.calls, self.crash_on = [], crash_on

    def process(self, rows):
        out = []
        for r in rows:
            if r["utterance_id"] == self.crash_on:
                raise KeyboardInterrupt("simulated crash")
            self.calls.append(r["utterance_id"])
            bad = r["utterance_id"] % 5 == 4
            out.append(dict(status="error" if bad else "ok", error="planted" if bad else None,
                            feature=None if bad else np.full(2, r["utterance_id"], np.float32),
                            seen=r["utterance_id"]))
        return out


@pytest.fixture
def table(tmp_path):
    rows = [dict(dialogue_id="d", utterance_id=i, speaker="A", text="x", label=None, label_id=-1, split="train",
                 media_path=None, start_s=None, end_s=None, status="ok", error=None, source="t") for i in range(10)]
    path = tmp_path / "u.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), path)
    return path


def test_resume_after_crash_recomputes_only_missing_shards(tmp_path, table):
    out = tmp_path / "feat"
    with pytest.raises(KeyboardInterrupt):
        run_sharded(Counting(crash_on=7), table, out, config={"a": 1}, shard_size=3)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert not list(out.glob(".*tmp"))
    ex = Counting()
    run_sharded(ex, table, out, config={"a": 1}, shard_size=3)
    assert ex.calls == [6, 7, 8, 9]  # shards 0 and 1 were kept
    t = read_features(out)
    assert t.column("utterance_id").to_pylist() == list(range(10))
    assert t.column("status").to_pylist().count("error") == 2
    m = feature_matrix(t)
    np.testing.assert_array_equal(m[4], [0, 0])  # error rows carry zeros
    np.testing.assert_array_equal(m[8], [8, 8])


def test_changed_config_recomputes_everything(tmp_path, table):
    out = tmp_path / "feat"
    run_sharded(Counting(), table, out, config={"a": 1}, shard_size=4)
    ex = Counting()
    run_sharded(ex, table, out, config={"a": 2}, shard_size=4)
    assert ex.calls == list(range(10))


def test_changed_shard_size_starts_over(tmp_path, table):
    """Shard k is rows [k·size, (k+1)·size): old shards of another size would overlap the new plan."""
    out = tmp_path / "feat"
    run_sharded(Counting(), table, out, config={"a": 1}, shard_size=4)
    (out / "part-00002.parquet").unlink()  # an interrupted run
    ex = Counting()
    run_sharded(ex, table, out, config={"a": 1}, shard_size=3)
    assert ex.calls == list(range(10))
    assert read_features(out).column("utterance_id").to_pylist() == list(range(10))


def test_shards_follow_the_row_plan_across_row_groups(tmp_path, table):
    """Shard k = rows [k·size, (k+1)·size) even when the table's row groups cut elsewhere (Ray uses the same plan)."""
    small = tmp_path / "groups.parquet"
    pq.write_table(pq.read_table(table), small, row_group_size=4)
    out = run_sharded(Counting(), small, tmp_path / "feat", config={}, shard_size=3)
    parts = sorted(out.glob("part-*.parquet"))
    assert [pq.read_table(p).column("utterance_id").to_pylist() for p in parts] == \
        [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_atomic_torch_save_leaves_no_temp_file(tmp_path):
    import torch

    from pipeline.common import atomic_torch_save

    out = tmp_path / "sub" / "model.pt"
    atomic_torch_save({"w": torch.arange(3)}, out)
    atomic_torch_save({"w": torch.arange(4)}, out)  # replaces, never appends
    assert torch.load(out)["w"].tolist() == [0, 1, 2, 3]
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]
