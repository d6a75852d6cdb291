"""The README stays short and its links live; every docs/ page is in the site's nav; the site's markers resolve.

The strict MkDocs build itself runs in CI (`bash scripts/docs.sh`): mkdocs is not in requirements.txt.
"""
import importlib.util
import re
from pathlib import Path

import yaml

from conftest import ROOT

COMMANDS = (
    "bash scripts/run.sh     # set up + `dvc repro` on the embedded demo dataset, then a short summary of the results",
    "bash scripts/test.sh    # set up + the test suite (pytest)",
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def hooks():
    spec = importlib.util.spec_from_file_location("merc_docs_hooks", ROOT / "docs" / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in nav_pages(v)]
    if isinstance(node, list):
        return [p for v in node for p in nav_pages(v)]
    return []


def test_readme_is_short_and_has_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    for cmd in COMMANDS:
        assert cmd in lines, f"README.md lost the command line {cmd!r}"


def test_readme_relative_links_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:|^#", t)]
    assert targets, "README.md links into docs/"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = set(nav_pages(config["nav"]))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages - nav == set(), f"docs/ pages missing from mkdocs.yml nav: {sorted(pages - nav)}"
    assert nav - pages == set(), f"nav entries without a page: {sorted(nav - pages)}"


def test_markers_resolve():
    """Every <!-- merc:… --> marker in docs/ names a params.yaml key, a file with a docstring, or a file: a renamed
    key fails here, not only in the CI's strict build."""
    h = hooks()
    keys = {k for k, _, _ in h.params_entries((ROOT / "params.yaml").read_text(encoding="utf-8"))}
    for page in (ROOT / "docs").rglob("*.md"):
        for kind, arg in h.MARKER.findall(page.read_text(encoding="utf-8")):
            where = f"{page.relative_to(ROOT)}: merc:{kind} {arg}"
            assert kind in ("results", "params", "docstring", "recipes", "include"), where
            if kind == "params":
                assert arg in keys, where
            if kind in ("docstring", "include"):
                assert (ROOT / arg).is_file(), where


def test_params_entries_keep_comments_and_nesting():
    h = hooks()
    text = ("train:            # the engine\n"
            "  lr: 0.001       # step size\n"
            "  mode: a         # a | b\n"
            "                  #   (b is slower)\n"
            "  sub:\n"
            "    x: '#1'       # quoted hash\n"
            "    y: 2          #   continues x\n"
            "model: gru\n")
    assert h.params_entries(text) == [
        ("train", "", "the engine"), ("train.lr", "0.001", "step size"),
        ("train.mode", "a", "a | b (b is slower)"), ("train.sub", "", ""),
        ("train.sub.x", "'#1'", "quoted hash continues x"), ("train.sub.y", "2", ""), ("model", "gru", "")]
    table = h.params_table_text(text, "train")
    assert "| `mode` | `a` | a &#124; b (b is slower) |" in table and "| `sub.x` |" in table
