"""A restricted unpickler for dataset files: numpy arrays and builtin containers only.

Unpickling runs whatever callables the file names, so an untrusted ``.pkl`` can execute any
command. The processed MSA pickles only need numpy's array, dtype and scalar reconstruction
(plus ``_codecs.encode``, which protocol 2 uses to store bytes); lists, dicts, strings and
numbers are pickle opcodes that name no callable. Every other global is refused before it is
imported, so nothing the file names is ever looked up, let alone called.
"""

from __future__ import annotations

import importlib
import os
import pickle
from typing import IO, Any

# (module, name) as written by numpy 1.x ("numpy.core") and 2.x ("numpy._core") pickles.
_NUMPY_CORE_NAMES = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}
_BUILTIN_DATA_TYPES = ("bool", "int", "float", "complex", "str", "bytes", "bytearray", "list")
_BUILTIN_DATA_TYPES += ("tuple", "dict", "set", "frozenset")
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
    # data constructors only: none of them reads, writes, imports or evaluates anything
    | {("builtins", name) for name in _BUILTIN_DATA_TYPES}
    | {
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")
        for module, name in _NUMPY_CORE_NAMES
    }
)

# Protocols 0-2 write Python 2's module name for the builtins.
_PYTHON2_MODULES = {"__builtin__": "builtins"}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list of :class:`SafeUnpickler`."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy and builtin globals data files need.

    Args:
        file: a binary file object open for reading.
        source: how to name the file in error messages (e.g. its path).
    """

    def __init__(self, file: IO[bytes], *, source: str = "<pickle>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _PYTHON2_MODULES.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refusing to load the global '{module}.{name}': a dataset pickle "
                "may only reference numpy arrays, dtypes and scalars and builtin containers; "
                "this file was not written by the MMSA toolkit or has been tampered with"
            )
        return getattr(importlib.import_module(_current_numpy_module(module)), name)


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
        UnsafePickleError: if the file references any global outside the allow-list.
        FileNotFoundError: if ``path`` does not exist.
    """
    with open(path, "rb") as file:
        return SafeUnpickler(file, source=os.fspath(path)).load()
