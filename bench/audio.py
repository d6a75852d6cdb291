"""Benchmark of the openSMILE audio stage.

1. Throughput: ``extract_audio`` (PyAV decode + resample + openSMILE, sharded Parquet output) vs the bare
   library call ``opensmile.Smile.process_file`` on the same 16 kHz mono WAV files; printed as
   stage/bare throughput (goal ≥ 0.9×).
2. Memory: peak RSS of the stage in a fresh process over N and 10·N clips (goal: flat, ≤ 1.2×).

Run: ``python -m bench.audio [--n 40] [--feature-set eGeMAPSv02]`` (uses the demo clips as sources).
"""
from __future__ import annotations

import argparse
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from pipeline.schema import UTTERANCE_SCHEMA

log = logging.getLogger("bench.audio")
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def make_corpus(root: Path, n: int) -> Path:
    """``n`` WAV files cycled from the demo's speech clips, and an utterance table pointing at them."""
    from pipeline.extraction.media import load_audio

    sources = sorted((DEMO / "train_splits").glob("*.mp4"))[:10]
    signals = []
    for s in sources:
        try:
            x, _ = load_audio(s)
        except Exception:  # noqa: BLE001 - the demo's planted corrupt clip
            continue
        if np.sqrt(np.mean(x**2)) > 1e-3:
            signals.append(x)
    rows = []
    for i in range(n):
        path = root / f"clip{i:05d}.wav"
        sf.write(path, signals[i % len(signals)], 16000, subtype="FLOAT")
        rows.append(dict(dialogue_id=f"d{i}", utterance_id=0, speaker="s", text="", label="neutral", label_id=0,
                         split="train", media_path=str(path), start_s=None, end_s=None, status="ok", error=None,
                         source="bench"))
    table = root / "utterances.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), table)
    return table


def run_stage(table: Path, out: Path, feature_set: str) -> float:
    from pipeline.extraction.runners import run_sharded
    from pipeline.extraction.audio import OpenSmileExtractor

    ex = OpenSmileExtractor(feature_set)
    ex.features(np.zeros(16000, np.float32))  # warm-up, as for the bare call
    t = time.perf_counter()
    run_sharded(ex, table, out, config={"bench": time.time()}, shard_size=64)
    return time.perf_counter() - t


def run_bare(paths: list[str], feature_set: str) -> float:
    import opensmile

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet[feature_set],
                            feature_level=opensmile.FeatureLevel.Functionals)
    t = time.perf_counter()
    for p in paths:
        smile.process_file(p)
    return time.perf_counter() - t


def child_rss(n: int, feature_set: str) -> float:
    """Peak RSS (MiB) of a fresh process running the stage over ``n`` clips."""
    code = ("import resource,sys,tempfile,pathlib; from bench.audio import make_corpus, run_stage; "
            "d=pathlib.Path(tempfile.mkdtemp()); t=make_corpus(d,int(sys.argv[1])); "
            "run_stage(t, d/'out', sys.argv[2]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, str(n), feature_set], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--feature-set", default="eGeMAPSv02")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        table = make_corpus(Path(d), args.n)
        paths = pq.read_table(table).column("media_path").to_pylist()
        run_bare(paths[:2], args.feature_set)  # warm-up: load the shared library once
        # best of `repeats`: the machine is shared, the minimum is the least disturbed run
        bare = min(run_bare(paths, args.feature_set) for _ in range(args.repeats))
        stage = min(run_stage(table, Path(d) / f"out{i}", args.feature_set) for i in range(args.repeats))
    print(f"openSMILE {args.feature_set}, {args.n} clips")
    print(f"  bare process_file : {bare:7.2f} s  ({args.n / bare:6.1f} clips/s)")
    print(f"  extract_audio     : {stage:7.2f} s  ({args.n / stage:6.1f} clips/s)")
    print(f"  throughput ratio stage/bare = {bare / stage:.2f}x  (goal >= 0.9x)")
    if not args.skip_rss:
        small, big = child_rss(args.n, args.feature_set), child_rss(10 * args.n, args.feature_set)
        print(f"  peak RSS: {args.n} clips {small:.0f} MiB, {10 * args.n} clips {big:.0f} MiB, "
              f"ratio {big / small:.2f}x  (goal <= 1.2x)")


if __name__ == "__main__":
    main()
