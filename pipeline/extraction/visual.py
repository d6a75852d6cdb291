"""The visual extractor and its builder, shared by the ``extract_visual`` stage and the model bundle.

Face tracks and the speaker's face (``Track``, ``link_tracks``, ``choose_speaker_track``), alignment
(``align_face``), the backbones (``load_face_cnn``, ``Backbone``) and ``FaceExtractor`` (the steps: the stage's
docstring). ``build_visual_extractor(p)`` is the one way a ``FaceExtractor`` is made from a ``visual`` params
section: the stage builds it (a factory under Ray), the bundle (``pipeline.training.bundle.Bundle.extractors``) from
the section it recorded, with ``report_face_box`` for predict's table.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipeline.errors import MissingFileError, UserError
from pipeline.extraction.media import MediaError, decode_frames
from pipeline.extraction.shards import FeatureExtractor
from pipeline.schema import nonfinite_error

log = logging.getLogger("merc.extract_visual")

VIDEO_MODELS = ("r3d_18", "r2plus1d_18", "mc3_18", "s3d")
MIN_CLIP = {"s3d": 8}  # s3d's final temporal pooling needs ≥ 8 input frames; shorter clips are looped
TRACK_IOU = 0.3        # a face continues a track when it overlaps the track's last box this much
PRESENCE_TOL = 0.8     # tracks present in ≥ 80% of the best track's frames still compete (missed detections)
AREA_TOL = 0.8         # … then those ≥ 80% of the largest mean area
CENTRAL_TOL = 0.1      # … then those within 0.1 of the most central; then most mouth motion
MARGIN = 0.1           # square crop side = longest box side × (1 + MARGIN)


# ---------------------------------------------------------------- tracks and the speaker's face
@dataclass
class Track:
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)

    def add(self, t: int, box, prob, lm) -> None:
        self.frames.append(t), self.boxes.append(box), self.probs.append(float(prob)), self.landmarks.append(lm)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [n, 4] with every box in ``b`` [m, 4] (x0, y0, x1, y1) → [n, m]."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clip(0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def link_tracks(dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], min_iou: float = TRACK_IOU) -> list[Track]:
    """Greedy IoU linking of per-frame detections ``(boxes [n,4], probs [n], landmarks [n,5,2])`` into tracks.

    A track may skip frames (a missed detection); it continues from its last box.
    """
    tracks: list[Track] = []
    for t, (boxes, probs, lms) in enumerate(dets):
        if not len(boxes):
            continue
        free = list(range(len(boxes)))
        if tracks:
            m = iou(np.stack([tr.boxes[-1] for tr in tracks]), boxes)
            for ti, di in zip(*np.unravel_index(np.argsort(-m, axis=None), m.shape)):
                if m[ti, di] < min_iou:
                    break
                if di in free and tracks[ti].frames[-1] < t:
                    tracks[ti].add(t, boxes[di], probs[di], lms[di])
                    free.remove(di)
        for di in free:
            tracks.append(Track())
            tracks[-1].add(t, boxes[di], probs[di], lms[di])
    return tracks


def mouth_motion(tr: Track) -> float:
    """Mean frame-to-frame change of mouth width and mouth–nose distance, relative to the face height."""
    if len(tr.frames) < 2:
        return 0.0
    lm, b = np.stack(tr.landmarks), np.stack(tr.boxes)
    h = (b[:, 3] - b[:, 1]).clip(1)
    width = np.linalg.norm(lm[:, 4] - lm[:, 3], axis=1) / h
    drop = (lm[:, 3:5, 1].mean(1) - lm[:, 2, 1]) / h
    return float(np.abs(np.diff(width)).mean() + np.abs(np.diff(drop)).mean())


def choose_speaker_track(tracks: list[Track], width: int, height: int) -> int:
    """Index of the speaker's track: present most, then largest, then most central, then mouth motion."""
    presence = np.array([len(tr.frames) for tr in tracks], dtype=float)
    b = [np.stack(tr.boxes) for tr in tracks]
    area = np.array([((x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])).mean() for x in b])
    centre = [np.c_[(x[:, 0] + x[:, 2]) / 2 / width, (x[:, 1] + x[:, 3]) / 2 / height] for x in b]
    central = np.array([1 - np.linalg.norm(c - 0.5, axis=1).mean() / np.sqrt(0.5) for c in centre])
    cand = np.flatnonzero(presence >= PRESENCE_TOL * presence.max())
    cand = cand[area[cand] >= AREA_TOL * area[cand].max()]
    cand = cand[central[cand] >= central[cand].max() - CENTRAL_TOL]
    return int(cand[np.argmax([mouth_motion(tracks[i]) for i in cand])])


def align_face(frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """Square ``size``×``size`` face crop rotated about the box centre so the eyes are level."""
    (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1], 2.0) * (1 + MARGIN)
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(np.degrees(np.arctan2(ry - ly, rx - lx))), size / side)
    m[:, 2] += (size / 2 - cx, size / 2 - cy)
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------- backbones
def load_face_cnn(checkpoint: str | None = None) -> torch.nn.Module:
    """The facial-expression CNN with its trained weights, cut before the 7-way classifier (256-d out)."""
    from facial_emotion_recognition.networks import NetworkV2
    import facial_emotion_recognition

    path = Path(checkpoint) if checkpoint else Path(facial_emotion_recognition.__file__).parent / "model" / "model.pkl"
    if not path.exists():
        raise MissingFileError(f"face CNN weights not found at {path}: install facial-emotion-recognition==0.3.4 "
                               "or set visual.weights to a checkpoint file")
    net = NetworkV2(in_c=1, nl=32, out_f=7)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["network"] if "network" in state else state)
    net.linear = net.linear[:2]  # Linear(9216→256) + ReLU: the penultimate representation
    return net.eval()


def _torchvision_net(name: str, weights: str | None) -> tuple[torch.nn.Module, int, str, tuple]:
    """A torchvision model with its head replaced by Identity: (net, feature dim, weights label, transforms)."""
    from torchvision.models import get_model, get_model_weights

    enum = get_model_weights(name)
    net = get_model(name, weights=None)
    if hasattr(net, "fc"):
        owner, attr = net, "fc"
    elif isinstance(net.classifier, torch.nn.Linear):  # DenseNet: the classifier is one Linear, not a Sequential
        owner, attr = net, "classifier"
    else:
        owner, attr = net.classifier, len(net.classifier) - 1
    head = owner[attr] if isinstance(attr, int) else getattr(owner, attr)
    dim = getattr(head, "in_features", None) or head.in_channels
    if weights is None:
        label = "random"
    elif Path(weights).exists():  # loaded after the head is cut: its class count need not match
        label = f"checkpoint:{weights}"
    else:
        if weights not in enum.__members__:
            raise UserError(f"params.yaml visual.weights: {weights!r} is neither a file nor one of {name}'s "
                            f"weights {list(enum.__members__)}")
        try:
            net.load_state_dict(enum[weights].get_state_dict(progress=False))
        except OSError as e:  # URLError and friends: offline machine, nothing in torch's hub cache
            raise UserError(f"cannot load torchvision weights {name}.{weights} ({e}); there is no internet "
                               "here: put the file in torch's hub cache or pass a local checkpoint path") from e
        label = f"torchvision:{weights}"
    if isinstance(attr, int):
        owner[attr] = torch.nn.Identity()
    else:
        setattr(owner, attr, torch.nn.Identity())
    if label.startswith("checkpoint:"):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        missing, _ = net.load_state_dict(state, strict=False)  # unexpected = the checkpoint's own head
        if missing:
            raise UserError(f"visual.weights checkpoint {weights} does not fit {name}: missing {missing[:5]}")
    t = enum.DEFAULT.transforms()  # only its constants: building it downloads nothing
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    return net.eval(), dim, label, (crop, tuple(t.mean), tuple(t.std))


class Backbone:
    """Aligned face clip ``[T, S, S, 3]`` uint8 → one vector: per-frame network + pooling, or a video network."""

    def __init__(self, name: str = "fer_cnn", weights: str | None = None, pooling: str = "mean",
                 device: str = "cpu"):
        if pooling not in ("mean", "max"):
            raise UserError(f"params.yaml visual.pooling must be mean or max, not {pooling!r}")
        self.name, self.pooling, self.device = name, pooling, torch.device(device)
        self.temporal = name in VIDEO_MODELS
        if name == "fer_cnn":  # trained on FER-2013-style 48×48 grayscale faces, input (x − 0.5) / 0.5
            self.net, self.dim, self.gray = load_face_cnn(weights), 256, True
            self.size, mean, std = 48, (0.5,), (0.5,)
            self.weights = f"checkpoint:{weights}" if weights else "trained:facial-emotion-recognition==0.3.4"
        else:
            self.net, self.dim, self.weights, (self.size, mean, std) = _torchvision_net(name, weights)
            self.gray = False
        if self.weights == "random":
            log.warning("!!! visual backbone %s has RANDOM weights: its features carry no learned meaning; "
                        "use only to exercise the pipeline (set visual.weights) !!!", name)
        self.net.to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    def autocast(self):
        on_gpu = self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.float16) if on_gpu else contextlib.nullcontext()

    def preprocess(self, faces: np.ndarray) -> torch.Tensor:
        """uint8 ``[T, S, S, 3]`` → normalised float ``[T, C, size, size]`` on the device."""
        x = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if self.gray:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> np.ndarray:
        """The network on preprocessed frames ``[T, C, H, W]`` → pooled vector [dim]."""
        with self.autocast():
            if self.temporal:
                t = MIN_CLIP.get(self.name, 1)
                if len(x) < t:
                    x = x[torch.arange(t) % len(x)]
                y = self.net(x.permute(1, 0, 2, 3)[None])[0]  # [1, C, T, H, W]
            else:
                y = self.net(x)
                y = y.mean(0) if self.pooling == "mean" else y.amax(0)
        return y.float().cpu().numpy()

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        return self.forward(self.preprocess(faces))


# ---------------------------------------------------------------- the extractor
class FaceExtractor(FeatureExtractor):
    """Sampled frames → faces → the speaker's track → aligned face clip → backbone vector, one clip per row.

    ``report_face_box`` (predict's table): each record with a face also gets ``face_box``, the chosen track's
    mean box (x0, y0, x1, y1 in frame pixels); not a shard column.
    """

    needs_media = True  # flagged utterances (bad_times, missing_media, no_media, …) are never decoded
    report_face_box = False
    extra_fields = [
        pa.field("face_found", pa.bool_()),
        pa.field("n_faces", pa.int32()),        # most faces in one sampled frame
        pa.field("n_tracks", pa.int32()),       # distinct faces (tracks) over the clip
        pa.field("face_frames", pa.int32()),    # sampled frames where the chosen track is present
        pa.field("frames_sampled", pa.int32()),
        pa.field("face_prob", pa.float32()),    # the chosen track's mean MTCNN confidence
        pa.field("truncated", pa.bool_()),      # the file's frames end before the span / its header's duration
    ]

    def __init__(self, sampling: str = "every_k", every: int = 3, count: int = 8, max_frames: int = 16,
                 min_face_prob: float = 0.9, backbone: str = "fer_cnn", weights: str | None = None,
                 pooling: str = "mean", face_size: int = 112, detect_max_side: int | None = 640,
                 device: str | None = None, report_face_box: bool = False):
        from facenet_pytorch import MTCNN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.mtcnn = MTCNN(keep_all=True, device=self.device)
        self.backbone = Backbone(backbone, weights, pooling, self.device)
        self.dim = self.backbone.dim
        self.name = f"face:{backbone}" + (":random-weights" if self.backbone.weights == "random" else "")
        self.metadata = {"backbone": backbone, "weights": self.backbone.weights, "sampling": sampling,
                         "pooling": "clip" if self.backbone.temporal else pooling}
        self.sampling = dict(sampling=sampling, every=every, count=count, max_frames=max_frames)
        self.min_face_prob, self.face_size, self.detect_max_side = min_face_prob, face_size, detect_max_side
        self.report_face_box = report_face_box

    def detect(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """MTCNN on all frames at once → per frame (boxes, probs, landmarks) of faces ≥ ``min_face_prob``.

        Frames larger than ``detect_max_side`` are shrunk for detection only (MTCNN's cost grows with the
        pixel count; speakers' faces stay far above its 20-px minimum); boxes come back in frame pixels.
        """
        scale = min(1.0, (self.detect_max_side or 1e9) / max(frames[0].shape[:2]))
        if scale < 1.0:
            size = (round(frames[0].shape[1] * scale), round(frames[0].shape[0] * scale))
            frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        boxes, probs, lms = self.mtcnn.detect(np.stack(frames), landmarks=True)
        out = []
        for b, p, lm in zip(boxes, probs, lms):
            if b is None:  # batched MTCNN gives None or object arrays per frame
                out.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)))
                continue
            b, p = np.asarray(b, np.float32).reshape(-1, 4) / scale, np.asarray(p, np.float32).reshape(-1)
            lm = np.asarray(lm, np.float32).reshape(-1, 5, 2) / scale
            keep = p >= self.min_face_prob
            out.append((b[keep], p[keep], lm[keep]))
        return out

    def faces_of(self, frames: list[np.ndarray]) -> tuple[dict, np.ndarray | None]:
        """Per-clip face statistics and the speaker's aligned face clip (None when no face)."""
        dets = self.detect(frames)
        tracks = link_tracks(dets)
        rec = dict(frames_sampled=len(frames), n_faces=max(len(d[0]) for d in dets), n_tracks=len(tracks),
                   face_found=bool(tracks), face_frames=0, face_prob=0.0)
        if not tracks:
            return rec, None
        h, w = frames[0].shape[:2]
        tr = tracks[choose_speaker_track(tracks, w, h)]
        faces = np.stack([align_face(frames[t], b, lm, self.face_size)
                          for t, b, lm in zip(tr.frames, tr.boxes, tr.landmarks)])
        rec.update(face_frames=len(tr.frames), face_prob=float(np.mean(tr.probs)))
        if self.report_face_box:
            rec["face_box"] = [round(float(v), 1) for v in np.stack(tr.boxes).mean(0)]
        return rec, faces

    def process_one(self, row: dict) -> dict:
        if not row["media_path"]:
            return dict(status="error", error=row["error"] or "no media for this utterance")
        try:
            # only the utterance's span when the row points into a longer recording
            cover: dict = {}
            frames, _ = decode_frames(row["media_path"], **self.sampling, start_s=row.get("start_s"),
                                      end_s=row.get("end_s"), coverage=cover)
        except MediaError as e:
            return dict(status="error", error=str(e))
        rec, faces = self.faces_of(frames)
        rec["truncated"] = bool(cover.get("truncated"))
        if rec["truncated"]:  # the frames cover only part of the utterance: flagged, as audio flags its cuts
            log.warning("visual %s#%s: %s's frames end at %.2f s, before %s s: truncated file, features from the "
                        "part that exists", row["dialogue_id"], row["utterance_id"], Path(row["media_path"]).name,
                        cover["decoded_end_s"], cover["expected_end_s"])
        if faces is None:
            return dict(rec, status="no_face", error=None)
        vec = self.backbone(faces)
        err = nonfinite_error(self.name, vec)  # fp16 autocast on GPU can overflow
        return dict(rec, status="error", error=err) if err else dict(rec, status="ok", error=None, feature=vec)

    def process(self, rows: list[dict]) -> list[dict]:
        return [self.process_one(r) for r in rows]


VISUAL_KEYS = ("sampling", "every", "count", "max_frames", "min_face_prob", "backbone", "weights", "pooling",
               "face_size", "detect_max_side")


def build_visual_extractor(p: dict, report_face_box: bool = False) -> FaceExtractor:
    """The ``FaceExtractor`` of params section ``p`` (keys it lacks keep the class defaults);
    ``report_face_box``: also the chosen track's mean box per record (predict)."""
    return FaceExtractor(**{k: p[k] for k in VISUAL_KEYS if k in p}, report_face_box=report_face_box)
