"""The package layout stays readable: stages at the top of ``pipeline/``, helpers in subpackages that never
import a stage (no upward imports), extraction never imports training (one direction), no import circles."""
import ast
from pathlib import Path

from conftest import ROOT

STAGES = {"prepare", "finetune_text", "extract_text", "extract_audio", "extract_visual", "train_teacher", "train",
          "evaluate", "predict", "report", "recipe", "summary", "analysis"}
HELPERS = {"extraction", "training", "adapters"}
BASE = {"common", "schema", "errors"}


def _imports(path: Path) -> set[str]:
    """Every ``pipeline.<x>[.<y>]`` module a file imports (anywhere in it, function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            parts = node.module.split(".")
            if len(parts) == 1:
                out |= {f"pipeline.{a.name}" for a in node.names}
            else:
                out.add(".".join(parts[:3]))
        elif isinstance(node, ast.Import):
            out |= {".".join(a.name.split(".")[:3]) for a in node.names if a.name.split(".")[0] == "pipeline"}
    return out


def _files(*parts):
    return sorted((ROOT / Path(*parts)).rglob("*.py"))


def test_top_level_is_stages_and_the_shared_contract():
    top = {p.stem for p in (ROOT / "pipeline").glob("*.py")} - {"__init__"}
    dirs = {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top <= STAGES | BASE, f"helpers belong in a subpackage: {sorted(top - STAGES - BASE)}"
    assert dirs <= STAGES | HELPERS, sorted(dirs - STAGES - HELPERS)


def test_helpers_and_models_never_import_a_stage():
    bad = []
    for f in _files("pipeline", "extraction") + _files("pipeline", "training") + _files("pipeline", "adapters") + \
            _files("models") + [ROOT / "pipeline" / f"{b}.py" for b in BASE]:
        for m in _imports(f):
            if m.split(".")[1] in STAGES:
                bad.append(f"{f.relative_to(ROOT)} imports {m}")
    assert not bad, bad


def test_extraction_never_imports_training():
    bad = [f"{f.relative_to(ROOT)} imports {m}" for f in _files("pipeline", "extraction") for m in _imports(f)
           if m.startswith("pipeline.training")]
    assert not bad, bad


def test_no_import_circles_between_modules():
    graph = {}
    for f in _files("pipeline"):
        rel = f.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[name] = {m for m in _imports(f) if m != name}
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen or n not in graph:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph[n]):
            visit(m)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    # a package's __init__ re-exporting its own submodules is not a circle between modules
    real = [c for c in cycles if len({x.rsplit(".", 1)[0] if x.count(".") > 1 else x for x in c}) > 1]
    assert not real, real
