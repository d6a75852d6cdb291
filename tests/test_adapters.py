"""Dataset adapters on fixture trees in each corpus's exact layout, with every known defect planted."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED
from mediagen import write_clip, write_corrupt, write_wav
from pipeline.adapters.meld import SENTIMENTS
from pipeline.extraction.media import load_audio
from pipeline.prepare import prepare
from pipeline.schema import EMOTIONS, label_names

SR = 16000


def meta(table, key):
    return json.loads(table.schema.metadata[key.encode()])


def dominant_hz(x: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x))) * SR / x.size)


# ---------------------------------------------------------------- MELD.Raw

MELD_COLS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
             "Episode", "StartTime", "EndTime"]
# split, Dialogue_ID, Utterance_ID, emotion, sentiment, CSV span (s), what the clip is
MELD_ROWS = [
    ("train", 125, 0, "joy", "positive", 1.0, "ok"),
    ("train", 125, 1, "neutral", "neutral", 1.0, "ok"),
    ("train", 125, 2, "anger", "negative", 1.0, "ok"),
    ("train", 125, 3, "sadness", "negative", 1.0, "corrupt"),
    ("train", 309, 0, "surprise", "positive", 0.5, "long"),
    ("dev", 110, 6, "fear", "negative", 1.0, "ok"),
    ("dev", 110, 7, "disgust", "negative", 1.0, "missing"),
    ("test", 38, 3, "neutral", "neutral", 1.0, "ok"),
    ("test", 38, 4, "neutral", "neutral", 4.0, "long"),  # CSV span as wrong as the clip (real: 305 s)
    ("test", 220, 0, "joy", "positive", 0.5, "long"),
]
MELD_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def _ts(s: float) -> str:
    return f"00:{int(s // 60):02d}:{int(s % 60):02d},{int(round(s % 1 * 1000)):03d}"


@pytest.fixture(scope="module")
def meld_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("MELD.Raw")
    for split, folder in MELD_FOLDERS.items():
        rows = [r for r in MELD_ROWS if r[0] == split]
        pd.DataFrame([[i, f"line {d}-{u}", "Joey", emo, sen, d, u, 1, 1, _ts(60), _ts(60 + span)]
                      for i, (_, d, u, emo, sen, span, _) in enumerate(rows)], columns=MELD_COLS
                     ).to_csv(root / f"{split}_sent_emo.csv", index=False)
        for _, d, u, _, _, span, kind in rows:
            clip = root / folder / f"dia{d}_utt{u}.mp4"
            if kind == "ok":
                write_clip(clip, [(span, 300)])
            elif kind == "long":  # far longer than the utterance, like test dia220_utt0
                write_clip(clip, [(4.0, 300)])
            elif kind == "corrupt":
                write_corrupt(clip)
    test_dir = root / MELD_FOLDERS["test"]
    write_clip(test_dir / "final_videos_testdia101_utt0.mp4", [(0.5, 300)])  # odd name
    write_corrupt(test_dir / "._dia38_utt4.mp4")  # macOS resource fork: odd name too
    write_clip(test_dir / "dia999_utt0.mp4", [(0.5, 300)])  # no CSV row
    return root


def test_meld_raw_defects_become_statuses(meld_raw, tmp_path):
    t = prepare("meld", meld_raw, tmp_path / "u.parquet", dict(max_excess_s=2.0, max_clip_s=3.0, check_counts="off"))
    df = t.to_pandas().set_index(["dialogue_id", "utterance_id"])
    expected = {"ok": "ok", "corrupt": "corrupt_media", "missing": "missing_media", "long": "long_media"}
    assert df.status.to_dict() == {(f"{s}_dia{d}", u): expected[k] for s, d, u, *_, k in MELD_ROWS}
    assert "cannot open" in df.loc[("train_dia125", 3), "error"]
    assert "not found" in df.loc[("dev_dia110", 7), "error"]
    for key, span in [(("train_dia309", 0), 0.5), (("test_dia220", 0), 0.5), (("test_dia38", 4), 4.0)]:
        row = df.loc[key]
        assert pd.isna(row.media_path)  # no stage decodes minutes of unrelated footage
        assert row.media_duration_s == pytest.approx(4.0, abs=0.1) and row.annot_duration_s == pytest.approx(span)
        assert f"lasts 4.0 s but its CSV span is {span:.1f} s" in row.error
    # with the default limits (10 s excess, 60 s) these 4 s clips are ordinary
    default = prepare("meld", meld_raw, tmp_path / "d.parquet", dict(check_counts="off")).to_pandas()
    assert (default.status == "long_media").sum() == 0
    ok = df[df.status == "ok"]
    assert ok.media_path.notna().all() and (ok.media_duration_s - ok.annot_duration_s).abs().max() < 0.1
    assert list(df.label) == [r[3] for r in MELD_ROWS]
    assert (df.label_id == [EMOTIONS.index(r[3]) for r in MELD_ROWS]).all()
    prov = meta(t, "provenance")
    assert prov["adapter"] == "meld" and prov["params"]["max_excess_s"] == 2.0
    c = prov["counts"]
    assert (c["test_ignored_odd_names"], c["test_ignored_unannotated"], c["train_ignored_odd_names"]) == (2, 1, 0)
    assert (c["train_corrupt_media"], c["dev_missing_media"], c["train_long_media"], c["test_long_media"]) == (1, 1, 1, 2)
    assert meta(t, "labels") == EMOTIONS
    assert df.source.str.contains("adapter=meld file=.*_sent_emo.csv target=emotion").all()


def test_meld_sentiment_target(meld_raw, tmp_path):
    t = prepare("meld", meld_raw, tmp_path / "u.parquet", dict(target="sentiment", check_counts="off"))
    df = t.to_pandas()
    assert label_names(t.schema) == SENTIMENTS
    assert list(df.label) == [r[4] for r in MELD_ROWS]
    assert (df.label_id == [SENTIMENTS.index(r[4]) for r in MELD_ROWS]).all()
    with pytest.raises(ValueError, match="prepare.target"):
        prepare("meld", meld_raw, tmp_path / "u.parquet", dict(target="arousal"))


def test_meld_official_count_check(meld_raw, tmp_path, caplog):
    out = tmp_path / "u.parquet"
    with pytest.raises(ValueError, match=r"train 5 utterances / 2 dialogues \(official 9989 / 1038\).*check_counts: off"):
        prepare("meld", meld_raw, out, dict(check_counts="strict"))
    assert not out.exists()
    with caplog.at_level("WARNING"):
        prepare("meld", meld_raw, out, dict(check_counts="warn"))
    assert "differ from the official" in caplog.text and out.exists()
    caplog.clear()
    prepare("meld", meld_raw, out, dict(check_counts="off"))
    prepare("demo", meld_raw, out, dict(check_counts="strict"))  # the demo is a subset by design
    assert "official" not in caplog.text


@pytest.mark.skipif(not (SHARED / "meld").exists(), reason="../shared/data/meld absent")
def test_real_meld_counts_strict_and_sentiment(tmp_path):
    emo = prepare("meld", SHARED / "meld", tmp_path / "e.parquet", dict(check_counts="strict")).to_pandas()
    sen = prepare("meld", SHARED / "meld", tmp_path / "s.parquet",
                  dict(check_counts="strict", target="sentiment")).to_pandas()
    assert len(sen) == 13708 and (sen.label_id >= 0).all() and set(sen.label) == set(SENTIMENTS)
    # MELD annotates neutral emotion exactly when the sentiment is neutral.
    assert ((emo.label == "neutral") == (sen.label == "neutral")).all()


# ---------------------------------------------------------------- IEMOCAP

# per dialogue kind: (speaker part of the id, start, end, label code); tone = 200 + 50 * position in this list
IEMO_UTTS = {
    "impro01": [("F000", 0.5, 1.3, "neu"), ("F001", 2.3, 3.0, "xxx"), ("F002", 4.0, 4.8, "fru"),
                ("M000", 1.4, 2.2, "exc"), ("M001", 3.1, 3.9, "hap")],  # F lines first: order comes from times
    "script01_1": [("M000", 0.2, 1.0, "ang"), ("F000", 1.1, 1.9, "sad"), ("M001", 2.0, 2.6, "sur"),
                   ("F001", 2.7, 3.5, "oth"), ("M002", 3.6, 4.4, "exc")],
}


def _tone(kind: str, i: int) -> float:
    return 200.0 + 50 * i + (300 if kind == "script01_1" else 0)


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    """IEMOCAP_full_release in its exact layout: 5 sessions × (one impro, one script) dialogue."""
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    for s in range(1, 6):
        for kind, utts in IEMO_UTTS.items():
            dialog = f"Ses0{s}{'F' if kind == 'impro01' else 'M'}_{kind}"
            d = root / f"Session{s}" / "dialog"
            for sub in ("transcriptions", "EmoEvaluation", "avi/DivX"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            tr = [f"{dialog}_{u} [{a:08.4f}-{b:08.4f}]: words {u}" for u, a, b, _ in utts]
            (d / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tr + ["M: [LAUGHTER]", ""]))
            ev = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for u, a, b, code in utts:
                ev += [f"[{a:.4f} - {b:.4f}]\t{dialog}_{u}\t{code}\t[2.5000, 3.0000, 2.0000]",
                       f"C-E1:\tNeutral;\t()", "A-E1:\tval 3; act 3; dom  3;\t()", ""]
            (d / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(ev))
            (d / "EmoEvaluation" / "Categorical").mkdir(exist_ok=True)  # sub-folders exist; not read
            for u, a, b, _ in utts:
                if (s, kind, u) != (1, "impro01", "F000"):  # planted: one sentence wav missing
                    write_wav(root / f"Session{s}" / "sentences" / "wav" / dialog / f"{dialog}_{u}.wav", b - a)
            avi = d / "avi" / "DivX" / f"{dialog}.avi"
            if (s, kind) == (2, "impro01"):
                continue  # planted: recording missing
            if (s, kind) == (3, "script01_1"):
                write_corrupt(avi)
                continue
            segments, t = [], 0.0
            for i, (u, a, b, _) in sorted(enumerate(utts), key=lambda x: x[1][1]):
                if (s, kind) == (4, "impro01") and a > 3.95:
                    break  # planted: the recording ends (at 4.0 s) before its last utterance
                segments += [(a - t, 0), (b - a, _tone(kind, i))]
                t = b
            write_clip(avi, segments + [(0.1, 0)], sr=SR)
    return root


def _utt(source: str) -> str:
    return source.split("utt=")[1].split()[0]


def test_iemocap_6class(iemocap, tmp_path):
    t = prepare("iemocap", iemocap, tmp_path / "u.parquet", dict(iemocap_classes=6, dev_fraction=0.25, seed=3))
    df = t.to_pandas()
    assert label_names(t.schema) == ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    assert len(df) == 35 and df.label.value_counts().to_dict() == {
        "excited": 10, "neutral": 5, "happy": 5, "frustrated": 5, "angry": 5, "sad": 5}
    prov = meta(t, "provenance")
    assert {k: v for k, v in prov["counts"].items() if k.startswith("dropped")} == {
        "dropped_oth": 5, "dropped_sur": 5, "dropped_xxx": 5}
    assert prov["params"]["iemocap_classes"] == 6 and prov["adapter"] == "iemocap"
    # utterances in time order within the dialogue, speakers from the utterance ids
    d = df[df.dialogue_id == "Ses01F_impro01"]
    assert [_utt(s)[-4:] for s in d.source] == ["F000", "M000", "M001", "F002"]
    assert d.utterance_id.tolist() == [0, 1, 2, 3]
    assert d.speaker.tolist() == ["Ses01_F", "Ses01_M", "Ses01_M", "Ses01_F"]
    assert d.start_s.tolist() == [0.5, 1.4, 3.1, 4.0] and d.end_s.tolist() == [1.3, 2.2, 3.9, 4.8]
    assert d.text.tolist() == ["words F000", "words M000", "words M001", "words F002"]
    assert d.media_path.str.endswith("Session1/dialog/avi/DivX/Ses01F_impro01.avi").all()
    assert d.audio_path.isna().tolist() == [True, False, False, False]  # the planted missing wav
    assert d.audio_path.iloc[1].endswith("Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav")
    # planted defects: statuses, not failures
    st = df.groupby("dialogue_id").status.agg(lambda s: sorted(set(s)))
    assert st["Ses02F_impro01"] == ["missing_media"] and st["Ses03M_script01_1"] == ["corrupt_media"]
    bad = df[df.status == "bad_times"]
    assert bad.source.map(_utt).tolist() == ["Ses04F_impro01_F002"] and "lasts 4.000 s" in bad.error.iloc[0]
    assert (df.status == "ok").sum() == 35 - 4 - 3 - 1


def test_iemocap_splits_by_dialogue(iemocap, tmp_path):
    runs = [prepare("iemocap", iemocap, tmp_path / f"{i}.parquet", dict(dev_fraction=0.25, seed=seed)).to_pandas()
            for i, seed in enumerate([0, 0, 1])]
    df = runs[0]
    assert (df.split == "test").eq(df.dialogue_id.str.startswith("Ses05")).all()  # Session 5 is test
    assert (df.groupby("dialogue_id").split.nunique() == 1).all()  # never a per-utterance split
    dev = sorted(df.dialogue_id[df.split == "dev"].unique())
    assert len(dev) == 2 and not any(d.startswith("Ses05") for d in dev)  # 25% of the 8 training dialogues
    assert runs[1].equals(df)  # seeded: the same table every run
    assert sorted(runs[2].dialogue_id[runs[2].split == "dev"].unique()) != dev  # the seed picks the dialogues
    assert meta(prepare("iemocap", iemocap, tmp_path / "n.parquet", dict(dev_fraction=0.0)), "provenance"
                )["counts"].get("dev_utterances") is None


def test_iemocap_4class_merges_excited(iemocap, tmp_path):
    t = prepare("iemocap", iemocap, tmp_path / "u.parquet", dict(iemocap_classes=4))
    df = t.to_pandas()
    assert label_names(t.schema) == ["angry", "happy", "neutral", "sad"]
    assert df.label.value_counts().to_dict() == {"happy": 15, "neutral": 5, "angry": 5, "sad": 5}
    merged = df[df.source.str.contains("_M002 ") | df.source.str.contains("impro01_M000 ")]
    assert len(merged) == 10 and (merged.label == "happy").all() and (merged.label_id == 1).all()
    assert meta(t, "provenance")["counts"]["dropped_fru"] == 5
    with pytest.raises(ValueError, match="iemocap_classes"):
        prepare("iemocap", iemocap, tmp_path / "u.parquet", dict(iemocap_classes=5))


def test_iemocap_cut_by_times(iemocap, tmp_path):
    """Each stored [start_s, end_s] cut from the dialogue's avi has the right length and that utterance's tone."""
    df = prepare("iemocap", iemocap, tmp_path / "u.parquet").to_pandas()
    ok = df[df.status == "ok"]
    assert len(ok) == 27
    for r in ok.itertuples():
        x, truncated = load_audio(r.media_path, SR, start_s=r.start_s, end_s=r.end_s)
        assert not truncated and abs(x.size - (r.end_s - r.start_s) * SR) <= 2, r.source
        kind = "impro01" if "impro01" in r.dialogue_id else "script01_1"
        i = [u for u, *_ in IEMO_UTTS[kind]].index(_utt(r.source)[-4:])
        assert dominant_hz(x) == pytest.approx(_tone(kind, i), abs=3), r.source


def test_iemocap_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Session"):
        prepare("iemocap", tmp_path, tmp_path / "u.parquet")


# ---------------------------------------------------------------- load_audio spans

@pytest.mark.parametrize("name", ["rec.wav", "rec.avi", "rec.mp4"])
def test_load_audio_span_seeks_exactly(tmp_path, name):
    """A 2 s / 300 Hz then 3 s / 700 Hz recording: spans come back with (end-start)*16000 samples."""
    path = tmp_path / name
    if name.endswith(".wav"):
        write_wav(path, 5.0)
    write_clip(path, [(2.0, 300), (3.0, 700)], sr=44100 if name.endswith("mp4") else SR,
               video=not name.endswith(".wav"))
    for start, end, hz in [(0.25, 1.75, 300), (2.1, 4.6, 700), (3.0, 3.5, 700)]:
        x, truncated = load_audio(path, SR, start_s=start, end_s=end)
        assert not truncated and abs(x.size - (end - start) * SR) <= 2
        assert dominant_hz(x) == pytest.approx(hz, abs=3)
    # the tone change at 2.0 s lands where it should inside the span [1.5, 2.5]
    x, _ = load_audio(path, SR, start_s=1.5, end_s=2.5)
    lo, hi = abs(np.fft.rfft(x[: SR // 2 - 400])), abs(np.fft.rfft(x[SR // 2 + 400:]))
    assert dominant_hz(x[: SR // 2 - 400]) == pytest.approx(300, abs=5) and lo.max() > 10 * hi[:5].max()
    assert dominant_hz(x[SR // 2 + 400:]) == pytest.approx(700, abs=5)
    x, truncated = load_audio(path, SR, max_duration=1.0, start_s=1.0, end_s=4.0)
    assert truncated and x.size == SR
    from pipeline.extraction.media import MediaError
    with pytest.raises(MediaError, match="empty span"):
        load_audio(path, SR, start_s=2.0, end_s=2.0)


# ---------------------------------------------------------------- manifest

MANIFEST = """dialogue_id,utterance_id,speaker,text,label,split,media_path,start_s,end_s
call1,0,A,hello there,calm,train,rec/call1.avi,0.0,1.0
call1,1,B,why though,angry,train,rec/call1.avi,1.0,2.5
call2,0,A,,calm,dev,audio/c2.wav,,
call3,0,B,text only,angry,test,,,
call3,1,A,gone,calm,test,rec/missing.mp4,,
call3,2,A,late,calm,test,rec/call1.avi,2.0,9.0
call3,3,B,backwards,,test,rec/call1.avi,2.0,1.0
call3,4,B,typo,calm,test,rec/call1.avi,1.O,2.0
"""


@pytest.fixture
def manifest_dir(tmp_path):
    d = tmp_path / "corpus"
    write_clip(d / "rec" / "call1.avi", [(1.0, 300), (1.5, 500), (0.5, 0)], sr=SR)
    write_wav(d / "audio" / "c2.wav", 0.4)
    (d / "manifest.csv").write_text(MANIFEST)
    return d


def test_manifest_rows_statuses_and_cuts(manifest_dir, tmp_path):
    t = prepare("manifest", manifest_dir / "manifest.csv", tmp_path / "u.parquet")
    df = t.to_pandas().set_index(["dialogue_id", "utterance_id"])
    assert label_names(t.schema) == ["angry", "calm"]  # inferred: sorted unique
    assert df.status.tolist() == ["ok", "ok", "ok", "no_media", "missing_media"] + ["bad_times"] * 3
    assert df.label_id.tolist() == [1, 0, 1, 0, 1, 1, -1, 1]  # empty label: unlabelled
    assert df.loc[("call2", 0), "text"] == "" and df.loc[("call2", 0), "media_duration_s"] == pytest.approx(0.4)
    assert pd.isna(df.loc[("call3", 0), "media_path"])
    assert "lasts 3.000 s" in df.loc[("call3", 2), "error"] and "start_s < end_s" in df.loc[("call3", 3), "error"]
    assert "got None, 2.0" in df.loc[("call3", 4), "error"]  # "1.O" is not a number
    r = df.loc[("call1", 1)]
    assert r.media_path == str((manifest_dir / "rec" / "call1.avi").resolve())  # relative to the manifest
    x, _ = load_audio(r.media_path, SR, start_s=r.start_s, end_s=r.end_s)
    assert abs(x.size - 1.5 * SR) <= 2 and dominant_hz(x) == pytest.approx(500, abs=3)
    assert meta(t, "provenance")["root"] == str(manifest_dir / "manifest.csv")
    assert df.source.str.endswith("manifest.csv").all()
    # a Parquet manifest gives the same table; a given label set keeps its order
    pd.read_csv(manifest_dir / "manifest.csv", dtype=str).to_parquet(manifest_dir / "m.parquet")
    t2 = prepare("manifest", manifest_dir / "m.parquet", tmp_path / "u2.parquet", dict(labels=["calm", "angry", "happy"]))
    assert label_names(t2.schema) == ["calm", "angry", "happy"]
    assert t2.column("label_id").to_pylist() == [0, 1, 0, 1, 0, 0, -1, 0]
    assert t2.drop_columns(["label_id", "source"]).equals(t.drop_columns(["label_id", "source"]).replace_schema_metadata(t2.schema.metadata))


def test_manifest_without_dialogues(tmp_path):
    write_wav(tmp_path / "a.wav", 0.3)
    (tmp_path / "m.csv").write_text("utterance_id,speaker,text,label,split,media_path\n"
                                    "clip_07,s1,hi,pos,train,a.wav\nclip_08,s2,ho,neg,test,\n")
    df = prepare("manifest", tmp_path / "m.csv", tmp_path / "u.parquet").to_pandas()
    assert df.dialogue_id.tolist() == ["clip_07", "clip_08"] and df.utterance_id.tolist() == [0, 0]
    assert df.status.tolist() == ["ok", "no_media"]


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.replace(",split,", ",part,"), r"lacks columns \['split'\]"),
    (lambda m: m.replace("call2,0,", "call2,,"), r"utterance_id empty on lines \[4\]"),
    (lambda m: m.replace("call1,1,", "call1,0,"), r"duplicate keys \[\['call1', 0\]\] on lines \[2, 3\]"),
    (lambda m: m.replace(",dev,", ",validation,"), r"unknown splits \['validation'\] on lines \[4\]"),
    (lambda m: m.replace("call3,2,", "call3,two,"), r"integer position.*lines \[7\]"),
    (lambda m: m.replace(",angry,", ",furious,"), r"labels \['furious'\] are not in prepare.labels"),
])
def test_manifest_errors(manifest_dir, tmp_path, edit, match):
    (manifest_dir / "manifest.csv").write_text(edit(MANIFEST))
    labels = ["angry", "calm"] if "furious" in match else None
    with pytest.raises(ValueError, match=match):
        prepare("manifest", manifest_dir / "manifest.csv", tmp_path / "u.parquet", dict(labels=labels))
    assert not (tmp_path / "u.parquet").exists()


def test_stage_entry_reads_params(manifest_dir, tmp_path, monkeypatch):
    import pipeline.common
    import pipeline.prepare

    params = tmp_path / "params.yaml"
    params.write_text(f"prepare:\n  dataset: manifest\n  root: {manifest_dir / 'manifest.csv'}\n"
                      "  labels: [calm, angry]\n")
    monkeypatch.setattr(pipeline.common, "PARAMS_FILE", params)
    monkeypatch.setattr("sys.argv", ["prepare", "--out", str(tmp_path / "u.parquet")])
    pipeline.prepare.main()
    import pyarrow.parquet as pq
    assert label_names(pq.read_schema(tmp_path / "u.parquet")) == ["calm", "angry"]
    params.write_text("prepare:\n  dataset: demo\n  root: data/demo\n  protocol: 4\n")
    with pytest.raises(ValueError, match=r"unknown prepare params \['protocol'\]"):
        pipeline.prepare.main()
