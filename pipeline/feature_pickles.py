"""The published ERC feature pickles' layouts, read safely: shared by ``prepare`` (``pipeline.adapters.features``,
the utterance table) and the extract stages (``pipeline.imported``, the vectors), so neither reaches into the other.

Layouts: DialogueRNN/MMGCN tuples and Ada2I's dict (see ``pipeline/adapters/features.py``); every file is read
with ``pipeline.safe_pickle`` (numpy arrays and builtin containers only).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.safe_pickle import safe_load

MODALITY_KEYS = {"t": "text", "a": "audio", "v": "visual"}


class FeaturePickleError(ValueError):
    """The file is not one of the known layouts (or is inconsistent): the message says what is wrong."""


def normalise(obj, fmt: str = "auto", label_key: str | None = None) -> dict:
    """Any known layout → ``{"ids", "speaker", "label", "sentence", "t", "a", "v", "train", "test", "dev"}``
    (per-dialogue dicts; a modality or ``dev`` is None when the file has none)."""
    if fmt == "auto":
        fmt = "ada2i" if isinstance(obj, dict) else "dialoguernn" if isinstance(obj, (tuple, list)) else "?"
    if fmt == "dialoguernn":
        if not isinstance(obj, (tuple, list)) or len(obj) not in (9, 10):
            raise FeaturePickleError("a DialogueRNN/MMGCN pickle is a tuple of 9 or 10 items (videoIDs, "
                                     "videoSpeakers, videoLabels, videoText, videoAudio[, videoVisual], "
                                     f"videoSentence, trainVid, testVid[, …]); got {type(obj).__name__}")
        items = list(obj)
        # with visual (IEMOCAP_features.pkl: 9 items, MMGCN's MELD_features_raw1.pkl: 10) the 7th item holds the
        # sentences; without (DialogueRNN's MELD_features_raw.pkl: 9 items) it is trainVid
        has_visual = _is_sentences(items[6])
        if has_visual:
            ids, spk, lab, t, a, v, sent, train, test = items[:9]
        else:
            ids, spk, lab, t, a, sent, train, test = items[:8]
            v = None
        return dict(ids=ids, speaker=spk, label=lab, sentence=sent, t=t, a=a, v=v, train=list(train),
                    test=list(test), dev=None)
    if fmt == "ada2i":
        if not isinstance(obj, dict) or "trainVid" not in obj or "testVid" not in obj:
            raise FeaturePickleError("an Ada2I pickle is a dict with trainVid, testVid, speaker(s), label, text, "
                                     f"audio, visual, sentence; got keys {sorted(obj)[:12] if isinstance(obj, dict) else type(obj).__name__}")
        label = obj.get("label")
        if isinstance(label, dict) and label and all(isinstance(v, dict) for v in label.values()):
            if label_key not in label:  # MOSEI: {"2class": {...}, "7class": {...}}
                raise FeaturePickleError(f"this pickle has several label sets {sorted(label)}: set "
                                         "prepare.features_label_key to one of them")
            label = label[label_key]
        spk = obj.get("speakers", obj.get("speaker"))
        return dict(ids=None, speaker=spk, label=label, sentence=obj.get("sentence"),
                    t=obj.get("text"), a=obj.get("audio"), v=obj.get("visual"), train=list(obj["trainVid"]),
                    test=list(obj["testVid"]), dev=list(obj["valVid"]) if obj.get("valVid") is not None else None)
    raise FeaturePickleError(f"prepare.features_format must be auto, dialoguernn or ada2i; got {fmt!r}")


def _is_sentences(d) -> bool:
    """True when a per-dialogue dict holds strings (videoSentence), not vectors."""
    if not isinstance(d, dict) or not d:
        return False
    first = next(iter(d.values()))
    return len(first) > 0 and isinstance(first[0], str)


def vectors(path: str | Path, modality: str, fmt: str = "auto", label_key: str | None = None) -> dict:
    """``(dialogue_id, utterance_id) → float32 vector`` of one modality of the pickle (empty if it has none)."""
    data = normalise(safe_load(path), fmt, label_key)
    if data[modality] is None:
        return {}
    return {(str(vid), i): np.asarray(v, dtype=np.float32) for vid, seq in data[modality].items()
            for i, v in enumerate(seq)}
