"""Issue #22 items 1, 3, 6, 9: non-finite values, code-free checkpoints, one-line user errors, the run summary."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn
import yaml

from conftest import DEMO, ROOT
from modelkit import one_thread, toy_dialogues  # noqa: F401  (one_thread: autouse)
from pipeline.training.dataset import NONFINITE, STD_FLOOR, Z_CLIP, Standardizer, load_corpus, train_warnings
from pipeline.training.engine import Engine, EngineConfig
from pipeline.errors import MissingFileError, NonFiniteError, UserError
from pipeline.schema import FEATURE_ABS_LIMIT, feature_matrix, nonfinite_error, nonfinite_rows

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
       "PYTHONPATH": str(ROOT)}


def tiny_params(model="concat_mlp", modalities="tav", **train):
    return {"model": model, "model_params": {model: {"hidden": 16}},
            "train": dict(modalities=modalities, seed=0, epochs=2, batch_size=4, lr=3e-3, weight_decay=0.01,
                          grad_clip=1.0, patience=10, weighted_loss=True, **train)}


# ----------------------------------------------------------------- 1. non-finite values
def plant(src: Path, dst: Path, edits: dict[tuple[str, int], float]) -> Path:
    """A copy of feature table ``src`` whose rows ``edits`` keys get ``value`` in dimension 0 (status stays ok)."""
    shutil.copytree(src, dst)
    for shard in sorted(dst.glob("part-*.parquet")):
        t = pq.read_table(shard)
        mat = feature_matrix(t).copy()
        keys = list(zip(t.column("dialogue_id").to_pylist(), t.column("utterance_id").to_pylist()))
        for r, k in enumerate(keys):
            if k in edits:
                mat[r, 0] = edits[k]
        col = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), pa.float32()), mat.shape[1])
        pq.write_table(t.set_column(t.schema.get_field_index("feature"), t.schema.field("feature"), col), shard)
    return dst


def ok_key(features: Path, utterances: Path, split: str, nth: int = 0) -> tuple[str, int]:
    """The ``nth`` labelled ``split`` utterance whose feature row in ``features`` is ok."""
    u = pq.read_table(utterances).to_pandas()
    u = u[(u.split == split) & (u.label_id >= 0)]
    f = pa.concat_tables([pq.read_table(s) for s in sorted(features.glob("part-*.parquet"))]).to_pandas()
    ok = set(zip(f.dialogue_id[f.status == "ok"], f.utterance_id[f.status == "ok"]))
    keys = [k for k in zip(u.dialogue_id, u.utterance_id) if k in ok]
    return keys[nth]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, demo_utterances, demo_features):
    """Demo features with NaN, ±inf and 1e38 planted in ok rows of train, dev and test."""
    base = tmp_path_factory.mktemp("planted")
    u = demo_utterances
    keys = {"t_train": ok_key(demo_features["t"], u, "train"), "t_test": ok_key(demo_features["t"], u, "test"),
            "a_train": ok_key(demo_features["a"], u, "train"), "a_test": ok_key(demo_features["a"], u, "test"),
            "v_dev": ok_key(demo_features["v"], u, "dev")}
    dirs = {"t": plant(demo_features["t"], base / "t", {keys["t_train"]: np.nan, keys["t_test"]: 1e38}),
            "a": plant(demo_features["a"], base / "a", {keys["a_train"]: 1e38, keys["a_test"]: -np.inf}),
            "v": plant(demo_features["v"], base / "v", {keys["v_dev"]: np.inf})}
    return dirs, keys


def test_schema_flags_nan_inf_and_huge_rows():
    m = np.zeros((5, 3), np.float32)
    m[1, 2], m[2, 0], m[3, 1], m[4, 1] = np.nan, -np.inf, 1e38, FEATURE_ABS_LIMIT  # the limit itself is usable
    assert nonfinite_rows(m).tolist() == [False, True, True, True, False]
    assert nonfinite_error("x", m[0]) is None
    assert nonfinite_error("x", np.array([np.nan, np.inf, 1.0])) == \
        f"x returned 2 non-finite values (NaN/inf or |x| > {FEATURE_ABS_LIMIT:.0e})"


def test_nonfinite_rows_are_absent_and_counted(planted, demo_utterances, demo_features):
    dirs, keys = planted
    clean = load_corpus(demo_utterances, ["t", "a", "v"], demo_features)
    corpus = load_corpus(demo_utterances, ["t", "a", "v"], dirs)
    idx = {k: i for i, k in enumerate(zip(corpus.utterances.column("dialogue_id").to_pylist(),
                                          corpus.utterances.column("utterance_id").to_pylist()))}
    for name, key in keys.items():
        m, split = name.split("_")
        assert clean.present[m][idx[key]] and not corpus.present[m][idx[key]], name
        assert not corpus.feats[m][idx[key]].any()  # an absent row carries zeros, not the planted value
        assert corpus.status_counts[m][split][NONFINITE] == 1, name
        assert corpus.status_counts[m][split]["ok"] == clean.status_counts[m][split]["ok"] - 1
    assert all(np.isfinite(x).all() for x in corpus.feats.values())
    # everything else is untouched
    assert sum(int(p.sum()) for p in corpus.present.values()) == sum(int(p.sum()) for p in clean.present.values()) - 5


def test_training_on_planted_rows_stays_finite_and_metrics_count_them(tmp_path, planted, demo_utterances):
    from pipeline.evaluate import evaluate
    from pipeline.train import train

    dirs, _ = planted
    train(tiny_params(), demo_utterances, tmp_path / "m.pt", tmp_path / "live", dirs)
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() and v.dtype == torch.float64 for d in ck["norm"].values() for v in d.values())
    m = evaluate(tmp_path / "m.pt", demo_utterances, tmp_path / "reports", feature_dirs=dirs)
    on_disk = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert on_disk["items"]["t_nonfinite"] == 1 and on_disk["items"]["a_nonfinite"] == 1
    assert on_disk["items"].get("v_nonfinite", 0) == 0  # the visual plant is in dev, not test
    assert on_disk["present"]["t"] == 11 and on_disk["n"] == 12  # 12 test utterances, one text vector planted
    assert np.isfinite(m["weighted_f1"]) and on_disk["dataset"] == "demo"


def test_standardizer_float64_floor_and_clip():
    x = np.array([[2e19, 5.0, 0.0], [-2e19, 5.0, 2.0], [2e19, 5.0, 0.0], [-2e19, 5.0, 2.0]], np.float32)
    assert not np.isfinite(x.std(0)).all()  # in float32 the variance overflows
    corpus = SimpleNamespace(feats={"t": x}, present={"t": np.ones(4, bool)})
    norm = Standardizer().fit(corpus, np.arange(4))
    np.testing.assert_allclose(norm.mean["t"], [0.0, 5.0, 1.0])
    np.testing.assert_allclose(norm.std["t"], [2e19, 1.0, 1.0], rtol=1e-6)  # constant dim: scale 1 (< STD_FLOOR)
    assert STD_FLOOR > 0
    new = np.array([[2e19, 5.5, 2.0], [-4e19, 5.0 + 100, 0.0]], np.float32)
    z = norm("t", new, np.array([True, False]))
    np.testing.assert_allclose(z[0], [1.0, 0.5, 1.0], rtol=1e-6)
    assert (z[1] == 0).all()  # absent rows stay zero
    z = norm("t", new, np.array([True, True]))
    np.testing.assert_allclose(z[1], [-2.0, Z_CLIP, -1.0], rtol=1e-6)  # 100 σ off → clipped
    from pipeline.training.checkpoint import to_plain

    back = Standardizer.from_state(to_plain(norm.state()))
    np.testing.assert_array_equal(back("t", new, np.ones(2, bool)), z)


def test_text_and_visual_stages_refuse_nonfinite_vectors(monkeypatch):
    from pipeline.extraction import visual
    from pipeline.extraction.text import TextExtractor

    ex = TextExtractor.__new__(TextExtractor)  # no encoder: only the record-making is under test
    ex.name, ex.context = "text:toy", "utterance"
    ex.encode = lambda pairs: (np.array([[np.nan, 1.0], [0.5, 1.0], [1e38, 0.0]], np.float32), np.array([3, 4, 5]))
    rows = [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    recs = ex.process(rows)
    assert [r["status"] for r in recs] == ["error", "ok", "error"]
    assert "non-finite" in recs[0]["error"] and recs[0]["feature"] is None
    np.testing.assert_array_equal(recs[1]["feature"], [0.5, 1.0])

    fx = visual.FaceExtractor.__new__(visual.FaceExtractor)
    fx.name, fx.sampling = "face:toy", {}
    monkeypatch.setattr(visual, "decode_frames", lambda *a, **k: ([np.zeros((8, 8, 3), np.uint8)], None))
    fx.faces_of = lambda frames: ({"face_found": True}, np.zeros((1, 4, 4, 3), np.uint8))
    row = {"media_path": "clip.mp4", "start_s": None, "end_s": None, "status": "ok", "error": None}
    fx.backbone = lambda faces: np.array([np.inf, 0.0], np.float32)
    rec = fx.process_one(row)
    assert rec["status"] == "error" and "non-finite" in rec["error"] and rec.get("feature") is None
    fx.backbone = lambda faces: np.array([0.25, 0.0], np.float32)
    assert fx.process_one(row)["status"] == "ok"


class Toy(nn.Module):
    """A linear classifier that goes non-finite on purpose: in an aux loss, in a gradient, or in its hook."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode, self.lin, self.p = mode, nn.Linear(4, 7), nn.Parameter(torch.zeros(()))

    def forward(self, feats, present, mask, speaker):
        out = self.lin(feats["t"])
        return out + 0 * torch.sqrt(self.p) if self.mode == "grad" else out  # d√p/dp at 0 = inf; 0·inf = NaN

    def aux_loss(self, out, batch):
        return {"boom": out.float().mean() * float("inf")} if self.mode == "aux" else {}

    def before_step(self, epoch, step):
        if self.mode == "hook" and step == 1:
            self.lin.weight.grad /= 0.0


@pytest.mark.parametrize("mode, match", [
    ("aux", r"epoch 0 step 0: loss term 'aux_boom' is -?(inf|nan)"),
    ("grad", r"epoch 0 step 0: the gradient of 'p' is non-finite though every loss term is finite"),
    ("hook", r"epoch 0 step 1 \(after before_step\): the gradient of 'lin.weight'"),
])
def test_engine_stops_at_first_nonfinite(mode, match):
    torch.manual_seed(0)
    model = Toy(mode)
    data = toy_dialogues({"t": 4}, n=4, mods="t")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eng = Engine(model, EngineConfig(epochs=3, batch_size=2, lr=1e-2), "cpu", None)
    with pytest.raises(NonFiniteError, match=match):
        eng.fit(data, data)
    if mode != "hook":  # stopped before any optimiser step
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())  # the NaN never reached a weight


def test_diverging_lr_stops_with_the_message(tmp_path, demo_utterances, demo_features):
    from pipeline.train import train

    with pytest.raises(NonFiniteError, match=r"epoch 0 step \d+: loss term 'task' is nan .*train.lr \(now 1e\+06\)"):
        p = tiny_params("concat_mlp", "t")
        p["train"].update(lr=1e6, batch_size=2)
        train(p, demo_utterances, tmp_path / "m.pt", tmp_path / "live", demo_features)
    assert not (tmp_path / "m.pt").exists()  # nothing saved


# ----------------------------------------------------------------- 3. checkpoints cannot run code
class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_files(tmp_path: Path) -> list[tuple[Path, Path]]:
    """(checkpoint, marker) pairs: a raw pickle and a torch.save zip, each running ``touch marker`` if unpickled."""
    out = []
    for kind in ("pickle", "torchsave"):
        marker, path = tmp_path / f"pwned-{kind}", tmp_path / f"{kind}.pt"
        obj = {"model": "concat_mlp", "state_dict": {}, "norm": Evil(marker)}
        if kind == "pickle":
            path.write_bytes(pickle.dumps(obj))
        else:
            torch.save(obj, path)
        out.append((path, marker))
    return out


def test_evaluate_refuses_a_malicious_model_checkpoint(tmp_path, demo_utterances, demo_features):
    from pipeline.evaluate import evaluate

    for path, marker in evil_files(tmp_path):
        with pytest.raises(UserError, match=f"refusing to load model checkpoint {path}.*dvc repro train"):
            evaluate(path, demo_utterances, tmp_path / "reports", feature_dirs=demo_features)
        assert not marker.exists()


def test_summer_refuses_a_malicious_teacher(tmp_path):
    from models import get_model

    for path, marker in evil_files(tmp_path):
        with pytest.raises(UserError, match=f"refusing to load summer teacher {path}.*train_teacher"):
            get_model("summer", input_dims={"t": 8}, n_classes=7, hidden=16, teacher_path=str(path))
        assert not marker.exists()


def test_malicious_checkpoint_via_cli_is_one_line(tmp_path, demo_utterances):
    path, marker = evil_files(tmp_path)[1]
    r = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--checkpoint", str(path), "--utterances",
                        str(demo_utterances), "--reports", str(tmp_path / "r")], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not marker.exists()
    lines = [x for x in r.stderr.splitlines() if "refusing" in x]
    assert len(lines) == 1 and "pipeline.evaluate" in lines[0] and "dvc repro train" in lines[0]


def test_checkpoints_hold_only_plain_values(tmp_path):
    from pipeline.training.checkpoint import load_checkpoint, save_checkpoint, to_plain

    obj = {"a": np.arange(3, dtype=np.float64), "b": np.float32(0.5), "c": [1, "x", None, (2, 3)],
           "d": {"e": torch.ones(2)}}
    save_checkpoint(obj, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt", "test checkpoint", "fix")
    assert back["a"].dtype == torch.float64 and back["a"].tolist() == [0.0, 1.0, 2.0]
    assert back["b"] == 0.5 and type(back["b"]) is float and back["c"] == [1, "x", None, [2, 3]]
    assert back["d"]["e"].tolist() == [1.0, 1.0]
    with pytest.raises(TypeError, match="a set cannot go into a checkpoint"):
        to_plain({"k": {1, 2}})
    with pytest.raises(MissingFileError, match="no test checkpoint at .*nope.pt: fix"):
        load_checkpoint(tmp_path / "nope.pt", "test checkpoint", "fix")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="refusing to load test checkpoint .*junk.pt: it is not a plain-tensor"):
        load_checkpoint(tmp_path / "junk.pt", "test checkpoint", "fix")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:100])  # a truncated save
    with pytest.raises(UserError, match="cannot read test checkpoint .*cut.pt"):
        load_checkpoint(tmp_path / "cut.pt", "test checkpoint", "fix")


def test_no_unsafe_torch_load_left():
    """Every torch.load in pipeline/, models/, bench/ passes weights_only=True."""
    for folder in ("pipeline", "models", "bench"):
        for f in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if "torch.load(" in line and "``torch.load(" not in line:  # code, not a docstring
                    assert "weights_only=True" in line, f"{f}:{n}: {line.strip()}"


# ----------------------------------------------------------------- 6. user errors are one line
@pytest.mark.parametrize("change, match", [
    (lambda p: p.update(model="nope"), r"params.yaml model: unknown model 'nope'; use one of \[.*concat_mlp"),
    (lambda p: p["train"].update(epochs=0), r"params.yaml train.epochs must be a whole number >= 1, got 0"),
    (lambda p: p["train"].update(batch_size=0), r"train.batch_size must be a whole number >= 1, got 0"),
    (lambda p: p["train"].update(lr=-1), r"train.lr must be a number > 0"),
    (lambda p: p["train"].update(lr="1e-3"), r"train.lr must be a number > 0 .*got '1e-3' \(YAML reads 1e-3 as text"),
    (lambda p: p["train"].update(modalities="tx"), r"train.modalities must be a non-empty subset"),
    (lambda p: p["model_params"]["concat_mlp"].update(hiden=3), r"model_params.concat_mlp: unknown setting\(s\) "
                                                                r"\['hiden'\]; concat_mlp takes \[.*'hidden'"),
])
def test_train_config_mistakes_are_user_errors(tmp_path, demo_utterances, demo_features, change, match):
    from pipeline.train import train

    p = tiny_params()
    change(p)
    with pytest.raises(UserError, match=match):
        train(p, demo_utterances, tmp_path / "m.pt", tmp_path / "live", demo_features)
    assert not (tmp_path / "m.pt").exists()


def test_model_value_errors_name_the_block(tmp_path, demo_utterances, demo_features):
    from pipeline.train import train

    p = {**tiny_params("summer"), "model_params": {"summer": {"hidden": 16, "moe": "bogus", "teacher_path": None}}}
    with pytest.raises(UserError, match=r"params.yaml model_params.summer: summer: moe is sdmoe\|plain"):
        train(p, demo_utterances, tmp_path / "m.pt", tmp_path / "live", demo_features)
    p["model_params"]["summer"].update(moe="sdmoe", teacher_path=str(tmp_path / "none.pt"))
    with pytest.raises(MissingFileError, match=r"no summer teacher at .*none.pt: run the train_teacher stage"):
        train(p, demo_utterances, tmp_path / "m.pt", tmp_path / "live", demo_features)


def test_missing_inputs_are_user_errors(tmp_path, demo_utterances, demo_features):
    from pipeline.evaluate import evaluate
    from pipeline.train_teacher import train_teacher

    with pytest.raises(MissingFileError, match=r"no model checkpoint at .*model.pt: re-create it .*dvc repro train"):
        evaluate(tmp_path / "model.pt", demo_utterances, tmp_path / "r", feature_dirs=demo_features)
    from pipeline.training.checkpoint import save_checkpoint

    save_checkpoint({"model": "concat_mlp"}, tmp_path / "partial.pt")
    with pytest.raises(UserError, match=r"partial.pt lacks \['cfg', 'input_dims'.*dvc repro train"):
        evaluate(tmp_path / "partial.pt", demo_utterances, tmp_path / "r", feature_dirs=demo_features)
    ck = {"model": "gone", "cfg": {}, "input_dims": {"t": 384}, "modalities": ["t"], "labels": ["a", "b"],
          "norm": {"mean": {"t": np.zeros(384)}, "std": {"t": np.ones(384)}}, "state_dict": {}}
    save_checkpoint(ck, tmp_path / "gone.pt")
    with pytest.raises(UserError, match=r"model checkpoint .*gone.pt \(model 'gone'\): unknown model 'gone'"):
        evaluate(tmp_path / "gone.pt", demo_utterances, tmp_path / "r", feature_dirs=demo_features)
    with pytest.raises(MissingFileError, match=r"no utterance table at .*: run the prepare stage"):
        load_corpus(tmp_path / "u.parquet", ["t"], demo_features)
    with pytest.raises(MissingFileError, match=r"no feature shards in .*run its extract stage first"):
        load_corpus(demo_utterances, ["t"], {"t": tmp_path / "empty"})
    with pytest.raises(UserError, match=r"model_params.summer.teacher.epochs must be a whole number >= 1, got 0"):
        train_teacher({"modality": "t", "epochs": 0}, demo_utterances, tmp_path / "t.pt", tmp_path / "t.json",
                      demo_features)


@pytest.mark.parametrize("labels, match", [
    (["joy", "anger", "joy"], r"prepare.labels lists \['joy'\] more than once"),
    ([1, 2], r"prepare.labels must hold label names as strings; \[1, 2\] are not"),
    ([True, False], r"prepare.labels must hold label names as strings"),  # YAML's [yes, no]
    ("joy,anger", r"prepare.labels must be null or a non-empty list of label names"),
    ([], r"prepare.labels must be null or a non-empty list"),
])
def test_bad_prepare_labels(tmp_path, labels, match):
    from pipeline.prepare import prepare

    with pytest.raises(UserError, match=match):
        prepare("manifest", tmp_path / "m.csv", tmp_path / "u.parquet", {"labels": labels})


def test_prepare_mistakes(tmp_path):
    from pipeline.prepare import prepare

    with pytest.raises(UserError, match=r"prepare.dataset: unknown dataset 'meld2'; use one of \['demo'"):
        prepare("meld2", DEMO, tmp_path / "u.parquet")
    with pytest.raises(MissingFileError, match="prepare.root"):
        prepare("meld", tmp_path / "nowhere", tmp_path / "u.parquet")


def run_cli(module: str, params: dict, tmp_path: Path, *args: str, debug: bool = False):
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    env = {**ENV, "MERC_PARAMS": str(pfile)}
    env.pop("MERC_DEBUG", None)
    if debug:
        env["MERC_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_user_errors_are_one_line_without_traceback(tmp_path, demo_utterances):
    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    cases = [
        ("pipeline.train", {**full, "train": {**full["train"], "epochs": 0}}, ("--utterances", str(demo_utterances)),
         "train.epochs must be a whole number >= 1, got 0"),
        ("pipeline.train", {**full, "model": "gru2"}, (), "params.yaml model: unknown model 'gru2'"),
        ("pipeline.prepare", {**full, "prepare": {**full["prepare"], "labels": ["a", "a"]}},
         ("--out", str(tmp_path / "u.parquet")), "prepare.labels lists ['a'] more than once"),
    ]
    for module, params, args, message in cases:
        r = run_cli(module, params, tmp_path, *args)
        assert r.returncode == 2, (module, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
        errors = [x for x in r.stderr.splitlines() if "ERROR" in x or "error" in x.lower()]
        assert len(errors) == 1 and message in errors[0] and module in errors[0], r.stderr[-2000:]
    r = run_cli("pipeline.train", {**full, "model": "gru2"}, tmp_path, debug=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError" in r.stderr  # MERC_DEBUG=1


def test_train_warnings(caplog):
    import pyarrow as pa

    utt = pa.table({"split": ["train", "train", "dev"], "label_id": pa.array([1, 1, 0], pa.int16())})
    corpus = SimpleNamespace(utterances=utt, present={"t": np.array([True, True, True]),
                                                      "v": np.array([False, False, True])})
    corpus.split_rows = lambda s: np.flatnonzero(np.asarray(utt.column("split").to_pylist()) == s)
    with caplog.at_level("WARNING", logger="merc.dataset"):
        out = train_warnings(corpus, ["neutral", "joy", "anger"])
    assert len(out) == 3 and len(caplog.records) == 3
    assert "labels ['neutral', 'anger'] have no train example" in out[0]
    assert "single class ('joy')" in out[1]
    assert "modality 'v' is absent from every train utterance" in out[2]
    utt2 = pa.table({"split": ["train", "train"], "label_id": pa.array([0, 1], pa.int16())})
    ok = SimpleNamespace(utterances=utt2, present={"t": np.array([True, False])},
                         split_rows=lambda s: np.arange(2) if s == "train" else np.arange(0))
    assert train_warnings(ok, ["neutral", "joy"]) == []


# ----------------------------------------------------------------- 9. the run summary
def test_summary_of_an_evaluation(tmp_path, demo_utterances, demo_features):
    from pipeline.evaluate import evaluate
    from pipeline.summary import summarize
    from pipeline.train import train

    p = tiny_params("concat_mlp", "ta", seeds=[0, 1])
    train(p, demo_utterances, tmp_path / "m.pt", tmp_path / "live", demo_features)
    m = evaluate(tmp_path / "m.pt", demo_utterances, tmp_path / "reports", feature_dirs=demo_features)
    text = summarize(tmp_path / "reports")
    lines = text.splitlines()
    assert lines[0].startswith("dataset demo · model concat_mlp · modalities ta · ")
    assert lines[1] == (f"test (n=12, mean ± std over 2 seeds): accuracy {m['accuracy']:.4f} ± "
                        f"{m['accuracy_std']:.4f} · weighted F1 {m['weighted_f1']:.4f} ± {m['weighted_f1_std']:.4f}"
                        f" · macro F1 {m['macro_f1']:.4f} ± {m['macro_f1_std']:.4f}")
    assert "items: text 12/12 · audio 11/12 (1 missing_media)" in text  # the demo's missing test clip
    assert f"confusion matrix: {tmp_path / 'reports' / 'confusion.png'}" in text
    assert f"all numbers: {tmp_path / 'reports' / 'metrics.json'}" in text
    assert len(lines) <= 7 and max(len(x) for x in lines if str(tmp_path) not in x) < 120
    with pytest.raises(MissingFileError, match="run the pipeline first"):
        summarize(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="not an evaluate-stage metrics file"):
        summarize(tmp_path / "bad")


def test_run_script_ends_with_the_summary():
    lines = [x for x in (ROOT / "scripts" / "run.sh").read_text().splitlines() if x.strip()]
    assert lines[-1].startswith("python -m pipeline.summary") and "dvc metrics show" not in "\n".join(lines)
