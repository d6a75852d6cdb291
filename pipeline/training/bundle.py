"""The self-describing trained model (``data/model/bundle/``) that ``pipeline.predict`` reads, and nothing else.

It owns how to featurize: ``Bundle.extractors()`` rebuilds each modality's extractor from the recorded settings
through the extract stage's own builder (``pipeline.extraction.text/audio/visual``), ``Bundle.featurize(rows)`` runs
them on one conversation; ``Bundle.build_model()`` gives the model. Predict is video → utterances → ``featurize`` →
model → outputs.

Written by the ``train`` stage beside ``model.pt``; a directory of these files:
  bundle.json   everything that is not a tensor, as JSON: format/version, model name and config, label set,
                modality list, input widths, the selected seed/epoch/dev F1, the extractor settings the features
                were built with (the ``text``/``audio``/``visual`` params, the text encoder actually loaded and
                its folder's SHA-256 when fine-tuned, a visual checkpoint's SHA-256), the feature tables' names
                and widths; with a text encoder fine-tuned end to end inside ``train`` (``train.text_encoder``):
                those settings (``text_encoder_e2e``) and ``e2e_encoder`` (the encoder's config, its tokenizer's
                id/path and SHA-256)
  weights.pt    the dev-selected seed's ``state_dict`` (tensors only; end to end: the fine-tuned encoder too)
  norm.pt       the training-split standardiser (``pipeline.training.dataset.Standardizer``): ``mean.<m>``/``std.<m>``
  README.md     the model card (Hugging Face format, ``pipeline.training.model_card``): data, split, seeds, selected epoch,
                test metrics ± std over seeds, intended use, limitations, the predict command
  manifest.json the SHA-256 of every other file (``bundle.json`` included): ``load_bundle`` refuses a bundle whose
                files do not match it, so an edited label list or a swapped weight file is caught. It is a
                checksum, not a signature: it catches edits and corruption, not someone who rewrites it as well.
Both ``.pt`` files hold plain ``{str: Tensor}`` dicts, so they load with ``torch.load(weights_only=True)``: nothing
is unpickled (a file holding anything else is refused). Each file is written atomically into the folder (created
with the umask, as every other output), the manifest last, and nothing else in the folder is touched.
"""
from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.common import atomic_torch_save, atomic_write_text, check_out_dir, file_digest
from pipeline.errors import UserError
from pipeline.training.model_card import model_card

log = logging.getLogger("merc.bundle")
FORMAT, VERSION = "merc-bundle", 1
EXTRACTOR_SECTIONS = {"t": "text", "a": "audio", "v": "visual"}
MANIFEST = "manifest.json"
# written in this order, the manifest last: a reader meeting a half-written bundle finds a digest that does not match
BUNDLE_FILES = ["weights.pt", "norm.pt", "README.md", "bundle.json", MANIFEST]
REQUIRED = ("weights.pt", "norm.pt", "README.md", "bundle.json")


class BundleError(UserError):
    """A bundle that cannot be used here; the message is one line saying what is missing or wrong."""


def extractor_settings(params: dict) -> dict:
    """The extract stages' settings as recorded in a bundle: the params sections plus what they resolve to.

    ``text_encoder`` is the encoder the extract stage loads (``pipeline.extraction.textenc.encoder_and_config``,
    as extract_text does). Fine-tuned (``text.finetune.enabled``): the folder finetune_text wrote and its digest,
    the one the stage's shards were fingerprinted with (``weights_digest``: weights, config, tokenizer); a
    packaged or hub encoder is named only (its files are the library's, versioned with it: no digest). A
    ``visual.weights`` checkpoint file gets its digest too, so a bundle cannot silently run with other weights.
    """
    out: dict = {}
    if params.get("text"):
        from pipeline.extraction.textenc import encoder_and_config, finetuned

        text = params["text"]
        model, config = encoder_and_config(text)
        out["text_encoder"] = {"model": model, "sha256": None}
        if finetuned(text):
            out["text_encoder"]["sha256"] = config["weights_digest"]
            if config["weights_digest"] is None:  # predict refuses the bundle with this reason
                out["text_encoder"]["error"] = f"no fine-tuned encoder at {model} when the bundle was written"
        out["text"] = text
    if params.get("audio"):
        out["audio"] = params["audio"]
    if params.get("visual"):
        vis = params["visual"]
        out["visual"] = vis
        w = vis.get("weights")
        out["visual_weights_sha256"] = file_digest(w) if w and Path(w).is_file() else None
    return out


def feature_provenance(feature_dirs: dict[str, str | Path], modalities: list[str]) -> dict:
    """``feature_name`` and ``dim`` from each used feature table's shard metadata (what the model was fed)."""
    out = {}
    for m in modalities:
        shards = sorted(Path(feature_dirs[m]).glob("part-*.parquet"))
        if shards:
            meta = pq.read_schema(shards[0]).metadata or {}
            out[m] = {k: meta.get(k.encode(), b"").decode() or None for k in ("feature_name", "dim", "weights")}
    return out


def write_bundle(directory: str | Path, params: dict, model: str, cfg: dict, labels: list[str],
                 modalities: list[str], input_dims: dict[str, int], norm, best: dict,
                 feature_dirs: dict[str, str | Path] | None = None, text_encoder: dict | None = None,
                 targets: list[str] | None = None, card: dict | None = None) -> Path:
    """Write the bundle's files into ``directory`` (each atomically; other files there are left alone) and return
    its path.

    ``text_encoder``: ``train.text_encoder``'s settings when the text encoder was fine-tuned inside ``train``
    (end to end): recorded with the encoder's architecture and its tokenizer's digest (``text_e2e.encoder_record``),
    so predict rebuilds the wrapper from the bundle and tokenises a video's utterances as training did.

    ``best``: the selected run (``state_dict``, ``seed``, ``epoch``, ``dev_weighted_f1``); ``norm``: the fitted
    ``Standardizer``; ``params``: the whole params dict (its ``text``/``audio``/``visual`` sections are recorded);
    ``card``: the run's facts for the model card ``README.md`` (``pipeline.training.model_card``: corpus, splits, seeds, test
    metrics).
    """
    from pipeline.training.dataset import FEATURE_DIRS

    directory = check_out_dir(directory, BUNDLE_FILES, what="the model bundle folder")
    directory.mkdir(parents=True, exist_ok=True)
    # everything that can fail (settings, digests, the card) before the first file is replaced
    meta = {
        "format": FORMAT, "version": VERSION, "model": model, "cfg": cfg, "labels": list(labels),
        "modalities": list(modalities), "input_dims": {m: int(d) for m, d in input_dims.items()},
        **{k: best[k] for k in ("seed", "epoch", "dev_weighted_f1") if k in best},
        "extractors": extractor_settings(params),
        # end to end, the text "features" were token rows, not a feature table's vectors
        "features": feature_provenance({**FEATURE_DIRS, **(feature_dirs or {})},
                                       [m for m in modalities if not (text_encoder and m == "t")]),
        "text_encoder_e2e": text_encoder,
        "e2e_encoder": _encoder_record(text_encoder) if text_encoder and "t" in modalities else None,
        "targets": list(targets or []),  # a regression model's targets (predict refuses those bundles)
    }
    text = json.dumps(meta, indent=1, default=_jsonable) + "\n"
    where = directory.as_posix() if not directory.is_absolute() else "BUNDLE_FOLDER"  # no absolute path in a card
    card_text = model_card(json.loads(text), {"command": "python -m pipeline.predict VIDEO --subtitles SUBS.srt "
                                                         f"--bundle {where} --out OUT", **(card or {})})
    weights = {k: v.detach().cpu().contiguous() for k, v in best["state_dict"].items()}
    atomic_torch_save(weights, directory / "weights.pt")
    st = norm.state()
    # float64, as the standardiser fits and applies them: the bundle must standardise exactly as training did
    atomic_torch_save({f"{kind}.{m}": torch.as_tensor(np.asarray(st[kind][m], dtype=np.float64))
                       for kind in ("mean", "std") for m in st[kind]}, directory / "norm.pt")
    atomic_write_text(card_text, directory / "README.md")
    atomic_write_text(text, directory / "bundle.json")
    write_manifest(directory, [f for f in BUNDLE_FILES if f != MANIFEST])
    log.info("wrote the model bundle %s", directory)
    return directory


def _encoder_record(c: dict) -> dict:
    from pipeline.training import text_e2e

    return text_e2e.encoder_record(c)


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.tolist()
    raise TypeError(f"bundle.json cannot hold {type(x).__name__}")


@dataclass
class Bundle:
    """A loaded bundle: its JSON description, weights and normalisation statistics."""

    path: Path
    meta: dict
    state_dict: dict
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    _extractors: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # by device

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def modalities(self) -> list[str]:
        return self.meta["modalities"]

    @property
    def e2e(self) -> dict | None:
        """``train.text_encoder``'s settings when the model fine-tuned its text encoder end to end, else None."""
        c = self.meta.get("text_encoder_e2e")
        return c if c and "t" in self.modalities else None

    def standardizer(self):
        from pipeline.training.dataset import Standardizer

        return Standardizer(dict(self.mean), dict(self.std))

    def build_model(self) -> torch.nn.Module:
        """The registered model with the bundle's config and weights, in eval mode."""
        from models import get_model

        cfg = dict(self.meta["cfg"])
        if self.e2e and not self.meta["e2e_encoder"].get("config"):
            raise BundleError(f"{self.path}: the bundle records no config of its end-to-end text encoder "
                              f"({self.meta['e2e_encoder'].get('config_error', 'not recorded')}): retrain")
        quiet = logging.getLogger("merc.models.summer")
        level = quiet.level
        if cfg.get("teacher_path") and any(k.startswith(("teacher.", "model.teacher.")) for k in self.state_dict):
            # SUMMER: the frozen teacher's weights are buffers in the state_dict; no teacher.pt is needed
            cfg["teacher_path"] = None
            quiet.setLevel(logging.ERROR)  # its "untrained teacher" warning is moot: the weights are loaded next
        try:
            build = lambda dims: get_model(self.meta["model"], input_dims=dims,  # noqa: E731
                                           n_classes=len(self.labels), **cfg)
            if self.e2e:  # the encoder's architecture from the bundle; its fine-tuned weights are encoder.*
                from pipeline.training import text_e2e

                encoder = text_e2e.encoder_from_config(self.meta["e2e_encoder"]["config"])
                model = text_e2e.with_encoder(build, self.meta["input_dims"], self.e2e, encoder=encoder)[0]
            else:
                model = build(self.meta["input_dims"])
            model.load_state_dict(self.state_dict)
        except (KeyError, RuntimeError, TypeError, ValueError, FileNotFoundError) as e:
            raise BundleError(f"{self.path}: model {self.meta['model']!r} cannot be rebuilt from the bundle "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
        finally:
            quiet.setLevel(level)
        return model.eval()

    def extractors(self, device: str | None = None) -> dict:
        """The extractors by modality (built once per device), from the recorded settings through the extract
        stages' own builders (``pipeline.extraction.{text,audio,visual}``); the end-to-end text encoder's
        ``text_e2e.TokenRows``. What cannot serve the model (imported features, missing settings, a fine-tuned
        encoder or visual checkpoint absent or changed, another width or feature name) is a one-line
        ``BundleError``."""
        if device not in self._extractors:
            self._extractors[device] = {m: self._extractor(m, device) for m in self.modalities}
        return self._extractors[device]

    def featurize(self, rows: list[dict], device: str | None = None,
                  timings: dict[str, float] | None = None) -> dict[str, dict]:
        """One conversation's rows (the utterance table's columns, in order) → per modality the raw vectors
        ``x``, the ``present`` mask and the extractor's per-row records, as the extract stages compute them
        (the same ``process`` calls and statuses); ``timings`` gets ``extract_<m>`` seconds added."""
        from pipeline.extraction.shards import process_safely
        from pipeline.extraction.text_context import DialogueIndex

        out = {}
        for m, ex in self.extractors(device).items():
            if m == "t" and ex.context != "utterance":  # the context modes read this conversation's turns
                ex.index = DialogueIndex([r["dialogue_id"] for r in rows], [r["utterance_id"] for r in rows],
                                         [r["speaker"] or "" for r in rows], [r["text"] for r in rows])
            t0 = time.perf_counter()
            recs = process_safely(ex, rows)
            if timings is not None:
                timings[f"extract_{m}"] = timings.get(f"extract_{m}", 0.0) + time.perf_counter() - t0
            x = np.zeros((len(rows), ex.dim), np.float32)
            present = np.zeros(len(rows), bool)
            for i, r in enumerate(recs):
                f = r.get("feature")
                if r["status"] == "ok" and f is not None:
                    f = np.asarray(f, np.float32)
                    if np.isfinite(f).all():
                        x[i], present[i] = f, True
                    else:
                        r.update(status="error", error=f"{ex.name} returned non-finite values")
                elif r["status"] == "ok":
                    r.update(status="error", error=f"{ex.name} returned no vector")
            out[m] = {"x": x, "present": present, "records": recs}
        return out

    def _extractor(self, m: str, device: str | None):
        """Modality ``m``'s extractor, checked against what the model was trained on."""
        section = EXTRACTOR_SECTIONS[m]
        if m == "t" and self.e2e:  # token rows for the model's own encoder: no text feature extractor
            return self._token_rows()
        settings = self.meta.get("extractors") or {}
        recorded = ((self.meta.get("features") or {}).get(m) or {}).get("feature_name") or ""
        if recorded.startswith("imported:"):
            raise BundleError(f"the model was trained on {section} features imported from a pickle ({recorded}), "
                              "which no extractor here can compute from a video: train on extracted features")
        p = settings.get(section)
        if not p:
            raise BundleError(f"{self.path}: the bundle records no {section!r} extractor settings (trained without "
                              f"params.{section}); retrain with `dvc repro train`")
        if m == "t":
            from pipeline.extraction.text import build_text_extractor
            from pipeline.extraction.text_context import DialogueIndex

            model = self._text_encoder(p)
            index = DialogueIndex([], [], [], [])  # replaced per conversation (context modes read it)
            # vectors only: token states (store_tokens) are for LPGNet(Frame)'s shards, not a prediction
            ex = _rebuilt("text", lambda: build_text_extractor({**p, "store_tokens": False}, index, device, model))
        elif m == "a":
            from pipeline.extraction.audio import build_audio_extractor

            ex = _rebuilt("audio", lambda: build_audio_extractor(p))
        else:
            from pipeline.extraction.visual import build_visual_extractor

            want = settings.get("visual_weights_sha256")
            if want and (not Path(p["weights"]).is_file() or file_digest(p["weights"]) != want):
                raise BundleError(f"the bundle needs the visual checkpoint {p['weights']} (sha256 {want[:12]}…), "
                                  "absent or different here")
            ex = _rebuilt("visual", lambda: build_visual_extractor(p, report_face_box=True))
        if ex.dim != self.meta["input_dims"][m]:
            raise BundleError(f"the rebuilt {section} extractor {ex.name} gives {ex.dim}-d vectors; the model was "
                              f"trained on {self.meta['input_dims'][m]}-d")
        if recorded and recorded != ex.name:
            raise BundleError(f"the rebuilt {section} extractor is {ex.name!r}; the model was trained on "
                              f"{recorded!r} features")
        return ex

    def _text_encoder(self, p: dict) -> str:
        """The text encoder to load; a fine-tuned one must be the very folder the features came from."""
        from pipeline.extraction.runners import weights_digest
        from pipeline.extraction.textenc import encoder_path, finetuned, resolve_model

        enc = (self.meta.get("extractors") or {}).get("text_encoder") or {"model": encoder_path(p), "sha256": None}
        want = enc.get("sha256")
        if not want and finetuned(p):
            raise BundleError(f"{self.path}: the bundle records no digest of its fine-tuned text encoder "
                              f"{enc['model']} ({enc.get('error', 'not recorded')}): retrain (`dvc repro train`)")
        if want:  # a fine-tuned encoder: its exact files, or nothing
            got = weights_digest(resolve_model(enc["model"]))
            if got is None:
                raise BundleError(f"the bundle needs its fine-tuned text encoder {enc['model']} (sha256 "
                                  f"{want[:12]}…), absent here: run `dvc repro finetune_text` or copy it")
            if got != want:
                raise BundleError(f"{enc['model']} differs from the fine-tuned text encoder the bundle was trained "
                                  f"with (sha256 {got[:12]}… here, {want[:12]}… in the bundle)")
        return enc["model"]

    def _token_rows(self):
        """The end-to-end encoder's tokenizer, resolved offline and checked against the recorded digest."""
        from pipeline.training.text_e2e import TokenRows, load_tokenizer, tokenizer_digest

        c, rec = self.e2e, (self.meta.get("e2e_encoder") or {}).get("tokenizer") or {}
        if not rec.get("sha256"):
            raise BundleError(f"{self.path}: the bundle records no tokenizer digest for its end-to-end text encoder "
                              f"{c['model']!r} ({rec.get('error', 'not recorded')}): retrain (`dvc repro train`)")
        try:
            tok = load_tokenizer({"model": rec.get("model") or c["model"]})
            got = tokenizer_digest(tok)
        except (RuntimeError, ValueError, OSError) as e:
            raise BundleError(f"the bundle needs the tokenizer of its end-to-end text encoder {c['model']!r} "
                              f"(sha256 {rec['sha256'][:12]}…), not available here: put its files at that path "
                              f"(or in the Hugging Face cache) ({str(e).splitlines()[0][:200]})") from e
        if got != rec["sha256"]:
            raise BundleError(f"the tokenizer at {c['model']!r} differs from the one the model was trained with "
                              f"(sha256 {got[:12]}… here, {rec['sha256'][:12]}… in the bundle)")
        return TokenRows(c, tok)


def _rebuilt(section: str, build):
    """``build()``; a library or file problem is a one-line ``BundleError`` naming the extractor."""
    try:
        return build()
    except (RuntimeError, OSError, ValueError, ImportError, KeyError) as e:
        raise BundleError(f"the bundle's {section} extractor cannot be rebuilt here: {str(e).splitlines()[0]}") from e


def write_manifest(directory: Path, files: list[str]) -> None:
    """``manifest.json``: the SHA-256 of every file of the bundle, its JSON and model card included."""
    digests = {f: file_digest(directory / f) for f in files}
    atomic_write_text(json.dumps({"format": f"{FORMAT}-manifest", "algorithm": "sha256", "files": digests},
                                 indent=1) + "\n", directory / MANIFEST)


def check_manifest(directory: Path) -> dict[str, str]:
    """Every file the manifest lists is there with its recorded SHA-256 (bundle.json, weights.pt and norm.pt
    must be listed): a permuted label list, a swapped weight file or a truncated copy is a one-line refusal."""
    mf = directory / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{directory}: no {MANIFEST} (the digests of the bundle's files): the bundle is incomplete "
                          "or predates manifests; retrain (`dvc repro train`)")
    try:
        files = json.loads(mf.read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError("files is not a {name: sha256} map")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise BundleError(f"{mf} is not a bundle manifest ({type(e).__name__}: {e})") from e
    unlisted = [f for f in REQUIRED if f not in files]
    if unlisted:
        raise BundleError(f"{mf} does not cover {unlisted}: the bundle cannot be checked; retrain")
    for f, digest in files.items():
        if Path(f).name != f or f in ("", ".", ".."):
            raise BundleError(f"{mf} lists {f!r}, which is not a file name in the bundle folder")
        if not (directory / f).is_file():
            raise BundleError(f"{directory / f} is missing from the bundle")
        if file_digest(directory / f) != digest:
            raise BundleError(f"{directory / f} does not match its digest in {MANIFEST} (changed or corrupt): "
                              "use the bundle as train wrote it, or retrain")
    return files


def _load_tensors(path: Path) -> dict:
    """A ``{str: Tensor}`` file, read with ``weights_only=True``: anything else (a pickled object) is refused."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        raise BundleError(f"{path} is not a plain tensor file and is not loaded ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else 'unreadable'})") from e
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise BundleError(f"{path} does not hold a {{name: tensor}} dict")
    return obj


def load_bundle(directory: str | Path) -> Bundle:
    """Read and check a bundle; every problem is a one-line ``BundleError``."""
    directory = Path(directory)
    meta_file = directory / "bundle.json"
    if not meta_file.is_file():
        raise BundleError(f"no model bundle at {directory} (bundle.json missing): run `dvc repro train` or pass "
                          "--bundle DIR")
    check_manifest(directory)
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta_file} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise BundleError(f"{directory} is not a {FORMAT} v{VERSION} bundle (format {meta.get('format')!r}, "
                          f"version {meta.get('version')!r})")
    if meta.get("targets"):
        raise BundleError(f"{directory}: a regression model (targets {meta['targets']}); predict serves emotion "
                          "classification bundles only: train one on a classification corpus")
    if meta.get("text_encoder_e2e") and "t" in (meta.get("modalities") or []) and not meta.get("e2e_encoder"):
        raise BundleError(f"{directory}: the model fine-tuned its text encoder end to end (train.text_encoder) but "
                          "the bundle predates recording that encoder's config and tokenizer: retrain "
                          "(`dvc repro train`) to write a bundle predict can serve")
    state = _load_tensors(directory / "weights.pt")
    norm = _load_tensors(directory / "norm.pt")
    mean = {k[5:]: v.numpy() for k, v in norm.items() if k.startswith("mean.")}
    std = {k[4:]: v.numpy() for k, v in norm.items() if k.startswith("std.")}
    return Bundle(directory, meta, state, mean, std)
