"""MkDocs hook: fills the site from the project's own files, so no page carries hand-copied numbers or defaults.

Markers a page may hold (each on a line of its own):
  ``<!-- merc:results -->``            the body of ``reports/results/README.md`` (``python -m pipeline.report``), or
                                       a note saying to run the report when it is absent
  ``<!-- merc:params PREFIX -->``      a table of every ``params.yaml`` key under PREFIX (dotted, e.g.
                                       ``model_params.summer``) with its default and its comment
  ``<!-- merc:docstring FILE -->``     the module docstring of FILE (e.g. ``models/summer.py``), read with ``ast``
  ``<!-- merc:recipes -->``            a table of ``recipes/*.yaml`` (name, paper, dataset, what it needs)
  ``<!-- merc:include FILE -->``       FILE (Markdown, e.g. ``recipes/README.md``) without its title, headings one
                                       level down: the file stays where its readers look, the site shows it too

Generated pages: for every corpus folder ``reports/results/<slug>/`` the report wrote, the site gets
``results/<slug>/index.md`` (that corpus's section of the report), its ``reproduction.md``, ``papers.md`` and
``analyses.md`` when present, and every figure beside them; the nav's "Results" section lists them. A link in a
generated page whose target is not in the site becomes plain text, so a partial report never breaks
``mkdocs build --strict``. ``MERC_RESULTS_DIR`` points at another results folder (default ``reports/results``).

Only the standard library and PyYAML (a MkDocs dependency): the hook imports nothing of the project, so the docs
build without torch.
"""
from __future__ import annotations

import ast
import logging
import os
import re
from pathlib import Path

import yaml

log = logging.getLogger("mkdocs.hooks.merc")

MARKER = re.compile(r"^<!--\s*merc:(\w+)\s*(\S*)\s*-->\s*$", re.M)
RESULTS_NAV = "Results"
CORPUS_PAGES = (("reproduction.md", "Reproduction"), ("papers.md", "The papers' tables"), ("analyses.md", "Analyses"))
FIGURE_EXT = (".png", ".svg", ".csv", ".json")
EMPTY = ("!!! note \"No results yet\"\n    Run `python -m pipeline.report` to fill this page: it reads your experiments "
         "(`dvc exp show`) and writes `reports/results/`, which this site picks up on its next build.\n")


# ------------------------------------------------------------------------------------------------ results folder
def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _results_dir(config) -> Path:
    env = os.environ.get("MERC_RESULTS_DIR")
    return Path(env).resolve() if env else _root(config) / "reports" / "results"


def _corpora(results: Path) -> list[tuple[str, str]]:
    """(slug, corpus name) of every corpus folder the report wrote, in the report's order."""
    if not results.is_dir():
        return []
    names = {}
    for d in sorted(p for p in results.iterdir() if p.is_dir() and any(p.glob("*.md"))):
        name = d.name
        for md in ("papers.md", "analyses.md", "reproduction.md"):
            f = d / md
            if f.is_file():
                first = f.read_text(encoding="utf-8").splitlines()[:1]
                if first and first[0].startswith("# "):
                    name = first[0][2:].split(":")[0].strip() or name
                    break
        names[d.name] = re.sub(r"(classes) \(.*\)$", r"\1", name)  # the label list stays on the page, not the nav
    bodies = [body for _, body in _readme_sections(results)]  # the report's order: real corpora first
    rank = {s: next((i for i, b in enumerate(bodies) if f"({s}/" in b), len(bodies)) for s in names}
    return [(s, names[s]) for s in sorted(names, key=lambda s: (rank[s], s))]


def _readme_sections(results: Path) -> list[tuple[str, str]]:
    """``## <corpus name>`` sections of the report's README.md: (name, body)."""
    f = results / "README.md"
    if not f.is_file():
        return []
    text = f.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def _corpus_section(results: Path, slug: str) -> str | None:
    for name, body in _readme_sections(results):
        if f"({slug}/" in body:  # each corpus section links its own folder
            return f"## {name}\n" + body.replace(f"({slug}/", "(")
    return None


# ---------------------------------------------------------------------------------------------------------- hooks
def on_config(config):
    """Add every corpus the report wrote to the nav's Results section."""
    results = _results_dir(config)
    nav = config.get("nav") or []
    section = next((e for e in nav if isinstance(e, dict) and RESULTS_NAV in e), None)
    if section is None:
        return config
    for slug, name in _corpora(results):
        pages = [{"Overview": f"results/{slug}/index.md"}]
        pages += [{title: f"results/{slug}/{md}"} for md, title in CORPUS_PAGES if (results / slug / md).is_file()]
        section[RESULTS_NAV].append({name: pages})
    return config


def on_files(files, config):
    """The report's corpus pages and figures, as generated files of the site."""
    from mkdocs.structure.files import File  # here, not at the top: tests import the parsers without MkDocs

    results = _results_dir(config)
    for slug, name in _corpora(results):
        d = results / slug
        body = _corpus_section(results, slug)
        links = [f"- [{title}]({md})" for md, title in CORPUS_PAGES if (d / md).is_file()]
        page = f"# {name}\n\n" + (body.split("\n", 1)[1] if body else
                                  "This corpus is not in `reports/results/README.md`: rerun `python -m pipeline.report`.\n")
        page += "\n## Pages\n\n" + ("\n".join(links) if links else "No page for this corpus yet.") + "\n"
        files.append(File.generated(config, f"results/{slug}/index.md", content=page))
        for f in sorted(d.iterdir()):
            if f.is_file() and (f.suffix in FIGURE_EXT or f.name in dict(CORPUS_PAGES)):
                files.append(File.generated(config, f"results/{slug}/{f.name}", abs_src_path=str(f)))
    return files


def on_page_markdown(markdown, page, config, files):
    root = _root(config)
    markdown = MARKER.sub(lambda m: _expand(m.group(1), m.group(2), root, config), markdown)
    if page.file.src_uri.startswith("results/"):
        markdown = _drop_dead_links(markdown, page.file.src_uri, files)
    return markdown


def _expand(kind: str, arg: str, root: Path, config) -> str:
    if kind == "results":
        f = _results_dir(config) / "README.md"
        if not f.is_file():
            return EMPTY
        body = f.read_text(encoding="utf-8").split("\n", 1)[-1]  # its own "# Results" title: the page has one
        return re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)  # its "## corpus" sections under the page's title
    if kind == "params":
        return params_table(root / "params.yaml", arg)
    if kind == "docstring":
        doc = ast.get_docstring(ast.parse((root / arg).read_text(encoding="utf-8")))
        if not doc:
            raise ValueError(f"merc:docstring: {arg} has no module docstring")
        return f"Module docstring of `{arg}`, as the code carries it:\n\n```text\n{doc}\n```\n"
    if kind == "recipes":
        return recipes_table(root / "recipes")
    if kind == "include":
        lines = (root / arg).read_text(encoding="utf-8").splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        text, fence = [], False
        for line in lines:  # headings one level down, never inside a code block
            fence ^= line.startswith("```")
            text.append("#" + line if not fence and re.match(r"^#+ ", line) else line)
        return "\n".join(text) + "\n"
    raise ValueError(f"unknown merc marker {kind!r}")


def _drop_dead_links(markdown: str, src_uri: str, files) -> str:
    """``[text](target)`` whose relative target is not a file of the site → ``text``: a partial report (a run
    without analyses, another machine's experiment) must not fail the strict build."""
    here = Path(src_uri).parent

    def fix(m: re.Match) -> str:
        bang, text, target = m.group(1), m.group(2), m.group(3)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return m.group(0)
        path = os.path.normpath(str(here / target.split("#")[0])).replace(os.sep, "/")
        if files.get_file_from_path(path) is not None:
            return m.group(0)
        return f"{text} (not built: `{target}`)" if bang else text

    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", fix, markdown)


# ------------------------------------------------------------------------------------------------- params tables
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):(?:\s+(.*?))?\s*$")


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` → (value, comment); a ``#`` counts only after whitespace, outside quotes. The
    comment keeps its leading spaces (``#   …`` continues the previous key's comment)."""
    quote = None
    for i, c in enumerate(rest):
        if c in "'\"" and quote in (None, c):
            quote = None if quote else c
        elif c == "#" and quote is None and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1:].rstrip()  # leading spaces kept: "#   …" continues a comment
    return rest.strip(), ""


def params_entries(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, raw value, comment) of every key in params.yaml's raw text, comments kept (YAML drops them).
    A comment-only line indented past its key's column continues the previous key's comment."""
    out: list[list[str]] = []
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped:
            continue
        indent = len(line) - len(stripped)
        if stripped.startswith("#"):
            if out and stack and indent > stack[-1][0] + len(stack[-1][1]) + 1:
                out[-1][2] = (out[-1][2] + " " + stripped[1:].strip()).strip()
            continue
        m = _KEY.match(line)
        if not m:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = m.group(2)
        value, comment = _split_comment(m.group(3) or "")
        if comment.startswith("  ") and out:  # "#   more" on the next key's line: the previous key's text goes on
            out[-1][2] = (out[-1][2] + " " + comment.strip()).strip()
            comment = ""
        stack.append((indent, key))
        out.append([".".join(k for _, k in stack), value, comment.strip()])
    return [tuple(e) for e in out]


def _cell(s: str) -> str:
    return s.replace("|", "&#124;")


def params_table(path: Path, prefix: str) -> str:
    return params_table_text(path.read_text(encoding="utf-8"), prefix)


def params_table_text(text: str, prefix: str) -> str:
    """Markdown table of every key under ``prefix`` (key relative to it, default, comment)."""
    entries = params_entries(text)
    head = next((e for e in entries if e[0] == prefix), None)
    if head is None:
        raise ValueError(f"merc:params: no key {prefix!r} in params.yaml")
    rows = []
    for key, value, comment in entries:
        if key.startswith(prefix + "."):
            shown = f"`{value}`" if value else "*(block)*"  # a | inside a code span does not split the cell
            rows.append(f"| `{key[len(prefix) + 1:]}` | {shown} | {_cell(comment)} |")
    intro = f"`{prefix}` in `params.yaml`" + (f" — {head[2]}" if head[2] else "") + "\n\n"
    return intro + "| key | default | meaning (the comment in params.yaml) |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def recipes_table(folder: Path) -> str:
    rows = []
    for f in sorted(folder.glob("*.yaml")):
        r = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        rows.append(f"| `{f.stem}` | {r.get('paper', '')} | {r.get('dataset', '')} | {_cell(str(r.get('needs', '')))} |")
    return "| recipe | paper | dataset | needs |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
