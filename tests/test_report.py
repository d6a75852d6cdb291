"""Result tables from experiment JSON; confusion image agrees with its data; clear errors."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from pipeline.training.plots import plot_confusion, plot_curves, read_png_matrix
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
    assert (tmp_path / "README.md").exists() and (tmp_path / "demo_emotion_7" / "per_class_f1.png").stat().st_size > 1000
    assert (tmp_path / "demo_emotion_7" / "per_class_f1.csv").exists()  # every PNG has its data beside it
    assert comp.startswith("## demo (MELD layout) — emotion, 7 classes")


def test_missing_experiment_is_a_clear_message(tmp_path, exp_json):
    runs = runs_from_exp_show(exp_json)
    with pytest.raises(ReportError, match=r"no experiment with model=summer .*dvc exp run -S model=summer"):
        check_required(runs, ["model=summer"])
    with pytest.raises(ReportError, match="no experiment with reports/metrics.json"):
        write_report([], PARAMS, tmp_path)


def test_cli_missing_experiment_exits_without_traceback(tmp_path):
    f = tmp_path / "exp.json"
    f.write_text(json.dumps([]))
    proc = subprocess.run([sys.executable, "-m", "pipeline.report", "--exp-json", str(f), "--out", str(tmp_path),
                           "--no-store"], cwd=ROOT, capture_output=True, text=True)
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


# ------------------------------------------------------------------------------------------- per corpus, papers
from pipeline.report import runs as report_runs  # noqa: E402
from pipeline.report.runs import Corpus, group_runs, reference  # noqa: E402
from pipeline.report.tables import md_table, paper_tables  # noqa: E402

MELD = with_(PARAMS, prepare={"dataset": "meld", "root": "../shared/data/meld"})


def test_two_corpora_never_share_a_table(tmp_path):
    runs = runs_from_exp_show([entry("a", "demo-gru", PARAMS, metrics(0.70)),
                               entry("b", "meld-gru", MELD, metrics(0.55)),
                               entry("c", "meld-mlp", with_(MELD, model="mlp"), metrics(0.50))])
    md = write_report(runs, PARAMS, tmp_path, analyses=False)
    meld, demo = md["meld_emotion_7/model_comparison"], md["demo_emotion_7/model_comparison"]
    assert "meld-gru" in meld and "meld-mlp" in meld and "demo-gru" not in meld
    assert "demo-gru" in demo and "meld" not in demo
    # within a corpus the reference is that corpus's run, not params.yaml: the MELD gru row is "reference"
    assert "| reference | meld-gru |" in meld
    sections = md["model_comparison"].split("## ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["MELD — emotion, 7 classes (" + ", ".join(EMOTIONS) + ")",
                                                     "demo (MELD layout) — emotion, 7 classes (" + ", ".join(EMOTIONS) + ")"]
    assert (tmp_path / "meld_emotion_7" / "papers.md").exists() and (tmp_path / "demo_emotion_7" / "papers.md").exists()


def test_meld_ablation_is_in_the_meld_ablation_table(tmp_path):
    """A model param changed on a non-demo corpus is an ablation of that corpus's reference."""
    runs = runs_from_exp_show([entry("b", "meld-gru", MELD, metrics(0.55)),
                               entry("b2", "meld-gru-h64", with_(MELD, model_params__gru__hidden=64), metrics(0.52)),
                               entry("b3", "meld-gru-t", with_(MELD, train__modalities=["t"]), metrics(0.50)),
                               entry("a", "demo-gru", PARAMS, metrics(0.70))])
    md = write_report(runs, PARAMS, tmp_path, analyses=False)
    abl = md["meld_emotion_7/ablations"]
    assert "| `model_params.gru.hidden=64` | 0.5200 |" in abl and "| reference | 0.5500 |" in abl
    assert "prepare" not in abl and "meld-gru-t" not in abl
    assert "meld-gru-h64" not in md["demo_emotion_7/ablations"]
    mod = next(line for line in md["meld_emotion_7/modalities"].splitlines() if line.startswith("| gru"))
    assert [c.strip() for c in mod.strip("|").split("|")][1:] == ["0.5000", "–", "–", "–", "–", "–", "0.5500"]


def test_corpus_comes_from_the_metrics_provenance_block():
    """evaluate's `corpus` block (the utterance table's provenance) names the corpus; params are a fallback."""
    m = {**metrics(0.6), "corpus": {"adapter": "manifest", "target": "emotion", "source": "iemocap6_text",
                                   "labels": "angry,excited,frustrated,happy,neutral,sad"}}
    man = with_(PARAMS, prepare={"dataset": "manifest", "root": "x/iemocap6_text.csv"})
    r = runs_from_exp_show([entry("a", "iemo", man, m)])[0]
    assert r.corpus == Corpus("manifest", "emotion", ("angry", "excited", "frustrated", "happy", "neutral", "sad"),
                              "iemocap6_text")
    assert r.corpus.family == "iemocap" and "6 classes" in r.corpus.name
    iemo4 = runs_from_exp_show([entry("b", "i4", with_(PARAMS, prepare={"dataset": "iemocap", "iemocap_classes": 4}),
                                      metrics(0.6))])[0]
    assert iemo4.corpus.labels == ("angry", "happy", "neutral", "sad") and iemo4.corpus.family == "iemocap"


def _pc(f1, rec, sup):
    return {c: {"f1": f, "recall": r, "precision": r, "support": s} for c, f, r, s in zip(("a", "b"), f1, rec, sup)}


def test_paper_layouts_against_expected_markdown():
    """Synthetic records on a 2-class manifest corpus → SUMMER Table 1/2 and Ada2I Table 3 Markdown, exactly."""
    corpus = {"adapter": "manifest", "target": "emotion", "labels": "a,b", "source": "toy"}
    p = with_(PARAMS, prepare={"dataset": "manifest", "root": "toy.csv"}, model="ada2i",
              model_params={"ada2i": {"hidden": 8}})

    def m(wf1, acc, f1, rec):
        return {"weighted_f1": wf1, "accuracy": acc, "macro_f1": 0.5, "n_params": 10, "corpus": corpus,
                "per_class": _pc(f1, rec, (3, 1))}

    runs = runs_from_exp_show([
        entry("r1", "ada-s0", p, m(0.60, 0.70, (0.8, 0.4), (0.9, 0.2))),
        entry("r2", "ada-s1", with_(p, train__seed=1), m(0.80, 0.90, (0.6, 0.2), (0.7, 0.4))),
        entry("r3", "ada-ta", with_(p, train__modalities=["t", "a"]), m(0.50, 0.55, (0.5, 0.5), (0.5, 0.5)))])
    groups = group_runs(runs)
    assert len({g.corpus for g in groups}) == 1
    pt = paper_tables(groups[0].corpus, groups, PARAMS, ["a", "b"])
    expected_summer = md_table(
        ["model", "a ACC", "a F1", "b ACC", "b F1", "w-ACC", "w-F1", "seeds"],
        [["ada2i", "80.00", "70.00", "30.00", "30.00", "80.00 ± 14.14", "70.00 ± 14.14", 2]])
    assert expected_summer in pt["summer"]
    expected_ada = md_table(["method", "TAV W-F1", "TAV Acc", "TA W-F1", "TA Acc", "TV W-F1", "TV Acc", "AV W-F1",
                             "AV Acc"],
                            [["ada2i", "70.00 ± 14.14", "80.00 ± 14.14", "50.00", "55.00", "–", "–", "–", "–"]])
    assert expected_ada in pt["ada2i"]
    # a missing pair is a line naming the command, from this corpus's reference
    assert "- T+V: not run — run `dvc exp run -S model=ada2i -S prepare.dataset=manifest -S prepare.root=toy.csv " \
           "-S model_params.ada2i.hidden=8 -S train.modalities=tv`" in pt["ada2i"]


def test_missing_paper_model_is_a_run_line_not_an_empty_table(tmp_path):
    runs = runs_from_exp_show([entry("b", "meld-gru", MELD, metrics(0.55))])
    write_report(runs, PARAMS, tmp_path, analyses=False)
    papers = (tmp_path / "meld_emotion_7" / "papers.md").read_text()
    for model in ("m2fnet", "lpgnet", "ada2i", "dialoguetrm", "summer"):
        assert f"not run — run `dvc exp run -S model={model} -S prepare.dataset=meld " \
               "-S prepare.root=../shared/data/meld`" in papers


def test_lpgnet_table3_fills_run_variants_and_names_the_others():
    lp = with_(MELD, model="lpgnet", model_params={"lpgnet": {"inter": True, "intra": True, "ffn": True,
                                                             "dual_gate": True, "lambda_task": 1.5, "lambda_ce": 1.0,
                                                             "lambda_kl": 0.3}})
    runs = runs_from_exp_show([entry("l1", "lp", lp, {**metrics(0.6, acc=0.65), "ova_accuracy": 0.9, "ova_f1": 0.8}),
                               entry("l2", "lp-nointer", with_(lp, model_params__lpgnet__inter=False),
                                     metrics(0.5, acc=0.55))])
    groups = group_runs(runs)
    assert reference(groups, PARAMS, "lpgnet").name() == "lp"
    params = with_(PARAMS, model_params={**PARAMS["model_params"], "lpgnet": lp["model_params"]["lpgnet"]})
    t = paper_tables(groups[0].corpus, groups, params, EMOTIONS)["lpgnet"]
    # LPGNet's average one-vs-all binary ACC / F1 first (absent in the older record: –), then ours
    assert "| w/o inter attention | – | – | 55.00 | 50.00 | lp-nointer |" in t
    assert "| LPGNet | 90.00 | 80.00 | 65.00 | 60.00 | lp |" in t
    assert "- w/o intra attention: not run — run `dvc exp run -S model=lpgnet -S prepare.dataset=meld " \
           "-S prepare.root=../shared/data/meld -S model_params.lpgnet.intra=false`" in t
    # Table 6: the reference is the paper's 1.5 / 1.0 / 0.3 row
    assert "| 1.5 / 1.0 / 0.3 | 90.00 | 80.00 | 65.00 | 60.00 | lp |" in t


def test_emotion_shift_and_tsne_through_the_report(tmp_path):
    """Run files (predictions, utterance table, t-SNE coordinates) read through the run's reader."""
    import io

    utt = pd.DataFrame({"dialogue_id": ["d"] * 4, "utterance_id": [0, 1, 2, 3], "speaker": list("ABAB"),
                        "label": ["joy", "joy", "anger", "anger"], "split": "test"})
    pred = pd.DataFrame({"dialogue_id": ["d"] * 4, "utterance_id": [0, 1, 2, 3], "actual": utt.label,
                         "predicted": ["joy", "joy", "anger", "joy"]})
    tsne = pd.DataFrame({"x": [0.0, 1, 2, 3], "y": [1.0, 0, 1, 0], "label": utt.label, "dialogue_id": "d",
                         "utterance_id": [0, 1, 2, 3]})
    buf = io.BytesIO()
    utt.to_parquet(buf)
    files = {"reports/predictions.csv": pred.to_csv(index=False).encode(), "data/prepared/utterances.parquet":
             buf.getvalue(), "reports/plots/tsne.csv": tsne.to_csv(index=False).encode()}
    runs = runs_from_exp_show([entry("b", "meld-gru", MELD, metrics(0.55))])
    runs[0].read = files.get
    md = write_report(runs, PARAMS, tmp_path)
    row = next(line for line in md["meld_emotion_7/analyses"].splitlines() if line.startswith("| gru"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # OG 3/4; no shift: utt 1 (correct); intra: utt 2 (A joy→anger, correct), 3 (B joy→anger, wrong);
    # inter: utt 2 (B joy → A anger) only (utt 3 follows A's anger: same label)
    assert cells[2] == "75.00" and cells[5] == "100.00" and cells[8] == "50.00" and cells[11] == "100.00"
    assert cells[10] == "2 (2.0)" and cells[13] == "1 (1.0)"
    out = tmp_path / "meld_emotion_7"
    assert len(pd.read_csv(out / "tsne_gru.csv")) == 4 and (out / "tsne_gru.png").stat().st_size > 1000
    runs[0].read = {}.get  # nothing readable: a line that says what to do, no crash
    md = write_report(runs, PARAMS, tmp_path)
    assert "is not readable here" in md["meld_emotion_7/analyses"] and "no reports/plots/tsne.csv" in md[
        "meld_emotion_7/analyses"]


def test_report_cli_on_demo_and_text_manifest_writes_per_dataset_sections(tmp_path):
    iemo = with_(PARAMS, prepare={"dataset": "manifest", "root": "../shared/data/iemocap_text/iemocap6_text.csv"},
                 train__modalities=["t"])
    m = {**metrics(0.6), "corpus": {"adapter": "manifest", "target": "emotion", "source": "iemocap6_text",
                                   "labels": "angry,excited,frustrated,happy,neutral,sad"}}
    f = tmp_path / "exp.json"
    f.write_text(json.dumps([entry("a", "demo-gru", PARAMS, metrics(0.7)), entry("c", "iemo-gru", iemo, m)]))
    proc = subprocess.run([sys.executable, "-m", "pipeline.report", "--exp-json", str(f), "--out", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r" / "README.md").read_text()
    assert "## iemocap6_text (manifest) — emotion, 6 classes" in page and "## demo (MELD layout)" in page
    assert (tmp_path / "r" / "manifest_iemocap6_text_emotion_6" / "papers.md").exists()
    assert "SUMMER Table 1 (IEMOCAP 6-way)" in (tmp_path / "r" / "manifest_iemocap6_text_emotion_6" / "papers.md").read_text()


_ = report_runs


def test_text_only_table_puts_the_papers_number_beside_ours():
    iemo = with_(PARAMS, prepare={"dataset": "manifest", "root": "iemocap6_text.csv"}, train__modalities=["t"])
    m = {**metrics(0.6, acc=0.62), "corpus": {"adapter": "manifest", "target": "emotion", "source": "iemocap6_text",
                                             "labels": "angry,excited,frustrated,happy,neutral,sad"}}
    runs = runs_from_exp_show([entry("a", "trm", with_(iemo, model="dialoguetrm"), m),
                               entry("b", "m2f", with_(iemo, model="m2fnet"), m),
                               entry("c", "gru-tav", with_(iemo, train__modalities=["t", "a", "v"]), m)])
    groups = group_runs(runs)
    from pipeline.report.tables import text_only

    t = text_only(groups[0].corpus, groups)
    assert "| dialoguetrm | 62.00 | 60.00 | 50.00 | 1 | 68.2 / 68.1 (DialogueTRM-U, Table 2) | trm |" in t
    assert "| m2fnet | 62.00 | 60.00 | 50.00 | 1 | no text-only number in the paper | m2f |" in t
    assert "gru-tav" not in t


def test_ada2i_figures_from_run_files(tmp_path):
    """Fig. 4 from each variant's ρ TSVs, Fig. 1b from score TSVs, Fig. 5 from the per-class norm TSVs."""
    ada = with_(MELD, model="ada2i", model_params={"ada2i": {"amw": True, "afw": True, "modulation": True}})
    params = with_(PARAMS, model_params={**PARAMS["model_params"], "ada2i": ada["model_params"]["ada2i"]})

    def tsv(name, values):
        return ("timestamp\tstep\t" + name + "\n" + "".join(f"0\t{i}\t{v}\n" for i, v in enumerate(values))).encode()

    full = {f"reports/train/plots/metrics/train/rho_{m}.tsv": tsv(f"rho_{m}", [2.0, 1.5]) for m in "ta"}
    full.update({f"reports/train/plots/metrics/train/score_{m}.tsv": tsv(f"score_{m}", [0.3, 0.4]) for m in "ta"})
    full.update({f"reports/train/plots/metrics/train/wnorm_t_c{k}.tsv": tsv(f"wnorm_t_c{k}", [1.0, 1.1])
                 for k in range(7)})
    noamw = {f"reports/train/plots/metrics/train/rho_{m}.tsv": tsv(f"rho_{m}", [3.0, 3.5, 4.0]) for m in "ta"}
    runs = runs_from_exp_show([entry("x1", "ada", ada, metrics(0.6)),
                               entry("x2", "ada-noamw", with_(ada, model_params__ada2i__amw=False), metrics(0.5))])
    runs[0].read, runs[1].read = full.get, noamw.get
    write_report(runs, params, tmp_path)
    out = tmp_path / "meld_emotion_7"
    rho = pd.read_csv(out / "ada2i_rho.csv")
    assert len(rho) == 2 * 2 + 2 * 3 and set(rho.variant) == {"Ada2I", "w/o AMW"}
    assert rho[(rho.variant == "w/o AMW") & (rho.modality == "a")]["ρ"].tolist() == [3.0, 3.5, 4.0]
    assert len(pd.read_csv(out / "ada2i_score.csv")) == 4
    norms = pd.read_csv(out / "ada2i_weight_norms.csv")
    assert len(norms) == 14 and set(norms.label) == set(EMOTIONS)
    for f in ("ada2i_rho.png", "ada2i_score.png", "ada2i_weight_norms.png"):
        assert (out / f).stat().st_size > 1000
    papers = (out / "papers.md").read_text()
    assert "- w/o AFW: not run — run `dvc exp run -S model=ada2i -S prepare.dataset=meld " \
           "-S prepare.root=../shared/data/meld -S model_params.ada2i.afw=false`" in papers


def test_classifier_weight_norms_by_hand():
    from pipeline.report.figures import classifier_weight_norms

    sd = {"fc.weight": np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 6.0, 8.0]])}
    df = classifier_weight_norms(sd, ["t", "a"], ["x", "y"])
    assert df.norm.tolist() == [5.0, 0.0, 0.0, 10.0] and df.share.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_corpus_names_of_imported_and_mosei_corpora():
    from pipeline.report.runs import Corpus

    feats = Corpus("features", "emotion", ("happy", "sad"), "IEMOCAP_features")
    assert feats.name.startswith("IEMOCAP_features (feature pickle)") and feats.family == "iemocap"
    assert Corpus("mosei", "sentiment2", ("negative", "non-negative")).name.startswith("CMU-MOSEI — sentiment2")


def test_dialoguetrm_tables_4_and_5_find_their_variants():
    """Table 4 varies ``context.<m>`` (free/dependent), Table 5 ``fusion`` on T+A+V against the T-only model."""
    from pipeline.report.runs import group_runs
    from pipeline.report.tables import dialoguetrm_table4, dialoguetrm_table5

    base = {"prepare": {"dataset": "demo"}, "model": "dialoguetrm",
            "model_params": {"dialoguetrm": {"window": 14, "fusion": "mgif", "gates": True, "rep_transformer": True,
                                             "context": {"t": "dependent", "a": "free", "v": "free"}}},
            "train": {"modalities": "tav", "seed": 0}}
    exps = [entry("r0", "ref", base, metrics(0.70)),
            entry("u", "u-only", with_(base, train__modalities="t"), metrics(0.60)),
            entry("u2", "u-free", with_(base, train__modalities="t", model_params__dialoguetrm__context={
                "t": "free", "a": "free", "v": "free"}), metrics(0.55)),
            entry("g", "gmu", with_(base, model_params__dialoguetrm__fusion="gmu"), metrics(0.66)),
            entry("ng", "no-gates", with_(base, model_params__dialoguetrm__gates=False), metrics(0.64))]
    root = entry("main0", None, base, metrics(0.70))
    root["experiments"] = [{"revs": [e]} for e in exps]
    groups = group_runs(runs_from_exp_show([root]))
    t4 = dialoguetrm_table4(groups, base)
    row = lambda t, label: next(l for l in t.splitlines() if l.startswith(f"| {label} "))  # noqa: E731
    assert "u-free" in row(t4, "u (free)") and "55.00" in row(t4, "u (free)")
    assert "u-only" in row(t4, "u (dependent)") and "60.00" in row(t4, "u (dependent)")
    assert "not run" in row(t4, "a (free)") or "dvc exp run" in row(t4, "a (free)")
    t5 = dialoguetrm_table5(groups, base)
    assert row(t5, "GMU").split("|")[2:5] == [" 60.00 ", " 66.00 ", " +6.00 "]
    assert "68.1 → 68.8" in row(t5, "GMU") and "gmu" in row(t5, "GMU")
    assert "+10.00" in row(t5, "Our MGIF") and "+4.00" in row(t5, "w/o prototype dependency")
    assert "not run" in row(t5, "MulT")


def test_dialoguetrm_table3_cumulative_ablations_with_paper_values():
    """Table 3 (utterance only): plain BERT (u̇ = context.t free, whatever text-context key it ran with),
    DialogueTRM-U and the step-by-step (cumulative) removals, the paper's ACC / F1 beside ours; a removal run on
    its own (segments off, transformer kept) is not the paper's row; a missing row names its command."""
    from pipeline.report.runs import group_runs
    from pipeline.report.tables import dialoguetrm_table3, dialoguetrm_table4

    trm = {"window": 14, "intra_transformer": True, "context": {"t": "dependent", "a": "free", "v": "free"}}
    base = {"prepare": {"dataset": "demo"}, "model": "dialoguetrm", "model_params": {"dialoguetrm": trm},
            "text": {"context": "dialoguetrm"},
            "train": {"modalities": "tav", "seed": 0, "text_encoder": {"model": "m", "context": "dialoguetrm",
                                                                       "segments": True, "sep": True}}}
    t = dict(train__modalities="t")
    no_tr = dict(model_params__dialoguetrm__intra_transformer=False)
    exps = [entry("r0", "ref", base, metrics(0.70)),
            entry("u", "u-only", with_(base, **t), metrics(0.60, acc=0.62)),
            entry("b", "bert", with_(base, **t, model_params__dialoguetrm__context={"t": "free", "a": "free",
                                                                                   "v": "free"},
                                     text__context="utterance"), metrics(0.50, acc=0.52)),
            entry("nt", "no-trm", with_(base, **t, **no_tr), metrics(0.58, acc=0.59)),
            entry("ns", "no-seg", with_(base, **t, **no_tr, train__text_encoder__segments=False), metrics(0.55)),
            entry("s1", "seg-only", with_(base, **t, train__text_encoder__sep=False), metrics(0.40))]
    root = entry("main0", None, base, metrics(0.70))
    root["experiments"] = [{"revs": [e]} for e in exps]
    groups = group_runs(runs_from_exp_show([root]))
    t3 = dialoguetrm_table3(groups, base)
    row = lambda t, label: next(l for l in t.splitlines() if l.startswith(f"| {label} "))  # noqa: E731
    assert row(t3, "DialogueTRM-U") == "| DialogueTRM-U | 62.00 | 60.00 | 68.2 / 68.1 | u-only |"
    assert row(t3, "BERT-base (u̇: the utterance alone, context-free)").endswith("| 52.00 | 50.00 | 56.7 / 56.4 | bert |")
    assert row(t3, "remove transformer") == "| remove transformer | 59.00 | 58.00 | 67.4 / 67.4 | no-trm |"
    assert row(t3, "remove segment embedding").endswith("| 60.00 | 55.00 | 65.8 / 65.7 | no-seg |")
    assert row(t3, "remove [SEP] tokens") == "| remove [SEP] tokens | – | – | 65.3 / 65.2 | not run |"
    assert "seg-only" not in t3  # the [SEP] removal alone is not the cumulative row
    assert row(t3, "COSMIC") == "| COSMIC | – | – | – / 65.2 | another paper's method (not run here) |"
    assert "- remove [SEP] tokens: not run — run `dvc exp run -S model=dialoguetrm " \
           "-S model_params.dialoguetrm.intra_transformer=false -S train.modalities=t " \
           "-S train.text_encoder.segments=false -S train.text_encoder.sep=false`" in t3
    t4 = dialoguetrm_table4(groups, base)  # the same u̇ run fills Table 4's first row, with the paper's numbers
    assert row(t4, "u (free)") == "| u (free) | 52.00 | 50.00 | 56.7 / 56.4 | bert |"
    assert "| 44.7 / 42.9 | not run — run `dvc exp run" in row(t4, "a (dependent)")
    assert len([l for l in t4.splitlines() if l.startswith("| a") or l.startswith("| u") or l.startswith("| v")]) == 12
