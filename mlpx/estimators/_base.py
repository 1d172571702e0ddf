"""scikit-learn compatible estimators: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in replacements for :class:`sklearn.neural_network.MLPClassifier` and
:class:`sklearn.neural_network.MLPRegressor` (scikit-learn 1.9): the same
constructor parameters, defaults, methods and fitted attributes, and the same
mathematics, plus two parameters:

``backend``
    ``"cpu"`` (default, NumPy + BLAS; ``"cpu:mkl"`` / ``"cpu:blis"`` for another
    BLAS), ``"gpu"`` / ``"gpu:N"`` (CuPy + cuBLAS),
    ``"auto"`` (GPU when usable) or a :class:`mlpx.backends.Backend` instance. It is
    resolved at ``fit``, not at construction, so ``clone``/``get_params`` work on a
    machine without a GPU; ``fit`` then raises the backend layer's
    :class:`~mlpx.backends.BackendUnavailableError`.
``dtype``
    ``None`` (default): float32 when ``X`` is float32 on any backend; otherwise
    float64 on the CPU (as scikit-learn computes) and float32 on the GPU. Or
    ``"float32"`` / ``"float64"`` explicitly. Fixed at the first fit.

How the work is done
--------------------
* The network is an engine :class:`~mlpx.model.Sequential` of
  :class:`~mlpx.layers.Dense` layers on the backend. Its flat parameter buffer
  (all weights, then all biases) has exactly the layout of scikit-learn's packed
  ``coefs_ + intercepts_`` vector.
* Initial weights are drawn from scikit-learn's ``RandomState`` in its order
  (layer by layer, W then b, Glorot bound with factor 2 for a logistic hidden
  activation on *every* layer, as scikit-learn does), then moved once. Minibatch
  order (``sklearn.utils.shuffle`` of the index vector every epoch) and the
  early-stopping split (``train_test_split``, stratified for single-output
  classifiers) draw from the same generator in the same order, so a float64 CPU
  fit follows scikit-learn's to rounding.
* SGD (momentum / Nesterov, constant / invscaling / adaptive learning rate) and
  Adam are the engine optimizers, whose update rules are scikit-learn's.
* ``fit`` moves the data to the backend once; every epoch moves one index vector;
  minibatches are gathered on the device into buffers allocated once; the loss is
  summed on the device and read back once per epoch.
* Sparse ``X`` (CSR/CSC) stays sparse on the backend (``scipy.sparse`` on the CPU,
  ``cupyx.scipy.sparse`` on the GPU): each minibatch's rows are sliced from the
  sparse matrix and densified on the device (``batch_size x n_features``), and
  prediction / L-BFGS work through row chunks the same way, so memory stays
  bounded by the chunk size rather than the dense data set.
* L-BFGS runs ``scipy.optimize.minimize(method="L-BFGS-B")`` with the arguments
  scikit-learn passes. SciPy works on host arrays, so on every function evaluation
  the parameter vector is copied to the backend and the loss and gradient are
  copied back (one transfer of ``n_params`` values each way); the forward and
  backward passes themselves run on the backend.
* ``coefs_`` and ``intercepts_`` are host NumPy arrays. They are copied from the
  device at the end of every ``fit``/``partial_fit`` and copied to the device at
  the start of every ``fit``/``partial_fit``/``predict``, so assigning them (or
  editing them in place) takes effect exactly.

Data-parallel training (``comm``)
--------------------------------
``fit(X, y, sample_weight=None, comm=None)`` and ``partial_fit(..., comm=None)``
take an mpi4py communicator, ``"mpi"`` (``MPI.COMM_WORLD``) or ``"nccl"`` (CuPy's
NCCL over MPI, model on :func:`mlpx.distributed.local_gpu_backend`). Launch
``mpirun -n K python train.py``; every rank builds the same estimator and passes
its own shard. Without ``comm`` nothing changes (the scikit-learn signature).

* Rank 0's initial weights (or, with ``warm_start`` / ``partial_fit``, its
  ``coefs_``) are broadcast; every rank ends with identical fitted attributes.
* ``batch_size`` is *per rank* (``"auto"``: ``min(200, shard rows)``). Each step,
  every rank computes the gradient of its minibatch normalised by its own rows (or
  Σ sample weights) ``d_r``; one all-reduce gives ``Σ d_r g_r / Σ d_r``, the
  ``alpha`` term is added after it with ``Σ d_r``, and every rank steps the
  optimizer. Steps per epoch are the maximum over ranks; a rank whose rows have
  run out contributes ``d_r = 0``. With block shards
  (:func:`mlpx.distributed.shard_indices` with ``block=b``) and ``shuffle=False``,
  K ranks with ``batch_size=b`` train exactly like one process with ``K·b``.
  With ``shuffle=True`` each rank shuffles its own shard every epoch.
* ``loss_curve_``, ``t_`` (samples seen over all ranks), the ``tol`` /
  ``n_iter_no_change`` rule, the adaptive learning-rate division and early
  stopping use global numbers; rank 0's epoch loss and validation score are
  broadcast so every rank takes the same decision and no rank stops alone.
* ``early_stopping``: each rank splits its own shard (``validation_fraction``,
  drawn from ``random_state``, stratified as scikit-learn does); the score is the
  accuracy / R² of all ranks' validation rows together, from summed statistics
  (``Σ w·correct``, ``Σ w``; for R² two passes: weighted mean, then the sums of
  squares). The best weights are restored on every rank.
* ``classes_`` (classifier) is the union of every rank's labels (of every rank's
  ``classes`` in ``partial_fit``), so a shard that lacks a class builds the same
  output layer. Ranks whose shards imply different networks (features, outputs,
  dtype) are refused with one error on every rank.
* ``solver="lbfgs"`` is supported: each SciPy evaluation computes the shard's
  loss and gradient, one all-reduce makes them global (L2 added after it), so
  every rank hands SciPy identical numbers and runs identical iterations.
* Failures: an exception on one rank before or during training (bad shard, out
  of memory) is raised on every rank at the next collective (that rank its own,
  the others :class:`mlpx.distributed.RankFailedError`), instead of a hang.
  Ctrl-C is left to the MPI launcher. Every rank needs at least one row (the
  input checks are scikit-learn's). Only rank 0 prints when ``verbose``;
  warnings are raised on every rank.

Loss scaling follows scikit-learn: mean loss over samples (``Σ w_i l_i / Σ w_i``
with sample weights), plus ``alpha/2 · Σ‖W‖² / n`` (``n`` replaced by ``Σ w_i``),
and the squared-error loss divided by ``n_outputs`` (its gradient is not).
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import _check_sample_weight, validate_data

from mlpx.estimators._runtime import (
    _agreed,
    _DeviceData,
    _Dist,
    _global_step_rows,
    _r2_from_sums,
    _glorot_draws,
    _is_device_array,
    _is_sparse_device,
    _rows,
    _Runtime,
    _densify,
    _sparse_to_backend,
    _to_host,
)
from mlpx.backends import Backend, get_backend
from mlpx.losses import get_loss
from mlpx.optimizers import SGD, Adam, Optimizer

__all__: list[str] = []

Array = Any
_STOCHASTIC_SOLVERS = ("sgd", "adam")
_CHUNK = 8192  # rows per forward pass in predict / full-batch L-BFGS with sparse X
# The loss paired with each output activation (its canonical link).
_OUTPUT_LOSS = {"softmax": "cross_entropy", "logistic": "binary_cross_entropy",
                "identity": "squared_error", "exp": "poisson"}


def _union_labels(infos: list[tuple[bool, Any]]) -> np.ndarray | None:
    """The labels of all ranks together, from each rank's ``(multilabel, labels or n_columns)``.

    Returns None for multilabel targets (every rank's indicator matrix already
    names every column). The same gathered list on every rank gives the same
    result, or the same error, everywhere.
    """
    if len({multi for multi, _ in infos}) > 1:
        raise ValueError("with comm, either every rank or no rank must pass multilabel targets")
    if infos[0][0]:
        if len({cols for _, cols in infos}) > 1:
            raise ValueError("with comm, every rank's multilabel y must have the same columns")
        return None
    return unique_labels(*[labels for _, labels in infos])


# ------------------------------------------------------------------- base
class _BaseMLP(BaseEstimator):
    """Shared machinery of :class:`MLPClassifier` and :class:`MLPRegressor`."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "backend": [str, Backend],
        "dtype": [StrOptions({"float32", "float64"}), type, np.dtype, None],
    }

    # ------------------------------------------------------------ plumbing
    def _get_backend(self) -> Backend:
        return get_backend(self.backend)

    def _resolve_dtype(self, be: Backend, X: Any) -> str:
        if self.dtype is not None:
            name = np.dtype(self.dtype).name
            if name not in ("float32", "float64"):
                raise ValueError(f"dtype must be 'float32', 'float64' or None, got {self.dtype!r}")
            return name
        if np.dtype(X.dtype) == np.float32:
            return "float32"
        return "float32" if be.is_gpu else "float64"

    def _runtime(self) -> _Runtime:
        """The device runtime on the backend asked for now (rebuilt after unpickling
        or after ``set_params(backend=...)``), holding the current ``coefs_``."""
        be = self._get_backend()
        rt = getattr(self, "_rt", None)
        if rt is not None and rt.be is be:
            return rt
        state = rt.to_host() if rt is not None else getattr(self, "_rt_host", None) or {}
        dtype = state.get("dtype") or self._dtype
        layer_units = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
        rt = _Runtime(be, dtype, layer_units, self.activation, self.out_activation_)
        rt.push(self.coefs_, self.intercepts_)
        rt.restore(state)
        self._rt, self._rt_host = rt, None
        return rt

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the live estimator keeps its runtime
        rt = state.pop("_rt", None)
        if rt is not None:
            state["_rt_host"] = rt.to_host()
        return state

    def _loss_fn(self) -> Any:
        return get_loss(_OUTPUT_LOSS[self.out_activation_])

    # ----------------------------------------------------- input checking
    def _validate_X_predict(self, X: Any) -> Any:
        if _is_device_array(X):
            return self._check_device_X(X, reset=False)
        return validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)

    def _check_device_X(self, X: Any, reset: bool) -> Any:
        """Checks for data already on the GPU (kept there: no host round trip)."""
        if len(X.shape) != 2:
            raise ValueError(f"Expected 2D array, got array with shape {X.shape}")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"Found array with shape {X.shape}; a minimum of 1 is required.")
        import cupy

        if X.dtype.kind != "f":
            X = X.astype(np.float64)
        values = X.data if _is_sparse_device(X) else X
        if not bool(cupy.isfinite(values).all()):  # one synchronisation per call
            raise ValueError("Input X contains NaN or infinity.")
        if reset:
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return X

    def _validate_Xy(self, X: Any, y: Any, reset: bool, y_numeric: bool) -> tuple[Any, Any]:
        y = _to_host(y)  # targets are small; label encoding happens on the host
        if _is_device_array(X):
            X = self._check_device_X(X, reset=reset)
            y = np.asarray(_to_host(y))
            if y.shape[0] != X.shape[0]:
                raise ValueError(
                    f"Found input variables with inconsistent numbers of samples: "
                    f"[{X.shape[0]}, {y.shape[0]}]"
                )
            if y_numeric and y.dtype.kind == "O":
                y = y.astype(np.float64)
            return X, y
        return validate_data(
            self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=y_numeric,
            dtype=(np.float64, np.float32), reset=reset,
        )

    # ------------------------------------------------------------- fitting
    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False,
             comm: Any = None) -> Any:
        hidden_layer_sizes = self.hidden_layer_sizes
        if not hasattr(hidden_layer_sizes, "__iter__"):
            hidden_layer_sizes = [hidden_layer_sizes]
        hidden_layer_sizes = list(hidden_layer_sizes)
        if np.any(np.array(hidden_layer_sizes) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % hidden_layer_sizes)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)

        # BackendUnavailableError here (not at construction), before any fitted state is set
        be = self._get_backend()
        dist = comm if isinstance(comm, _Dist) or comm is None else _Dist(comm, be)
        X, y = self._validate_input(X, y, incremental, reset=first_pass, dist=dist)
        # Everything up to the first collective is local: a failure on one rank is
        # agreed (raised on every rank) instead of leaving the others waiting.
        X, y, sample_weight, rt = _agreed(
            dist, "setting up the network", self._prepare, be, X, y, sample_weight,
            hidden_layer_sizes, first_pass,
        )
        if dist is not None:
            # The buffers all-reduced below must have one layout on every rank.
            shapes = dist.allgather(([c.shape for c in self.coefs_], rt.dtype))
            if any(s != shapes[0] for s in shapes[1:]):
                raise ValueError(
                    "with comm, every rank must build the same network (features, outputs, "
                    f"dtype); per rank (coefs_ shapes, dtype): {shapes}"
                )

        if self.solver in _STOCHASTIC_SOLVERS:
            rows = 200 if self.batch_size == "auto" else int(self.batch_size)
        else:
            rows = _CHUNK  # L-BFGS evaluates the loss in chunks of this many rows
        threads = be.blas_threads(rt.model.gemm_flops(min(rows, X.shape[0])))
        with be.activated(), threads, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if dist is not None:
                # Rank 0's weights (initial draw, or coefs_ as rank 0 holds them) everywhere.
                dist.reducer.broadcast_params(rt.model.params)
                if first_pass:
                    be.copy(rt.model.params, rt.best)
            if self.solver not in _STOCHASTIC_SOLVERS:
                self._fit_lbfgs(rt, X, y, sample_weight, dist)
            elif dist is not None:
                self._fit_stochastic_dist(rt, X, y, sample_weight, incremental, dist)
            else:
                self._fit_stochastic(rt, X, y, sample_weight, incremental)
        self.coefs_, self.intercepts_ = rt.pull()
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may"
                " contain large values and need to be preprocessed."
            )
        return self

    def _prepare(self, be: Backend, X: Any, y: np.ndarray, sample_weight: Any,
                 hidden_layer_sizes: list[int], first_pass: bool) -> tuple[Any, np.ndarray, Any, _Runtime]:
        """Check ``sample_weight``, build (or check) the network; the local part of ``_fit``."""
        if sample_weight is not None:
            host_X = X if not _is_device_array(X) else np.empty((X.shape[0], 0), np.float64)
            sample_weight = _check_sample_weight(
                _to_host(sample_weight), host_X,
                dtype=None if not _is_device_array(X) else np.float64,
            )
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [X.shape[1]] + hidden_layer_sizes + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)

        if first_pass:
            self._initialize(be, X, y, layer_units)
            rt = self._rt
        else:
            units = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
            if units != layer_units:
                raise ValueError(
                    f"warm_start/partial_fit: the network has layer sizes {units} but this "
                    f"call needs {layer_units} (hidden_layer_sizes or the targets changed)"
                )
            rt = self._runtime()
            rt.push(self.coefs_, self.intercepts_)
        return X, y, sample_weight, rt

    def _initialize(self, be: Backend, X: Any, y: np.ndarray, layer_units: list[int]) -> None:
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not is_classifier(self):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        self._dtype = self._resolve_dtype(be, X)
        coefs, intercepts = _glorot_draws(self._random_state, layer_units, self.activation)
        self.coefs_ = [c.astype(self._dtype) for c in coefs]
        self.intercepts_ = [b.astype(self._dtype) for b in intercepts]
        self._rt_host = None
        rt = self._rt = _Runtime(be, self._dtype, layer_units, self.activation, self.out_activation_)
        rt.push(self.coefs_, self.intercepts_)
        rt.best = be.zeros(rt.model.n_params, self._dtype)
        be.copy(rt.model.params, rt.best)

        if self.solver in _STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _step_loss(self, rt: _Runtime, Xb: Array, Yb: Array, wb: Array | None, denom: float,
                   lossfn: Any, scale: float) -> Array:
        """One forward/backward pass; fills the gradient buffer; returns the 0-d loss."""
        model = rt.model
        value = model._forward_backward(Xb, Yb, lossfn, wb, denom)
        if scale != 1.0:
            value = value * scale  # scikit-learn's squared loss is averaged over outputs
        if self.alpha:
            value = value + model._add_l2(self.alpha, denom)
        return value

    def _fit_stochastic(self, rt: _Runtime, X: Any, y: np.ndarray, sample_weight: Any,
                        incremental: bool) -> None:
        be, model = rt.be, rt.model
        opt = self._bind_optimizer(rt, incremental)

        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        n_all = X.shape[0]
        if early_stopping:
            # Split indices with the same draws train_test_split makes on (X, y).
            stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
            train_idx, val_idx = train_test_split(
                np.arange(n_all), random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify,
            )
            if val_idx.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            X_train, X_val = _rows(X, train_idx), _rows(X, val_idx)
            y_train, y_val = y[train_idx], y[val_idx]
            sw_train = None if sample_weight is None else sample_weight[train_idx]
            sw_val = None if sample_weight is None else sample_weight[val_idx]
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, sw_train = X, y, sample_weight
            X_val = y_val = sw_val = None

        data = _DeviceData(be, rt.dtype, X_train, y_train, sw_train)
        val_X = None if X_val is None else self._device_X(be, rt.dtype, X_val)
        n_samples = data.n
        sample_idx = np.arange(n_samples, dtype=int)
        identity, order, perm = sample_idx.copy(), np.empty_like(sample_idx), np.empty_like(sample_idx)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than "
                    "sample size. It is going to be clipped"
                )
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        batches = [(s.start, s.stop) for s in gen_batches(n_samples, batch_size)]
        lossfn = self._loss_fn()
        scale = 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0
        sgd = isinstance(opt, SGD)

        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    # sklearn.utils.shuffle(sample_idx, random_state) draws exactly this
                    # (arange, RandomState.shuffle, gather) without its validation overhead.
                    np.copyto(perm, identity)
                    self._random_state.shuffle(perm)
                    np.take(sample_idx, perm, out=order)
                    sample_idx, order = order, sample_idx
                    data.set_order(sample_idx)
                total = None
                for a, b in batches:
                    Xb, Yb, wb = data.batch(a, b)
                    value = self._step_loss(rt, Xb, Yb, wb, data.denom(a, b), lossfn, scale)
                    opt.step()
                    # Summed on the device (no synchronisation); read once per epoch.
                    term = value * (b - a)
                    total = term if total is None else total + term
                self.n_iter_ += 1
                self.loss_ = be.to_float(total) / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))

                self._update_no_improvement_count(rt, early_stopping, val_X, y_val, sw_val)
                if sgd and self.learning_rate == "invscaling":
                    opt.lr = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t

                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    if self._trigger_stopping(opt, msg):
                        break
                    self._no_improvement_count = 0

                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                        "optimization hasn't converged yet." % self.max_iter,
                        ConvergenceWarning,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")

        if early_stopping:
            be.copy(rt.best, model.params)  # restore the best weights

    # ------------------------------------------------------ data parallel
    def _fit_stochastic_dist(self, rt: _Runtime, X: Any, y: np.ndarray, sample_weight: Any,
                             incremental: bool, dist: _Dist) -> None:
        """``_fit_stochastic`` across ranks: each rank holds a shard, weights stay identical.

        Each step every rank runs forward/backward on its own minibatch (``batch_size``
        rows *per rank*), one all-reduce combines the gradients weighted by each
        rank's rows (or Σ sample weights), the L2 term is added with the global
        denominator, and every rank applies the same update. Steps per epoch are the
        maximum over ranks; a rank whose rows have run out contributes nothing.
        The epoch loss, the validation score (from summed sufficient statistics over
        the ranks' validation rows) and so every stopping decision are global.
        """
        be, model, reducer = rt.be, rt.model, dist.reducer
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        opt, data, val, batch_size = dist.agreed(
            "splitting the shard", self._local_shard, rt, X, y, sample_weight, incremental,
        )
        X_val, y_val, sw_val = val
        n_val = 0 if X_val is None else X_val.shape[0]
        sizes = dist.allgather((data.n, batch_size, n_val))
        if early_stopping and sum(s[2] for s in sizes) < 2:
            raise ValueError(
                "The validation set is too small. Increase 'validation_fraction' "
                "or the size of your dataset."
            )
        step_rows = _global_step_rows([(s[0], s[1]) for s in sizes])
        n_samples = sum(s[0] for s in sizes)  # training rows over all ranks
        n = data.n
        sample_idx = np.arange(n, dtype=int)
        identity, order, perm = sample_idx.copy(), np.empty_like(sample_idx), np.empty_like(sample_idx)
        lossfn = self._loss_fn()
        scale = 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0
        sgd = isinstance(opt, SGD)
        talk = bool(self.verbose) and dist.is_root
        pending: BaseException | None = None

        self.n_iter_ = 0
        for _ in range(self.max_iter):
            where = f"epoch {self.n_iter_ + 1}"
            if self.shuffle:  # each rank shuffles its own shard (same draws as fit)
                np.copyto(perm, identity)
                self._random_state.shuffle(perm)
                np.take(sample_idx, perm, out=order)
                sample_idx, order = order, sample_idx
                data.set_order(sample_idx)
            data_total = 0.0  # host: Σ_steps global data loss · global rows
            l2_total = None  # device: Σ_steps L2 term · global rows
            for j, rows in enumerate(step_rows):
                a, value, d = j * batch_size, 0.0, 0.0
                if pending is None and a < n:
                    try:
                        b = min(a + batch_size, n)
                        Xb, Yb, wb = data.batch(a, b)
                        d = data.denom(a, b)
                        # L2 waits for the global denominator (added after the all-reduce).
                        value = model._forward_backward(Xb, Yb, lossfn, wb, d if d > 0 else 1.0)
                        if scale != 1.0:
                            value = value * scale
                    except Exception as exc:
                        pending, d = exc, 0.0
                gloss, D = reducer.allreduce_gradients(
                    model.grads, value, d, error=pending, where=f"{where}, step {j + 1}"
                )
                if D <= 0:
                    continue  # no rows (or only zero weights) on any rank: every rank skips
                try:
                    if self.alpha:
                        term = model._add_l2(self.alpha, D) * rows
                        l2_total = term if l2_total is None else l2_total + term
                    opt.step()
                except Exception as exc:  # reported at the next collective
                    pending = exc
                data_total += gloss * rows

            def epoch_end() -> float:
                if pending is not None:
                    raise pending
                return 0.0 if l2_total is None else be.to_float(l2_total)

            l2_sum = dist.agreed(where, epoch_end)
            score = self._score_agreed(rt, dist, X_val, y_val, sw_val) if early_stopping else None
            # Rank 0's numbers decide for everyone, so no rank can stop alone.
            loss, score = dist.from_root(((data_total + l2_sum) / n_samples, score))
            self.n_iter_ += 1
            self.loss_ = loss
            self.t_ += n_samples
            self.loss_curve_.append(self.loss_)
            if talk:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))

            self._update_no_improvement_count(rt, early_stopping, None, None, None,
                                              val_score=score, talk=dist.is_root)
            if sgd and self.learning_rate == "invscaling":
                opt.lr = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t

            if self._no_improvement_count > self.n_iter_no_change:
                if early_stopping:
                    msg = ("Validation score did not improve more than tol=%f for %d "
                           "consecutive epochs." % (self.tol, self.n_iter_no_change))
                else:
                    msg = ("Training loss did not improve more than tol=%f for %d "
                           "consecutive epochs." % (self.tol, self.n_iter_no_change))
                if self._trigger_stopping(opt, msg, talk=dist.is_root):
                    break
                self._no_improvement_count = 0

            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(
                    "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                    "optimization hasn't converged yet." % self.max_iter,
                    ConvergenceWarning,
                )

        if early_stopping:
            be.copy(rt.best, model.params)  # the best (global) weights, identical on every rank

    def _local_shard(self, rt: _Runtime, X: Any, y: np.ndarray, sample_weight: Any,
                     incremental: bool) -> tuple[Optimizer, _DeviceData, tuple[Any, Any, Any], int]:
        """This rank's optimizer, training rows on the device, validation split and batch size.

        With early stopping each rank splits its own shard (stratified for
        single-output classifiers), drawing from ``random_state`` as ``fit`` does.
        """
        be = rt.be
        opt = self._bind_optimizer(rt, incremental)
        X_val = y_val = sw_val = None
        X_train, y_train, sw_train = X, y, sample_weight
        if self.early_stopping:
            stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
            train_idx, val_idx = train_test_split(
                np.arange(X.shape[0]), random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify,
            )
            X_train, X_val = _rows(X, train_idx), _rows(X, val_idx)
            y_train, y_val = y[train_idx], y[val_idx]
            sw_train = None if sample_weight is None else sample_weight[train_idx]
            sw_val = None if sample_weight is None else sample_weight[val_idx]
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
            X_val = self._device_X(be, rt.dtype, X_val)
        data = _DeviceData(be, rt.dtype, X_train, y_train, sw_train)
        if self.batch_size == "auto":
            batch_size = min(200, data.n)
        else:
            if self.batch_size > data.n:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than "
                    "sample size. It is going to be clipped"
                )
            batch_size = int(np.clip(self.batch_size, 1, data.n))
        return opt, data, (X_val, y_val, sw_val), batch_size

    def _score_agreed(self, rt: _Runtime, dist: _Dist, X_val: Any, y_val: Any, sw_val: Any) -> float:
        """The validation score over every rank's validation rows (collective).

        Accuracy is ``Σ w·correct / Σ w``; R² comes from summed statistics in two
        passes (global weighted mean, then ``Σ w (y - ȳ)²``), as ``r2_score``
        computes it on the union. NaN when any rank predicts a non-finite value.
        """
        def local() -> dict[str, Any]:
            if X_val is None or X_val.shape[0] == 0:
                return {"n": 0}
            y_pred = self._output_to_prediction(self._forward_out(rt, X_val))
            bad = np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all()
            n = y_pred.shape[0]
            w = np.ones(n) if sw_val is None else np.asarray(sw_val, dtype=np.float64)
            return {"n": n, "bad": float(bad), "w": w, "pred": np.asarray(y_pred).reshape(n, -1),
                    "true": np.asarray(y_val).reshape(n, -1)}

        part = dist.agreed("validation score", local)
        have = part["n"] > 0
        w = part["w"] if have else np.zeros(0)
        if is_classifier(self):
            hits = float(w @ (part["pred"] == part["true"]).all(1)) if have else 0.0
            bad, wsum, hits = dist.allreduce_sum([part["bad"] if have else 0.0, float(w.sum()), hits])
            return math.nan if bad > 0 or wsum <= 0 else hits / wsum
        k = self.n_outputs_
        T = part["true"].astype(np.float64) if have else np.zeros((0, k))
        P = part["pred"].astype(np.float64) if have else np.zeros((0, k))
        sums = dist.allreduce_sum([part["bad"] if have else 0.0, float(w.sum()), *(w @ T),
                                   *(w @ (T - P) ** 2)])
        mean = np.asarray(sums[2 : 2 + k]) / sums[1] if sums[1] > 0 else np.zeros(k)
        ss_res = np.asarray(sums[2 + k :])
        ss_tot = np.asarray(dist.allreduce_sum(list(w @ (T - mean) ** 2)))  # second pass
        if sums[0] > 0 or sums[1] <= 0:
            return math.nan
        return _r2_from_sums(ss_res, ss_tot)

    def _bind_optimizer(self, rt: _Runtime, incremental: bool) -> Optimizer:
        """The solver's optimizer (kept across partial_fit calls), bound to the network."""
        be, model = rt.be, rt.model
        if not incremental or rt.optimizer is None:
            if self.solver == "sgd":
                opt: Optimizer = SGD(lr=self.learning_rate_init, momentum=0.0,
                                     nesterov=self.nesterovs_momentum)
                opt.momentum = float(self.momentum)  # scikit-learn allows momentum=1
            else:
                opt = Adam(lr=self.learning_rate_init, beta_1=self.beta_1, beta_2=self.beta_2,
                           epsilon=self.epsilon)
            rt.optimizer = opt
        opt = rt.optimizer
        opt.bind(be, model.params, model.grads, model.n_weights)
        return opt

    def _trigger_stopping(self, opt: Optimizer, msg: str, talk: bool = True) -> bool:
        """scikit-learn's rule: stop, unless SGD with an adaptive rate that can still shrink.

        ``talk``: print when verbose (False on ranks other than 0 in data-parallel fits).
        """
        talk = bool(self.verbose) and talk
        if not (isinstance(opt, SGD) and self.learning_rate == "adaptive"):
            if talk:
                print(msg + " Stopping.")
            return True
        if opt.lr <= 1e-6:
            if talk:
                print(msg + " Learning rate too small. Stopping.")
            return True
        opt.lr /= 5.0
        if talk:
            print(msg + " Setting learning rate to %f" % opt.lr)
        return False

    def _update_no_improvement_count(self, rt: _Runtime, early_stopping: bool, X_val: Any,
                                     y_val: Any, sw_val: Any, val_score: float | None = None,
                                     talk: bool = True) -> None:
        """scikit-learn's bookkeeping; ``val_score`` given: the (global) score already agreed."""
        if early_stopping:
            if val_score is None:
                val_score = self._score_device(rt, X_val, y_val, sw_val)
            self.validation_scores_.append(val_score)
            if self.verbose and talk:
                print("Validation score: %f" % self.validation_scores_[-1])
            last = self.validation_scores_[-1]
            if last < (self.best_validation_score_ + self.tol):
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if last > self.best_validation_score_:
                self.best_validation_score_ = last
                rt.be.copy(rt.model.params, rt.best)  # on the device, no host round trip
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _fit_lbfgs(self, rt: _Runtime, X: Any, y: np.ndarray, sample_weight: Any,
                   dist: _Dist | None = None) -> None:
        """SciPy's L-BFGS-B on the full-batch loss.

        With ``dist`` the loss and gradient are global: each rank evaluates its shard,
        one all-reduce per evaluation combines them (weighted by rows or Σ sample
        weights) and the L2 term is added with the global denominator, so every rank
        hands SciPy identical numbers and runs identical iterations.
        """
        be, model = rt.be, rt.model
        data = _agreed(dist, "moving the shard", _DeviceData, be, rt.dtype, X, y, sample_weight)
        n = data.n
        denom = float(n) if sample_weight is None else float(sample_weight.sum())
        lossfn = self._loss_fn()
        scale = 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0
        chunks = [(0, n)] if not data.sparse else [(a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)]
        acc = be.empty(model.n_params, rt.dtype) if len(chunks) > 1 else None

        def local_loss_grad(packed: np.ndarray) -> Array:
            # SciPy works on the host: parameters in, loss and gradient out.
            rt.set_flat(packed)
            total = None
            for a, b in chunks:
                Xb, Yb, wb = data.batch(a, b)
                value = model._forward_backward(Xb, Yb, lossfn, wb, denom)
                if acc is not None:
                    if total is None:
                        be.copy(model.grads, acc)
                    else:
                        acc[...] += model.grads
                total = value if total is None else total + value
            if acc is not None:
                be.copy(acc, model.grads)
            if scale != 1.0:
                total = total * scale
            return total

        def loss_grad(packed: np.ndarray) -> tuple[float, np.ndarray]:
            if dist is None:
                total, d = local_loss_grad(packed), denom
            else:
                value, error = 0.0, None
                try:
                    value = local_loss_grad(packed)
                except Exception as exc:  # raised on every rank by the all-reduce
                    error = exc
                total, d = dist.reducer.allreduce_gradients(
                    model.grads, value, denom, error=error, where="L-BFGS evaluation"
                )
            if self.alpha and (dist is None or d > 0):
                total = total + model._add_l2(self.alpha, d)
            grad = np.array(be.to_numpy(model.grads), dtype=np.float64, copy=True)
            return (total if isinstance(total, float) else be.to_float(total)), grad

        iprint = 1 if (self.verbose is True or self.verbose >= 1) else -1
        if dist is not None and not dist.is_root:
            iprint = -1  # only rank 0 prints
        try:
            from sklearn.utils.fixes import _get_additional_lbfgs_options_dict

            extra = _get_additional_lbfgs_options_dict("iprint", iprint)
        except ImportError:  # pragma: no cover - older/newer scikit-learn
            extra = {}
        x0 = np.array(be.to_numpy(model.params), dtype=np.float64, copy=True)
        opt_res = scipy.optimize.minimize(
            loss_grad, x0, method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol, **extra},
        )
        try:
            from sklearn.utils.optimize import _check_optimize_result

            self.n_iter_ = _check_optimize_result("lbfgs", opt_res, self.max_iter)
        except ImportError:  # pragma: no cover
            self.n_iter_ = int(opt_res.nit)
        self.loss_ = float(opt_res.fun)
        rt.set_flat(opt_res.x)

    # ---------------------------------------------------------- prediction
    @staticmethod
    def _device_X(be: Backend, dtype: str, X: Any) -> Any:
        """Prediction input on the backend: dense device array or sparse CSR there."""
        if sp.issparse(X) or _is_sparse_device(X):
            return _sparse_to_backend(be, X, dtype)
        return be.asarray(X, dtype=dtype)  # once per fit, not once per epoch

    def _forward_out(self, rt: _Runtime, X: Any) -> np.ndarray:
        """Output-activation values, host array (n, n_outputs_), computed in row chunks."""
        be, model = rt.be, rt.model
        n = X.shape[0]
        sparse = sp.issparse(X) or _is_sparse_device(X)
        result = np.empty((n, model.n_outputs_), dtype=rt.dtype)
        threads = be.blas_threads(model.gemm_flops(min(n, _CHUNK)))
        with be.activated(), threads, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for a in range(0, n, _CHUNK):
                b = min(a + _CHUNK, n)
                if sparse:
                    Xc = _densify(be, X[a:b], rt.dtype)  # X already in rt.dtype
                else:
                    Xc = be.asarray(X[a:b, ...], dtype=rt.dtype)  # no copy if already there
                Z = model.forward(Xc, train=False)
                Z = model.output.forward(be, Z, out=Z)
                result[a:b] = be.to_numpy(Z)
        return result

    def _forward_pass_fast(self, X: Any, check_input: bool = True) -> np.ndarray:
        if check_input:
            X = self._validate_X_predict(X)
        rt = self._runtime()
        rt.push(self.coefs_, self.intercepts_)  # coefs_ may have been reassigned
        if sp.issparse(X) or _is_sparse_device(X):
            X = _sparse_to_backend(rt.be, X, rt.dtype)
        return self._forward_out(rt, X)

    def _score_device(self, rt: _Runtime, X_val: Any, y_val: Any, sw_val: Any) -> float:
        """Validation score during fit, from the parameters on the device."""
        y_pred = self._output_to_prediction(self._forward_out(rt, X_val))
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return float(self._score_function(y_val, y_pred, sample_weight=sw_val))

    def _check_solver(self) -> bool:
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. "
                "%s is not stochastic." % self.solver
            )
        return True

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
