"""A restricted unpickler for dataset pickles found on the internet.

A pickle is a program: ``pickle.load`` will call whatever global it names (``os.system``
included). Dataset pickles (learn2learn's miniImageNet cache, MetaOptNet's category splits)
only need numpy arrays, dtypes, numpy scalars and plain containers, so :func:`load_pickle`
resolves exactly those globals and refuses every other one *before* anything is called, with a
``DatasetError`` naming the file and the global. Python 2 pickles load with ``encoding="latin1"``
(numpy's documented way to read their raw array bytes).
"""

from __future__ import annotations

import _compat_pickle
import os
import pickle
from pathlib import Path

import numpy as np

from .errors import DatasetError

try:  # numpy >= 2 moved the pickled helpers to numpy._core; old pickles name numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

import codecs

_NUMPY = {
    "_reconstruct": _multiarray._reconstruct,
    "scalar": _multiarray.scalar,
    "_frombuffer": getattr(_numeric, "_frombuffer", None),
}

ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 protocol-2 pickles spell bytes
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray",
                "numpy.core.numeric", "numpy._core.numeric"):
    for _name, _obj in _NUMPY.items():
        if _obj is not None:
            ALLOWED[(_module, _name)] = _obj


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in :data:`ALLOWED`; anything else raises ``DatasetError``."""

    def __init__(self, file, *, path: str | os.PathLike | None = None, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as fix_imports does
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = ALLOWED.get((module, name))
        if obj is None:
            raise DatasetError(f"refused to unpickle global {module}.{name}: untrusted pickles may only "
                               "hold numpy arrays and plain containers", self._path)
        return obj

    def persistent_load(self, pid):
        raise DatasetError("refused to unpickle a persistent id", self._path)


def load_pickle(path: str | os.PathLike, *, encoding: str = "latin1") -> object:
    """Load an untrusted pickle file, rebuilding only numpy arrays and plain containers.

    ``encoding="latin1"`` reads Python 2 ``str`` objects (and numpy's raw array bytes in them) as
    Python 2 did; Python 3 pickles are unaffected. Truncated or corrupt files raise ``DatasetError``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path=path, encoding=encoding).load()
    except FileNotFoundError:
        raise DatasetError("no such pickle file", path) from None
    except IsADirectoryError:
        raise DatasetError("is a directory, not a pickle file", path) from None
    except DatasetError:
        raise
    except EOFError:
        raise DatasetError("truncated pickle (ran out of data)", path) from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise DatasetError(f"corrupt or truncated pickle ({type(exc).__name__}: {exc})", path) from None
