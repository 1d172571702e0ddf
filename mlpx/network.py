"""The network: K members of one architecture, computed and trained as one.

A :class:`Network` holds K *members* (K networks of one architecture, each with
its own weights) in one ``(K, n_params)`` parameter buffer whose row ``k`` is member
``k``'s flat buffer: every layer's weights, then every bias, so the L2 term touches a
prefix and saving, moving or all-reducing a member is one copy. A single network
(:class:`~mlpx.model.Sequential`) is K = 1; a :class:`~mlpx.stacked.Stack` is K
members with their own settings, data and stopping. Both run the code here:

* a forward or backward pass is one batched product per layer and phase
  (:mod:`mlpx.layers`), with the member axis first;
* a step (:meth:`Network.step_members`) is forward, the loss of every member with its
  own denominator and weights (:mod:`mlpx.losses`), backward, the all-reduce of
  data-parallel training, the L2 term and one optimizer update over the buffer with
  per-member scalars (:mod:`mlpx.optimizers`). The step's scalars (each member's
  ``1/d``, ``l2/d``, loss scale and the optimizer's rows) travel as one small array;
  an epoch's go to the device in one transfer (:meth:`Network.train_epoch`);
* on the CPU with numba, an epoch of every member runs as one compiled call per
  thread (:mod:`mlpx.member_step`), each member's steps from gather to update while
  its data are in the core's cache; elsewhere the steps run phase by phase. Small
  stacks on the CPU split their members over threads (BLAS and the compiled loops
  release the GIL).

The last activation of the layers is the *output* activation. It is kept apart
during training: the last layer produces logits ``Z`` and the loss bound to the
output (:func:`mlpx.losses.pair`) turns them into the loss and the output delta
``dZ`` (the ``(Ŷ − Y)/d`` shortcut for the canonical pairs).

Inference (:meth:`Network.infer_members` and the predictions built on it) is thread-safe: each thread
has its own workspaces, and a prediction holds the parameter lock for reading for
the whole call, so it sees the weights of one moment, between two updates, even
while a fit runs in another thread (and never that fit's threads).

On an immutable backend (JAX, ``backend.mutable`` False) every write of the
parameters makes a new array, which the network keeps; gradients are assembled from
the layers' new arrays after each backward pass.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import operator
import os
import threading
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from mlpx import streams
from mlpx.activations import Activation, get_activation
from mlpx.backends import Backend, BackendError, get_backend, kernel
from mlpx.backends.numpy_backend import SMALL_GEMM_FLOPS
from mlpx.data import MemberBatches, MemberRows
from mlpx.distributed import LocalReducer, Reducer
from mlpx.layers import ActivationLayer, Dense, Dropout, Layer, Pass
from mlpx.locking import ReadWriteLock, exclusive_training
from mlpx.losses import Loss, OutputLoss, l2_penalty, pair
from mlpx.member_step import member_step_plan, run_member_steps
from mlpx.metrics import PREDICT_CHUNK, correct_count, holdout_scores, iter_chunks
from mlpx.optimizers import Optimizer
from mlpx.precision import LossScaler, Precision, all_finite, get_precision, scale_cast
from mlpx.validation import check_sample_weight, check_X, encode_targets

__all__ = ["Network", "StepResult"]

Array = Any
#: Work of one compiled call of :meth:`Network.train_epoch` (about 10 ms on a CPU core): it
#: bounds how long a prediction from another thread waits for the parameter lock.
_BLOCK_FLOPS = 2e8


class StepResult(NamedTuple):
    """What one :meth:`Network.step_members` produced.

    Attributes
    ----------
    loss : array, shape (K,)
        Each member's data term ``Σ w_i l_i / d`` summed over ranks (on the device:
        read it once per epoch, not per step).
    penalty : array of shape (K,), or 0.0
        The L2 term ``½ l2 Σ‖W‖² / d`` (0.0 without L2).
    correct : array of shape (K,), or None
        Rows of this rank's batch predicted right (``count_correct=True``).
    applied : bool or None
        Whether the update was applied (False: an fp16 step every member skipped on
        overflow); None without an optimizer.
    error : BaseException or None
        A failure after the all-reduce on this rank (data-parallel training reports
        it at the next collective); always None for single-process training.
    """

    loss: Any
    penalty: Any
    correct: Any
    applied: bool | None
    error: BaseException | None


@kernel
def _zero(xp: Any, a: Array) -> Array:
    """Zeros like ``a`` (in ``a`` on NumPy and CuPy): a rank without rows this step
    contributes zero gradients."""
    return xp.zeros_like(a)


@_zero.register("numpy")
def _zero_np(xp: Any, a: Array) -> Array:
    a.fill(0)
    return a


def check_dtype(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` from a name, a NumPy dtype or a scalar type.

    Raises
    ------
    TypeError
        Any other dtype.
    """
    try:
        name = np.dtype(dtype).name if dtype is not None else None
    except TypeError:
        name = None
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


def host_dtype(dtype: Any) -> np.dtype:
    """A NumPy dtype for any backend's dtype object (array-api-strict's print as 'float64')."""
    try:
        return np.dtype(dtype)
    except TypeError:
        return np.dtype(str(dtype).rsplit(".", 1)[-1])


class MemberScalers:
    """fp16: one dynamic loss scale per member (``get_state``/``set_state`` for rollback).

    Parameters
    ----------
    K : int
    """

    def __init__(self, K: int) -> None:
        self.members = [LossScaler() for _ in range(K)]

    def get_state(self) -> list[dict[str, float]]:
        """Every member's scaler state."""
        return [s.get_state() for s in self.members]

    def set_state(self, state: list[dict[str, float]]) -> None:
        """Restore :meth:`get_state`."""
        for s, st in zip(self.members, state):
            s.set_state(st)

    @property
    def scales(self) -> np.ndarray:
        """Each member's loss scale now, shape (K,)."""
        return np.array([s.scale for s in self.members])


#: Every member.
_ALL = slice(None)
#: No thread pool, one chunk of members: the whole of them.
_NO_POOL: tuple[Any, list[slice]] = (None, [_ALL])


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _split(K: int, n: int) -> list[slice]:
    bounds = np.linspace(0, K, n + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _join(xp: Any, parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def split_output(layers: Sequence[Layer]) -> tuple[list[Layer], Activation]:
    """Separate the output activation from the layers (the last layer yields logits).

    A last Dense with an activation is replaced, in the layers the network runs, by
    a Dense without one; the caller's layer objects are left as they were.
    """
    last = layers[-1]
    if isinstance(last, ActivationLayer):
        return list(layers[:-1]), last.activation
    if isinstance(last, Dense) and last.activation.name != "identity":
        bare = Dense(last.n_in, last.n_out, activation="identity", init=last.init)
        return list(layers[:-1]) + [bare], last.activation
    return list(layers), get_activation("identity")


class Network:
    """K networks of one architecture in one parameter buffer, trained as one.

    The engine of :class:`~mlpx.model.Sequential` (K = 1) and
    :class:`~mlpx.stacked.Stack`; see the module docstring.

    Parameters
    ----------
    layers : sequence of Layer
        The first parameterised layer must be a Dense (it fixes the input width).
        The last activation is the output activation.
    seeds : sequence of int or None
        One per member: seeds its starting weights, its dropout masks and (in
        ``fit``) its minibatch order. K is their number.
    backend : str or Backend
    dtype : {"float32", "float64"}
    precision : {None, "float32", "tf32", "bf16", "fp16"} or Precision, optional
        See :mod:`mlpx.precision` (a resolved mode is taken as it is).
    threads : int, optional
        CPU threads the members are split over for small products (default: the
        usable cores; 1 disables). Ignored on the GPU and Array API backends.

    Attributes
    ----------
    flat, flat_grads : arrays, shape (K, n_params)
        The members' parameters and gradients on the backend.
    n_members, n_params, n_weights : int
    n_features_in_, n_outputs_ : int
    output : Activation
    precision_ : Precision
    parameter_lock : ReadWriteLock
        Held for reading by inference and for writing by every update of the
        parameters.
    active : ndarray of bool, shape (K,)
        Members still training; a frozen member gets no rows and no updates.
    diverged_ : ndarray of bool, shape (K,)
        Members whose loss stopped being finite (frozen by the "freeze" policy).
    member_samples_ : ndarray of int64, shape (K,)
        Samples each member has trained on.
    epochs_done_ : int
    history, optimizer_, loss_
        The last fit's logs, optimizer (with its state) and loss.
    compiled_step_reason : str
        "" where the members' steps run as one compiled loop on the CPU, else why
        the steps run phase by phase.
    """

    def __init__(self, layers: Sequence[Layer], *, seeds: Sequence[int | None], backend: str | Backend = "cpu",
                 dtype: str = "float32", precision: str | Precision | None = None,
                 threads: int | None = None) -> None:
        self.backend = be = get_backend(backend)
        self.dtype = check_dtype(dtype)
        if precision in ("bf16", "fp16") and not be.mutable:
            # Mixed precision keeps a low-precision copy of the weights that layers view.
            raise BackendError(
                f"precision={precision!r} computes with low-precision copies written into "
                f"preallocated buffers, and backend {be.name!r} has immutable arrays; use precision=None")
        self.seeds = list(seeds)
        K = self.n_members = len(self.seeds)
        p = precision if isinstance(precision, Precision) else get_precision(precision, self.dtype, be)
        scaler = None if p.scaler is None else (LossScaler() if K == 1 else MemberScalers(K))
        self.precision_ = Precision(p.name, p.compute_dtype, p.master_dtype, tf32=p.tf32, scaler=scaler)
        self.compute_dtype = self.precision_.compute_dtype
        self.parameter_lock = ReadWriteLock()
        self._one_rank = LocalReducer(be)
        self.history: Any = None
        self.optimizer_: Optimizer | None = None
        self.loss_: OutputLoss | None = None
        self.epochs_done_ = 0
        self.member_samples_ = np.zeros(K, dtype=np.int64)
        self.active = np.ones(K, dtype=bool)
        self.diverged_ = np.zeros(K, dtype=bool)
        self.stop_training = False
        self._in_place = "numpy" in be.kinds
        n_threads = _default_threads() if threads is None else int(threads)
        self.threads = n_threads if (self._in_place and not be.is_gpu) else 1
        self._given: list[Layer] = list(layers)
        self.layers: list[Layer] = []
        self.output: Activation = get_activation("identity")
        self.flat: Array = None
        self.flat_grads: Array = None
        self._ws: dict[Any, Any] = {}
        self._tls = threading.local()
        self._train = threading.local()  # the running fit's member threads (its thread only)
        self._uploads: dict[tuple[int, ...], list[list[Any]]] = {}
        self._upload_i: dict[tuple[int, ...], int] = {}
        self._dropout: dict[int, list[np.random.Generator]] = {}
        self._dropout_rank = 0
        self._step_plan: Any = None
        self.compiled_step_reason = "the network has no Dense layer yet"

    # ------------------------------------------------------------------ build
    @property
    def built(self) -> bool:
        """Whether the network has its parameters (it needs a Dense layer)."""
        return self.flat is not None

    def _require_built(self) -> None:
        if self.flat is None:
            raise ValueError(
                "this network has no Dense layer yet: add layers with add() or pass them "
                "to Sequential([...])")

    def _build(self) -> None:
        be = self.backend
        self.layers, self.output = split_output(self._given)
        first = next((l for l in self.layers if isinstance(l, Dense)), None)
        if first is None:
            raise ValueError("a network needs at least one Dense layer")
        self.n_features_in_ = n = first.n_in
        for layer in self.layers:
            n = layer.build(n)
        self.n_outputs_ = n
        # Flat layout: all weights, then all biases, so the L2 term touches a prefix.
        specs = [(i, name, shape, kind) for i, l in enumerate(self.layers) for name, shape, kind in l.param_shapes()]
        ordered = [s for s in specs if s[3] == "weight"] + [s for s in specs if s[3] != "weight"]
        self._slots: list[tuple[int, str, tuple[int, ...], int, int]] = []
        offset = 0
        for i, name, shape, _kind in ordered:
            size = int(np.prod(shape))
            self._slots.append((i, name, shape, offset, offset + size))
            offset += size
        self.n_params = offset
        self.n_weights = sum(int(np.prod(s[2])) for s in ordered if s[3] == "weight")
        self._layer_slots: list[dict[str, tuple[int, int, tuple[int, ...]]]] = [{} for _ in self.layers]
        for i, name, shape, a, b in self._slots:
            self._layer_slots[i][name] = (a, b, shape)
        K = self.n_members
        self.flat = be.zeros((K, offset), self.dtype)
        self.flat_grads = be.zeros((K, offset), self.dtype)
        mixed = self.precision_.mixed
        # Mixed precision: layers compute with low-precision copies (refreshed from the
        # master weights by every forward pass) and write low-precision gradients, which
        # the step converts into the master gradients.
        self._flat_c = be.zeros((K, offset), self.compute_dtype) if mixed else None
        self._grads_c = be.zeros((K, offset), self.compute_dtype) if mixed else None
        self._first_param = next(i for i, l in enumerate(self.layers) if l.param_shapes())
        self._step_plan, self.compiled_step_reason = member_step_plan(
            be, [((lambda s: (s["W"], s["b"], l.activation.name))(self._layer_slots[i]) if isinstance(l, Dense)
                  else None) for i, l in enumerate(self.layers)], self.compute_dtype, mixed)
        self._ws.clear()
        self._tls = threading.local()
        self._view_cache: dict[Any, Any] = {}

    def architecture(self) -> dict[str, Any]:
        """The members' architecture as a JSON record: ``layers`` (the output activation
        included), ``dtype`` and, when not plain, ``precision``."""
        self._require_built()
        layers = [l.get_config() for l in self.layers]
        last = layers[-1] if layers else {}
        # A Dense without activation at the end carries the output activation itself;
        # anything else gets an explicit output layer (also an identity one after an
        # activated Dense, whose activation would otherwise be read as the output).
        if last.get("type") == "Dense" and last.get("activation") == "identity":
            layers[-1] = {**last, "activation": self.output.name}
        elif self.output.name != "identity" or last.get("type") == "Dense":
            layers.append({"type": "ActivationLayer", "activation": self.output.name})
        cfg: dict[str, Any] = {"layers": layers, "dtype": self.dtype}
        if self.precision_.name != self.dtype:
            cfg["precision"] = self.precision_.name
        return cfg

    def _draw(self, rng: Any) -> np.ndarray:
        """One member's starting parameters, shape (n_params,) (host, float64), drawn
        layer by layer, W before b."""
        host = np.zeros(self.n_params)
        drawn = {i: layer.init_params(rng) for i, layer in enumerate(self.layers)}
        for i, name, _shape, a, b in self._slots:
            host[a:b] = np.ravel(drawn[i][name])
        return host

    def _seed_dropout(self, seeds: Sequence[Any]) -> None:
        """Each member's mask generator of every Dropout layer, from the members' seeds."""
        self._dropout = {i: [layer.generator(s if isinstance(s, (int, np.integer)) else None, i) for s in seeds]
                         for i, layer in enumerate(self.layers) if isinstance(layer, Dropout)}
        self._dropout_rank = 0

    def dropout_generators(self) -> dict[int, list[np.random.Generator]]:
        """Layer index -> each member's dropout mask generator (their states resume runs)."""
        return self._dropout

    def decorrelate_dropout(self, rank: int) -> None:
        """Give this rank its own dropout masks (the same seed drops the same units).

        Rank 0 keeps its generators, so a one-rank run matches a plain fit.
        """
        if rank == 0 or self._dropout_rank == rank:
            return
        self._dropout = {i: [np.random.default_rng([int(g.integers(2**62)), rank]) for g in gens]
                         for i, gens in self._dropout.items()}
        self._dropout_rank = rank

    # ------------------------------------------------------------ parameters
    def _layer_views(self, flat: Array, rows: slice) -> list[dict[str, Array]]:
        """Each layer's parameters of the members ``rows``: name -> (k, *shape).

        Views of a mutable buffer are kept (one set per buffer and group of members):
        a step would otherwise cut them again, two Python calls per parameter. An
        immutable backend's buffers are new at every step: cut, never kept.
        """
        if not self._in_place:
            return [self._cut(flat, rows, j) for j in range(len(self.layers))]
        key = (id(flat), rows.start, rows.stop)
        hit = self._view_cache.get(key)
        if hit is None or hit[0] is not flat:
            if len(self._view_cache) > 16:
                self._view_cache.clear()
            hit = self._view_cache[key] = (flat, [self._cut(flat, rows, j) for j in range(len(self.layers))])
        return hit[1]

    def _cut(self, flat: Array, rows: slice, i: int) -> dict[str, Array]:
        xp = self.backend.xp
        out = {}
        for name, (a, b, shape) in self._layer_slots[i].items():
            block = flat[rows, a:b]
            out[name] = xp.reshape(block, (int(block.shape[0]),) + tuple(shape))
        return out

    def _store(self, flat: Array) -> None:
        """Make ``flat`` the parameters (caller holds the write lock). A no-op where every
        write goes into the buffer itself; an immutable backend's new array is kept."""
        if flat is not self.flat:
            self.flat = flat

    def get_params_host(self) -> np.ndarray:
        """Host copy of every member's parameters, shape (K, n_params)."""
        self._require_built()
        with self.parameter_lock.read():
            return np.array(self.backend.to_numpy(self.flat), copy=True)

    def set_params_host(self, host: Any) -> None:
        """Overwrite every member's parameters from a host array (K, n_params) (one transfer).

        Raises
        ------
        ValueError
            The wrong shape, or NaN or infinity.
        """
        self._require_built()
        host = np.asarray(host)
        if host.shape != (self.n_members, self.n_params):
            raise ValueError(f"expected shape ({self.n_members}, {self.n_params}), got {host.shape}")
        if host.dtype.kind not in "fiub" or not np.isfinite(host).all():
            raise ValueError("parameters contain NaN or infinity" if host.dtype.kind in "fiub"
                             else f"parameters must be numbers, got dtype {host.dtype}")
        be = self.backend
        src = be.asarray(host.astype(self.dtype), dtype=self.dtype)
        with self.parameter_lock.write():
            self._store(be.copy(src, self.flat))

    def assign_flat(self, src: Array) -> None:
        """Copy a device buffer of shape (K, n_params) into the parameters."""
        with self.parameter_lock.write():
            self._store(self.backend.copy(src, self.flat))

    def present(self, logs: dict[str, Any]) -> dict[str, Any]:
        """An epoch's logs (each an array of the K members' values) as callbacks and
        the history see them: as they are here (a single network shows floats)."""
        return logs

    def _member_params_write(self, k: int, src: Any) -> None:
        """Overwrite member ``k``'s row from a host or device vector (n_params,), checked."""
        be, xp = self.backend, self.backend.xp
        if isinstance(src, np.ndarray) or not hasattr(src, "dtype"):
            host = np.asarray(src)
            if host.shape != (self.n_params,):
                raise ValueError(f"expected shape ({self.n_params},), got {host.shape}")
            if host.dtype.kind not in "fiub" or not np.isfinite(host).all():
                raise ValueError("parameters contain NaN or infinity")
            src = be.asarray(host.astype(self.dtype), dtype=self.dtype)
        elif not bool(be.to_numpy(xp.all(xp.isfinite(src)))):
            raise ValueError("parameters contain NaN or infinity")
        src = be.astype(src, self.dtype)
        with self.parameter_lock.write():
            if be.mutable:
                self.flat[k, :] = src
            else:
                self._store(xp.concat([self.flat[:k], xp.reshape(src, (1, -1)), self.flat[k + 1:]], axis=0))

    # ----------------------------------------------------------- computing
    def compute_context(self, batch: int) -> contextlib.ExitStack:
        """Device, BLAS threads and GEMM precision for passes over ``batch`` rows."""
        be = self.backend
        stack = contextlib.ExitStack()
        stack.enter_context(be.activated())
        stack.enter_context(be.blas_threads(self.gemm_flops(batch)))
        if self.precision_.tf32:
            stack.enter_context(be.tf32_matmul())
        return stack

    @contextlib.contextmanager
    def training_context(self, batch: int) -> Iterator[None]:
        """:meth:`compute_context` and, for small products, the members split over
        threads (one BLAS thread each) for the training of the calling thread.

        The threads belong to this call: predictions in other threads meanwhile
        never see or stop them.
        """
        flops = self.gemm_flops(batch)
        split = self.threads > 1 and flops < SMALL_GEMM_FLOPS and self.n_members > 1
        with self.compute_context(batch):
            pool = None
            if split:
                n = min(self.threads, self.n_members)
                pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="mlpx-members")
                self._train.state = (pool, _split(self.n_members, n))
            try:
                yield
            finally:
                self._train.state = _NO_POOL
                if pool is not None:
                    pool.shutdown(wait=True)

    def _pool(self) -> tuple[Any, list[slice]]:
        return getattr(self._train, "state", _NO_POOL)

    def gemm_flops(self, n: int) -> float:
        """Flops (2·n·n_in·n_out) of one member's largest matrix product for n rows."""
        return max((2.0 * n * l.n_in * l.n_out for l in self.layers if isinstance(l, Dense)), default=0.0)

    def check_input(self, X: Any, name: str = "X") -> Any:
        """:func:`~mlpx.validation.check_X` against this network: its width, and the range
        of its compute dtype (a value the cast would turn into infinity is refused)."""
        self._require_built()
        return check_X(X, self.backend, self.n_features_in_, name=name, dtype=self.compute_dtype)

    def resolve_loss(self, loss: str | Loss | OutputLoss | None) -> OutputLoss:
        """``loss`` bound to this network's output activation (None: its canonical loss).

        Any loss works on any output whose values lie in its domain (chain rule);
        see :func:`mlpx.losses.pair`.
        """
        if isinstance(loss, OutputLoss):
            if loss.activation.name != self.output.name:
                raise ValueError(f"{loss!r} is bound to another output than {self.output.name!r}")
            return loss
        return pair(loss, self.output)

    def _forward(self, X: Any, rows: slice, ws: dict, train: bool) -> tuple[Array, list[Any]]:
        """Logits (k, n, c) of the members ``rows``, in the compute dtype, for X: (k, n, f)
        per member, (n, f) shared, or :class:`~mlpx.data.MemberRows`."""
        be = self.backend
        flat = self._flat_c if self.precision_.mixed else self.flat
        rngs = {}
        if train and self._dropout:
            rngs = {i: gens[rows] for i, gens in self._dropout.items()}
        ctx = Pass(be, self.compute_dtype, ws, train, rngs)
        H = X
        first_dense = isinstance(self.layers[0], Dense)
        if isinstance(H, MemberRows):
            H = (H.shared(be, rows, ws) if first_dense and self._in_place else None) or H.take(be, rows, ws, "X")
        elif len(H.shape) == 2 and not first_dense:  # only a Dense broadcasts a shared input itself
            k = len(range(self.n_members)[rows])
            H = be.xp.broadcast_to(be.xp.reshape(H, (1, *H.shape)), (k, *H.shape))
        tape: list[Any] = []
        views = self._layer_views(flat, rows)
        for i, layer in enumerate(self.layers):
            H, saved = layer.forward(ctx, i, H, views[i])
            tape.append(saved)
        return H, tape

    def _backward(self, dZ: Array, tape: list[Any], rows: slice, ws: dict, grads: Array,
                  to_input: bool = False) -> Array | None:
        """Gradients of the members ``rows`` into ``grads`` (returns None), or (an
        immutable backend's new arrays) a new (k, n_params) array; with ``to_input``,
        dL/dX (k, n, n_features_in_) instead (the gradients as ever)."""
        be, xp = self.backend, self.backend.xp
        flat = self._flat_c if self.precision_.mixed else self.flat
        ctx = Pass(be, self.compute_dtype, ws, True)
        pieces: dict[int, Array] = {}
        in_place = True
        dH: Array | None = dZ
        last = 0 if to_input else self._first_param
        params = self._layer_views(flat, rows)
        into = self._layer_views(grads, rows) if self._in_place else None
        for i in range(len(self.layers) - 1, last - 1, -1):
            views = into[i] if into is not None else None
            dH, got = self.layers[i].backward(ctx, i, dH, tape[i], params[i], views or None,
                                              i > self._first_param or to_input)
            if not got or (views and all(map(operator.is_, got.values(), map(views.__getitem__, got)))):
                continue  # no parameters, or written into the gradient buffer
            in_place = False
            for name, arr in got.items():
                pieces[self._layer_slots[i][name][0]] = arr
        if to_input:
            return dH
        if in_place:
            return None
        # A layer wrote new arrays (an immutable backend): every layer's gradient joins.
        for i in range(last, len(self.layers)):
            for name, (a, _, _) in self._layer_slots[i].items():
                pieces.setdefault(a, into[i][name] if into is not None else None)
        return xp.concat([xp.reshape(pieces[a], (int(pieces[a].shape[0]), -1)) for a in sorted(pieces)], axis=1)

    def infer_members(self, X: Array) -> tuple[Array, Array]:
        """Logits and outputs of every member (thread-safe).

        Parameters
        ----------
        X : array, shape (n, n_features_in_) shared, or (K, n, n_features_in_) per
            member, on the backend in the compute dtype.

        Returns
        -------
        Z, P : arrays, shape (K, n, n_outputs_), in the master dtype
            This thread's workspaces where the backend writes in place (overwritten
            by its next call).
        """
        be, xp = self.backend, self.backend.xp
        ws = self._thread_workspace()
        with self.parameter_lock.read():
            if self.precision_.mixed:
                be.copy(self.flat, self._flat_c)
            Z, _ = self._forward(X, slice(None), ws, train=False)
        K, n, c = (int(d) for d in Z.shape)
        if self.precision_.mixed:
            Z = be.copy(Z, self._ws_buffer(ws, ("Zm", n), (K, n, c), self.dtype)) \
                if self._in_place else be.astype(Z, self.dtype)
        Z2 = xp.reshape(Z, (K * n, c))
        out = self._ws_buffer(ws, ("P", n), (K, n, c), self.dtype)
        P = self.output.forward(be, Z2, out=xp.reshape(out, (K * n, c)) if out is not None else xp.zeros_like(Z2))
        return Z, xp.reshape(P, (K, n, c))

    infer = infer_members

    def _thread_workspace(self) -> dict:
        ws = getattr(self._tls, "ws", None)
        if ws is None:
            ws = self._tls.ws = {}
        return ws

    def _ws_buffer(self, ws: dict, key: Any, shape: tuple[int, ...], dtype: str) -> Array | None:
        if not self._in_place:
            return None
        buf = ws.get(key)
        if buf is None or tuple(buf.shape) != shape:
            if len(ws) > 64:
                ws.clear()
            buf = ws[key] = self.backend.empty(shape, dtype)
        return buf

    def member_outputs(self, X: Any, *, raw: bool = False, argmax: bool = False) -> np.ndarray:
        """Every member's outputs on the host, computed in chunks of rows (thread-safe).

        The whole call holds the parameter lock for reading: one set of weights.

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_)
        raw : bool
            The logits instead of the outputs.
        argmax : bool
            Each row's arg-max, taken on the device: only the (K, n) indices come back.

        Returns
        -------
        ndarray, shape (K, n, n_outputs_), or (K, n) of int64 with ``argmax``
        """
        if streams.is_stream(X):
            return streams.member_outputs(self, X, raw, argmax)
        X = self.check_input(X)
        be, xp = self.backend, self.backend.xp
        n, K = X.shape[0], self.n_members
        step = max(1, PREDICT_CHUNK // K)
        out = np.empty((K, n) if argmax else (K, n, self.n_outputs_), dtype=np.int64 if argmax else self.dtype)
        with self.compute_context(min(n, step)), self.parameter_lock.read(), \
                np.errstate(over="ignore", invalid="ignore"):
            for a, b in iter_chunks(n, step):
                Z, P = self.infer_members(be.asarray(X[a:b, :], dtype=self.compute_dtype))
                out[:, a:b] = be.to_numpy(xp.argmax(Z, axis=-1) if argmax else (Z if raw else P))
        return out

    def evaluate_members(self, X: Any, y: Any = None, sample_weight: Any = None,
                         loss: Any = None) -> dict[str, np.ndarray]:
        """Every member's mean loss and metric on ``(X, y)`` (thread-safe, one set of weights).

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The forms ``fit`` takes (:mod:`mlpx.streams`).
        y : array_like, optional
            Targets as ``fit`` takes them (None for a stream of ``(X, y)`` batches).
        sample_weight : array_like, shape (n,), optional
        loss : str or Loss, optional
            Default: the loss of the last ``fit``, else the output's canonical loss.

        Returns
        -------
        dict of str -> ndarray, shape (K,)
            ``"loss"`` and ``"accuracy"`` (softmax / logistic) or ``"r2"``.
        """
        if y is None or streams.is_stream(X):
            return streams.evaluate(self, X, y, sample_weight, loss)
        be = self.backend
        X = self.check_input(X)
        lossfn = self.resolve_loss(loss if loss is not None else self.loss_)
        Y = encode_targets(y, self.output.name, self.n_outputs_, X.shape[0], dtype=self.dtype, loss=lossfn.name)
        w = check_sample_weight(sample_weight, X.shape[0], dtype=self.dtype)
        n = X.shape[0]

        def chunks() -> Iterator[tuple[Array, Array, Array | None, None]]:
            for a, b in iter_chunks(n, PREDICT_CHUNK):
                yield (be.asarray(X[a:b, :], dtype=self.compute_dtype), be.asarray(Y[a:b], dtype=self.dtype),
                       None if w is None else be.asarray(w[a:b], dtype=self.dtype), None)

        with self.compute_context(min(n, PREDICT_CHUNK)), self.parameter_lock.read():
            scores = holdout_scores(self, chunks, self._one_rank, lossfn)
        return {k: v for k, v in scores.items() if k != "weight"}

    # --------------------------------------------------------------- training
    def _upload(self, host: np.ndarray) -> Array:
        """Host scalars (a step's or an epoch's) on the device without stalling it (a
        ring of pinned buffers on the GPU)."""
        be = self.backend
        dt = host_dtype(self.flat.dtype)
        if not be.is_gpu:
            return host.astype(dt) if self._in_place else be.asarray(host.astype(dt), dtype=self.dtype)
        ring = self._uploads.get(host.shape)  # one ring per shape (fp16 uploads two per step)
        if ring is None:
            ring = self._uploads[host.shape] = [[be.empty_pinned(host.shape, dt), be.empty(host.shape, self.dtype),
                                                 None] for _ in range(3)]
            self._upload_i[host.shape] = 0
        i = self._upload_i[host.shape] = (self._upload_i[host.shape] + 1) % 3
        pinned, dev, event = ring[i]
        be.synchronize_event(event)  # the copy from three uploads ago has read it
        np.copyto(pinned, host, casting="unsafe")
        be.upload(pinned, dev)
        ring[i][2] = be.record_event()
        return dev

    def _head(self, d: np.ndarray, l2v: np.ndarray, active: np.ndarray, opt_vec: np.ndarray | None) -> np.ndarray:
        """The scalars of a step per member (host, float64).

        Parameters
        ----------
        d : ndarray, shape (K,) or (S, K)
            Each member's normaliser per step.
        l2v : ndarray, shape (K,)
        active : ndarray of bool, shape of ``d``
        opt_vec : ndarray, shape (r, K) or (S, r, K), or None
            :meth:`Optimizer.vectors <mlpx.optimizers.Optimizer.vectors>` (None: no
            update in the step).

        Returns
        -------
        ndarray, shape (3 + r, K) or (S, 3 + r, K)
            Rows ``1/d`` and ``l2/d`` (0 for members without a step), the loss scale,
            then ``opt_vec``.
        """
        safe = np.where(d > 0, d, 1.0)
        r = 0 if opt_vec is None else opt_vec.shape[-2]
        head = np.empty(d.shape[:-1] + (3 + r, d.shape[-1]))
        head[..., 0, :] = np.where(active, 1.0 / safe, 0.0)
        head[..., 1, :] = np.where(active, l2v / safe, 0.0)
        scaler = self.precision_.scaler
        head[..., 2, :] = 1.0 if scaler is None else (scaler.scales if isinstance(scaler, MemberScalers)
                                                      else scaler.scale)
        if opt_vec is not None:
            head[..., 3:, :] = opt_vec
        return head

    def _scalers(self) -> list[LossScaler]:
        scaler = self.precision_.scaler
        return scaler.members if isinstance(scaler, MemberScalers) else [scaler]

    def _as_members(self, X: Any, Y: Any, w: Any) -> tuple[Any, Any, Any]:
        """A batch in member form: a single network's (b, f), (b, c), (b,) become (1, b, ·)."""
        if X is None or isinstance(X, MemberRows) or len(X.shape) == 3:
            return X, Y, w
        xp = self.backend.xp
        b = int(X.shape[0])
        X = xp.reshape(X, (1, b, int(X.shape[1])))
        Y = Y if isinstance(Y, MemberRows) else xp.reshape(Y, (1, b, int(Y.shape[1])))
        return X, Y, None if w is None else xp.reshape(w, (1, b))

    @exclusive_training
    def train_step(
        self,
        X: Any,
        Y: Any,
        w: Array | None = None,
        *,
        denom: Any,
        loss: OutputLoss,
        optimizer: Optimizer | None,
        l2: Any = 0.0,
        reducer: Reducer | None = None,
        count_correct: bool = False,
        pending: BaseException | None = None,
        where: str = "",
        head: Array | None = None,
    ) -> StepResult:
        """One minibatch step of every member: forward, backward, all-reduce, L2, update.

        Every training loop of mlpx runs on this step: ``fit`` (one process or many),
        the stacked fits, and the scikit-learn estimators' SGD and Adam solvers.

        Parameters
        ----------
        X, Y : arrays on the backend, shapes (K, b, n_features_in_) and (K, b, n_outputs_)
            Each member's minibatch (a single network may pass (b, ·) arrays), or
            :class:`~mlpx.data.MemberRows` (each member's rows of a data set on the
            device, gathered as the step computes); ``X=None`` when this rank has no
            rows this step (it still joins the all-reduce).
        w : array, shape (K, b) (or (b,)), optional
            Row weights (0 for padding rows).
        denom : float or array_like of shape (K,)
            Each member's normaliser: rows (or Σ w) of every rank's batch together; a
            member with 0 (or frozen) takes no optimizer step.
        loss : OutputLoss
            From :meth:`resolve_loss`.
        optimizer : Optimizer or None
            Bound to this network; None computes the loss and gradients only (the L2
            term included).
        l2 : float or array_like of shape (K,)
            L2 penalty, scaled as scikit-learn's ``alpha``: ``½ l2 Σ‖W‖² / d``.
        reducer : Reducer, optional
            Combines the ranks' gradients (:mod:`mlpx.distributed`); default: one rank.
        count_correct : bool
            Also count each member's rows of positive weight predicted right.
        pending : BaseException, optional
            A failure of this rank since the last collective: skip the local work and
            make every rank raise.
        where : str
            Named in the error other ranks raise.
        head : array, shape (3 + r, K), optional
            This step's row of :meth:`epoch_heads` (already on the device).

        Returns
        -------
        StepResult
        """
        K = self.n_members
        d = np.broadcast_to(np.asarray(denom, dtype=np.float64), (K,))
        l2v = np.broadcast_to(np.asarray(l2, dtype=np.float64), (K,))
        active = (d > 0) & self.active
        reducer = reducer if reducer is not None else self._one_rank
        X, Y, w = self._as_members(X, Y, w)
        if head is not None:  # the epoch's scalars, uploaded at its start (epoch_heads)
            result = self._step(X, Y, w, head, active, loss, optimizer, bool(l2v.any()), count_correct, reducer,
                                pending, where, staged=True)
            if optimizer is not None:
                optimizer.advance(active)  # the counts follow the steps taken
            return result
        with_opt = optimizer is not None and self.precision_.scaler is None
        dev = self._upload(self._head(d, l2v, active, optimizer.vectors(active) if with_opt else None))
        return self._step(X, Y, w, dev, active, loss, optimizer, bool(l2v.any()), count_correct, reducer,
                          pending, where, staged=with_opt)

    def epoch_heads(self, denoms: np.ndarray, l2: Any, optimizer: Optimizer | None) -> Array | None:
        """Every step's scalars of an epoch (:meth:`_head`) on the device, in one transfer.

        The loop hands step ``j`` its row (``step_members(..., head=heads[j])``), so no
        step uploads or waits for the device. None with fp16 loss scaling, whose
        scale each step decides on the device.

        Parameters
        ----------
        denoms : ndarray, shape (n_steps, K)
        l2 : float or array of shape (K,)
        optimizer : Optimizer or None

        Returns
        -------
        array, shape (n_steps, 3 + r, K), or None
        """
        if self.precision_.scaler is not None:
            return None
        K = self.n_members
        D = np.asarray(denoms, dtype=np.float64).reshape(-1, K)
        l2v = np.broadcast_to(np.asarray(l2, dtype=np.float64), (K,))
        active = (D > 0) & self.active
        vec = None if optimizer is None else optimizer.vectors(active, advance=False)
        return self._upload(self._head(D, l2v, active, vec))

    step_members = train_step

    def _step(self, X: Any, Y: Any, w: Array | None, dev: Array, active: np.ndarray, loss: OutputLoss,
              optimizer: Optimizer | None, penalised: bool, count_correct: bool, reducer: Reducer | None = None,
              pending: BaseException | None = None, where: str = "", staged: bool = True) -> StepResult:
        """:meth:`step_members` with the step's scalars ``dev`` (:meth:`_head`, on the device;
        ``staged``: with the optimizer's rows)."""
        be, xp = self.backend, self.backend.xp
        reducer = reducer if reducer is not None else self._one_rank
        K = self.n_members
        scaler = self.precision_.scaler
        fused = optimizer is not None and scaler is None and not reducer.collective
        if fused and pending is None and isinstance(X, MemberRows) and isinstance(Y, MemberRows) and \
                self._step_plan is not None:
            # Unit weights (None) as the compiled loop reads them.
            w1 = np.ones(X.index.shape, Y.data.dtype) if w is None and type(X.index) is np.ndarray else w
            if self._compiled_step_applies(X.data, Y.data, w1, X.index, loss, optimizer):
                groups = X.groups if X.groups is not None else np.arange(K)
                with self.parameter_lock.write():
                    value, sq, correct = self._compiled_step(active[None], X.data, Y.data, X.index[None], groups,
                                                             w1[None], dev[None], loss, count_correct, penalised,
                                                             optimizer)
                penalty = (0.5 * dev[1, :]) * sq[0] if penalised else 0.0
                return StepResult(value[0], penalty, None if correct is None else correct[0], True, None)

        value: Any = None
        correct = sq = None
        error = pending
        if X is not None and error is None:
            try:
                value, sq, correct = self._phases(X, Y, w, dev, loss, count_correct, penalised,
                                                  optimizer if fused else None)
            except BaseException as exc:
                if reducer.size == 1:
                    raise
                error = exc
        elif X is None and error is None:
            self.flat_grads = be.assign(self.flat_grads, be.run(_zero, self.flat_grads))
        if value is None:  # no rows here, or the step failed
            value = xp.zeros(K, dtype=be.dtype(self.dtype))
        if not fused:
            value = reducer.allreduce_gradients(xp.reshape(self.flat_grads, (-1,)), value, error=error,
                                                where=where)
        applied: bool | None = None if optimizer is None else True
        late: BaseException | None = error
        if late is None and not fused:  # (a fused step has updated in _phases)
            try:
                with self.parameter_lock.write():
                    if optimizer is None:
                        if penalised:  # the L2 term into the gradients (no update carries it)
                            nw = self.n_weights
                            dW, sq = be.run(l2_penalty, self.flat[:, :nw], self.flat_grads[:, :nw], dev[1, :])
                            if not self._in_place:
                                self.flat_grads = xp.concat([dW, self.flat_grads[:, nw:]], axis=1)
                    elif not fused:
                        steps = active
                        if scaler is not None:
                            # fp16: members whose gradients overflowed skip the step and lower their scale
                            finite = np.asarray(be.to_numpy(xp.all(xp.isfinite(self.flat_grads), axis=1)),
                                                dtype=bool)
                            for k, sc in enumerate(self._scalers()):
                                if active[k]:
                                    sc.update(found_inf=not finite[k])
                            steps = active & finite
                            applied = bool(steps.any()) or not active.any()
                        vec = dev[3:, :] if staged and scaler is None else self._upload(optimizer.vectors(steps))
                        params, sq = optimizer.update(self.flat, self.flat_grads, vec,
                                                      dev[1, :] if penalised else None)
                        self._store(params)
            except BaseException as exc:
                if reducer.size == 1:
                    raise
                late = exc
        penalty: Any = 0.0
        if penalised and sq is not None:  # none from a member without rows (its Σ W² may be inf)
            penalty = xp.where(dev[0, :] > 0, (0.5 * dev[1, :]) * sq, xp.zeros_like(sq))
        return StepResult(value, penalty, correct, applied, late)

    def _phases(self, X: Any, Y: Any, w: Array | None, dev: Array, loss: OutputLoss, count_correct: bool,
                penalised: bool, optimizer: Optimizer | None) -> tuple[Array, Array | None, Array | None]:
        """Forward, loss, backward (and, with ``optimizer``, the update) of every member,
        in chunks of members on the fit's threads. Returns (loss, Σ W², correct)."""
        be, xp = self.backend, self.backend.xp
        if self.precision_.mixed:
            self._flat_c = be.copy(self.flat, self._flat_c)
        pool, chunks = self._pool()
        if len(chunks) == 1 or pool is None or not self._in_place:
            with self.parameter_lock.write():
                value, sq, correct, new = self._chunk_step(_ALL, X, Y, w, dev, loss, count_correct, penalised,
                                                           optimizer)
                if new is not None:
                    self._store(new)
            return value, sq, correct

        def run(rows: slice) -> tuple[Any, Any, Any, Any]:
            return self._chunk_step(rows, X, Y, w, dev, loss, count_correct, penalised, optimizer)

        with self.parameter_lock.write():
            parts = list(pool.map(run, chunks))
        value = _join(xp, [p[0] for p in parts])
        correct = _join(xp, [p[2] for p in parts]) if count_correct else None
        sq = _join(xp, [p[1] for p in parts]) if parts[0][1] is not None else None
        return value, sq, correct

    def _chunk_step(self, rows: slice, X: Any, Y: Any, w: Array | None, dev: Array, loss: OutputLoss,
                    count_correct: bool, penalised: bool, optimizer: Optimizer | None
                    ) -> tuple[Any, Any, Any, Any]:
        """Forward, backward (and the update) of the members ``rows``.

        Returns (loss, Σ W² or None, correct or None, new parameters or None).
        """
        be, xp = self.backend, self.backend.xp
        whole = rows.start is None and rows.stop is None
        ws = self._ws.setdefault(("chunk", rows.start, rows.stop), {})
        Xr = X if isinstance(X, MemberRows) or len(X.shape) == 2 or whole else X[rows]
        Yr = Y.take(be, rows, ws, "Y") if isinstance(Y, MemberRows) else (Y if whole else Y[rows])
        wr = w if (whole or w is None) else w[rows]
        inv_d = dev[0, :] if whole else dev[0, rows]
        scale = dev[2, :] if whole else dev[2, rows]
        Z, tape = self._forward(Xr, rows, ws, train=True)
        mixed = self.precision_.mixed
        k, n, c = map(int, Z.shape)
        Zm = be.astype(Z, self.dtype) if mixed else Z
        dZ = self._ws_buffer(ws, "dZ", (k, n, c), self.dtype)
        P = None if loss.canonical else self._ws_buffer(ws, "P", (k, n, c), self.dtype)
        value, dZ = loss.delta(be, Zm, Yr, dZ if dZ is not None else (Zm if loss.canonical else xp.zeros_like(Zm)),
                               wr, inv_d, P)
        correct = be.run(correct_count, Zm, Yr, wr, self.output.name) if count_correct else None
        if mixed:
            # The output delta goes back in the compute dtype, times each member's loss
            # scale (fp16) so small gradients do not flush to zero on the way.
            dZc = self._ws_buffer(ws, "dZc", (k, n, c), self.compute_dtype)
            factor = xp.reshape(be.astype(scale, "float32"), (k, 1, 1))
            dZ = be.run(scale_cast, dZ, factor,
                        dZc if dZc is not None else xp.zeros((k, n, c), dtype=be.dtype(self.compute_dtype)))
        grads = self._grads_c if mixed else self.flat_grads
        assembled = self._backward(dZ, tape, rows, ws, grads)
        if mixed:
            src = assembled if assembled is not None else (grads if whole else grads[rows])
            factor = xp.reshape(1.0 / be.astype(scale, "float32"), (k, 1))
            out = be.run(scale_cast, src, factor, self.flat_grads if whole else self.flat_grads[rows])
            if not self._in_place:
                self.flat_grads = out
        elif assembled is not None:
            self.flat_grads = assembled  # (the generic path runs whole)
        if optimizer is None:
            return value, None, correct, None
        new, sq = optimizer.update(self.flat, self.flat_grads, dev[3:, :], dev[1, :] if penalised else None, rows)
        return value, sq if penalised else None, correct, new if whole else None

    def _compiled_step_applies(self, X: Any, Y: Any, w: Any, index: Any, loss: OutputLoss,
                               optimizer: Any) -> bool:
        """Whether steps over the data set ``X``, ``Y`` (rows ``index`` (…, K, b), weights
        ``w``) can run as one compiled call per thread (:mod:`mlpx.member_step`)."""
        if self._step_plan is None or index is None or w is None or optimizer is None:
            return False
        if not loss.canonical or loss.name not in self._step_plan.losses or int(index.shape[-1]) < 2:
            return False
        if self._dropout:
            return False
        state = optimizer.state_rows()
        dtype = self.flat.dtype
        arrays = (X, Y, w, index, self.flat, self.flat_grads, *state)
        return all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays) and all(
            a.dtype == dtype for a in (X, Y, w, *state))

    def _compiled_step(self, active: np.ndarray, X: np.ndarray, Y: np.ndarray, index: np.ndarray, groups: Any,
                       w: np.ndarray, dev: np.ndarray, loss: OutputLoss, count_correct: bool, penalised: bool,
                       optimizer: Optimizer, widths: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """S steps of :meth:`_chunk_step` with the update for every member, one compiled
        call per thread; each member takes its S steps in turn.

        The calling thread and the fit's other threads take members with rows from
        one queue (frozen members cost nothing).

        Parameters
        ----------
        active : ndarray of bool, shape (S, K)
        X, Y : ndarrays, shapes (N, f) and (N, c)
        index : ndarray of int64, shape (S, K, b)
        groups : array_like of int, shape (K,)
        w : ndarray, shape (S, K, b)
        dev : ndarray, shape (S, 3 + r, K)
            Each step's :meth:`_head`.
        widths : ndarray of int64, shape (S,), optional
            The rows each step takes of its ``b`` (default: all).

        Returns
        -------
        loss, sq, correct : ndarrays, shape (S, K) (``correct`` None when not asked for)
        """
        S, K = active.shape
        out = {name: np.zeros((S, K), dtype=self.flat.dtype) for name in ("loss", "sq", "hits")}
        queue = np.flatnonzero(active.any(axis=0)).astype(np.int64)
        counter = np.zeros(1, dtype=np.int64)
        pool, chunks = self._pool()
        n = min(len(chunks), max(1, queue.size)) if pool is not None else 1
        groups = np.asarray(groups, dtype=np.int64)
        state = optimizer.state_rows()
        rule = type(optimizer).__name__
        widths = np.full(S, index.shape[2], dtype=np.int64) if widths is None else np.asarray(widths, np.int64)

        def run(i: int) -> None:
            run_member_steps(self._step_plan, queue, counter, X, Y, index, widths, groups, w, dev, self.flat,
                             self.flat_grads, state, rule, self.n_weights, loss.name, penalised,
                             self._ws.setdefault(("compiled", i), {}), out, count_correct, self.output.name)

        # The threads share one queue of members: one that wakes up late takes fewer.
        others = [pool.submit(run, i) for i in range(1, n)] if n > 1 else []
        try:
            run(0)
        finally:
            concurrent.futures.wait(others)  # no thread may still write when this returns
        for f in others:
            f.result()
        return out["loss"], out["sq"], out["hits"] if count_correct else None

    def train_epoch(self, source: Any, perm: Any, denoms: np.ndarray, *, loss: OutputLoss,
                    optimizer: Optimizer | None, l2: Any = 0.0, count_correct: bool = False
                    ) -> list[StepResult | None] | None:
        """Every step of an epoch: what :meth:`step_members` would give step by step, bit for bit.

        The members are independent within an epoch. Where the compiled step applies
        (:attr:`compiled_step_reason` is empty), each member takes its steps one after
        another in one compiled call per thread, while its weights and optimizer state
        stay in the core's cache: one Python call per block of steps instead of one
        per step (the blocks bound how long a call holds the parameter lock and keeps
        a Ctrl-C waiting). Elsewhere (the GPU, array libraries, dropout, other losses)
        the steps run phase by phase, with the scalars of the whole epoch moved to the
        device in one transfer: no per-step upload, no wait for the device inside the
        epoch.

        Parameters
        ----------
        source : MemberBatches
        perm : the epoch's order (:meth:`MemberBatches.epoch <mlpx.data.MemberBatches.epoch>`)
        denoms : ndarray, shape (n_steps, K)
            Each member's normaliser per step (``source.denominators(perm)``).
        loss, optimizer, l2, count_correct
            As for :meth:`step_members`.

        Returns
        -------
        list of StepResult, one per step (None for a step no member has rows in), or None
            None for another source, loss scaling or no update: then step by step.
        """
        if optimizer is None or self.precision_.scaler is not None or not isinstance(source, MemberBatches):
            return None
        index, w = source.epoch_arrays(perm)
        widths = source.widths(perm)
        K = self.n_members
        D = np.asarray(denoms, dtype=np.float64).reshape(-1, K)
        S = D.shape[0]
        if tuple(index.shape[:2]) != (S, K):
            raise ValueError(f"denominators of shape {D.shape} for {index.shape[0]} steps of {K} members")
        l2v = np.broadcast_to(np.asarray(l2, dtype=np.float64), (K,))
        penalised = bool(l2v.any())
        active = (D > 0) & self.active
        results: list[StepResult | None] = []
        if not self._compiled_step_applies(source.X, source.Y, w, index, loss, optimizer):
            # The steps the loop would take: those where some member has rows.
            learns = (D > 0).any(axis=1)
            heads = self._upload(self._head(D, l2v, active, optimizer.vectors(active, advance=False)))
            for j in range(S):
                if not learns[j]:
                    results.append(None)
                    continue
                batch = source.batch(index, w, j, widths)
                results.append(self._step(batch.X, batch.Y, batch.w, heads[j, :, :], active[j], loss, optimizer,
                                          penalised, count_correct))
                optimizer.advance(active[j])  # the counts follow the steps taken
            return results
        per_step = 3.0 * self.gemm_flops(int(index.shape[2])) * max(1, int(active.any(axis=0).sum()))
        block = max(1, int(_BLOCK_FLOPS // per_step))
        for a in range(0, S, block):
            z = slice(a, min(S, a + block))
            # The counts advance block by block: an interrupted epoch leaves them right.
            head = self._head(D[z], l2v, active[z], optimizer.vectors(active[z])).astype(self.flat.dtype)
            # One step in the block: members with the same rows share its gather.
            groups = source.groups if z.stop - z.start == 1 else np.arange(K)
            with self.parameter_lock.write():
                value, sq, correct = self._compiled_step(active[z], source.X, source.Y, index[z], groups, w[z],
                                                         head, loss, count_correct, penalised, optimizer,
                                                         widths[z])
            penalty = (0.5 * head[:, 1, :]) * sq if penalised else None
            for j in range(z.stop - z.start):
                results.append(StepResult(value[j], 0.0 if penalty is None else penalty[j],
                                          None if correct is None else correct[j], True, None))
        return results

    # ------------------------------------------------------------------ state
    def train_state(self) -> dict[str, Any]:
        """Progress as data: counters, the optimizer's and the loss scalers' state
        (a stack's counters and flags per member)."""
        seen = self.samples_seen_
        state: dict[str, Any] = {"epochs_done": int(self.epochs_done_),
                                 "samples_seen": seen.tolist() if isinstance(seen, np.ndarray) else int(seen)}
        if isinstance(seen, np.ndarray):
            state["active"] = [bool(a) for a in self.active]
            state["diverged"] = [bool(d) for d in self.diverged_]
        if self.optimizer_ is not None:
            state["optimizer"] = self.optimizer_.state_dict()
        if self.loss_ is not None:
            state["loss"] = self.loss_.name
        scaler = self.precision_.scaler
        if scaler is not None:  # fp16: resume with the scale reached, not from 2**16 again
            state["loss_scaler"] = scaler.get_state()
        return state

    def load_train_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`train_state` (the optimizer is rebuilt, bound at the next fit)."""
        self.epochs_done_ = int(state.get("epochs_done", 0))
        self.samples_seen_ = state.get("samples_seen", 0)
        for key, flags in (("active", self.active), ("diverged", self.diverged_)):
            if key in state:
                flags[:] = np.asarray(state[key], dtype=bool)
        if state.get("optimizer") is not None:
            self.optimizer_ = Optimizer.from_state_dict(state["optimizer"])
            if self.built:
                self.optimizer_.bind(self.backend, self.params, self.grads, self.n_weights, owner=self)
        if state.get("loss") is not None:
            self.loss_ = self.resolve_loss(state["loss"])
        scaler = self.precision_.scaler
        if "loss_scaler" in state and scaler is not None:
            scaler.set_state(state["loss_scaler"])

    def freeze(self, k: int) -> None:
        """Stop member ``k``: from the next epoch it gets no rows and no updates."""
        self.active[int(k)] = False

    def finite_members(self) -> np.ndarray:
        """Which members' parameters are all finite, shape (K,) (one device read)."""
        be, xp = self.backend, self.backend.xp
        with self.parameter_lock.read():
            return np.asarray(be.to_numpy(xp.all(xp.isfinite(self.flat), axis=1)), dtype=bool).reshape(-1)
