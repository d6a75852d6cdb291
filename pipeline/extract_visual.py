"""Stage ``extract_visual``: sampled frames → MTCNN faces → speaker's face track → aligned face clip → vector.

1. **Sampling** (``visual.sampling``): every k-th frame, SUMMER's N_s = frames/10, or a fixed count, capped at
   ``max_frames``; only the sampled frames are decoded to RGB (``pipeline.extraction.media.decode_frames`` seeks).
2. **Faces**: facenet-pytorch's MTCNN (trained weights ship in its wheel) on all sampled frames of a clip in one
   batch, with its five landmarks; every face with probability ≥ ``min_face_prob`` is kept.
3. **Speaker's face**, per clip: faces are linked across frames into tracks (greedy IoU ≥ ``TRACK_IOU``
   against each track's last box). The chosen track is the one present in most frames; among tracks within
   ``PRESENCE_TOL`` of that, the largest (mean box area within ``AREA_TOL`` of the largest); then the most
   central (within ``CENTRAL_TOL``); remaining ties go to the most mouth motion (frame-to-frame change of
   the mouth landmarks relative to the face size: the one talking). MELD clips are framed on the speaker.
4. **Alignment**: each face of the track is rotated so the eyes are level (similarity transform from the
   landmarks) and cropped square around the box to ``face_size`` pixels.
5. **Backbone** (``visual.backbone``): ``fer_cnn`` (default) — the 7-class facial-expression CNN shipped in
   the ``facial-emotion-recognition==0.3.4`` sdist, 256-d penultimate layer per frame, pooled over time;
   any torchvision image model (``resnet18`` …) per frame + pooling; or a torchvision video model
   (``r3d_18``, ``r2plus1d_18``, ``mc3_18``, ``s3d``) on the face clip, penultimate layer. ``visual.weights``:
   a torchvision weight enum name (``KINETICS400_V1``; needs the file in torch's hub cache, these machines
   cannot download it), a local checkpoint path, or ``null`` = random init — logged as a warning and recorded
   as ``weights: random`` in the shards' metadata, because such vectors carry no learned meaning.

No face in any sampled frame → ``status='no_face'``, zero vector; undecodable clip → ``error`` row; a file whose
frames end before the span (or its header's duration: a copy cut short) → ``truncated`` true and a warning, the
vector made from the frames that exist (as the audio stage flags its cuts).
The extractor and its builder live in ``pipeline.extraction.visual`` (the model bundle builds it there too).
Run: ``python -m pipeline.extract_visual`` (reads ``visual`` from params.yaml).
"""
from __future__ import annotations

import argparse
import functools
import logging

from pipeline.common import load_params, setup_logging
from pipeline.errors import run_main
from pipeline.extraction.imported import imported_or
from pipeline.extraction.runners import run_sharded, stage_runtime, weights_digest
# re-exported: the extractor's names at their former place
from pipeline.extraction.visual import (Backbone, FaceExtractor, Track, align_face,  # noqa: F401
                                        build_visual_extractor, choose_speaker_track, iou, link_tracks,
                                        load_face_cnn, mouth_motion)

log = logging.getLogger("merc.extract_visual")


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/features/visual")
    args = ap.parse_args()
    p = load_params("visual")
    # a local checkpoint's bytes, not only its path, decide whether finished shards are still valid
    config = {**p, "weights_digest": weights_digest(p.get("weights"))}
    ex, config = imported_or(args.utterances, "v", functools.partial(build_visual_extractor, p), config)
    run_sharded(ex, args.utterances, args.out, config=config, shard_size=p["shard_size"],
                runtime=stage_runtime("visual"), stage="extract_visual")


if __name__ == "__main__":
    run_main(main)
