"""Audio stage: SSL encoders (tiny random configs), LLDs, audio-only inputs, every bad input as a row."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DEMO
from pipeline.common import read_features
from pipeline.errors import UserError
from pipeline.extraction.audio import OpenSmileExtractor, SSLExtractor, build_audio_extractor, relevant_config
from pipeline.extraction.runners import run_sharded
from pipeline.schema import UTTERANCE_SCHEMA, feature_matrix

CLIP = DEMO / "train_splits" / "dia0_utt1.mp4"


def tiny_ssl(tmp_path, kind="wav2vec2", with_fe=True, norm="group") -> str:
    """A randomly initialised 2-layer speech encoder saved like a Hub checkpoint."""
    import transformers as tf

    conv = dict(conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_feat_extract_layers=2,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  feat_extract_norm=norm, **conv)
    cfg, cls = {"wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model), "hubert": (tf.HubertConfig, tf.HubertModel),
                "wavlm": (tf.WavLMConfig, tf.WavLMModel),
                "data2vec": (tf.Data2VecAudioConfig, tf.Data2VecAudioModel)}[kind]
    extra = {"conv_pos_kernel_size": 16, "num_conv_pos_embeddings": 16} if kind == "data2vec" else {}
    path = tmp_path / kind
    cls(cfg(**{**common, **extra})).save_pretrained(path)
    if with_fe:
        tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm", "data2vec"])
def test_tiny_ssl_encoders(tmp_path, kind):
    ex = SSLExtractor(tiny_ssl(tmp_path, kind), layer="mean", store_frames=True)
    rec = ex.process([{"media_path": str(CLIP)}])[0]
    assert rec["status"] == "ok" and ex.dim == 32
    frames = np.asarray(rec["frames"])
    # ~20 ms hop of the tiny 2-layer CNN (stride 10 samples here): frames ≈ samples / 10
    assert abs(frames.shape[0] - rec["duration_s"] * 16000 / 10) < 5
    np.testing.assert_allclose(rec["feature"], frames.mean(0), rtol=1e-5, atol=1e-6)


def test_ssl_chunking_layers_and_batching(tmp_path):
    # no preprocessor config: falls back to wav2vec2 normalisation; layer-norm CNN so padding can be masked
    path = tiny_ssl(tmp_path, with_fe=False, norm="layer")
    whole = SSLExtractor(path, layer="last", chunk_s=30.0)
    chunked = SSLExtractor(path, layer="last", chunk_s=0.5, batch_size=3)
    a = whole.process([{"media_path": str(CLIP)}])[0]["feature"]
    b = chunked.process([{"media_path": str(CLIP)}])[0]["feature"]
    assert a.shape == b.shape == (32,)
    # chunking changes the context the encoder sees but not the scale of the pooled vector
    assert np.corrcoef(a, b)[0, 1] > 0.5
    # one clip alone equals the same clip batched with a longer one (padding is masked; group-norm
    # checkpoints such as wav2vec2-base normalise over the padded length, see the module docstring)
    other = DEMO / "train_splits" / "dia0_utt2.mp4"
    both = whole.process([{"media_path": str(CLIP)}, {"media_path": str(other)}])
    np.testing.assert_allclose(both[0]["feature"], a, rtol=1e-4, atol=1e-5)
    l1 = SSLExtractor(path, layer=1).process([{"media_path": str(CLIP)}])[0]["feature"]
    assert not np.allclose(l1, a)


def test_missing_ssl_weights_are_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="could not load speech encoder"):
        SSLExtractor(str(tmp_path / "absent"))


def test_opensmile_lld_sequence_and_compare():
    rec = OpenSmileExtractor("eGeMAPSv02", lld=True).process([{"media_path": str(CLIP)}])[0]
    lld = np.asarray(rec["lld"])
    assert lld.shape[1] == 25 and abs(lld.shape[0] - rec["duration_s"] * 100) < 10  # 10 ms hop
    big = OpenSmileExtractor("ComParE_2016")
    assert big.dim == 6373
    assert big.process([{"media_path": str(CLIP)}])[0]["feature"].shape == (6373,)


def write_wav(path, signal, sr=16000, codec="pcm_s16le", layout="mono"):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=sr, layout=layout)
        # the same 16-bit samples for every codec, so lossless files decode identically
        frame = av.AudioFrame.from_ndarray((signal * 32767).astype(np.int16).reshape(1, -1), format="s16",
                                           layout=layout)
        frame.sample_rate = sr
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def test_bad_inputs_are_rows_and_audio_only_files_work(tmp_path):
    rng = np.random.default_rng(0)
    speechy = (0.3 * np.sin(2 * np.pi * 180 * np.arange(16000) / 16000) * rng.uniform(0.5, 1, 16000))
    write_wav(tmp_path / "ok.wav", speechy)
    write_wav(tmp_path / "ok.flac", speechy, codec="flac")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    import av  # a video-only file: no audio stream

    with av.open(str(tmp_path / "video.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = 32
        for i in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    names = ["ok.wav", "ok.flac", "empty.wav", "corrupt.wav", "video.mp4", "absent.wav"]
    rows = [dict(dialogue_id=f"clip{i}", utterance_id=0, speaker="s", text="", label="neutral", label_id=0,
                 split="train", media_path=str(tmp_path / n), start_s=None, end_s=None, status="ok", error=None,
                 source="test") for i, n in enumerate(names)]
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), tmp_path / "u.parquet")

    class NaNSmile(OpenSmileExtractor):  # openSMILE producing NaN for one clip
        def features(self, signal):
            f = super().features(signal)
            return f * np.nan if signal.size == 16000 and self.flip else f

    ex = NaNSmile("eGeMAPSv02")
    ex.flip = False
    t = read_features(run_sharded(ex, tmp_path / "u.parquet", tmp_path / "a", config={}, shard_size=4))
    st = dict(zip(t.column("dialogue_id").to_pylist(), zip(t.column("status").to_pylist(), t.column("error").to_pylist())))
    assert st["clip0"][0] == "ok" and st["clip1"][0] == "ok"
    assert st["clip2"] == ("error", f"zero-length file: {tmp_path / 'empty.wav'}")
    assert st["clip3"][0] == "error" and "corrupt.wav" in st["clip3"][1]
    assert st["clip4"] == ("error", f"no audio stream in {tmp_path / 'video.mp4'}")
    assert st["clip5"][0] == "error" and "not found" in st["clip5"][1]
    m = feature_matrix(t)
    np.testing.assert_array_equal(m[0], m[1])  # lossless flac = same samples = same features as wav
    ex.flip = True
    nan = ex.process(rows[:1])[0]
    assert nan["status"] == "error" and "non-finite" in nan["error"]


def test_params_select_extractor_and_fingerprint():
    p = {"extractor": "opensmile", "feature_set": "eGeMAPSv02", "lld": False, "max_duration_s": 30.0,
         "silence_rms": 1e-4, "shard_size": 8, "ssl": {"model": "x", "layer": "mean"}}
    assert isinstance(build_audio_extractor(p), OpenSmileExtractor)
    # changing the SSL settings does not invalidate openSMILE features (and vice versa)
    assert relevant_config(p) == relevant_config({**p, "ssl": {"model": "y"}})
    with pytest.raises(ValueError, match="opensmile or ssl"):
        build_audio_extractor({**p, "extractor": "mfcc"})
