"""Tiny media files for fixture trees: clips of a given length, per-segment tones, corrupt files."""
from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np


def tones(segments: list[tuple[float, float]], sr: int) -> np.ndarray:
    """Concatenated sine segments ``(seconds, hz)`` at amplitude 0.3 (hz 0: silence)."""
    parts = []
    for seconds, hz in segments:
        t = np.arange(int(round(seconds * sr))) / sr
        parts.append(0.3 * np.sin(2 * np.pi * hz * t))
    return np.concatenate(parts).astype(np.float32)


def write_clip(path: Path, segments: list[tuple[float, float]], sr: int = 16000, video: bool = True,
               audio_codec: str | None = None, faststart: bool = False) -> Path:
    """A clip (mp4/avi by suffix) with a 32×32 black 10 fps video track and the ``tones`` audio track.

    ``faststart``: the mp4 index (moov) before the data, as streaming encoders write it — a copy cut short then
    still opens and lists every frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tones(segments, sr)
    codec = audio_codec or ("aac" if path.suffix == ".mp4" else "pcm_s16le")
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        if video:  # all streams must exist before the first packet is muxed
            v = c.add_stream("mpeg4", rate=10)
            v.width = v.height = 32
            v.pix_fmt = "yuv420p"
        a = c.add_stream(codec, rate=sr, layout="mono")
        if video:
            black = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for _ in range(max(1, int(x.size / sr * 10))):
                c.mux(v.encode(black))
            c.mux(v.encode(None))
        samples = (x * 32767).astype(np.int16) if codec == "pcm_s16le" else x
        fmt = "s16" if codec == "pcm_s16le" else "fltp"
        for i in range(0, x.size, 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, i:i + 1024]), format=fmt, layout="mono")
            f.sample_rate, f.pts = sr, i
            c.mux(a.encode(f))
        c.mux(a.encode(None))
    return path


def write_wav(path: Path, seconds: float, hz: float = 300.0, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((tones([(seconds, hz)], sr) * 32767).astype(np.int16).tobytes())
    return path


def write_corrupt(path: Path) -> Path:
    """An mp4 ``ftyp`` box followed by random bytes, like MELD.Raw's ``train dia125_utt3``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    path.write_bytes(head + np.random.default_rng(0).bytes(2000))
    return path
