"""Outputs do not depend on where the checkout lies: no absolute path gets into them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clone(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for d in ("pipeline", "models", "data/demo"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", dest / "params.yaml")
    return dest


def test_prepare_demo_is_byte_identical_from_two_paths(tmp_path):
    """The demo's corrupt clip's error record once carried FFmpeg's ``file:/abs/path``: two clones differed."""
    out = []
    for where in (tmp_path / "a" / "merc", tmp_path / "second_clone" / "deeper" / "x"):
        repo = clone(where)
        env = {**os.environ, "MERC_PARAMS": "params.yaml", "PYTHONPATH": str(repo)}
        subprocess.run([sys.executable, "-m", "pipeline.prepare"], cwd=repo, env=env, check=True,
                       capture_output=True, timeout=300)
        data = (repo / "data" / "prepared" / "utterances.parquet").read_bytes()
        assert str(tmp_path).encode() not in data
        out.append(data)
    assert out[0] == out[1]
