"""Small helpers every stage uses: params, logging, atomic writes, reading tables.

The sharded, resumable extract runner lives in ``pipeline.runners`` (shards: ``pipeline.shards``)."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

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


def atomic_write_table(table: pa.Table, path: str | Path) -> None:
    """Write Parquet to a temp file beside ``path`` then rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def replace_dir(tmp: str | Path, directory: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``directory`` (an old one is moved aside first, then removed), so a
    reader sees the old folder or the new one, never a half-written one."""
    tmp, directory = Path(tmp), Path(directory)
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temp file, then rename: a killed run never leaves a half-written checkpoint."""
    import torch  # only the training stages pay for the import

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
