"""A restricted unpickler for dataset files: numpy arrays and builtin containers only.

Unpickling runs whatever callables the file names, so an untrusted ``.pkl`` can execute any
command. The processed MSA pickles only need numpy's array, dtype and scalar reconstruction
(plus ``_codecs.encode``, which protocols 0-2 use to store bytes); lists, dicts, strings and
numbers are pickle opcodes that name no callable. The defences, in the order they act:

1. Before anything is built, the byte stream is walked opcode by opcode (arguments are skipped,
   not read): a stream that ends before its STOP opcode is refused as truncated, and the
   opcodes that data files never contain and that reach outside the file (the extension
   registry ``EXT1/2/4``, persistent ids ``PERSID``/``BINPERSID``) or instantiate classes
   (``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``) are refused wherever they stand.
2. ``GLOBAL``/``STACK_GLOBAL`` resolve only the allow-list below; every other name is refused
   before its module is imported, so nothing the file names is looked up, let alone called.
3. The allowed callables that could allocate without bound when called with crafted arguments
   (``bytes(10**12)``, ``numpy._core.multiarray._reconstruct`` with a huge shape) or whose
   attributes a ``BUILD`` could rewrite (numpy's Python-level ``_frombuffer``) are handed out
   as frozen proxies that accept only the arguments the pickler writes.

A stream that is refused raises :class:`UnsafePickleError`; one that is malformed (truncated,
bytes that are no opcode, arguments numpy rejects) raises :class:`CorruptPickleError`. Both
are :class:`pickle.UnpicklingError`; both name the source, and the walk names the byte offset.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import pickle
import pickletools
import struct
from collections.abc import Callable
from typing import IO, Any

# (module, name) as written by numpy 1.x ("numpy.core") and 2.x ("numpy._core") pickles.
_NUMPY_CORE_NAMES = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}
# Data types only: none of them reads, writes, imports or evaluates anything, their instances
# are bounded by the size of the file, and their type objects are immutable (BUILD cannot
# set attributes on them).
_BUILTIN_DATA_TYPES = ("bool", "int", "float", "complex", "str", "list", "tuple", "dict")
_BUILTIN_DATA_TYPES += ("set", "frozenset")
# Callables that are wrapped in a proxy (see _proxy) instead of being handed out.
_PROXIED = {("builtins", "bytes"), ("builtins", "bytearray"), ("_codecs", "encode")}
_PROXIED |= {("numpy", "ndarray"), ("numpy", "dtype")}
_PROXIED |= {
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")
    for module, name in _NUMPY_CORE_NAMES
}
_ALLOWED_GLOBALS = frozenset(
    {("builtins", name) for name in _BUILTIN_DATA_TYPES}
    | {("collections", "OrderedDict")}
    | _PROXIED
)

# Protocols 0-2 write Python 2's module name for the builtins.
_PYTHON2_MODULES = {"__builtin__": "builtins"}

# Opcodes that data files do not contain and that reach outside the stream (the extension
# registry, persistent ids) or instantiate a class object.
_REFUSED_OPCODES = {
    "EXT1": "reads the process-wide copyreg extension registry",
    "EXT2": "reads the process-wide copyreg extension registry",
    "EXT4": "reads the process-wide copyreg extension registry",
    "PERSID": "asks the loader for an object outside the file",
    "BINPERSID": "asks the loader for an object outside the file",
    "INST": "instantiates a class",
    "OBJ": "instantiates a class",
    "NEWOBJ": "instantiates a class",
    "NEWOBJ_EX": "instantiates a class",
}
_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
# Arguments whose size is stored before them: (bytes of the size, struct format).
_SIZE_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, "<B"),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, "<i"),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, "<I"),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, "<Q"),
}
_LATIN1 = ("latin1", "latin-1")


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global, an opcode or call that :class:`SafeUnpickler` refuses."""


class CorruptPickleError(pickle.UnpicklingError):
    """A file is not a complete, well-formed pickle (truncated, overwritten, not a pickle)."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dtypes and scalars and builtin data, nothing else.

    Args:
        file: a binary file object open for reading. When it is seekable, the whole stream is
            walked (and refused if truncated or holding a refused opcode) before anything is
            built.
        source: how to name the file in error messages (e.g. its path).

    Raises:
        UnsafePickleError: from :meth:`load`, if the stream names a global outside the
            allow-list, holds a refused opcode, or calls an allowed callable with arguments
            that no pickler writes.
        CorruptPickleError: from :meth:`load`, if the stream is truncated or malformed.

    Example:
        >>> import io, pickle
        >>> blob = pickle.dumps({"audio": [1.5, 2.0]}, protocol=4)
        >>> SafeUnpickler(io.BytesIO(blob), source="memory").load()
        {'audio': [1.5, 2.0]}
        >>> SafeUnpickler(io.BytesIO(blob[:-3]), source="memory").load()
        Traceback (most recent call last):
        ...
        deepalign._safe_pickle.CorruptPickleError: memory: truncated: ...
    """

    def __init__(self, file: IO[bytes], *, source: str = "<pickle>") -> None:
        super().__init__(file)
        self.source = source
        self._file = file
        # numpy.ndarray resolves to this token, which only _reconstruct accepts: called
        # directly, ndarray(shape) would allocate any size the file asks for.
        self._ndarray = _Frozen("numpy.ndarray", None, source)

    def load(self) -> Any:
        """Walk the stream (when seekable), then unpickle it.

        Returns:
            The unpickled object.
        """
        if _seekable(self._file):
            start = self._file.tell()
            _walk(self._file, self.source)
            self._file.seek(start)
        try:
            return super().load()
        except UnsafePickleError:
            raise
        except Exception as error:  # anything a malformed stream makes the unpickler raise
            raise CorruptPickleError(
                f"{self.source}: not a well-formed pickle ({type(error).__name__}: {error}); "
                "the file is damaged or was not written by pickle"
            ) from error

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if it is on the allow-list, without importing anything else.

        Raises:
            UnsafePickleError: for any other global.
        """
        module = _PYTHON2_MODULES.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refusing to load the global '{module}.{name}': a dataset pickle "
                "may only reference numpy arrays, dtypes and scalars and builtin containers; "
                "this file was not written by the MMSA toolkit or has been tampered with"
            )
        target = getattr(importlib.import_module(_current_numpy_module(module)), name)
        if (module, name) in _PROXIED:
            return _proxy(f"{module}.{name}", target, self.source, self._ndarray)
        return target

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (a data file holds everything it needs).

        Raises:
            UnsafePickleError: always.
        """
        raise UnsafePickleError(
            f"{self.source}: refusing a persistent id: a dataset pickle holds all its data"
        )


class _Frozen:
    """A callable or token that ``BUILD`` cannot modify and ``NEWOBJ`` cannot instantiate."""

    __slots__ = ("_call", "_name", "_source")

    def __init__(self, name: str, call: Callable[..., Any] | None, source: str) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_call", call)
        object.__setattr__(self, "_source", source)

    def __call__(self, *args: Any) -> Any:
        if self._call is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to call '{self._name}': data pickles only pass it "
                "to numpy's array reconstruction"
            )
        return self._call(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(
            f"{self._source}: refusing to BUILD (set the state of) the global '{self._name}'"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        self.__setstate__(None)

    def __reduce__(self) -> Any:
        raise TypeError(f"the unpickling proxy of '{self._name}' cannot be pickled")


def _proxy(qualified: str, target: Any, source: str, ndarray_token: _Frozen) -> _Frozen:
    """The frozen stand-in of an allowed callable, with its arguments checked."""
    import numpy as np

    name = qualified.rsplit(".", 1)[1]

    def refuse(args: tuple[Any, ...]) -> UnsafePickleError:
        shown = ", ".join(type(arg).__name__ for arg in args)
        return UnsafePickleError(
            f"{source}: refusing '{qualified}' called with arguments of types ({shown}): "
            "no pickler writes that call"
        )

    def checked_bytes(*args: Any) -> Any:
        # pickle writes bytes(), bytearray(bytes) and, protocols 0-2, the bytes through
        # _codecs.encode(str, 'latin1'); bytes(10**12) would allocate a terabyte.
        plain = len(args) == 0 or (len(args) == 1 and isinstance(args[0], bytes | bytearray))
        latin = len(args) == 2 and isinstance(args[0], str) and args[1] in _LATIN1
        if not (plain or latin):
            raise refuse(args)
        return target(*args)

    def checked_encode(*args: Any) -> Any:
        if not (len(args) == 2 and isinstance(args[0], str) and args[1] in _LATIN1):
            raise refuse(args)
        return target(*args)

    def checked_reconstruct(*args: Any) -> Any:
        # numpy writes _reconstruct(ndarray, (0,), b'b') and sets the data with BUILD, whose
        # buffer must match the shape; a non-empty shape here would allocate from 3 numbers.
        if len(args) != 3 or args[0] is not ndarray_token or not _empty_shape(args[1]):
            raise refuse(args)
        return target(np.ndarray, *args[1:])

    if name == "ndarray":
        return ndarray_token
    if name in ("bytes", "bytearray"):
        return _Frozen(qualified, checked_bytes, source)
    if name == "encode":
        return _Frozen(qualified, checked_encode, source)
    if name == "_reconstruct":
        return _Frozen(qualified, checked_reconstruct, source)
    return _Frozen(qualified, target, source)  # dtype, scalar, _frombuffer: numpy checks them


def _empty_shape(shape: Any) -> bool:
    return (
        isinstance(shape, tuple)
        and all(isinstance(size, int) and not isinstance(size, bool) for size in shape)
        and all(size >= 0 for size in shape)
        and math.prod(shape) == 0
    )


def _seekable(file: IO[bytes]) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _walk(file: IO[bytes], source: str) -> None:
    """Check the opcodes of the stream from the current position to STOP, skipping arguments.

    Raises:
        CorruptPickleError: if the stream ends before STOP or holds a byte that is no opcode.
        UnsafePickleError: if it holds an opcode of ``_REFUSED_OPCODES``.
    """
    start = file.tell()
    end = file.seek(0, io.SEEK_END)
    file.seek(start)

    def truncated(position: int, op: pickletools.OpcodeInfo) -> CorruptPickleError:
        return CorruptPickleError(
            f"{source}: truncated: the {op.name} opcode at byte {position} reaches past the end "
            f"of the file ({end} bytes); the file was cut short (interrupted copy or download?)"
        )

    while True:
        position = file.tell()
        code = file.read(1)
        if not code:
            raise CorruptPickleError(
                f"{source}: truncated: the pickle ends at byte {position} without its STOP "
                f"opcode; the file was cut short (interrupted copy or download?)"
            )
        op = _OPCODES.get(code)
        if op is None:
            raise CorruptPickleError(
                f"{source}: byte {position} ({code!r}) is not a pickle opcode: the file is "
                "damaged or is not a pickle"
            )
        if op.name in _REFUSED_OPCODES:
            raise UnsafePickleError(
                f"{source}: refusing the pickle opcode {op.name} at byte {position}, which "
                f"{_REFUSED_OPCODES[op.name]}: dataset pickles never contain it; this file was "
                "not written by the MMSA toolkit or has been tampered with"
            )
        if op.name == "STOP":
            return
        arg = op.arg
        if arg is None:
            continue
        if arg.n == pickletools.UP_TO_NEWLINE:
            lines = 2 if arg is pickletools.stringnl_noescape_pair else 1
            for _ in range(lines):
                if not file.readline().endswith(b"\n"):
                    raise truncated(position, op)
            continue
        if arg.n >= 0:
            size = arg.n
        else:
            width, layout = _SIZE_PREFIX[arg.n]
            prefix = file.read(width)
            if len(prefix) < width:
                raise truncated(position, op)
            (size,) = struct.unpack(layout, prefix)
            if size < 0:
                raise CorruptPickleError(
                    f"{source}: the {op.name} opcode at byte {position} has a negative size"
                )
        if file.tell() + size > end:
            raise truncated(position, op)
        file.seek(size, io.SEEK_CUR)


def _current_numpy_module(module: str) -> str:
    """Map ``numpy.core.*`` (numpy 1.x pickles) and ``numpy._core.*`` to the installed layout.

    Importing ``numpy.core`` under numpy 2 emits a DeprecationWarning, and numpy before 1.26 has
    no ``numpy._core``, so both spellings are redirected to the one that exists.
    """
    for prefix in ("numpy.core.", "numpy._core."):
        if module.startswith(prefix):
            suffix = module[len(prefix) :]
            try:
                return importlib.import_module("numpy._core." + suffix).__name__
            except ImportError:
                return "numpy.core." + suffix
    return module


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`.

    Raises:
        UnsafePickleError: if the file references a global outside the allow-list or holds a
            refused opcode or call.
        CorruptPickleError: if the file is truncated or is not a well-formed pickle.
        FileNotFoundError: if ``path`` does not exist.
    """
    with open(path, "rb") as file:
        return SafeUnpickler(file, source=os.fspath(path)).load()
