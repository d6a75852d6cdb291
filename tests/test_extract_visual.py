"""Visual stage: frame sampling and seeking, face tracks and the speaker heuristic, alignment, backbones,
the demo's planted edge cases, and real footage (``../shared/data/media``, skipped when absent)."""
import logging

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import SHARED
from pipeline.common import read_features
from pipeline.extraction.media import decode_frames, frame_indices, sample_frames
from pipeline.extraction.runners import run_sharded
from pipeline.extraction.visual import (Backbone, FaceExtractor, Track, align_face, choose_speaker_track,
                                        link_tracks)

MEDIA = SHARED / "media"
needs_media = pytest.mark.skipif(not MEDIA.exists(), reason="../shared/data/media absent")


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return FaceExtractor(sampling="every_k", every=3, max_frames=8)


# ---------------------------------------------------------------- sampling and decoding
def test_frame_indices_modes():
    assert frame_indices(30, "every_k", every=3, max_frames=16) == list(range(0, 30, 3))
    assert frame_indices(100, "every_k", every=3, max_frames=5) == [0, 3, 6, 9, 12]  # first max_frames
    assert frame_indices(100, "summer", max_frames=16) == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]  # N_s = 100/10
    assert frame_indices(7, "summer") == [3]  # at least one keyframe
    assert frame_indices(300, "summer", max_frames=4) == [37, 112, 187, 262]  # capped: fewer, still spread
    assert frame_indices(80, "fixed", count=4, max_frames=16) == [10, 30, 50, 70]
    assert frame_indices(3, "fixed", count=8) == [0, 1, 2]  # never more than the clip has
    assert frame_indices(1, "fixed", count=8) == frame_indices(1, "summer") == [0]  # a still image
    assert frame_indices(0, "every_k") == []
    with pytest.raises(ValueError, match="sampling"):
        frame_indices(10, "random")


@pytest.fixture(scope="module")
def numbered_clip(tmp_path_factory):
    """60 frames, keyframe every 8, frame i shows i in binary (8 black/white blocks): content names the frame."""
    path = tmp_path_factory.mktemp("clip") / "numbered.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=12)
        s.width, s.height = 128, 16
        s.pix_fmt = "yuv420p"
        s.codec_context.gop_size = 8
        for i in range(60):
            img = np.repeat(((i >> np.arange(8)) & 1).astype(np.uint8) * 255, 16)[None, :, None].repeat(16, 0)
            img = img.repeat(3, 2)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def frame_number(img):
    return int(((img[..., 0].reshape(16, 8, 16).mean((0, 2)) > 128) * 2 ** np.arange(8)).sum())


@pytest.mark.parametrize("mode", ["every_k", "summer", "fixed"])
def test_decode_frames_gets_the_sampled_frames(numbered_clip, mode):
    frames, idx = decode_frames(numbered_clip, mode, every=7, count=5, max_frames=16)
    assert idx == frame_indices(60, mode, every=7, count=5, max_frames=16)
    # seeking to keyframes must land on exactly the wanted frames
    assert [frame_number(f) for f in frames] == idx


def test_sample_frames_compatible(numbered_clip):
    frames = sample_frames(numbered_clip, every=5, max_frames=4)
    assert [frame_number(f) for f in frames] == [0, 5, 10, 15]


# ---------------------------------------------------------------- tracks, speaker, alignment
def _dets(frames_boxes):
    """Per frame a list of (box, landmarks-or-None) → detections as MTCNN-shaped arrays."""
    out = []
    for faces in frames_boxes:
        b = np.array([f[0] for f in faces], np.float32).reshape(-1, 4)
        lm = np.array([f[1] if f[1] is not None else _landmarks(f[0], 0.0) for f in faces], np.float32)
        out.append((b, np.full(len(b), 0.99, np.float32), lm.reshape(-1, 5, 2)))
    return out


def _landmarks(box, open_mouth):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    my = y0 + 0.75 * h + open_mouth * h
    return [[x0 + .3 * w, y0 + .4 * h], [x0 + .7 * w, y0 + .4 * h], [x0 + .5 * w, y0 + .6 * h],
            [x0 + .35 * w, my], [x0 + .65 * w, my]]


def test_link_tracks_follows_moving_faces_across_gaps():
    a = lambda t: ([10 + 2 * t, 10, 50 + 2 * t, 50], None)  # noqa: E731  slowly moving left face
    b = lambda t: ([100, 10, 140, 50], None)  # noqa: E731
    tracks = link_tracks(_dets([[a(0), b(0)], [b(1)], [b(2), a(2)], [a(3)], []]))
    assert sorted(tr.frames for tr in tracks) == [[0, 1, 2], [0, 2, 3]]  # a skips frame 1, b ends at 2


def test_speaker_heuristic_order():
    W = H = 200
    def track(box, n, motion=0.0):
        tr = Track()
        for t in range(n):
            tr.add(t, np.array(box, np.float32), 0.99, np.array(_landmarks(box, motion * (t % 2)), np.float32))
        return tr
    big_corner, small_centre = [0, 0, 90, 90], [85, 85, 115, 115]
    # present most beats larger
    assert choose_speaker_track([track(big_corner, 4), track(small_centre, 10)], W, H) == 1
    # same presence: larger wins even off-centre
    assert choose_speaker_track([track(small_centre, 10), track(big_corner, 10)], W, H) == 1
    # same presence and size: more central wins
    assert choose_speaker_track([track([0, 60, 60, 120], 10), track([70, 70, 130, 130], 10)], W, H) == 1
    # all equal (mirror images): the moving mouth wins, whichever order
    left, right = [20, 70, 80, 130], [120, 70, 180, 130]
    assert choose_speaker_track([track(left, 10), track(right, 10, motion=0.05)], W, H) == 1
    assert choose_speaker_track([track(left, 10, motion=0.05), track(right, 10)], W, H) == 0


def test_align_face_levels_the_eyes():
    img = np.zeros((200, 200, 3), np.uint8)
    eyes = np.array([[70, 85], [130, 115]])  # tilted by atan(30/60) ≈ 26.6°
    for x, y in eyes:
        img[y - 3:y + 4, x - 3:x + 4] = 255
    lm = np.array([*eyes, [100, 120], [80, 140], [120, 150]], np.float32)
    out = align_face(img, np.array([50, 50, 150, 150], np.float32), lm, 64)
    assert out.shape == (64, 64, 3)
    ys, xs = np.nonzero(out[..., 0] > 128)
    left, right = xs < 32, xs >= 32
    assert left.any() and right.any()
    assert abs(ys[left].mean() - ys[right].mean()) < 1.0  # level
    assert abs((xs[left].mean() + xs[right].mean()) / 2 - 31.5) < 1.0  # centred on the box


# ---------------------------------------------------------------- backbones
def test_video_backbone_random_weights(caplog, tmp_path):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="merc.extract_visual"):
        bb = Backbone("r3d_18", weights=None)
    assert bb.dim == 512 and bb.weights == "random" and bb.temporal and bb.size == 112
    assert "RANDOM weights" in caplog.text
    faces = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    assert bb.preprocess(faces).shape == (3, 3, 112, 112)
    v = bb(faces)
    assert v.shape == (512,) and np.isfinite(v).all()
    with pytest.raises(ValueError, match="KINETICS400_V1"):
        Backbone("r3d_18", weights="NO_SUCH_WEIGHTS")


def test_random_weights_recorded_in_table_metadata(demo_utterances, tmp_path):
    ex = FaceExtractor(backbone="mc3_18", weights=None, max_frames=2)
    assert ex.dim == 512 and ex.name == "face:mc3_18:random-weights"
    out = run_sharded(ex, demo_utterances, tmp_path / "v", config={},
                      select=lambda r: (r["dialogue_id"], r["utterance_id"]) == ("train_dia0", 1))
    meta = pq.read_schema(next(out.glob("part-*.parquet"))).metadata
    assert meta[b"weights"] == b"random" and meta[b"backbone"] == b"mc3_18"
    assert read_features(out).column("status").to_pylist() == ["ok"]


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_2d_backbone_temporal_pooling(pooling):
    bb = Backbone("fer_cnn", pooling=pooling)
    assert bb.weights.startswith("trained:") and bb.dim == 256
    faces = np.random.default_rng(1).integers(0, 255, (4, 112, 112, 3), dtype=np.uint8)
    per_frame = np.stack([bb.net(bb.preprocess(f[None])).detach().numpy()[0] for f in faces])
    expect = per_frame.mean(0) if pooling == "mean" else per_frame.max(0)
    np.testing.assert_allclose(bb(faces), expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, head, dim, side", [
    ("resnet18", "fc", 512, 112),
    # Ada2I's visual features come from DenseNet (its Table 2, ref. [12]): a classifier that is a single Linear
    ("densenet121", "classifier", 1024, 64),
])
def test_2d_torchvision_backbone_from_local_checkpoint(tmp_path, name, head, dim, side):
    import torchvision.models as tvm

    torch.manual_seed(0)
    ref = getattr(tvm, name)(num_classes=10)  # another head: the checkpoint's head is ignored
    torch.save({"state_dict": ref.state_dict()}, tmp_path / f"{name}.pt")
    bb = Backbone(name, weights=str(tmp_path / f"{name}.pt"))
    assert bb.dim == dim and bb.weights.startswith("checkpoint:")
    setattr(ref, head, torch.nn.Identity())
    faces = np.random.default_rng(2).integers(0, 255, (2, side, side, 3), dtype=np.uint8)
    with torch.inference_mode():
        expect = ref.eval()(bb.preprocess(faces)).mean(0).numpy()
    np.testing.assert_allclose(bb(faces), expect, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the demo's planted cases
def test_demo_edge_cases(extractor, demo_utterances, tmp_path):
    wanted = {("train_dia1", 5), ("test_dia0", 5), ("train_dia3", 5), ("test_dia1", 3), ("train_dia0", 1)}
    out = run_sharded(extractor, demo_utterances, tmp_path / "v", config={},
                      select=lambda r: (r["dialogue_id"], r["utterance_id"]) in wanted)
    r = {(x["dialogue_id"], x["utterance_id"]): x for x in read_features(out).to_pylist()}
    assert set(r) == wanted
    no_face = r[("train_dia1", 5)]
    assert no_face["status"] == "no_face" and not no_face["face_found"] and no_face["n_faces"] == 0
    assert not any(no_face["feature"]) and no_face["error"] is None
    # rows prepare flagged are not decoded: they keep the utterance's status and error
    assert r[("train_dia3", 5)]["status"] == "corrupt_media" and "dia3_utt5" in r[("train_dia3", 5)]["error"]
    assert r[("test_dia1", 3)]["status"] == "missing_media" and "not found" in r[("test_dia1", 3)]["error"]
    one = r[("train_dia0", 1)]
    assert one["status"] == "ok" and one["n_faces"] == one["n_tracks"] == 1
    assert one["face_frames"] == one["frames_sampled"] == 8 and one["face_prob"] > 0.9
    two = r[("test_dia0", 5)]
    assert two["status"] == "ok" and two["n_faces"] == 2 and two["n_tracks"] == 2 and two["face_prob"] > 0.9
    # the vector is one face's (the chosen track's), not a blend of both
    frames, _ = decode_frames("data/demo/output_repeated_splits_test/dia0_utt5.mp4", max_frames=8)
    tracks = link_tracks(extractor.detect(frames))
    per_track = [extractor.backbone(np.stack([align_face(frames[t], b, lm, extractor.face_size)
                                              for t, b, lm in zip(tr.frames, tr.boxes, tr.landmarks)]))
                 for tr in tracks]
    k = choose_speaker_track(tracks, 320, 160)
    np.testing.assert_allclose(two["feature"], per_track[k], rtol=1e-4, atol=1e-5)
    assert not np.allclose(per_track[0], per_track[1], atol=1e-3)


def test_detection_on_shrunk_frames_reports_frame_pixels(extractor, monkeypatch):
    frames, _ = decode_frames("data/demo/output_repeated_splits_test/dia0_utt5.mp4", max_frames=1)  # 320×160
    full = extractor.detect(frames)[0]
    monkeypatch.setattr(extractor, "detect_max_side", 200)
    small = extractor.detect(frames)[0]
    assert len(full[0]) == len(small[0]) == 2
    order = lambda b: np.argsort(b[:, 0])  # noqa: E731
    np.testing.assert_allclose(small[0][order(small[0])], full[0][order(full[0])], atol=6)
    np.testing.assert_allclose(small[2][order(small[0])], full[2][order(full[0])], atol=6)


# ---------------------------------------------------------------- real footage
@needs_media
def test_real_single_face_and_no_face(extractor):
    frames, _ = decode_frames(MEDIA / "single_face.mp4", "fixed", count=8)
    present = [len(d[0]) > 0 for d in extractor.detect(frames)]
    assert sum(present) >= 0.8 * len(present)
    none = extractor.process_one({"media_path": str(MEDIA / "no_face.mp4"), "error": None})
    assert none["status"] == "no_face" and none["face_frames"] == 0 and none["frames_sampled"] == 8


@needs_media
def test_real_face_then_no_face_hevc(extractor):
    with av.open(str(MEDIA / "face_noface.mov")) as c:
        assert c.streams.video[0].codec_context.name == "hevc"
    frames, idx = decode_frames(MEDIA / "face_noface.mov", "fixed", count=10, max_frames=10)
    assert len(frames) == 10 and idx[-1] > 150  # spread over the whole clip
    present = [len(d[0]) > 0 for d in extractor.detect(frames)]
    first_absent = present.index(False)
    assert first_absent >= 2 and not any(present[first_absent:])  # faces, then none till the end


@needs_media
def test_real_five_faces_still_image(extractor):
    rec = extractor.process_one({"media_path": str(MEDIA / "multi_face.jpg"), "error": None})
    assert rec["status"] == "ok" and rec["frames_sampled"] == 1
    assert rec["n_faces"] == 5 and rec["n_tracks"] == 5 and rec["face_prob"] > 0.9
