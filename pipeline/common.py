"""Small helpers every stage uses: params, logging, atomic writes, reading tables.

The sharded, resumable extract runner lives in ``pipeline.extraction.runners`` (shards: ``pipeline.extraction.shards``)."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.schema import KEY, validate

log = logging.getLogger("merc")
PARAMS_FILE = Path(os.environ.get("MERC_PARAMS", "params.yaml"))


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("MERC_LOGLEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 (and DVC's ruamel) do: ``1e-05`` is a float, not a string.

    ``dvc exp run -S train.lr=6e-06`` writes ``lr: 6e-06``; YAML 1.1 would hand the stages the string '6e-06'."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


class Params(dict):
    """``params.yaml`` as a dict whose missing top-level section is a one-line ``UserError`` (``params["train"]``
    without a ``train:`` section), not a ``KeyError`` traceback; ``.get`` and ``in`` behave as on a dict."""

    file = "params.yaml"

    def __missing__(self, key):
        from pipeline.errors import MissingParamError

        raise MissingParamError(f"{self.file} has no {key}: section, which this stage reads: add it (the "
                                "repository's params.yaml lists every section with its defaults)")


def load_params(section: str | None = None, path: Path | None = None) -> dict:
    """``params.yaml`` (a ``Params``), or one top-level section of it (a dict).

    A file that is not a YAML mapping, or a section that is missing or not a mapping, is a one-line
    ``UserError`` naming the file and the section."""
    from pipeline.errors import UserError

    where = Path(path or PARAMS_FILE)
    try:
        with open(where) as f:
            raw = yaml.load(f, Loader=ParamsLoader)
    except FileNotFoundError:
        raise UserError(f"{where} not found: run from the repository root (or set MERC_PARAMS)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{where} is not valid YAML: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a YAML mapping of sections (prepare:, text:, train: …), got "
                        f"{type(raw).__name__}")
    params = Params(raw)
    params.file = str(where)
    if section is None:
        return params
    value = params[section]
    if not isinstance(value, dict):
        raise UserError(f"{where}: the {section}: section is empty or not a mapping ({value!r}): give its keys")
    return value


def _fresh_temp(path: Path) -> Path:
    """A new, empty temp file beside ``path`` (``O_EXCL``: never an existing file), created with mode
    ``0o666 & ~umask`` as ``open()`` would create ``path`` itself (``mkstemp``'s 0600 would make outputs private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` on a fresh temp sibling of ``path``, then rename it onto ``path``: readers see the old file
    or the new one, never half of one; only ``path`` is replaced, nothing else in its folder is touched."""
    path = Path(path)
    tmp = _fresh_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_table(table: pa.Table, path: str | Path) -> None:
    """Write Parquet to a temp file beside ``path`` then rename, so readers never see half a file."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temp file, then rename: a killed run never leaves a half-written checkpoint."""
    import torch  # only the training stages pay for the import

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def check_out_dir(out: str | Path, names: list[str], inputs=(), what: str = "--out") -> Path:
    """Refuse, as one ``UserError`` line and before any work, an output folder a command cannot own.

    ``out`` must be a folder (or not exist yet, under a folder that can be written); ``names`` are the files the
    command writes in it (each replaced atomically; nothing else there is touched): none may be a folder, and none
    may be one of the ``inputs`` (the command would overwrite what it reads)."""
    from pipeline.errors import UserError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} is a file, not a folder: name a folder (it is created if missing; only "
                        f"{', '.join(names)} are written in it)")
    probe = out
    while not probe.exists():  # the nearest existing ancestor must be a folder the rest can be made in
        if probe.is_symlink():
            raise UserError(f"{what} {out}: {probe} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {out}: {probe} is a file, so no folder can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out}: {probe} is not writable here")
    for n in names:
        f = out / n
        if f.is_symlink() or (f.exists() and not f.is_file()):
            raise UserError(f"{what} {out}: {f} exists and is not a plain file, so it is not replaced: move it or "
                            "choose another folder")
        if f.exists() and any(Path(i).exists() and os.path.samefile(f, i) for i in inputs):
            raise UserError(f"{what} {out}: {f} is an input of this command and would be overwritten: choose "
                            "another folder")
    return out


def csv_safe(df: "pd.DataFrame") -> "pd.DataFrame":
    """A copy whose text cells cannot run as spreadsheet formulas (CSV injection, OWASP): a cell starting with
    ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading single quote. Numbers are untouched."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = df.copy()
    for c in out.columns:
        if is_object_dtype(out[c]) or is_string_dtype(out[c]):
            out[c] = [("'" + v) if isinstance(v, str) and v[:1] in FORMULA_START else v for v in out[c]]
    return out


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_unsafe(df: "pd.DataFrame") -> "pd.DataFrame":
    """``csv_safe`` undone, for the project's own readers of its CSVs (a MOSEI video id may start with ``-``)."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = df.copy()
    for c in out.columns:
        if is_object_dtype(out[c]) or is_string_dtype(out[c]):
            out[c] = [v[1:] if isinstance(v, str) and v[:1] == "'" and v[1:2] in FORMULA_START and v[1:2] else v
                      for v in out[c]]
    return out


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_utterances(path: str | Path) -> pa.Table:
    from pipeline.schema import UTTERANCE_SCHEMA

    table = pq.read_table(path)
    if "targets" not in table.column_names:  # tables written before regression targets existed
        table = table.append_column("targets", pa.nulls(table.num_rows, pa.list_(pa.float64())))
    return validate(table, UTTERANCE_SCHEMA)


def read_features(directory: str | Path) -> pa.Table:
    """All shards of a feature table (files starting with ``_`` or ``.`` are ignored by pyarrow)."""
    directory = Path(directory)
    shards = sorted(directory.glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no feature shards in {directory}: run its extract stage first")
    return pa.concat_tables([pq.read_table(s) for s in shards])


def key_index(table: pa.Table) -> dict[tuple[str, int], int]:
    """Map (dialogue_id, utterance_id) → row number."""
    d = table.column(KEY[0]).to_pylist()
    u = table.column(KEY[1]).to_pylist()
    return {(a, b): i for i, (a, b) in enumerate(zip(d, u))}
