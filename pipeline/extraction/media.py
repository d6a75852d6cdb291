"""Decoding clips with PyAV (FFmpeg bundled in the wheel): audio to 16 kHz mono, sampled RGB frames.

Shared by the audio and visual stages; raises ``MediaError`` with a reason a person can act on.
"""
from __future__ import annotations

import bisect
import math
from pathlib import Path

import av
import numpy as np


class MediaError(Exception):
    """A clip that cannot be used: missing, corrupt, or lacking the wanted stream."""


# Shortest span an utterance may have: one sample at the audio stages' 16 kHz.
MIN_SPAN_S = 1.0 / 16000
# Containers that are lists of other resources (playlists, concat lists, session descriptions): FFmpeg would
# fetch what they name (URLs, other files). A media path is one local file, so these are refused.
PLAYLIST_SUFFIXES = {".m3u8", ".m3u", ".sdp", ".ffconcat", ".concat", ".pls", ".xspf"}
PLAYLIST_FORMATS = {"hls", "applehttp", "concat", "sdp", "rtsp", "rtp", "ffmetadata", "tee", "dash"}


def span_error(start_s, end_s, min_span_s: float = MIN_SPAN_S) -> str | None:
    """Why ``[start_s, end_s)`` is not a usable utterance span (None when it is; null times mean whole clip)."""
    if (start_s is None) != (end_s is None):
        return f"need both start_s and end_s or neither; got {start_s}, {end_s}"
    if start_s is None:
        return None
    try:
        start, end = float(start_s), float(end_s)
    except (TypeError, ValueError):
        return f"start_s/end_s are not numbers: {start_s!r}, {end_s!r}"
    if not (math.isfinite(start) and math.isfinite(end)):
        return f"non-finite span [{start}, {end}]"
    if start < 0 or end < 0:
        return f"negative time in span [{start}, {end}]"
    if end <= start:
        return f"span [{start}, {end}] ends before it starts"
    if end - start < min_span_s:
        return f"span [{start}, {end}] is shorter than one audio sample ({min_span_s:.2e} s)"
    return None


def _open(path: str | Path):
    """Open ``path`` as a local media file: never as a URL or protocol (``x:y.mp4``), never a playlist."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    if not path.is_file():
        raise MediaError(f"not a regular file: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"zero-length file: {path}")
    if path.suffix.lower() in PLAYLIST_SUFFIXES:
        raise MediaError(f"refused {path}: playlists and stream descriptions are not opened (give the clip itself)")
    try:
        # "file:" + absolute path: FFmpeg must not read "x:y.mp4" as protocol x; only the file protocol is
        # allowed, so a crafted container cannot make FFmpeg fetch URLs.
        container = av.open(f"file:{path.resolve()}", options={"protocol_whitelist": "file"})
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        # FFmpeg's message ends with the URL it was given (``file:`` + the absolute path): the record names ``path``
        # as the caller gave it, so outputs are the same in every clone
        detail = getattr(e, "strerror", None) or str(e).replace(f"file:{path.resolve()}", str(path))
        raise MediaError(f"cannot open {path}: {type(e).__name__}: {detail}") from e
    if set(container.format.name.split(",")) & PLAYLIST_FORMATS:
        container.close()
        raise MediaError(f"refused {path}: a {container.format.name} playlist/stream list, not a media file")
    return container


def probe_duration(path: str | Path) -> float | None:
    """Container duration in seconds from the header (no decoding); None when the container has none."""
    with _open(path) as container:
        if container.duration is not None:
            return container.duration / av.time_base
        durations = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
        return max(durations) if durations else None


def load_audio(path: str | Path, sample_rate: int = 16000, max_duration: float | None = None,
               start_s: float | None = None, end_s: float | None = None) -> tuple[np.ndarray, bool]:
    """Mono float32 samples at ``sample_rate`` and whether the clip was cut at ``max_duration`` seconds.

    ``start_s``/``end_s`` select a span of a longer recording: the container is seeked to ``start_s`` (so a
    long file is not decoded from its beginning) and only ``[start_s, end_s)`` is returned.
    FFmpeg's resampler (swresample) converts the rate per channel; channels are then averaged here,
    because swresample's own stereo→mono matrix scales each side by 1/√2 (identical channels would come
    out 1.41× louder than the source).
    """
    for t in (start_s, end_s):
        if t is not None and not (math.isfinite(float(t)) and float(t) >= 0):
            raise MediaError(f"bad span [{start_s}, {end_s}] in {path}: times must be finite and >= 0")
    start = float(start_s or 0.0)
    span = None if end_s is None else float(end_s) - start
    if span is not None and span < MIN_SPAN_S:
        raise MediaError(f"empty span [{start_s}, {end_s}] in {path}: shorter than one audio sample")
    limits = [x for x in (span, max_duration) if x is not None]
    limit = int(round(min(limits) * sample_rate)) if limits else None
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path}")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # keeps the channel layout
        chunks: list[np.ndarray] = []
        n, skip, done = 0, None, False
        try:
            if start > 0:
                # Seeks to the last packet at or before ``start``; the surplus is skipped below.
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if skip is None:  # samples between the decoder's first frame and ``start``
                    t0 = frame.time if frame.time is not None else 0.0
                    skip = max(0, int(round((start - t0) * sample_rate)))
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(0))  # [channels, samples] → mono average
                    n += chunks[-1].size
                if limit is not None and n >= skip + limit:
                    done = True
                    break
            if not done:
                for out in resampler.resample(None):  # flush the resampler's delay line
                    chunks.append(out.to_ndarray().mean(0))
        except av.error.FFmpegError as e:
            raise MediaError(f"audio decode failed in {path}: {e}") from e
    signal = np.concatenate(chunks).astype(np.float32, copy=False)[skip or 0:] if chunks else np.zeros(0, np.float32)
    if not signal.size:
        raise MediaError(f"audio stream of {path} has no samples" + (f" after {start:.3f} s" if start else ""))
    cut = limit is not None and (done or signal.size > limit)
    signal = signal[:limit] if limit is not None else signal
    # "truncated" reports max_duration cutting the utterance, not the requested span ending.
    truncated = cut and max_duration is not None and (span is None or max_duration < span)
    return signal, truncated


SAMPLING = ("every_k", "summer", "fixed")


def frame_indices(n_frames: int, sampling: str = "every_k", every: int = 3, count: int = 8,
                  max_frames: int = 16) -> list[int]:
    """Which of a clip's ``n_frames`` frames to keep.

    ``every_k``: frames 0, k, 2k, … (the first ``max_frames`` of them, as the walking skeleton did).
    ``summer``: SUMMER's N_s = frames/10 keyframes (at least 1); ``fixed``: ``count`` frames. Both are
    spread evenly (the centre of N equal segments) and capped at ``max_frames`` by spreading fewer.
    """
    if n_frames <= 0:
        return []
    if sampling == "every_k":
        return list(range(0, n_frames, max(1, every)))[:max_frames]
    if sampling == "summer":
        n = max(1, n_frames // 10)
    elif sampling == "fixed":
        n = max(1, count)
    else:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {SAMPLING}")
    n = min(n, max_frames, n_frames)
    return sorted({int((k + 0.5) * n_frames / n) for k in range(n)})


def _frame_table(path) -> tuple[list[int], list[int]]:
    """Presentation timestamps of every frame and of the keyframes, from one demux pass (no decoding).

    Packets before the stream's start (edit lists: decoded but never shown) are left out, so position
    ``i`` is the ``i``-th frame a player shows.
    """
    pts, keys = [], []
    # its own container: rewinding by seek after a full demux fails for some demuxers (image2)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path}")
        stream = container.streams.video[0]
        start = stream.start_time
        try:
            for p in container.demux(stream):
                if p.size and p.pts is not None and (start is None or p.pts >= start):
                    pts.append(p.pts)
                    if p.is_keyframe:
                        keys.append(p.pts)
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot read packets of {path}: {e}") from e
    pts.sort()
    keys.sort()
    if pts and (not keys or keys[0] > pts[0]):
        keys.insert(0, pts[0])  # decoding starts at the first frame whatever its flag says
    return pts, keys


# A video whose frames end this much (or 3 frames, if more) before its header's duration / the span's end was cut
# short (a copy stopped half way: a faststart mp4's index still lists every frame, the data stops).
TRUNCATION_TOLERANCE_S = 0.25


def _coverage(container, stream, pts: list[int], lo: float, hi: float, n_wanted: int, n_got: int) -> dict:
    """How much of ``[lo, hi)`` (or the whole stream) the file's frames actually cover, from the header's promise
    (stream duration) and the last demuxed frame; ``truncated`` when they fall short or frames failed to decode."""
    tb = float(stream.time_base)
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    frame = 1.0 / rate if rate > 0 else 0.0
    start = (stream.start_time or 0) * tb
    if stream.duration:
        header_end = start + stream.duration * tb
    elif container.duration is not None:
        header_end = container.duration / av.time_base
    else:
        header_end = None
    want = hi if header_end is None else min(hi, header_end)
    got = pts[-1] * tb + frame if pts else start
    short = math.isfinite(want) and got < want - max(3 * frame, TRUNCATION_TOLERANCE_S)
    return {"decoded_end_s": round(got, 3), "expected_end_s": round(want, 3) if math.isfinite(want) else None,
            "truncated": bool(short or n_got < n_wanted)}


def decode_frames(path: str | Path, sampling: str = "every_k", every: int = 3, count: int = 8,
                  max_frames: int = 16, start_s: float | None = None,
                  end_s: float | None = None, coverage: dict | None = None) -> tuple[list[np.ndarray], list[int]]:
    """The sampled frames (RGB uint8 ``[H, W, 3]``) and their indices; still images are one-frame clips.

    ``start_s``/``end_s`` restrict sampling to the frames shown in ``[start_s, end_s)`` (an utterance in a
    longer recording, e.g. IEMOCAP's dialogue videos); indices are then positions within that span.

    Decodes only what is needed: the target frames' timestamps come from a demux pass; when the next
    target lies past a keyframe that is ahead of the decoder, it seeks there instead of decoding through,
    and only kept frames are converted to RGB (the costly part besides decoding).

    ``coverage``, when given, is filled with ``truncated`` (the file's frames end before the span / the
    header's duration, or sampled frames failed to decode: the frames come from part of the utterance only),
    ``decoded_end_s`` and ``expected_end_s``.
    """
    pts, keys = _frame_table(path)
    all_pts = pts
    if start_s is not None or end_s is not None:
        with _open(path) as container:
            tb = float(container.streams.video[0].time_base)
        lo, hi = start_s if start_s is not None else -np.inf, end_s if end_s is not None else np.inf
        pts = [t for t in pts if lo <= t * tb < hi]
    idx = frame_indices(len(pts), sampling, every, count, max_frames)
    if not idx:
        raise MediaError(f"no video frames in {path}")
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = _decode_at(container, stream, [pts[i] for i in idx], keys, path)
        if coverage is not None:
            coverage.update(_coverage(container, stream, all_pts, start_s if start_s is not None else -np.inf,
                                      end_s if end_s is not None else np.inf, len(idx), len(frames)))
    if not frames:
        raise MediaError(f"no decodable video frames in {path}")
    return frames, idx[: len(frames)]


def _decode_at(container, stream, targets: list[int], keys: list[int], path) -> list[np.ndarray]:
    """Decode the frames at sorted timestamps ``targets`` (the first frame at or after each one)."""
    out: list[np.ndarray] = []
    j, last = 0, None  # next target; timestamp of the last decoded frame
    try:
        while j < len(targets):
            key = keys[bisect.bisect_right(keys, targets[j]) - 1]
            if last is not None and key > last:  # a keyframe lies between us and the target: jump
                container.seek(key, stream=stream, backward=True)
            jumped = False
            for frame in container.decode(stream):
                last = frame.pts if frame.pts is not None else (last or 0) + 1
                if last < targets[j]:
                    continue  # decoded (needed as a reference) but not converted
                img = frame.to_ndarray(format="rgb24")
                while j < len(targets) and targets[j] <= last:
                    out.append(img)
                    j += 1
                if j == len(targets):
                    break
                if keys[bisect.bisect_right(keys, targets[j]) - 1] > last:
                    jumped = True
                    break
            if not jumped:
                break  # stream exhausted (or all targets done)
    except av.error.FFmpegError as e:
        raise MediaError(f"video decode failed in {path}: {e}") from e
    return out


def sample_frames(path: str | Path, every: int = 5, max_frames: int = 16) -> list[np.ndarray]:
    """Every ``every``-th video frame as RGB uint8 ``[H, W, 3]``, at most ``max_frames``."""
    return decode_frames(path, "every_k", every, max_frames=max_frames)[0]
