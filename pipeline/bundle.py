"""The self-describing trained model (``data/model/bundle/``) that ``pipeline.predict`` reads, and nothing else.

Written by the ``train`` stage beside ``model.pt``; a directory of three files:
  bundle.json   everything that is not a tensor, as JSON: format/version, model name and config, label set,
                modality list, input widths, the selected seed/epoch/dev F1, the extractor settings the features
                were built with (the ``text``/``audio``/``visual`` params, the text encoder actually loaded and
                its weights' SHA-256 when fine-tuned, a visual checkpoint's SHA-256), the feature tables' names
                and widths, and the SHA-256 of the two tensor files; with a text encoder fine-tuned end to end
                inside ``train`` (``train.text_encoder``): those settings (``text_encoder_e2e``) and
                ``e2e_encoder`` (the encoder's config, its tokenizer's id/path and SHA-256)
  weights.pt    the dev-selected seed's ``state_dict`` (tensors only; end to end: the fine-tuned encoder too)
  norm.pt       the training-split standardiser (``pipeline.dataset.Standardizer``): ``mean.<m>``/``std.<m>``
Both ``.pt`` files hold plain ``{str: Tensor}`` dicts, so they load with ``torch.load(weights_only=True)``: nothing
is unpickled. The directory is written to a temporary sibling and renamed into place (never half a bundle).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.common import file_digest, replace_dir
from pipeline.errors import UserError

log = logging.getLogger("merc.bundle")
FORMAT, VERSION = "merc-bundle", 1
EXTRACTOR_SECTIONS = {"t": "text", "a": "audio", "v": "visual"}


class BundleError(UserError):
    """A bundle that cannot be used here; the message is one line saying what is missing or wrong."""


def extractor_settings(params: dict) -> dict:
    """The extract stages' settings as recorded in a bundle: the params sections plus what they resolve to.

    ``text_encoder`` is the encoder the extract stage loads (``pipeline.extract_text.encoder_and_config``): the
    fine-tuned directory and its weights' digest when ``text.finetune.enabled``. A ``visual.weights`` checkpoint
    file gets its digest too, so a bundle cannot silently run with other weights.
    """
    out: dict = {}
    if params.get("text"):
        from pipeline.extract_text import encoder_and_config

        text = params["text"]
        try:
            model, config = encoder_and_config(text)
            out["text_encoder"] = {"model": model, "sha256": config.get("encoder_digest")}
        except FileNotFoundError as e:  # fine-tuned encoder absent (a test's params): recorded as unknown
            out["text_encoder"] = {"model": text["finetune"]["out"], "sha256": None, "error": str(e)}
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
                 targets: list[str] | None = None) -> Path:
    """Write the bundle atomically (temp directory + rename) and return its path.

    ``text_encoder``: ``train.text_encoder``'s settings when the text encoder was fine-tuned inside ``train``
    (end to end): recorded with the encoder's architecture and its tokenizer's digest (``text_e2e.encoder_record``),
    so predict rebuilds the wrapper from the bundle and tokenises a video's utterances as training did.

    ``best``: the selected run (``state_dict``, ``seed``, ``epoch``, ``dev_weighted_f1``); ``norm``: the fitted
    ``Standardizer``; ``params``: the whole params dict (its ``text``/``audio``/``visual`` sections are recorded).
    """
    from pipeline.dataset import FEATURE_DIRS

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in best["state_dict"].items()}
        torch.save(weights, tmp / "weights.pt")
        st = norm.state()
        # float64, as the standardiser fits and applies them: the bundle must standardise exactly as training did
        torch.save({f"{kind}.{m}": torch.as_tensor(np.asarray(st[kind][m], dtype=np.float64))
                    for kind in ("mean", "std") for m in st[kind]}, tmp / "norm.pt")
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
            "files": {f: file_digest(tmp / f) for f in ("weights.pt", "norm.pt")},
        }
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=1, default=_jsonable) + "\n")
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote the model bundle %s", directory)
    return directory


def _encoder_record(c: dict) -> dict:
    from pipeline import text_e2e

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
        from pipeline.dataset import Standardizer

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
                from pipeline import text_e2e

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


def load_bundle(directory: str | Path) -> Bundle:
    """Read and check a bundle; every problem is a one-line ``BundleError``."""
    directory = Path(directory)
    meta_file = directory / "bundle.json"
    if not meta_file.is_file():
        raise BundleError(f"no model bundle at {directory} (bundle.json missing): run `dvc repro train` or pass "
                          "--bundle DIR")
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
    for f, digest in meta["files"].items():
        if not (directory / f).is_file():
            raise BundleError(f"{directory / f} is missing from the bundle")
        if file_digest(directory / f) != digest:
            raise BundleError(f"{directory / f} does not match the digest in bundle.json (changed or corrupt)")
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    norm = torch.load(directory / "norm.pt", map_location="cpu", weights_only=True)
    mean = {k[5:]: v.numpy() for k, v in norm.items() if k.startswith("mean.")}
    std = {k[4:]: v.numpy() for k, v in norm.items() if k.startswith("std.")}
    return Bundle(directory, meta, state, mean, std)
