"""Markdown tables of one corpus: generic comparisons and the five papers' layouts.

Every function takes the configurations (``Group``) of ONE corpus, so no table mixes corpora. A paper row
whose configuration was never run is a line ``not run — run `dvc exp run …``` naming the command.
"""
from __future__ import annotations

import numpy as np

from pipeline.report.runs import (Corpus, Group, config_of, diff, fmt, modality_label, recipe_changes, reference,
                                  set_dotted)

MODALITY_COLUMNS = ["T", "A", "V", "T+A", "T+V", "A+V", "T+A+V"]
# Keys an ablation may change relative to its reference (besides model_params.<model>.*).
ABLATION_KEYS = {"train.weighted_loss"}


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def describe(d: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in d.items()) or "reference"


def pct(values) -> str:
    """Percent, two decimals (the papers' unit), mean ± std over seeds."""
    return fmt(np.asarray(values, dtype=float), 100.0, 2)


def _cli_value(key: str, v) -> str:
    if key == "train.modalities":
        return str(v).replace("+", "").lower()
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


def run_command(groups: list[Group], params: dict, model: str, changes: dict, ref: Group | None) -> str:
    """``dvc exp run -S …`` that produces ``model`` with ``changes`` on this corpus (from its reference, or from
    the prepare settings of any run on the corpus when the model has none)."""
    base = config_of({**params, "model": model})
    if ref is not None:
        start = diff(ref.config, base, common_only=False)
    else:
        any_cfg = groups[0].config if groups else {}
        start = {k: v for k, v in diff(any_cfg, base, common_only=False).items() if k.startswith("prepare.")}
        start["model"] = model
    start.update(changes)
    start["model"] = model
    # model first, then the corpus (prepare.*), then the rest in key order, the changes last
    order = lambda k: (k != "model", not k.startswith("prepare."), k in changes, k)  # noqa: E731
    sets = []
    for k in sorted(start, key=order):
        v = _cli_value(k, start[k])
        if k not in base or base[k] != start[k] or k == "model":
            sets.append(f"-S '{k}={v}'" if any(c in v for c in "[] ") else f"-S {k}={v}")
    sets = " ".join(sets)
    return f"dvc exp run {sets}".strip()


def missing(groups, params, model, changes, ref) -> str:
    return f"not run — run `{run_command(groups, params, model, changes, ref)}`"


def find_variant(groups: list[Group], ref: Group, changes: dict, free=lambda k: False) -> Group | None:
    """The configuration that equals ``ref`` but for ``changes`` (keys for which ``free(key)`` holds may differ).

    Among several (e.g. runs with and without a recipe), the one with more seeds."""
    hits = []
    for g in groups:
        keys = set(diff(g.config, ref.config, ("prepare.",))) | set(changes)
        if all(free(k) or g.config.get(k) == changes.get(k, ref.config.get(k)) for k in keys):
            hits.append(g)
    return max(hits, key=lambda g: (len(g.values("weighted_f1")), g.name()), default=None)


# ----------------------------------------------------------------------------------------------- generic tables
def model_comparison(groups: list[Group], params: dict) -> str:
    rows = []
    for g in sorted(groups, key=lambda g: (g.model, -np.nan_to_num(np.mean(g.values("weighted_f1"))
                                                                   if g.values("weighted_f1").size else 0))):
        n_params = g.values("n_params")
        ref = reference(groups, params, g.model)
        rows.append([g.label(), g.modalities, fmt(g.values("weighted_f1")), fmt(g.values("macro_f1")),
                     fmt(g.values("accuracy")), len(g.values("weighted_f1")),
                     f"{int(n_params[0]):,}" if n_params.size else "–",
                     describe(diff(g.config, ref.config, ("prepare.",))) if ref is not g else "reference",
                     g.name()])
    return md_table(["model", "modalities", "weighted F1", "macro F1", "accuracy", "seeds", "params",
                     "config vs this corpus's reference", "experiments"], rows)


def regression_comparison(corpus: Corpus, groups: list[Group], params: dict) -> str:
    """A regression corpus (issue #20): mean Pearson r, CCC, MAE over the targets and r per target; for CMU-MOSEI's
    sentiment score also Ada2I Table 4's columns (acc2 both readings, F1, acc7, MAE, Corr)."""
    rows, per = [], list(corpus.targets)
    mosei = per == ["sentiment"]
    for g in sorted(groups, key=lambda g: (g.model, -np.nan_to_num(np.mean(g.values("pearson_r"))
                                                                   if g.values("pearson_r").size else 0))):
        ref = reference(groups, params, g.model)
        seeds = list(g.by_seed().values())
        per_r = [fmt(np.asarray([m["per_target"][t]["pearson_r"] for m in seeds
                                 if isinstance((m.get("per_target") or {}).get(t), dict)]), digits=3) for t in per]
        extra = [pct(g.values(k)) for k in ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7")] + \
            [fmt(g.values("corr"), digits=3)] if mosei else []
        rows.append([g.label(), g.modalities, fmt(g.values("pearson_r"), digits=3), fmt(g.values("ccc"), digits=3),
                     fmt(g.values("mae"), digits=3), *per_r, *extra, len(g.values("pearson_r")),
                     describe(diff(g.config, ref.config, ("prepare.",))) if ref is not g else "reference", g.name()])
    head = ["model", "modalities", "mean r", "mean CCC", "mean MAE", *[f"r {t}" for t in per]]
    if mosei:
        head += ["Acc-2 (has-0)", "F1 (has-0)", "Acc-2 (non-0)", "F1 (non-0)", "Acc-7", "Corr"]
    return md_table(head + ["seeds", "config vs this corpus's reference", "experiments"], rows)


def ablations(groups: list[Group], params: dict) -> str:
    out = []
    for model in sorted({g.model for g in groups}):
        ref = reference(groups, params, model)
        rows = []
        for g in (g for g in groups if g.model == model):
            d = diff(g.config, ref.config, ("prepare.",))
            if all(k.startswith(f"model_params.{model}.") or k in ABLATION_KEYS for k in d):
                rows.append([describe(d), fmt(g.values("weighted_f1")), fmt(g.values("macro_f1")),
                             len(g.values("weighted_f1")), g.name()])
        if len(rows) > 1 or (rows and rows[0][0] != "reference"):
            out.append(f"### {model}\n\nReference: {ref.label()} ({ref.name()}).\n\n"
                       + md_table(["variant", "weighted F1", "macro F1", "seeds", "experiments"], rows))
    return "\n".join(out) if out else "No ablation of any model on this corpus (a `model_params.<model>.*` change).\n"


def modalities(groups: list[Group], params: dict) -> str:
    rows = []
    for model in sorted({g.model for g in groups}):
        ref = reference(groups, params, model)
        cells = {c: "–" for c in MODALITY_COLUMNS}
        for g in (g for g in groups if g.model == model):
            if set(diff(g.config, ref.config, ("prepare.",))) <= {"train.modalities"} and g.modalities in cells:
                cells[g.modalities] = fmt(g.values("weighted_f1"))
        if sum(v != "–" for v in cells.values()) > 1 or ref.modalities != "T+A+V":
            rows.append([model] + [cells[c] for c in MODALITY_COLUMNS])
    if not rows:
        return "No modality-subset runs on this corpus yet (`dvc exp run -S train.modalities=ta …`).\n"
    return (md_table(["model"] + MODALITY_COLUMNS, rows) + "\nCells: test weighted F1 (mean ± std over seeds); "
            "everything but `train.modalities` as in the model's reference on this corpus (SUMMER Table 3 / "
            "Ada2I Table 3 layout).\n")


def per_class_f1(groups: list[Group], params: dict, classes: list[str]) -> str:
    rows = []
    for g in groups:
        ref = reference(groups, params, g.model)
        f1 = g.per_class("f1")
        rows.append([g.label(), g.modalities, describe(diff(g.config, ref.config, ("prepare.",)))]
                    + [f"{f1[c]:.3f}" if c in f1 else "–" for c in classes])
    return md_table(["model", "modalities", "config"] + classes, rows)


# Text-only numbers the papers report (ACC %, weighted F1 %), by (model, corpus family, classes).
PAPER_TEXT_ONLY = {
    ("dialoguetrm", "iemocap", 6): "68.2 / 68.1 (DialogueTRM-U, Table 2)",
    ("dialoguetrm", "meld", 7): "64.6 / 63.2 (DialogueTRM-U, Table 2)",
    ("summer", "iemocap", 6): "69.57 / 69.73 (Table 3 \"Text\": its attention model, not the student)",
    ("summer", "meld", 7): "66.49 / 65.32 (Table 3 \"Text\": its attention model, not the student)",
    ("lpgnet", "iemocap", 4): "81.39 / 81.19 (Table 3 \"Text\")",
}


def text_only(corpus: Corpus, groups: list[Group]) -> str:
    """Text-only configurations (``train.modalities=t``) with the paper's text-only number where one exists."""
    rows = []
    for g in sorted((g for g in groups if g.modalities == "T"), key=lambda g: -np.mean(g.values("weighted_f1"))
                    if g.values("weighted_f1").size else 0):
        paper = PAPER_TEXT_ONLY.get((g.model, corpus.family, len(corpus.labels)))
        if paper is None:
            paper = "no text-only number in the paper" if g.model in ("summer", "m2fnet", "dialoguetrm", "lpgnet",
                                                                      "ada2i") else "– (not a paper model)"
        rows.append([g.label(), pct(g.values("accuracy")), pct(g.values("weighted_f1")), pct(g.values("macro_f1")),
                     len(g.values("weighted_f1")), paper, g.name()])
    if not rows:
        return "No text-only run on this corpus (`-S train.modalities=t`).\n"
    return md_table(["model", "ACC %", "w-F1 %", "macro F1 %", "seeds", "paper (ACC / w-F1 %)", "experiments"], rows)


# ------------------------------------------------------------------------------------------------ paper layouts
def summer_per_class(corpus: Corpus, groups: list[Group], params: dict, classes: list[str]) -> str:
    """SUMMER Tables 1 (IEMOCAP-6) and 2 (MELD-7): per class ACC (= recall) and F1, then w-ACC, w-F1; one row
    per model (its reference configuration on this corpus), in percent."""
    header = ["model"] + [f"{c} {k}" for c in classes for k in ("ACC", "F1")] + ["w-ACC", "w-F1", "seeds"]
    rows = []
    for model in sorted({g.model for g in groups}):
        g = reference(groups, params, model)
        acc = g.per_class("accuracy") or g.per_class("recall")  # per-class accuracy is the class's recall
        f1 = g.per_class("f1")
        rows.append([g.label()] + [f"{100 * d[c]:.2f}" if c in d else "–" for c in classes for d in (acc, f1)]
                    + [pct(g.values("accuracy")), pct(g.values("weighted_f1")), len(g.values("weighted_f1"))])
    teacher = [g for g in groups if g.model == "summer" and any(r.teacher_metrics for r in g.runs)]
    note = ""
    if teacher:
        t = teacher[0].runs[0].teacher_metrics
        note = (f"\nSUMMER's teacher ({t.get('modality', '?')}): dev accuracy {100 * t.get('dev_accuracy', np.nan):.2f}, "
                f"dev w-F1 {100 * t.get('dev_weighted_f1', np.nan):.2f} (the teacher stage reports dev only).\n")
    which = {"iemocap": "Table 1 (IEMOCAP 6-way)", "meld": "Table 2 (MELD 7-way)"}.get(corpus.family, "Tables 1–2")
    return (f"SUMMER {which} layout: per-class ACC (recall) and F1, weighted ACC and F1, %, test, mean over "
            "seeds.\n\n" + md_table(header, rows) + note)


def m2fnet_report(groups: list[Group], params: dict, classes: list[str]) -> str:
    """M2FNet Table 3: per-class precision/recall/F1/support, accuracy, macro and weighted averages (the
    per-class values of each seed averaged over seeds; support is the test count)."""
    ref = reference(groups, params, "m2fnet")
    if ref is None:
        return missing(groups, params, "m2fnet", {}, None) + "\n"
    pc = {k: ref.per_class(k) for k in ("precision", "recall", "f1", "support")}
    rows = [[c] + [f"{pc[k][c]:.2f}" if c in pc[k] else "–" for k in ("precision", "recall", "f1")]
            + [int(pc["support"].get(c, 0))] for c in classes]
    sup = np.asarray([pc["support"].get(c, 0) for c in classes], dtype=float)
    n = int(sup.sum())

    def avg(k, w):
        v = np.asarray([pc[k].get(c, np.nan) for c in classes], dtype=float)
        ok = np.isfinite(v)
        return f"{np.average(v[ok], weights=w[ok]) if ok.any() and w[ok].sum() else np.nan:.2f}"

    acc = ref.values("accuracy")
    rows += [["Accuracy", "—", "—", f"{acc.mean():.2f}" if acc.size else "–", n],
             ["Macro Average"] + [avg(k, np.ones(len(classes))) for k in ("precision", "recall", "f1")] + [n],
             ["Weighted Avg"] + [avg(k, sup) for k in ("precision", "recall", "f1")] + [n]]
    return (f"M2FNet Table 3 layout ({ref.label()}, {ref.name()}; test):\n\n"
            + md_table(["Emotion", "Precision", "Recall", "F1-Score", "Support"], rows))


def variant_table(title: str, model: str, rows_spec: list[tuple[str, dict]], groups, params,
                  columns: list[tuple[str, callable]], free=lambda k: False, note: str = "") -> str:
    """One row per (label, changes relative to the model's reference); a missing one names its command."""
    ref = reference(groups, params, model)
    if ref is None:
        return f"{title}: {missing(groups, params, model, {}, None)}\n"
    rows, todo = [], []
    for label, changes in rows_spec:
        g = find_variant([g for g in groups if g.model == model or "model" in changes], ref, changes, free)
        if g is None:
            rows.append([label] + ["–"] * len(columns) + ["not run"])
            todo.append(f"- {label}: {missing(groups, params, model, changes, ref)}")
        else:
            rows.append([label] + [f(g) for _, f in columns] + [g.name()])
    return (f"{title} (reference: {ref.label()}):\n\n" + md_table(["variant"] + [c for c, _ in columns]
                                                                 + ["experiments"], rows)
            + ("\n" + "\n".join(todo) + "\n" if todo else "") + (f"\n{note}\n" if note else ""))


ACC_F1 = [("ACC %", lambda g: pct(g.values("accuracy"))), ("w-F1 %", lambda g: pct(g.values("weighted_f1")))]
# LPGNet §4.1 reports the average one-vs-all binary accuracy and F1 (``ova_*`` in metrics.json); ours beside them
LPG_COLS = [("avg binary ACC %", lambda g: pct(g.values("ova_accuracy"))),
            ("avg binary F1 %", lambda g: pct(g.values("ova_f1")))] + ACC_F1


def _dev(g: Group, key: str) -> str:
    v = g.dev_values(key)
    if v.size == 0 and key == "weighted_f1":  # the selected epoch's dev weighted F1, written by train/evaluate
        v = np.asarray([m["dev_weighted_f1"] for m in g.by_seed().values()
                        if isinstance(m.get("dev_weighted_f1"), (int, float))])
        return fmt(v, digits=3) + " (selection)" if v.size else "–"
    return fmt(v, digits=3) if v.size else "– (run `python -m pipeline.evaluate --split dev`)"


def paper_tables(corpus: Corpus, groups: list[Group], params: dict, classes: list[str]) -> dict[str, str]:
    """Markdown of each paper's layouts on this corpus, keyed by paper."""
    out = {}
    out["summer"] = "\n".join([
        summer_per_class(corpus, groups, params, classes),
        variant_table("SUMMER Table 4 (key components)", "summer", [
            ("SUMMER", {}), ("SDMoE → MoE", {"model_params.summer.moe": "plain"}),
            ("HCMF → self-attention", {"model_params.summer.fusion": "self_attention"}),
            ("w/o IKD", {"model_params.summer.ikd": False})], groups, params, ACC_F1),
        variant_table("SUMMER Table 3 (modality settings)", "summer",
                      [(m, {"train.modalities": m}) for m in reversed(MODALITY_COLUMNS)], groups, params, ACC_F1,
                      note="The paper's Table 3 trains its attention model (the teacher's architecture) per "
                           "modality; here the student (`model=summer`) with a modality subset.")])
    out["m2fnet"] = "\n".join([
        m2fnet_report(groups, params, classes),
        variant_table("M2FNet Table 5 (ablations, on dev)", "m2fnet", [
            ("Full M2FNet", {}), ("w/o Transformer Fusion", {"model_params.m2fnet.fusion": "concat"}),
            ("w/o GRU Context", {"model_params.m2fnet.context": "none"}),
            ("w/o Weighted Loss", {"train.weighted_loss": False})], groups, params,
            [("dev weighted F1", lambda g: _dev(g, "weighted_f1")), ("dev macro F1", lambda g: _dev(g, "macro_f1"))])])
    out["dialoguetrm"] = "\n".join([dialoguetrm_table3(groups, params), dialoguetrm_table4(groups, params),
                                    dialoguetrm_table5(groups, params)])
    lam = "model_params.lpgnet.lambda_"
    out["lpgnet"] = "\n".join([
        variant_table("LPGNet Table 3 (ablations)", "lpgnet", [
            ("LPGNet", {}), ("Text", {"train.modalities": "T"}), ("Audio", {"train.modalities": "A"}),
            ("w/o inter attention", {"model_params.lpgnet.inter": False}),
            ("w/o intra attention", {"model_params.lpgnet.intra": False}),
            ("w/o position-wise FFN", {"model_params.lpgnet.ffn": False}),
            ("w/o dual-gated fusion", {"model_params.lpgnet.dual_gate": False})], groups, params, LPG_COLS),
        variant_table("LPGNet Table 6 (distillation weights λ_task, λ_CE, λ_KL)", "lpgnet", [
            (f"{t} / {c} / {k}", {f"{lam}task": t, f"{lam}ce": c, f"{lam}kl": k})
            for t, c, k in ((1.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.5, 1.0, 0.0), (1.5, 1.0, 0.3))],
            groups, params, LPG_COLS),
        lpgnet_table7(corpus, groups, params, classes)])
    out["ada2i"] = ada2i_table3(groups, params)
    return out


# DialogueTRM Table 4 (IEMOCAP, ACC / F1 %): per modality combination, the context per modality (free ˙ or
# dependent ¯) and the paper's numbers; u̇ is plain BERT (Table 3's "BERT-base" row)
DTRM_TABLE4 = (("u (free)", "T", {"t": "free"}, "56.7 / 56.4"), ("u (dependent)", "T", {"t": "dependent"}, "68.2 / 68.1"),
               ("a (free)", "A", {"a": "free"}, "46.8 / 44.9"), ("a (dependent)", "A", {"a": "dependent"}, "44.7 / 42.9"),
               ("v (free)", "V", {"v": "free"}, "33.6 / 36.8"), ("v (dependent)", "V", {"v": "dependent"}, "32.2 / 33.7"),
               ("a+v (free)", "A+V", {"a": "free", "v": "free"}, "50.5 / 49.4"),
               ("a+v (dependent)", "A+V", {"a": "dependent", "v": "dependent"}, "47.7 / 47.0"),
               ("a+v+u (free)", "T+A+V", {"t": "free", "a": "free", "v": "free"}, "58.8 / 58.3"),
               ("a, v dependent + u free", "T+A+V", {"t": "free", "a": "dependent", "v": "dependent"}, "57.2 / 57.1"),
               ("a, v free + u dependent (paper's ‡)", "T+A+V", {"t": "dependent", "a": "free", "v": "free"},
                "69.5 / 69.7"),
               ("a+v+u (dependent) (paper's †)", "T+A+V", {"t": "dependent", "a": "dependent", "v": "dependent"},
                "68.9 / 68.8"))
# keys a context-free text row may differ in: the text input settings that ``context.t: free`` overrides
# (end to end: forced to the utterance alone; frozen: features extracted with text.context=utterance)
TEXT_CONTEXT_KEYS = ("text.context", "text.window", "train.text_encoder.context")


def _context_free_keys(w: str, used: set[str], t_free: bool):
    """``find_variant``'s ``free``: a context entry of a modality the run does not use has no effect, and a
    context-free text row may have any text-input context setting (it is overridden)."""
    return lambda key: (key.startswith(w) and key[len(w):] not in used) or (t_free and key in TEXT_CONTEXT_KEYS)


def dialoguetrm_table4(groups: list[Group], params: dict) -> str:
    """DialogueTRM Table 4: context-free vs context-dependent (``model_params.dialoguetrm.context.<m>``) per
    modality combination, the paper's twelve rows with its numbers beside ours."""
    ref = reference(groups, params, "dialoguetrm")
    if ref is None:
        return f"DialogueTRM Table 4: {missing(groups, params, 'dialoguetrm', {}, None)}\n"
    w = "model_params.dialoguetrm.context."
    window = ref.config.get("model_params.dialoguetrm.window")
    rows = []
    for label, mods, ctx, paper in DTRM_TABLE4:
        ch = {"train.modalities": mods, **{w + m: v for m, v in ctx.items()}}
        used = {m.lower() for m in mods.split("+")}
        g = find_variant([g for g in groups if g.model == "dialoguetrm"], ref, ch,
                         _context_free_keys(w, used, ctx.get("t") == "free"))
        rows.append([label] + ([pct(g.values("accuracy")), pct(g.values("weighted_f1")), paper, g.name()] if g else
                               ["–", "–", paper, missing(groups, params, "dialoguetrm", ch, ref)]))
    return (f"DialogueTRM Table 4 (context per modality; reference: {ref.label()}; dependent = the causal window of "
            f"{window} turns; u free = plain BERT, the utterance alone in Eq. 1):\n\n"
            + md_table(["setting", "ACC %", "w-F1 %", "paper ACC / F1 %", "experiments"], rows))


# DialogueTRM Table 3 (IEMOCAP, ACC / F1 %): utterance-only models. The ablations "step by step remove some key
# operations in DialogueTRM-U" (§5.4): cumulative — each row also lacks the rows above it (the reading under
# which "segment embedding contributes more" holds: −1.6 vs −0.5 F1; removed one at a time from DialogueTRM-U
# the [SEP] row would be the larger drop, −2.9 vs −2.4).
_T = "model_params.dialoguetrm."
DTRM_TABLE3 = (("BERT-base (u̇: the utterance alone, context-free)", {_T + "context.t": "free"}, "56.7 / 56.4"),
               ("TL-ERC", None, "– / 58.8"), ("DRNN§", None, "– / 64.7"), ("COSMIC", None, "– / 65.2"),
               ("DialogueTRM-U", {}, "68.2 / 68.1"),
               ("remove transformer", {_T + "intra_transformer": False}, "67.4 / 67.4"),
               ("remove segment embedding", {_T + "intra_transformer": False, "train.text_encoder.segments": False},
                "65.8 / 65.7"),
               ("remove [SEP] tokens", {_T + "intra_transformer": False, "train.text_encoder.segments": False,
                                        "train.text_encoder.sep": False}, "65.3 / 65.2"))


def dialoguetrm_table3(groups: list[Group], params: dict) -> str:
    """DialogueTRM Table 3: utterance-only (``train.modalities=T``) — plain BERT (u̇), DialogueTRM-U and its
    cumulative ablations (remove the Eq. 2 transformer, then the segment embeddings, then the [SEP] tokens: the
    last two are end-to-end text-input switches, ``train.text_encoder.segments``/``sep``), paper values beside
    ours; the other pre-trained methods' rows are the paper's only."""
    ref = reference(groups, params, "dialoguetrm")
    if ref is None:
        return f"DialogueTRM Table 3: {missing(groups, params, 'dialoguetrm', {}, None)}\n"
    dtrm = [g for g in groups if g.model == "dialoguetrm"]
    w = _T + "context."
    rows, todo = [], []
    for label, ch, paper in DTRM_TABLE3:
        if ch is None:
            rows.append([label, "–", "–", paper, "another paper's method (not run here)"])
            continue
        ch = {"train.modalities": "T", **ch}
        t_free = ch.get(w + "t") == "free"
        g = find_variant(dtrm, ref, ch, _context_free_keys(w, {"t"}, t_free))
        if g is None:
            rows.append([label, "–", "–", paper, "not run"])
            todo.append(f"- {label}: {missing(groups, params, 'dialoguetrm', ch, ref)}")
        else:
            rows.append([label, pct(g.values("accuracy")), pct(g.values("weighted_f1")), paper, g.name()])
    note = ""
    if not any(k.startswith("train.text_encoder.") for k in ref.config):
        note = ("\nThe segment-embedding and [SEP] rows are text-input switches of the end-to-end encoder: they need "
                "`train.text_encoder` set (the recipes do).\n")
    return (f"DialogueTRM Table 3 (utterance-only, cumulative ablations; reference: {ref.label()}):\n\n"
            + md_table(["model", "ACC %", "w-F1 %", "paper ACC / F1 %", "experiments"], rows)
            + ("\n" + "\n".join(todo) + "\n" if todo else "") + note)


# DialogueTRM Table 5 (IEMOCAP, F1 U → M): the paper's multi-modal F1 per fusion (its U is 68.1 throughout)
DTRM_TABLE5 = (("Additive", "add", 68.6), ("Concat", "concat", 68.5), ("Max-pooling", "max", 68.7),
               ("Bilinear", "bilinear", 69.0), ("GMU", "gmu", 68.8), ("MulT", "mult", 68.4),
               ("Our MGIF", "mgif", 69.7))


def dialoguetrm_table5(groups: list[Group], params: dict) -> str:
    """DialogueTRM Table 5: weighted F1 from the utterance-only model (U: the reference on T) to each fusion on
    T+A+V (M), with the gain; the MGIF ablations w/o representation (``rep_transformer: false``) and prototype
    (``gates: false``) dependency as the last rows."""
    ref = reference(groups, params, "dialoguetrm")
    if ref is None:
        return f"DialogueTRM Table 5: {missing(groups, params, 'dialoguetrm', {}, None)}\n"
    f = "model_params.dialoguetrm."
    dtrm = [g for g in groups if g.model == "dialoguetrm"]
    u = find_variant(dtrm, ref, {"train.modalities": "T"}, lambda k: k.startswith(f + "fusion"))
    u_f1 = u.values("weighted_f1") if u is not None else np.asarray([])
    rows_spec = [(name, {f + "fusion": key}, paper) for name, key, paper in DTRM_TABLE5]
    rows_spec += [("w/o representation dependency", {f + "fusion": "mgif", f + "rep_transformer": False}, 69.2),
                  ("w/o prototype dependency", {f + "fusion": "mgif", f + "gates": False}, 68.9)]
    rows, todo = [], []
    for name, ch, paper in rows_spec:
        ch = {"train.modalities": "T+A+V", **ch}
        g = find_variant(dtrm, ref, ch)
        if g is None:
            rows.append([name, pct(u_f1) if u_f1.size else "–", "–", "–", f"68.1 → {paper}", "not run"])
            todo.append(f"- {name}: {missing(groups, params, 'dialoguetrm', ch, ref)}")
            continue
        m = g.values("weighted_f1")
        gain = f"{100 * (m.mean() - u_f1.mean()):+.2f}" if m.size and u_f1.size else "–"
        rows.append([name, pct(u_f1) if u_f1.size else "–", pct(m), gain, f"68.1 → {paper}", g.name()])
    if u is None:
        todo.insert(0, f"- U (utterance only): {missing(groups, params, 'dialoguetrm', {'train.modalities': 'T'}, ref)}")
    return (f"DialogueTRM Table 5 (fusion, w-F1 % from utterance-only U to T+A+V M; reference: {ref.label()}):\n\n"
            + md_table(["fusion", "U w-F1 %", "M w-F1 %", "gain (points)", "paper U → M", "experiments"], rows)
            + ("\n" + "\n".join(todo) + "\n" if todo else ""))


def lpgnet_table7(corpus: Corpus, groups: list[Group], params: dict, classes: list[str]) -> str:
    """LPGNet Table 7: per-class F1 and overall F1 of LPGNet on this corpus (a 4- or a 6-class IEMOCAP row)."""
    ref = reference(groups, params, "lpgnet")
    if ref is None:
        return f"LPGNet Table 7 ({len(classes)}-class): {missing(groups, params, 'lpgnet', {}, None)}\n"
    f1 = ref.per_class("f1")
    row = [f"LPGNet ({len(classes)}-class)"] + [f"{100 * f1[c]:.2f}" if c in f1 else "–" for c in classes]
    return (f"LPGNet Table 7 layout ({len(classes)}-class; F1 %):\n\n"
            + md_table(["model"] + classes + ["Overall"], [row + [pct(ref.values("weighted_f1"))]]))


def ada2i_table3(groups: list[Group], params: dict) -> str:
    """Ada2I Table 3: W-F1 and Acc on TAV, TA, TV, AV (modality pairs of the Ada2I reference)."""
    ref = reference(groups, params, "ada2i")
    if ref is None:
        return f"Ada2I Table 3: {missing(groups, params, 'ada2i', {}, None)}\n"
    header, row, todo = ["method"], [ref.label()], []
    for mods in ("T+A+V", "T+A", "T+V", "A+V"):
        g = find_variant([g for g in groups if g.model == "ada2i"], ref, {"train.modalities": mods})
        header += [f"{mods.replace('+', '')} W-F1", f"{mods.replace('+', '')} Acc"]
        if g is None:
            row += ["–", "–"]
            todo.append(f"- {mods}: {missing(groups, params, 'ada2i', {'train.modalities': mods}, ref)}")
        else:
            row += [pct(g.values("weighted_f1")), pct(g.values("accuracy"))]
    return ("Ada2I Table 3 layout (%, test):\n\n" + md_table(header, [row])
            + ("\n" + "\n".join(todo) + "\n" if todo else ""))


__all__ = ["md_table", "model_comparison", "ablations", "modalities", "per_class_f1", "paper_tables",
           "run_command", "missing", "find_variant", "modality_label", "recipe_changes", "set_dotted"]
