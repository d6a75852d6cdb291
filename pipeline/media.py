"""Decoding clips with PyAV (FFmpeg bundled in the wheel): audio to 16 kHz mono, sampled RGB frames.

Shared by the audio and visual stages; raises ``MediaError`` with a reason a person can act on.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np


class MediaError(Exception):
    """A clip that cannot be used: missing, corrupt, or lacking the wanted stream."""


def _open(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"zero-length file: {path}")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise MediaError(f"cannot open {path}: {type(e).__name__}: {e}") from e


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
    start = float(start_s or 0.0)
    span = None if end_s is None else float(end_s) - start
    if span is not None and span <= 0:
        raise MediaError(f"empty span [{start_s}, {end_s}] in {path}")
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


def sample_frames(path: str | Path, every: int = 5, max_frames: int = 16) -> list[np.ndarray]:
    """Every ``every``-th decoded video frame as RGB uint8 ``[H, W, 3]``, at most ``max_frames``."""
    frames: list[np.ndarray] = []
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i % every == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if len(frames) >= max_frames:
                        break
        except av.error.FFmpegError as e:
            raise MediaError(f"video decode failed in {path}: {e}") from e
    if not frames:
        raise MediaError(f"no decodable video frames in {path}")
    return frames
