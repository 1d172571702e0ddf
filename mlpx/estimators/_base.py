"""What :class:`MLPClassifier` and :class:`MLPRegressor` share.

The estimators are scikit-learn 1.9's ``MLPClassifier``/``MLPRegressor`` (same
parameters, defaults, fitted attributes and mathematics) on an mlpx network, plus
``backend`` and ``dtype`` and ``comm`` for data-parallel training.

* The network is an engine :class:`~mlpx.model.Sequential` whose flat parameter
  buffer (all weights, then all biases) has the layout of scikit-learn's packed
  ``coefs_ + intercepts_``. Initial weights, minibatch order and the
  early-stopping split draw from scikit-learn's ``RandomState`` in its order, so a
  float64 CPU fit follows scikit-learn's to rounding.
* SGD and Adam train through the one training loop of mlpx
  (:func:`mlpx.training.train`); scikit-learn's policy is parameters and a
  callback of that loop (:class:`_Policy`): its loss curve (rows-weighted, the
  squared error averaged over outputs), ``tol``/``n_iter_no_change``, early
  stopping on the validation score, its warnings. The optimizer owns its rate
  policy (``invscaling``, ``adaptive``: :mod:`mlpx.schedules`).
* L-BFGS keeps SciPy's driver (``_lbfgs``); each evaluation is the model's forward/backward
  pass, the reducer's all-reduce and the L2 term.
* ``coefs_``/``intercepts_`` are host arrays, copied from the device at the end of
  every fit and to it whenever they changed, so assigning them (or the other fitted
  attributes, as scikit-learn's own tests do) takes effect.
* Every fit ends by writing its weights into the existing ``coefs_`` /
  ``intercepts_`` arrays when their shapes and dtype still fit (as scikit-learn's
  ``partial_fit`` updates them in place), so a module from ``to_torch`` (which
  shares them) computes the estimator's current function after any later ``fit``
  or ``partial_fit``. A fit that changes the layer sizes or the dtype gives the
  estimator new arrays; if they had been shared with ``to_torch``, it warns that
  the module keeps the previous weights.
* One trainer at a time: ``fit``/``partial_fit`` from a second thread while the
  first runs raises :class:`~mlpx.locking.ConcurrentTrainingError`. Predictions,
  ``score`` included, made in other threads meanwhile see the previous fit (a
  copy taken when the fit began), or raise ``NotFittedError`` if there was none.
* ``comm``: every rank passes its shard; the settings must agree on every rank;
  ``batch_size`` is per rank; the loss, the stopping rules, the validation score
  and ``classes_`` are global. See :mod:`mlpx.distributed`.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, TypeVar, cast

import numpy as np
from sklearn.base import BaseEstimator, _fit_context, is_classifier
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import _check_sample_weight, validate_data

from mlpx.backends import Backend, get_backend
from mlpx.callbacks import Callback
from mlpx.data import densify, is_device_array, is_sparse, make_batches, sparse_to_backend, take_host_rows, to_host
from mlpx.distributed import Reducer, make_reducer
from mlpx.estimators._lbfgs import fit_lbfgs
from mlpx.estimators._parameters import PARAMETER_CONSTRAINTS
from mlpx.estimators._persistence import save_estimator
from mlpx.estimators._runtime import Runtime, glorot_draws
from mlpx.locking import training_guard
from mlpx.member_batches import MemberBatches
from mlpx.metrics import PREDICT_CHUNK, holdout_scores, iter_chunks
from mlpx.optimizers import SGD, Adam, Optimizer
from mlpx.schedules import Adaptive, InverseScaling
from mlpx.streams import is_batch_stream
from mlpx.training import Holdout, train
from mlpx.validation import check_dtype_range, check_int, check_sample_weight, host_values, refuse_datetimes

__all__ = ["StackPlan", "one_trainer", "serves_previous_fit"]

Array = Any
_STOCHASTIC_SOLVERS = ("sgd", "adam")
_F = TypeVar("_F", bound=Callable[..., Any])


def fit_context(method: _F) -> _F:
    """scikit-learn's ``_fit_context`` (parameter validation before a fit), keeping the signature.

    scikit-learn ships no type information, so its decorators would turn the methods
    they wrap into ``Any`` for type checkers; this one keeps their annotations.

    Parameters
    ----------
    method : callable
        ``fit`` or ``partial_fit``.

    Returns
    -------
    callable
        ``method`` wrapped by ``_fit_context(prefer_skip_nested_validation=True)``.
    """
    return cast(_F, _fit_context(prefer_skip_nested_validation=True)(method))


def if_stochastic(method: _F) -> _F:
    """Make ``method`` exist only for the stochastic solvers (scikit-learn's ``available_if``).

    Parameters
    ----------
    method : callable
        ``partial_fit``.

    Returns
    -------
    callable
        The descriptor, typed as ``method``.
    """
    return cast(_F, available_if(lambda est: est._check_solver())(method))

_RUNTIME_LOCK = threading.Lock()


def one_trainer(method: _F) -> _F:
    """Decorate ``fit``/``partial_fit``: refused (ConcurrentTrainingError) while another
    thread fits the estimator; other threads' predictions meanwhile see the fitted
    state as it was when this call began (:meth:`BaseMLP._fitted_copy`)."""

    @functools.wraps(method)
    def guarded(self: "BaseMLP", *args: Any, **kwargs: Any) -> Any:
        guard = training_guard(self)
        # No copy for a call that is about to be refused.
        previous = None if guard.busy_elsewhere() else self._fitted_copy()
        guard.enter(f"{type(self).__name__}.{method.__name__}", previous)
        try:
            return method(self, *args, **kwargs)
        finally:
            guard.exit()

    return cast(_F, guarded)


def serves_previous_fit(method: _F) -> _F:
    """Decorate a prediction method: while another thread fits the estimator, run it on
    the previous fitted state instead of the one being rebuilt."""

    @functools.wraps(method)
    def serving(self: "BaseMLP", *args: Any, **kwargs: Any) -> Any:
        with training_guard(self).serving() as (elsewhere, previous):
            if not elsewhere:
                return method(self, *args, **kwargs)
        if previous is None:
            raise NotFittedError(
                f"This {type(self).__name__} instance is being fitted in another thread and "
                f"has no earlier fit to predict with; call {method.__name__} after fit returns."
            )
        return method(previous, *args, **kwargs)

    return cast(_F, serving)


def _writable_like(kept: list[Any], new: list[np.ndarray]) -> bool:
    """Whether ``new`` can be written into the arrays ``kept`` in place, one to one."""
    if len(kept) != len(new):
        return False
    for i, (a, b) in enumerate(zip(kept, new)):
        if not (isinstance(a, np.ndarray) and a.flags.writeable and a.shape == b.shape and a.dtype == b.dtype):
            return False
        if any(np.may_share_memory(a, c) for c in kept[:i]):
            return False
    return True


def union_labels(infos: list[tuple[bool, Any]]) -> np.ndarray | None:
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


class StackPlan(NamedTuple):
    """A member's fit, prepared by ``BaseMLP._stack_plan`` for training in a stack.

    Attributes
    ----------
    est : BaseMLP
    rt : Runtime
        The member's network, holding its initial weights.
    optimizer : Optimizer
        Its SGD or Adam (rate, schedule, step count).
    X, Y, w : host arrays, shapes (n, f), (n, k), (n,) or None
        The validated data and encoded targets of the whole ``fit`` call.
    train_rows, val_rows : int arrays
        Rows of ``X`` it trains on and holds out for early stopping (None).
    order : callable or None
        The permutation of ``train_rows`` for the next epoch (scikit-learn's draws).
    batch_size : int
        As asked (``"auto"``: 200; a member with fewer rows takes them all).
    loss_scale : float
        Factor of the logged loss (1 / n_outputs for squared error).
    epochs : int
        ``max_iter``.
    """

    est: Any
    rt: Runtime
    optimizer: Optimizer
    X: Any
    Y: np.ndarray
    w: np.ndarray | None
    train_rows: np.ndarray
    val_rows: np.ndarray | None
    order: Any
    batch_size: int
    loss_scale: float
    epochs: int


class _Policy(Callback):
    """scikit-learn's bookkeeping at the end of every epoch, as a callback of the loop."""

    def __init__(self, est: "BaseMLP", rt: Runtime, optimizer: Optimizer, early_stopping: bool,
                 talk: bool, incremental: bool, member: int | None = None) -> None:
        self.est, self.rt, self.optimizer, self.member = est, rt, optimizer, member
        self.early_stopping, self.talk, self.incremental = early_stopping, talk, incremental

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        est = self.est
        est.n_iter_ += 1
        est.loss_ = logs["loss"]
        est.t_ = model.samples_seen_
        est.loss_curve_.append(est.loss_)
        if self.talk and est.verbose:
            print("Iteration %d, loss = %.8f" % (est.n_iter_, est.loss_))
        self._update_no_improvement_count(logs)
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.early_stopping else "Training loss"
            msg = "%s did not improve more than tol=%f for %d consecutive epochs." % (
                what, est.tol, est.n_iter_no_change)
            if self.optimizer.trigger_stopping(msg, bool(est.verbose) and self.talk, member=self.member):
                model.stop_training = True
                return
            est._no_improvement_count = 0
        if self.incremental:
            return
        if est.n_iter_ == est.max_iter:
            warnings.warn(
                "Stochastic Optimizer: Maximum iterations (%d) reached and the optimization "
                "hasn't converged yet." % est.max_iter,
                ConvergenceWarning,
            )

    def _update_no_improvement_count(self, logs: dict[str, float]) -> None:
        est = self.est
        if self.early_stopping:
            score = logs["val_accuracy"] if "val_accuracy" in logs else logs["val_r2"]
            est.validation_scores_.append(score)
            if self.talk and est.verbose:
                print("Validation score: %f" % score)
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.rt.keep_best()
        else:
            if est.loss_curve_[-1] > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if est.loss_curve_[-1] < est.best_loss_:
                est.best_loss_ = est.loss_curve_[-1]


class BaseMLP(BaseEstimator):
    """Shared machinery of :class:`MLPClassifier` and :class:`MLPRegressor`."""

    # Fitted attributes (set by fit), declared for type checkers.
    out_activation_: str
    t_: int
    loss_curve_: list[float]
    # None, or a list / a float, depending on early_stopping (as in scikit-learn):
    validation_scores_: Any
    best_validation_score_: Any
    best_loss_: Any

    _parameter_constraints: dict = PARAMETER_CONSTRAINTS

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

    def _model_dtype(self) -> str:
        """The network's dtype: fixed at the first fit, or that of hand-set ``coefs_``."""
        dtype = getattr(self, "_dtype", None)
        if dtype is None:
            if self.dtype is not None:
                dtype = np.dtype(self.dtype).name
            else:
                found = np.result_type(*[np.asarray(c) for c in self.coefs_])
                dtype = "float32" if found == np.float32 else "float64"
        return dtype

    def _runtime(self) -> Runtime:
        """The network on the backend asked for now, holding the current ``coefs_``.

        Rebuilt after unpickling, after ``set_params(backend=...)``, or from fitted
        attributes assigned by hand; thread-safe.
        """
        be = self._get_backend()
        rt = getattr(self, "_rt", None)
        if rt is not None and rt.be is be:
            rt.push(self.coefs_, self.intercepts_)
            return rt
        with _RUNTIME_LOCK:
            rt = getattr(self, "_rt", None)
            if rt is None or rt.be is not be:
                state = rt.state() if rt is not None else getattr(self, "_rt_host", None) or {}
                dtype = state.get("dtype") or self._model_dtype()
                layer_units = [self.coefs_[0].shape[0]] + [np.shape(c)[1] for c in self.coefs_]
                rt = Runtime(be, dtype, layer_units, self.activation, self.out_activation_)
                rt.restore(state)
                self._rt, self._rt_host = rt, None
        rt.push(self.coefs_, self.intercepts_)  # assigned or edited in place since
        return rt

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the live estimator keeps its runtime
        rt = state.pop("_rt", None)
        if rt is not None:
            state["_rt_host"] = rt.state()
        state.pop("_training_guard", None)  # a lock: each copy gets its own
        state.pop("_weights_shared", None)  # a copy's arrays are shared with no module
        return state

    def _fitted_copy(self) -> "BaseMLP | None":
        """A private copy of the fitted state for predictions made during a fit (None if
        unfitted): the same attributes, its own ``coefs_``/``intercepts_`` arrays (a fit
        writes into the estimator's) and no network yet (built on its first prediction)."""
        if not hasattr(self, "coefs_"):
            return None
        twin = object.__new__(type(self))
        skip = ("_rt", "_rt_host", "_training_guard", "_weights_shared")
        twin.__dict__.update({k: v for k, v in self.__dict__.items() if k not in skip})
        twin.coefs_ = [np.array(c, copy=True) for c in self.coefs_]
        twin.intercepts_ = [np.array(b, copy=True) for b in self.intercepts_]
        return twin

    def _share_weights(self) -> None:
        """Note that ``coefs_``/``intercepts_`` are shared with a module (``to_torch``)."""
        self._weights_shared = True

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this fitted estimator to ``path`` (``.npz`` appended when missing).

        The file is an mlpx model file (no pickle): the network, the optimizer's
        state, the hyperparameters, the fitted attributes and the label encoding.
        :func:`mlpx.load` returns the fitted estimator, whose ``predict``,
        ``predict_proba``, ``score`` and ``partial_fit`` continue as this one's
        would. The write is atomic.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write; ``.npz`` is appended when the name has no suffix.

        Returns
        -------
        pathlib.Path
            The path written.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            Class labels that are not numbers, booleans or strings.

        Examples
        --------
        >>> clf = mlpx.MLPClassifier(max_iter=50).fit(X, y)        # doctest: +SKIP
        >>> clf.save("clf.npz")                                      # doctest: +SKIP
        >>> mlpx.load("clf.npz").predict(X)                          # doctest: +SKIP
        """
        return save_estimator(self, path)

    # ----------------------------------------------------- input checking
    def _validate_X_predict(self, X: Any) -> Any:
        self._refuse_stream(X)
        if is_device_array(X):
            return self._check_device_X(X, reset=False)
        refuse_datetimes(X, "X")
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
        values = X.data if is_sparse(X) else X
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

    def _refuse_stream(self, X: Any) -> None:
        if is_batch_stream(X):
            raise TypeError(
                f"{type(self).__name__} takes arrays (scikit-learn's contract), not a stream of batches: "
                f"call partial_fit(X_batch, y_batch) for each batch, or train an mlpx.Sequential, whose fit "
                f"reads streams (see mlpx.streams)"
            )

    def _validate_Xy(self, X: Any, y: Any, reset: bool, y_numeric: bool) -> tuple[Any, Any]:
        self._refuse_stream(X)
        y = to_host(y)  # targets are small; label encoding happens on the host
        if is_device_array(X):
            X = self._check_device_X(X, reset=reset)
            y = np.asarray(to_host(y))
            if y.shape[0] != X.shape[0]:
                raise ValueError(
                    f"Found input variables with inconsistent numbers of samples: "
                    f"[{X.shape[0]}, {y.shape[0]}]"
                )
            if y_numeric and y.dtype.kind == "O":
                y = y.astype(np.float64)
            return X, y
        refuse_datetimes(X, "X")
        return validate_data(
            self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=y_numeric,
            dtype=(np.float64, np.float32), reset=reset,
        )

    # ------------------------------------------------------------- fitting
    def _hidden_sizes(self) -> list[int]:
        hidden_layer_sizes = self.hidden_layer_sizes
        if not hasattr(hidden_layer_sizes, "__iter__"):
            hidden_layer_sizes = [hidden_layer_sizes]
        hidden_layer_sizes = list(hidden_layer_sizes)
        if np.any(np.array(hidden_layer_sizes) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % hidden_layer_sizes)
        return [check_int(f"hidden_layer_sizes[{i}]", h, 1) for i, h in enumerate(hidden_layer_sizes)]

    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False,
             comm: Any = None) -> Any:
        hidden_layer_sizes = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        # The arrays the result is written into (see the module docstring).
        kept = list(self.coefs_) + list(self.intercepts_) if hasattr(self, "coefs_") else None

        # BackendUnavailableError here (not at construction), before any fitted state is set
        be = self._get_backend()
        reducer = make_reducer(comm, be)
        if reducer.backend.name != be.name:
            raise ValueError(
                f"the communicator's reducer works on {reducer.backend.name}, the estimator on {be.name}"
            )
        X, y = self._validate_input(X, y, incremental, reset=first_pass, reducer=reducer)
        # Everything up to the first collective is local: a failure on one rank is
        # agreed (raised on every rank) instead of leaving the others waiting.
        X, y, sample_weight, rt = reducer.agreed(
            "setting up the network", self._prepare, be, X, y, sample_weight, hidden_layer_sizes,
            first_pass,
        )
        if reducer.size > 1:
            reducer.agree_settings(self._fingerprint(rt, incremental))

        if self.solver in _STOCHASTIC_SOLVERS:
            rows = 200 if self.batch_size == "auto" else int(self.batch_size)
        else:
            rows = PREDICT_CHUNK  # L-BFGS evaluates the loss in chunks of this many rows
        threads = be.blas_threads(rt.model.gemm_flops(min(rows, X.shape[0])))
        with be.activated(), threads, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if reducer.size > 1:
                # Rank 0's weights (initial draw, or coefs_ as rank 0 holds them) everywhere.
                with rt.model.parameter_lock.write():
                    reducer.broadcast_params(rt.model.params)
            if first_pass:
                rt.keep_best()
            if self.solver not in _STOCHASTIC_SOLVERS:
                self.n_iter_, self.loss_ = fit_lbfgs(
                    rt, X, y, sample_weight, reducer, alpha=float(self.alpha),
                    loss_scale=1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0,
                    max_fun=self.max_fun, max_iter=self.max_iter, tol=self.tol,
                    verbose=self.verbose is True or self.verbose >= 1)
            else:
                self._fit_stochastic(rt, X, y, sample_weight, incremental, reducer)
        self._pull_checked(rt, kept)
        return self

    def _pull_checked(self, rt: Runtime, kept: list[Any] | None = None) -> None:
        """Take the network's weights as ``coefs_``/``intercepts_``: written into the
        arrays ``kept`` (the ones the fit began with) when they fit, else new arrays."""
        coefs, intercepts = rt.pull()
        new = coefs + intercepts
        if kept is not None and _writable_like(kept, new):
            for a, b in zip(kept, new):
                a[...] = b
            coefs, intercepts = kept[:len(coefs)], kept[len(coefs):]
        elif kept is not None and getattr(self, "_weights_shared", False):
            warnings.warn(
                f"{type(self).__name__}: this fit changed the layer sizes or dtype, so its weights "
                "could not be written into the coefs_/intercepts_ arrays a to_torch module shares; "
                "that module keeps the previous weights (call to_torch again)",
                UserWarning, stacklevel=4,
            )
            self._weights_shared = False
        self.coefs_, self.intercepts_ = list(coefs), list(intercepts)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may"
                " contain large values and need to be preprocessed."
            )

    # ------------------------------------------------ fitting in a stack
    def _stack_plan(self, X: Any, y: Any, sample_weight: Any = None) -> "StackPlan":
        """Everything ``fit`` does before its training loop, for a fit in a stack.

        The same checks, label encoding, initial draw, early-stopping split and
        shuffling generator as ``fit(X, y, sample_weight)`` in one process (the
        estimator's ``random_state`` is consumed in the same order), so that
        training the plan in a :class:`~mlpx.stacked.Stack` and finishing it with
        :meth:`_stack_finish` gives this estimator exactly the fit ``fit`` gives.
        Only the stochastic solvers have a plan.
        """
        self._validate_params()
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise ValueError(f"solver={self.solver!r} has no minibatch steps to stack")
        hidden_layer_sizes = self._hidden_sizes()
        be = self._get_backend()
        reducer = make_reducer(None, be)
        X, y = self._validate_input(X, y, False, reset=True, reducer=reducer)
        X, y, sample_weight, rt = self._prepare(be, X, y, sample_weight, hidden_layer_sizes, True)
        rt.keep_best()
        opt = self._optimizer(rt, False)
        train_idx, val_idx = self._split_indices(X, y)
        n_train = X.shape[0] if train_idx is None else train_idx.size
        if self.early_stopping and (val_idx is None or val_idx.size < 2):
            raise ValueError(
                "The validation set is too small. Increase 'validation_fraction' "
                "or the size of your dataset."
            )
        self._batch_size(n_train)  # scikit-learn's warning when the batch is clipped
        rt.model.samples_seen_ = int(self.t_)
        self.n_iter_ = 0
        return StackPlan(
            est=self, rt=rt, optimizer=opt, X=X, Y=np.asarray(y, dtype=np.float64), w=sample_weight,
            train_rows=np.arange(X.shape[0]) if train_idx is None else train_idx, val_rows=val_idx,
            order=self._order(n_train),
            batch_size=200 if self.batch_size == "auto" else int(self.batch_size),
            loss_scale=1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0,
            epochs=int(self.max_iter),
        )

    def _stack_policy(self, plan: "StackPlan", keeper: Any, optimizer: Optimizer, k: int) -> Callback:
        """scikit-learn's end-of-epoch bookkeeping for member ``k`` of the stack's
        ``optimizer`` (``keeper.keep_best()`` copies the member's current weights as the best)."""
        return _Policy(self, keeper, optimizer, self.early_stopping, True, False, member=k)

    def _stack_finish(self, plan: "StackPlan", params: np.ndarray, best: np.ndarray | None,
                      optimizer_state: dict[str, Any] | None) -> None:
        """Take the member's trained (or, with early stopping, best) weights and
        optimizer state from the stack: the fitted state ``fit`` leaves."""
        rt = plan.rt
        if optimizer_state is not None:
            plan.optimizer.load_state_dict(optimizer_state)
        if best is not None:
            rt.best = rt.be.asarray(np.asarray(best, dtype=rt.dtype), dtype=rt.dtype)
        final = best if self.early_stopping and best is not None else params
        if not np.isfinite(final).all():
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may"
                " contain large values and need to be preprocessed."
            )
        rt.set_flat(final)
        self._pull_checked(rt)

    def _fingerprint(self, rt: Runtime, incremental: bool) -> dict[str, Any]:
        """The settings every rank must share (random_state and verbose may differ)."""
        params = {k: v for k, v in self.get_params().items()
                  if k not in ("backend", "verbose", "random_state")}
        return {
            **{f"param {k}": v for k, v in params.items()},
            "call": "partial_fit" if incremental else "fit",
            "layers": [list(np.shape(c)) for c in self.coefs_],
            "dtype": rt.dtype,
            "out_activation": self.out_activation_,
            "t_": int(getattr(self, "t_", 0)),
        }

    def _prepare(self, be: Backend, X: Any, y: np.ndarray, sample_weight: Any,
                 hidden_layer_sizes: list[int], first_pass: bool) -> tuple[Any, np.ndarray, Any, Runtime]:
        """Check ``sample_weight``, build (or check) the network; the local part of ``_fit``.

        Weights must be finite, non-negative and sum to more than zero, as the
        engine requires (:func:`mlpx.validation.check_sample_weight`). scikit-learn
        1.9's MLP accepts negative weights and trains on them (a loss that is not
        bounded below: NaN, or a loss of -1.9e18 with L-BFGS) and fails on weights
        summing to zero with a ZeroDivisionError; here both are a ValueError before
        the network is built or trained.
        """
        if sample_weight is not None:
            host_X = X if not is_device_array(X) else np.empty((X.shape[0], 0), np.float64)
            sample_weight = _check_sample_weight(
                host_values(to_host(sample_weight), "sample_weight"), host_X,
                dtype=None if not is_device_array(X) else np.float64,
            )
            check_sample_weight(sample_weight, host_X.shape[0])
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [X.shape[1]] + hidden_layer_sizes + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)

        if first_pass:
            self._initialize(be, X, y, layer_units)
            rt = self._rt
        else:
            units = [self.coefs_[0].shape[0]] + [np.shape(c)[1] for c in self.coefs_]
            if units != layer_units:
                raise ValueError(
                    f"warm_start/partial_fit: the network has layer sizes {units} but this "
                    f"call needs {layer_units} (hidden_layer_sizes or the targets changed)"
                )
            rt = self._runtime()
            self._ensure_fit_state()
        _check_dtype_range(X, rt)
        if not is_classifier(self):
            check_dtype_range(np.asarray(y, dtype=np.float64), rt.dtype, "y")
        if sample_weight is not None:
            check_sample_weight(sample_weight, X.shape[0], dtype=rt.dtype)  # its range, its underflow
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
        coefs, intercepts = glorot_draws(self._random_state, layer_units, self.activation)
        self.coefs_ = [c.astype(self._dtype) for c in coefs]
        self.intercepts_ = [b.astype(self._dtype) for b in intercepts]
        self._rt_host = None
        self._rt = Runtime(be, self._dtype, layer_units, self.activation, self.out_activation_)
        self._rt.push(self.coefs_, self.intercepts_)
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

    def _ensure_fit_state(self) -> None:
        """Defaults for the bookkeeping attributes a hand-built estimator may lack."""
        if not hasattr(self, "n_iter_"):
            self.n_iter_ = 0
        if not hasattr(self, "t_"):
            self.t_ = 0
        if not hasattr(self, "n_layers_"):
            self.n_layers_ = len(self.coefs_) + 1
        if self.solver in _STOCHASTIC_SOLVERS:
            if getattr(self, "loss_curve_", None) is None:
                self.loss_curve_ = []
            if not hasattr(self, "_no_improvement_count"):
                self._no_improvement_count = 0
            if self.early_stopping:
                if getattr(self, "validation_scores_", None) is None:
                    self.validation_scores_ = []
                if getattr(self, "best_validation_score_", None) is None:
                    self.best_validation_score_ = -np.inf
            elif getattr(self, "best_loss_", None) is None:
                self.best_loss_ = np.inf

    def _optimizer(self, rt: Runtime, incremental: bool) -> Optimizer:
        """The solver's optimizer (kept across partial_fit calls), bound to the network.

        The optimizer owns scikit-learn's rate policy: ``invscaling`` and
        ``adaptive`` are its schedule (:mod:`mlpx.schedules`).
        """
        model = rt.model
        if not incremental or rt.optimizer is None:
            if self.solver == "sgd":
                schedule = {"constant": None, "invscaling": InverseScaling(float(self.power_t)),
                            "adaptive": Adaptive()}[self.learning_rate]
                rt.optimizer = SGD(lr=float(self.learning_rate_init), momentum=float(self.momentum),
                                   nesterov=self.nesterovs_momentum, schedule=schedule)
            else:
                rt.optimizer = Adam(lr=float(self.learning_rate_init), beta_1=float(self.beta_1),
                                    beta_2=float(self.beta_2), epsilon=float(self.epsilon))
        rt.optimizer.bind(rt.be, model.params, model.grads, model.n_weights, owner=model)
        return rt.optimizer

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        return int(np.clip(self.batch_size, 1, n))

    def _split_indices(self, X: Any, y: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The early-stopping split's (train, validation) row indices, or (None, None).

        The same draws ``train_test_split`` makes on ``(X, y)``, stratified for
        single-output classifiers.
        """
        if not self.early_stopping:
            return None, None
        stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
        train_idx, val_idx = train_test_split(
            np.arange(X.shape[0]), random_state=self._random_state,
            test_size=self.validation_fraction, stratify=stratify,
        )
        return train_idx, val_idx

    def _split(self, rt: Runtime, X: Any, y: np.ndarray, sample_weight: Any) -> tuple[Any, ...]:
        """This rank's training rows and early-stopping holdout (:meth:`_split_indices`)."""
        train_idx, val_idx = self._split_indices(X, y)
        if train_idx is None or val_idx is None:
            return X, y, sample_weight, None
        Xv = take_host_rows(X, val_idx)
        holdout = self._holdout(rt, Xv, np.asarray(y[val_idx], dtype=np.float64),
                                None if sample_weight is None else sample_weight[val_idx])
        return (take_host_rows(X, train_idx), y[train_idx],
                None if sample_weight is None else sample_weight[train_idx], holdout)

    @staticmethod
    def _holdout(rt: Runtime, X: Any, Y: np.ndarray, w: np.ndarray | None) -> Holdout:
        """A held-out set on the device: sparse X stays sparse, densified per chunk."""
        be, dtype = rt.be, rt.dtype
        if X is None or X.shape[0] == 0:
            return Holdout()
        Yd = be.asarray(Y, dtype=dtype)
        wd = None if w is None else be.asarray(np.asarray(w, dtype=np.float64), dtype=dtype)
        if is_sparse(X):
            return Holdout(sparse_to_backend(be, X, dtype), Yd, wd, dense=lambda rows: densify(be, rows, dtype))
        return Holdout(be.asarray(X, dtype=dtype), Yd, wd)

    def _fit_stochastic(self, rt: Runtime, X: Any, y: np.ndarray, sample_weight: Any,
                        incremental: bool, reducer: Reducer) -> None:
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        opt = reducer.agreed("binding the optimizer", self._optimizer, rt, incremental)
        X_train, y_train, sw_train, holdout = reducer.agreed(
            "splitting the shard", self._split, rt, X, y, sample_weight)
        if self.early_stopping:
            n_val = reducer.allreduce_sum([0.0 if holdout.X is None else float(holdout.X.shape[0])])[0]
            if n_val < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
        source, order = reducer.agreed("moving the shard", self._source, rt, X_train, y_train, sw_train)
        rt.model.samples_seen_ = int(self.t_)
        if self.early_stopping and rt.best is None:
            rt.keep_best()  # warm start from weights set by hand: they are the best so far
        policy = _Policy(self, rt, opt, self.early_stopping, reducer.is_root, incremental)
        self.n_iter_ = 0
        try:
            train(
                rt.model, source, optimizer=opt, loss=rt.loss, reducer=reducer,
                epochs=1 if incremental else self.max_iter, broadcast=False, l2=float(self.alpha),
                order=order, callbacks=[policy], holdout=holdout, loss_weights="rows",
                loss_scale=1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0,
                divergence="continue",
            )
        except KeyboardInterrupt:
            if reducer.size > 1:
                raise
            warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            rt.model.assign_params(rt.best)  # restore the best weights

    def _source(self, rt: Runtime, X: Any, y: np.ndarray, sample_weight: Any) -> tuple[Any, Any]:
        """This rank's batch source on the device and its minibatch order (scikit-learn's)."""
        n = X.shape[0]
        Y = np.asarray(y, dtype=np.float64)
        if is_sparse(X):
            source: Any = make_batches(rt.be, X, Y, sample_weight, self._batch_size(n), rt.dtype, stream=False)
        else:  # the network's own source (one member over every row): its compiled epoch applies
            source = MemberBatches(rt.be, X, Y, sample_weight, [np.arange(n)], self._batch_size(n), rt.dtype)
        return source, self._order(n)

    def _order(self, n: int) -> Any:
        """The minibatch order of each epoch over ``n`` rows (None without shuffling)."""
        if not self.shuffle:
            return None
        random_state = self._random_state
        sample_idx = np.arange(n, dtype=int)
        identity, perm, spare = sample_idx.copy(), np.empty_like(sample_idx), np.empty_like(sample_idx)
        current = [sample_idx, spare]

        def order() -> np.ndarray:
            # sklearn.utils.shuffle(sample_idx, random_state) draws exactly this
            # (arange, RandomState.shuffle, gather), without its validation overhead.
            np.copyto(perm, identity)
            random_state.shuffle(perm)
            np.take(current[0], perm, out=current[1])
            current.reverse()
            return current[0]

        return order

    # ---------------------------------------------------------- prediction
    def _forward_pass_fast(self, X: Any, check_input: bool = True) -> np.ndarray:
        """Output-activation values, host array (n, n_outputs_), computed in row chunks.

        Thread-safe: one set of weights for the whole call (the model's parameter
        lock), this thread's own workspaces.
        """
        if check_input:
            X = self._validate_X_predict(X)
        rt = self._runtime()
        be, model = rt.be, rt.model
        _check_dtype_range(X, rt)
        n = X.shape[0]
        result = np.empty((n, model.n_outputs_), dtype=rt.dtype)
        threads = be.blas_threads(model.gemm_flops(min(n, PREDICT_CHUNK)))
        with (be.activated(), threads, np.errstate(over="ignore", invalid="ignore", divide="ignore"),
              model.parameter_lock.read()):
            for a, b in iter_chunks(n, PREDICT_CHUNK):
                _, P = model.infer(_dense_rows(be, X, a, b, rt.dtype))
                result[a:b] = be.to_numpy(P)
        return result

    def _score_holdout(self, X: Any, Y: np.ndarray, sample_weight: Any) -> dict[str, float]:
        """Scores of ``(X, Y)`` (Y encoded as the network's targets) by the one scorer."""
        rt = self._runtime()
        be, model = rt.be, rt.model
        _check_dtype_range(X, rt)
        n = X.shape[0]
        w = None if sample_weight is None else np.asarray(to_host(sample_weight), dtype=np.float64)

        def chunks() -> Any:
            for a, b in iter_chunks(n, PREDICT_CHUNK):
                yield (_dense_rows(be, X, a, b, rt.dtype), be.asarray(Y[a:b], dtype=rt.dtype),
                       None if w is None else be.asarray(w[a:b], dtype=rt.dtype), None)

        threads = be.blas_threads(model.gemm_flops(min(n, PREDICT_CHUNK)))
        with (be.activated(), threads, np.errstate(over="ignore", invalid="ignore", divide="ignore"),
              model.parameter_lock.read()):
            scores = holdout_scores(model, chunks, make_reducer(None, be), rt.loss, need_loss=False)
        return {k: float(v[0]) for k, v in scores.items()}

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


def _dense_rows(be: Backend, X: Any, a: int, b: int, dtype: str) -> Array:
    """Rows ``a:b`` of host or device, dense or sparse ``X`` as dense device rows."""
    if is_sparse(X):
        return densify(be, X[a:b], dtype)
    return be.asarray(X[a:b, ...], dtype=dtype)  # no copy if already there


def _check_dtype_range(X: Any, rt: Runtime) -> None:
    """Values finite in float64 may overflow the network's float32: refuse them."""
    values = X.data if is_sparse(X) else X
    check_dtype_range(values, rt.dtype, "X", be=rt.be if is_device_array(X) else None)
