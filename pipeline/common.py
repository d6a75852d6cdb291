"""Small helpers every stage uses: params, logging, atomic writes, sharded + resumable output."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from pipeline.schema import KEY, feature_schema, validate

log = logging.getLogger("merc")
PARAMS_FILE = Path(os.environ.get("MERC_PARAMS", "params.yaml"))


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("MERC_LOGLEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 (and DVC's ruamel) do: ``1e-05`` is a float, not a string.

    ``dvc exp run -S train.lr=6e-06`` writes ``lr: 6e-06``; YAML 1.1 would hand the stages the string '6e-06'."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def load_params(section: str | None = None, path: Path | None = None) -> dict:
    """``params.yaml`` (or one top-level section of it)."""
    with open(path or PARAMS_FILE) as f:
        params = yaml.load(f, Loader=ParamsLoader)
    return params if section is None else params[section]


def atomic_write_table(table: pa.Table, path: str | Path) -> None:
    """Write Parquet to a temp file beside ``path`` then rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temp file, then rename: a killed run never leaves a half-written checkpoint."""
    import torch  # only the training stages pay for the import

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_utterances(path: str | Path) -> pa.Table:
    from pipeline.schema import UTTERANCE_SCHEMA

    return validate(pq.read_table(path), UTTERANCE_SCHEMA)


def read_features(directory: str | Path) -> pa.Table:
    """All shards of a feature table (files starting with ``_`` or ``.`` are ignored by pyarrow)."""
    directory = Path(directory)
    shards = sorted(directory.glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no feature shards in {directory}: run its extract stage first")
    return pa.concat_tables([pq.read_table(s) for s in shards])


def fingerprint(utterances_path: str | Path, config: dict) -> str:
    blob = json.dumps({"input": file_digest(utterances_path), "config": config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class FeatureExtractor:
    """What a modality stage implements: ``dim``, ``name``, extra columns and ``process``.

    ``metadata`` (str → str) goes into every shard's schema metadata (provenance, e.g. which weights).
    ``process(rows)`` gets a list of utterance dicts and returns one record per row: a dict with
    ``status``, ``error``, ``feature`` (np.ndarray[dim] or None) and any ``extra_fields`` values.
    It must not raise for bad media: per-item failures become ``status='error'`` records.

    Optional split for media stages: ``infer(rows, decoded)`` does ``process``'s work from ``decoded``, the
    results of a model-free decoder object's ``decode(row)`` (``run_sharded(decoder=factory)``), so that under
    ``runtime: ray`` CPU workers decode while the model's actors infer (``process`` still decodes inline).
    """

    name: str = "feature"
    dim: int = 0
    extra_fields: list[pa.Field] = []
    metadata: dict[str, str] = {}

    def process(self, rows: list[dict]) -> list[dict]:  # pragma: no cover - interface
        raise NotImplementedError


RUNTIME_DEFAULTS = {"backend": "local", "address": None, "concurrency": 1, "num_gpus": 0.0, "num_cpus": 1.0,
                    "decode_concurrency": 1, "max_restarts": 2, "local_cpus": None}


def stage_runtime(stage: str, params: dict | None = None) -> dict:
    """The ``runtime`` params for one extract stage: the shared keys, overridden by ``runtime.stages.<stage>``
    (e.g. openSMILE needs no GPU while the text encoder does)."""
    rt = dict((params if params is not None else load_params()).get("runtime") or {})
    return {**{k: v for k, v in rt.items() if k != "stages"}, **((rt.get("stages") or {}).get(stage) or {})}


def run_sharded(
    extractor: FeatureExtractor | Callable[[], FeatureExtractor],
    utterances_path: str | Path,
    out_dir: str | Path,
    config: dict,
    shard_size: int = 256,
    select: Callable[[dict], bool] | None = None,
    runtime: dict | None = None,
    decoder: Callable[[], object] | None = None,
) -> Path:
    """Run ``extractor`` over the utterance table in shards of ``shard_size`` rows.

    Shard k holds rows [k·shard_size, (k+1)·shard_size) of the table and is written atomically as
    ``part-k`` (``part-NNNNN.parquet``); a shard that already exists with the same fingerprint (input
    table + ``config``) is kept, so an interrupted run resumes where it stopped and memory stays flat as
    the corpus grows. A changed fingerprint clears the directory first.

    ``extractor`` is an instance or a zero-argument factory (``functools.partial``) that builds one.
    ``runtime`` (params ``runtime``, see ``RUNTIME_DEFAULTS``) picks where the shards are computed:
    ``backend: local`` in this process, ``backend: ray`` by Ray Data actors (``pipeline.ray_runtime``),
    each building the extractor once from the factory. The shard plan, files and their contents are the
    same either way, and the runtime is not part of the fingerprint: switching it keeps finished shards.
    ``decoder`` (a factory of an object with ``decode(row)``, for extractors with ``infer``) lets Ray decode on
    ``runtime.decode_concurrency`` CPU workers, streamed into the model's actors; the local runner ignores it.
    """
    rt = {**RUNTIME_DEFAULTS, **(runtime or {})}
    if rt["backend"] not in ("local", "ray"):
        raise ValueError(f"runtime.backend must be local or ray, got {rt['backend']!r}")
    out_dir = Path(out_dir)
    fp = fingerprint(utterances_path, config)
    fp_file = out_dir / "_fingerprint.json"
    if out_dir.exists():
        old = json.loads(fp_file.read_text()) if fp_file.exists() else {}
        # another shard size is another plan: shards of the old one would overlap the new ones
        if old.get("fingerprint") != fp or old.get("shard_size", shard_size) != shard_size:
            log.info("inputs, params or shard size changed, clearing %s", out_dir)
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({"fingerprint": fp, "config": config, "shard_size": shard_size}, indent=2,
                                 sort_keys=True), fp_file)

    n_rows = pq.ParquetFile(utterances_path).metadata.num_rows
    n_shards = max(1, -(-n_rows // shard_size))
    done = {p.name for p in out_dir.glob("part-*.parquet")}
    todo = [i for i in range(n_shards) if shard_name(i) not in done]
    if len(todo) < n_shards:
        log.info("%s: resuming, %d of %d shards already written", out_dir, n_shards - len(todo), n_shards)
    if rt["backend"] == "ray":
        from pipeline.ray_runtime import run_shards_on_ray

        counts = run_shards_on_ray(extractor, utterances_path, out_dir, todo, shard_size, select, rt, decoder)
        log.info("%s: wrote %s on Ray (this run's statuses: %s)", out_dir.name, out_dir, counts)
        return out_dir
    if not isinstance(extractor, FeatureExtractor):
        extractor = extractor()
    pf = pq.ParquetFile(utterances_path)
    counts: dict[str, int] = {}
    with tqdm(total=n_rows, desc=f"extract {extractor.name}", unit="utt") as bar:
        bar.update(min(n_rows, (n_shards - len(todo)) * shard_size))
        for i, batch in _iter_shards(pf, shard_size):
            if i not in todo:
                continue
            for k, v in write_shard(extractor, batch.to_pylist(), i, out_dir, select).items():
                counts[k] = counts.get(k, 0) + v
            bar.update(batch.num_rows)
    log.info("%s: wrote %s (this run's statuses: %s)", extractor.name, out_dir, counts)
    return out_dir


def shard_name(k: int) -> str:
    """Deterministic file name of shard k (no random parts: DVC and resume both rely on it)."""
    return f"part-{k:05d}.parquet"


def process_safely(extractor: FeatureExtractor, rows: list[dict], decoded: list | None = None) -> list[dict]:
    """``extractor.process(rows)`` (or ``infer(rows, decoded)``); if it raises, each row again on its own, so
    one bad clip is one error row.

    Extractors already turn bad media into error records; this catches what they did not foresee (a model
    failing on one input) without losing the shard or the job. ``BaseException`` (interrupts) still stops.
    """
    try:
        return extractor.process(rows) if decoded is None else extractor.infer(rows, decoded)
    except Exception as e:  # noqa: BLE001 - isolated per row below
        if len(rows) == 1:
            return [dict(status="error", error=f"{extractor.name} failed: {type(e).__name__}: {e}", feature=None)]
        log.warning("%s: a batch of %d rows failed (%s: %s); retrying row by row", extractor.name, len(rows),
                    type(e).__name__, e)
        return [rec for i, row in enumerate(rows)
                for rec in process_safely(extractor, [row], None if decoded is None else [decoded[i]])]


def decode_safely(decoder, row: dict):
    """``decoder.decode(row)``; an unforeseen error becomes the (no signal, error record) a decoder returns."""
    try:
        return decoder.decode(row)
    except Exception as e:  # noqa: BLE001 - one clip, one error row
        return None, dict(status="error", error=f"decode failed: {type(e).__name__}: {e}")


def select_rows(rows: list[dict], select: Callable[[dict], bool] | None) -> list[dict]:
    return [r for r in rows if select is None or select(r)]


def write_shard(extractor: FeatureExtractor, rows: list[dict], k: int, out_dir: str | Path,
                select: Callable[[dict], bool] | None = None, decoded: list | None = None) -> dict[str, int]:
    """Extract one shard's rows and write them atomically as ``part-k``; returns the status counts.

    ``decoded``: the selected rows' decoder results, when decoding ran elsewhere (Ray's decode workers)."""
    schema = feature_schema(extractor.dim, extractor.name, extractor.extra_fields, extractor.metadata)
    zero = np.zeros(extractor.dim, dtype=np.float32)
    keep = select_rows(rows, select)
    records = process_safely(extractor, keep, decoded) if keep else []
    if len(records) != len(keep):
        raise RuntimeError(f"{extractor.name}: {len(records)} records for {len(keep)} rows")
    cols: dict[str, list] = {f.name: [] for f in schema}
    counts: dict[str, int] = {}
    for row, rec in zip(keep, records):
        feat, status, error = rec.get("feature"), rec["status"], rec.get("error")
        if status == "ok" and feat is None:
            status, error = "error", f"{extractor.name} returned no vector"
        cols["dialogue_id"].append(row["dialogue_id"])
        cols["utterance_id"].append(row["utterance_id"])
        cols["status"].append(status)
        cols["error"].append(error)
        cols["feature"].append(np.asarray(feat, dtype=np.float32) if status == "ok" else zero)
        for f in extractor.extra_fields:
            cols[f.name].append(rec.get(f.name))
        counts[status] = counts.get(status, 0) + 1
    atomic_write_table(pa.table(cols, schema=schema), Path(out_dir) / shard_name(k))
    return counts


def _iter_shards(pf: pq.ParquetFile, shard_size: int) -> Iterable[tuple[int, pa.Table]]:
    # pyarrow fills each batch across row-group ends: batch k is exactly rows [k·size, (k+1)·size)
    for i, batch in enumerate(pf.iter_batches(batch_size=shard_size)):
        yield i, pa.Table.from_batches([batch])


def key_index(table: pa.Table) -> dict[tuple[str, int], int]:
    """Map (dialogue_id, utterance_id) → row number."""
    d = table.column(KEY[0]).to_pylist()
    u = table.column(KEY[1]).to_pylist()
    return {(a, b): i for i, (a, b) in enumerate(zip(d, u))}
