"""Regression corpora through ``prepare``: manifest ``prepare.targets``, IEMOCAP ``target: dimensional``, MOSEI
``target: sentiment`` — the table's ``targets`` column and metadata, and the one-line errors for bad values."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.prepare import prepare
from pipeline.schema import UTTERANCE_SCHEMA, label_names, target_names, task_of
from test_adapters import iemocap  # noqa: F401  (the IEMOCAP_full_release fixture tree)
from test_mosei import VIDEOS, mosei_tree

# line 1 is the header: call1,0 is line 2 … call2,1 is line 6
MANIFEST = """dialogue_id,utterance_id,speaker,text,split,valence,arousal
call1,0,A,hello,train,0.25,-1.5
call1,1,B,hi,train,3,2e-1
call1,2,A,no rating,train,,
call2,0,B,so,dev, -0.125 ,4.0
call2,1,A,end,test,1,1
"""


def _write(tmp_path, text, name="m.csv"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_manifest_targets_column_and_metadata(tmp_path):
    t = prepare("manifest", _write(tmp_path, MANIFEST), tmp_path / "u.parquet", dict(targets=["valence", "arousal"]))
    schema = pq.read_schema(tmp_path / "u.parquet")  # what the next stages read back
    assert target_names(schema) == ["valence", "arousal"] and task_of(schema) == "regression"
    assert label_names(schema) == [] and t.schema.equals(UTTERANCE_SCHEMA.with_metadata(t.schema.metadata))
    rows = {(r["dialogue_id"], r["utterance_id"]): r for r in pq.read_table(tmp_path / "u.parquet").to_pylist()}
    assert rows[("call1", 0)]["targets"] == [0.25, -1.5]
    assert rows[("call1", 1)]["targets"] == [3.0, 0.2]
    assert rows[("call1", 2)]["targets"] is None  # every target cell empty: unlabelled
    assert rows[("call2", 0)]["targets"] == [-0.125, 4.0]  # spaces around a number are fine
    assert all(r["label"] is None and r["label_id"] == -1 for r in rows.values())
    assert json.loads(schema.metadata[b"provenance"])["counts"]["unlabelled_utterances"] == 1
    # a Parquet manifest with float columns: NaN is an empty cell
    df = pd.read_csv(tmp_path / "m.csv", dtype={"dialogue_id": str})
    assert df.valence.dtype == np.float64 and df.valence.isna().sum() == 1
    df.to_parquet(tmp_path / "m.parquet")
    t2 = prepare("manifest", tmp_path / "m.parquet", tmp_path / "u2.parquet", dict(targets=["valence", "arousal"]))
    assert t2.column("targets").to_pylist() == t.column("targets").to_pylist()
    # a label column may be there when it is empty
    with_label = MANIFEST.replace(",split,", ",split,label,").replace(",train,", ",train,,").replace(
        ",dev,", ",dev,,").replace(",test,", ",test,,")
    t3 = prepare("manifest", _write(tmp_path, with_label), tmp_path / "u3.parquet",
                 dict(targets=["valence", "arousal"]))
    assert t3.column("targets").to_pylist() == t.column("targets").to_pylist()


def test_manifest_without_targets_stays_classification(tmp_path):
    text = "utterance_id,speaker,text,label,split,valence\nc1,s,hi,pos,train,0.5\nc2,s,ho,neg,test,\n"
    t = prepare("manifest", _write(tmp_path, text), tmp_path / "u.parquet")
    assert task_of(t.schema) == "classification" and target_names(t.schema) == []
    assert b"targets" not in t.schema.metadata and t.column("targets").null_count == 2
    assert t.column("label_id").to_pylist() == [1, 0]


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.replace("3,2e-1", "abc,2e-1"), r"column 'valence' on lines \[3\] \(got \['abc'\]\)"),
    (lambda m: m.replace("0.25,-1.5", "nan,-1.5"), r"column 'valence' on lines \[2\] \(got \['nan'\]\)"),
    (lambda m: m.replace("1,1\n", "1,inf\n").replace("3,2e-1", "3,-inf"),
     r"column 'arousal' on lines \[3, 6\] \(got \['-inf', 'inf'\]\)"),
    (lambda m: m.replace("no rating,train,,", "no rating,train,1.0,"), r"some target columns .* on lines \[4\]"),
    (lambda m: m.replace(",arousal\n", ",arous\n"), r"lacks the target columns \['arousal'\]"),
    (lambda m: m.replace(",split,", ",split,label,").replace(",train,", ",train,,").replace(
        ",dev,", ",dev,happy,").replace(",test,", ",test,,"), r"label column is filled on lines \[5\]"),
])
def test_manifest_bad_targets(tmp_path, edit, match):
    with pytest.raises(UserError, match=match):
        prepare("manifest", _write(tmp_path, edit(MANIFEST)), tmp_path / "u.parquet",
                dict(targets=["valence", "arousal"]))
    assert not (tmp_path / "u.parquet").exists()


def test_manifest_parquet_inf_is_bad(tmp_path):
    df = pd.read_csv(pd.io.common.StringIO(MANIFEST), dtype={"dialogue_id": str})
    df.loc[3, "arousal"] = -np.inf  # call2,0: line 5 of the equivalent CSV
    df.to_parquet(tmp_path / "m.parquet")
    with pytest.raises(UserError, match=r"column 'arousal' on lines \[5\] \(got \['-inf'\]\)"):
        prepare("manifest", tmp_path / "m.parquet", tmp_path / "u.parquet", dict(targets=["valence", "arousal"]))


@pytest.mark.parametrize("params, match", [
    (dict(targets="valence"), "non-empty list"),
    (dict(targets=[]), "non-empty list"),
    (dict(targets=["valence", 1]), r"\[1\] are not"),
    (dict(targets=["valence", "valence"]), "more than once"),
    (dict(targets=["valence"], labels=["a", "b"]), "set prepare.labels to null"),
    (dict(targets=["split"]), "another meaning"),
])
def test_targets_param_checked(tmp_path, params, match):
    with pytest.raises(UserError, match=match):
        prepare("manifest", _write(tmp_path, MANIFEST), tmp_path / "u.parquet", params)
    with pytest.raises(UserError, match="for the manifest adapter"):
        prepare("demo", "data/demo", tmp_path / "u.parquet", dict(targets=["valence"]))


def test_iemocap_dimensional(iemocap, tmp_path):  # noqa: F811
    t = prepare("iemocap", iemocap, tmp_path / "u.parquet", dict(target="dimensional", dev_fraction=0.25, seed=3))
    df = t.to_pandas()
    assert target_names(t.schema) == ["valence", "arousal", "dominance"] and task_of(t.schema) == "regression"
    assert len(df) == 50  # every utterance, xxx / oth / sur included (35 in the 6-class protocol)
    assert df.label.isna().all() and (df.label_id == -1).all()
    assert {s.split("code=")[1] for s in df.source} == {"hap", "sad", "neu", "ang", "exc", "fru", "sur", "oth", "xxx"}
    assert all(list(v) == [2.5, 3.0, 2.0] for v in df.targets)
    # the same split protocol: Session 5 test, seeded whole dev dialogues as in the categorical run
    cat = prepare("iemocap", iemocap, tmp_path / "c.parquet", dict(dev_fraction=0.25, seed=3)).to_pandas()
    assert (df.split == "test").eq(df.dialogue_id.str.startswith("Ses05")).all()
    assert dict(zip(df.dialogue_id, df.split)) == dict(zip(cat.dialogue_id, cat.split))
    assert "classes=6" in cat.source.iloc[0] and cat.targets.isna().all()  # the categorical path is unchanged


def test_iemocap_dimensional_values_and_bad_triple(iemocap, tmp_path):  # noqa: F811
    ev = iemocap / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    original = ev.read_text()
    lines = original.splitlines()
    i = next(k for k, line in enumerate(lines) if "\tSes01F_impro01_F000\t" in line)
    try:
        lines[i] = lines[i].replace("[2.5000, 3.0000, 2.0000]", "[1.7500, 4.2500, 3.5000]")
        ev.write_text("\n".join(lines))
        df = prepare("iemocap", iemocap, tmp_path / "u.parquet", dict(target="dimensional")).to_pandas()
        row = df[df.source.str.contains("utt=Ses01F_impro01_F000 ")]
        assert len(row) == 1 and list(row.targets.iloc[0]) == [1.75, 4.25, 3.5]
        for bad in ("[1.7500, 4.2500]", "[1.7500, nan, 3.5000]", "[a, b, c]", ""):
            lines[i] = lines[i].split("\t[")[0].rstrip("\t") + "\t" + bad
            ev.write_text("\n".join(lines))
            with pytest.raises(UserError, match=rf"Ses01F_impro01.txt line {i + 1}: expected \[valence"):
                prepare("iemocap", iemocap, tmp_path / "u.parquet", dict(target="dimensional"))
        # the categorical protocol does not read the triple
        assert len(prepare("iemocap", iemocap, tmp_path / "c.parquet").to_pandas()) == 35
    finally:
        ev.write_text(original)
    with pytest.raises(UserError, match="emotion .* or dimensional"):
        prepare("iemocap", iemocap, tmp_path / "u.parquet", dict(target="sentiment"))


@pytest.mark.parametrize("csd", [False, True], ids=["label_csv", "sdk_csd"])
def test_mosei_sentiment_regression(tmp_path, csd):
    root = mosei_tree(tmp_path / "CMU_MOSEI", csd)
    t = prepare("mosei", root, tmp_path / "u.parquet", {"target": "sentiment"})
    assert target_names(t.schema) == ["sentiment"] and label_names(t.schema) == []
    scores = {(vid, i): sc for vid, segs in VIDEOS.items()
              for i, sc in enumerate(s[4] for s in segs if s[4] is not None)}
    rows = {(r["dialogue_id"], r["utterance_id"]): r for r in t.to_pylist()}
    assert rows.keys() == scores.keys()
    for key, r in rows.items():  # the .csd stores float32: equal to its rounding
        assert r["targets"] == [pytest.approx(scores[key], abs=1e-6)] and r["label"] is None, key
        assert f"score={scores[key]:.4f}" in r["source"]
    if not csd:
        assert rows[("vidA", 0)]["targets"] == [2.6]  # the CSV score exactly
