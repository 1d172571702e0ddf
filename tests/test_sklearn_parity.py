"""mlpx's estimators against the installed scikit-learn, number for number (float64, CPU).

1. From identical weights, one full-batch optimizer step gives scikit-learn's new
   weights to 1e-10 relative: every hidden activation, every output type, SGD
   (plain, momentum, Nesterov) and Adam, with and without ``alpha`` and
   ``sample_weight``.
2. With the same ``random_state``, whole fits (initial draw, minibatch order,
   early-stopping split, learning-rate schedules, stopping rules, L-BFGS) follow
   scikit-learn's fit to rounding.

scikit-learn is the independent reference here: nothing is compared with mlpx's
own output.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import load_digits, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402

from mlpx import MLPClassifier, MLPRegressor  # noqa: E402

ACTIVATIONS = ["identity", "logistic", "tanh", "relu"]
TARGETS = ["binary", "multiclass", "multilabel", "regression", "multioutput", "poisson"]
OPTIMIZERS = {
    "sgd": dict(solver="sgd", momentum=0.0, learning_rate_init=0.1),
    "momentum": dict(solver="sgd", momentum=0.9, nesterovs_momentum=False, learning_rate_init=0.1),
    "nesterov": dict(solver="sgd", momentum=0.9, nesterovs_momentum=True, learning_rate_init=0.1),
    "adam": dict(solver="adam", learning_rate_init=0.01),
}


def _problem(target: str, n: int = 24, n_features: int = 5):
    rng = np.random.RandomState(7)
    X = rng.normal(size=(n, n_features))
    if target == "binary":
        y = np.array(["no", "yes"])[(X[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)]
    elif target == "multiclass":
        y = np.arange(n) % 3
    elif target == "multilabel":
        y = (rng.uniform(size=(n, 3)) > 0.5).astype(int)
        y[0], y[1] = 1, 0  # every label seen both ways
    elif target == "regression":
        y = X @ rng.normal(size=n_features) + 0.1 * rng.normal(size=n)
    elif target == "multioutput":
        y = X @ rng.normal(size=(n_features, 2))
    else:  # poisson counts
        y = rng.poisson(np.exp(0.3 * X[:, 0])).astype(float)
    return X, y


def _pair(target: str, **params):
    classifier = target in ("binary", "multiclass", "multilabel")
    if target == "poisson":
        params["loss"] = "poisson"
    sk = (SkClassifier if classifier else SkRegressor)(**params)
    mx = (MLPClassifier if classifier else MLPRegressor)(**params)
    return sk, mx


def _assert_rel(ours, theirs, rtol: float, what: str) -> None:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    scale = max(np.abs(theirs).max(), 1e-300)
    err = np.abs(ours - theirs).max() / scale
    assert err <= rtol, f"{what}: relative difference {err:.3g} > {rtol:g}"


@pytest.mark.parametrize("sample_weight", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("alpha", [0.0, 0.5], ids=["alpha0", "alpha0.5"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_one_full_batch_step_matches_sklearn(activation, target, optimizer, alpha, sample_weight):
    X, y = _problem(target)
    w = np.random.RandomState(3).uniform(0.2, 3.0, size=len(X)) if sample_weight else None
    params = dict(
        hidden_layer_sizes=(6, 4), activation=activation, alpha=alpha, batch_size=len(X),
        shuffle=False, max_iter=1, warm_start=True, random_state=0, **OPTIMIZERS[optimizer],
    )
    sk, mx = _pair(target, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X, y)  # builds the network; the step below starts from W0 instead
        mx.fit(X, y)
        # Identical starting weights, independent of either library's initialiser.
        rng = np.random.RandomState(11)
        W0 = [rng.uniform(-0.5, 0.5, c.shape) for c in sk.coefs_]
        b0 = [rng.uniform(-0.5, 0.5, b.shape) for b in sk.intercepts_]
        sk.coefs_, sk.intercepts_ = [a.copy() for a in W0], [a.copy() for a in b0]
        mx.coefs_, mx.intercepts_ = [a.copy() for a in W0], [a.copy() for a in b0]
        # warm_start fit with max_iter=1 and batch_size=n: a fresh optimizer, one step.
        sk.fit(X, y, sample_weight=w)
        mx.fit(X, y, sample_weight=w)
    assert mx.coefs_[0].dtype == np.float64
    for i, (a, b) in enumerate(zip(mx.coefs_ + mx.intercepts_, sk.coefs_ + sk.intercepts_)):
        _assert_rel(a, b, 1e-10, f"parameter {i}")
    # The step itself (new − old), not only the weights, agrees closely.
    for i, (a, b, p0) in enumerate(zip(mx.coefs_ + mx.intercepts_, sk.coefs_ + sk.intercepts_, W0 + b0)):
        _assert_rel(a - p0, b - p0, 1e-8, f"update of parameter {i}")
    # Reported loss (before the step): same definition and scaling, incl. the L2 term.
    assert mx.loss_ == pytest.approx(sk.loss_, rel=1e-10)


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
def test_several_full_batch_steps_carry_optimizer_state(optimizer):
    """Velocity / moment estimates carry over between steps exactly as scikit-learn's."""
    X, y = _problem("multiclass")
    params = dict(hidden_layer_sizes=(6,), activation="tanh", alpha=1e-3, batch_size=len(X),
                  shuffle=False, max_iter=5, tol=0.0, n_iter_no_change=100, random_state=0,
                  **OPTIMIZERS[optimizer])
    sk, mx = _pair("multiclass", **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X, y)
        mx.fit(X, y)
    for a, b in zip(mx.coefs_ + mx.intercepts_, sk.coefs_ + sk.intercepts_):
        _assert_rel(a, b, 1e-10, "weights after 5 steps")
    np.testing.assert_allclose(mx.loss_curve_, sk.loss_curve_, rtol=1e-10)


# ------------------------------------------------------------ whole fits
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16.0, y[:600]


FIT_CASES = {
    "adam": dict(solver="adam"),
    "sgd-nesterov": dict(solver="sgd", learning_rate_init=0.05),
    "sgd-invscaling": dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5,
                           momentum=0.5, nesterovs_momentum=False),
    "sgd-adaptive": dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05,
                         tol=0.05, n_iter_no_change=2),
    "adam-early-stopping": dict(solver="adam", early_stopping=True, validation_fraction=0.2,
                                n_iter_no_change=3),
    "adam-tol-stop": dict(solver="adam", tol=0.05, n_iter_no_change=2),
    "lbfgs": dict(solver="lbfgs"),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_classifier_fit_follows_sklearn(digits, case):
    X, y = digits
    params = dict(hidden_layer_sizes=(32,), random_state=0, max_iter=25, batch_size=64,
                  **FIT_CASES[case])
    sk, mx = SkClassifier(**params), MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X, y)
        mx.fit(X, y)
    assert mx.n_iter_ == sk.n_iter_
    for a, b in zip(mx.coefs_ + mx.intercepts_, sk.coefs_ + sk.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    assert mx.loss_ == pytest.approx(sk.loss_, rel=1e-8)
    if params["solver"] != "lbfgs":
        np.testing.assert_allclose(mx.loss_curve_, sk.loss_curve_, rtol=1e-8)
        assert mx.t_ == sk.t_
        if params.get("early_stopping"):
            np.testing.assert_allclose(mx.validation_scores_, sk.validation_scores_)
            assert mx.best_validation_score_ == sk.best_validation_score_
            assert mx.best_loss_ is None and sk.best_loss_ is None
        else:
            assert mx.best_loss_ == pytest.approx(sk.best_loss_, rel=1e-8)
    np.testing.assert_array_equal(mx.predict(X), sk.predict(X))
    np.testing.assert_allclose(mx.predict_proba(X), sk.predict_proba(X), rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_regressor_fit_follows_sklearn(solver, weighted):
    X, y = make_regression(n_samples=300, n_features=8, n_targets=2, noise=1.0, random_state=0)
    y = y / y.std()
    w = np.random.RandomState(0).uniform(0.5, 2.0, len(X)) if weighted else None
    params = dict(hidden_layer_sizes=(16, 8), random_state=1, max_iter=20, batch_size=50,
                  solver=solver, learning_rate_init=0.01, early_stopping=solver == "adam")
    sk, mx = SkRegressor(**params), MLPRegressor(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X, y, sample_weight=w)
        mx.fit(X, y, sample_weight=w)
    assert mx.n_iter_ == sk.n_iter_
    for a, b in zip(mx.coefs_ + mx.intercepts_, sk.coefs_ + sk.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    assert mx.loss_ == pytest.approx(sk.loss_, rel=1e-8)
    if solver != "lbfgs":
        np.testing.assert_allclose(mx.loss_curve_, sk.loss_curve_, rtol=1e-8)
    np.testing.assert_allclose(mx.predict(X), sk.predict(X), rtol=1e-7, atol=1e-9)


def test_poisson_and_partial_fit_follow_sklearn():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(200, 4))
    y = rng.poisson(np.exp(0.5 * X[:, 0]))
    params = dict(loss="poisson", hidden_layer_sizes=(8,), random_state=3, solver="adam",
                  learning_rate_init=0.01, batch_size=32)
    sk, mx = SkRegressor(**params), MLPRegressor(**params)
    for _ in range(4):  # partial_fit keeps the optimizer state between calls
        sk.partial_fit(X, y)
        mx.partial_fit(X, y)
    for a, b in zip(mx.coefs_ + mx.intercepts_, sk.coefs_ + sk.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mx.loss_curve_, sk.loss_curve_, rtol=1e-9)
    assert mx.out_activation_ == sk.out_activation_ == "exp"
