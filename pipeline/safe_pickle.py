"""A restricted unpickler for feature pickles a user hands us (they can run code when loaded with ``pickle``).

Only numpy arrays/scalars/dtypes and builtin containers and scalars may be rebuilt; any other global a pickle
names (``os.system``, ``builtins.eval``, a project's own class, a torch storage …) is refused with
``UnsafePickleError`` naming it — nothing the file asks for is imported or called. Python 2 pickles (the
DialogueRNN/MMGCN feature files) load with ``encoding="latin1"`` as their own loaders do.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import collections
import copyreg
import io
import pickle
from pathlib import Path

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the allowed set: it is not loaded."""


def _numpy_globals() -> dict[tuple[str, str], object]:
    core = np._core if hasattr(np, "_core") else np.core  # numpy ≥ 2 renamed numpy.core → numpy._core
    ok = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        ok[(mod, "_reconstruct")] = core.multiarray._reconstruct
        ok[(mod, "scalar")] = core.multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        ok[(mod, "_frombuffer")] = core.numeric._frombuffer  # protocol 5 out-of-band arrays
    ok[("numpy", "ndarray")] = np.ndarray
    ok[("numpy", "dtype")] = np.dtype
    ok[("numpy", "core.multiarray._reconstruct")] = core.multiarray._reconstruct
    ok[("numpy.dtypes", "Float32DType")] = type(np.dtype("float32"))
    ok[("numpy.dtypes", "Float64DType")] = type(np.dtype("float64"))
    ok[("numpy.dtypes", "Int64DType")] = type(np.dtype("int64"))
    ok[("numpy.dtypes", "StrDType")] = type(np.dtype("U1"))
    return ok


# Containers and scalars only: nothing here can run code when called with pickle's arguments.
_BUILTINS = {name: getattr(builtins, name) for name in (
    "list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray", "bool",
    "range", "slice", "object")}
ALLOWED: dict[tuple[str, str], object] = {
    **{("builtins", k): v for k, v in _BUILTINS.items()},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,  # rebuilds only classes that passed this filter
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at protocol 2 (a pure str → bytes codec)
    **_numpy_globals(),
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` returns only ``ALLOWED`` globals."""

    def find_class(self, module: str, name: str):
        # Python 2 names (__builtin__.set, copy_reg …): these modules do not exist in Python 3, so mapping them
        # always is what pickle's own fix_imports does for protocol < 3 files
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: feature pickles may hold only numpy arrays and builtin "
                "containers (convert the file to plain lists/dicts of numpy arrays)") from None


def safe_load(path: str | Path, encoding: str = "latin1"):
    """Load ``path`` with ``RestrictedUnpickler`` (``latin1``: Python 2 pickles' numpy buffers stay bytes)."""
    data = Path(path).read_bytes()
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
