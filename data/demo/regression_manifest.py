"""Write ``data/demo/regression.csv``: the demo corpus as a manifest with numeric valence/arousal targets.

The demo has categorical emotions only, so each utterance's targets come from a fixed table per emotion
(below) — values chosen for this project to place the emotions on the valence/arousal plane in the usual
circumplex arrangement, not an annotation of anything. It exists so the regression path (``prepare.targets``,
the DialogueTRM AVEC recipe's ``--demo`` variant, CI) runs end to end on the committed clips; numbers from it
say nothing about any real corpus. Run from the repo root: ``python data/demo/regression_manifest.py``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "regression.csv"
SPLITS = {"train": ("train_sent_emo.csv", "train_splits"), "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
          "test": ("test_sent_emo.csv", "output_repeated_splits_test")}
# (valence, arousal) per emotion: our choice (see the docstring)
VA = {"joy": (0.8, 0.5), "surprise": (0.3, 0.8), "neutral": (0.0, -0.2), "sadness": (-0.7, -0.5),
      "anger": (-0.6, 0.8), "disgust": (-0.6, 0.2), "fear": (-0.7, 0.6)}


def build() -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dialogue_id", "utterance_id", "speaker", "text", "label", "split", "media_path", "valence",
                "arousal"])
    for split, (name, folder) in SPLITS.items():
        with open(HERE / name, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                d, u = row["Dialogue_ID"], row["Utterance_ID"]
                v, a = VA[row["Emotion"]]
                w.writerow([f"{split}_dia{d}", u, row["Speaker"], row["Utterance"], "", split,
                            f"{folder}/dia{d}_utt{u}.mp4", v, a])
    return buf.getvalue()


if __name__ == "__main__":
    OUT.write_text(build(), encoding="utf-8")
    print(f"wrote {OUT}")
