"""Parquet schemas shared by every stage: the only contract between stages.

Utterance table (``prepare`` output, one file):
    dialogue_id  string   unique across splits (e.g. ``train_dia3``; MELD ids restart per split)
    utterance_id int32    position within the dialogue
    speaker      string
    text         string
    label        string   class name from the table's label set (see below) or null when unlabelled
    label_id     int16    index into the label set, -1 when unlabelled
    split        string   train | dev | test
    media_path   string   clip or recording (relative to the repo root when inside it), null when text-only
    start_s      float64  utterance start within ``media_path`` (null: whole clip). Readers must honour
                          start_s/end_s (``pipeline.extraction.media.load_audio(..., start_s, end_s)``): IEMOCAP and
                          manifest rows may point at a whole dialogue recording
    end_s        float64  utterance end (null: whole clip)
    audio_path   string   the utterance's own audio file when it differs from ``media_path`` (IEMOCAP's
                          ``sentences/wav``); null: the audio is ``media_path``'s
    annot_duration_s float64  utterance length the annotation gives (MELD's CSV End-Start, end_s-start_s)
    media_duration_s float64  container duration of ``media_path`` read by ``prepare`` (null: not probed)
    status       string   ``ok`` | ``missing_media`` (file absent) | ``corrupt_media`` (cannot be opened) |
                          ``long_media`` (clip far longer than its annotation, e.g. MELD's multi-minute
                          clips: ``media_path`` is null so no stage decodes it) | ``bad_times`` (span outside
                          the recording) | ``no_media`` (text-only)
    error        string   why, when status is not ``ok``
    source       string   provenance of the row: adapter, file it came from, protocol
    targets      list<float64>  regression targets of the row, in the order of the ``targets`` metadata (null:
                          no targets — every row of a classification table; an unlabelled row of a regression one)
Schema metadata of the utterance table: ``labels`` (JSON list: the label set, ``label_id`` indexes it;
absent in old tables → ``EMOTIONS``), ``targets`` (JSON list of regression target names, e.g. ``["valence",
"arousal", "dominance"]``; absent or empty: a classification table) and ``provenance`` (JSON: adapter, root,
params, counts). Read them with ``label_names`` and ``target_names``. A regression table has no classes: its
``label`` is null and ``label_id`` -1 on every row, and a row is labelled when its ``targets`` are set.

Feature tables (``extract_*`` outputs, a directory of ``part-NNNNN.parquet`` shards):
    dialogue_id, utterance_id   the key, one row per utterance of the utterance table
    status       string   ``ok`` or a modality status (``FEATURE_STATUS``); only ``ok`` rows carry a real vector.
                          Media stages give text-only utterances (``no_media``) ``absent`` and copy any other
                          non-``ok`` utterance status (``bad_times``, ``missing_media``, …) with its error
    error        string   the reason for any non-``ok`` status (which file, what failed)
    feature      fixed_size_list<float32>[dim]   zeros unless status is ``ok``
    ...          modality-specific extra columns (see each stage's ``EXTRA_FIELDS``)
The shard's schema metadata records ``feature_name`` and ``dim``, plus what the extractor adds (e.g. the
visual stage's ``weights``: ``random`` when a backbone ran untrained, its vectors then carry no meaning).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

# MELD's seven emotions, in the label order of the official MELD repository: the default label set.
EMOTIONS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
SPLITS = ("train", "dev", "test")
KEY = ["dialogue_id", "utterance_id"]

UTTERANCE_SCHEMA = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("utterance_id", pa.int32()),
        ("speaker", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("label_id", pa.int16()),
        ("split", pa.string()),
        ("media_path", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("audio_path", pa.string()),
        ("annot_duration_s", pa.float64()),
        ("media_duration_s", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("source", pa.string()),
        ("targets", pa.list_(pa.float64())),
    ]
)

# Statuses a feature row may carry. ``ok`` is the only one with a meaningful vector;
# ``no_face``/``silent`` are facts about the clip, ``error`` is a failure to read it, ``absent`` a text-only
# utterance (no media: not an error). Utterances ``prepare`` flagged keep their status in the media stages.
FEATURE_STATUS = ("ok", "no_face", "silent", "absent", "error", "missing_media", "corrupt_media", "long_media",
                  "bad_times")


def feature_schema(dim: int, feature_name: str, extra: list[pa.Field] | None = None,
                   metadata: dict[str, str] | None = None) -> pa.Schema:
    """Schema of a feature shard with a ``dim``-wide vector, optional extra columns and metadata."""
    fields = [
        pa.field("dialogue_id", pa.string()),
        pa.field("utterance_id", pa.int32()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("feature", pa.list_(pa.float32(), dim)),
    ]
    fields += list(extra or [])
    return pa.schema(fields, metadata={**(metadata or {}), "feature_name": feature_name, "dim": str(dim)})


def validate(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` cast to ``schema`` (keeping the table's metadata); raise naming the missing columns."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing}; expected schema {schema.names}")
    out = table.select(schema.names).cast(schema)
    meta = {**(table.schema.metadata or {}), **(schema.metadata or {})}
    return out.replace_schema_metadata(meta or None)


def label_names(schema: pa.Schema) -> list[str]:
    """The label set of an utterance table (its ``labels`` metadata); ``EMOTIONS`` for tables without one."""
    raw = (schema.metadata or {}).get(b"labels")
    return json.loads(raw) if raw else list(EMOTIONS)


def target_names(schema: pa.Schema) -> list[str]:
    """The regression targets of an utterance table (its ``targets`` metadata); [] for a classification table."""
    raw = (schema.metadata or {}).get(b"targets")
    return list(json.loads(raw)) if raw else []


def task_of(schema: pa.Schema) -> str:
    """``regression`` when the table names targets, else ``classification``."""
    return "regression" if target_names(schema) else "classification"


def feature_matrix(table: pa.Table) -> np.ndarray:
    """The ``feature`` column as a float32 ``[rows, dim]`` array (no per-row Python loop)."""
    col = table.column("feature").combine_chunks()
    dim = col.type.list_size
    return np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


# A feature value beyond this magnitude is a numerical blow-up, not a measurement: its square overflows float32
# (max ≈ 3.4e38) from |x| ≈ 1.8e19, so statistics over it go inf/NaN. Not in any paper: our choice, far above
# anything our encoders (O(1)–O(100)) and openSMILE functionals produce, with ample headroom below that overflow.
FEATURE_ABS_LIMIT = 1e15


def nonfinite_rows(mat: np.ndarray) -> np.ndarray:
    """Per row of ``[rows, dim]``: does it hold NaN, ±inf or a value beyond ``FEATURE_ABS_LIMIT``?"""
    mat = np.asarray(mat)
    if mat.ndim == 1:
        mat = mat[None]
    with np.errstate(invalid="ignore"):
        return ~(np.abs(mat) <= FEATURE_ABS_LIMIT).all(axis=1)  # NaN compares False: caught too


def nonfinite_error(name: str, vec) -> str | None:
    """The error text for an extractor's vector with NaN/inf/huge entries, None when it is usable: every
    extract stage checks its vectors with this before calling a row ``ok``."""
    v = np.asarray(vec, dtype=np.float64).reshape(-1)
    with np.errstate(invalid="ignore"):
        bad = int((~(np.abs(v) <= FEATURE_ABS_LIMIT)).sum())
    return f"{name} returned {bad} non-finite values (NaN/inf or |x| > {FEATURE_ABS_LIMIT:.0e})" if bad else None


def corpus_info(utterances: str | Path) -> dict:
    """The ``corpus`` block of metrics.json from the utterance table's schema metadata (labels, provenance).

    Strings only: ``dvc exp show --json`` drops lists from metrics files.
    """
    import pyarrow.parquet as pq

    schema = pq.read_schema(utterances)
    prov = json.loads((schema.metadata or {}).get(b"provenance", b"{}"))
    params = prov.get("params") or {}
    adapter = str(prov.get("adapter", "unknown"))
    targets = target_names(schema)
    target = str(params.get("target") or "emotion") if adapter in ("meld", "demo", "mosei", "iemocap") else "emotion"
    if targets and adapter not in ("iemocap", "mosei"):
        target = "regression"  # a manifest's prepare.targets
    return {"adapter": adapter, "target": target, "labels": "" if targets else ",".join(label_names(schema)),
            "targets": ",".join(targets),
            "source": Path(str(prov.get("root", ""))).stem if adapter in ("manifest", "features") else ""}
