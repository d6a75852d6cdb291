"""Dataset adapters: each turns one corpus layout into utterance rows for ``pipeline.prepare``.

An adapter is ``load(root, params, adapter) -> Prepared``: a DataFrame with the utterance table's columns
(``label_id`` excepted: ``prepare`` derives it from the label set), the label set, and counts that go into
the table's provenance metadata. Bad media never raises here: it becomes a row status (``probe``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

from pipeline.media import MediaError, probe_duration

# A span may end this far past the container's end (rounding of annotation times) and still count as inside.
SPAN_TOLERANCE_S = 0.5


@dataclass
class Prepared:
    rows: pd.DataFrame
    labels: list[str]
    counts: dict = field(default_factory=dict)
    # regression target names (``rows.targets`` holds each row's values in this order, None when unlabelled);
    # empty: a classification corpus
    targets: list[str] = field(default_factory=list)


def rel_path(path: Path) -> str:
    """Paths inside the repo are stored relative to it so the table is the same in every clone; others as
    ``prepare.root`` spelled them (``../shared/meld/…`` stays relative, ``/data/meld/…`` absolute), never
    resolved against this clone's location."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.path.normpath(str(path))


@lru_cache(maxsize=4096)  # IEMOCAP dialogues and manifest recordings are shared by many utterances
def _probe(path: str) -> tuple[str, str | None, float | None]:
    p = Path(path)
    if not p.exists():
        return "missing_media", f"file not found: {p}", None
    try:
        return "ok", None, probe_duration(p)
    except (MediaError, OSError) as e:
        return "corrupt_media", str(e), None


def probe(path: Path, end_s: float | None = None) -> tuple[str, str | None, float | None]:
    """``(status, error, duration_s)`` of a media file from its container header (nothing is decoded)."""
    status, error, dur = _probe(str(path))
    if status == "ok" and end_s is not None and dur is not None and end_s > dur + SPAN_TOLERANCE_S:
        return "bad_times", f"span ends at {end_s:.3f} s but {path} lasts {dur:.3f} s", dur
    return status, error, dur
