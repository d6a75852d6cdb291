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

from pipeline.extraction.media import MediaError, probe_duration

# The largest magnitude a regression target (or a score labels are derived from) may have: beyond it a value is a
# data error (a unit or parsing mistake: 1e300, a timestamp in a score column), not an emotion rating. Every scale
# in use is tiny (MOSEI [-3, 3], IEMOCAP dimensions [1, 5], valence/arousal [-1, 1] or [0, 100]); 1e6 leaves any
# plausible rescaling room while keeping squared errors (≤ 1e12) far from float32's overflow.
TARGET_ABS_LIMIT = 1e6

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


def utf8_fault(path: Path) -> str:
    """Where ``path`` first stops being UTF-8: "byte b'\\xe9' on line L, column C (offset O)", counted over the
    whole file. (pandas decodes in chunks, so the offset its ``UnicodeDecodeError`` carries is within a chunk,
    not the file: never report that one.)"""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return f"byte {data[e.start:e.start + 1]!r} on line {line}, column {col} (offset {e.start})"
    return "a byte sequence that is not UTF-8"


def read_csv(path: Path, what: str, header_hint: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` (UTF-8) whose failures are one-line ``UserError`` s naming ``path``: an empty file, a byte
    that is not UTF-8 (at its real line and offset), a file the CSV parser cannot read, or a header-only file."""
    from pipeline.errors import UserError

    try:
        df = pd.read_csv(path, encoding="utf-8", **kwargs)
    except pd.errors.EmptyDataError:
        raise UserError(f"{what} {path} is empty: it needs the header ({header_hint}) and one row per "
                        "utterance") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text ({utf8_fault(path)}): save it as UTF-8") from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        raise UserError(f"{what} {path} cannot be read as CSV ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None
    if df.empty:
        raise UserError(f"{what} {path} has a header but no rows")
    return df


def csv_lines(mask, n: int = 8) -> list[int]:
    """CSV line numbers (header = line 1) of the first ``n`` rows where ``mask`` holds (one line per row)."""
    import numpy as np

    return [int(i) + 2 for i in np.flatnonzero(np.asarray(mask))[:n]]


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
