"""predictions.csv (predict's and evaluate's) cannot inject spreadsheet formulas; the page and Parquet keep the text."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from pipeline.common import csv_safe

EVIL = ["=HYPERLINK(\"http://x\",\"click\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "fine", "a=b"]


def test_csv_safe_prefixes_formula_starts_only():
    df = pd.DataFrame({"text": EVIL, "n": np.arange(len(EVIL)) - 3, "x": [-0.5] * len(EVIL)})
    got = csv_safe(df)
    assert list(got.text) == ["'" + v for v in EVIL[:5]] + ["fine", "a=b"]
    assert list(got.n) == list(df.n) and list(got.x) == list(df.x)  # numbers (negative ones too) are untouched
    assert list(df.text) == EVIL  # the caller's frame is not changed


def test_evaluate_predictions_csv_is_safe(tmp_path):
    from pipeline.evaluate import write_predictions

    rows = pd.DataFrame({"dialogue_id": ["=cmd|' /C calc'!A0", "d1"], "utterance_id": [0, 1],
                         "actual": ["-neg", "joy"], "predicted": ["@x", "+pos"]})
    write_predictions(rows, tmp_path / "predictions.csv")
    back = pd.read_csv(tmp_path / "predictions.csv")
    assert list(back.dialogue_id) == ["'=cmd|' /C calc'!A0", "d1"]
    assert list(back.actual) == ["'-neg", "joy"] and list(back.predicted) == ["'@x", "'+pos"]
    assert list(back.utterance_id) == [0, 1]
    from pipeline.common import csv_unsafe

    assert csv_unsafe(back).equals(rows)  # what the report reads back: the original ids and labels


def test_predict_csv_is_safe_and_page_keeps_the_text(tmp_path):
    import html

    from pipeline.predict.outputs import write_outputs
    from mediagen import write_clip

    video = write_clip(tmp_path / "v.mp4", [(1.0, 0)])
    df = pd.DataFrame([dict(utterance=i, start_s=0.1 * i, end_s=0.1 * i + 0.1, speaker="=Boss" if i == 0 else "A",
                            text=t, predicted="joy", confidence=0.9, p_joy=0.9, modalities="t", status="ok", error="")
                       for i, t in enumerate(EVIL)])
    out = write_outputs(tmp_path / "o", df, ["joy"], video, 1.0, {})
    back = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(back.text) == ["'" + v for v in EVIL[:5]] + ["fine", "a=b"] and back.speaker[0] == "'=Boss"
    assert list(back.confidence) == [0.9] * len(EVIL)
    page = (out / "index.html").read_text()
    assert html.escape(EVIL[0]) in page and ">'=" not in page and html.escape("=Boss") in page
