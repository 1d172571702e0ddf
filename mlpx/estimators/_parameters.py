"""The hyperparameters both estimators share: their documentation and their constraints."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.utils._param_validation import Interval, Options, StrOptions

from mlpx.backends import Backend

__all__ = ["PARAMETER_CONSTRAINTS", "SHARED_PARAMETERS"]

#: The parameters both estimators share, for their docstrings (numpydoc text,
#: indented for a class docstring): ``%(shared_parameters)s`` in each class's.
SHARED_PARAMETERS = """\
    hidden_layer_sizes : array-like of int, default=(100,)
        The ith element is the number of units in the ith hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Activation of the hidden layers.
    solver : {"lbfgs", "sgd", "adam"}, default="adam"
        Weight optimization: SciPy's L-BFGS-B (full batch, on the host), stochastic
        gradient descent, or Adam.
    alpha : float, default=0.0001
        Strength of the L2 penalty, divided by the number of samples.
    batch_size : int or "auto", default="auto"
        Minibatch size of the stochastic solvers; ``"auto"`` is ``min(200, n_samples)``.
        With ``comm``, per rank.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Learning-rate schedule of ``solver="sgd"``.
    learning_rate_init : float, default=0.001
        Initial step size of the stochastic solvers.
    power_t : float, default=0.5
        Exponent of the ``"invscaling"`` schedule.
    max_iter : int, default=200
        Epochs of the stochastic solvers; iterations of L-BFGS.
    shuffle : bool, default=True
        Shuffle the samples every epoch (stochastic solvers).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the minibatch order and the early-stopping split,
        drawn in scikit-learn's order.
    tol : float, default=1e-4
        Improvement of the loss (or validation score) below which an epoch counts as
        no improvement.
    verbose : bool, default=False
        Print the loss every epoch.
    warm_start : bool, default=False
        Continue from the fitted weights on the next ``fit``.
    momentum : float, default=0.9
        Momentum of ``solver="sgd"``, in [0, 1].
    nesterovs_momentum : bool, default=True
        Nesterov's momentum for ``solver="sgd"``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data and stop when its score
        stops improving; the best weights are kept.
    validation_fraction : float, default=0.1
        The share held out for early stopping, in [0, 1).
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's decay rates of the first and second moments, in [0, 1).
    epsilon : float, default=1e-8
        Adam's numerical-stability term.
    n_iter_no_change : int, default=10
        Epochs without an improvement of ``tol`` before stopping.
    max_fun : int, default=15000
        Largest number of loss evaluations of L-BFGS.
    backend : str or Backend, default="cpu"
        ``"cpu"``, ``"cpu:mkl"``, ``"cpu:blis"``, ``"gpu"``, ``"gpu:N"``, ``"auto"``
        or a Backend instance; resolved at ``fit``. A Backend instance pickles,
        deep-copies and clones as its name (``backend.spec``), so searches and
        process pools carry it.
    dtype : {"float32", "float64"} or None, default=None
        Compute dtype. None: float32 for float32 ``X``; otherwise float64 on the
        CPU, float32 on the GPU.
"""

#: scikit-learn's validation of those parameters (``_parameter_constraints``).
PARAMETER_CONSTRAINTS: dict[str, list[Any]] = {
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
