"""Audio and visual stages on the demo clips (planted edge cases); visual details in test_extract_visual.py."""
import numpy as np
import pytest

from conftest import DEMO
from pipeline.common import read_features
from pipeline.schema import feature_matrix


def rows_by_key(table):
    return {(r["dialogue_id"], r["utterance_id"]): r for r in table.to_pylist()}


def test_audio_demo_statuses(demo_features, demo_utterances):
    t = read_features(demo_features["a"])
    r = rows_by_key(t)
    assert t.num_rows == 59
    assert t.schema.field("feature").type.list_size == 88  # eGeMAPSv02 functionals
    assert r[("train_dia2", 3)]["status"] == "silent" and r[("train_dia2", 3)]["rms"] == 0
    # flagged by prepare, so never decoded: the utterance's status and error carry over
    assert r[("train_dia3", 5)]["status"] == "corrupt_media" and "dia3_utt5.mp4" in r[("train_dia3", 5)]["error"]
    assert r[("test_dia1", 3)]["status"] == "missing_media" and "not found" in r[("test_dia1", 3)]["error"]
    ok = [v for v in r.values() if v["status"] == "ok"]
    assert len(ok) == 56
    assert all(1.0 < v["duration_s"] < 6.0 and v["rms"] > 1e-3 for v in ok)
    m = feature_matrix(t)
    assert np.isfinite(m).all()
    assert not m[[i for i, v in enumerate(t.to_pylist()) if v["status"] != "ok"]].any()


def test_audio_equals_bare_opensmile():
    import opensmile

    from pipeline.extraction.audio import OpenSmileExtractor
    from pipeline.extraction.media import load_audio

    clip = DEMO / "train_splits" / "dia0_utt1.mp4"
    ex = OpenSmileExtractor("eGeMAPSv02")
    rec = ex.process([{"media_path": str(clip), "error": None}])[0]
    signal, _ = load_audio(clip, 16000)
    bare = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                           feature_level=opensmile.FeatureLevel.Functionals).process_signal(signal, 16000)
    np.testing.assert_array_equal(rec["feature"], bare.to_numpy(dtype=np.float32).reshape(-1))


def test_load_audio_resamples_and_mixes(tmp_path):
    """A 440 Hz tone, 44.1 kHz stereo with one silent channel → 16 kHz mono at half amplitude."""
    import av

    from pipeline.extraction.media import load_audio

    sr, dur = 44100, 1.0
    t = np.arange(int(sr * dur)) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.stack([tone, np.zeros_like(tone)])
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_f32le", rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
        frame.sample_rate = sr
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    x, truncated = load_audio(path, 16000)
    assert not truncated and abs(x.size - 16000) <= 32
    spectrum = np.abs(np.fft.rfft(x[1000:-1000]))
    peak_hz = np.argmax(spectrum) * 16000 / (x.size - 2000)
    assert abs(peak_hz - 440) < 3
    mid = x[2000:-2000]
    # channels are averaged (one is silent): amplitude 0.5 / 2
    assert np.abs(mid).max() == pytest.approx(0.25, abs=0.01)
    cut, truncated = load_audio(path, 16000, max_duration=0.5)
    assert truncated and cut.size == 8000


def test_visual_demo_statuses(demo_features):
    t = read_features(demo_features["v"])
    r = rows_by_key(t)
    assert t.schema.field("feature").type.list_size == 256
    no_face = r[("train_dia1", 5)]
    assert no_face["status"] == "no_face" and not no_face["face_found"] and no_face["n_faces"] == 0
    two = r[("test_dia0", 5)]
    assert two["status"] == "ok" and two["n_faces"] == 2 and two["n_tracks"] == 2 and two["face_found"]
    assert r[("train_dia3", 5)]["status"] == "corrupt_media"
    assert r[("test_dia1", 3)]["status"] == "missing_media" and "not found" in r[("test_dia1", 3)]["error"]
    ok = [v for v in r.values() if v["status"] == "ok"]
    assert len(ok) == 56  # the silent clip still has a face
    assert all(v["n_faces"] == v["n_tracks"] == 1 for k, v in r.items() if v["status"] == "ok" and k != ("test_dia0", 5))
    assert all(v["face_frames"] == v["frames_sampled"] and v["face_prob"] > 0.9 for v in ok)
    m = feature_matrix(t)
    assert np.isfinite(m).all() and (m[[i for i, v in enumerate(t.to_pylist()) if v["status"] == "ok"]] >= 0).all()


def test_decode_frames_honours_utterance_span(tmp_path):
    """Frames of [start_s, end_s) only: a 10 fps clip whose frame i is filled with grey level 10·i."""
    import av

    from pipeline.extraction.media import decode_frames

    path = tmp_path / "ramp.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for i in range(20):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    frames, idx = decode_frames(path, "every_k", every=1, max_frames=100, start_s=0.5, end_s=1.0)
    assert len(frames) == 5 and idx == [0, 1, 2, 3, 4]
    levels = [int(round(f.mean() / 10)) for f in frames]
    assert levels == [5, 6, 7, 8, 9]
