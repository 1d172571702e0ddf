"""``cupyx.scipy.sparse.csr_matrix`` as far as mlpx's estimators use it.

The matrix is three device arrays (``data``, ``indices``, ``indptr``). Densifying
(``toarray``) and casting (``astype``) are queued device work like any kernel; row
selection synchronises first (the result's number of non-zeros depends on the data,
as it does in CuPy) and computes with SciPy on what the device holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ._ndarray import _empty, _enqueue, host_to_device, ndarray, synchronize_current
from ._strict import StrictObject

__all__ = ["csr_matrix", "issparse", "isspmatrix", "isspmatrix_csr", "spmatrix"]


class spmatrix(StrictObject):  # noqa: N801 - CuPy's name
    """Base class of the stand-in's sparse matrices."""

    __slots__ = ()


class csr_matrix(spmatrix):  # noqa: N801 - CuPy's name
    """Compressed sparse rows on the device."""

    _cupy_name = "cupyx.scipy.sparse.csr_matrix"
    __slots__ = ("data", "indices", "indptr", "_shape")
    format = "csr"
    ndim = 2

    def __init__(self, arg1: Any, shape: Any = None, dtype: Any = None, copy: bool = False) -> None:
        if sp.issparse(arg1):
            host = sp.csr_matrix(arg1)
            host.sort_indices()
            self.data = host_to_device(host.data if dtype is None else host.data.astype(dtype))
            self.indices = host_to_device(host.indices)
            self.indptr = host_to_device(host.indptr)
            self._shape = host.shape
        elif isinstance(arg1, csr_matrix):
            self.data = arg1.data.copy() if copy else arg1.data
            self.indices = arg1.indices.copy() if copy else arg1.indices
            self.indptr = arg1.indptr.copy() if copy else arg1.indptr
            self._shape = arg1.shape
            if dtype is not None:
                self.data = self.data.astype(dtype)
        elif isinstance(arg1, tuple) and len(arg1) == 3 and all(isinstance(a, ndarray) for a in arg1):
            self.data, self.indices, self.indptr = arg1
            if shape is None:
                raise NotImplementedError("csr_matrix((data, indices, indptr)) without shape")
            self._shape = tuple(shape)
            if dtype is not None:
                self.data = self.data.astype(dtype)
        else:
            raise ValueError("Unsupported initializer format")

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nnz(self) -> int:
        return self.data.size

    def __repr__(self) -> str:
        return f"<{self._shape[0]}x{self._shape[1]} sparse matrix of type {self.dtype} with {self.nnz} stored elements in Compressed Sparse Row format>"

    def get(self, stream: Any = None) -> sp.csr_matrix:
        """A SciPy copy on the host (synchronises)."""
        return sp.csr_matrix((self.data.get(stream), self.indices.get(stream), self.indptr.get(stream)),
                             shape=self._shape)

    def tocsr(self, copy: bool = False) -> "csr_matrix":
        return csr_matrix(self, copy=True) if copy else self

    def astype(self, t: Any) -> "csr_matrix":
        if np.dtype(t) == self.dtype:
            return csr_matrix(self, copy=True)
        return csr_matrix((self.data.astype(t), self.indices, self.indptr), shape=self._shape)

    def toarray(self, order: Any = None, out: Any = None) -> ndarray:
        res = _empty(self._shape, self.dtype) if out is None else out
        data, indices, indptr, shape = self.data._v, self.indices._v, self.indptr._v, self._shape
        res_v = res._v

        def run() -> None:
            res_v[...] = sp.csr_matrix((data, indices, indptr), shape=shape).toarray()

        _enqueue(run, res, self.data, self.indices, self.indptr)
        return res

    def _host_view(self) -> sp.csr_matrix:
        synchronize_current()
        return sp.csr_matrix((self.data._v, self.indices._v, self.indptr._v), shape=self._shape)

    def __getitem__(self, key: Any) -> "csr_matrix":
        rows = key
        if isinstance(key, tuple):
            if len(key) != 2 or key[1] != slice(None):
                raise NotImplementedError("the stand-in's csr_matrix selects rows only")
            rows = key[0]
        if isinstance(rows, ndarray):
            synchronize_current()
            rows = rows._v.copy()
        elif isinstance(rows, (list, np.ndarray)):
            rows = np.asarray(rows)
        elif not isinstance(rows, (slice, int, np.integer)):
            raise IndexError(f"unsupported index {key!r}")
        return csr_matrix(self._host_view()[rows])

    def __len__(self) -> int:
        raise TypeError("sparse matrix length is ambiguous; use getnnz() or shape[0]")


csr_matrix.__module__ = "cupyx.scipy.sparse._csr"
spmatrix.__module__ = "cupyx.scipy.sparse._base"


def issparse(x: Any) -> bool:
    return isinstance(x, spmatrix)


def isspmatrix(x: Any) -> bool:
    return isinstance(x, spmatrix)


def isspmatrix_csr(x: Any) -> bool:
    return isinstance(x, csr_matrix)
