"""The ``emotion2vec`` audio extractor (LPGNet §4.2): FunASR's own ``Emotion2vec`` class on a tiny random-init
checkpoint saved the way FunASR ships emotion2vec (config.yaml + model.pt), utterance vectors and frames,
and the one-line errors for a missing checkpoint or package."""
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import DEMO
from pipeline.extraction.audio import Emotion2vecExtractor, build_audio_extractor, relevant_config

pytest.importorskip("funasr.models.emotion2vec.model", reason="FunASR (requirements-nodeps.txt) not installed")

CLIP = DEMO / "train_splits" / "dia0_utt1.mp4"
DIM = 16
TINY = {  # emotion2vec_base's model_conf keys, at toy sizes (base: depth 8, embed_dim 768, 12 heads)
    "loss_beta": 0.0, "loss_scale": None, "depth": 2, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0,
    "num_heads": 2, "norm_eps": 1e-05, "norm_affine": True, "encoder_dropout": 0.1, "post_mlp_drop": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0, "layerdrop": 0.0,
    "embed_dim": DIM, "mlp_ratio": 2.0, "layer_norm_first": False, "average_top_k_layers": 2,
    "end_of_block_targets": False, "clone_batch": 1, "normalize": True,
    "modalities": {"audio": {
        "type": "AUDIO", "feature_encoder_spec": "[(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2",
        "extractor_mode": "layer_norm", "conv_pos_depth": 2, "conv_pos_width": 4, "conv_pos_groups": 2,
        "conv_pos_pre_ln": False, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "prenet_depth": 1,
        "prenet_layerdrop": 0.0, "prenet_dropout": 0.0, "decoder": None, "learned_alibi_scale": True,
        "learned_alibi": False, "alibi_max_pos": None, "num_alibi_heads": 2, "num_extra_tokens": 0,
        "init_extra_token_zero": True, "mask_noise_std": 0.01, "use_alibi_encoder": True, "local_grad_mult": 1.0,
        "model_depth": 2, "learned_alibi_scale_per_layer": True, "learned_alibi_scale_per_head": True,
        "alibi_scale": 1.0, "mask_prob": 0.5, "mask_prob_min": None, "mask_length": 5, "inverse_mask": False,
        "mask_dropout": 0.0, "add_masks": False, "keep_masked_pct": 0.0, "encoder_zero_mask": True,
        "mask_channel_prob": 0.0, "mask_channel_length": 64}},
}


def tiny_checkpoint(tmp_path, wrap="model"):
    """A random-init FunASR Emotion2vec saved as FunASR ships it: config.yaml + model.pt (state dict)."""
    from funasr.models.emotion2vec.model import Emotion2vec

    torch.manual_seed(0)
    model = Emotion2vec(model_conf=TINY)
    folder = tmp_path / "emotion2vec_tiny"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": TINY}))
    state = model.state_dict()
    torch.save({wrap: state} if wrap else state, folder / "model.pt")
    return folder, model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("e2v"))


def test_utterance_vector_and_frames_match_funasr_inference(ckpt):
    """Our vectors = FunASR's own ``Emotion2vec.inference`` (granularity utterance / frame) on the same clip."""
    folder, ref = ckpt
    ex = Emotion2vecExtractor(str(folder), store_frames=True, device="cpu")
    assert ex.dim == DIM and ex.name.startswith("emotion2vec:")
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(16000)).astype(np.float32)  # 1 s at 16 kHz
    rec = ex.embed([clip])[0]
    frames = np.asarray(rec["frames"])
    assert frames.shape == (49, DIM)  # 20 ms hop: 50 frames per second (minus the conv edge)
    np.testing.assert_allclose(rec["feature"], frames.mean(0), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        for gran, ours in (("utterance", rec["feature"]), ("frame", frames)):
            res, _ = ref.inference([torch.from_numpy(clip)], key=["k"], device="cpu", granularity=gran)
            np.testing.assert_allclose(ours, res[0]["feats"], rtol=1e-4, atol=1e-5)


def test_real_clip_through_the_stage_and_short_clips(ckpt, tmp_path):
    folder, _ = ckpt
    p = {"extractor": "emotion2vec", "emotion2vec": {"model": str(folder), "store_frames": True},
         "max_duration_s": 30.0, "silence_rms": 1e-4, "ssl": {"model": "x"}, "feature_set": "eGeMAPSv02",
         "lld": False, "shard_size": 8}
    ex = build_audio_extractor(p)
    rec = ex.process([{"media_path": str(CLIP)}])[0]
    assert rec["status"] == "ok" and rec["feature"].shape == (DIM,) and np.isfinite(rec["feature"]).all()
    assert abs(len(rec["frames"]) - rec["duration_s"] * 50) < 3
    short = ex.embed([np.full(100, 0.1, np.float32)])[0]  # shorter than one conv frame: padded to 25 ms
    assert np.asarray(short["frames"]).shape == (1, DIM)
    cfg = relevant_config(p)
    assert set(cfg) == {"extractor", "emotion2vec", "max_duration_s", "silence_rms", "weights_digest"}
    assert cfg["weights_digest"]  # the local checkpoint's bytes decide whether finished shards are still valid


@pytest.mark.parametrize("wrap", [None, "state_dict"])
def test_checkpoint_wrappers(tmp_path, wrap):
    folder, ref = tiny_checkpoint(tmp_path, wrap)
    ex = Emotion2vecExtractor(str(folder), device="cpu")
    for (k, a), b in zip(ex.model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_missing_checkpoint_and_package_are_one_line_errors(tmp_path, ckpt, monkeypatch):
    with pytest.raises(RuntimeError, match="no emotion2vec checkpoint") as e:
        Emotion2vecExtractor(str(tmp_path / "nowhere"))
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": {**TINY, "depth": 3}}))
    (bad / "model.pt").write_bytes((ckpt[0] / "model.pt").read_bytes())
    with pytest.raises(RuntimeError, match="does not fit"):
        Emotion2vecExtractor(str(bad))
    monkeypatch.setitem(sys.modules, "funasr.models.emotion2vec.model", None)  # as if FunASR were absent
    with pytest.raises(RuntimeError, match="needs FunASR") as e:
        Emotion2vecExtractor(str(ckpt[0]))
    assert "\n" not in str(e.value)
