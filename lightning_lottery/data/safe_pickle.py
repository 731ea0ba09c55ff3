"""Reading pickled dataset files without running code from them.

Some standard datasets ship as Python pickles (CIFAR-10's batches, the Planetoid files of Cora). Unpickling
can call any importable function, so a planted file could run code; :func:`restricted_load` resolves only the
globals a caller allows (numpy's array constructors, a few containers, stand-ins for scipy's sparse matrices)
and refuses everything else with an :class:`UnsafePickleError` that names the file.
"""

from __future__ import annotations

import collections
import os
import pickle
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from lightning_lottery.data.root import CorruptDataError

__all__ = [
    "CONTAINER_GLOBALS",
    "NUMPY_GLOBALS",
    "SPARSE_GLOBALS",
    "SparseMatrixState",
    "UnsafePickleError",
    "restricted_load",
]

# ndarray.__reduce__ gives numpy's own _reconstruct (numpy.core in 1.x, numpy._core in 2.x): no private import
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]

NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

# Python 2 pickles name builtins ``__builtin__``; an overridden find_class sees the raw names.
CONTAINER_GLOBALS: dict[tuple[str, str], Any] = {
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
    ("collections", "defaultdict"): collections.defaultdict,
}


class SparseMatrixState:
    """What a pickled scipy sparse matrix holds (``data``, ``indices``, ``indptr``, shape), kept as plain arrays.

    Stands in for scipy's classes while unpickling, so no scipy code runs; :meth:`to_dense` rebuilds the matrix.
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a sparse matrix's state must be a dict, got {type(state).__name__}")
        self.__dict__.update(state)

    def to_dense(self) -> np.ndarray:
        """The dense matrix of a CSR state (the format the Planetoid files use)."""
        state = self.__dict__
        shape = state.get("_shape", state.get("shape"))
        fmt = state.get("format", "csr")
        if fmt != "csr" or shape is None or not all(k in state for k in ("data", "indices", "indptr")):
            raise ValueError(f"not a CSR sparse matrix (format {fmt!r}, keys {sorted(state)})")
        rows, cols = (int(n) for n in shape)
        data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
        if indptr.shape != (rows + 1,) or len(indices) != len(data) or int(indptr[-1]) != len(data):
            raise ValueError(f"inconsistent CSR arrays for shape {(rows, cols)}")
        if len(indices) and (indices.min() < 0 or indices.max() >= cols):
            raise ValueError(f"CSR column index out of range for shape {(rows, cols)}")
        dense = np.zeros((rows, cols), dtype=data.dtype)
        row_of = np.repeat(np.arange(rows), np.diff(indptr))
        np.add.at(dense, (row_of, indices), data)  # duplicates add up, as scipy's todense does
        return dense


SPARSE_GLOBALS: dict[tuple[str, str], Any] = {
    (module, name): SparseMatrixState
    for module in ("scipy.sparse.csr", "scipy.sparse._csr")
    for name in ("csr_matrix", "csr_array")
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickled data file referenced a global outside the allowed ones (it may try to run code)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(
        self, file: BinaryIO, source: str, allowed: Mapping[tuple[str, str], Any], what: str, contents: str
    ) -> None:
        super().__init__(file, encoding="latin1")  # these datasets were pickled by Python 2
        self.source, self.allowed, self.what, self.contents = source, allowed, what, contents

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            names = ", ".join(sorted({f"{m}.{n}" for m, n in self.allowed}))
            raise UnsafePickleError(
                f"Refusing to unpickle {self.source}: it references {module}.{name}, but {self.what} holds only "
                f"{self.contents} (allowed globals: {names}). The file is not genuine; delete it and fetch the dataset "
                "again."
            )
        return found


def restricted_load(
    path: str | os.PathLike[str],
    allowed: Mapping[tuple[str, str], Any] = NUMPY_GLOBALS,
    what: str = "this dataset file",
    contents: str = "plain data",
) -> Any:
    """Unpickle ``path`` resolving only the ``allowed`` globals (``(module, name) -> object``).

    ``what`` and ``contents`` word the refusal: "<what> holds only <contents>".

    Raises:
        UnsafePickleError: the file references any other global; nothing from it has run.
        CorruptDataError: the file is truncated or not a pickle (the message names it).

    Example::

        >>> import pickle, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "batch")
        >>> with open(path, "wb") as f:
        ...     pickle.dump({"data": np.arange(3)}, f, protocol=4)
        >>> restricted_load(path)["data"].tolist()
        [0, 1, 2]
    """
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, str(path), allowed, what, contents).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise CorruptDataError(f"{path} is truncated or corrupt: {type(err).__name__}: {err}") from err
