"""Checkpoints that cannot run code: plain tensors and containers of primitives, read with ``weights_only=True``.

``torch.load(weights_only=False)`` unpickles arbitrary objects, so a crafted ``model.pt`` runs whatever its
``__reduce__`` names (``os.system`` …) the moment it is opened. Every checkpoint merc writes therefore holds only
tensors, dicts, lists and str/int/float/bool/None (``to_plain`` converts numpy arrays and scalars and refuses
anything else), and every checkpoint merc reads goes through ``load_checkpoint``: PyTorch's restricted unpickler,
and a refusal that is one line (``UserError``) when a file holds more than that.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from pipeline.common import atomic_torch_save
from pipeline.errors import MissingFileError, UserError

PRIMITIVES = (str, int, float, bool, type(None))


def to_plain(obj, where: str = "checkpoint"):
    """``obj`` as tensors / dicts / lists / primitives (numpy arrays → tensors, numpy scalars → Python ones).

    Raises ``TypeError`` (a bug: the writer put an object in a checkpoint) for anything else."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))  # a copy: the tensor must not share a caller's buffer
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PRIMITIVES):
        return obj
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, (str, int))]
        if bad:
            raise TypeError(f"{where}: dict keys must be str or int, got {bad[:3]}")
        return {k: to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a checkpoint (plain tensors and values only)")


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """``to_plain(obj)`` written atomically with ``torch.save``."""
    atomic_torch_save(to_plain(obj), path)


def load_checkpoint(path: str | Path, what: str, fix: str) -> dict:
    """A checkpoint dict read with ``weights_only=True``; missing, unreadable or code-carrying files are a
    one-line ``UserError`` naming ``what`` (e.g. "model checkpoint") and ``fix`` (e.g. "run `dvc repro train`")."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no {what} at {path}: {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # the restricted unpickler met a global other than tensors/containers: never fall back to full pickle
        named = re.search(r"GLOBAL\s+([\w.]+)", str(e))
        raise UserError(f"refusing to load {what} {path}: it is not a plain-tensor checkpoint"
                        f"{f' (it names {named.group(1)})' if named else ''}; a file from an older merc, another "
                        f"program, or a crafted one (fully unpickling it could run code). {fix}") from e
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, …: all one answer to the user
        raise UserError(f"cannot read {what} {path} ({type(e).__name__}: {str(e)[:200]}): {fix}") from e
    if not isinstance(ckpt, dict):
        raise UserError(f"{what} {path} is a {type(ckpt).__name__}, not a merc checkpoint: {fix}")
    return ckpt


__all__ = ["load_checkpoint", "save_checkpoint", "to_plain"]
