"""The passes of a network's K members and the training step built on them.

:class:`NetworkStep` is the base of :class:`~mlpx.network.Network`: the part every
training loop runs. The network's parameters are one ``(K, n_params)`` buffer (see
:mod:`mlpx.network`), and

* a forward or backward pass is one batched product per layer and phase
  (:mod:`mlpx.layers`), with the member axis first;
* a step (:meth:`NetworkStep.train_step`) is forward, the loss of every member with
  its own denominator and weights (:mod:`mlpx.losses`), backward, the all-reduce of
  data-parallel training, the L2 term and one optimizer update over the buffer with
  per-member scalars (:mod:`mlpx.optimizers`). The step's scalars (each member's
  ``1/d``, ``l2/d``, loss scale and the optimizer's rows) travel as one small array;
  an epoch's go to the device in one transfer (:meth:`NetworkStep.train_epoch`);
* on the CPU with numba, an epoch of every member runs as one compiled call per
  thread (:mod:`mlpx.member_step`), each member's steps from gather to update while
  its data are in the core's cache; elsewhere the steps run phase by phase. Small
  stacks on the CPU split their members over threads (BLAS and the compiled loops
  release the GIL).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import operator
import threading
from typing import Any, Iterator, NamedTuple

import numpy as np

from mlpx.activations import Activation
from mlpx.backends import Backend, kernel
from mlpx.backends.numpy_backend import SMALL_GEMM_FLOPS
from mlpx.data import numpy_dtype
from mlpx.member_batches import MemberBatches, MemberRows
from mlpx.distributed import LocalReducer, Reducer
from mlpx.layers import Dense, Layer, Pass
from mlpx.locking import ReadWriteLock, exclusive_training
from mlpx.losses import OutputLoss, l2_penalty
from mlpx.member_step import run_member_steps
from mlpx.metrics import correct_count
from mlpx.optimizers import Optimizer
from mlpx.precision import LossScaler, Precision, scale_cast

__all__ = ["NetworkStep", "StepResult"]

Array = Any

#: Work of one compiled call of :meth:`NetworkStep.train_epoch` (0.1 to 0.2 s on a CPU core): it
#: bounds how long a prediction from another thread waits for the parameter lock, and it must
#: hold many steps of each member, whose weights and moments stay in the core's cache only
#: within one call (benchmarks/README.md).
_BLOCK_FLOPS = 1e10


class StepResult(NamedTuple):
    """What one :meth:`~mlpx.network_step.NetworkStep.step_members` produced (each field also an attribute).

    Parameters
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


def _split(K: int, n: int) -> list[slice]:
    bounds = np.linspace(0, K, n + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _join(xp: Any, parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


class NetworkStep:
    """The forward and backward passes and the training step of K members.

    The base of :class:`~mlpx.network.Network`, which builds the layers and the
    parameter buffer and sets the attributes annotated here (documented there);
    see the module docstring.
    """

    # Set by Network (its constructor and build).
    backend: Backend
    dtype: str
    compute_dtype: str
    precision_: Precision
    n_members: int
    n_weights: int
    threads: int
    layers: list[Layer]
    output: Activation
    parameter_lock: ReadWriteLock
    active: np.ndarray
    flat: Array
    flat_grads: Array
    _flat_c: Array
    _grads_c: Array
    _in_place: bool
    _one_rank: LocalReducer
    _first_param: int
    _layer_slots: list[dict[str, tuple[int, int, tuple[int, ...]]]]
    _view_cache: dict[Any, Any]
    _step_plan: Any
    _dropout: dict[int, list[np.random.Generator]]
    _ws: dict[Any, Any]
    _tls: threading.local
    _train: threading.local
    _uploads: dict[tuple[int, ...], list[list[Any]]]
    _upload_i: dict[tuple[int, ...], int]

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

    def compute_context(self, batch: int) -> contextlib.ExitStack:
        """Device, BLAS threads and GEMM precision for passes over ``batch`` rows.

        Parameters
        ----------
        batch : int
            Rows of each member's pass (sets the BLAS thread count).

        Returns
        -------
        contextlib.ExitStack
            Entered with ``with``; leaving it restores the previous settings.
        """
        be = self.backend
        stack = contextlib.ExitStack()
        stack.enter_context(be.activated())
        stack.enter_context(be.blas_threads(self.gemm_flops(batch)))
        if self.precision_.tf32:
            stack.enter_context(be.tf32_matmul())
        return stack

    @contextlib.contextmanager
    def training_context(self, batch: int) -> Iterator[None]:
        """:meth:`compute_context`, and the members split over threads for small products.

        For small products each thread trains its share of the members on one BLAS
        thread, for the training of the calling thread. The threads belong to this
        call: predictions in other threads meanwhile never see or stop them.

        Parameters
        ----------
        batch : int
            Rows of each member's minibatch.

        Yields
        ------
        None
            Training runs inside the ``with`` block.
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
        """Flops (2·n·n_in·n_out) of one member's largest matrix product for n rows.

        Parameters
        ----------
        n : int
            Rows of the product.

        Returns
        -------
        float
            The flops, which choose the BLAS thread count.
        """
        return max((2.0 * n * l.n_in * l.n_out for l in self.layers if isinstance(l, Dense)), default=0.0)

    def _forward(self, X: Any, rows: slice, ws: dict[Any, Any], train: bool) -> tuple[Array, list[Any]]:
        """Logits (k, n, c) of the members ``rows``, in the compute dtype, for X: (k, n, f)
        per member, (n, f) shared, or :class:`~mlpx.member_batches.MemberRows`."""
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

    def _backward(self, dZ: Array, tape: list[Any], rows: slice, ws: dict[Any, Any], grads: Array,
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

    def _thread_workspace(self) -> dict[Any, Any]:
        ws = getattr(self._tls, "ws", None)
        if ws is None:
            ws = self._tls.ws = {}
        return ws

    def _ws_buffer(self, ws: dict[Any, Any], key: Any, shape: tuple[int, ...], dtype: str) -> Array | None:
        if not self._in_place:
            return None
        buf = ws.get(key)
        if buf is None or tuple(buf.shape) != shape:
            if len(ws) > 64:
                ws.clear()
            buf = ws[key] = self.backend.empty(shape, dtype)
        return buf

    # --------------------------------------------------------------- training
    def _upload(self, host: np.ndarray) -> Array:
        """Host scalars (a step's or an epoch's) on the device without stalling it (a
        ring of pinned buffers on the GPU)."""
        be = self.backend
        dt = numpy_dtype(self.flat.dtype)
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
        if isinstance(scaler, MemberScalers):
            return scaler.members
        return [] if scaler is None else [scaler]

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
            :class:`~mlpx.member_batches.MemberRows` (each member's rows of a data set on the
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
            Each member's loss, squared-norm and correct-count sums of the step.
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
        vec = optimizer.vectors(active) if optimizer is not None and with_opt else None
        dev = self._upload(self._head(d, l2v, active, vec))
        return self._step(X, Y, w, dev, active, loss, optimizer, bool(l2v.any()), count_correct, reducer,
                          pending, where, staged=with_opt)

    def epoch_heads(self, denoms: np.ndarray, l2: Any, optimizer: Optimizer | None) -> Array | None:
        """Every step's scalars of an epoch (as ``_head`` forms them) on the device, in one transfer.

        The loop hands step ``j`` its row (``step_members(..., head=heads[j])``), so no
        step uploads or waits for the device. None with fp16 loss scaling, whose
        scale each step decides on the device.

        Parameters
        ----------
        denoms : ndarray, shape (n_steps, K)
            Each member's normaliser per step.
        l2 : float or array of shape (K,)
            The L2 penalty of each member.
        optimizer : Optimizer or None
            Bound to this network; its rates and per-step factors join the row.

        Returns
        -------
        array, shape (n_steps, 3 + r, K), or None
            One row per step (``r`` the optimizer's per-step factors), or None
            with fp16 loss scaling.
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
        if fused and optimizer is not None and pending is None and isinstance(X, MemberRows) and \
                isinstance(Y, MemberRows) and self._step_plan is not None:
            # Unit weights (None) as the compiled loop reads them.
            w1 = np.ones(X.index.shape, Y.data.dtype) if w is None and type(X.index) is np.ndarray else w
            if w1 is not None and self._compiled_step_applies(X.data, Y.data, w1, X.index, loss, optimizer):
                groups = X.groups if X.groups is not None else np.arange(K)
                with self.parameter_lock.write():
                    losses, sqs, hits = self._compiled_step(active[None], X.data, Y.data, X.index[None], groups,
                                                            w1[None], dev[None], loss, count_correct, penalised,
                                                            optimizer)
                return StepResult(losses[0], (0.5 * dev[1, :]) * sqs[0] if penalised else 0.0,
                                  None if hits is None else hits[0], True, None)

        value: Array | None = None
        correct: Array | None = None
        sq: Array | None = None
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
                            sq = self._add_l2(dev[1, :])
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

    def _add_l2(self, coef: Array) -> Array:
        """Add ``coef · W`` to the weight gradients (``coef``: each member's ``l2/d``, (K,) on
        the device); returns each member's Σ W², shape (K,)."""
        be, xp, nw = self.backend, self.backend.xp, self.n_weights
        dW, sq = be.run(l2_penalty, self.flat[:, :nw], self.flat_grads[:, :nw], coef)
        if not self._in_place:
            self.flat_grads = xp.concat([dW, self.flat_grads[:, nw:]], axis=1)
        return sq

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
                               optimizer: Optimizer | None) -> bool:
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
        (the attribute ``compiled_step_reason`` is empty), each member takes its steps one after
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
            The members' minibatches of a data set on the device.
        perm : object
            The epoch's order (:meth:`MemberBatches.epoch <mlpx.member_batches.MemberBatches.epoch>`).
        denoms : ndarray, shape (n_steps, K)
            Each member's normaliser per step (``source.denominators(perm)``).
        loss : OutputLoss
            As for :meth:`step_members`.
        optimizer : Optimizer or None
            As for :meth:`step_members`.
        l2 : float or array_like of shape (K,)
            As for :meth:`step_members`.
        count_correct : bool
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
            learns = np.any(D > 0, axis=1)
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
