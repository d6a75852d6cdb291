"""Result tables from experiment JSON; confusion image agrees with its data; clear errors."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from pipeline.plots import plot_confusion, plot_curves, read_png_matrix
from pipeline.report import ReportError, check_required, runs_from_exp_show, write_report
from pipeline.schema import EMOTIONS

PARAMS = {"prepare": {"dataset": "demo"}, "text": {"model": "m", "batch_size": 32}, "model": "gru",
          "model_params": {"gru": {"hidden": 128}, "mlp": {"hidden": 64}},
          "train": {"modalities": ["t", "a", "v"], "seed": 0, "weighted_loss": True}}


def metrics(wf1, mf1=0.5, acc=0.6, n_params=1000):
    return {"weighted_f1": wf1, "macro_f1": mf1, "accuracy": acc, "n_params": n_params,
            "per_class": {e: {"f1": wf1, "precision": 0, "recall": 0, "support": 1} for e in EMOTIONS}}


def entry(rev, name, params, m):
    return {"rev": rev, "name": name, "data": {"rev": rev, "params": {"params.yaml": {"data": params}},
                                               "metrics": {"reports/metrics.json": {"data": m}}}}


def with_(params, **changes):
    import copy

    p = copy.deepcopy(params)
    for k, v in changes.items():
        node = p
        *path, last = k.split("__")
        for part in path:
            node = node[part]
        node[last] = v
    return p


@pytest.fixture
def exp_json():
    exps = [
        entry("a1", "gru-s1", with_(PARAMS, train__seed=1), metrics(0.70)),
        entry("a2", "gru-s2", with_(PARAMS, train__seed=2), metrics(0.80)),
        entry("b1", "gru-t", with_(PARAMS, train__modalities=["t"]), metrics(0.60)),
        entry("c1", "gru-h64", with_(PARAMS, model_params__gru__hidden=64), metrics(0.65)),
        entry("d1", "mlp", with_(PARAMS, model="mlp"), metrics(0.55, n_params=500)),
        entry("d2", "mlp-bs", with_(PARAMS, model="mlp", text__batch_size=8, train__seed=3), metrics(0.57, n_params=500)),
        entry("a0", "gru-s0-again", PARAMS, metrics(0.75)),  # the reference seed rerun: not a new sample
        {"rev": "e1", "name": "failed", "error": {"msg": "boom"}, "data": {}},
    ]
    base = entry("main0", None, PARAMS, metrics(0.75))
    base["experiments"] = [{"revs": [e]} for e in exps]
    ws = entry("workspace", None, PARAMS, metrics(0.1))
    return [ws, base]


def test_tables_from_experiment_json(tmp_path, exp_json):
    runs = runs_from_exp_show(exp_json)
    assert sorted(r.name for r in runs) == sorted(["main0", "gru-s1", "gru-s2", "gru-t", "gru-h64", "mlp", "mlp-bs",
                                                   "gru-s0-again"])
    md = write_report(runs, PARAMS, tmp_path)
    comp = md["model_comparison"]
    # three seeds of the reference gru config: 0.75, 0.70, 0.80 → 0.7500 ± 0.0500 (sample std)
    row = next(line for line in comp.splitlines() if "gru-s1" in line)
    assert "0.7500 ± 0.0500" in row and "| 3 |" in row and "main0" in row and "reference" in row
    # a throughput knob (text.batch_size) does not split a configuration: both mlp runs are one row
    mlp = next(line for line in comp.splitlines() if line.startswith("| mlp"))
    assert "0.5600 ± 0.0141" in mlp and "500" in mlp
    assert "workspace" not in comp and "failed" not in comp
    # modality table: T+A+V from the reference group, T from the modality-only variant
    mod = md["modalities"]
    gru = next(line for line in mod.splitlines() if line.startswith("| gru"))
    cells = [c.strip() for c in gru.strip("|").split("|")]
    assert cells[1] == "0.6000" and cells[7] == "0.7500 ± 0.0500" and cells[2] == "–"
    # ablation table lists the hidden-size variant, not the modality variant
    assert "`model_params.gru.hidden=64`" in md["ablations"] and "train.modalities" not in md["ablations"]
    assert (tmp_path / "README.md").exists() and (tmp_path / "per_class_f1.png").stat().st_size > 1000


def test_missing_experiment_is_a_clear_message(tmp_path, exp_json):
    runs = runs_from_exp_show(exp_json)
    with pytest.raises(ReportError, match=r"no experiment with model=summer .*dvc exp run -S model=summer"):
        check_required(runs, ["model=summer"])
    with pytest.raises(ReportError, match="no experiment with reports/metrics.json"):
        write_report([], PARAMS, tmp_path)


def test_cli_missing_experiment_exits_without_traceback(tmp_path):
    f = tmp_path / "exp.json"
    f.write_text(json.dumps([]))
    proc = subprocess.run([sys.executable, "-m", "pipeline.report", "--exp-json", str(f), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no experiment" in proc.stderr and "Traceback" not in proc.stderr


def test_confusion_png_agrees_with_data(tmp_path):
    rows = pd.DataFrame({"actual": ["joy", "joy", "anger", "neutral"], "predicted": ["joy", "anger", "anger", "joy"]})
    ids = {e: i for i, e in enumerate(EMOTIONS)}
    cm = np.zeros((7, 7), int)
    for a, p in zip(rows.actual, rows.predicted):
        cm[ids[a], ids[p]] += 1
    plot_confusion(cm, EMOTIONS, tmp_path / "c.png")
    plot_confusion(cm, EMOTIONS, tmp_path / "n.png", normalize=True)
    counts, norm = read_png_matrix(tmp_path / "c.png"), read_png_matrix(tmp_path / "n.png")
    assert counts["labels"] == EMOTIONS
    np.testing.assert_array_equal(counts["matrix"], cm)
    j, a = EMOTIONS.index("joy"), EMOTIONS.index("anger")
    assert norm["matrix"][j][j] == 0.5 and norm["matrix"][j][a] == 0.5 and norm["matrix"][a][a] == 1.0
    assert sum(norm["matrix"][EMOTIONS.index("fear")]) == 0  # a class with no examples stays zero


def test_curves_from_dvclive_tsv(tmp_path):
    for split in ("train", "dev"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "loss.tsv").write_text("timestamp\tstep\tloss\n0\t0\t1.0\n0\t1\t0.5\n")
    assert plot_curves(tmp_path, tmp_path / "curves.png") == ["loss"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert plot_curves(tmp_path / "nothing", tmp_path / "none.png") == []


def test_multi_seed_run_counts_each_seed(tmp_path):
    """A run with train.seeds stores per-seed metrics under `seeds`: each is one sample."""
    m = metrics(0.7)
    m["seeds"] = {"0": {"seed": 0, "weighted_f1": 0.6, "macro_f1": 0.5, "accuracy": 0.6, "per_class_f1": {"joy": 0.2}},
                  "1": {"seed": 1, "weighted_f1": 0.8, "macro_f1": 0.5, "accuracy": 0.6, "per_class_f1": {"joy": 0.4}}}
    runs = runs_from_exp_show([entry("r0", "two-seeds", with_(PARAMS, train__seeds=[0, 1]), m)])
    md = write_report(runs, PARAMS, tmp_path)
    row = next(line for line in md["model_comparison"].splitlines() if "two-seeds" in line)
    assert "0.7000 ± 0.1414" in row and "| 2 |" in row and "1,000" in row
    assert "0.300" in md["per_class_f1"]  # joy: mean of the two seeds' F1


def test_finetune_seeds_are_samples_of_one_configuration(tmp_path):
    """Fine-tuned encoders under seeds 0/1/2 (train seed 0 each) are three samples in one row, not one."""
    ft = with_(PARAMS, text__finetune={"enabled": True, "seed": 0})
    runs = runs_from_exp_show([entry(f"f{s}", f"ft-s{s}", with_(ft, text__finetune={"enabled": True, "seed": s}),
                                     metrics(w)) for s, w in [(0, 0.6), (1, 0.7), (2, 0.8)]])
    md = write_report(runs, ft, tmp_path)
    row = next(line for line in md["model_comparison"].splitlines() if "ft-s0" in line)
    assert "0.7000 ± 0.1000" in row and "| 3 |" in row and "ft-s2" in row
