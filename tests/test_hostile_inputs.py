"""Issue #28 (items 5, 7, 8, 9): hostile and malformed inputs are refused in one line, never silently used.

Each test names the class of failure it covers; the fixtures are written here, a few bytes each."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UserError, run_main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
ENV.pop("MERC_DEBUG", None)


def one_line(fn, capsys) -> str:
    """Run ``fn`` under ``run_main``: exit status 2 and a single stderr line without a traceback."""
    import logging

    logging.basicConfig(level="INFO", force=True, format="%(levelname)s %(message)s", stream=sys.stderr)
    with pytest.raises(SystemExit) as e:
        run_main(fn)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("ERROR")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ item 7: allocation bombs in feature pickles
BIG = (10**10).to_bytes(5, "little")  # LONG1 payload: 10 GB
BOMBS = {
    # builtins.bytearray(10**10): the 38-byte pickle of the issue
    "bytearray": b"\x80\x02cbuiltins\nbytearray\n\x8a\x05" + BIG + b"\x85R.",
    "bytes": b"\x80\x02cbuiltins\nbytes\n\x8a\x05" + BIG + b"\x85R.",
    # numpy _reconstruct(ndarray, (10**10,), 'b'): the array header allocates
    "numpy header": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05" + BIG
                    + b"\x85C\x01b\x87R.",
    # an object array whose header claims 10**9 elements but whose state holds one (numpy crashes on it)
    "object array state": pickle.dumps(np.array([1, None], dtype=object), protocol=2).replace(
        b"K\x02\x85", b"J\x00\xca\x9a;\x85"),
    # copyreg._reconstructor(bytearray, bytearray, 10**10)
    "reconstructor": b"\x80\x02ccopyreg\n_reconstructor\ncbuiltins\nbytearray\ncbuiltins\nbytearray\n\x8a\x05" + BIG
                     + b"\x87R.",
    # bytes.__new__(bytes, 10**10) through NEWOBJ
    "newobj": b"\x80\x02cbuiltins\nbytes\n\x8a\x05" + BIG + b"\x85\x81.",
    # list(range(10**10)): range is not part of any layout
    "range": b"\x80\x02cbuiltins\nlist\ncbuiltins\nrange\n\x8a\x05" + BIG + b"\x85R\x85R.",
    # a sub-array dtype of 80 GB per element, one element
    "dtype": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x01\x85cnumpy\ndtype\n"
             b"X\x11\x00\x00\x00(100000,100000)f8\x85R\x87R.",
    # a set built from a million-fold repeated bytearray header: the budget is cumulative
    "cumulative": b"\x80\x02cbuiltins\nbytearray\n\x94J\x00\x00\x10\x00\x85\x94(" + b"h\x00h\x01R" * 60 + b"t.",
}


def test_allocation_bombs_are_refused_without_allocating(tmp_path):
    """Every bomb is refused with UnsafePickleError, in a child process capped at 1.5 GB of address space (before
    the fix, the first one raised MemoryError there — or crashed — instead)."""
    for name, data in BOMBS.items():
        (tmp_path / f"{name.replace(' ', '_')}.pkl").write_bytes(data)
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
        from pathlib import Path
        from pipeline.extraction.safe_pickle import UnsafePickleError, safe_load
        for p in sorted(Path({str(tmp_path)!r}).glob("*.pkl")):
            try:
                safe_load(p)
                print(p.name, "LOADED")
            except UnsafePickleError as e:
                print(p.name, "refused", str(e).replace(str(p), "P")[:150])
            except BaseException as e:
                print(p.name, "ESCAPED", type(e).__name__)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    out = r.stdout.splitlines()
    assert r.returncode == 0 and len(out) == len(BOMBS), r.stdout + r.stderr[-2000:]
    assert all(" refused " in ln for ln in out), r.stdout
    assert len(BOMBS["bytearray"]) <= 40
    # a memo index of 2**32-1 (the C unpickler grows its memo array to it): a dict entry here, loaded at once
    (tmp_path / "memo.pkl").write_bytes(b"\x80\x02K\x01r\xff\xff\xff\xff.")
    from pipeline.extraction.safe_pickle import safe_load
    assert safe_load(tmp_path / "memo.pkl") == 1


def test_legitimate_layouts_still_load(tmp_path):
    """Python 2-style protocol 0/2 and Python 3 protocol 4/5 feature tuples and dicts, sets, defaultdicts."""
    from collections import defaultdict

    from pipeline.extraction.safe_pickle import safe_load

    d = defaultdict(list, {"a": [np.arange(4, dtype=np.float32)]})
    obj = (d, {"x": ["s", np.array(["u", "v"], dtype=object)]}, {1, 2}, frozenset({3}), b"raw", bytearray(b"ba"),
           np.float32(1.5), np.zeros((3, 2)))
    for proto in (0, 2, 4, 5):
        (tmp_path / "f.pkl").write_bytes(pickle.dumps(obj, protocol=proto))
        got = safe_load(tmp_path / "f.pkl")
        assert got[0]["a"][0].tolist() == [0, 1, 2, 3] and got[1]["x"][1].tolist() == ["u", "v"]
        assert got[2:6] == ({1, 2}, frozenset({3}), b"raw", bytearray(b"ba")) and got[7].shape == (3, 2)


# --------------------------------------------------------------- item 8: feature-pickle mistakes are one line
def _tuple_pickle(path, drop_audio_of=None, shape_of=None, labels=None):
    from pipeline.adapters.features import synthetic

    d, train, test = synthetic(8)
    if drop_audio_of:
        del d["a"][drop_audio_of]
    if shape_of:
        d["t"][shape_of] = d["t"][shape_of][:, :3][:-1]
    if labels is not None:
        d["lab"][train[0]] = labels
    path.write_bytes(pickle.dumps((d["ids"], d["spk"], d["lab"], d["t"], d["a"], d["v"], d["sent"], set(train),
                                   set(test)), protocol=2))
    return train


@pytest.mark.parametrize("case, match", [
    ("missing_modality", "has no audio entry"),
    ("shape", "text vectors have shape"),
    ("negative_label", "negative"),
    ("text_label", "not class indices"),
    ("ada2i_no_labels", "has no labels"),
    ("ada2i_list_modality", "is a list, expected a dict"),
    ("unsafe", "refused to load posix.system"),
    ("truncated", "not a readable feature pickle"),
])
def test_feature_pickle_mistakes_are_one_line(tmp_path, capsys, case, match):
    from pipeline.prepare import prepare

    pkl = tmp_path / "f.pkl"
    if case == "missing_modality":
        from pipeline.adapters.features import synthetic
        _, train, _ = synthetic(8)
        _tuple_pickle(pkl, drop_audio_of=train[1])
    elif case == "shape":
        from pipeline.adapters.features import synthetic
        _, train, _ = synthetic(8)
        _tuple_pickle(pkl, shape_of=train[0])
    elif case == "negative_label":
        from pipeline.adapters.features import synthetic
        d, train, _ = synthetic(8)
        _tuple_pickle(pkl, labels=[-1] * len(d["lab"][train[0]]))
    elif case == "text_label":
        from pipeline.adapters.features import synthetic
        d, train, _ = synthetic(8)
        _tuple_pickle(pkl, labels=["x"] * len(d["lab"][train[0]]))
    elif case == "ada2i_no_labels":
        pkl.write_bytes(pickle.dumps({"trainVid": ["a"], "testVid": ["b"], "text": {"a": np.zeros((1, 2))}}))
    elif case == "ada2i_list_modality":
        pkl.write_bytes(pickle.dumps({"trainVid": ["a"], "testVid": ["b"], "label": {"a": [0], "b": [0]},
                                      "text": [np.zeros((1, 2))]}))
    elif case == "unsafe":
        pkl.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    elif case == "truncated":
        _tuple_pickle(pkl)
        pkl.write_bytes(pkl.read_bytes()[:500])
    line = one_line(lambda: prepare("features", pkl, tmp_path / "u.parquet", {"dataset": "features", "root": str(pkl)}),
                    capsys)
    assert match in line and "f.pkl" in line


def test_feature_pickle_errors_are_user_errors():
    from pipeline.extraction.feature_pickles import FeaturePickleError
    from pipeline.extraction.safe_pickle import UnsafePickleError

    assert issubclass(FeaturePickleError, UserError) and issubclass(UnsafePickleError, UserError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


# -------------------------------------------------------------------------- item 5 / 8: CMU-MOSEI label files
def _mosei(tmp_path, csd=False):
    from test_mosei import mosei_tree

    return mosei_tree(tmp_path / "CMU_MOSEI", csd)


def _edit_csv(root, fn):
    import pandas as pd

    df = pd.read_csv(root / "label.csv", dtype=str)
    fn(df)
    df.to_csv(root / "label.csv", index=False)


@pytest.mark.parametrize("edit, match", [
    (lambda df: df.__setitem__("mode", df["mode"].replace("valid", "validation")),
     "mode ['validation'] on lines [4, 5] is not one of"),
    (lambda df: df.__setitem__("mode", df["mode"].replace("test", "Test")), "mode ['Test'] on lines [6, 7, 8]"),
    (lambda df: df.loc.__setitem__((2, "mode"), None), "mode ['nan'] on lines [4]"),
    (lambda df: df.loc.__setitem__(len(df), ["vidA", "1", "again", "2.0", "2.0", "train"]),
     "['vidA', '1']] listed more than once on lines [3, 9] with different scores"),
    (lambda df: df.loc.__setitem__((0, "label"), "1e300"), "on label.csv lines [2] are not finite numbers"),
])
def test_mosei_label_csv_mistakes_name_lines(tmp_path, capsys, edit, match):
    from pipeline.prepare import prepare

    root = _mosei(tmp_path)
    _edit_csv(root, edit)
    line = one_line(lambda: prepare("mosei", root, tmp_path / "u.parquet", {"target": "sentiment"}), capsys)
    assert match in line, line


@pytest.mark.parametrize("content, match", [
    (b"", "label.csv is empty"),
    (b"video_id,clip_id,text,label,mode\n" + b"vidA,0," + b"x" * 160 + b"caf\xe9,1.0,train\n",
     "not UTF-8 text (byte b'\\xe9' on line 2, column 171 (offset 203))"),
    (b"video_id,clip_id,text,label,mode\n", "has a header but no rows"),
])
def test_mosei_unreadable_label_csv_is_one_line(tmp_path, capsys, content, match):
    from pipeline.prepare import prepare

    root = _mosei(tmp_path)
    (root / "label.csv").write_bytes(content)
    line = one_line(lambda: prepare("mosei", root, tmp_path / "u.parquet", {"target": "sentiment2"}), capsys)
    assert match in line, line


@pytest.mark.parametrize("folds, match", [
    ('{"train": ["vidA"], "valid": ["vidB"], "test": ["vidC", ', "folds.json is not JSON"),
    ('["vidA"]', "must map each fold name to a list"),
    ('{"train": ["vidA"], "validation": ["vidB"], "test": ["vidC"]}', "unknown folds ['validation']"),
    ('{"train": ["vidA", "vidB"], "valid": ["vidB"], "test": ["vidC"]}', "['vidB'] are in more than one fold"),
])
def test_mosei_malformed_folds_json_is_one_line(tmp_path, capsys, folds, match):
    from pipeline.prepare import prepare

    root = _mosei(tmp_path, csd=True)
    (root / "folds.json").write_text(folds)
    line = one_line(lambda: prepare("mosei", root, tmp_path / "u.parquet", {"target": "sentiment2"}), capsys)
    assert match in line, line


def test_mosei_sdk_fold_names_are_accepted(tmp_path):
    from pipeline.prepare import prepare

    root = _mosei(tmp_path, csd=True)
    (root / "folds.json").write_text(json.dumps({"standard_train_fold": ["vidA"], "standard_valid_fold": ["vidB"],
                                                 "standard_test_fold": ["vidC", "vidD"]}))
    t = prepare("mosei", root, tmp_path / "u.parquet", {"target": "sentiment2"})
    assert sorted(set(t.column("split").to_pylist())) == ["dev", "test", "train"]


# ------------------------------------------------------------------------- item 5 / 8: manifests and params
def _manifest(tmp_path, rows: list[str], header="utterance_id,speaker,text,label,split") -> Path:
    p = tmp_path / "m.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def test_manifest_label_whitespace_is_stripped_and_case_variants_warned(tmp_path, caplog):
    from pipeline.prepare import prepare

    m = _manifest(tmp_path, ["u1,A,hi,joy,train", "u2,A,hi,joy ,train", "u3,A,hi, joy,dev", "u4,B,hi,Joy,test",
                             "u5,B,hi,anger,test"])
    with caplog.at_level("WARNING", logger="merc.prepare.manifest"):
        t = prepare("manifest", m, tmp_path / "u.parquet", {"dataset": "manifest", "probe_media": False})
    assert json.loads(t.schema.metadata[b"labels"]) == ["Joy", "anger", "joy"]  # "joy " and " joy" are joy
    assert t.column("label").to_pylist().count("joy") == 3
    warned = [r.getMessage() for r in caplog.records if "differ only in case" in r.getMessage()]
    assert len(warned) == 1 and "['Joy', 'joy']" in warned[0] and "[5]" in warned[0]


def test_manifest_unknown_label_names_lines(tmp_path, capsys):
    from pipeline.prepare import prepare

    m = _manifest(tmp_path, ["u1,A,hi,joy,train", "u2,A,hi,Joy,train", "u3,A,hi,rage,dev"])
    line = one_line(lambda: prepare("manifest", m, tmp_path / "u.parquet",
                                    {"dataset": "manifest", "labels": ["joy", "anger"]}), capsys)
    assert "labels ['Joy', 'rage'] are not in prepare.labels ['joy', 'anger'] (lines [3, 4])" in line
    assert "case differs: {'Joy': 'joy'}" in line


def test_manifest_cp1252_byte_is_reported_at_its_real_offset(tmp_path, capsys):
    from pipeline.prepare import prepare

    header = b"utterance_id,speaker,text,label,split\n"
    rows = [b"u%d,A,%s,joy,train\n" % (i, b"x" * 40) for i in range(4)] + [b"u9,A,caf\xe9,joy,train\n"]
    (tmp_path / "m.csv").write_bytes(header + b"".join(rows))
    offset = len(header) + sum(map(len, rows[:4])) + len(b"u9,A,caf")
    line = one_line(lambda: prepare("manifest", tmp_path / "m.csv", tmp_path / "u.parquet",
                                    {"dataset": "manifest"}), capsys)
    assert f"byte b'\\xe9' on line 6, column 9 (offset {offset})" in line, line


@pytest.mark.parametrize("value", ["1e300", "-2e6"])
def test_absurd_regression_targets_are_refused_in_prepare(tmp_path, capsys, value):
    from pipeline.prepare import check_targets, prepare
    import pandas as pd

    m = _manifest(tmp_path, ["u1,A,hi,,train,0.5", f"u2,A,hi,,train,{value}", "u3,A,hi,,dev,0.1"],
                  header="utterance_id,speaker,text,label,split,valence")
    line = one_line(lambda: prepare("manifest", m, tmp_path / "u.parquet",
                                    {"dataset": "manifest", "targets": ["valence"]}), capsys)
    assert "column 'valence' on lines [3]" in line and "within ±1e+06" in line
    # the table-level guard every adapter passes through (IEMOCAP, MOSEI, manifest)
    df = pd.DataFrame({"dialogue_id": ["d"], "utterance_id": [0], "label": [None], "targets": [[float(value)]]})
    with pytest.raises(UserError, match="within ±1e\\+06"):
        check_targets(df, ["valence"], "root")


def test_params_without_a_section_is_one_line(tmp_path):
    """`python -m pipeline.train` with a params.yaml lacking `train:`: exit 2, one line, no traceback."""
    import yaml

    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    del full["train"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    r = subprocess.run([sys.executable, "-m", "pipeline.train", "--utterances", str(tmp_path / "none.parquet"),
                        "--out", str(tmp_path / "m.pt"), "--live", str(tmp_path / "live")], cwd=ROOT,
                       env={**ENV, "MERC_PARAMS": str(tmp_path / "params.yaml")}, capture_output=True, text=True,
                       timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if "ERROR" in ln]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and "has no train: section" in errors[0]


def test_load_params_section_mistakes(tmp_path):
    from pipeline.common import load_params

    (tmp_path / "p.yaml").write_text("prepare:\ntrain: {lr: 1}\n")
    with pytest.raises(UserError, match="the prepare: section is empty"):
        load_params("prepare", tmp_path / "p.yaml")
    with pytest.raises(UserError, match="has no text: section"):
        load_params("text", tmp_path / "p.yaml")
    with pytest.raises(KeyError):  # still a KeyError for callers that test for one
        load_params(path=tmp_path / "p.yaml")["model"]
    (tmp_path / "p.yaml").write_text("- a\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_params(path=tmp_path / "p.yaml")


# ------------------------------------------------------------ item 5: undefined Pearson r, unlabelled batches
def test_pearson_r_is_undefined_not_zero():
    from pipeline.training.metrics import mean_std, mosei_metrics, pearson_r, regression_metrics

    assert pearson_r([1.0], [2.0]) is None and pearson_r([], []) is None  # fewer than 2 rows
    assert pearson_r([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) is None  # constant predictions
    assert pearson_r([2.0, 2.0], [1.0, 3.0]) is None  # constant truth
    assert pearson_r([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(0.9933992677987828)
    m = regression_metrics([[1.0, 1.0], [2.0, 3.0]], [[0.0, 5.0], [1.0, 5.0]], ["a", "b"])
    assert m["per_target"]["a"]["pearson_r"] == pytest.approx(1.0) and m["per_target"]["b"]["pearson_r"] is None
    assert m["pearson_r"] is None and json.loads(json.dumps(m))["pearson_r"] is None  # null in metrics.json
    assert mosei_metrics([1.0, -1.0], [0.5, 0.5])["corr"] is None
    assert mean_std([0.5, None]) == (None, None) and mean_std([0.5, float("nan")]) == (None, None)
    assert mean_std([0.25, 0.75]) == (0.5, pytest.approx(0.3535533905932738))


def _reg_dialogues(n_utts: list[int], seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(n_utts):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        out.append(dict(dialogue_id=f"d{k}", utterance_id=np.arange(n), label=np.full(n, -100, np.int64),
                        target=x[:, :1] * 0.5, speaker=np.zeros(n, np.int64), feats={"t": x},
                        present={"t": np.ones(n, bool)}))
    return out


def test_undefined_dev_r_selects_on_loss_with_a_warning(caplog):
    """One dev utterance: r is undefined every epoch. Before: r scored 0.0, so epoch 0 was kept whatever the
    loss; now the epoch with the lowest dev loss is, and the run says so."""
    import torch

    from models import get_model
    from pipeline.training.engine import Engine, EngineConfig

    torch.manual_seed(0)
    model = get_model("dialogue_gru", input_dims={"t": 4}, n_classes=1, hidden=8)
    cfg = EngineConfig(epochs=6, batch_size=4, lr=3e-2, early_stopping=False, scheduler="plateau")
    with caplog.at_level("WARNING", logger="merc"):
        res = Engine(model, cfg, "cpu", targets=["v"]).fit(_reg_dialogues([5, 6, 4, 7]), _reg_dialogues([1], 1))
    dev_loss = [h["dev"]["loss"] for h in res["history"]]
    assert all(h["dev"]["pearson_r"] is None for h in res["history"])
    assert res["monitor"] == "loss" and res["epoch"] == int(np.argmin(dev_loss)) and res["dev_score"] is None
    assert any("selecting the checkpoint on dev loss" in r.getMessage() for r in caplog.records)


def _empty_batch(task: str):
    import torch

    from pipeline.training.dataset import collate

    d = _reg_dialogues([3, 2])
    if task == "classification":
        for x in d:
            del x["target"]
    b = collate(d, "cpu")
    return b


def test_engine_loss_of_an_unlabelled_batch_is_zero_and_takes_no_step():
    import torch

    from models import get_model
    from pipeline.training.engine import Engine, EngineConfig, regression_loss

    torch.manual_seed(0)
    model = get_model("dialogue_gru", input_dims={"t": 4}, n_classes=3, hidden=8)
    eng = Engine(model, EngineConfig(epochs=1, batch_size=1, weight_decay=0.1), "cpu", labels=["a", "b", "c"])
    b = _empty_batch("classification")
    logits = model(b["feats"], b["present"], b["mask"], b["speaker"])
    loss = eng.loss(logits, b["label"], b)
    assert torch.isfinite(loss) and float(loss) == 0.0
    assert float(regression_loss(logits[..., :1], torch.zeros_like(logits[..., :1]), torch.zeros_like(b["mask"]))) == 0
    # an epoch with one unlabelled dialogue and one labelled one: the unlabelled batch changes no weight
    unl = _reg_dialogues([3])[0]
    del unl["target"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eng.opt.zero_grad()
    with pytest.raises(UserError, match="no labelled utterance"):
        eng.train_epoch([unl], np.random.default_rng(0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    lab = _reg_dialogues([4], 2)[0]
    del lab["target"]
    lab["label"] = np.array([0, 1, 2, 1])
    metrics = eng.train_epoch([unl, lab], np.random.default_rng(0))
    assert np.isfinite(metrics["loss"]) and metrics["accuracy"] <= 1.0


def test_every_models_aux_loss_is_zero_on_an_unlabelled_batch():
    """Every registered model (its defaults): the auxiliary losses on a batch whose labels are all -100 are
    finite zeros (before: SUMMER's IKD terms and Ada2I's L_modal were NaN)."""
    import torch

    from models import get_model, list_models
    from pipeline.training.engine import split_output

    dims = {"t": 8, "a": 6, "v": 4}
    for name in list_models():
        torch.manual_seed(0)
        model = get_model(name, input_dims=dims, n_classes=3, hidden=8).train()
        feats = {m: torch.randn(2, 3, d) for m, d in dims.items()}
        mask = torch.ones(2, 3, dtype=torch.bool)
        mask[1, 2] = False
        present = {m: mask.clone() for m in dims}
        speaker = torch.zeros(2, 3, dtype=torch.long)
        label = torch.full((2, 3), -100)
        out = model(feats, present, mask, speaker)
        _, forward_losses = split_output(out)  # label-free terms (alignment, KL to the fused head): finite
        labelled = model.aux_loss(out, {"label": label, "mask": mask, "class_weight": None}) \
            if hasattr(model, "aux_loss") else {}
        for k, v in {**forward_losses, **labelled}.items():
            assert torch.isfinite(v).all(), (name, k, v)
        for k, v in labelled.items():  # the label-dependent terms: exactly nothing
            assert float(v) == 0.0, (name, k, v)


def test_task_loss_without_labels_is_zero():
    import torch

    from models.layers import task_loss

    pred = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert float(task_loss(pred, {"label": torch.full((2, 3), -100), "mask": mask})) == 0.0
    reg = {"task": "regression", "target": torch.zeros(2, 3, 4), "mask": torch.zeros(2, 3, dtype=torch.bool)}
    loss = task_loss(pred, reg)
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


# ----------------------------------------------------------------------- item 8: the report on corrupted input
def test_report_skips_an_experiment_with_corrupted_metrics_and_names_it(caplog):
    from test_report import PARAMS, entry, metrics

    from pipeline.report import runs_from_exp_show

    good, bad, worse = metrics(0.6), metrics(0.5), metrics(0.4)
    bad["accuracy"] = [0.5, 0.6]  # a list where a number belongs
    worse["seeds"] = {"0": {"weighted_f1": "high"}}
    data = [entry("r1", "good-run", PARAMS, good), entry("r2", "listy-run", PARAMS, bad),
            entry("r3", "stringy-run", PARAMS, worse), "not an entry"]
    with caplog.at_level("WARNING", logger="merc.report"):
        runs = runs_from_exp_show(data)
    assert [r.name for r in runs] == ["good-run"]
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped experiment listy-run" in text and "['accuracy']" in text
    assert "skipped experiment stringy-run" in text


def test_report_with_non_json_exp_json_is_one_line(tmp_path):
    (tmp_path / "exp.json").write_text('[{"rev": "abc", "data": ')
    r = subprocess.run([sys.executable, "-m", "pipeline.report", "--exp-json", str(tmp_path / "exp.json"), "--out",
                        str(tmp_path / "out")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if "ERROR" in ln]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and "is not JSON" in errors[0]


# ------------------------------------------------------------------ item 9: truncated videos, malformed SRT
def test_faststart_mp4_cut_at_half_is_flagged_truncated(tmp_path, monkeypatch, caplog):
    from mediagen import write_clip

    from pipeline.extraction import visual
    from pipeline.extraction.media import decode_frames

    full = write_clip(tmp_path / "full.mp4", [(4.0, 440)], faststart=True)
    data = full.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index comes first: the cut file still opens
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    for path, span, expect in [(full, (None, None), False), (half, (None, None), True),
                               (half, (0.0, 0.5), False), (half, (0.0, 3.5), True), (full, (0.0, 3.5), False)]:
        cover: dict = {}
        frames, _ = decode_frames(path, "fixed", count=4, start_s=span[0], end_s=span[1], coverage=cover)
        assert frames and cover["truncated"] is expect, (path.name, span, cover)
    fx = visual.FaceExtractor.__new__(visual.FaceExtractor)
    fx.name, fx.sampling = "face:toy", {"sampling": "fixed", "count": 4}
    fx.faces_of = lambda frames: ({"face_found": False, "frames_sampled": len(frames)}, None)
    row = {"media_path": str(half), "start_s": None, "end_s": None, "dialogue_id": "d", "utterance_id": 0}
    with caplog.at_level("WARNING", logger="merc.extract_visual"):
        rec = fx.process_one(row)
    assert rec["truncated"] is True and any("truncated file" in r.getMessage() for r in caplog.records)
    assert fx.process_one({**row, "media_path": str(full)})["truncated"] is False
    assert "truncated" in [f.name for f in visual.FaceExtractor.extra_fields]


def test_malformed_srt_block_is_warned_not_appended(tmp_path, caplog):
    from pipeline.predict.subtitles import SubtitleError, read_subtitles

    srt_file = tmp_path / "s.srt"
    srt_file.write_text("1\n00:00:01,000 --> 00:00:02,000\nAlice: hi there\n\nsome stray line\nand another\n\n"
                        "3\n00:00:05,000 --> 00:00:06,000\nok\n")
    with caplog.at_level("WARNING", logger="merc.predict"):
        cues = read_subtitles(srt_file)
    assert [(c.start_s, c.text, c.speaker) for c in cues] == [(1.0, "hi there", "Alice"), (5.0, "ok", None)]
    warned = [r.getMessage() for r in caplog.records if "not a subtitle cue" in r.getMessage()]
    assert len(warned) == 1 and "line 5" in warned[0] and "some stray line" in warned[0]
    srt_file.write_text("1\n00:00:01,000 --> 00:00:02,000\nhi\n\n2\n00:00:03,000 -> 00:00:04,000\nthere\n")
    with pytest.raises(SubtitleError, match="not a valid SRT file at line 5"):
        read_subtitles(srt_file)


def _meld_text_only(tmp_path, edit=None) -> Path:
    """The demo corpus's three CSVs without clip folders (text-only), ``edit`` applied to the train CSV."""
    import shutil

    root = tmp_path / "meld"
    root.mkdir()
    for name in ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv"):
        shutil.copy(ROOT / "data/demo" / name, root / name)
    if edit:
        (root / "train_sent_emo.csv").write_bytes(edit((root / "train_sent_emo.csv").read_bytes()))
    return root


@pytest.mark.parametrize("edit, match", [
    (lambda b: b"", "train_sent_emo.csv is empty"),
    (lambda b: b.split(b"\n")[0] + b"\n", "has a header but no rows"),
    (lambda b: b.replace(b",joy,", b",joyy,", 1), "Emotion values ['joyy'] on lines [" ),
    (lambda b: b.replace(b",joy,", b",caf\xe9,", 1), "not UTF-8 text (byte b'\\xe9' on line "),
])
def test_meld_csv_mistakes_are_one_line(tmp_path, capsys, edit, match):
    from pipeline.prepare import prepare

    root = _meld_text_only(tmp_path, edit)
    line = one_line(lambda: prepare("demo", root, tmp_path / "u.parquet", {"dataset": "demo"}), capsys)
    assert match in line, line
