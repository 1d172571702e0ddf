"""Device-side state behind :mod:`mlpx.estimators`: the network and optimizer on the
backend (:class:`_Runtime`), a training set cut into minibatches there
(:class:`_DeviceData`), and the sparse / device-array input helpers.

Private to the estimators; nothing here imports scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from mlpx.backends import Backend, NumpyBackend
from mlpx.layers import Dense
from mlpx.model import Sequential
from mlpx.optimizers import SGD, Optimizer

Array = Any


def _is_device_array(x: Any) -> bool:
    """A CuPy array or cupyx sparse matrix (data the caller already put on a GPU)."""
    return type(x).__module__.split(".")[0] in ("cupy", "cupyx")


def _to_host(x: Any) -> Any:
    if _is_device_array(x):
        return x.get()
    return x


def _glorot_draws(rng: np.random.RandomState, layer_units: list[int], activation: str
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Initial ``coefs_``/``intercepts_`` drawn exactly as scikit-learn's ``_init_coef``.

    scikit-learn uses the *hidden* activation's factor (2 for logistic, else 6) on
    every layer, the output layer included, and draws W then b per layer.
    """
    factor = 2.0 if activation == "logistic" else 6.0
    coefs, intercepts = [], []
    for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        coefs.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
        intercepts.append(rng.uniform(-bound, bound, fan_out))
    return coefs, intercepts


class _Runtime:
    """What lives on the backend between calls: the network and the optimizer.

    Not pickled as such: :meth:`to_host` turns it into host arrays, from which the
    estimator rebuilds it (on whatever backend it is then asked for).
    """

    def __init__(self, be: Backend, dtype: str, layer_units: list[int], activation: str,
                 out_activation: str) -> None:
        self.be, self.dtype = be, dtype
        layers = [
            Dense(a, b, activation=out_activation if i == len(layer_units) - 2 else activation)
            for i, (a, b) in enumerate(zip(layer_units[:-1], layer_units[1:]))
        ]
        self.model = Sequential(layers, backend=be, dtype=dtype, seed=0)
        self.optimizer: Optimizer | None = None
        self.best: Array | None = None  # device copy of the best parameters (early stopping)

    def push(self, coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> None:
        """Copy host ``coefs``/``intercepts`` into the flat device buffer (one transfer)."""
        model = self.model
        shapes = [s[2] for s in model._slots]
        arrays = list(coefs) + list(intercepts)
        if len(arrays) != len(shapes) or any(np.shape(a) != s for a, s in zip(arrays, shapes)):
            raise ValueError(
                "coefs_/intercepts_ do not match the network's layer sizes "
                f"{[s for s in shapes[: len(shapes) // 2]]}; assign arrays of the same shapes"
            )
        flat = np.concatenate([np.ravel(a) for a in arrays])
        self.set_flat(flat)

    def set_flat(self, flat: np.ndarray) -> None:
        be = self.be
        be.copy(be.asarray(np.asarray(flat, dtype=self.dtype), dtype=self.dtype), self.model.params)

    def pull(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Host copies of the parameters as scikit-learn's ``coefs_``, ``intercepts_``."""
        flat = np.array(self.be.to_numpy(self.model.params), copy=True)
        arrays = [flat[a:b].reshape(shape) for _i, _n, shape, a, b in self.model._slots]
        half = len(arrays) // 2
        return arrays[:half], arrays[half:]

    def to_host(self) -> dict[str, Any]:
        be = self.be
        state: dict[str, Any] = {"dtype": self.dtype, "optimizer": None, "best": None}
        if self.best is not None:
            state["best"] = np.array(be.to_numpy(self.best), copy=True)
        opt = self.optimizer
        if opt is not None:
            names = ("velocity",) if isinstance(opt, SGD) else ("m", "v")
            arrays = {k: np.array(be.to_numpy(getattr(opt, k)), copy=True)
                      for k in names if getattr(opt, "_bound", None) is not None}
            state["optimizer"] = {"class": type(opt), "config": opt.get_config(), "lr": opt.lr,
                                  "t": opt.t, "momentum": getattr(opt, "momentum", None),
                                  "arrays": arrays}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        be, model = self.be, self.model
        if state.get("best") is not None:
            self.best = be.asarray(state["best"].astype(self.dtype), dtype=self.dtype)
        o = state.get("optimizer")
        if o is not None:
            config = dict(o["config"])
            if o["class"] is SGD:
                config["momentum"] = 0.0  # sklearn allows momentum=1, the engine's check does not
            opt = o["class"](**config)
            if o["momentum"] is not None:
                opt.momentum = o["momentum"]
            opt.lr, opt.t = o["lr"], o["t"]
            if o["arrays"]:
                opt.bind(be, model.params, model.grads, model.n_weights)
                for k, v in o["arrays"].items():
                    be.copy(be.asarray(v.astype(self.dtype), dtype=self.dtype), getattr(opt, k))
            self.optimizer = opt


class _DeviceData:
    """A training set on the backend, cut into minibatches there.

    ``X`` is dense (a device array) or sparse (scipy / cupyx CSR on the backend);
    ``Y`` dense ``(n, n_outputs)``; ``w`` optional ``(n,)``. Gather buffers are
    allocated once per minibatch length (at most two: the full and the last one).
    """

    def __init__(self, be: Backend, dtype: str, X: Any, Y: np.ndarray, w: np.ndarray | None
                 ) -> None:
        self.be, self.dtype = be, dtype
        self.n = X.shape[0]
        self.sparse = sp.issparse(X) or _is_sparse_device(X)
        self.X = _sparse_to_backend(be, X, dtype) if self.sparse else be.asarray(X, dtype=dtype)
        self.Y = be.asarray(np.asarray(Y), dtype=dtype) if not _is_device_array(Y) else Y.astype(dtype)
        self.w_host = w
        self.w = None if w is None else be.asarray(np.asarray(w), dtype=dtype)
        self._buf: dict[tuple[str, int], Array] = {}
        self.idx = None  # device index vector of the current epoch
        self.idx_host: np.ndarray | None = None

    def set_order(self, idx: np.ndarray | None) -> None:
        """The epoch's sample order (host ints), moved to the device in one transfer."""
        self.idx_host = idx
        self.idx = None if idx is None else self.be.asarray(idx)

    def _buffer(self, tag: str, shape: tuple[int, ...]) -> Array:
        key = (tag, shape[0])
        buf = self._buf.get(key)
        if buf is None:
            buf = self._buf[key] = self.be.empty(shape, self.dtype)
        return buf

    def batch(self, a: int, b: int) -> tuple[Array, Array, Array | None]:
        """Rows ``a:b`` of the current order: ``(X_batch, Y_batch, w_batch)`` on the device."""
        be, nb = self.be, b - a
        if self.idx is None:  # no shuffling: contiguous slices are views
            # (a:b, ...) rather than a:b: the Array API (array-api-strict) wants every axis
            Xb = _densify(be, self.X[a:b], self.dtype) if self.sparse else self.X[a:b, ...]
            return Xb, self.Y[a:b, ...], None if self.w is None else self.w[a:b]
        ib = self.idx[a:b]
        if self.sparse:
            # scipy.sparse rows are taken with host indices, cupyx rows with device ones
            rows = self.X[ib] if be.is_gpu else self.X[self.idx_host[a:b]]
            Xb = _densify(be, rows, self.dtype)
        else:
            Xb = be.take_rows(self.X, ib, out=self._buffer("X", (nb, self.X.shape[1])))
        Yb = be.take_rows(self.Y, ib, out=self._buffer("Y", (nb, self.Y.shape[1])))
        wb = None if self.w is None else be.take_rows(self.w, ib, out=self._buffer("w", (nb,)))
        return Xb, Yb, wb

    def denom(self, a: int, b: int) -> float:
        """scikit-learn's per-batch normaliser: the batch size, or the batch's Σ w (host)."""
        if self.w_host is None:
            return float(b - a)
        w = self.w_host[a:b] if self.idx_host is None else self.w_host[self.idx_host[a:b]]
        return float(w.sum())


def _is_sparse_device(X: Any) -> bool:
    return type(X).__module__.startswith("cupyx.scipy.sparse")


def _sparse_to_backend(be: Backend, X: Any, dtype: str) -> Any:
    """CSR on the backend: scipy.sparse on the host backends, cupyx on the GPU."""
    if be.is_gpu:
        import cupyx.scipy.sparse as csp

        with be.activated():
            X = X if _is_sparse_device(X) else csp.csr_matrix(sp.csr_matrix(X))
            return X.tocsr().astype(dtype)
    if _is_sparse_device(X):
        X = X.get()
    return sp.csr_matrix(X).astype(dtype)


def _densify(be: Backend, Xs: Any, dtype: str) -> Array:
    """Dense device rows from a sparse block (the sparse path's per-batch cost)."""
    D = Xs.toarray()  # NumPy for scipy.sparse, CuPy for cupyx: already on the device
    return D if be.is_gpu or isinstance(be, NumpyBackend) else be.asarray(D, dtype=dtype)


def _rows(X: Any, idx: np.ndarray) -> Any:
    """Rows of host dense/sparse or device data by host indices."""
    if _is_device_array(X):
        import cupy

        return X[cupy.asarray(idx)]
    return X[idx]


# ------------------------------------------------------------- data parallel
class _Dist:
    """The estimators' side of data-parallel training (``fit(..., comm=...)``).

    Wraps a :mod:`mlpx.distributed` reducer (see its module docstring for the
    contract) and adds the few collectives the estimators' loops need. Every
    method is collective: all ranks call it, in the same order.

    Parameters
    ----------
    comm : mpi4py communicator, "mpi", "nccl" or GradientReducer
    be : Backend
        Where the estimator's network lives.
    """

    def __init__(self, comm: Any, be: Backend) -> None:
        from mlpx.distributed import make_reducer

        self.reducer = make_reducer(comm, be)
        if self.reducer.backend.name != be.name:
            raise ValueError(
                f"the communicator's reducer works on {self.reducer.backend.name}, "
                f"the estimator on {be.name}"
            )
        self.comm = self.reducer.comm  # MPI (also under NCCL): small host collectives
        self.rank, self.size, self.is_root = self.reducer.rank, self.reducer.size, self.reducer.is_root

    def agreed(self, where: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` locally; if it raised on any rank, raise on every rank.

        The failing rank re-raises its own exception, the others
        :class:`mlpx.distributed.RankFailedError`, so no rank waits forever in
        the next collective for one that has stopped.
        """
        error: BaseException | None = None
        result = None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            error = exc
        self.reducer.check_errors(error, where)
        return result

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def allreduce_sum(self, values: list[float]) -> list[float]:
        return self.reducer.allreduce_sum(values)

    def from_root(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (decisions taken on identical numbers)."""
        return self.comm.bcast(obj, root=0)


def _agreed(dist: _Dist | None, where: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with the failure agreed across ranks when ``dist`` is set."""
    if dist is None:
        return fn(*args, **kwargs)
    return dist.agreed(where, fn, *args, **kwargs)


def _global_step_rows(sizes: list[tuple[int, int]]) -> list[int]:
    """Rows of every global step from each rank's ``(n_rows, batch_size)``.

    Every rank runs ``max_r ceil(n_r / b_r)`` steps per epoch; step ``j`` holds
    rank ``r``'s rows ``[j b_r, min((j+1) b_r, n_r))`` (none once they run out).

    Returns
    -------
    list of int, length n_steps
    """
    n_steps = max((-(-n // b) for n, b in sizes if n > 0), default=0)
    return [sum(max(0, min((j + 1) * b, n) - j * b) for n, b in sizes) for j in range(n_steps)]


def _r2_from_sums(ss_res: np.ndarray, ss_tot: np.ndarray) -> float:
    """scikit-learn's ``r2_score`` (uniform average, ``force_finite=True``) from its sums.

    Parameters
    ----------
    ss_res, ss_tot : ndarray, shape (n_outputs,)
        ``Σ w (y - ŷ)²`` and ``Σ w (y - ȳ_w)²`` per output.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0),
                      np.where(ss_res > 0, 0.0, 1.0))
    return float(np.mean(r2))
