"""``MLPClassifier``: scikit-learn's multi-layer perceptron classifier on mlpx."""

from __future__ import annotations

import os
from typing import Any, Literal, Sequence

import numpy as np
import numpy.typing as npt
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import column_or_1d
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_consistent_length, check_is_fitted

from mlpx.data import take_host_rows, to_host
from mlpx.distributed import Reducer, make_reducer
from mlpx.estimators._base import (BaseMLP, fit_context, if_stochastic, one_trainer,
                                  serves_previous_fit, union_labels)
from mlpx.estimators._parameters import SHARED_PARAMETERS
from mlpx.typing import (ArrayLike, BackendLike, DTypeName, EstimatorActivation, LearningRateName,
                         SolverName)

__all__ = ["MLPClassifier"]


class MLPClassifier(ClassifierMixin, BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's, on the CPU or a GPU.

    A drop-in replacement for :class:`sklearn.neural_network.MLPClassifier`
    (scikit-learn 1.9): same parameters, defaults, methods and fitted attributes
    (see its documentation), log-loss with a logistic output for binary and
    multilabel targets and a softmax output for multiclass targets.

    Parameters
    ----------
%(shared_parameters)s

    Attributes
    ----------
    classes_, loss_, best_loss_, loss_curve_, validation_scores_,
    best_validation_score_, t_, coefs_, intercepts_, n_features_in_,
    feature_names_in_, n_iter_, n_layers_, n_outputs_, out_activation_
        As in scikit-learn; ``coefs_[i]`` has shape (n_units_i, n_units_{i+1}) and
        ``intercepts_[i]`` shape (n_units_{i+1},), host NumPy arrays.

    Notes
    -----
    * With the same ``random_state``, a float64 CPU fit follows scikit-learn's fit
      to rounding (same initial draw, minibatch order and early-stopping split).
    * ``solver="lbfgs"`` runs SciPy's L-BFGS-B on the host: each function
      evaluation copies the parameter vector to the backend and the loss and
      gradient back; forward and backward passes run on the backend.
    * Sparse ``X`` stays sparse on the backend; each minibatch (or prediction
      chunk) is densified there before the first layer's product.
    * ``partial_fit`` exists for the stochastic solvers only.
    * ``fit(..., comm=...)`` / ``partial_fit(..., comm=...)``: data-parallel training
      across MPI ranks (or NCCL), each rank passing its shard; see the module
      docstring of :mod:`mlpx.estimators` ("Data-parallel training").
    * ``warm_start=True`` with ``early_stopping=True``: a fit whose epochs never beat
      ``best_validation_score_`` (kept from earlier fits) ends on the best weights
      seen so far. scikit-learn 1.9 ends on the last epoch's weights instead, because
      after a restore its best-weights list is the same object as ``coefs_`` and is
      trained in place; this is the one place the two are meant to differ.

    Examples
    --------
    >>> from mlpx import MLPClassifier
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = MLPClassifier(max_iter=30, random_state=0).fit(X / 16, y)
    >>> clf.score(X / 16, y) > 0.95
    True
    """

    _parameter_constraints: dict = dict(BaseMLP._parameter_constraints)

    def __init__(
        self,
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
            comm: Any = None) -> MLPClassifier:
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Host data (NumPy, pandas, scipy.sparse CSR/CSC) or, on the GPU backend,
            CuPy arrays / cupyx sparse matrices. With ``comm``: this rank's shard.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (any hashable type), or a label indicator matrix.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples (scaling their loss terms).
        comm : mpi4py communicator, "mpi", "nccl" or None, default=None
            Data-parallel training: every rank calls ``fit`` with its own shard
            and ends with the same weights (see :class:`MLPClassifier` Notes).
            ``classes_`` is the union of the labels of all ranks.

        Returns
        -------
        self
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False, comm=comm)

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool,
                        reducer: Reducer) -> tuple[Any, Any]:
        distributed = reducer.size > 1

        def local() -> tuple[Any, Any, Any]:
            X_, y_ = self._validate_Xy(X, y, reset=reset, y_numeric=False)
            if y_.ndim == 2 and y_.shape[1] == 1:
                y_ = column_or_1d(y_, warn=True)
            if not distributed:
                return X_, y_, None
            multilabel = type_of_target(y_).startswith("multilabel")
            return X_, y_, ((True, y_.shape[1]) if multilabel else (False, unique_labels(y_)))

        X, y, info = reducer.agreed("checking X and y", local)
        # With comm the labels are those of all ranks together (a shard may miss a class).
        labels = union_labels(reducer.allgather(info)) if distributed else None
        # Same label bookkeeping as scikit-learn (warm_start / partial_fit rules).
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y if labels is None else labels)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y if labels is None else labels)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same "
                        "classes as in the previous call to fit. Previously "
                        f"got {self.classes_}, `y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    "`y` has classes not in `self.classes_`. "
                    f"`self.classes_` has {self.classes_}. 'y' has {classes}."
                )
        y = reducer.agreed("encoding y", self._encode, y)
        return X, y

    def _encode(self, y: Any) -> np.ndarray:
        """The label binarizer's ``transform(y)`` as bool: one-hot rows (a label outside
        ``classes_`` gives a row of zeros, as there), one column for two classes.

        Labels of one dimension are compared with ``classes_`` directly: the
        binarizer's own transform classifies the targets again first, which costs
        more than the comparison on small sets (a grid search encodes every fold).
        """
        lb = self._label_binarizer
        y = np.asarray(y) if not hasattr(y, "ndim") else y
        if y.ndim != 1 or lb.y_type_ not in ("binary", "multiclass") or lb.sparse_output:
            return np.asarray(lb.transform(y)).astype(bool)
        classes = lb.classes_
        if lb.y_type_ == "binary":
            if len(classes) < 2:
                return np.zeros((y.shape[0], 1), dtype=bool)
            return (y == classes[1]).reshape(-1, 1)
        return y[:, None] == classes[None, :]

    def _output_to_prediction(self, y_out: np.ndarray) -> np.ndarray:
        if self.n_outputs_ == 1:
            y_out = y_out.ravel()
        return self._label_binarizer.inverse_transform(y_out)

    @serves_previous_fit
    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """Mean accuracy on ``(X, y)``, as scikit-learn's, computed on the device.

        Labels are compared as ``predict`` gives them; a label the classifier has
        never seen counts as wrong. Thread-safe.

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
            The (weighted) share of correctly predicted samples.
        """
        check_is_fitted(self)
        data = self._validate_X_predict(X)
        labels = np.asarray(to_host(y.to_numpy() if hasattr(y, "to_numpy") else y))
        check_consistent_length(data, labels)
        n = data.shape[0]
        w = None if sample_weight is None else _check_sample_weight(
            to_host(sample_weight), np.empty((n, 0)), dtype=np.float64)
        total = float(n) if w is None else float(w.sum())
        if self._label_binarizer.y_type_.startswith("multilabel"):
            return self._score_holdout(data, self._encode(labels), w)["accuracy"]
        labels = column_or_1d(labels) if labels.ndim == 2 and labels.shape[1] == 1 else labels
        known = np.isin(labels, self.classes_)
        if known.all():
            return self._score_holdout(data, self._encode(labels), w)["accuracy"]
        if not known.any() or total <= 0:
            return 0.0
        idx = np.flatnonzero(known)
        wk = None if w is None else w[idx]
        part = self._score_holdout(take_host_rows(data, idx), self._encode(labels[idx]), wk)
        return part["accuracy"] * part["weight"] / total

    @serves_previous_fit
    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict class labels.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Host data, or CuPy arrays on the GPU backend.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_classes)
            The predicted classes (an indicator matrix for multilabel targets).
        """
        check_is_fitted(self)
        return self._output_to_prediction(self._forward_pass_fast(X))

    @if_stochastic
    @fit_context
    @one_trainer
    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
                    classes: ArrayLike | None = None, comm: Any = None) -> MLPClassifier:
        """Update the model with a single iteration over the given data.

        The estimators take arrays, as scikit-learn's do; this is their route for
        data that does not fit in memory: one call per batch of a stream or of a
        store's rows (``fit`` refuses a stream of batches with a ``TypeError``;
        :meth:`mlpx.Sequential.fit` reads streams directly, see :mod:`mlpx.streams`).
        Calls on the same batches give scikit-learn's ``partial_fit`` results.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training samples.
        y : array-like of shape (n_samples,)
            Class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples.
        classes : array of shape (n_classes,), default=None
            All classes across calls; required on the first call. With ``comm``
            the union of every rank's ``classes``.
        comm : mpi4py communicator, "mpi", "nccl" or None, default=None
            One epoch over every rank's shard together (see ``fit``).

        Returns
        -------
        self
            The fitted estimator.

        Examples
        --------
        >>> import numpy as np, mlpx
        >>> rng = np.random.default_rng(0)
        >>> def batches():  # e.g. a DataLoader, or the chunks of a zarr array
        ...     for _ in range(5):
        ...         X = rng.normal(size=(64, 4))
        ...         yield X, (X[:, 0] > 0).astype(int)
        >>> clf = mlpx.MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
        >>> for epoch in range(3):
        ...     for X_batch, y_batch in batches():
        ...         clf = clf.partial_fit(X_batch, y_batch, classes=[0, 1])
        >>> clf.predict(X_batch).shape
        (64,)
        """
        reducer = make_reducer(comm, self._get_backend())

        def first_call() -> tuple[bool, bool]:
            first = _check_partial_fit_first_call(self, classes)
            return first, first and type_of_target(to_host(y)).startswith("multilabel")

        first, multilabel = reducer.agreed("checking classes", first_call)
        if reducer.size > 1 and first and not multilabel:
            # Every rank builds the same output layer from the union of the classes given.
            gathered = reducer.allgather(np.asarray(classes))
            self.classes_ = reducer.agreed("merging classes", unique_labels, *gathered)
            classes = self.classes_
        if first:
            self._label_binarizer = LabelBinarizer()
            if multilabel:
                self._label_binarizer.fit(to_host(y))
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True, comm=reducer)

    @serves_previous_fit
    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Probability estimates.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Host data, or CuPy arrays on the GPU backend.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Ordered as ``classes_``.
        """
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    @serves_previous_fit
    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Log of :meth:`predict_proba`.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Host data, or CuPy arrays on the GPU backend.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            ``log(predict_proba(X))`` (``-inf`` where a probability is 0).
        """
        y_prob = self.predict_proba(X)
        with np.errstate(divide="ignore"):  # log(0) = -inf, as scikit-learn returns
            return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    # ----------------------------------------------------------------- deploy
    def to_onnx(self, path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        """Export this classifier as an ONNX graph with skl2onnx's outputs (needs ``mlpx[onnx]``).

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
        """Convert this classifier to a ``torch.nn.Sequential`` (see :func:`mlpx.torch.to_torch`).

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
        """Convert this classifier to scikit-learn's ``sklearn.neural_network.MLPClassifier``.

        The hyperparameters, weights and fitted attributes are carried; the optimizer
        state is not, so a ``partial_fit`` right after restarts the optimizer.

        Returns
        -------
        sklearn.neural_network.MLPClassifier
            Fitted, predicting as this one does (to 1e-12 in float64).
        """
        from mlpx.estimators._convert import to_sklearn

        return to_sklearn(self)

    @classmethod
    def from_sklearn(cls, est: Any, backend: BackendLike = "cpu") -> MLPClassifier:
        """Build a fitted mlpx MLPClassifier from a fitted scikit-learn one.

        The optimizer state is not carried.

        Parameters
        ----------
        est : sklearn.neural_network.MLPClassifier
            A fitted estimator.
        backend : str or Backend, default="cpu"
            Where the new estimator computes.

        Returns
        -------
        MLPClassifier
            Fitted, with ``est``'s hyperparameters, weights and fitted attributes.
        """
        from mlpx.estimators._convert import from_sklearn

        return from_sklearn(cls, est, backend)


MLPClassifier.__doc__ = (MLPClassifier.__doc__ or "").replace("%(shared_parameters)s\n", SHARED_PARAMETERS)
