"""An audio-only corpus described by a manifest runs prepare → extract_audio → train → evaluate unchanged."""
import json

import numpy as np
import soundfile as sf

from pipeline.common import read_features
from pipeline.evaluate import evaluate
from pipeline.extraction.audio import OpenSmileExtractor
from pipeline.extraction.runners import run_sharded
from pipeline.prepare import prepare
from pipeline.train import train


def tone(pitch, loud, seed, sr=16000):
    """A voiced-like harmonic tone with vibrato: 'calm' is low and soft, 'excited' high and loud."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * rng.uniform(0.8, 1.2))) / sr
    f0 = pitch * (1 + 0.03 * np.sin(2 * np.pi * 5 * t)) * rng.uniform(0.95, 1.05)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (loud * x / np.abs(x).max() + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


def test_manifest_audio_only_corpus_trains(tmp_path):
    rows = ["utterance_id,speaker,text,label,split,media_path"]
    n, seed = {"train": 10, "dev": 4, "test": 4}, 0
    for split, k in n.items():
        for i in range(k):
            for label, (pitch, loud) in {"calm": (110, 0.1), "excited": (260, 0.6)}.items():
                name = f"{split}_{label}_{i}.wav"
                seed += 1
                sf.write(tmp_path / name, tone(pitch, loud, seed), 16000)
                rows.append(f"{name[:-4]},spk{i % 3},,{label},{split},{name}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")

    utt = prepare("manifest", tmp_path / "manifest.csv", tmp_path / "u.parquet")
    assert json.loads(utt.schema.metadata[b"labels"]) == ["calm", "excited"]
    assert utt.num_rows == 36 and len(set(utt.column("dialogue_id").to_pylist())) == 36  # one dialogue per clip

    audio = run_sharded(OpenSmileExtractor("eGeMAPSv02"), tmp_path / "u.parquet", tmp_path / "a", config={},
                        shard_size=16)
    assert set(read_features(audio).column("status").to_pylist()) == {"ok"}
    params = {"model": "concat_mlp", "model_params": {"concat_mlp": {"hidden": 16}},
              "train": dict(modalities=["a"], seed=0, epochs=15, batch_size=4, lr=3e-3, weight_decay=0.01,
                            grad_clip=1.0, patience=15, weighted_loss=True)}
    train(params, tmp_path / "u.parquet", tmp_path / "m.pt", tmp_path / "live", {"a": audio})
    m = evaluate(tmp_path / "m.pt", tmp_path / "u.parquet", tmp_path / "r", feature_dirs={"a": audio})
    assert set(m["per_class"]) == {"calm", "excited"} and m["n"] == 8
    assert m["accuracy"] >= 0.875  # pitch and loudness separate the two classes
