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


def load_audio(path: str | Path, sample_rate: int = 16000, max_duration: float | None = None) -> tuple[np.ndarray, bool]:
    """Mono float32 samples at ``sample_rate`` and whether the clip was cut at ``max_duration`` seconds.

    FFmpeg's resampler (swresample) converts the rate per channel; channels are then averaged here,
    because swresample's own stereo→mono matrix scales each side by 1/√2 (identical channels would come
    out 1.41× louder than the source).
    """
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path}")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # keeps the channel layout
        chunks: list[np.ndarray] = []
        n, limit, truncated = 0, (int(max_duration * sample_rate) if max_duration else None), False
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(0))  # [channels, samples] → mono average
                    n += chunks[-1].size
                if limit is not None and n >= limit:
                    truncated = True
                    break
            if not truncated:
                for out in resampler.resample(None):  # flush the resampler's delay line
                    chunks.append(out.to_ndarray().mean(0))
        except av.error.FFmpegError as e:
            raise MediaError(f"audio decode failed in {path}: {e}") from e
    if not chunks:
        raise MediaError(f"audio stream of {path} has no samples")
    signal = np.concatenate(chunks).astype(np.float32, copy=False)
    if limit is not None and signal.size > limit:
        signal, truncated = signal[:limit], True
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
