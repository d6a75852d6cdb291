"""Vectors from a pre-extracted feature pickle, served through the extract stages' own contract.

When the utterance table was made by ``prepare.dataset: features`` (its provenance says so), each extract stage
takes the pickle's vectors for its modality instead of computing its own (``imported_or``), and writes them as
ordinary feature shards: same schema, statuses and resume as every other extractor, so the dataset loader, the
models and the report cannot tell the difference. A modality the pickle lacks comes out ``absent`` ("the feature
pickle has no <modality> vectors": the models treat it as missing); a non-finite vector is an ``error`` row naming
the utterance, never a silent NaN.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.extraction.feature_pickles import vectors
from pipeline.schema import nonfinite_rows
from pipeline.extraction.shards import FeatureExtractor

log = logging.getLogger("merc.imported")
NAMES = {"t": "text", "a": "audio", "v": "visual"}


def provenance(utterances_path: str | Path) -> dict:
    meta = pq.read_schema(utterances_path).metadata or {}
    return json.loads(meta.get(b"provenance", b"{}"))


class ImportedExtractor(FeatureExtractor):
    """``process`` looks each row up in the pickle's vectors of one modality."""

    extra_fields: list[pa.Field] = []

    def __init__(self, modality: str, pickle_path: str, fmt: str = "auto", label_key: str | None = None,
                 digest: str = ""):
        self.modality = modality
        self.table = vectors(pickle_path, modality, fmt, label_key)
        self.dim = len(next(iter(self.table.values()))) if self.table else 1
        self.name = f"imported:{NAMES[modality]}:{Path(pickle_path).name}"
        self.metadata = {"imported_from": Path(pickle_path).name, "sha256": digest}

    def process(self, rows: list[dict]) -> list[dict]:
        out = []
        for r in rows:
            v = self.table.get((r["dialogue_id"], int(r["utterance_id"])))
            if not self.table:  # the file has no such modality at all: a fact, not a failure
                out.append(dict(status="absent", error=f"the feature pickle has no {NAMES[self.modality]} vectors",
                                feature=None))
            elif v is None:
                out.append(dict(status="error", error=f"no {NAMES[self.modality]} vector for "
                                f"{r['dialogue_id']}#{r['utterance_id']} in the pickle", feature=None))
            elif nonfinite_rows(v).any():  # NaN/inf or beyond FEATURE_ABS_LIMIT, as every extract stage checks
                out.append(dict(status="error", error=f"non-finite {NAMES[self.modality]} vector for "
                                f"{r['dialogue_id']}#{r['utterance_id']} in the pickle", feature=None))
            else:
                out.append(dict(status="ok", error=None, feature=v))
        return out


def imported_or(utterances_path: str | Path, modality: str, extractor, config: dict) -> tuple[object, dict]:
    """``(extractor factory, config)``: the pickle's vectors when the table came from a feature pickle, else the
    stage's own extractor and config unchanged."""
    prov = provenance(utterances_path)
    if prov.get("adapter") != "features":
        return extractor, config
    p, counts = prov.get("params") or {}, prov.get("counts") or {}
    path = prov.get("root")
    log.info("utterance table from feature pickle %s: using its %s vectors", path, NAMES[modality])
    factory: Callable[[], ImportedExtractor] = lambda: ImportedExtractor(  # noqa: E731
        modality, path, p.get("features_format") or "auto", p.get("features_label_key"),
        counts.get("features_sha256", ""))
    return factory, {"imported": counts.get("features_sha256"), "modality": modality}
