"""Step ``report``: every result table and figure of the five papers, per corpus, regenerated from experiments.

Reads ``dvc exp show --json`` (all branches, their experiments and queued-sweep results) — or a saved copy —
groups runs by corpus (dataset + target + label set: the ``corpus`` block ``evaluate`` copies from the utterance
table's provenance; older runs: derived from ``prepare.*``) and, within a corpus, by every parameter but the
seed (mean ± std over seeds, sample std). Within a corpus each model has a reference configuration (a recipe
run first, else the one closest to the committed params.yaml; ``runs.reference``); ablation and modality tables compare with it.

Writes under ``reports/results/``:
  README.md                 every corpus's section on one page
  model_comparison.md       all corpora, one table per corpus (model, modalities, wF1, macro F1, acc, seeds, params)
  modalities.md, ablations.md, per_class_f1.md   likewise, one table per corpus
  <corpus>/papers.md        the papers' layouts: SUMMER Tables 1–4, M2FNet Tables 3 and 5 (dev), DialogueTRM
                            Tables 4 and 6, LPGNet Tables 3, 6, 7, Ada2I Table 3 and Figs. 1b/4/5
  <corpus>/analyses.md      per model: emotion shift (intra/inter-speaker vs none), t-SNE of the fused test
                            representations, per-class F1
  <corpus>/*.png + *.csv    every figure with its data beside it
  reproduction.md, <corpus>/reproduction.md   every paper number text alone can test beside ours, with Δ, the
                            ablation's sign and the cause (``reproduction``, rows in ``paper_rows.yaml``;
                            corpus = iemocap6 | iemocap4 | meld7)
A paper row that was never run reads "not run — run `dvc exp run …`".

Runs: the live experiments and the committed run store ``reports/runs/`` (``store``; a live experiment wins
over its stored copy). ``python -m pipeline.report save NAME… [--all-matching 'iemo6-*']`` stores experiments.

Run: ``python -m pipeline.report [--exp-json FILE] [--store-only] [--out DIR] [--require model=summer]
[--efficiency FILE.json]``.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from pipeline.common import atomic_write_text, load_params, setup_logging
from pipeline.report import figures, reproduction, tables
from pipeline.report.runs import (METRICS_FILE, Corpus, Group, ReportError, Run, by_corpus, config_of, corpus_info,
                                  diff, flatten, fmt, group_runs, load_exp_show, modality_label, read_csv, reference,
                                  runs_from_exp_show)
from pipeline.report.tables import find_variant, md_table, missing

log = logging.getLogger("merc.report")
UTTERANCES = "data/prepared/utterances.parquet"
PREDICTIONS = "reports/predictions.csv"
TSNE = "reports/plots/tsne.csv"
CHECKPOINT = "data/model/model.pt"
LIVE = "reports/train/plots/metrics/train"

__all__ = ["ReportError", "Run", "Group", "Corpus", "runs_from_exp_show", "write_report", "check_required",
           "group_runs", "config_of", "flatten", "modality_label", "diff", "fmt", "main"]


# ----------------------------------------------------------------------------------------------- run artifacts
def utterance_table(run: Run) -> pd.DataFrame | None:
    """The run's utterance table: from the DVC cache (its dvc.lock md5), else the workspace's if it is the
    same corpus (its provenance says so)."""
    raw = run.file(UTTERANCES)
    if raw is not None:
        return pd.read_parquet(io.BytesIO(raw))
    if Path(UTTERANCES).is_file():
        from pipeline.report.runs import corpus_from_info

        if corpus_from_info(corpus_info(UTTERANCES)) == run.corpus:
            return pd.read_parquet(UTTERANCES)
    return None


def _pct(v: float) -> str:
    return "–" if v != v else f"{100 * v:.2f}"  # NaN (no utterance in the case) → –


def shift_section(corpus: Corpus, groups: list[Group], params: dict) -> str:
    """DialogueTRM Table 6 layout for every model (its reference on this corpus; predictions of the run
    selected on dev)."""
    from pipeline.analysis import emotion_shift

    rows, notes = [], []
    for model in sorted({g.model for g in groups}):
        g = reference(groups, params, model)
        run = g.selected()
        pred = read_csv(run, PREDICTIONS)
        utt = utterance_table(run) if pred is not None else None
        if pred is None or utt is None:
            what = PREDICTIONS if pred is None else UTTERANCES
            notes.append(f"- {model}: {what} of {run.name} is not readable here; "
                         f"run `dvc exp apply {run.name} && dvc checkout` then `python -m pipeline.report "
                         "--include-workspace`, or rerun it")
            continue
        s = emotion_shift(utt, pred)
        rows.append([g.label(), run.name] + [x for case in ("all", "no_shift", "intra_shift", "inter_shift")
                                             for x in (_pct(s[case]["accuracy"]), _pct(s[case]["weighted_f1"]),
                                                       f"{s[case]['n']} ({s[case]['per_dialogue']:.1f})")])
    head = ["model", "run"] + [f"{c} {k}" for c in ("OG", "no shift", "Intra-ES", "Inter-ES")
                               for k in ("ACC %", "w-F1 %", "n (per dialogue)")]
    text = ("Emotion shift (DialogueTRM Table 6 layout): test utterances whose same speaker's previous utterance "
            "had another gold label (Intra-ES), whose preceding utterance was another speaker's with another label "
            "(Inter-ES; both may hold), or neither (no shift; first utterances excluded).\n\n")
    text += md_table(head, rows) if rows else "No run's predictions readable.\n"
    return text + ("\n" + "\n".join(notes) + "\n" if notes else "")


def tsne_section(corpus: Corpus, groups: list[Group], params: dict, out: Path) -> str:
    """SUMMER Fig. 6 for every model: the t-SNE coordinates ``evaluate`` wrote, redrawn per model."""
    lines = []
    for model in sorted({g.model for g in groups}):
        g = reference(groups, params, model)
        run = g.selected()
        df = read_csv(run, TSNE)
        if df is None:
            lines.append(f"- {model}: no {TSNE} in {run.name} (evaluated before t-SNE existed): rerun it, "
                         f"`{tables.run_command(groups, params, model, {}, g)}`")
            continue
        stem = out / f"tsne_{model}"
        figures.write_csv(df, stem.with_suffix(".csv"))
        figures.plot_scatter(df, stem.with_suffix(".png"), f"{model}: t-SNE of the fused test representations\n"
                                                           f"{corpus.family}, {len(corpus.labels)} classes ({run.name})")
        lines.append(f"- {model} ({run.name}, {len(df)} utterances): ![t-SNE {model}]({stem.name}.png) "
                     f"(data: `{stem.name}.csv`)")
    return "t-SNE of the fused test representations, coloured by gold label (SUMMER Fig. 6):\n\n" + "\n".join(lines) + "\n"


def ada2i_figures(corpus: Corpus, groups: list[Group], params: dict, out: Path) -> str:
    """Ada2I Fig. 4 (ρ per epoch: full, w/o AMW, w/o AFW, w/o modulation), Fig. 1b (unimodal scores, when the
    model logs ``score_<m>``) and Fig. 5 (per-label share of each modality's classifier-weight norm)."""
    ref = reference(groups, params, "ada2i")
    if ref is None:
        return f"Ada2I Figs. 1b/4/5: {missing(groups, params, 'ada2i', {}, None)}\n"
    text = []
    variants = [("Ada2I", {}), ("w/o AMW", {"model_params.ada2i.amw": False}),
                ("w/o AFW", {"model_params.ada2i.afw": False}),
                ("w/o modulation", {"model_params.ada2i.modulation": False})]
    for fig, prefix, ylabel in (("Fig. 4", "rho", "ρ"), ("Fig. 1b", "score", "score")):
        frames, todo = [], []
        for label, ch in variants if prefix == "rho" else variants[:1]:
            g = find_variant([g for g in groups if g.model == "ada2i"], ref, ch)
            if g is None:
                todo.append(f"- {label}: {missing(groups, params, 'ada2i', ch, ref)}")
                continue
            run = g.selected()
            for m in "tav":
                tsv = figures.read_tsv(run.file(f"{LIVE}/{prefix}_{m}.tsv"))
                if tsv is not None and f"{prefix}_{m}" in tsv:
                    frames.append(pd.DataFrame({"variant": label, "modality": m, "epoch": tsv["step"],
                                                ylabel: tsv[f"{prefix}_{m}"]}))
        name = f"ada2i_{prefix}"
        if frames:
            df = pd.concat(frames, ignore_index=True)
            figures.write_csv(df, out / f"{name}.csv")
            figures.plot_series(df, out / f"{name}.png", "epoch", ylabel, ["variant", "modality"],
                                f"Ada2I {fig} ({corpus.family}, {len(corpus.labels)} classes)",
                                hline=1.0 if prefix == "rho" else None)
            text.append(f"Ada2I {fig} ({ylabel} per epoch): ![{name}]({name}.png) (data: `{name}.csv`)")
        else:
            text.append(f"Ada2I {fig}: no `{LIVE}/{prefix}_<m>.tsv` in the runs"
                        + (" (the model logs ρ only, not the unimodal scores)" if prefix == "score" else ""))
        text += todo
    run = ref.selected()
    classes = list(corpus.labels)
    frames = []
    for m in "tav":  # wnorm_<m>_c<k>.tsv: each class's AMW weight-row norm per epoch (logged by the model)
        for k in range(max(len(classes), 1)):
            tsv = figures.read_tsv(run.file(f"{LIVE}/wnorm_{m}_c{k}.tsv"))
            if tsv is not None and f"wnorm_{m}_c{k}" in tsv:
                frames.append(pd.DataFrame({"modality": m, "label": classes[k] if k < len(classes) else str(k),
                                            "epoch": tsv["step"], "norm": tsv[f"wnorm_{m}_c{k}"]}))
    if frames:
        df = pd.concat(frames, ignore_index=True)
        figures.write_csv(df, out / "ada2i_weight_norms.csv")
        figures.plot_series(df, out / "ada2i_weight_norms.png", "epoch", "norm", ["modality", "label"],
                            f"Ada2I Fig. 5: per-class weight norm per modality ({run.name})")
        text.append("Ada2I Fig. 5 (per-class ‖W_m‖ per epoch): ![weights](ada2i_weight_norms.png) "
                    "(data: `ada2i_weight_norms.csv`)")
        return "\n".join(f"- {t}" if not t.startswith("- ") else t for t in text) + "\n"
    raw = run.file(CHECKPOINT)  # older runs: the final weights from the checkpoint
    if raw is None:
        text.append(f"Ada2I Fig. 5: checkpoint of {run.name} not in the DVC cache here")
    else:
        import torch

        try:
            ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            runs = ckpt.get("runs") or [ckpt]
            sd = next((r["state_dict"] for r in runs if r.get("seed") == ckpt.get("seed")), runs[0]["state_dict"])
            df = figures.classifier_weight_norms(sd, list(ckpt["modalities"]), list(ckpt["labels"]))
            figures.write_csv(df, out / "ada2i_weight_norms.csv")
            figures.plot_grouped_bars({m: dict(zip(sub.label, sub.share)) for m, sub in df.groupby("modality")},
                                      out / "ada2i_weight_norms.png", "share of ‖W_m‖",
                                      f"Ada2I Fig. 5: per-label modality weight norms ({run.name})")
            text.append("Ada2I Fig. 5 (per-label share of ‖W_m‖): ![weights](ada2i_weight_norms.png) "
                        "(data: `ada2i_weight_norms.csv`)")
        except Exception as e:  # noqa: BLE001 — an unreadable checkpoint is a line in the report, not a crash
            text.append(f"Ada2I Fig. 5: checkpoint of {run.name} unreadable ({type(e).__name__}: {e})")
    return "\n".join(f"- {t}" if not t.startswith("- ") else t for t in text) + "\n"


# -------------------------------------------------------------------------------------------------------- report
def corpus_classes(corpus: Corpus, groups: list[Group]) -> list[str]:
    return list(corpus.labels) or list(dict.fromkeys(c for g in groups for c in g.per_class("f1")))


def corpus_section(corpus: Corpus, groups: list[Group], params: dict, out_dir: Path,
                   analyses: bool = True) -> dict[str, str]:
    """Markdown pieces of one corpus (and its figures under ``out_dir/<slug>/``)."""
    d = out_dir / corpus.slug
    if corpus.regression:  # no classes: one comparison table; the classification tables say why they are empty
        table = tables.regression_comparison(corpus, groups, params)
        none = "regression corpus: see the model comparison (Pearson r, CCC, MAE per target).\n"
        md = {"model_comparison": table, "text_only": none, "modalities": tables.regression_comparison(
            corpus, [g for g in groups if g.modalities != "tav"], params) if len(groups) > 1 else none,
            "ablations": none, "per_class_f1": none,
            "papers": ("Ada2I Table 4 (CMU-MOSEI) columns are in the model comparison.\n"
                       if list(corpus.targets) == ["sentiment"] else
                       "DialogueTRM Table 2 (AVEC: Pearson r per target) = the model comparison's r columns.\n")}
        atomic_write_text(f"# {corpus.name}: the papers' tables\n\n{md['papers']}", d / "papers.md")
        return md
    classes = corpus_classes(corpus, groups)
    md = {"model_comparison": tables.model_comparison(groups, params),
          "modalities": tables.modalities(groups, params),
          "ablations": tables.ablations(groups, params),
          "per_class_f1": tables.per_class_f1(groups, params, classes),
          "text_only": tables.text_only(corpus, groups)}
    bars = {f"{g.label()} {g.modalities}": g.per_class("f1") for g in groups}
    figures.bars_with_data(bars, d / "per_class_f1.png", "test F1",
                           f"Per-class F1 ({corpus.family}, {len(corpus.labels)} classes)")
    papers = tables.paper_tables(corpus, groups, params, classes)
    if analyses:
        papers["ada2i"] += "\n" + ada2i_figures(corpus, groups, params, d)
        papers["dialoguetrm"] += ("\nDialogueTRM Table 6 (Intra-ES / Inter-ES) for every model: "
                                  "[analyses.md](analyses.md).\n")
        papers["summer"] += "\nSUMMER Fig. 6 (t-SNE) for every model: [analyses.md](analyses.md).\n"
        md["analyses"] = "\n".join([shift_section(corpus, groups, params), tsne_section(corpus, groups, params, d),
                                    "Per-class F1 across models: ![per-class F1](per_class_f1.png) "
                                    "(data: `per_class_f1.csv`)\n"])
    papers["lpgnet"] += ("\nLPGNet's \"lightweight\" claim: the efficiency table of the results page "
                         "(`python -m pipeline.analysis efficiency`).\n")
    titles = {"summer": "SUMMER (Li et al. 2025)", "m2fnet": "M2FNet", "dialoguetrm": "DialogueTRM (Mao et al. 2021)",
              "lpgnet": "LPGNet (He & Xiao 2025)", "ada2i": "Ada2I (Nguyen et al. 2024)"}
    md["papers"] = "\n".join(f"### {titles[k]}\n\n{v}" for k, v in papers.items())
    atomic_write_text(f"# {corpus.name}: the papers' tables\n\n{md['papers']}", d / "papers.md")
    if "analyses" in md:
        atomic_write_text(f"# {corpus.name}: analyses\n\n{md['analyses']}", d / "analyses.md")
    return md


def write_report(runs: list[Run], params: dict, out_dir: str | Path, analyses: bool = True,
                 efficiency: str | None = None,
                 paper_rows: str | Path | None = reproduction.PAPER_ROWS) -> dict[str, str]:
    """All tables, per corpus; returns the Markdown of each combined file (keyed by stem)."""
    if not runs:
        raise ReportError(f"no experiment with {METRICS_FILE} found: run `dvc repro` or `dvc exp run` "
                          "(or queue a sweep, see README) first")
    out_dir = Path(out_dir)
    corpora = by_corpus(group_runs(runs))
    sections = {c: corpus_section(c, gs, params, out_dir, analyses) for c, gs in corpora.items()}
    combined = {}
    for stem in ("model_comparison", "text_only", "modalities", "ablations", "per_class_f1"):
        combined[stem] = "\n".join(f"## {c.name}\n\n{s[stem]}" for c, s in sections.items())
        atomic_write_text(combined[stem], out_dir / f"{stem}.md")
    page = ["# Results (generated by `python -m pipeline.report`; do not edit)\n",
            f"{len(runs)} runs, {sum(len(g) for g in corpora.values())} configurations on {len(corpora)} "
            "corpora. Test split; checkpoints selected on dev; mean ± std over seeds (sample std).\n"]
    if efficiency and Path(efficiency).is_file():
        from pipeline.analysis import efficiency_table

        page += ["## Efficiency (all corpora: random inputs of the stated widths)\n",
                 efficiency_table(json.loads(Path(efficiency).read_text()))]
    for c, s in sections.items():
        slug = c.slug
        page += [f"## {c.name}\n", "### Model comparison\n", s["model_comparison"],
                 "### Text only (the paper's text-only number beside ours)\n", s["text_only"],
                 "### Modality combinations\n",
                 s["modalities"], "### Ablations\n", s["ablations"], "### Per-class F1\n", s["per_class_f1"],
                 f"![per-class F1]({slug}/per_class_f1.png)\n",
                 f"### The papers' tables\n\nSee [{slug}/papers.md]({slug}/papers.md).\n"]
        if "analyses" in s:
            page.append(f"### Analyses\n\nSee [{slug}/analyses.md]({slug}/analyses.md).\n")
    repro = reproduction.write(runs, params, out_dir, paper_rows) if paper_rows else {}
    if repro:
        page.append("## Reproduction of the papers' text-only numbers\n\nSee [reproduction.md](reproduction.md) ("
                    + ", ".join(f"[{k.split('/')[0]}]({k}.md)" for k in repro if "/" in k) + ").\n")
    atomic_write_text("\n".join(page), out_dir / "README.md")
    log.info("wrote %s: %d runs on %d corpora", out_dir, len(runs), len(corpora))
    combined.update({f"{c.slug}/{k}": v for c, s in sections.items() for k, v in s.items()})
    combined.update(repro)
    return combined


def check_required(runs: list[Run], required: list[str]) -> None:
    """``key=value`` (flattened params, e.g. ``model=summer``) must match at least one run."""
    for req in required:
        key, _, value = req.partition("=")
        if not any(str(flatten(r.params).get(key)) == value for r in runs):
            have = sorted({str(flatten(r.params).get(key)) for r in runs})
            raise ReportError(f"no experiment with {key}={value} (have: {have}); run `dvc exp run -S {key}={value}`")


def base_params() -> dict:
    """The committed params.yaml (HEAD): after `dvc exp run -S …` the workspace's holds that experiment's."""
    import subprocess

    import yaml

    proc = subprocess.run(["git", "show", "HEAD:params.yaml"], capture_output=True, text=True)
    if proc.returncode == 0:
        try:
            return yaml.safe_load(proc.stdout) or {}
        except yaml.YAMLError:
            pass
    return load_params()


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["save"]:  # python -m pipeline.report save NAME … (the committed run store)
        from pipeline.report import store

        return store.main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp-json", help="saved `dvc exp show --json` output (default: run it)")
    ap.add_argument("--out", default="reports/results", help="folder of the Markdown pages and figures")
    ap.add_argument("--store", default="reports/runs", help="committed run store read with the live experiments")
    ap.add_argument("--no-store", action="store_true", help="live experiments only")
    ap.add_argument("--store-only", action="store_true", help="the store only (no `dvc exp show`: a fresh clone)")
    ap.add_argument("--paper-rows", default=str(reproduction.PAPER_ROWS),
                    help="paper rows of the reproduction tables (YAML)")
    ap.add_argument("--require", action="append", default=[], help="key=value that some run must have")
    ap.add_argument("--include-workspace", action="store_true")
    ap.add_argument("--no-analyses", action="store_true", help="tables only (no emotion shift, t-SNE, Ada2I figures)")
    ap.add_argument("--efficiency", default="reports/results/efficiency.json",
                    help="rows of `python -m pipeline.analysis efficiency` to include")
    ap.add_argument("--readme", default="",
                    help="a README whose reproduction block to rewrite from the committed store (README.md)")
    args = ap.parse_args(argv)
    try:
        from pipeline.report import store

        if args.no_store and args.store_only:
            raise ReportError("--no-store and --store-only exclude each other")
        live = [] if args.store_only else runs_from_exp_show(load_exp_show(args.exp_json), args.include_workspace)
        runs = store.merge(live, [] if args.no_store else store.load(args.store))
        check_required(runs, args.require)
        write_report(runs, base_params(), args.out, not args.no_analyses, args.efficiency, args.paper_rows)
        if args.readme and not args.no_store and args.paper_rows:
            # the store's runs only: the README's numbers regenerate on a fresh clone (live experiments do not)
            block = reproduction.readme_markdown(store.load(args.store), base_params(), args.paper_rows)
            if reproduction.update_readme(args.readme, block):
                log.info("rewrote the reproduction block of %s from %s", args.readme, args.store)
    except ReportError as e:
        log.error("%s", e)
        sys.exit(2)



