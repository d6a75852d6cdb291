"""Utterance table + feature tables → dialogue tensors for training and evaluation.

Meets the extract stages only at their Parquet schema (``pipeline.schema``): a modality counts as present
for an utterance when its feature row has ``status == 'ok'`` and a usable vector. An ``ok`` row whose vector
holds NaN/inf or a value beyond ``FEATURE_ABS_LIMIT`` is counted as status ``nonfinite`` and treated as absent:
one such row would otherwise turn the standardiser's statistics, and from there every weight, into NaN.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.common import key_index, read_features, read_utterances
from pipeline.errors import MissingFileError, UserError
from pipeline.schema import FEATURE_ABS_LIMIT, feature_matrix, nonfinite_rows, target_names

log = logging.getLogger("merc.dataset")
FEATURE_DIRS = {"t": "data/features/text", "a": "data/features/audio", "v": "data/features/visual"}
# Standardiser: a dimension whose train std is below STD_FLOOR is only centred (scale 1, as scikit-learn's
# StandardScaler does for constant features): dividing by a ~0 std would blow tiny dev/test differences up to
# huge z. Not in any paper: our choice. Z_CLIP bounds |z| so one extreme dev/test vector cannot saturate a model;
# 10 standard deviations leaves every real value of a roughly normal feature untouched.
STD_FLOOR = 1e-6
Z_CLIP = 10.0
NONFINITE = "nonfinite"  # the status load_corpus gives an ``ok`` row whose vector is unusable


@dataclass
class Corpus:
    """Row-aligned arrays for every labelled utterance, plus per-modality status counts."""

    utterances: pa.Table
    feats: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    status_counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    # Frame mode (``attach_sequences``): per modality, one [L_i, F] float32 array per row (L_i = 0 when absent)
    seqs: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        """Regression target names ([] for a classification corpus)."""
        return target_names(self.utterances.schema)

    @property
    def task(self) -> str:
        return "regression" if self.targets else "classification"

    def target_matrix(self) -> np.ndarray:
        """``[rows, K]`` float32 regression targets (every kept row has them; ``load_corpus`` drops the others)."""
        col = self.utterances.column("targets").combine_chunks()
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, len(self.targets))

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.feats.items()}

    def split_rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.utterances.column("split").to_pylist()) == split)


def load_corpus(utterances_path: str | Path, modalities: list[str], feature_dirs: dict[str, str] | None = None) -> Corpus:
    """Join the requested modalities' features onto the labelled utterances (missing rows → absent).

    ``ok`` rows with a non-finite (or beyond ``FEATURE_ABS_LIMIT``) value are absent too, with status
    ``nonfinite`` in ``status_counts`` (so they reach ``metrics.json``'s ``items``)."""
    feature_dirs = {**FEATURE_DIRS, **(feature_dirs or {})}
    if not Path(utterances_path).is_file():
        raise MissingFileError(f"no utterance table at {utterances_path}: run the prepare stage first "
                               "(`dvc repro prepare`)")
    utt = read_utterances(utterances_path)
    if target_names(utt.schema):  # regression: a row is labelled when its targets are set
        labelled = np.asarray(utt.column("targets").is_valid().to_numpy(zero_copy_only=False))
    else:
        labelled = np.asarray(utt.column("label_id").to_numpy()) >= 0
    splits = np.asarray(utt.column("split").to_pylist())
    skipped = {s: int((~labelled & (splits == s)).sum()) for s in ("train", "dev", "test")}
    utt = utt.filter(pa.array(labelled))
    idx = key_index(utt)
    utt_split = utt.column("split").to_pylist()
    feats, present, status_counts = {}, {}, {}
    for m in modalities:
        if m not in feature_dirs:
            raise UserError(f"unknown modality {m!r}; use any of {sorted(FEATURE_DIRS)}")
        try:
            table = read_features(feature_dirs[m])
        except FileNotFoundError as e:
            raise MissingFileError(str(e)) from e
        mat = feature_matrix(table)
        x = np.zeros((utt.num_rows, mat.shape[1]), dtype=np.float32)
        ok = np.zeros(utt.num_rows, dtype=bool)
        status = table.column("status").to_pylist()
        bad = nonfinite_rows(mat) & (np.asarray(status) == "ok")
        for r in np.flatnonzero(bad):
            status[r] = NONFINITE
        if bad.any():
            log.warning("%s features: %d ok row(s) hold NaN/inf or |x| > %.0e (e.g. %s): treated as absent, "
                        "counted as %r", m, int(bad.sum()), FEATURE_ABS_LIMIT,
                        (table.column("dialogue_id")[int(np.flatnonzero(bad)[0])].as_py(),
                         table.column("utterance_id")[int(np.flatnonzero(bad)[0])].as_py()), NONFINITE)
        keys = list(zip(table.column("dialogue_id").to_pylist(), table.column("utterance_id").to_pylist()))
        for r, key in enumerate(keys):
            i = idx.get(key)
            if i is not None and status[r] == "ok":
                x[i], ok[i] = mat[r], True
        feats[m], present[m] = x, ok
        st = np.asarray(status)
        row_split = np.asarray([utt_split[idx[k]] if k in idx else "unlabelled" for k in keys])
        status_counts[m] = {s: {k: int(((st == k) & (row_split == s)).sum()) for k in sorted(set(status))}
                            for s in ("train", "dev", "test")}
    return Corpus(utt, feats, present, status_counts, skipped)


class Standardizer:
    """Per-dimension z-score fitted on the training rows where the modality is present.

    Fitted and applied in float64 (a float32 variance overflows from |x| ≈ 1.8e19); a dimension with train
    std below ``STD_FLOOR`` keeps scale 1; z is clipped to ±``Z_CLIP``. Stats are float64 arrays (tensors in
    a checkpoint: ``state``/``from_state``)."""

    def __init__(self, mean: dict[str, np.ndarray] | None = None, std: dict[str, np.ndarray] | None = None):
        as64 = lambda d: {m: np.asarray(v, dtype=np.float64) for m, v in (d or {}).items()}  # noqa: E731
        self.mean, self.std = as64(mean), as64(std)
        self.passthrough: set[str] = set()  # modalities left as they are (end-to-end text's token ids)

    def fit(self, corpus: Corpus, rows: np.ndarray) -> "Standardizer":
        for m, x in corpus.feats.items():
            sel = x[rows][corpus.present[m][rows]].astype(np.float64)
            if len(sel):
                std = sel.std(0)
                self.mean[m], self.std[m] = sel.mean(0), np.where(std < STD_FLOOR, 1.0, std)
            else:
                self.mean[m], self.std[m] = np.zeros(x.shape[1]), np.ones(x.shape[1])
        return self

    def __call__(self, m: str, x: np.ndarray, present: np.ndarray) -> np.ndarray:
        if m in self.passthrough:
            return (x * present[:, None]).astype(np.float32)
        z = np.clip((x.astype(np.float64) - self.mean[m]) / self.std[m], -Z_CLIP, Z_CLIP)
        return (z * present[:, None]).astype(np.float32)

    def state(self) -> dict:
        return {"mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_state(cls, state: dict) -> "Standardizer":
        """From ``state()`` as a checkpoint holds it (tensors or arrays)."""
        conv = lambda d: {m: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for m, v in d.items()}  # noqa: E731
        return cls(conv(state["mean"]), conv(state["std"]))

    def sequence(self, m: str, x: np.ndarray) -> np.ndarray:
        """A ``[L, F]`` frame sequence with its modality's per-dimension statistics, clipped like ``__call__``
        (from the utterance vectors: not in the paper, our choice — emotion2vec's utterance vector is the mean
        of these very frames)."""
        if x.shape[0] == 0 or m not in self.mean:
            return x.astype(np.float32)
        return np.clip((x.astype(np.float64) - self.mean[m]) / self.std[m], -Z_CLIP, Z_CLIP).astype(np.float32)


def train_warnings(corpus: Corpus, labels: list[str]) -> list[str]:
    """What makes a training run doubtful though it can run: labels with no train example, a single train
    class, a requested modality absent from every train utterance. Logged as warnings and returned."""
    rows = corpus.split_rows("train")
    out = []
    if getattr(corpus, "task", "classification") == "regression":  # no classes: a target without spread cannot be learnt (r is undefined)
        y = corpus.target_matrix()[rows]
        flat = [t for k, t in enumerate(corpus.targets) if len(y) and float(y[:, k].std()) == 0.0]
        if flat:
            out.append(f"targets {flat} are constant over the train split: nothing to learn (Pearson r is 0)")
        labels, counts = [], np.zeros(0, int)
    else:
        y = np.asarray(corpus.utterances.column("label_id").to_numpy())[rows]
        counts = np.bincount(y, minlength=len(labels)) if len(y) else np.zeros(len(labels), int)
    empty = [labels[i] for i in range(len(labels)) if counts[i] == 0]
    if empty:
        out.append(f"labels {empty} have no train example: the model can never learn them (check the prepare "
                   "stage's split or prepare.labels)")
    if len(counts) and (counts > 0).sum() == 1:
        out.append(f"the train split has a single class ({labels[int(np.argmax(counts))]!r}): every prediction "
                   "will be that class")
    for m, p in corpus.present.items():
        if len(rows) and not p[rows].any():
            out.append(f"modality {m!r} is absent from every train utterance (see its extract stage's statuses): "
                       f"drop it from train.modalities")
    for w in out:
        log.warning("%s", w)
    return out


def dialogues(corpus: Corpus, split: str, norm: Standardizer) -> list[dict]:
    """One dict of arrays per dialogue of ``split``, utterances in order, speakers indexed per dialogue."""
    rows = corpus.split_rows(split)
    did = np.asarray(corpus.utterances.column("dialogue_id").to_pylist())[rows]
    uid = np.asarray(corpus.utterances.column("utterance_id").to_numpy())[rows]
    spk = np.asarray(corpus.utterances.column("speaker").to_pylist())[rows]
    lab = np.asarray(corpus.utterances.column("label_id").to_numpy())[rows]
    tgt = corpus.target_matrix()[rows] if corpus.targets else None
    out, order = [], {}
    for j, d in enumerate(did):
        order.setdefault(d, []).append(j)
    for d, js in order.items():
        js = sorted(js, key=lambda j: uid[j])
        r = rows[js]
        speakers = {s: k for k, s in enumerate(dict.fromkeys(spk[js]))}
        out.append(
            dict(
                dialogue_id=d,
                utterance_id=uid[js].astype(np.int64),
                label=lab[js].astype(np.int64),
                speaker=np.asarray([speakers[s] for s in spk[js]], dtype=np.int64),
                feats={m: norm(m, corpus.feats[m][r], corpus.present[m][r]) for m in corpus.feats},
                present={m: corpus.present[m][r] for m in corpus.feats},
            )
        )
        if tgt is not None:  # regression: no classes (label -100 = ignored by every CE), the targets instead
            out[-1]["label"] = np.full(len(js), -100, np.int64)
            out[-1]["target"] = tgt[js]
        if corpus.seqs:  # Frame mode: the token/frame sequences, standardised like their utterance vectors
            out[-1]["seq"] = {m: [norm.sequence(m, corpus.seqs[m][i]) for i in r] for m in corpus.seqs}
    return out


def collate(batch: list[dict], device: str | torch.device = "cpu") -> dict:
    """Pad dialogues to the longest one; ``mask`` marks real utterances, labels of padding are -100."""
    if batch and "seq" in batch[0]:
        return collate_sequences(batch, device)
    B, T = len(batch), max(len(d["label"]) for d in batch)
    mods = list(batch[0]["feats"])
    mask = torch.zeros(B, T, dtype=torch.bool)
    label = torch.full((B, T), -100, dtype=torch.long)
    speaker = torch.zeros(B, T, dtype=torch.long)
    feats = {m: torch.zeros(B, T, batch[0]["feats"][m].shape[1]) for m in mods}
    present = {m: torch.zeros(B, T, dtype=torch.bool) for m in mods}
    for b, d in enumerate(batch):
        n = len(d["label"])
        mask[b, :n] = True
        label[b, :n] = torch.from_numpy(d["label"])
        speaker[b, :n] = torch.from_numpy(d["speaker"])
        for m in mods:
            feats[m][b, :n] = torch.from_numpy(d["feats"][m])
            present[m][b, :n] = torch.from_numpy(d["present"][m])
    to = lambda t: t.to(device)  # noqa: E731
    out = dict(feats={m: to(v) for m, v in feats.items()}, present={m: to(v) for m, v in present.items()},
               mask=to(mask), speaker=to(speaker), label=to(label), task="classification")
    if "target" in batch[0]:  # regression: [B, T, K] float targets, zero on padding (use ``mask``)
        target = torch.zeros(B, T, batch[0]["target"].shape[1])
        for b, d in enumerate(batch):
            target[b, : len(d["label"])] = torch.from_numpy(d["target"])
        out.update(target=to(target), task="regression")
    return out


# ---------------------------------------------------------------- Frame mode (LPGNet(Frame), §4.4)

def read_sequences(table: pa.Table, column: str, max_len: int | None = None) -> list[np.ndarray]:
    """A ``list<list<float32>>`` column (e.g. ``frames`` of ``audio.ssl.store_frames``) → one float32
    ``[L_i, F]`` array per row, cut to its first ``max_len`` frames; a null row → ``[0, F]``."""
    if column not in table.column_names:
        raise ValueError(f"feature table has no {column!r} column: re-run its extract stage with sequences stored "
                         f"(e.g. audio.ssl.store_frames: true); columns: {table.column_names}")
    col = table.column(column).combine_chunks()
    lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    frames = col.flatten()  # the frames of every row, slicing respected
    n_frames = int(lengths.sum())
    flat = np.asarray(frames.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    width = flat.size // n_frames if n_frames else 0
    if n_frames and flat.size != n_frames * width:
        raise ValueError(f"column {column!r}: frames of different widths")
    flat = flat.reshape(n_frames, width)
    ends = np.cumsum(lengths)
    return [flat[e - n : e][:max_len] for e, n in zip(ends, lengths)]


def attach_sequences(corpus: Corpus, sequences: dict[str, str], max_len: int | None = 512,
                     feature_dirs: dict[str, str] | None = None) -> Corpus:
    """Frame mode: join each modality's sequence column (``{modality: column}``) onto the corpus rows.

    Rows whose modality is absent get an empty sequence. A sequence whose frames are not as wide as the
    modality's utterance vector cannot share its standardisation: that is an error naming the column.
    """
    feature_dirs = {**FEATURE_DIRS, **(feature_dirs or {})}
    idx = key_index(corpus.utterances)
    for m, column in sequences.items():
        if m not in corpus.feats:
            continue
        table = read_features(feature_dirs[m])
        seqs = read_sequences(table, column, max_len)
        dim = corpus.feats[m].shape[1]
        out = [np.zeros((0, dim), np.float32) for _ in range(corpus.utterances.num_rows)]
        status = table.column("status").to_pylist()
        keys = zip(table.column("dialogue_id").to_pylist(), table.column("utterance_id").to_pylist())
        for r, key in enumerate(keys):
            i = idx.get(key)
            if i is None or status[r] != "ok" or not corpus.present[m][i] or len(seqs[r]) == 0:
                continue
            if seqs[r].shape[1] != dim:
                raise ValueError(f"{m}: {column!r} frames are {seqs[r].shape[1]}-d but the feature is {dim}-d")
            out[i] = seqs[r]
        corpus.seqs[m] = out
    return corpus


def collate_sequences(batch: list[dict], device: str | torch.device = "cpu") -> dict:
    """``collate`` for dialogues with sequences: ``feats[m]`` is ``[B, T, L, F]`` (L = the batch's longest
    sequence) and ``present[m]`` ``[B, T, L]`` marks real frames; modalities without sequences stay
    ``[B, T, F]`` utterance vectors. Padding frames are zero and never present."""
    out = collate([{k: v for k, v in d.items() if k != "seq"} for d in batch], "cpu")
    B, T = out["mask"].shape
    for m in batch[0]["seq"]:
        L = max([len(x) for d in batch for x in d["seq"][m]] + [1])
        F = batch[0]["feats"][m].shape[1]
        x = torch.zeros(B, T, L, F)
        p = torch.zeros(B, T, L, dtype=torch.bool)
        for b, d in enumerate(batch):
            for t, seq in enumerate(d["seq"][m]):
                if len(seq) and d["present"][m][t]:
                    x[b, t, : len(seq)] = torch.from_numpy(seq)
                    p[b, t, : len(seq)] = True
        out["feats"][m], out["present"][m] = x, p
    to = lambda t: t.to(device)  # noqa: E731
    res = dict(feats={m: to(v) for m, v in out["feats"].items()},
               present={m: to(v) for m, v in out["present"].items()},
               mask=to(out["mask"]), speaker=to(out["speaker"]), label=to(out["label"]), task=out["task"])
    if "target" in out:
        res["target"] = to(out["target"])
    return res


def model_sequences(corpus: Corpus, model: str, cfg: dict, feature_dirs: dict[str, str] | None = None) -> Corpus:
    """Attach the sequences model ``model`` asks for under ``cfg`` (its ``sequence_inputs``, e.g. LPGNet with
    ``mode: frame``); every other model and configuration gets the corpus unchanged."""
    from models import list_models, model_class

    if model not in list_models():  # an unknown name is the model builder's one-line error, later
        return corpus
    spec = getattr(model_class(model), "sequence_inputs", None)
    wanted = spec(cfg, list(corpus.feats)) if spec else None
    if not wanted:
        return corpus
    return attach_sequences(corpus, wanted, cfg.get("max_len", 512), feature_dirs)
