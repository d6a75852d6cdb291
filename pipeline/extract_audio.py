"""Stage ``extract_audio``: utterance audio vectors from 16 kHz mono demuxed from each clip.

``audio.extractor`` picks what the vector is:
  * ``opensmile``: openSMILE functionals, ``audio.feature_set`` = ``eGeMAPSv02`` (88-d, default) or
    ``ComParE_2016`` (6373-d) — as SUMMER and DialogueTRM use. The samples passed to
    ``opensmile.Smile.process_signal`` are exactly those decoded by ``pipeline.extraction.media.load_audio``.
    ``audio.lld: true`` also stores the low-level-descriptor sequence (extra column ``lld``:
    list of fixed-size float32 frames, 10 ms hop).
  * ``ssl``: an emotion2vec-style self-supervised speech encoder from Hugging Face (wav2vec2, HuBERT, WavLM,
    data2vec-audio; ``audio.ssl.model`` = id or local path), as LPGNet uses. The utterance vector is the
    mean over frames of ``audio.ssl.layer`` (``last``, ``mean`` = average of all transformer layers, or a
    layer index); long audio is cut into ``audio.ssl.chunk_s`` chunks whose frames are pooled together;
    ``audio.ssl.store_frames: true`` also stores the frame sequence (extra column ``frames``).
    Chunks are batched length-sorted to keep padding small; checkpoints whose CNN uses group norm
    (wav2vec2-base) normalise over padded samples too, so set ``audio.ssl.batch_size: 1`` for
    batch-independent vectors with those. No speech SSL weights are reachable on these machines: the tests run
    tiny random-init configs through this same loading code; a real run needs real weights.

  * ``emotion2vec``: emotion2vec (Ma et al. 2023), as LPGNet §4.2 uses it, from a local checkpoint folder as
    its authors ship it through FunASR (``config.yaml`` + ``model.pt``, e.g. ``iic/emotion2vec_base``;
    ``audio.emotion2vec.model``), built with FunASR's own ``Emotion2vec`` class and run as FunASR's
    ``inference`` does: whole utterance, waveform layer-normalised when the config says ``normalize``, the
    last layer's frames (50 per second); the utterance vector (768-d for base) is their mean
    (``granularity="utterance"``), ``audio.emotion2vec.store_frames: true`` also stores the frames (column
    ``frames``, ``granularity="frame"``) for LPGNet(Frame). FunASR is imported only by this extractor.

Silent clips (RMS below ``audio.silence_rms``) get status ``silent`` and no vector, not garbage; clips longer
than ``audio.max_duration_s`` are cut and flagged ``truncated``; unreadable ones become ``error`` rows.

The extractors and their builder live in ``pipeline.extraction.audio`` (the model bundle builds them there too).

Run: ``python -m pipeline.extract_audio`` (reads ``audio`` from params.yaml).
"""
from __future__ import annotations

import argparse
import functools
import logging

from pipeline.common import load_params, setup_logging
from pipeline.errors import run_main
# re-exported: the extractors' names at their former place
from pipeline.extraction.audio import (SAMPLE_RATE, AudioDecoder, AudioExtractor, Emotion2vecExtractor,  # noqa: F401
                                       OpenSmileExtractor, SSLExtractor, build_audio_extractor, load_emotion2vec,
                                       load_speech_encoder, relevant_config)
from pipeline.extraction.imported import imported_or
from pipeline.extraction.runners import run_sharded, stage_runtime

log = logging.getLogger("merc.extract_audio")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/features/audio")
    args = ap.parse_args()
    p = load_params("audio")
    # under runtime ray, clips are decoded by CPU workers (AudioDecoder) and streamed to the model's actors
    ex, config = imported_or(args.utterances, "a", functools.partial(build_audio_extractor, p), relevant_config(p))
    run_sharded(ex, args.utterances, args.out, config=config,
                shard_size=p["shard_size"], runtime=stage_runtime("audio"), stage="extract_audio",
                decoder=None if "imported" in config else functools.partial(AudioDecoder, p["max_duration_s"],
                                                                            p["silence_rms"]))


if __name__ == "__main__":
    run_main(main)
