"""One shard of a feature table: the extractor interface, computing a shard's records, writing and checking it.

Shared by both runners (``pipeline.extraction.runners``: local; ``pipeline.extraction.ray_runtime``: Ray actors), which only decide
where ``write_shard`` runs; imports run one way: runners → ray_runtime → shards → common.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import atomic_write_table
from pipeline.schema import feature_schema

log = logging.getLogger("merc")

# Utterance statuses of rows with no media to read: their feature rows say ``absent`` (a fact, not a failure).
NO_MEDIA = ("no_media",)


class FeatureExtractor:
    """What a modality stage implements: ``dim``, ``name``, extra columns and ``process``.

    ``metadata`` (str → str) goes into every shard's schema metadata (provenance, e.g. which weights).
    ``process(rows)`` gets a list of utterance dicts and returns one record per row: a dict with
    ``status``, ``error``, ``feature`` (np.ndarray[dim] or None) and any ``extra_fields`` values.
    It must not raise for bad media: per-item failures become ``status='error'`` records.

    ``needs_media``: the stage reads the utterance's media (audio, visual). Rows the utterance table flags
    (status not ``ok``: ``bad_times``, ``missing_media``, …) then never reach ``process``: their feature row
    carries the utterance's status and error; text-only rows (``no_media``) come out ``absent``.

    Optional split for media stages: ``infer(rows, decoded)`` does ``process``'s work from ``decoded``, the
    results of a model-free decoder object's ``decode(row)`` (``run_sharded(decoder=factory)``), so that under
    ``runtime: ray`` CPU workers decode while the model's actors infer (``process`` still decodes inline).
    """

    name: str = "feature"
    dim: int = 0
    extra_fields: list[pa.Field] = []
    metadata: dict[str, str] = {}
    needs_media: bool = False

    def process(self, rows: list[dict]) -> list[dict]:  # pragma: no cover - interface
        raise NotImplementedError


def media_gate(row: dict) -> dict | None:
    """The record of a row a media stage must not decode (from the utterance's own status), else None."""
    status = row.get("status") or "ok"
    if status == "ok":
        return None
    if status in NO_MEDIA:
        return dict(status="absent", error=row.get("error") or "no media for this utterance", feature=None)
    return dict(status=status, error=row.get("error") or f"utterance flagged {status} by prepare", feature=None)


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
    """``decoder.decode(row)``; a flagged row is not decoded (``media_gate``), an unforeseen error becomes the
    (no signal, error record) a decoder returns."""
    gated = media_gate(row)
    if gated is not None:
        return None, gated
    try:
        return decoder.decode(row)
    except Exception as e:  # noqa: BLE001 - one clip, one error row
        return None, dict(status="error", error=f"decode failed: {type(e).__name__}: {e}")


def select_rows(rows: list[dict], select: Callable[[dict], bool] | None) -> list[dict]:
    return [r for r in rows if select is None or select(r)]


def shard_records(extractor: FeatureExtractor, keep: list[dict], decoded: list | None = None) -> list[dict]:
    """One record per row of ``keep``: flagged rows of a media stage from their status, the rest extracted."""
    gated = [media_gate(r) if extractor.needs_media else None for r in keep]
    idx = [i for i, g in enumerate(gated) if g is None]
    todo = [keep[i] for i in idx]
    dec = None if decoded is None else [decoded[i] for i in idx]
    records = process_safely(extractor, todo, dec) if todo else []
    if len(records) != len(todo):
        raise RuntimeError(f"{extractor.name}: {len(records)} records for {len(todo)} rows")
    out = list(gated)
    for i, rec in zip(idx, records):
        out[i] = rec
    return out


def write_shard(extractor: FeatureExtractor, rows: list[dict], k: int, out_dir: str | Path,
                select: Callable[[dict], bool] | None = None, decoded: list | None = None) -> dict[str, int]:
    """Extract one shard's rows and write them atomically as ``part-k``; returns the status counts.

    ``decoded``: the selected rows' decoder results, when decoding ran elsewhere (Ray's decode workers)."""
    schema = feature_schema(extractor.dim, extractor.name, extractor.extra_fields, extractor.metadata)
    zero = np.zeros(extractor.dim, dtype=np.float32)
    keep = select_rows(rows, select)
    records = shard_records(extractor, keep, decoded)
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


def iter_shards(pf: pq.ParquetFile, shard_size: int) -> Iterable[tuple[int, pa.Table]]:
    # pyarrow fills each batch across row-group ends: batch k is exactly rows [k·size, (k+1)·size)
    for i, batch in enumerate(pf.iter_batches(batch_size=shard_size)):
        yield i, pa.Table.from_batches([batch])


def clean_temp_files(out_dir: str | Path) -> int:
    """Delete the temp files a killed writer left (``.part-….tmp``, ``._fingerprint.json.tmp``); how many."""
    n = 0
    for p in Path(out_dir).glob(".*.tmp"):
        if p.is_file():
            p.unlink()
            n += 1
    if n:
        log.info("%s: removed %d temp file(s) of an interrupted run", out_dir, n)
    return n


BASE_COLUMNS = {"dialogue_id": pa.string(), "utterance_id": pa.int32(), "status": pa.string(), "error": pa.string()}


def shard_problem(path: Path, keys: list[tuple[str, int]], schema: pa.Schema | None = None) -> str | None:
    """Why the finished shard at ``path`` cannot be trusted (None when it can): unreadable, not the feature
    schema (or not ``schema`` when given), or not exactly the rows ``keys`` in order."""
    try:
        table = pq.read_table(path)  # every page decoded: a damaged file fails here, not in training
    except Exception as e:  # noqa: BLE001 - any failure means "recompute"
        return f"unreadable ({type(e).__name__}: {e})"
    got = table.schema
    for name, typ in BASE_COLUMNS.items():
        if name not in got.names or got.field(name).type != typ:
            return f"column {name} missing or not {typ}"
    if "feature" not in got.names or not pa.types.is_fixed_size_list(got.field("feature").type):
        return "no fixed-size feature column"
    if schema is not None and not (got.equals(schema) and (got.metadata or {}) == (schema.metadata or {})):
        return "schema differs from this extractor's"
    rows = list(zip(table.column("dialogue_id").to_pylist(), table.column("utterance_id").to_pylist()))
    if rows != keys:
        return f"{len(rows)} rows where the plan has {len(keys)} (or other keys)"
    return None
