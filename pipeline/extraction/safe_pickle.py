"""A restricted unpickler for feature pickles a user hands us (they can run code when loaded with ``pickle``).

Two guards:

* **What may be named.** Only what the known layouts (DialogueRNN/MMGCN tuples, Ada2I dicts:
  ``pipeline.extraction.feature_pickles``) are made of: numpy arrays/scalars/dtypes, builtin containers and scalars,
  ``OrderedDict``/``defaultdict``. Any other global a pickle names (``os.system``, ``builtins.eval``,
  ``builtins.range``, a project's own class, a torch storage …) is refused with ``UnsafePickleError`` naming it —
  nothing the file asks for is imported or called.
* **How much may be allocated.** Every call the pickle makes (REDUCE, INST/OBJ, NEWOBJ, BUILD of a numpy array)
  goes through ``_guard``, which works out the bytes the call would allocate *before* making it and charges them
  to a budget of ``ALLOC_FACTOR`` × the file's size + ``ALLOC_FLOOR``. A legitimate pickle carries its array data
  and container items in the file itself, so it stays far below; a 38-byte ``bytearray(10**10)`` (or a numpy
  array whose header claims 10¹⁰ elements, a ``bytes(n)``, a ``list(huge)``) is refused instead of allocating.
  A numpy array's state must also match its header (raw bytes = elements × itemsize, an object array's list
  = its element count) — numpy itself crashes on some mismatches.

The pure-Python ``pickle._Unpickler`` is used (its opcode table can be wrapped; the C one cannot): its memo is a
dict, so a huge ``LONG_BINPUT`` index allocates nothing either. Python 2 pickles (the DialogueRNN/MMGCN feature
files) load with ``encoding="latin1"`` as their own loaders do. Every refusal and every malformed file is an
``UnsafePickleError``, a ``UserError``: one line naming the file, no traceback.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import collections
import copyreg
import io
import math
import pickle
import struct
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

# Allocation budget: ALLOC_FACTOR × file size + ALLOC_FLOOR bytes over the whole load. A protocol-0 pickle spends
# at least one byte of file per byte of array data and at least two per container item (8 bytes of pointer once
# built), so 16× leaves a legitimate file headroom while a bomb's 10⁹-fold amplification is refused.
ALLOC_FACTOR = 16
ALLOC_FLOOR = 1 << 20
POINTER = 8  # bytes charged per container item / object-array element


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """The pickle names something outside the allowed set, asks for more memory than its size allows, or is not
    a readable pickle: it is not loaded."""


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


# Containers and scalars the layouts are made of (sets and bytes are REDUCE calls at protocol ≤ 2; the scalar
# types appear as ``defaultdict`` factories). Not range/slice/object/complex: no layout needs them.
_BUILTINS = {name: getattr(builtins, name) for name in (
    "list", "dict", "tuple", "set", "frozenset", "int", "float", "str", "bytes", "bytearray", "bool")}
ALLOWED: dict[tuple[str, str], object] = {
    **{("builtins", k): v for k, v in _BUILTINS.items()},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,  # rebuilds only classes that passed this filter
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at protocol 2 (str → latin1 bytes only)
    **_numpy_globals(),
}
_CORE = np._core if hasattr(np, "_core") else np.core
_SIZED = (bytes, bytearray, str, list, tuple, dict, set, frozenset)


def _shape_size(shape) -> int:
    """Elements of a numpy shape given by the file (a tuple of non-negative ints, or one int)."""
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise UnsafePickleError(f"numpy array shape {shape!r} is not a tuple of non-negative integers")
    return math.prod(int(d) for d in dims)


def _itemsize(dtype) -> int:
    try:
        return np.dtype(dtype).itemsize
    except (TypeError, ValueError) as e:
        raise UnsafePickleError(f"numpy dtype {dtype!r} is not valid ({e})") from None


class RestrictedUnpickler(pickle._Unpickler):
    """``pickle._Unpickler`` whose ``find_class`` returns only ``ALLOWED`` globals and whose every call is sized
    and charged to ``budget`` bytes before it is made."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, budget: int, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self.budget = budget
        self.spent = 0

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

    # ------------------------------------------------------------------------------------------ allocation
    def _charge(self, nbytes: int, what: str) -> None:
        self.spent += int(nbytes)
        if self.spent > self.budget:
            raise UnsafePickleError(f"refused {what}: the pickle asks for more than {self.budget:,} bytes "
                                    f"({ALLOC_FACTOR}x its size + {ALLOC_FLOOR:,}); a feature file carries its "
                                    "data itself, so this is a malformed or hostile file")

    def _size_of_arg(self, func, args: tuple) -> int:
        """Bytes ``func(*args)`` allocates beyond what already exists (an upper bound)."""
        if not args:
            return 0
        a = args[0]
        if func in (bytes, bytearray) and isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            if a < 0:
                raise UnsafePickleError(f"refused {func.__name__}({a})")
            return int(a)  # bytes(n): n zero bytes
        if isinstance(a, _SIZED):
            return len(a) * (1 if isinstance(a, (bytes, bytearray, str)) and func in (bytes, bytearray, str)
                             else POINTER)
        if func in (bytes, bytearray, str, list, tuple, dict, set, frozenset, collections.OrderedDict):
            # an iterable that is none of the sized containers above (a numpy array, a dict view …) — or an
            # object whose length the call would have to discover by iterating
            if isinstance(a, np.ndarray):
                return a.size * POINTER
            if isinstance(a, (int, float, bool, np.generic, type(None))):
                return 0
            raise UnsafePickleError(f"refused {func.__name__}() of a {type(a).__name__}")
        return 0

    def _guard(self, func, args: tuple, kwargs: dict | None = None) -> None:
        """Refuse ``func(*args, **kwargs)`` unless it is one of the calls the layouts make, sized within budget."""
        if kwargs:
            raise UnsafePickleError(f"refused keyword arguments to {getattr(func, '__name__', func)}")
        name = getattr(func, "__name__", repr(func))
        if not isinstance(args, tuple):
            raise UnsafePickleError(f"refused call of {name}: its arguments are not a tuple")
        if func is _CORE.multiarray._reconstruct:  # (subtype, shape, dtype): allocates shape × itemsize
            if len(args) != 3 or not (isinstance(args[0], type) and issubclass(args[0], np.ndarray)):
                raise UnsafePickleError("refused numpy _reconstruct with unexpected arguments")
            self._charge(_shape_size(args[1]) * _itemsize(args[2]), "a numpy array header")
        elif func is _CORE.numeric._frombuffer:  # (buffer, dtype, shape, order): a view of bytes already read
            if len(args) != 4 or not isinstance(args[0], (bytes, bytearray)):
                raise UnsafePickleError("refused numpy _frombuffer with unexpected arguments")
            if _shape_size(args[2]) * _itemsize(args[1]) != len(args[0]):
                raise UnsafePickleError("refused numpy _frombuffer: the shape does not match the buffer")
        elif func is _CORE.multiarray.scalar:  # (dtype, bytes | object): the value is in the file
            if not 1 <= len(args) <= 2:
                raise UnsafePickleError("refused numpy scalar with unexpected arguments")
        elif func is np.dtype:  # ('f4', align, copy): a type code from the file; its size is charged at use
            if not args or not isinstance(args[0], (str, bytes)) or len(args[0]) > 64:
                raise UnsafePickleError(f"refused numpy dtype {args[:1]!r}: only type codes like 'f4' are allowed")
        elif func is codecs.encode:  # Python 3 bytes at protocol ≤ 2: _codecs.encode(str, 'latin1')
            if len(args) != 2 or not isinstance(args[0], str) or str(args[1]).lower().replace("-", "").replace(
                    "_", "") not in ("latin1", "iso88591"):
                raise UnsafePickleError("refused _codecs.encode other than (text, 'latin1')")
            self._charge(len(args[0]), "bytes")
        elif func is copyreg._reconstructor:  # (cls, base, state): base.__new__(cls, state) + base.__init__
            if len(args) != 3 or not isinstance(args[0], type) or not isinstance(args[1], type):
                raise UnsafePickleError("refused copyreg._reconstructor with unexpected arguments")
            if args[1] is not object:
                self._guard(args[1], () if args[2] is None else (args[2],))
        elif func is collections.defaultdict:  # (factory,): the factory must itself be an allowed type
            if len(args) > 1 or (args and args[0] is not None and args[0] not in ALLOWED.values()):
                raise UnsafePickleError("refused defaultdict with an unexpected factory")
        elif func in _BUILTINS.values() or func is collections.OrderedDict:
            if len(args) > (2 if func in (str, bytes, int) else 1):
                raise UnsafePickleError(f"refused {name} with {len(args)} arguments")
            self._charge(self._size_of_arg(func, args), f"{name}()")
        else:  # np.ndarray / numpy DType classes: only ever named, never called by the layouts
            raise UnsafePickleError(f"refused call of {name}")

    def _check_array_state(self, arr: np.ndarray, state) -> None:
        """``ndarray.__setstate__((version, shape, dtype, fortran, data))``: data must match the header."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("refused a numpy array state of unexpected form")
        shape, dtype, data = state[-4], state[-3], state[-1]
        if not isinstance(dtype, np.dtype):
            raise UnsafePickleError("refused a numpy array state without a dtype")
        n = _shape_size(shape)
        if dtype.hasobject:
            if not isinstance(data, list) or len(data) != n:
                raise UnsafePickleError(f"refused a numpy object array: header says {n} elements, data has "
                                        f"{len(data) if isinstance(data, list) else type(data).__name__}")
            self._charge(n * POINTER, "a numpy object array")
        else:
            if not isinstance(data, (bytes, bytearray, str)) or len(data) != n * dtype.itemsize:
                raise UnsafePickleError(f"refused a numpy array: header says {n} x {dtype.itemsize} bytes, data "
                                        f"has {len(data) if isinstance(data, (bytes, bytearray, str)) else '?'}")
            self._charge(n * dtype.itemsize, "a numpy array")

    # ------------------------------------------------------------------------- the opcodes that make calls
    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._guard(func, args)
        stack[-1] = func(*args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass, args):  # INST / OBJ (protocols 0/1)
        self._guard(klass, tuple(args))
        self.append(klass(*args))

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        # cls.__new__(cls, …) of a builtin type: only the argument-free form (bytes.__new__(bytes, n) allocates)
        if not isinstance(cls, type) or args:
            raise UnsafePickleError(f"refused {getattr(cls, '__name__', cls)}.__new__ with arguments")
        self.append(cls.__new__(cls))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(cls, type) or args or kwargs:
            raise UnsafePickleError(f"refused {getattr(cls, '__name__', cls)}.__new__ with arguments")
        self.append(cls.__new__(cls))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self):
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, np.ndarray):
            self._check_array_state(inst, state)
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            inst.__setstate__(state)  # byte order, field names, sizes: bounded by the state itself
        elif isinstance(inst, (collections.OrderedDict, collections.defaultdict)) and isinstance(state, dict):
            inst.update(state)  # a dict subclass's instance __dict__ would be here; the layouts have none
        elif state:
            raise UnsafePickleError(f"refused state for a {type(inst).__name__}")
    dispatch[pickle.BUILD[0]] = load_build


def safe_load(path: str | Path, encoding: str = "latin1"):
    """Load ``path`` with ``RestrictedUnpickler`` (``latin1``: Python 2 pickles' numpy buffers stay bytes).

    ``UnsafePickleError`` (a one-line ``UserError`` naming ``path``) when the file is refused or malformed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnsafePickleError(f"{path}: cannot read the feature pickle ({e.strerror or e})") from None
    budget = ALLOC_FACTOR * len(data) + ALLOC_FLOOR
    try:
        return RestrictedUnpickler(io.BytesIO(data), budget=budget, encoding=encoding).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            struct.error, UnicodeDecodeError, OverflowError, MemoryError, RecursionError) as e:
        raise UnsafePickleError(f"{path}: not a readable feature pickle ({type(e).__name__}: "
                                f"{str(e)[:200]})") from None
