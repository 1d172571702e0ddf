"""``MLPRegressor``: scikit-learn's multi-layer perceptron regressor on mlpx."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import RegressorMixin, _fit_context
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _check_sample_weight, check_consistent_length, check_is_fitted

from mlpx.data import to_host
from mlpx.distributed import Reducer
from mlpx.estimators._base import BaseMLP

__all__ = ["MLPRegressor"]


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's, on the CPU or a GPU.

    A drop-in replacement for :class:`sklearn.neural_network.MLPRegressor`
    (scikit-learn 1.9): same parameters, defaults, methods and fitted attributes.
    ``loss="squared_error"`` (identity output; reported loss ``½·mean squared
    error`` averaged over outputs) or ``"poisson"`` (exp output, half Poisson
    deviance). ``backend`` and ``dtype`` as in :class:`MLPClassifier`.

    Notes
    -----
    ``partial_fit`` is available for the stochastic solvers only (scikit-learn's
    regressor exposes it for L-BFGS too, where it runs a full L-BFGS fit).
    ``fit`` / ``partial_fit`` take ``comm`` for data-parallel training, as
    :class:`MLPClassifier` does.
    """

    _parameter_constraints: dict = {
        **BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        backend="cpu",
        dtype=None,
    ):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, comm=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None
        comm : mpi4py communicator, "mpi", "nccl" or None, default=None
            Data-parallel training over this rank's shard (see
            :class:`MLPClassifier`'s ``fit`` and Notes).

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False, comm=comm)

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool,
                        reducer: Reducer) -> tuple[Any, Any]:
        return reducer.agreed("checking X and y", self._validate_regression, X, y, reset)

    def _validate_regression(self, X: Any, y: Any, reset: bool) -> tuple[Any, Any]:
        X, y = self._validate_Xy(X, y, reset=reset, y_numeric=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(np.asarray(y) < 0):
            raise ValueError("Some value(s) of y are negative which is not allowed for Poisson regression.")
        return X, y

    def _output_to_prediction(self, y_out: np.ndarray) -> np.ndarray:
        return y_out.ravel() if y_out.shape[1] == 1 else y_out

    def score(self, X, y, sample_weight=None):
        """R² of ``predict(X)`` against ``y``, as scikit-learn's, computed on the device.

        Uniform average over outputs; thread-safe.

        Returns
        -------
        float
        """
        check_is_fitted(self)
        X = self._validate_X_predict(X)
        y = np.asarray(to_host(y.to_numpy() if hasattr(y, "to_numpy") else y), dtype=np.float64)
        check_consistent_length(X, y)
        n = X.shape[0]
        Y = y.reshape(n, -1)
        if Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} output(s), but the model predicts {self.n_outputs_}")
        if not np.isfinite(Y).all():
            raise ValueError("Input y contains NaN or infinity.")
        w = None if sample_weight is None else _check_sample_weight(
            to_host(sample_weight), np.empty((n, 0)), dtype=np.float64)
        r2 = self._score_holdout(X, Y, w)["r2"]
        if np.isnan(r2):
            raise ValueError("Input contains NaN: the model's predictions are not finite.")
        return r2

    def predict(self, X):
        """Predict using the multi-layer perceptron model.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        check_is_fitted(self)
        return self._output_to_prediction(self._forward_pass_fast(X))

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, comm=None):
        """Update the model with a single iteration over the given data.

        ``comm``: one epoch over every rank's shard together (see ``fit``). This is
        the estimators' route for data that does not fit in memory: one call per
        batch (see :meth:`MLPClassifier.partial_fit` for an example; ``fit`` takes
        arrays, as scikit-learn's does).

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True, comm=comm)

    # ----------------------------------------------------------------- deploy
    def to_onnx(self, path=None, **options):
        """This regressor as an ``onnx.ModelProto`` (written to ``path`` if given), with
        skl2onnx's outputs; see :func:`mlpx.onnx.to_onnx` (needs ``mlpx[onnx]``)."""
        from mlpx.onnx import to_onnx

        return to_onnx(self, path, **options)

    def to_torch(self, **options):
        """This regressor as a ``torch.nn.Sequential``; see :func:`mlpx.torch.to_torch`."""
        from mlpx.torch import to_torch

        return to_torch(self, **options)

    def to_sklearn(self):
        """A fitted ``sklearn.neural_network.MLPRegressor`` equal to this one (same
        hyperparameters, weights and fitted attributes); see
        :func:`mlpx.estimators._convert.to_sklearn`."""
        from mlpx.estimators._convert import to_sklearn

        return to_sklearn(self)

    @classmethod
    def from_sklearn(cls, est, backend="cpu"):
        """A fitted mlpx MLPRegressor from a fitted scikit-learn one, on ``backend``
        (the optimizer state is not carried: see :mod:`mlpx.estimators._convert`)."""
        from mlpx.estimators._convert import from_sklearn

        return from_sklearn(cls, est, backend)
