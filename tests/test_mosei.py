"""CMU-MOSEI adapter on a fixture tree in the raw release's layout, with planted defects."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mediagen import write_clip
from pipeline.adapters.mosei import MoseiError, label_of
from pipeline.prepare import prepare

# video → [(segment, start, end, text, score, split)]  (score None: a transcript segment nobody labelled)
VIDEOS = {
    "vidA": [("0", 0.0, 1.0, "I loved it", 2.6, "train"), ("1", 1.2, 2.0, "meh", -0.4, "train"),
             ("2", 2.1, 2.9, "nobody rated me", None, "train")],
    "vidB": [("0", 0.0, 0.8, "awful film", -2.2, "valid"), ("1", 0.9, 9.5, "runs past the end", 0.0, "valid")],
    "vidC": [("0", 0.0, 0.9, "fine", 0.33, "test"), ("1", 1.0, 1.8, "great", 3.0, "test")],
    "vidD": [("0", 0.0, 1.0, "video lost", -1.0, "test")],  # its full video is missing
}


def mosei_tree(root, csd=False):
    (root / "Raw/Transcript/Segmented/Combined").mkdir(parents=True)
    for vid, segs in VIDEOS.items():
        (root / f"Raw/Transcript/Segmented/Combined/{vid}.txt").write_text(
            "".join(f"{vid}___{s}___{a}___{b}___{t}\n" for s, a, b, t, _, _ in segs))
    for vid, secs in {"vidA": 3.0, "vidB": 2.0, "vidC": 2.0}.items():  # vidB's second segment ends at 9.5 s
        write_clip(root / f"Raw/Videos/Full/Combined/{vid}.mp4", [(secs, 440)])
    write_clip(root / "Raw/Videos/Segmented/Combined/vidC_1.mp4", [(0.8, 300)])  # a pre-cut segment
    labelled = [(vid, s, t, sc, sp) for vid, segs in VIDEOS.items() for s, _, _, t, sc, sp in segs if sc is not None]
    if not csd:
        pd.DataFrame([dict(video_id=v, clip_id=s, text=t, label=sc, label_T=sc, mode=sp)
                      for v, s, t, sc, sp in labelled]).to_csv(root / "label.csv", index=False)
        return root
    import h5py

    with h5py.File(root / "CMU_MOSEI_Labels.csd", "w") as f:
        data = f.create_group("All Labels").create_group("data")
        for vid, segs in VIDEOS.items():
            rated = [s for s in segs if s[4] is not None]
            g = data.create_group(vid)
            g["features"] = np.array([[s[4]] + [0.0] * 6 for s in rated], dtype=np.float32)
            g["intervals"] = np.array([[s[1], s[2]] for s in rated])
    folds = {"train": ["vidA"], "valid": ["vidB"], "test": ["vidC", "vidD"]}
    (root / "folds.json").write_text(json.dumps(folds))
    return root


@pytest.mark.parametrize("csd", [False, True], ids=["label_csv", "sdk_csd"])
def test_mosei_fixture(tmp_path, csd):
    root = mosei_tree(tmp_path / "CMU_MOSEI", csd)
    t = prepare("mosei", root, tmp_path / "u.parquet", {"target": "sentiment2"})
    rows = {(r["dialogue_id"], r["utterance_id"]): r for r in t.to_pylist()}
    assert len(rows) == 7  # 8 transcript segments, one unlabelled
    prov = json.loads(t.schema.metadata[b"provenance"])
    assert prov["counts"]["unlabelled_segments"] == 1
    assert prov["counts"]["train_utterances"] == 2 and prov["counts"]["dev_utterances"] == 2
    assert json.loads(t.schema.metadata[b"labels"]) == ["negative", "non-negative"]
    a0, a1 = rows[("vidA", 0)], rows[("vidA", 1)]
    assert (a0["label"], a1["label"]) == ("non-negative", "negative") and a0["text"] == "I loved it"
    assert a1["media_path"].endswith("Full/Combined/vidA.mp4") and (a1["start_s"], a1["end_s"]) == (1.2, 2.0)
    assert a0["status"] == "ok" and a0["speaker"] == "vidA" and a0["split"] == "train"
    assert rows[("vidB", 1)]["status"] == "bad_times" and rows[("vidB", 1)]["label"] == "non-negative"  # 0 ≥ 0
    assert rows[("vidB", 0)]["split"] == "dev"
    c1 = rows[("vidC", 1)]
    assert c1["media_path"].endswith("Segmented/Combined/vidC_1.mp4") and c1["start_s"] is None
    assert rows[("vidD", 0)]["status"] == "missing_media"


def test_mosei_targets_and_errors(tmp_path):
    assert [label_of(s, "sentiment7") for s in (-3.4, -2.5, -0.4, 0.49, 0.51, 2.6, 3.0)] == \
        ["-3", "-2", "0", "0", "+1", "+3", "+3"]
    assert [label_of(s, "sentiment2") for s in (-0.01, 0.0, 1.0)] == ["negative", "non-negative", "non-negative"]
    root = mosei_tree(tmp_path / "m")
    t = prepare("mosei", root, tmp_path / "u.parquet", {"target": "sentiment7"})
    assert {r["label"] for r in t.to_pylist()} == {"+3", "0", "-2", "-1"}  # 2.6→+3, -0.4→0, 0.33→0, …
    with pytest.raises(MoseiError, match="sentiment2, sentiment7 or sentiment"):
        prepare("mosei", root, tmp_path / "u.parquet", {"target": "emotion"})
    (root / "label.csv").unlink()
    with pytest.raises(MoseiError, match="neither label.csv"):
        prepare("mosei", root, tmp_path / "u.parquet", {"target": "sentiment2"})
