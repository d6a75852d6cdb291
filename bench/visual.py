"""Benchmark of the visual stage: its wall time against the sum of its parts measured bare on the same clips.

Stage  = ``run_sharded(FaceExtractor)`` over an utterance table of the clips (decode, MTCNN, tracks,
         alignment, backbone, Parquet shards).
Parts  = per clip, timed alone: ``decode_frames`` of the sampled frames + ``FaceExtractor.detect`` on them (MTCNN, one batch)
         + the backbone on the aligned face clip (its resize/normalise and forward).
Prints both, the ratio stage / parts (goal ≤ 1.3×: the glue costs little) and sampled frames per second.

    python bench/visual.py                       # demo clips + ../shared/data/media when present
    python bench/visual.py --demo 0 -S backbone=r3d_18   # shared clips only, another backbone (random weights)
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.common import load_params, read_features, setup_logging  # noqa: E402
from pipeline.extraction.media import MediaError, decode_frames  # noqa: E402
from pipeline.extraction.runners import run_sharded  # noqa: E402
from pipeline.extraction.visual import FaceExtractor, build_visual_extractor  # noqa: E402
from pipeline.schema import UTTERANCE_SCHEMA  # noqa: E402

log = logging.getLogger("merc.bench")
SHARED_MEDIA = ROOT.parent / "shared" / "data" / "media"


def clips(n_demo: int) -> list[Path]:
    demo = sorted((ROOT / "data" / "demo").glob("*/dia*_utt*.mp4"))[:n_demo]
    shared = sorted(p for p in SHARED_MEDIA.glob("*") if p.suffix in (".mp4", ".mov", ".jpg")) if SHARED_MEDIA.exists() else []
    return demo + shared


def utterance_table(paths: list[Path], out: Path) -> Path:
    rows = [dict(dialogue_id=f"bench{i}", utterance_id=0, speaker="", text="", label=None, label_id=-1,
                 split="test", media_path=str(p), start_s=None, end_s=None, status="ok", error=None,
                 source="bench") for i, p in enumerate(paths)]
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), out)
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parts(ex: FaceExtractor, paths: list[Path]) -> dict[str, float]:
    """Bare decode + MTCNN + backbone seconds over ``paths`` (undecodable clips count only their decode)."""
    t = dict(decode=0.0, mtcnn=0.0, backbone=0.0)
    for p in paths:
        t0 = time.perf_counter()
        try:
            frames, _ = decode_frames(p, **ex.sampling)
        except MediaError:
            t["decode"] += time.perf_counter() - t0
            continue
        t1 = time.perf_counter()
        ex.detect(frames)  # MTCNN (on frames shrunk to detect_max_side) and nothing else
        sync()
        t2 = time.perf_counter()
        t["decode"], t["mtcnn"] = t["decode"] + t1 - t0, t["mtcnn"] + t2 - t1
        _, faces = ex.faces_of(frames)  # untimed: tracks + alignment are the stage's glue
        if faces is not None:
            t3 = time.perf_counter()
            ex.backbone(faces)
            sync()
            t["backbone"] += time.perf_counter() - t3
    return t


def main() -> None:
    setup_logging()
    logging.getLogger("merc").setLevel(logging.WARNING)  # keep the stage's own logging out of the timings
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=int, default=16, help="how many demo clips (0: none)")
    ap.add_argument("--repeat", type=int, default=2, help="best of N for both measurements")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("-S", action="append", default=[], metavar="KEY=VALUE", help="override a visual param")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = load_params("visual", ROOT / "params.yaml")
    for kv in args.S:
        k, v = kv.split("=", 1)
        p[k] = yaml.safe_load(v)
    ex = build_visual_extractor(p)
    paths = clips(args.demo)
    log.warning("bench: %d clips, backbone %s (%s), sampling %s, device %s, %d threads", len(paths),
                p["backbone"], ex.backbone.weights, p["sampling"], ex.device, torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        utt = utterance_table(paths, Path(tmp) / "utt.parquet")
        ex.process_one({"media_path": str(paths[0]), "error": None})  # warm-up: first-call allocations
        stage, bare = float("inf"), None
        for r in range(args.repeat):
            t0 = time.perf_counter()
            out = run_sharded(ex, utt, Path(tmp) / f"out{r}", config={"r": r}, shard_size=p["shard_size"])
            sync()
            stage = min(stage, time.perf_counter() - t0)
            b = parts(ex, paths)
            bare = b if bare is None or sum(b.values()) < sum(bare.values()) else bare
        table = read_features(out)
    n_frames = sum(x or 0 for x in table.column("frames_sampled").to_pylist())
    statuses = {s: table.column("status").to_pylist().count(s) for s in set(table.column("status").to_pylist())}
    total = sum(bare.values())
    print(f"clips: {len(paths)} ({statuses}), sampled frames: {n_frames}, device: {ex.device}, "
          f"torch threads: {torch.get_num_threads()}, backbone: {p['backbone']} ({ex.backbone.weights})")
    print(f"parts (bare): decode {bare['decode']:.2f} s + MTCNN {bare['mtcnn']:.2f} s + backbone "
          f"{bare['backbone']:.2f} s = {total:.2f} s")
    print(f"stage (run_sharded): {stage:.2f} s   ratio stage/parts: {stage / total:.2f}x (goal <= 1.3x)")
    print(f"throughput: {n_frames / stage:.1f} sampled frames/s ({len(paths) / stage:.2f} clips/s)")


if __name__ == "__main__":
    main()
