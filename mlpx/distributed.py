"""Reducers: the collectives of data-parallel training, and the one-rank case.

Every training loop in mlpx (``Sequential.fit``, the estimators' solvers) runs on a
*reducer*. Single-process training is the one-rank case: :class:`LocalReducer`,
whose all-reduce is the identity and whose errors are raised where they happen.
Across processes, :class:`GradientReducer` runs the same collectives over an mpi4py
communicator and :class:`NcclReducer` the gradient all-reduce over NCCL. Launch with
an MPI launcher; every rank passes its own shard::

    mpirun -n 4 python train.py        # inside: model.fit(X_shard, y_shard, comm=MPI.COMM_WORLD)

Reducer contract
----------------
Every method is *collective*: all ranks call it, in the same order.

``rank``, ``size``, ``is_root``
    Position in the communicator; rank 0 is the root (it prints and checkpoints).
``agree_settings(fingerprint)``
    Every rank compares a dict of the settings that must match (architecture,
    dtype, loss, optimizer, epochs, ...); a mismatch raises ``ValueError`` on every
    rank, naming the field and each rank's value.
``broadcast_params(params)``
    Overwrite the flat device buffer ``params`` (shape ``(n_params,)``) with rank
    0's, inside the error agreement below.
``allreduce_gradients(grads, loss, error=None, where="") -> loss``
    ``grads`` (flat device buffer) holds this rank's gradient of
    ``Σ_{i in its batch} w_i l_i / D`` and ``loss`` that sum, where ``D`` is the
    *global* denominator of the step (rows, or Σ w, of every rank's batch; the loop
    agrees on it once per epoch). On return ``grads`` and the returned loss are the
    sums over ranks, i.e. exactly the gradient and loss of the union of the ranks'
    batches. The loss and an error flag travel in two extra slots of the same
    buffer, so a step costs **one** all-reduce. A rank whose local step failed
    passes ``error=exc`` (its ``grads`` are ignored) and every rank raises: that
    rank its own exception, the others :class:`RankFailedError`. With device
    buffers the flag is only read at the next ``check_errors`` (the epoch's
    end), so a step never waits for the host.
``check_errors(error, where)``, ``agreed(where, fn, *args)``
    The same failure agreement for code outside a step (setup, epoch end): the
    second runs ``fn`` and agrees on whether it raised.
``agree_any(flag) -> bool``, ``allreduce_sum(values) -> list[float]``, ``allreduce_max(value) -> int``, ``allgather(obj) -> list``, ``bcast(obj) -> obj``
    Small host collectives (stopping, metrics, sizes, labels, rank 0's decisions).

Weighting: dividing by the global ``D`` before the all-reduce makes the combined
gradient exactly the one a single process computes on the union of the ranks'
batches. So ``k`` ranks with per-rank batch ``b`` train like one process with batch
``k·b``: exactly so when rank ``r``'s ``j``-th batch is the ``r``-th block of the
single process's ``j``-th batch (:func:`shard_indices` with ``block=b`` and
``shuffle=False``), statistically so otherwise. Ranks with fewer rows run the same
number of steps (the maximum over ranks) and contribute nothing once their rows run
out.

Failures: a local step (or setup, or an epoch's end) that raises, even with
``SystemExit`` or ``KeyboardInterrupt``, makes every rank raise at the next
collective, so no rank hangs waiting for one that has stopped. A ``BaseException``
that escapes elsewhere inside ``fit`` calls ``MPI_Abort``, which ends every rank. A
process that crashes outside ``fit`` cannot take part in that protocol; launch with
``python -m mpi4py train.py`` or call :func:`abort_on_exception`, which turn an
uncaught exception into ``MPI_Abort`` (the launcher then ends every rank).

NCCL: ``comm="nccl"`` builds a ``cupy.cuda.nccl.NcclCommunicator`` over
``MPI.COMM_WORLD`` (the unique id is broadcast with mpi4py) on the model's GPU, and
all-reduces device buffers on the current stream. Build the model on
:func:`local_gpu_backend` (``"gpu:<node-local rank % n_gpus>"``). NCCL refuses
two ranks on one GPU; use an MPI communicator there (device buffers are staged
through the host unless ``MLPX_MPI_CUDA_AWARE=1`` says the MPI is CUDA-aware).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Sequence

import numpy as np

from mlpx.backends import Backend, BackendError, BackendUnavailableError, get_backend, kernel

__all__ = [
    "GradientReducer",
    "LocalReducer",
    "NcclReducer",
    "RankFailedError",
    "Reducer",
    "abort_on_exception",
    "local_gpu_backend",
    "is_agreed",
    "make_reducer",
    "mark_agreed",
    "shard_indices",
]

Array = Any
_MPI_HINT = 'data-parallel training needs mpi4py and an MPI library: pip install "mlpx[mpi]"'


class RankFailedError(RuntimeError):
    """Another rank raised; this rank stops too instead of waiting for it forever.

    Parameters
    ----------
    rank : int
        The (lowest) rank that failed.
    where : str
        Where it failed ("setup", "epoch 3, step 7", ...).
    message : str
        That rank's exception, as ``"TypeName: text"``.
    remote_traceback : str
        That rank's formatted traceback.

    Attributes
    ----------
    rank : int
        The (lowest) rank that failed.
    where : str
        Where it failed.
    remote_traceback : str
        That rank's formatted traceback.
    """

    def __init__(self, rank: int, where: str, message: str, remote_traceback: str) -> None:
        self.rank, self.where, self.remote_traceback = rank, where, remote_traceback
        super().__init__(f"rank {rank} failed ({where}): {message}")


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"{_MPI_HINT} ({exc})") from exc
    return MPI


def mark_agreed(error: BaseException) -> BaseException:
    """Flag an exception every rank has agreed on (no MPI_Abort needed for it).

    Parameters
    ----------
    error : BaseException
        The exception every rank raises.

    Returns
    -------
    BaseException
        ``error`` itself, flagged.
    """
    try:
        error.mlpx_agreed = True  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass
    return error


def is_agreed(error: BaseException) -> bool:
    """Whether ``error`` was raised on every rank through the failure agreement.

    Parameters
    ----------
    error : BaseException
        An exception caught in training.

    Returns
    -------
    bool
        True when every rank raised it through the failure agreement.
    """
    return bool(getattr(error, "mlpx_agreed", False)) or isinstance(error, RankFailedError)


# ------------------------------------------------------------------ kernels
@kernel
def _fill(xp: Any, a: Array, value: float) -> Array:
    """``a`` filled with ``value`` (in place on NumPy and CuPy)."""
    return xp.full(a.shape, value, dtype=a.dtype)


@_fill.register("numpy")
def _fill_np(xp: Any, a: Array, value: float) -> Array:
    a.fill(value)
    return a


# ------------------------------------------------------------------ reducers
class Reducer:
    """The one-rank reducer contract (see the module docstring); the base of all.

    Parameters
    ----------
    backend : str or Backend, default "cpu"
        Where the model's buffers live.
    """

    rank = 0
    size = 1
    is_root = True

    def __init__(self, backend: str | Backend = "cpu") -> None:
        self.backend = get_backend(backend)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank}/{self.size} on {self.backend.name}>"

    def agree_settings(self, fingerprint: dict[str, Any]) -> None:
        """Raise on every rank unless every rank passes the same ``fingerprint``.

        Values are compared as their canonical JSON text (``repr`` for what JSON
        cannot hold), so ``1`` and ``1.0`` differ, as they may train differently.

        Parameters
        ----------
        fingerprint : dict
            Setting name -> value (architecture, dtype, optimizer, epochs, ...).

        Raises
        ------
        ValueError
            On every rank when the ranks disagree, naming each field and each rank's value.
        """

    def broadcast_params(self, params: Array) -> None:
        """Overwrite ``params`` with rank 0's.

        Parameters
        ----------
        params : array, shape (n_params,)
            The model's flat parameter buffer, overwritten in place.
        """

    def params_in_sync(self, params: Array) -> bool:
        """Whether ``params`` is bitwise identical on every rank.

        Parameters
        ----------
        params : array, shape (n_params,)
            The model's flat parameter buffer.

        Returns
        -------
        bool
            True when every rank holds the same bytes.
        """
        return True

    def allreduce_gradients(
        self, grads: Array, loss: Any, error: BaseException | None = None, where: str = ""
    ) -> Any:
        """Sum ``grads`` (in place) and ``loss`` over ranks; see the module docstring.

        Parameters
        ----------
        grads : array, shape (n_params,)
            This rank's flat gradient, already divided by the step's global denominator;
            summed over ranks in place.
        loss : float or 0-d array
            This rank's loss sum, on the same scale.
        error : BaseException, optional
            This rank's step failed with it; every rank raises.
        where : str, default ""
            Where in training this is, for the error message.

        Returns
        -------
        float or 0-d array
            The loss summed over ranks.
        """
        if error is not None:
            raise mark_agreed(error)
        return loss

    def check_errors(self, error: BaseException | None, where: str = "") -> None:
        """Raise on every rank if any rank passes an exception (a collective).

        The rank that failed re-raises its own exception; the others raise
        :class:`RankFailedError` with the lowest failing rank's message.

        Parameters
        ----------
        error : BaseException or None
            This rank's exception, if any.
        where : str, default ""
            Where in training this is, for the error message.
        """
        if error is not None:
            raise mark_agreed(error)

    def agreed(self, where: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)``; if it raised on any rank, raise on every rank.

        The failing rank re-raises its own exception (even ``SystemExit`` or
        ``KeyboardInterrupt``), the others :class:`RankFailedError`, so no rank
        waits forever in the next collective for one that has stopped. On one
        rank it is a plain call.

        Parameters
        ----------
        where : str
            Where in training this is, for the error message.
        fn : callable
            The work to run on this rank.
        *args, **kwargs
            Passed to ``fn``.

        Returns
        -------
        object
            What ``fn`` returned.
        """
        if self.size == 1:
            return fn(*args, **kwargs)
        error: BaseException | None = None
        result = None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            error = exc
        self.check_errors(error, where)
        return result

    def agree_any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one rank (the same answer on every rank).

        Parameters
        ----------
        flag : bool
            This rank's vote.

        Returns
        -------
        bool
            True when any rank voted true.
        """
        return bool(flag)

    def allreduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks of a list of floats (the same length everywhere).

        Parameters
        ----------
        values : sequence of float
            This rank's values.

        Returns
        -------
        list of float
            The sums, one per value.
        """
        return [float(v) for v in values]

    def allreduce_max(self, value: int) -> int:
        """Maximum over ranks of an integer.

        Parameters
        ----------
        value : int
            This rank's value.

        Returns
        -------
        int
            The largest value of any rank.
        """
        return int(value)

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank.

        Parameters
        ----------
        obj : object
            Picklable.

        Returns
        -------
        list
            ``size`` items; item r is rank r's ``obj``.
        """
        return [obj]

    def bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank.

        Parameters
        ----------
        obj : object
            Picklable; only rank 0's is used.

        Returns
        -------
        object
            Rank 0's ``obj``.
        """
        return obj

    def abort(self, error: BaseException) -> None:
        """End every rank now (a ``BaseException`` escaped the agreement). No-op here.

        Parameters
        ----------
        error : BaseException
            What escaped; reported on standard error before the MPI job ends.
        """


class LocalReducer(Reducer):
    """Single-process training: identity collectives, errors raised where they happen.

    Parameters
    ----------
    backend : str or Backend
        Where the model's buffers live.
    """


class GradientReducer(Reducer):
    """Collectives of data-parallel training over an mpi4py communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        All ranks of the job (or a sub-communicator).
    backend : str or Backend
        Where the gradient buffers live.
    cuda_aware : bool, optional
        Hand device buffers to MPI directly (CUDA-aware MPI). Defaults to the
        ``MLPX_MPI_CUDA_AWARE`` environment variable; otherwise GPU buffers are
        staged through host memory.

    Attributes
    ----------
    rank, size : int
    is_root : bool
    allreduce_seconds : float
        Wall time spent in gradient all-reduces (blocking calls, so it includes
        waiting for slower ranks); ``allreduce_calls`` counts them.
    """

    def __init__(self, comm: Any, backend: str | Backend = "cpu", cuda_aware: bool | None = None) -> None:
        super().__init__(backend)
        if not self.backend.mutable:
            # The all-reduce sums into one preallocated buffer that MPI (or NCCL) writes.
            raise BackendError(
                f"data-parallel training (comm=) needs writable buffers, and backend "
                f"{self.backend.name!r} has immutable arrays; train in one process "
                f"(comm=None) or on backend='cpu' / 'gpu'"
            )
        self.MPI = _import_mpi()
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self.is_root = self.rank == 0
        if cuda_aware is None:
            cuda_aware = os.environ.get("MLPX_MPI_CUDA_AWARE", "0").lower() in ("1", "true", "yes")
        self.cuda_aware = bool(cuda_aware)
        self._buf: Array | None = None
        self._buf_key: tuple[int, str] = (0, "")
        self.allreduce_seconds = 0.0
        self.allreduce_calls = 0

    # ------------------------------------------------- small host collectives
    def agree_any(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def allreduce_sum(self, values: Sequence[float]) -> list[float]:
        send = np.asarray(values, dtype=np.float64).reshape(-1)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=self.MPI.SUM)
        return [float(v) for v in recv]

    def allreduce_max(self, value: int) -> int:
        return int(self.comm.allreduce(int(value), op=self.MPI.MAX))

    def allgather(self, obj: Any) -> list[Any]:
        gathered: list[Any] = self.comm.allgather(obj)
        return gathered

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def check_errors(self, error: BaseException | None, where: str = "") -> None:
        # Raise on every rank if any rank passes an exception (collective). The rank
        # that failed re-raises its own exception; the others raise
        # :class:`RankFailedError` with the lowest failing rank's message.
        if self.agree_any(error is not None):
            self._raise_agreed(error, where)

    def _raise_agreed(self, error: BaseException | None, where: str) -> None:
        info = None
        if error is not None:
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            info = (f"{type(error).__name__}: {error}", tb)
        infos = self.comm.allgather(info)
        if error is not None:
            raise mark_agreed(error)
        rank, (message, tb) = next((r, i) for r, i in enumerate(infos) if i is not None)
        raise RankFailedError(rank, where, message, tb)

    def abort(self, error: BaseException) -> None:
        # ``MPI_Abort``: the launcher ends every rank (nothing else reaches them
        # now).
        sys.stderr.write(
            f"[mlpx rank {self.rank}] {type(error).__name__} inside fit, outside the failure "
            "agreement: aborting the MPI job so that no rank waits forever\n"
        )
        sys.stderr.flush()
        self.comm.Abort(1)

    # ---------------------------------------------------------- settings
    def agree_settings(self, fingerprint: dict[str, Any]) -> None:
        # Every rank's ``fingerprint`` must equal rank 0's; else ValueError
        # everywhere. Values are compared as their canonical JSON text (``repr`` for
        # what JSON cannot hold), so ``1`` and ``1.0`` differ, as they may train
        # differently.
        mine = {k: _canonical(v) for k, v in fingerprint.items()}
        every = self.comm.allgather(mine)
        fields = sorted(set().union(*every))
        bad = []
        for field in fields:
            values = [f.get(field, "<missing>") for f in every]
            if any(v != values[0] for v in values[1:]):
                shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
                bad.append(f"{field!r} ({shown})")
        if bad:
            raise mark_agreed(ValueError(
                "with comm, every rank must train the same model with the same settings, "
                "but the ranks disagree on " + "; ".join(bad)
            ))

    # ------------------------------------------------------- parameter sync
    def broadcast_params(self, params: Array) -> None:
        # Overwrite the flat buffer ``params`` (shape (n_params,)) with rank 0's.
        # Each rank's local part (the copy to and from the host) runs inside the
        # failure agreement, so a rank that cannot take part never leaves the others
        # waiting in ``Bcast``; the buffers' sizes were agreed before (settings).
        be = self.backend
        host: np.ndarray | None = None
        error: BaseException | None = None
        try:
            host = np.array(be.to_numpy(params), copy=True)
        except BaseException as exc:
            error = exc
        self.check_errors(error, "broadcasting rank 0's parameters")
        assert host is not None
        self.comm.Bcast(host, root=0)
        try:
            be.copy(be.asarray(host, dtype=host.dtype.name), params)  # in place: mutable backends only
        except BaseException as exc:
            error = exc
        self.check_errors(error, "broadcasting rank 0's parameters")

    def params_in_sync(self, params: Array) -> bool:
        # One small all-reduce of two checksums of the bytes.
        host = np.ascontiguousarray(self.backend.to_numpy(params))
        digest = np.frombuffer(host.tobytes(), dtype=np.uint8)
        # Two cheap position-weighted checksums; equal bytes give equal sums everywhere.
        pos = np.arange(1, digest.size + 1, dtype=np.float64)
        sums = np.array([digest.sum(dtype=np.float64), (digest * pos).sum()])
        lo, hi = np.empty(2), np.empty(2)
        self.comm.Allreduce(sums, lo, op=self.MPI.MIN)
        self.comm.Allreduce(sums, hi, op=self.MPI.MAX)
        return bool(np.array_equal(lo, hi))

    # ------------------------------------------------------- gradient all-reduce
    def _buffer(self, n: int, dtype: Any) -> Array:
        name = "float64" if "64" in str(dtype) else "float32"
        if self._buf is None or self._buf_key != (n, name):
            # n gradient slots, then the loss and the error flag.
            self._buf = self.backend.zeros(n + 2, name)
            self._buf_key = (n, name)
        return self._buf

    def allreduce_gradients(
        self, grads: Array, loss: Any, error: BaseException | None = None, where: str = ""
    ) -> Any:
        """Sum ``grads`` in place and ``loss`` over ranks; see the module docstring.

        Parameters
        ----------
        grads : array, shape (n_params,)
            This rank's gradient, already divided by the step's global denominator.
        loss : float or 0-d array
            This rank's loss, divided by the same denominator (0 without rows).
        error : exception, optional
            This rank's step failed: every rank raises (at once with host buffers,
            at the next ``check_errors`` with device buffers).
        where : str
            Shown in the error other ranks raise.

        Returns
        -------
        float or 0-d array
            The summed loss (a 0-d device array with device buffers: no sync).
        """
        be = self.backend
        n = int(grads.shape[0])
        buf = self._buffer(n, grads.dtype)
        if error is None:
            be.copy(grads, buf[:n])
            buf[n] = loss
            buf[n + 1] = 0.0
        else:
            self._buf = buf = be.run(_fill, buf, 0.0)
            buf[n + 1] = 1.0
        t0 = time.perf_counter()
        failed = self._allreduce_buffer(buf)
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        if failed:
            self._raise_agreed(error, where)
        be.copy(buf[:n], grads)
        return buf[n] * 1.0  # a copy: the buffer is overwritten by the next step

    def _allreduce_buffer(self, buf: Array) -> bool:
        """Sum ``buf`` over ranks, in place.

        Returns True when the summed error flag (the last slot) is known to be set
        without another device synchronisation, i.e. when the sum is on the host.
        """
        be, MPI = self.backend, self.MPI
        if isinstance(buf, np.ndarray):
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return bool(buf[-1] > 0)
        if be.is_gpu and self.cuda_aware:
            be.synchronize()  # MPI reads device memory outside CuPy's stream order
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return False
        host = np.array(be.to_numpy(buf), copy=True)
        self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        be.copy(be.asarray(host, dtype=host.dtype.name), buf)
        return bool(host[-1] > 0)


def _canonical(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


class NcclReducer(GradientReducer):
    """Gradient all-reduce with NCCL on device buffers; control collectives over MPI.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        Used to broadcast NCCL's unique id and for the small host collectives.
    backend : Backend
        A GPU backend: the NCCL communicator lives on its device.
    """

    def __init__(self, comm: Any, backend: str | Backend) -> None:
        super().__init__(comm, backend)
        error: BaseException | None = None
        uid = None
        try:  # a rank that cannot set up must not leave the others waiting in bcast
            if not self.backend.is_gpu:
                raise ValueError(
                    "comm='nccl' needs a model on the GPU; build it with "
                    "backend=mlpx.distributed.local_gpu_backend()"
                )
            from cupy.cuda import nccl

            if not nccl.available:  # CuPy's wheels do not ship libnccl
                raise BackendUnavailableError(
                    "comm='nccl' needs the NCCL library, which CuPy could not load; install it with: "
                    'pip install "mlpx[nccl]" (nvidia-nccl-cu12; nvidia-nccl-cu13 for CUDA 13)'
                )
            self._nccl_mod = nccl
            if self.is_root:
                uid = nccl.get_unique_id()
        except Exception as exc:
            error = exc
        self.check_errors(error, "NCCL set-up")
        uid = comm.bcast(uid, root=0)
        try:
            with self.backend.device:
                self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        except Exception as exc:  # e.g. two ranks on one GPU: ncclInvalidUsage
            error = exc
        self.check_errors(error, "NCCL communicator set-up")

    def _allreduce_buffer(self, buf: Array) -> bool:
        import cupy

        nccl = self._nccl_mod
        dtype = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[buf.dtype.name]
        with self.backend.device:
            stream = cupy.cuda.get_current_stream()
            ptr = buf.data.ptr
            # Enqueued on the current stream: ordered after the backward pass that
            # filled the buffer and before the update that reads it, no host sync.
            self.nccl.allReduce(ptr, ptr, buf.size, dtype, nccl.NCCL_SUM, stream.ptr)
        return False


_REDUCERS: dict[tuple[Any, str], GradientReducer] = {}


def make_reducer(comm: Any, backend: str | Backend = "cpu") -> Reducer:
    """The reducer for ``comm`` on ``backend`` (MPI ones cached, so NCCL is set up once).

    Parameters
    ----------
    comm : None, mpi4py communicator, "mpi", "nccl", or a Reducer
        None: single-process training (:class:`LocalReducer`); "mpi" means
        ``MPI.COMM_WORLD``; "nccl" a NCCL communicator over it.
    backend : str or Backend
        Where the model's buffers live.

    Returns
    -------
    Reducer
        ``comm`` itself when it is a Reducer.

    Raises
    ------
    ValueError
        A string other than "mpi" or "nccl".
    TypeError
        Anything else that is not an mpi4py communicator.
    """
    if isinstance(comm, Reducer):
        return comm
    be = get_backend(backend)
    if comm is None:
        return LocalReducer(be)
    if isinstance(comm, str):
        key = comm.lower()
        if key not in ("mpi", "nccl"):
            raise ValueError(f"comm must be an mpi4py communicator, 'mpi' or 'nccl', got {comm!r}")
        MPI = _import_mpi()
        cache_key = (key, be.name)
        if cache_key not in _REDUCERS:
            cls = NcclReducer if key == "nccl" else GradientReducer
            _REDUCERS[cache_key] = cls(MPI.COMM_WORLD, be)
        return _REDUCERS[cache_key]
    if not (hasattr(comm, "Allreduce") and hasattr(comm, "Get_rank")):
        raise TypeError(f"comm must be an mpi4py communicator, 'mpi' or 'nccl', got {comm!r}")
    return GradientReducer(comm, be)


# ------------------------------------------------------------------ helpers
def shard_indices(n: int, rank: int, size: int, block: int | None = None) -> np.ndarray:
    """Row indices of rank ``rank``'s shard of ``n`` rows.

    Parameters
    ----------
    n : int
        Rows in the full data set.
    rank, size : int
        This rank and the number of ranks.
    block : int, optional
        None: one contiguous slice per rank (sizes differ by at most one).
        ``b``: blocks of ``b`` rows dealt round-robin, so with ``shuffle=False`` and
        per-rank ``batch_size=b``, step ``j`` of all ranks together covers exactly
        the ``j``-th batch of a single process with ``batch_size=size*b``.

    Returns
    -------
    ndarray of int, shape (n_r,)
        The rows of this rank's shard, increasing.

    Raises
    ------
    ValueError
        ``rank`` outside ``[0, size)``, or ``block`` not a positive integer.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    if block is None:
        bounds = np.linspace(0, n, size + 1).round().astype(int)
        return np.arange(bounds[rank], bounds[rank + 1])
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    block = int(block)
    starts = np.arange(rank * block, n, size * block)
    if starts.size == 0:
        return np.arange(0)
    return np.concatenate([np.arange(s, min(s + block, n)) for s in starts])


def local_gpu_backend(comm: Any = None) -> str:
    """The GPU this rank should use: ``"gpu:<node-local rank % n_gpus>"`` (collective).

    Parameters
    ----------
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.

    Returns
    -------
    str
        A backend name for ``backend=``.
    """
    from mlpx.backends.cupy_backend import import_cupy

    cupy = import_cupy()
    MPI = _import_mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        local_rank = local.Get_rank()
    finally:
        local.Free()
    return f"gpu:{local_rank % max(1, cupy.cuda.runtime.getDeviceCount())}"


def abort_on_exception(comm: Any = None) -> None:
    """Make an uncaught exception on any rank end the whole job (``MPI_Abort``).

    Prints the traceback with the rank, then aborts, so the launcher ends every
    rank instead of the others waiting forever in a collective. The same as
    launching with ``python -m mpi4py script.py``.

    Parameters
    ----------
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    """
    MPI = _import_mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        sys.stderr.write(f"[mlpx rank {comm.Get_rank()}] uncaught exception, aborting the MPI job:\n")
        previous(kind, value, tb)
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = hook


