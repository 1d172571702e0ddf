"""``cupy.cuda.nccl`` of the stand-in: a communicator over raw device pointers.

``allReduce(sendbuf, recvbuf, count, datatype, op, stream)`` takes pointers as NCCL
does; they are resolved to the stand-in's device allocations (a pointer outside any
allocation, or a range running past its end, is NCCL's invalid-argument error), and
the reduction is queued on ``stream`` like a kernel. One rank needs nothing else;
with more ranks (under ``mpiexec``) the sums travel through ``mpi4py``'s
``COMM_WORLD`` when the work runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _cuda
from ._runtime import machine
from ._strict import API, StrictObject

__all__ = ["NcclCommunicator", "NcclError", "get_unique_id", "get_version", "get_build_version"]

_VALUES = API["modules"]["cupy.cuda.nccl"]["values"]
_DTYPES = {
    _VALUES["NCCL_FLOAT16"]: np.float16, _VALUES["NCCL_FLOAT32"]: np.float32,
    _VALUES["NCCL_FLOAT64"]: np.float64, _VALUES["NCCL_INT32"]: np.int32,
    _VALUES["NCCL_INT64"]: np.int64, _VALUES["NCCL_UINT8"]: np.uint8, _VALUES["NCCL_INT8"]: np.int8,
}
_OPS = {_VALUES["NCCL_SUM"]: "sum", _VALUES["NCCL_PROD"]: "prod", _VALUES["NCCL_MAX"]: "max",
        _VALUES["NCCL_MIN"]: "min", _VALUES["NCCL_AVG"]: "avg"}


class NcclError(RuntimeError):
    """``cupy.cuda.nccl.NcclError``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


NcclError.__module__ = "cupy_backends.cuda.libs.nccl"


def get_unique_id() -> bytes:
    """CuPy 14 returns the NCCL unique id as bytes (128 of them)."""
    return os.urandom(128)


def get_version() -> int:
    return 22805


def get_build_version() -> int:
    return 22805


def _world() -> Any:
    from mpi4py import MPI

    return MPI.COMM_WORLD


class NcclCommunicator(StrictObject):
    """One rank's communicator, on the device current at construction."""

    _cupy_name = "cupy.cuda.nccl.NcclCommunicator"
    __slots__ = ("_ndev", "_rank", "_device", "_live")

    def __init__(self, ndev: int, commId: bytes, rank: int, config: Any = None) -> None:  # noqa: N803
        if not isinstance(commId, bytes) or len(commId) != 128:
            raise TypeError("commId must be the bytes returned by get_unique_id()")
        if not 0 <= rank < ndev:
            raise NcclError(4, "NCCL_ERROR_INVALID_ARGUMENT: invalid argument (run with NCCL_DEBUG=WARN for details)")
        if ndev > 1:
            world = _world()
            if world.Get_size() != ndev or world.Get_rank() != rank:
                raise NcclError(4, "NCCL_ERROR_INVALID_ARGUMENT: the stand-in runs one rank per MPI process")
        self._ndev, self._rank = int(ndev), int(rank)
        self._device = machine().current_device
        self._live = True

    def device_id(self) -> int:
        return self._device

    def rank_id(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._ndev

    def destroy(self) -> None:
        self._live = False

    def abort(self) -> None:
        self._live = False

    def _buffer(self, ptr: int, count: int, dtype: Any) -> tuple[np.ndarray, Any]:
        nbytes = int(count) * np.dtype(dtype).itemsize
        found = machine().addresses.find(int(ptr), max(nbytes, 1))
        if found is None:
            raise NcclError(4, "NCCL_ERROR_INVALID_ARGUMENT: buffer is not device memory of the stand-in "
                               f"(pointer 0x{int(ptr):x}, {nbytes} bytes)")
        mem, offset = found
        if mem.device_id != self._device:
            raise NcclError(4, f"NCCL_ERROR_INVALID_ARGUMENT: buffer on device {mem.device_id}, "
                               f"communicator on device {self._device}")
        return np.ndarray((int(count),), dtype=dtype, buffer=mem.buf, offset=offset), mem

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,  # noqa: N802
                  stream: int) -> None:
        if not self._live:
            raise NcclError(4, "NCCL_ERROR_INVALID_ARGUMENT: communicator destroyed")
        try:
            dtype, kind = _DTYPES[datatype], _OPS[op]
        except KeyError:
            raise NcclError(4, "NCCL_ERROR_INVALID_ARGUMENT: unsupported datatype or op") from None
        send, send_mem = self._buffer(sendbuf, count, dtype)
        recv, recv_mem = self._buffer(recvbuf, count, dtype)
        s = _cuda.stream_from_ptr(int(stream))
        m = machine()
        prev = m.current_device
        m.current_device = self._device
        try:
            q = s._queue_now()
        finally:
            m.current_device = prev
        ndev = self._ndev

        def run() -> None:
            values = send.copy()
            if ndev > 1:
                from mpi4py import MPI

                mpi_op = {"sum": MPI.SUM, "avg": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}[kind]
                total = np.empty_like(values)
                _world().Allreduce(values, total, op=mpi_op)
                values = total
            if kind == "avg":
                values = values / ndev
            np.copyto(recv, values, casting="unsafe")

        pos = q.enqueue(run)
        send_mem.touched(q, pos)
        recv_mem.touched(q, pos)
