"""Subtitles → utterances: ``.srt`` (``srt``) and ``.vtt`` (``webvtt-py``), times, text and speaker.

A cue's speaker comes from a WebVTT voice tag (``<v Name>``) or a ``NAME:`` prefix (one to four words, at most 40
characters, starting with a capital letter: ``Alice:``, ``Dr. Jones:``, ``[MONICA]:`` is not a speaker); the prefix is
removed from the text. Other markup (``<i>``, ``{\\an8}``, ``<font>``) is stripped. Files that are not UTF-8 are
read as cp1252 (what Windows subtitle tools write), with a warning.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

log = logging.getLogger("merc.predict")

SPEAKER_PREFIX = re.compile(r"^\s*(?:-\s*)?([A-Z][\w.'\-]*(?: [\w.'\-]+){0,3})\s*:\s+(?=\S)")
TAGS = re.compile(r"<[^>]*>|\{\\[^}]*\}")


class SubtitleError(UserError):
    """A subtitle file that cannot be used at all (one line: which file, what is wrong)."""


@dataclass
class Cue:
    start_s: float
    end_s: float
    text: str
    speaker: str | None = None


def read_text(path: Path) -> tuple[str, str]:
    """The file's text and the encoding it was read with (UTF-8, with or without BOM; else cp1252)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8: read as cp1252", path)
        return raw.decode("cp1252", errors="replace"), "cp1252"


def split_speaker(text: str) -> tuple[str | None, str]:
    """``"Alice: hi"`` → ``("Alice", "hi")``; text without a speaker prefix → ``(None, text)``."""
    m = SPEAKER_PREFIX.match(text)
    if m and len(m.group(1)) <= 40:
        return m.group(1).strip(), text[m.end():].strip()
    return None, text.strip()


def clean(text: str) -> str:
    return " ".join(TAGS.sub("", text).split())


def _vtt_seconds(stamp: str) -> float:
    parts = [float(p) for p in stamp.replace(",", ".").split(":")]
    return sum(p * 60 ** k for k, p in enumerate(reversed(parts)))


def _line_at(text: str, offset: int) -> int:
    """1-based line number of character ``offset`` in ``text``, skipping the blank lines that start there."""
    while offset < len(text) and text[offset] in "\r\n":
        offset += 1
    return text.count("\n", 0, offset) + 1


def parse_srt(text: str, path: str | Path = "subtitles") -> list[Cue]:
    """Cues of an SRT text. A block without an index and ``start --> end`` line (a stray or malformed line) is
    not glued onto the cue before it (the ``srt`` parser's reading: a cue's text runs on over blank lines): it is
    left out with a warning naming its line. A malformed timing line stops with one line naming it."""
    import srt

    try:
        subs = list(srt.parse(text))
    except srt.SRTParseError as e:
        start = getattr(e, "expected_start", None)
        where = f" at line {_line_at(text, start)}" if isinstance(start, int) else ""
        raise SubtitleError(f"{path}: not a valid SRT file{where}: {str(e).splitlines()[0][:200]} (each cue is an "
                            "index line, a 'HH:MM:SS,mmm --> HH:MM:SS,mmm' line and its text)") from e
    cues, cursor = [], 0
    for s in subs:
        # a blank line ends a cue's text in SRT: whatever the parser kept after one is a block with no header
        first, *stray = re.split(r"\n[ \t]*\r?\n", s.content)
        head = text.find(first.split("\n", 1)[0], cursor) if first else -1
        cursor = head if head >= 0 else cursor
        for block in stray:
            if not block.strip():
                continue
            at = text.find(block.split("\n", 1)[0], cursor)
            cursor = at if at >= 0 else cursor
            log.warning("%s line %s: %r is not a subtitle cue (no index and 'start --> end' line before it): "
                        "ignored, not appended to the cue before it", path, _line_at(text, at) if at >= 0 else "?",
                        block.strip()[:80])
        speaker, body = split_speaker(clean(first))
        cues.append(Cue(s.start.total_seconds(), s.end.total_seconds(), body, speaker))
    return cues


def parse_vtt(text: str) -> list[Cue]:
    import webvtt

    try:
        captions = list(webvtt.from_string(text))
    except webvtt.errors.MalformedFileError as e:
        raise SubtitleError(f"not a valid WebVTT file: {e}") from e
    cues = []
    for c in captions:
        speaker, body = split_speaker(clean(c.text))
        cues.append(Cue(_vtt_seconds(c.start), _vtt_seconds(c.end), body, (c.voice or "").strip() or speaker))
    return cues


def read_subtitles(path: str | Path) -> list[Cue]:
    """Cues of an ``.srt`` or ``.vtt`` file in time order (ties keep file order)."""
    path = Path(path)
    if not path.is_file():
        raise SubtitleError(f"subtitle file not found: {path}")
    kind = path.suffix.lower()
    if kind not in (".srt", ".vtt"):
        raise SubtitleError(f"{path}: subtitles must be .srt or .vtt, not {kind or 'no extension'!r}")
    text, _ = read_text(path)
    cues = parse_srt(text, path) if kind == ".srt" else parse_vtt(text)
    if not cues:
        raise SubtitleError(f"{path} holds no subtitle cues")
    return sorted(cues, key=lambda c: c.start_s)
