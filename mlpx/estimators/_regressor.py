"""``MLPRegressor``: scikit-learn's multi-layer perceptron regressor on mlpx."""

from __future__ import annotations

import os
from typing import Any, Literal, Sequence

import numpy as np
import numpy.typing as npt
from sklearn.base import RegressorMixin
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import _check_sample_weight, check_consistent_length, check_is_fitted

from mlpx.data import to_host
from mlpx.distributed import Reducer
from mlpx.estimators._base import (BaseMLP, fit_context, if_stochastic, one_trainer,
                                  serves_previous_fit)
from mlpx.estimators._parameters import SHARED_PARAMETERS
from mlpx.typing import (ArrayLike, BackendLike, DTypeName, EstimatorActivation, LearningRateName,
                         RegressionLoss, SolverName)

__all__ = ["MLPRegressor"]


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's, on the CPU or a GPU.

    A drop-in replacement for :class:`sklearn.neural_network.MLPRegressor`
    (scikit-learn 1.9): same parameters, defaults, methods and fitted attributes.
    ``loss="squared_error"`` (identity output; reported loss ``½·mean squared
    error`` averaged over outputs) or ``"poisson"`` (exp output, half Poisson
    deviance).

    Parameters
    ----------
    loss : {"squared_error", "poisson"}, default="squared_error"
        The loss, and with it the output activation: identity or exp.
%(shared_parameters)s

    Attributes
    ----------
    loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_, t_, coefs_, intercepts_, n_features_in_, feature_names_in_, n_iter_, n_layers_, n_outputs_, out_activation_
        As in scikit-learn; ``coefs_`` and ``intercepts_`` are host NumPy arrays.

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
        loss: RegressionLoss = "squared_error",
        hidden_layer_sizes: int | Sequence[int] = (100,),
        activation: EstimatorActivation = "relu",
        *,
        solver: SolverName = "adam",
        alpha: float = 0.0001,
        batch_size: int | Literal["auto"] = "auto",
        learning_rate: LearningRateName = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | np.random.RandomState | None = None,
        tol: float = 1e-4,
        verbose: bool | int = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int | float = 10,
        max_fun: int = 15000,
        backend: BackendLike = "cpu",
        dtype: DTypeName | npt.DTypeLike | None = None,
    ) -> None:
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

    @fit_context
    @one_trainer
    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
            comm: Any = None) -> MLPRegressor:
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training samples (host data, or CuPy arrays on the GPU backend).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples (scaling their loss terms).
        comm : mpi4py communicator, "mpi", "nccl" or None, default=None
            Data-parallel training over this rank's shard (see
            :class:`MLPClassifier`'s ``fit`` and Notes).

        Returns
        -------
        self
            The fitted estimator.
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

    @serves_previous_fit
    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """R² of ``predict(X)`` against ``y``, as scikit-learn's, computed on the device.

        Uniform average over outputs; thread-safe.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Test samples (host data, or CuPy arrays on the GPU backend).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            True targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples.

        Returns
        -------
        float
            The coefficient of determination.
        """
        check_is_fitted(self)
        data = self._validate_X_predict(X)
        targets = np.asarray(to_host(y.to_numpy() if hasattr(y, "to_numpy") else y), dtype=np.float64)
        check_consistent_length(data, targets)
        n = data.shape[0]
        Y = targets.reshape(n, -1)
        if Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} output(s), but the model predicts {self.n_outputs_}")
        if not np.isfinite(Y).all():
            raise ValueError("Input y contains NaN or infinity.")
        w = None if sample_weight is None else _check_sample_weight(
            to_host(sample_weight), np.empty((n, 0)), dtype=np.float64)
        r2 = self._score_holdout(data, Y, w)["r2"]
        if np.isnan(r2):
            raise ValueError("Input contains NaN: the model's predictions are not finite.")
        return r2

    @serves_previous_fit
    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict using the multi-layer perceptron model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Host data, or CuPy arrays on the GPU backend.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
            The predicted values.
        """
        check_is_fitted(self)
        return self._output_to_prediction(self._forward_pass_fast(X))

    @if_stochastic
    @fit_context
    @one_trainer
    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
                    comm: Any = None) -> MLPRegressor:
        """Update the model with a single iteration over the given data.

        This is the estimators' route for data that does not fit in memory: one
        call per batch (see :meth:`MLPClassifier.partial_fit` for an example; ``fit``
        takes arrays, as scikit-learn's does).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training samples.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples.
        comm : mpi4py communicator, "mpi", "nccl" or None, default=None
            One epoch over every rank's shard together (see ``fit``).

        Returns
        -------
        self
            The updated estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True, comm=comm)

    # ----------------------------------------------------------------- deploy
    def to_onnx(self, path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        """Export this regressor as an ONNX graph with skl2onnx's outputs (needs ``mlpx[onnx]``).

        Parameters
        ----------
        path : str or path-like, optional
            Where to write the ``.onnx`` file.
        **options
            Passed to :func:`mlpx.onnx.to_onnx` (``zipmap``, ``dtype``, ``target_opset``).

        Returns
        -------
        onnx.ModelProto
            The graph, also written to ``path`` when given.
        """
        from mlpx.onnx import to_onnx

        return to_onnx(self, path, **options)

    def to_torch(self, **options: Any) -> Any:
        """Convert this regressor to a ``torch.nn.Sequential`` (see :func:`mlpx.torch.to_torch`).

        Parameters
        ----------
        **options
            Passed to :func:`mlpx.torch.to_torch` (``copy``, ``device``).

        Returns
        -------
        torch.nn.Sequential
            Sharing this estimator's weights unless ``copy=True``.
        """
        from mlpx.torch import to_torch

        return to_torch(self, **options)

    def to_sklearn(self) -> Any:
        """Convert this regressor to scikit-learn's ``sklearn.neural_network.MLPRegressor``.

        The hyperparameters, weights and fitted attributes are carried; the optimizer
        state is not, so a ``partial_fit`` right after restarts the optimizer.

        Returns
        -------
        sklearn.neural_network.MLPRegressor
            Fitted, predicting as this one does (to 1e-12 in float64).
        """
        from mlpx.estimators._convert import to_sklearn

        return to_sklearn(self)

    @classmethod
    def from_sklearn(cls, est: Any, backend: BackendLike = "cpu") -> MLPRegressor:
        """Build a fitted mlpx MLPRegressor from a fitted scikit-learn one.

        The optimizer state is not carried.

        Parameters
        ----------
        est : sklearn.neural_network.MLPRegressor
            A fitted estimator.
        backend : str or Backend, default="cpu"
            Where the new estimator computes.

        Returns
        -------
        MLPRegressor
            Fitted, with ``est``'s hyperparameters, weights and fitted attributes.
        """
        from mlpx.estimators._convert import from_sklearn

        return from_sklearn(cls, est, backend)


MLPRegressor.__doc__ = (MLPRegressor.__doc__ or "").replace("%(shared_parameters)s\n", SHARED_PARAMETERS)
