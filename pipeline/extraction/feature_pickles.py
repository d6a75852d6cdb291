"""The published ERC feature pickles' layouts, read safely: shared by ``prepare`` (``pipeline.adapters.features``,
the utterance table) and the extract stages (``pipeline.extraction.imported``, the vectors), so neither reaches into the other.

Layouts: DialogueRNN/MMGCN tuples and Ada2I's dict (see ``pipeline/adapters/features.py``); every file is read
with ``pipeline.extraction.safe_pickle`` (numpy arrays and builtin containers only).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.extraction.safe_pickle import safe_load

MODALITY_KEYS = {"t": "text", "a": "audio", "v": "visual"}
PER_DIALOGUE = {"label": "labels", "speaker": "speakers", "sentence": "sentences", **MODALITY_KEYS}
# what the file's content may raise when it is not what the layout says (a list where a dict belongs, a string
# where a number belongs …): turned into a FeaturePickleError naming the dialogue, never a traceback
CONTENT_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError)


class FeaturePickleError(UserError):
    """The file is not one of the known layouts (or is inconsistent): one line saying what is wrong and where."""


def per_dialogue(data: dict, key: str, vid, path="the pickle"):
    """``data[key][vid]`` (a dialogue's labels, speakers, sentences or one modality's vectors), or a
    ``FeaturePickleError`` naming the dialogue and what it lacks."""
    table = data[key]
    try:
        return table[vid]
    except CONTENT_ERRORS:
        have = sorted(PER_DIALOGUE[k] for k in PER_DIALOGUE if data.get(k) is not None)
        raise FeaturePickleError(f"{path}: dialogue {vid!r} is listed in the splits but has no {PER_DIALOGUE[key]} "
                                 f"entry: every dialogue needs one in each of {have}") from None


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
        return _checked(dict(ids=ids, speaker=spk, label=lab, sentence=sent, t=t, a=a, v=v, train=train,
                             test=test, dev=None))
    if fmt == "ada2i":
        if not isinstance(obj, dict) or "trainVid" not in obj or "testVid" not in obj:
            raise FeaturePickleError("an Ada2I pickle is a dict with trainVid, testVid, speaker(s), label, text, "
                                     f"audio, visual, sentence; got keys {sorted(obj)[:12] if isinstance(obj, dict) else type(obj).__name__}")
        label = obj.get("label")
        if label is None or (isinstance(label, dict) and not label):
            raise FeaturePickleError("this Ada2I pickle has no labels (no 'label' key, or it is empty): the utterance "
                                     "table needs each dialogue's labels; use the file with its label dict")
        if isinstance(label, dict) and label and all(isinstance(v, dict) for v in label.values()):
            if label_key not in label:  # MOSEI: {"2class": {...}, "7class": {...}}
                raise FeaturePickleError(f"this pickle has several label sets {sorted(label)}: set "
                                         "prepare.features_label_key to one of them")
            label = label[label_key]
        spk = obj.get("speakers", obj.get("speaker"))
        return _checked(dict(ids=None, speaker=spk, label=label, sentence=obj.get("sentence"),
                             t=obj.get("text"), a=obj.get("audio"), v=obj.get("visual"), train=obj["trainVid"],
                             test=obj["testVid"], dev=obj.get("valVid")))
    raise FeaturePickleError(f"prepare.features_format must be auto, dialoguernn or ada2i; got {fmt!r}")


def _checked(data: dict) -> dict:
    """The normalised layout with its containers checked: per-dialogue tables are dicts (or None), splits are
    lists of dialogue ids; anything else is a ``FeaturePickleError`` naming the item."""
    for key, what in PER_DIALOGUE.items():
        if data[key] is not None and not isinstance(data[key], dict):
            raise FeaturePickleError(f"the {what} item is a {type(data[key]).__name__}, expected a dict keyed by "
                                     "dialogue id")
    if data["label"] is None:
        raise FeaturePickleError("the pickle has no labels: every layout needs a dict of each dialogue's labels")
    for split in ("train", "test", "dev"):
        ids = data[split]
        if ids is None:
            continue
        if isinstance(ids, (str, bytes, dict)) or not isinstance(ids, (list, tuple, set, frozenset, np.ndarray)):
            raise FeaturePickleError(f"the {split} split is a {type(ids).__name__}, expected a list or set of "
                                     "dialogue ids")
        data[split] = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
        odd = [v for v in data[split] if not isinstance(v, (str, int, np.integer))][:3]
        if odd:
            raise FeaturePickleError(f"the {split} split holds {odd!r}: dialogue ids must be strings or integers")
    return data


def _is_sentences(d) -> bool:
    """True when a per-dialogue dict holds strings (videoSentence), not vectors."""
    if not isinstance(d, dict) or not d:
        return False
    first = next(iter(d.values()))
    try:
        return len(first) > 0 and isinstance(first[0], str)
    except CONTENT_ERRORS:
        return False


def vectors(path: str | Path, modality: str, fmt: str = "auto", label_key: str | None = None) -> dict:
    """``(dialogue_id, utterance_id) → float32 vector`` of one modality of the pickle (empty if it has none)."""
    try:
        data = normalise(safe_load(path), fmt, label_key)
    except FeaturePickleError as e:
        raise FeaturePickleError(f"{path}: {e}") from None
    if data[modality] is None:
        return {}
    out = {}
    for vid, seq in data[modality].items():
        try:
            for i, v in enumerate(seq):
                out[(str(vid), i)] = np.asarray(v, dtype=np.float32)
        except CONTENT_ERRORS as e:
            raise FeaturePickleError(f"{path}: dialogue {vid!r}: its {MODALITY_KEYS[modality]} vectors are not "
                                     f"numbers ({type(e).__name__}: {str(e)[:120]})") from None
    return out
