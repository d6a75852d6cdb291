"""Reproduction tables: each paper number text alone can test, beside ours (issue #27 part 4).

Driven by ``paper_rows.yaml`` (one entry per paper row: its value, where it is printed, and the params our run
must have; the file's header explains the format). Per corpus (IEMOCAP 6-class, IEMOCAP 4-class, MELD) one
Markdown table, ``<out>/<corpus>/reproduction.md``, with every row of the file: the paper's value, ours (mean ±
sample std over seeds, n), Δ = ours − paper in points, for an ablation whether our change from our run of the
reference row has the paper's sign (✓/✗), and the spec's cause when |Δ| > 3. A row no run matches reads "not
run" (with the closest run on the corpus and what it lacks); a row matched by several configurations reads
"ambiguous", naming them and the keys they differ in (it is not filled: the spec must pin that key).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipeline.common import atomic_write_text
from pipeline.errors import UserError
from pipeline.training.metrics import mean_std
from pipeline.report.runs import Corpus, Group, Run, diff, flatten, group_runs, modality_label, yaml_number
from pipeline.report.tables import md_table

log = logging.getLogger("merc.report")

PAPER_ROWS = Path(__file__).with_name("paper_rows.yaml")
METRICS = {"weighted_f1": "w-F1", "accuracy": "ACC", "macro_f1": "macro-F1", "ova_accuracy": "avg binary ACC",
           "ova_f1": "avg binary F1"}
SPLITS = ("test", "dev")
CAUSE_ABOVE = 3.0  # points: a gap this large needs a stated cause
FAMILIES = {"iemocap": "IEMOCAP", "meld": "MELD"}
ROW_KEYS = {"id", "paper", "table", "row", "corpus", "split", "values", "source", "model", "match", "match_any",
            "reference", "ours_reference", "cause", "note", "show", "result"}
RESULTS = ("model", "teacher")  # whose score the row is: the trained model's, or SUMMER's teacher (train_teacher)
OPERATORS = {"in", "not"}


@dataclass(frozen=True)
class PaperRow:
    """One printed row of a paper and how to recognise our run of it."""

    id: str
    paper: str
    table: str
    row: str
    family: str
    classes: int
    values: dict  # metric → the paper's value in % (None: not printed)
    match: dict  # dotted params key → value | {in: [...]} | {not: v}; includes `model`
    match_any: tuple = ()
    split: str = "test"
    reference: str | None = None
    ours_reference: str | None = None
    cause: str = ""
    note: str = ""
    source: str = ""
    show: bool = True
    result: str = "model"

    @property
    def page(self) -> str:
        """The corpus folder: iemocap6, iemocap4, meld7."""
        return f"{self.family}{self.classes}"

    @property
    def model(self) -> str:
        return str(self.match.get("model"))

    def on(self, corpus: Corpus) -> bool:
        return not corpus.regression and corpus.family == self.family and len(corpus.labels) == self.classes


def _check_spec(where: str, key: str, spec) -> None:
    if isinstance(spec, dict) and not (len(spec) == 1 and set(spec) <= OPERATORS):
        raise UserError(f"{where}: `{key}` has a mapping value {spec!r}: write its entries as dotted keys "
                        f"(`{key}.<name>: value`), or use {{in: [a, b]}} / {{not: v}}")
    if isinstance(spec, dict) and "in" in spec and not isinstance(spec["in"], list):
        raise UserError(f"{where}: `{key}: {{in: …}}` needs a list")


def load_rows(path: str | Path = PAPER_ROWS) -> list[PaperRow]:
    """The rows of ``path``, validated (a malformed entry is one line naming the file and the row)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the paper rows ({type(e).__name__}: {e})") from e
    items = (data or {}).get("rows") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a top-level `rows:` list")
    rows: list[PaperRow] = []
    for i, it in enumerate(items):
        where = f"{path.name} row {i + 1} ({(it or {}).get('id', '?') if isinstance(it, dict) else '?'})"
        if not isinstance(it, dict):
            raise UserError(f"{where}: not a mapping")
        unknown = set(it) - ROW_KEYS
        missing = {"id", "paper", "table", "row", "corpus", "values", "model", "match"} - set(it)
        if unknown or missing:
            what = ([f"unknown keys {sorted(unknown)}"] if unknown else []) + \
                ([f"missing {sorted(missing)}"] if missing else [])
            raise UserError(f"{where}: " + "; ".join(what))
        corpus = it["corpus"]
        if not (isinstance(corpus, dict) and corpus.get("family") in FAMILIES
                and isinstance(corpus.get("classes"), int)):
            raise UserError(f"{where}: corpus must be {{family: {' | '.join(FAMILIES)}, classes: <int>}}; "
                            f"got {corpus!r}")
        values = it["values"]
        if not isinstance(values, dict) or not values or set(values) - set(METRICS):
            raise UserError(f"{where}: values must map metrics ({', '.join(METRICS)}) to the paper's % (or null)")
        for m, v in values.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)):
                raise UserError(f"{where}: values.{m} = {v!r} is not a finite number (or null)")
        split = it.get("split", "test")
        if split not in SPLITS:
            raise UserError(f"{where}: split must be one of {SPLITS}; got {split!r}")
        result = it.get("result", "model")
        if result not in RESULTS:
            raise UserError(f"{where}: result must be one of {RESULTS}; got {result!r}")
        if result == "teacher" and split != "test":
            raise UserError(f"{where}: result teacher has test scores only (reports/teacher/metrics.json)")
        match = it["match"]
        alts = it.get("match_any") or []
        if not isinstance(match, dict) or not isinstance(alts, list) or not all(isinstance(a, dict) for a in alts):
            raise UserError(f"{where}: match must be a mapping and match_any a list of mappings")
        for k, v in [*match.items(), *((k, v) for a in alts for k, v in a.items())]:
            _check_spec(where, str(k), v)
        rows.append(PaperRow(
            id=str(it["id"]), paper=str(it["paper"]), table=str(it["table"]), row=str(it["row"]),
            family=corpus["family"], classes=corpus["classes"],
            values={m: (None if v is None else float(v)) for m, v in values.items()},
            match={"model": str(it["model"]), **{str(k): v for k, v in match.items()}},
            match_any=tuple({str(k): v for k, v in a.items()} for a in alts), split=split,
            reference=it.get("reference"), ours_reference=it.get("ours_reference"),
            cause=" ".join(str(it.get("cause") or "").split()), note=" ".join(str(it.get("note") or "").split()),
            source=" ".join(str(it.get("source") or "").split()), show=bool(it.get("show", True)),
            result=result))
    ids = [r.id for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"{path.name}: duplicate row ids {dup}")
    by_id = {r.id: r for r in rows}
    for r in rows:
        for ref in (r.reference, r.ours_reference):
            if ref is not None and ref not in by_id:
                raise UserError(f"{path.name} row {r.id}: reference {ref!r} is not a row id")
            if ref is not None and by_id[ref].page != r.page:
                raise UserError(f"{path.name} row {r.id}: reference {ref!r} is on another corpus")
        if r.ours_reference and not r.reference:
            raise UserError(f"{path.name} row {r.id}: ours_reference without reference")
    return rows


def unknown_keys(rows: list[PaperRow], params: dict) -> list[tuple[str, str]]:
    """(row id, key) for match keys neither params.yaml nor an implied mapping has: no run can match them."""
    flat = flatten(params)
    out = []
    for r in rows:
        for k in [*r.match, *(k for a in r.match_any for k in a)]:
            known = k in flat or k == "recipe" or any(k.startswith(p) and k[len(p):] in d
                                                      for p, d in _implied().items())
            if not known and (r.id, k) not in out:
                out.append((r.id, k))
    return out


# ------------------------------------------------------------------------------------------------------ matching
def _implied() -> dict[str, dict]:
    """Keys a params mapping may leave out and their effective values (the code fills them in)."""
    from pipeline.training.text_e2e import DEFAULTS

    return {"train.text_encoder.": DEFAULTS}


def _lookup(flat: dict, key: str, defaults: dict) -> tuple[bool, object]:
    """(known, value) of ``key`` for a run: its own value, a default its mapping implies, else params.yaml's
    default (a run without the key predates it and ran with the behaviour the key was introduced with)."""
    if key in flat:
        return True, flat[key]
    for prefix, implied in _implied().items():
        if key.startswith(prefix) and key[len(prefix):] in implied and any(k.startswith(prefix) for k in flat):
            return True, implied[key[len(prefix):]]
    if key in defaults:
        return True, defaults[key]
    return False, None


def _same(a, b) -> bool:
    """Equality as YAML means it: a bool equals only a bool, 1 equals 1.0 and "1e-05" (``yaml_number``), lists
    element by element."""
    a, b = yaml_number(a), yaml_number(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _wants(key: str, spec, have) -> bool:
    if isinstance(spec, dict) and "in" in spec:
        return any(_wants(key, s, have) for s in spec["in"])
    if isinstance(spec, dict) and "not" in spec:
        return not _wants(key, spec["not"], have)
    if key == "train.modalities":
        return have is not None and modality_label(have) == modality_label(spec)
    return _same(spec, have)


def _misses(spec: dict, flat: dict, defaults: dict) -> dict:
    """key → (wanted, what the run has) for every key of ``spec`` the run does not satisfy."""
    out = {}
    for k, want in spec.items():
        known, have = _lookup(flat, k, defaults)
        if not known or not _wants(k, want, have):
            out[k] = (want, have if known else "(absent)")
    return out


def assumed(row: PaperRow, params: dict, defaults: dict) -> dict:
    """key → params.yaml's default for the keys of ``row`` the run does not have (it predates them): the match
    assumes the run behaved as that default, which is wrong if the default changed after the run."""
    flat = flatten(params)
    alt = next((a for a in row.match_any if not _misses(a, flat, defaults)), {})  # the route the run took
    keys = dict.fromkeys([*row.match, *alt])
    out = {}
    for k in keys:
        if k not in flat and k in defaults and not _lookup(flat, k, {})[0]:
            out[k] = defaults[k]
    return out


def mismatches(row: PaperRow, params: dict, defaults: dict) -> dict:
    """What keeps a run (its params) from being ``row``'s run; empty: it is one (corpus aside)."""
    flat = flatten(params)
    out = _misses(row.match, flat, defaults)
    if row.match_any:
        alts = [_misses(a, flat, defaults) for a in row.match_any]
        if all(alts):
            out.update(min(alts, key=len))  # the alternative it comes closest to
    return out


@dataclass
class Match:
    """The configuration that is a row's run (``group``), or several (``ambiguous``), or none."""

    group: Group | None = None
    ambiguous: list[Group] = field(default_factory=list)
    closest: str = ""  # for a row no run matches: the nearest run on the corpus and what it lacks


def _fmt_spec(v) -> str:
    if isinstance(v, dict) and "in" in v:
        return " | ".join(_fmt_spec(x) for x in v["in"])
    if isinstance(v, dict) and "not" in v:
        return f"not {_fmt_spec(v['not'])}"
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def resolve(row: PaperRow, runs: list[Run], defaults: dict) -> Match:
    """The runs that are ``row``'s, grouped by configuration (seeds of one configuration are one group)."""
    mine = [r for r in runs if row.on(r.corpus)]
    hits = [r for r in mine if not mismatches(row, r.params, defaults)]
    groups = group_runs(hits)
    if len(groups) == 1:
        return Match(groups[0])
    if groups:
        return Match(None, sorted(groups, key=lambda g: g.name()))
    same_model = [r for r in mine if str(r.params.get("model")) == row.model]
    if not mine:
        return Match(closest=f"no run on {FAMILIES[row.family]} {row.classes}-class yet")
    if not same_model:
        return Match(closest=f"no {row.model} run on this corpus")
    best = min(same_model, key=lambda r: (len(mismatches(row, r.params, defaults)), r.name))
    miss = mismatches(row, best.params, defaults)
    lacks = "; ".join(f"`{k}`: wants {_fmt_spec(w)}, has {_fmt_spec(h)}" for k, (w, h) in list(miss.items())[:5])
    return Match(closest=f"closest: {best.name} ({lacks}{' …' if len(miss) > 5 else ''})")


# -------------------------------------------------------------------------------------------------------- values
def ours(g: Group, metric: str, split: str, result: str = "model") -> tuple[np.ndarray, str]:
    """``metric`` of each seed in % and a qualifier; a non-finite value is left out and said so."""
    if result == "teacher":
        # One value per teacher seed: the teacher stage reads its own seed (model_params.summer.teacher.seed), not
        # train.seed, so student runs of several seeds over one teacher seed share one (run-cached) teacher.
        by_seed: dict = {}
        for r in g.runs:
            if isinstance(r.teacher_metrics, dict):
                by_seed.setdefault(flatten(r.params).get("model_params.summer.teacher.seed", 0),
                                   r.teacher_metrics.get(f"test_{metric}"))
        vals = list(by_seed.values())
        v = np.asarray([x if isinstance(x, (int, float)) else np.nan for x in vals], dtype=float)
        ok = v[np.isfinite(v)]
        return 100 * ok, ("teacher" if ok.size == v.size else f"teacher; {v.size - ok.size} of {v.size} teachers "
                          "without a finite value")
    v, qual = _ours(g, metric, split)
    ok = v[np.isfinite(v)]
    keyed = sum(metric in m for m in g.by_seed().values())  # seeds that recorded the metric (null included)
    n = max(keyed, v.size) if split == "test" else v.size
    if ok.size < n:  # NaN/inf, or null (the store writes a non-finite metric as null)
        log.warning("reproduction: %s: %d of %d seeds without a finite %s", g.name(), n - ok.size, n, metric)
        qual = ", ".join(x for x in (qual, f"{n - ok.size} of {n} seeds without a finite value") if x)
    return ok, qual


def _ours(g: Group, metric: str, split: str) -> tuple[np.ndarray, str]:
    """Test from the metrics (``Group.values``); dev from each run's reports/dev/metrics.json (per seed when it
    has them), else — weighted F1 only — the selected epoch's dev weighted F1 that training recorded per seed."""
    if split == "test":
        return 100 * g.values(metric), ""
    per_seed: dict = {}
    for r in g.runs:
        if isinstance(r.dev_metrics, dict):
            per_seed.update(Run(r.name, r.rev, r.params, r.dev_metrics).seed_metrics())
    vals = [m[metric] for m in per_seed.values() if isinstance(m.get(metric), (int, float))]
    if vals:
        return 100 * np.asarray(vals, dtype=float), ""
    if metric == "weighted_f1":
        sel = [m["dev_weighted_f1"] for m in g.by_seed().values() if isinstance(m.get("dev_weighted_f1"), (int, float))]
        if sel:
            return 100 * np.asarray(sel, dtype=float), "selection epoch"
    return np.asarray([]), ""


def _pct(v: np.ndarray) -> str:
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.2f} (n=1)"
    mean, std = mean_std(v)
    return f"{mean:.2f} ± {std:.2f} (n={v.size})"


def _differing(groups: list[Group]) -> str:
    keys = sorted({k for a in groups for b in groups if a is not b
                   for k in diff(a.config, b.config, common_only=False)})
    return ", ".join(f"`{k}` ({' / '.join(_fmt_spec(g.config.get(k)) for g in groups)})" for k in keys[:6]) or "corpus"


def sign_cell(row: PaperRow, metric: str, by_id: dict[str, PaperRow], matches: dict[str, Match]) -> str:
    """✓ when our change from our reference run has the paper's sign (row − reference), ✗ when not."""
    if not row.reference:
        return ""
    ref, oref = by_id[row.reference], by_id[row.ours_reference or row.reference]
    pv, pr = row.values.get(metric), ref.values.get(metric)
    if pv is None or pr is None:
        return "– (no paper value)"
    mine, base = matches[row.id], matches[oref.id]
    if mine.group is None:
        return "–"
    if base.group is None:
        return f"– (reference {oref.row!r} {'ambiguous' if base.ambiguous else 'not run'})"
    a, _ = ours(mine.group, metric, row.split, row.result)
    b, _ = ours(base.group, metric, oref.split, oref.result)
    if a.size == 0 or b.size == 0:
        return "–"
    paper_d, ours_d = pv - pr, float(a.mean() - b.mean())
    if abs(paper_d) < 1e-9:
        return f"– (paper: no change; ours {ours_d:+.2f})"
    mark = "✓" if np.sign(ours_d) == np.sign(paper_d) else "✗"
    return f"{mark} (paper {paper_d:+.2f}, ours {ours_d:+.2f})"


# -------------------------------------------------------------------------------------------------------- tables
HEADER = ["paper", "table", "row", "metric", "paper %", "ours % (mean ± std, n seeds)", "Δ (points)",
          "sign vs reference", f"cause (Δ beyond ±{CAUSE_ABOVE:g})", "experiments"]


def page_markdown(rows: list[PaperRow], by_id: dict[str, PaperRow], matches: dict[str, Match],
                  defaults: dict | None = None) -> str:
    """The table of one corpus's rows, then the notes (not run, ambiguous, the rows' notes)."""
    lines, notes, defaults = [], [], defaults or {}
    for r in (r for r in rows if r.show):
        m = matches[r.id]
        if m.ambiguous:
            msg = (f"{r.paper} {r.table} \"{r.row}\": {len(m.ambiguous)} configurations match — "
                   + " vs ".join(f"[{g.name()}]" for g in m.ambiguous)
                   + f"; they differ in {_differing(m.ambiguous)}: pin it in pipeline/report/paper_rows.yaml "
                     f"(row {r.id})")
            log.error("reproduction: %s", msg)
            notes.append(f"- **ambiguous** — {msg}")
        elif m.group is None:
            notes.append(f"- not run — {r.paper} {r.table} \"{r.row}\": {m.closest}")
        else:
            old, who = {}, []
            for run in m.group.runs:
                if a := assumed(r, run.params, defaults):
                    old.update(a)
                    who.append(run.name)
            if old:
                notes.append(f"- {r.paper} {r.table} \"{r.row}\": {', '.join(sorted(who))} predate "
                             + ", ".join(f"`{k}`" for k in old) + ": matched as if run with today's default ("
                             + ", ".join(f"{_fmt_spec(v)}" for v in old.values()) + "); rerun if it changed since")
        for metric, pv in r.values.items():
            label = METRICS[metric] + (" (dev)" if r.split == "dev" else "")
            if m.group is not None:
                v, qual = ours(m.group, metric, r.split, r.result)
                cell = _pct(v) + (f" ({qual})" if qual else "")
                delta = round(float(v.mean()) - pv, 2) + 0.0 if v.size and pv is not None else None  # no "-0.00"
                exps = m.group.name()
            else:
                cell = f"ambiguous ({len(m.ambiguous)} configurations)" if m.ambiguous else "not run"
                delta, exps = None, " / ".join(g.name() for g in m.ambiguous)
            cause = (r.cause or "not explained yet") if delta is not None and abs(delta) > CAUSE_ABOVE else ""
            lines.append([r.paper, r.table, r.row, label, "–" if pv is None else f"{pv:.2f}", cell,
                          "–" if delta is None else f"{delta:+.2f}", sign_cell(r, metric, by_id, matches), cause,
                          exps])
        if r.note:
            notes.append(f"- {r.paper} {r.table} \"{r.row}\": {r.note}")
    shown = [r for r in rows if r.show]
    done = sum(matches[r.id].group is not None for r in shown)
    head = f"{done} of {len(shown)} paper rows run" + (" (the others: below the table)" if done < len(shown) else "")
    head += ".\n\n"
    text = head + md_table(HEADER, [[str(c).replace("|", "\\|") for c in line] for line in lines])
    return text + ("\n" + "\n".join(notes) + "\n" if notes else "")


INTRO = ("Each line: one number a paper prints that text alone can test (pipeline/report/paper_rows.yaml names "
         "the row, where it is printed and the params our run must have), the paper's value, ours (test unless "
         "marked dev; mean ± sample std over seeds, n seeds; runs of one configuration saved under several "
         "experiment names are one sample each), Δ = ours − paper in points, for an ablation whether our change "
         "from our run of the reference row has the sign of the paper's change (✓/✗, both changes given), and "
         "for |Δ| > 3 the cause the spec states.\n")


README_START, README_END = "<!-- merc:reproduction (python -m pipeline.report --store-only --readme README.md) -->", \
    "<!-- /merc:reproduction -->"
README_HEADER = ["paper", "corpus", "table", "row", "metric", "paper %", "ours % (mean ± std, n)", "Δ",
                 "sign vs reference"]


def summary_markdown(rows: list[PaperRow], by_id: dict[str, PaperRow], matches: dict[str, Match]) -> str:
    """The README's block: every shown row that has a run, one line per metric, and the count of rows not run."""
    lines = []
    for r in (r for r in rows if r.show and matches[r.id].group is not None):
        for metric, pv in r.values.items():
            v, qual = ours(matches[r.id].group, metric, r.split, r.result)
            delta = f"{float(v.mean()) - pv:+.2f}" if v.size and pv is not None else "–"
            lines.append([r.paper, f"{FAMILIES[r.family]}-{r.classes}", r.table, r.row,
                          METRICS[metric] + (" (dev)" if r.split == "dev" else ""),
                          "–" if pv is None else f"{pv:.2f}", _pct(v) + (f" ({qual})" if qual else ""),
                          delta.replace("-", "−"), sign_cell(r, metric, by_id, matches)])
    shown = [r for r in rows if r.show]
    done = sum(matches[r.id].group is not None for r in shown)
    table = md_table(README_HEADER, [[str(c).replace("|", "\\|") for c in line] for line in lines]) if lines else ""
    return (f"{done} of {len(shown)} paper rows run; the others, the experiments behind each line and the causes "
            "of gaps over 3 points: `reports/results/reproduction.md` (written by `python -m pipeline.report`; "
            "on the docs site: Results).\n\n" + table)


def readme_markdown(runs: list[Run], params: dict, rows_file: str | Path = PAPER_ROWS) -> str:
    """``summary_markdown`` of ``runs`` (the README passes the committed store's runs only, so its numbers
    regenerate on any clone)."""
    rows = load_rows(rows_file)
    defaults = flatten(params)
    return summary_markdown(rows, {r.id: r for r in rows}, {r.id: resolve(r, runs, defaults) for r in rows})


def update_readme(path: str | Path, block: str) -> bool:
    """Replace the text between the README's reproduction markers with ``block`` (atomically); False: no markers."""
    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    i, j = text.find(README_START), text.find(README_END)
    if i < 0 or j < i:
        return False
    new = text[: i + len(README_START)] + "\n" + block.rstrip("\n") + "\n" + text[j:]
    if new != text:
        atomic_write_text(new, path)
    return True


def write(runs: list[Run], params: dict, out_dir: str | Path, rows_file: str | Path = PAPER_ROWS) -> dict[str, str]:
    """``<out>/<corpus>/reproduction.md`` per corpus of the rows and ``<out>/reproduction.md`` (all of them);
    returns the Markdown keyed ``reproduction`` and ``<corpus>/reproduction``."""
    rows = load_rows(rows_file)
    unknown: dict[str, list[str]] = {}
    for rid, key in unknown_keys(rows, params):
        unknown.setdefault(key, []).append(rid)
    if unknown:
        log.warning("paper_rows: keys params.yaml does not have (no run can match their rows until it does): %s",
                    "; ".join(f"{k} ({len(v)} rows)" for k, v in unknown.items()))
    defaults = flatten(params)
    by_id = {r.id: r for r in rows}
    matches = {r.id: resolve(r, runs, defaults) for r in rows}
    out_dir = Path(out_dir)
    pages = list(dict.fromkeys(r.page for r in rows))
    md, combined = {}, ["# Reproduction of the papers' text-only numbers (generated by `python -m pipeline.report`; "
                        "do not edit)\n", INTRO]
    for page in pages:
        first = next(r for r in rows if r.page == page)
        title = f"{FAMILIES[first.family]} {first.classes}-class"
        body = page_markdown([r for r in rows if r.page == page], by_id, matches, defaults)
        atomic_write_text(f"# Reproduction: {title}\n\n{INTRO}\n{body}", out_dir / page / "reproduction.md")
        md[f"{page}/reproduction"] = body
        combined += [f"## {title}\n", body]
    md["reproduction"] = "\n".join(combined)
    atomic_write_text(md["reproduction"], out_dir / "reproduction.md")
    return md
