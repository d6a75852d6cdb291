"""Ray backend of ``pipeline.extraction.runners.run_sharded`` (params ``runtime.backend: ray``).

The shard plan is the local one: shard k = rows [k·shard_size, (k+1)·shard_size) of the utterance table.
A Ray Dataset of the shard numbers still to do is mapped with ``map_batches`` over a callable class, so
each actor builds the stage's extractor once (model loaded once per actor, ``runtime.num_gpus`` GPUs and
``runtime.num_cpus`` CPUs each, ``runtime.concurrency`` actors) and then, per shard number, runs the very
same ``write_shard`` as the local runner: the extractor's own ``process`` (decoding + inference), the
same schema, the same atomic ``part-k`` file (temp + rename). A shard that is on disk is finished, so an
actor that dies loses only the shard it was computing; a rerun sees the finished files and maps only the
missing shard numbers. Stages whose extractor splits decoding off (``infer`` + a decoder factory, e.g.
audio) get a CPU stage first: ``runtime.decode_concurrency`` decoder actors turn shard numbers into decoded
clips that stream into the model's actors, so the GPUs do not wait for decoding.

Where Ray runs: an already initialised Ray (e.g. a test's, or inside ``ray job submit``) is used as it
is; else ``runtime.address`` or ``RAY_ADDRESS`` connects to a cluster (``auto``: the one this node
belongs to); else a local Ray is started for this run (``runtime.local_cpus`` CPUs; all when null) and
stopped afterwards. On a multi-node cluster the utterance table, the media and the output folder must be
on storage every node mounts at the same path (actors write the shards themselves).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.common import setup_logging
from pipeline.extraction.shards import FeatureExtractor, decode_safely, select_rows, write_shard

log = logging.getLogger("merc.ray")
ROOT = Path(__file__).resolve().parents[2]


def init_ray(rt: dict) -> bool:
    """Connect to (or start) Ray as ``rt`` says; True when this call started a local Ray to stop later."""
    import ray

    if ray.is_initialized():
        return False
    address = rt.get("address") or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        # Ship this checkout's `pipeline` package to the cluster's workers (the nodes need the pinned
        # requirements installed, as here); merged with a `ray job submit` job's own runtime env.
        ray.init(address=address, runtime_env={"py_modules": [str(ROOT / "pipeline")]})
        return False
    # Local workers import `pipeline` (and the stage's extractor classes) from this checkout.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=rt.get("local_cpus"), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    log.info("started a local Ray: %s", ray.cluster_resources())
    return True


class ShardDecoder:
    """Ray Data callable class on CPU: decodes each shard's selected rows (no model) for ``ShardWriter``."""

    def __init__(self, decoder: Callable[[], object], utterances_path: str, shard_size: int,
                 select: Callable[[dict], bool] | None, cwd: str | None):
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
        setup_logging()
        self.decoder = decoder()
        self.table = pq.read_table(utterances_path)
        self.shard_size, self.select = shard_size, select

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = []
        for k in batch["shard"].tolist():
            rows = select_rows(self.table.slice(k * self.shard_size, self.shard_size).to_pylist(), self.select)
            payloads.append(pickle.dumps([decode_safely(self.decoder, r) for r in rows]))
        return {"shard": np.asarray(batch["shard"], np.int64), "decoded": np.asarray(payloads, dtype=object)}


class ShardWriter:
    """Ray Data callable class: builds the extractor once, then extracts + writes each shard it is given."""

    def __init__(self, extractor: FeatureExtractor | Callable[[], FeatureExtractor], utterances_path: str,
                 out_dir: str, shard_size: int, select: Callable[[dict], bool] | None, cwd: str | None):
        # Media paths in the utterance table are relative to the driver's folder (the repo root under DVC).
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
        setup_logging()
        self.extractor = extractor if isinstance(extractor, FeatureExtractor) else extractor()
        # The utterance table holds metadata only (paths, text): one copy per actor is small.
        self.table = pq.read_table(utterances_path)
        self.out_dir, self.shard_size, self.select = out_dir, shard_size, select

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards, rows, counts = [], [], []
        decoded = batch.get("decoded")
        for j, k in enumerate(batch["shard"].tolist()):
            part = self.table.slice(k * self.shard_size, self.shard_size).to_pylist()
            dec = None if decoded is None else pickle.loads(decoded[j])
            c = write_shard(self.extractor, part, k, self.out_dir, self.select, dec)
            shards.append(k)
            rows.append(len(part))
            counts.append(json.dumps(c, sort_keys=True))
        return {"shard": np.asarray(shards, np.int64), "rows": np.asarray(rows, np.int64),
                "counts": np.asarray(counts, dtype=object)}


def run_shards_on_ray(extractor: FeatureExtractor | Callable[[], FeatureExtractor], utterances_path: str | Path,
                      out_dir: Path, todo: list[int], shard_size: int, select: Callable[[dict], bool] | None,
                      rt: dict, decoder: Callable[[], object] | None = None) -> dict[str, int]:
    """Compute shards ``todo`` with Ray Data actors; returns this run's status counts.

    With ``decoder`` two stages stream into each other: CPU actors decode shard k+1, k+2, … while the model's
    actors infer shard k (Ray Data's streaming executor bounds the decoded shards in flight)."""
    if not todo:
        return {}
    import ray
    import ray.data

    if isinstance(extractor, FeatureExtractor):
        log.warning("runtime ray got an extractor instance: it is pickled to every actor (pass a factory so "
                    "each actor loads its model itself)")
    started = init_ray(rt)
    counts: dict[str, int] = {}
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # one tqdm bar below, as for the local runner
        retries = int(rt.get("max_restarts") or 0)
        # One shard number per block and per batch: the unit of work, of retry and of output is the shard.
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        with warnings.catch_warnings():
            # ray 2.60 marks ray_remote_args_fn deprecated but offers no other way to bound actor restarts
            warnings.simplefilter("ignore", DeprecationWarning)
            retry = functools.partial(dict, max_restarts=retries, max_task_retries=retries,
                                      allow_out_of_order_execution=False)
            if decoder is not None:
                ds = ds.map_batches(
                    ShardDecoder, batch_size=1, batch_format="numpy",
                    fn_constructor_kwargs=dict(decoder=decoder, utterances_path=str(Path(utterances_path).resolve()),
                                               shard_size=shard_size, select=select, cwd=os.getcwd()),
                    compute=ray.data.ActorPoolStrategy(size=int(rt.get("decode_concurrency") or 1)),
                    num_cpus=1, ray_remote_args_fn=retry)
            ds = ds.map_batches(
                ShardWriter, batch_size=1, batch_format="numpy",
                fn_constructor_kwargs=dict(extractor=extractor, utterances_path=str(Path(utterances_path).resolve()),
                                           out_dir=str(Path(out_dir).resolve()), shard_size=shard_size,
                                           select=select, cwd=os.getcwd()),
                compute=ray.data.ActorPoolStrategy(size=int(rt.get("concurrency") or 1)),
                num_gpus=float(rt.get("num_gpus") or 0), num_cpus=float(rt.get("num_cpus") or 1),
                # Ray Data's default is endless restarts: a clip that kills its actor every time must end the
                # run. In-order execution per actor: shards finish in plan order (a crash leaves a clean prefix).
                ray_remote_args_fn=retry,
            )
        with tqdm(total=len(todo), desc=f"extract {out_dir.name} (ray)", unit="shard") as bar:
            for row in ds.iter_rows():
                for k, v in json.loads(row["counts"]).items():
                    counts[k] = counts.get(k, 0) + v
                bar.update(1)
    finally:
        if started:
            ray.shutdown()
    return counts

