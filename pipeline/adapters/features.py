"""Pre-extracted feature pickles (``prepare.dataset: features``, ``prepare.root``: the ``.pkl`` file).

Most published ERC numbers come from a few shared pickles; this adapter turns them into our utterance table, and
the extract stages then take the pickle's vectors instead of computing their own (``pipeline.extraction.imported``), so every
model and the report run on exactly those inputs. Layouts (``prepare.features_format``, ``auto`` detects them):

* ``dialoguernn`` — DialogueRNN / MMGCN / DialogueGCN: a tuple ``(videoIDs, videoSpeakers, videoLabels, videoText,
  videoAudio, videoVisual, videoSentence, trainVid, testVid[, extra])`` of dicts keyed by dialogue id
  (``IEMOCAP_features.pkl``: speakers ``'M'``/``'F'``, 6 classes hap sad neu ang exc fru;
  ``MELD_features_raw1.pkl``: one-hot speaker lists, 7 emotions, the tenth item the 3-class sentiment labels).
  A 9-tuple without ``videoVisual`` (DialogueRNN's MELD file) has no visual vectors.
* ``ada2i`` — Ada2I's official files (leson502/ADA2I ``data/<corpus>/*.pkl``): a dict with ``trainVid``,
  ``testVid`` (and ``valVid`` for MOSEI), ``speaker`` or ``speakers``, ``label`` (MOSEI: a dict of label sets,
  ``prepare.features_label_key`` picks one), ``text``, ``audio``, ``visual``, ``sentence``.

Every file is read with ``pipeline.extraction.safe_pickle`` (numpy arrays and builtin containers only; anything else is
refused). Splits: the pickle's train/test (and valid when it has one); without a validation set, dev is a seeded
``prepare.dev_fraction`` of the training dialogues (the official loaders take 10 % of the shuffled train ids:
set ``dev_fraction: 0.1``; the test split is never touched). Labels are class indices; their names are
``prepare.labels`` or, when null, IEMOCAP's six (6 classes) / MELD's seven (7 classes). The table's provenance
records the pickle's SHA-256, so a changed file re-runs every stage after ``prepare``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.adapters import Prepared, rel_path
from pipeline.common import file_digest
from pipeline.extraction.feature_pickles import CONTENT_ERRORS, MODALITY_KEYS, FeaturePickleError, normalise, per_dialogue
from pipeline.extraction.safe_pickle import safe_load
from pipeline.schema import EMOTIONS, SPLITS

log = logging.getLogger("merc.prepare.features")

# Label orders of the public loaders: IEMOCAP {'hap':0,'sad':1,'neu':2,'ang':3,'exc':4,'fru':5}; MELD's seven.
IEMOCAP6 = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
DEFAULT_LABELS = {6: IEMOCAP6, 7: list(EMOTIONS)}


def _speaker(s) -> str:
    if isinstance(s, (str, bytes)):
        return s.decode("utf-8", "replace") if isinstance(s, bytes) else s
    arr = np.asarray(s, dtype=np.float64)  # a one-hot vector (MELD) or a speaker index
    if arr.ndim == 1 and arr.size > 1:
        return f"speaker{int(arr.argmax())}"
    if arr.size != 1 or not np.isfinite(arr).all():
        raise ValueError(f"speaker {s!r} is neither a name, an index nor a one-hot vector")
    return f"speaker{int(arr.reshape(-1)[0])}"


def _labels(value) -> np.ndarray:
    """A dialogue's labels as class indices; non-integer, negative or non-finite values are refused (a ``-1``
    would silently pick the last class name)."""
    arr = np.asarray(value).reshape(-1)
    if arr.dtype.kind not in "iub" and not (arr.dtype.kind == "f" and np.isfinite(arr).all()
                                             and (arr == np.round(arr)).all()):
        raise ValueError(f"labels {arr[:5].tolist()} are not class indices (whole numbers)")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"labels {arr[arr < 0][:5].tolist()} are negative: class indices start at 0")
    return arr


def load(root: str | Path, params: dict, adapter: str = "features") -> Prepared:
    path = Path(root)
    if not path.is_file():
        raise FeaturePickleError(f"prepare.root={root}: no such file (point it at the feature .pkl)")
    try:
        data = normalise(safe_load(path), params.get("features_format") or "auto", params.get("features_label_key"))
    except FeaturePickleError as e:
        raise FeaturePickleError(f"{path}: {e}") from None
    splits = {"test": data["test"]}
    if data["dev"] is not None:
        splits.update(train=data["train"], dev=data["dev"])
    else:
        train = sorted(map(str, data["train"]))
        rng = np.random.default_rng(int(params.get("seed") or 0))
        n_dev = int(round(len(train) * float(params["dev_fraction"])))
        dev = set(rng.permutation(train)[:n_dev].tolist()) if n_dev else set()
        splits.update(train=[d for d in data["train"] if str(d) not in dev],
                      dev=[d for d in data["train"] if str(d) in dev])
    rows, dims, classes = [], {}, set()
    for split in SPLITS:
        for vid in splits[split]:
            try:
                rows += _dialogue_rows(data, vid, split, dims, classes, path, adapter)
            except FeaturePickleError:
                raise
            except CONTENT_ERRORS as e:  # a value of the wrong kind: name the dialogue, not a traceback
                raise FeaturePickleError(f"{path}: dialogue {vid!r}: {type(e).__name__}: {str(e)[:200]}") from None
    n_classes = max(classes) + 1 if classes else 0
    names = [str(x) for x in params["labels"]] if params.get("labels") else DEFAULT_LABELS.get(n_classes)
    if names is None or len(names) < n_classes:
        raise FeaturePickleError(f"{path}: labels go up to class {n_classes - 1}; set prepare.labels to the "
                                 f"{n_classes} class names in index order")
    df = pd.DataFrame(rows)
    df["label"] = [names[i] for i in df.label]
    counts = {f"{s}_utterances": int((df.split == s).sum()) for s in SPLITS}
    counts.update(features_sha256=file_digest(path), features_dims=dims, features_file=rel_path(path))
    log.info("features %s: %d dialogues, %d utterances, widths %s", path, df.dialogue_id.nunique(), len(df), dims)
    return Prepared(df, names, counts)


def _dialogue_rows(data: dict, vid, split: str, dims: dict, classes: set, path: Path, adapter: str) -> list[dict]:
    """One dialogue's utterance rows, its vectors' shapes checked against its labels and the other dialogues."""
    labels = _labels(per_dialogue(data, "label", vid, path))
    n = len(labels)
    for m in MODALITY_KEYS:
        if data[m] is not None:
            vecs = np.asarray(per_dialogue(data, m, vid, path), dtype=np.float32)
            if vecs.ndim != 2 or len(vecs) != n:
                raise FeaturePickleError(f"{path}: dialogue {vid}: {MODALITY_KEYS[m]} vectors have shape "
                                         f"{vecs.shape}, expected ({n}, dim)")
            if dims.setdefault(m, vecs.shape[1]) != vecs.shape[1]:
                raise FeaturePickleError(f"{path}: dialogue {vid}: {MODALITY_KEYS[m]} width {vecs.shape[1]} "
                                         f"differs from {dims[m]}")
    speakers = per_dialogue(data, "speaker", vid, path) if data["speaker"] is not None else ["speaker0"] * n
    sentences = per_dialogue(data, "sentence", vid, path) if data["sentence"] is not None else [""] * n
    if len(speakers) != n or len(sentences) != n:
        raise FeaturePickleError(f"{path}: dialogue {vid}: {n} labels but {len(speakers)} speakers and "
                                 f"{len(sentences)} sentences")
    rows = []
    for i in range(n):
        classes.add(int(labels[i]))
        text = sentences[i].decode("utf-8", "replace") if isinstance(sentences[i], bytes) else str(sentences[i])
        rows.append(dict(dialogue_id=str(vid), utterance_id=i, speaker=_speaker(speakers[i]), text=text,
                         label=int(labels[i]), split=split, media_path=None, start_s=None, end_s=None,
                         audio_path=None, annot_duration_s=None, media_duration_s=None, status="ok", error=None,
                         source=f"adapter={adapter} file={path.name}"))
    return rows


def synthetic(n_dialogues: int = 48, dims: tuple[int, int, int] = (10, 6, 4), n_classes: int = 6, seed: int = 0):
    """Per-dialogue dicts shaped like the public pickles (text vectors carry the label, so it is learnable),
    and the train / test dialogue ids. For trying the import path and for tests — not a corpus."""
    rng = np.random.default_rng(seed)
    d: dict[str, dict] = {k: {} for k in ("ids", "spk", "lab", "t", "a", "v", "sent")}
    for k in range(n_dialogues):
        vid = f"Ses0{k % 5 + 1}_dia{k}"
        n = int(rng.integers(3, 7))
        lab = rng.integers(0, n_classes, n)
        d["ids"][vid] = [f"{vid}_u{i}" for i in range(n)]
        d["spk"][vid] = list(rng.choice(["M", "F"], n))
        d["lab"][vid] = lab.tolist()
        d["t"][vid] = (np.eye(n_classes, dims[0])[lab] * 3 + rng.standard_normal((n, dims[0])) * 0.3).astype(np.float32)
        d["a"][vid] = rng.standard_normal((n, dims[1])).astype(np.float32)
        d["v"][vid] = [rng.standard_normal(dims[2]).astype(np.float32) for _ in range(n)]  # lists work too
        d["sent"][vid] = [f"utterance {i} of {vid}" for i in range(n)]
    vids = list(d["ids"])
    return d, vids[: n_dialogues * 3 // 4], vids[n_dialogues * 3 // 4 :]


def main() -> None:
    import argparse
    import pickle

    ap = argparse.ArgumentParser(description="Write a synthetic feature pickle in the DialogueRNN/IEMOCAP layout "
                                             "(to try prepare.dataset=features without the real file)")
    ap.add_argument("out")
    ap.add_argument("--dialogues", type=int, default=48)
    args = ap.parse_args()
    d, train, test = synthetic(args.dialogues)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pickle.dumps((d["ids"], d["spk"], d["lab"], d["t"], d["a"], d["v"], d["sent"], set(train),
                                  set(test)), protocol=2))
    print(out)


if __name__ == "__main__":
    main()
