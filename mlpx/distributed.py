"""Data-parallel training across processes (MPI through mpi4py) and GPUs (NCCL through CuPy).

Every rank (process) holds the same model and its own shard of the data. Rank 0's
initial weights are broadcast; each step every rank computes the gradient of its
own minibatch, one all-reduce combines them, and every rank applies the same
update, so the weights stay identical everywhere. Launch with an MPI launcher::

    mpirun -n 4 python train.py        # inside: model.fit(X_shard, y_shard, comm=MPI.COMM_WORLD)

Reducer contract
----------------
:func:`make_reducer` returns a :class:`GradientReducer` (or :class:`NcclReducer`)
that any training loop (``fit`` here, the scikit-learn estimators) can drive.
Every method is *collective*: all ranks call it, in the same order.

``rank``, ``size``, ``is_root``
    Position in the communicator; rank 0 is the root (it prints and checkpoints).
``broadcast_params(params)``
    Overwrite the flat device buffer ``params`` (shape ``(n_params,)``) with rank 0's.
``allreduce_gradients(grads, loss_value, denom, error=None) -> (global_loss, global_denom)``
    On entry ``grads`` (flat device buffer, shape ``(n_params,)``) holds this rank's
    gradient normalised by its own denominator ``d_r`` (rows, or Σ sample weights,
    of its batch) and ``loss_value`` its normalised loss (a float or 0-d device
    array). ``denom = 0`` means "no rows this step": the contents of ``grads`` are
    ignored. On return, on every rank, ``grads = Σ_r d_r g_r / Σ_r d_r``,
    ``global_loss = Σ_r d_r L_r / Σ_r d_r`` (float) and ``global_denom = Σ_r d_r``
    (float; ``grads`` is zeroed when it is 0). The loss, the denominator and an
    error flag travel in three extra slots of the same buffer, so a step costs
    **one** all-reduce call. Apply any L2 term *after* this call with the global
    denominator (``model._add_l2(l2, global_denom)``), then step the optimizer.
    A rank whose local step raised passes ``error=exc`` (it may pass garbage
    ``grads``); every rank then raises: that rank its own exception, the others
    :class:`RankFailedError` naming the rank and the message.
``check_errors(error, where)``
    The same failure agreement for code outside a step (setup, epoch end).
``agree_any(flag) -> bool``
    True on every rank when any rank passed True (stopping, divergence).
``allreduce_sum(values) -> list[float]``
    Element-wise sums of a short list of host floats (metrics).

Weighting: with ``d_r`` the rows (or the sum of sample weights) of rank ``r``'s
batch, the combined gradient is exactly the gradient a single process computes on
the union of the ranks' batches. So ``k`` ranks with per-rank batch ``b`` train
like one process with batch ``k·b``: exactly so when rank ``r``'s ``j``-th batch is
the ``r``-th block of the single process's ``j``-th batch (:func:`shard_indices`
with ``block=b`` and ``shuffle=False``), statistically so otherwise. Ranks with
fewer rows run the same number of steps (the maximum over ranks) and contribute
``d_r = 0`` once their rows run out.

Failures: a local step (or setup, or an epoch's end) that raises makes every rank
raise at the next collective, so no rank hangs waiting for one that has died. A
process that crashes outside ``fit`` cannot take part in that protocol; launch
with ``python -m mpi4py train.py`` or call :func:`abort_on_exception`, which turn an
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
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlpx.backends import Backend, BackendUnavailableError, get_backend, kernel
from mlpx.callbacks import Callback, ProgressBar
from mlpx.losses import Loss
from mlpx.metrics import correct_count
from mlpx.optimizers import Optimizer, get_optimizer
from mlpx.streaming import ResidentBatches, batch_denominator
from mlpx.training import History, TrainingDivergedError, _check_positive_int
from mlpx.validation import encode_targets

__all__ = [
    "GradientReducer",
    "ModelCheckpoint",
    "NcclReducer",
    "RankFailedError",
    "abort_on_exception",
    "fit_distributed",
    "load_checkpoint",
    "local_gpu_backend",
    "make_reducer",
    "save_checkpoint",
    "shard_indices",
]

Array = Any
_MPI_HINT = 'data-parallel training needs mpi4py and an MPI library: pip install "mlpx[mpi]"'


class RankFailedError(RuntimeError):
    """Another rank raised; this rank stops too instead of waiting for it forever.

    Attributes
    ----------
    rank : int
        The (lowest) rank that failed.
    where : str
        Where it failed ("setup", "epoch 3, step 7", ...).
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


# ------------------------------------------------------------------ kernels
@kernel
def _scaled_copy(xp: Any, src: Array, dst: Array, factor: float) -> None:
    """``dst = factor * src``."""
    dst[...] = src * factor


@_scaled_copy.register("numpy")
def _scaled_copy_np(xp: Any, src: Array, dst: Array, factor: float) -> None:
    xp.multiply(src, factor, out=dst)


@kernel
def _fill(xp: Any, a: Array, value: float) -> None:
    a[...] = xp.full(a.shape, value, dtype=a.dtype)


@_fill.register("numpy")
def _fill_np(xp: Any, a: Array, value: float) -> None:
    a.fill(value)


# ------------------------------------------------------------------ reducers
class GradientReducer:
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
        self.MPI = _import_mpi()
        self.comm = comm
        self.backend = get_backend(backend)
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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank}/{self.size} on {self.backend.name}>"

    # ------------------------------------------------- small host collectives
    def agree_any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def allreduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks of a list of floats (same length everywhere)."""
        send = np.asarray(values, dtype=np.float64).reshape(-1)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=self.MPI.SUM)
        return [float(v) for v in recv]

    def allreduce_max(self, value: int) -> int:
        """Maximum over ranks of an integer."""
        return int(self.comm.allreduce(int(value), op=self.MPI.MAX))

    def check_errors(self, error: BaseException | None, where: str = "") -> None:
        """Raise on every rank if any rank passes an exception (collective).

        The rank that failed re-raises its own exception; the others raise
        :class:`RankFailedError` with the lowest failing rank's message.
        """
        if self.agree_any(error is not None):
            self._raise_agreed(error, where)

    def _raise_agreed(self, error: BaseException | None, where: str) -> None:
        info = None
        if error is not None:
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            info = (f"{type(error).__name__}: {error}", tb)
        infos = self.comm.allgather(info)
        if error is not None:
            raise error
        rank, (message, tb) = next((r, i) for r, i in enumerate(infos) if i is not None)
        raise RankFailedError(rank, where, message, tb)

    # ------------------------------------------------------- parameter sync
    def broadcast_params(self, params: Array) -> None:
        """Overwrite the flat buffer ``params`` (shape (n_params,)) with rank 0's."""
        be = self.backend
        host = np.array(be.to_numpy(params), copy=True)
        self.comm.Bcast(host, root=0)
        be.copy(be.asarray(host, dtype=host.dtype.name), params)

    def params_in_sync(self, params: Array) -> bool:
        """True when ``params`` is bitwise identical on every rank (one small all-reduce)."""
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
            # n gradient slots, then the loss, the denominator and the error flag.
            self._buf = self.backend.zeros(n + 3, name)
            self._buf_key = (n, name)
        return self._buf

    def allreduce_gradients(
        self,
        grads: Array,
        loss_value: Any,
        denom: float,
        error: BaseException | None = None,
        where: str = "",
    ) -> tuple[float, float]:
        """Combine the ranks' gradients in place; see the module docstring.

        Parameters
        ----------
        grads : array, shape (n_params,)
            This rank's gradient normalised by ``denom``; overwritten with the
            weighted mean over ranks.
        loss_value : float or 0-d array
            This rank's loss normalised by ``denom``.
        denom : float
            This rank's batch denominator ``d_r >= 0`` (0: no rows this step).
        error : exception, optional
            This rank's step failed: every rank raises after the all-reduce.
        where : str
            Shown in the error other ranks raise.

        Returns
        -------
        global_loss : float
            ``Σ_r d_r L_r / Σ_r d_r`` (0 when the global denominator is 0).
        global_denom : float
            ``Σ_r d_r``.
        """
        be = self.backend
        n = int(grads.shape[0])
        buf = self._buffer(n, grads.dtype)
        denom = float(denom)
        if error is None and denom > 0:
            # Pack d_r g_r, d_r L_r and d_r so one call sums all three.
            be.run(_scaled_copy, grads, buf[:n], denom)
            buf[n] = loss_value * denom
            buf[n + 1] = denom
            buf[n + 2] = 0.0
        else:
            be.run(_fill, buf, 0.0)
            if error is not None:
                buf[n + 2] = 1.0
        t0 = time.perf_counter()
        self._allreduce_buffer(buf)
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        loss_sum, total, failed = (float(v) for v in be.to_numpy(buf[n:]))
        if failed > 0:
            self._raise_agreed(error, where)
        if total <= 0:
            be.run(_fill, grads, 0.0)
            return 0.0, 0.0
        be.run(_scaled_copy, buf[:n], grads, 1.0 / total)
        return loss_sum / total, total

    def _allreduce_buffer(self, buf: Array) -> None:
        """Sum ``buf`` over ranks, in place."""
        be, MPI = self.backend, self.MPI
        if isinstance(buf, np.ndarray):
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        elif be.is_gpu and self.cuda_aware:
            be.synchronize()  # MPI reads device memory outside CuPy's stream order
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        else:
            host = np.array(be.to_numpy(buf), copy=True)
            self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
            be.copy(be.asarray(host, dtype=host.dtype.name), buf)


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

    def _allreduce_buffer(self, buf: Array) -> None:
        import cupy

        nccl = self._nccl_mod
        dtype = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[buf.dtype.name]
        with self.backend.device:
            stream = cupy.cuda.get_current_stream()
            ptr = buf.data.ptr
            # Enqueued on the current stream: ordered after the backward pass that
            # filled the buffer and before the update that reads it, no host sync.
            self.nccl.allReduce(ptr, ptr, buf.size, dtype, nccl.NCCL_SUM, stream.ptr)


_REDUCERS: dict[tuple[Any, str], GradientReducer] = {}


def make_reducer(comm: Any, backend: str | Backend = "cpu") -> GradientReducer:
    """The reducer for ``comm`` on ``backend`` (cached, so NCCL is set up once).

    Parameters
    ----------
    comm : mpi4py communicator, "mpi", "nccl", or a GradientReducer
        "mpi" means ``MPI.COMM_WORLD``; "nccl" a NCCL communicator over it.
    backend : str or Backend
        Where the model's buffers live.
    """
    if isinstance(comm, GradientReducer):
        return comm
    be = get_backend(backend)
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
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    if block is None:
        bounds = np.linspace(0, n, size + 1).round().astype(int)
        return np.arange(bounds[rank], bounds[rank + 1])
    block = _check_positive_int("block", block)
    starts = np.arange(rank * block, n, size * block)
    if starts.size == 0:
        return np.arange(0)
    return np.concatenate([np.arange(s, min(s + block, n)) for s in starts])


def local_gpu_backend(comm: Any = None) -> str:
    """``"gpu:<node-local rank % n_gpus>"``: the GPU this rank should use (collective)."""
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


# ------------------------------------------------------------------ checkpoints
_STATE_SKIP = ("params", "grads", "_tmp")


def _optimizer_state(opt: Optimizer) -> dict[str, Array]:
    """The optimizer's per-parameter state buffers (velocity, m, v, s, ...)."""
    params = getattr(opt, "params", None)
    if params is None:
        return {}
    return {
        k: v for k, v in vars(opt).items()
        if k not in _STATE_SKIP and hasattr(v, "shape") and tuple(v.shape) == tuple(params.shape)
    }


def save_checkpoint(path: str | os.PathLike[str], model: Any, optimizer: Optimizer | None = None) -> Path:
    """Write model, optimizer state and progress to ``path`` atomically.

    The file is an mlpx model file (``mlpx.load`` reads it) with the optimizer's
    state and the epoch and sample counters added, so :func:`load_checkpoint`
    resumes training exactly.
    """
    from mlpx.saving import write_model_file

    be = model.backend
    arrays: dict[str, np.ndarray] = {"params": model.get_flat_params()}
    train_state: dict[str, Any] = {
        "epochs_done": int(getattr(model, "epochs_done_", 0)),
        "samples_seen": int(getattr(model, "samples_seen_", 0)),
    }
    scaler = model.precision_.scaler
    if scaler is not None:  # fp16: resume with the scale reached, not from 2**16 again
        train_state["loss_scaler"] = scaler.get_state()
    if optimizer is not None:
        train_state["optimizer"] = {
            "name": type(optimizer).__name__.lower(), "config": optimizer.get_config(),
            "t": int(optimizer.t), "lr": float(optimizer.lr),
        }
        for k, v in _optimizer_state(optimizer).items():
            arrays[f"opt_{k}"] = np.array(be.to_numpy(v), copy=True)
    return write_model_file(path, {**model.get_config(), "train_state": train_state}, arrays)


def load_checkpoint(
    path: str | os.PathLike[str], model: Any, optimizer: Optimizer | None = None, comm: Any = None
) -> Optimizer | None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model``.

    With ``comm``, rank 0 reads the file and broadcasts it (other ranks need not
    see the file system). Sets the parameters, ``epochs_done_`` and
    ``samples_seen_``, and returns the optimizer (``optimizer``, or a new one of
    the saved kind) bound to the model with its saved state, ready to pass to
    ``fit(..., optimizer=...)``; None when the checkpoint holds no optimizer.
    """
    data = None
    error = None
    root = comm is None or (make_reducer(comm, model.backend).is_root)
    if root:
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: np.array(f[k]) for k in f.files}
        except Exception as exc:
            error = exc
    if comm is not None:
        reducer = make_reducer(comm, model.backend)
        reducer.check_errors(error, f"reading checkpoint {path}")
        data = reducer.comm.bcast(data, root=0)
    elif error is not None:
        raise error
    assert data is not None
    record = json.loads(str(data["config"]))
    state = record.get("train_state", {})
    model.set_flat_params(data["params"])
    model.epochs_done_ = int(state.get("epochs_done", 0))
    model.samples_seen_ = int(state.get("samples_seen", 0))
    if "loss_scaler" in state and model.precision_.scaler is not None:
        model.precision_.scaler.set_state(state["loss_scaler"])
    saved = state.get("optimizer")
    if saved is None:
        return optimizer
    opt = optimizer if optimizer is not None else get_optimizer(saved["name"], **saved["config"])
    be = model.backend
    with be.activated():
        opt.bind(be, model.params, model.grads, model.n_weights)
        for k, v in _optimizer_state(opt).items():
            if f"opt_{k}" in data:
                be.copy(be.asarray(data[f"opt_{k}"], dtype=model.dtype), v)
    opt.t, opt.lr = int(saved["t"]), float(saved["lr"])
    return opt


class ModelCheckpoint(Callback):
    """Save a resumable checkpoint every ``every`` epochs (rank 0 only in distributed fits).

    Parameters
    ----------
    path : str or path
        Overwritten each time (atomically); read back with :func:`load_checkpoint`.
    every : int, default 1
    """

    root_only = True  # fit_distributed calls it on rank 0 only

    def __init__(self, path: str | os.PathLike[str], every: int = 1) -> None:
        self.path = path
        self.every = _check_positive_int("every", every)
        self.writes = 0

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        if (epoch + 1) % self.every == 0:
            save_checkpoint(self.path, model, getattr(model, "optimizer_", None))
            self.writes += 1


# ------------------------------------------------------------------ training
def fit_distributed(
    model: Any,
    X: Any,
    y: Any,
    comm: Any,
    epochs: int = 10,
    batch_size: int = 32,
    optimizer: str | Optimizer = "adam",
    loss: str | Loss | None = None,
    validation_data: tuple[Any, ...] | None = None,
    validation_split: float = 0.0,
    shuffle: bool = True,
    callbacks: Sequence[Callback] = (),
    verbose: int = 0,
    sample_weight: Any = None,
    l2: float = 0.0,
    lr: float | None = None,
) -> History:
    """Data-parallel ``fit``: every rank passes its own shard; see :func:`mlpx.training.fit`.

    Differences from a single-process fit:

    * ``batch_size`` is per rank (the effective batch is the sum over ranks).
    * ``X``, ``y``, ``sample_weight`` and ``validation_data`` are this rank's shard;
      a rank may hold no rows (``X`` of shape ``(0, n_features)``).
    * ``validation_split`` holds out that fraction of each rank's shard.
    * Logs (loss, accuracy, val_*) are global: sums over all ranks' rows. They are
      identical on every rank, and so are callback decisions; a stop requested on
      any rank stops all of them.
    * Only rank 0 shows progress (``verbose``) and runs callbacks marked
      ``root_only`` (:class:`ModelCheckpoint`).

    Raises
    ------
    RankFailedError
        Another rank raised (its message and traceback are attached).
    TrainingDivergedError
        The global loss became non-finite (on every rank, from the same epoch).
    """
    be = model.backend
    reducer = make_reducer(comm, be)
    if reducer.backend.name != be.name:
        raise ValueError(f"the reducer works on {reducer.backend.name}, the model on {be.name}")

    # ---- local set-up: any rank's failure (bad shard, ...) stops every rank.
    error: BaseException | None = None
    setup: dict[str, Any] = {}
    try:
        setup = _local_setup(
            model, X, y, reducer, epochs, batch_size, optimizer, loss, validation_data,
            validation_split, sample_weight, l2, lr,
        )
    except Exception as exc:
        error = exc
    reducer.check_errors(error, "setup")
    epochs, batch_size, opt, lossfn = setup["epochs"], setup["batch_size"], setup["opt"], setup["lossfn"]
    Xh, Y, w, val, rng = setup["X"], setup["Y"], setup["w"], setup["val"], setup["rng"]
    n = 0 if Xh is None else Xh.shape[0]

    # ---- agreed sizes: steps per epoch (max over ranks), global row count.
    n_steps = reducer.allreduce_max(-(-n // batch_size))
    n_global, w_global = reducer.allreduce_sum([n, n if w is None else float(w.sum())])
    n_global = int(n_global)
    if n_global == 0:
        raise ValueError("no rank holds any training rows")
    if w_global <= 0:
        raise ValueError("sample_weight sums to zero over all ranks: nothing to train on")
    has_val = reducer.agree_any(val is not None)
    out = model.output.name
    track_acc = out in ("softmax", "logistic")

    _decorrelate_dropout(model, reducer.rank)
    history = History()
    model.history = history
    model.stop_training = False
    callbacks = [cb for cb in callbacks if reducer.is_root or not _root_only(cb)]
    if verbose and reducer.is_root:
        callbacks.append(ProgressBar(verbose))

    # As in the single-process loop: overflow inside a step is caught as a non-finite
    # epoch loss (TrainingDivergedError), and BLAS threads suit the product size.
    with (
        model.compute_context(batch_size),
        np.errstate(over="ignore", invalid="ignore", divide="ignore"),
    ):
        reducer.broadcast_params(model.params)  # rank 0's weights everywhere
        pending: BaseException | None = None
        batches = None
        try:  # device memory can run out on one rank only
            if Xh is not None:  # an empty shard has no batches, but joins every collective
                batches = ResidentBatches(be, Xh, Y, w, batch_size, model.compute_dtype, target_dtype=model.dtype)
            opt.bind(be, model.params, model.grads, model.n_weights)
            model.optimizer_ = opt
            snapshot = be.empty(model.params.shape, model.dtype)
        except Exception as exc:
            pending = exc
        reducer.check_errors(pending, "moving the shard to the device")
        samples_seen = getattr(model, "samples_seen_", 0)
        epoch0 = getattr(model, "epochs_done_", 0)

        try:
            for cb in callbacks:
                cb.on_train_begin(model, epochs)
        except Exception as exc:
            pending = exc
        reducer.check_errors(pending, "on_train_begin")

        for epoch in range(epochs):
            where = f"epoch {epoch0 + epoch + 1}"
            opt.set_epoch(epoch0 + epoch, samples_seen)
            be.copy(model.params, snapshot)
            perm = rng.permutation(n) if shuffle and n else None
            local_batches = iter(batches.epoch(perm) if batches is not None else ())
            l2_total: Any = 0.0  # device: Σ_steps (½ l2 ΣW² / D) · D
            data_total = 0.0  # host: Σ_steps global_loss · D
            denom_sum = 0.0
            hits: Any = 0.0
            for step in range(n_steps):
                value: Any = 0.0
                d = 0.0
                batch = next(local_batches, None) if pending is None else None
                if batch is not None:  # this rank's shard may run out before n_steps
                    try:
                        Xb, Yb, wb, a, b = batch
                        d = batch_denominator(w, perm, a, b)
                        # L2 waits for the global denominator (added after the all-reduce).
                        value = model._forward_backward(Xb, Yb, lossfn, wb, d if d > 0 else 1.0, 0.0)
                        if track_acc:
                            hits = hits + be.run(correct_count, model._logits, Yb, out)
                    except Exception as exc:
                        pending, d = exc, 0.0
                gloss, D = reducer.allreduce_gradients(
                    model.grads, value, d, error=pending, where=f"{where}, step {step + 1}"
                )
                if D <= 0:
                    continue  # every rank skips: no rows (or zero weights) anywhere this step
                try:
                    if l2:
                        l2_total = l2_total + model._add_l2(l2, D) * D
                    # fp16: every rank holds the same reduced gradients, so all skip alike
                    model._apply_update(opt)
                except Exception as exc:  # reported at the next collective
                    pending = exc
                data_total += gloss * D
                denom_sum += D

            # ---- epoch end: metrics summed over ranks, decisions agreed.
            local: list[float] = []
            val_parts: Any = None
            l2_sum = 0.0
            try:
                if pending is None:
                    l2_sum = l2_total if isinstance(l2_total, float) else be.to_float(l2_total)
                    local = [be.to_float(hits) if not isinstance(hits, float) else hits]
                    if has_val:
                        val_parts = _validation_parts(model, lossfn, val)
                        local += val_parts["sums"]
            except Exception as exc:
                pending = exc
            reducer.check_errors(pending, where)
            sums = reducer.allreduce_sum(local)
            samples_seen += n_global
            epoch_loss = float(data_total + l2_sum) / denom_sum if denom_sum > 0 else math.nan
            if reducer.agree_any(not math.isfinite(epoch_loss)):
                be.copy(snapshot, model.params)
                for cb in callbacks:
                    if isinstance(cb, ProgressBar):
                        cb.on_train_end(model)
                raise TrainingDivergedError(epoch0 + epoch, opt.lr)
            logs = {"loss": epoch_loss}
            if track_acc:
                logs["accuracy"] = sums[0] / n_global
            if has_val:
                logs.update(_validation_logs(reducer, out, sums[1:], val_parts))
            history.append(logs)
            model.samples_seen_ = samples_seen
            model.epochs_done_ = epoch0 + history.epochs
            try:
                for cb in callbacks:
                    cb.on_epoch_end(model, epoch0 + epoch, logs)
            except Exception as exc:
                pending = exc
            reducer.check_errors(pending, f"{where}, callbacks")
            model.stop_training = reducer.agree_any(model.stop_training)
            if model.stop_training:
                break
        try:
            for cb in callbacks:
                cb.on_train_end(model)
        except Exception as exc:
            pending = exc
        reducer.check_errors(pending, "on_train_end")
    return history


def _decorrelate_dropout(model: Any, rank: int) -> None:
    """Give each rank its own dropout masks (same seed would drop the same units everywhere).

    Rank 0 keeps its generator, so a one-rank run matches a plain fit. Done once per model.
    """
    from mlpx.layers import Dropout

    if rank == 0 or getattr(model, "_dropout_rank", None) == rank:
        return
    for layer in model.layers:
        if isinstance(layer, Dropout):
            layer._rng = np.random.default_rng([int(layer._rng.integers(2**62)), rank])
    model._dropout_rank = rank


def _root_only(cb: Callback) -> bool:
    return isinstance(cb, ProgressBar) or bool(getattr(cb, "root_only", False))


def _local_setup(
    model: Any, X: Any, y: Any, reducer: GradientReducer, epochs: Any, batch_size: Any,
    optimizer: Any, loss: Any, validation_data: Any, validation_split: float,
    sample_weight: Any, l2: float, lr: float | None,
) -> dict[str, Any]:
    """Check and encode this rank's shard (host arrays); raises on bad input."""
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    if not 0.0 <= float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    if l2 < 0 or not math.isfinite(l2):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    lossfn = model.resolve_loss(loss)
    opt = get_optimizer(optimizer, **({} if lr is None else {"lr": lr}))
    # Each rank shuffles its own shard; seeded per rank so runs repeat.
    seed = None if model.seed is None else [model.seed, 1, reducer.rank]
    rng = np.random.default_rng(seed)

    Xh, Y, w = _local_arrays(model, X, y, sample_weight)
    val = None
    if validation_data is not None:
        if len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be (X_val, y_val) or (X_val, y_val, w_val)")
        wv_in = validation_data[2] if len(validation_data) == 3 else None
        Xv, Yv, wv = _local_arrays(model, validation_data[0], validation_data[1], wv_in, name="X_val")
        if Xv is not None:
            val = (Xv, Yv, wv)
    elif validation_split and Xh is not None:
        n_val = int(round(Xh.shape[0] * validation_split))
        if n_val >= Xh.shape[0]:
            raise ValueError(f"validation_split={validation_split} leaves no training samples on rank {reducer.rank}")
        if n_val:
            order = rng.permutation(Xh.shape[0])
            vi, ti = order[:n_val], order[n_val:]
            val = (Xh[vi], Y[vi], None if w is None else w[vi])
            Xh, Y, w = Xh[ti], Y[ti], None if w is None else w[ti]
    return {"epochs": epochs, "batch_size": batch_size, "opt": opt, "lossfn": lossfn,
            "X": Xh, "Y": Y, "w": w, "val": val, "rng": rng}


def _local_arrays(model: Any, X: Any, y: Any, sample_weight: Any, name: str = "X") -> tuple[Any, Any, Any]:
    """Host ``(X, Y, w)`` of this rank's shard, or Nones for an empty shard."""
    be = model.backend
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) == 2 and shape[0] == 0:
        if shape[1] != model.n_features_in_:
            raise ValueError(f"{name} has {shape[1]} features, but the model expects {model.n_features_in_}")
        return None, None, None
    X = model._check_X(X, name=name)
    X = X if isinstance(X, np.ndarray) else be.to_numpy(X)
    Y = encode_targets(y, model.output.name, model.n_outputs_, X.shape[0])
    w = None
    if sample_weight is not None:
        # A shard's weights may sum to zero (others carry the weight); only shape and sign matter here.
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (X.shape[0],):
            raise ValueError(f"sample_weight must have shape ({X.shape[0]},), got {w.shape}")
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("sample_weight must be finite and non-negative")
    return X, Y, w


def _validation_parts(model: Any, lossfn: Loss, val: Any) -> dict[str, Any]:
    """This rank's validation sums (zeros without validation rows).

    Returns a dict with ``sums``: [Σw·loss, Σw, Σw·hits] for classifiers or
    [Σw·loss, Σw, Σw·y (k), Σw·(y−ŷ)² (k)] for regressors, and the host targets
    and predictions needed for the second (centred) pass of R².
    """
    be = model.backend
    out, k = model.output.name, model.n_outputs_
    classifier = out in ("softmax", "logistic")
    if val is None:
        zeros = [0.0] * (3 if classifier else 2 + 2 * k)
        return {"sums": zeros, "Y": None, "P": None, "w": None}
    Xv, Yv, wv = val
    n = Xv.shape[0]
    w = np.ones(n) if wv is None else wv
    loss_sum = 0.0
    preds = []
    for a in range(0, n, 8192):
        b = min(a + 8192, n)
        Z = model._logits_master(model.forward(be.asarray(Xv[a:b], dtype=model.compute_dtype)))
        wb = be.asarray(w[a:b], dtype=model.dtype)
        loss_sum += be.to_float(lossfn(be, Z, be.asarray(Yv[a:b], dtype=model.dtype), None, wb, 1.0))
        if not classifier:
            Z = model.output.forward(be, Z, out=Z)
        preds.append(np.array(be.to_numpy(Z), dtype=np.float64, copy=True))
    P = np.concatenate(preds)
    if classifier:
        match = P.argmax(1) == Yv.argmax(1) if out == "softmax" else ((P > 0) == (Yv > 0.5)).all(1)
        return {"sums": [loss_sum, float(w.sum()), float(w @ match)], "Y": None, "P": None, "w": None}
    Yv = Yv.astype(np.float64)
    sums = [loss_sum, float(w.sum()), *(w @ Yv), *(w @ (Yv - P) ** 2)]
    return {"sums": sums, "Y": Yv, "P": P, "w": w}


def _validation_logs(reducer: GradientReducer, out: str, sums: list[float], parts: dict[str, Any]) -> dict[str, float]:
    """Global validation logs from summed parts (collective for regressors: R² needs a second pass)."""
    loss_sum, wsum = sums[0], sums[1]
    logs = {"val_loss": loss_sum / wsum if wsum > 0 else math.nan}
    if out in ("softmax", "logistic"):
        logs["val_accuracy"] = sums[2] / wsum if wsum > 0 else math.nan
        return logs
    k = (len(sums) - 2) // 2
    mean = np.asarray(sums[2 : 2 + k]) / wsum
    ss_res = np.asarray(sums[2 + k :])
    # Centre on the global mean (second pass), as r2_score does, for accuracy.
    local_tot = np.zeros(k) if parts["Y"] is None else parts["w"] @ (parts["Y"] - mean) ** 2
    ss_tot = np.asarray(reducer.allreduce_sum(list(local_tot)))
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.where(ss_res > 0, 0.0, 1.0))
    logs["val_r2"] = float(np.mean(r2))
    return logs
