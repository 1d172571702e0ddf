"""The estimators' ``sample_weight``: what trains, what is refused, and what it means.

* Weights must be finite, non-negative and sum to more than zero, in ``fit`` and
  ``partial_fit`` of both estimators and every solver, as the engine requires. An
  estimator used to accept negative weights and end with ``loss_`` NaN and its
  weights untrained, without an error. scikit-learn 1.9's MLP accepts negative
  weights too (and trains on a loss that is not bounded below); for weights
  summing to zero it raises ZeroDivisionError. NaN, infinity and all-zero weights
  it refuses with a ValueError, as mlpx does.
* Integer weights mean repeated rows: with the full-batch solver (L-BFGS) a fit with
  weights ``w`` equals the fit on ``np.repeat(X, w)`` and scikit-learn's own
  weighted fit, to rounding. Minibatch solvers cut the repeated data into other
  batches, so there the equivalence does not hold (in scikit-learn either).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402

from mlpx import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N = 24
INVALID = {
    "one negative": np.r_[-1.0, np.ones(N - 1)],
    "all negative": -np.ones(N),
    "negative, sum below 0": np.r_[-1.0, 0.5, np.zeros(N - 2)],
    "negative, sum 0": np.r_[-1.0, 1.0, np.zeros(N - 2)],
    "tiny negative": np.r_[-1e-300, np.ones(N - 1)],
    "NaN": np.r_[np.nan, np.ones(N - 1)],
    "inf": np.r_[np.inf, np.ones(N - 1)],
    "-inf": np.r_[-np.inf, np.ones(N - 1)],
    "all zero": np.zeros(N),
}


def _data(kind: str, n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] > 0).astype(int) if kind == "classifier" else X @ np.array([1.0, -2.0, 0.5])
    if kind == "classifier":
        y[:2] = [0, 1]  # both classes in every draw
    return X, y


def _est(kind: str, solver: str = "adam", **kw):
    Est = MLPClassifier if kind == "classifier" else MLPRegressor
    return Est(hidden_layer_sizes=(4,), solver=solver, max_iter=3, random_state=0, **kw)


@pytest.mark.parametrize("case", list(INVALID))
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("call", ["fit adam", "fit sgd", "fit lbfgs", "partial_fit"])
def test_invalid_weights_raise_and_leave_the_fit_alone(case: str, kind: str, call: str) -> None:
    X, y = _data(kind)
    method, solver = (call.split() + ["sgd"])[:2]
    est = _est(kind, solver).fit(X, y)
    before = [c.copy() for c in est.coefs_ + est.intercepts_]
    loss_before = est.loss_
    kw = {"classes": [0, 1]} if method == "partial_fit" and kind == "classifier" else {}
    with pytest.raises(ValueError, match=r"sample_weight|Sample weights|Negative"):
        getattr(est, method)(X, y, sample_weight=INVALID[case], **kw)
    for a, b in zip(est.coefs_ + est.intercepts_, before):
        np.testing.assert_array_equal(a, b)  # never trained on them
    assert est.loss_ == loss_before and np.isfinite(est.loss_)
    with pytest.raises(ValueError):  # nor does a fresh estimator train
        getattr(_est(kind, solver), method)(X, y, sample_weight=INVALID[case], **kw)


@pytest.mark.parametrize("case", list(INVALID))
def test_where_scikit_learn_differs_on_invalid_weights(case: str) -> None:
    """scikit-learn 1.9 refuses non-finite and all-zero weights as mlpx does, accepts
    negative ones (mlpx refuses them) and divides by a zero sum."""
    X, y = _data("classifier")
    w = INVALID[case]
    try:
        SkClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, y, sample_weight=w)
        sklearn = "trains"
    except ZeroDivisionError:
        sklearn = "ZeroDivisionError"
    except ValueError:
        sklearn = "ValueError"
    negative = bool(np.nanmin(np.where(np.isfinite(w), w, 0)) < 0)
    if not np.isfinite(w).all() or not w.any():
        assert sklearn == "ValueError"
    elif w.sum() == 0:
        assert sklearn == "ZeroDivisionError"
    else:
        assert negative and sklearn == "trains"
    with pytest.raises(ValueError):
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, y, sample_weight=w)


# ---------------------------------------------------------------- properties
_weights = st.lists(st.floats(0.0, 10.0, allow_nan=False, allow_subnormal=False), min_size=N, max_size=N).filter(
    lambda w: sum(w) > 1e-3)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=_weights, kind=st.sampled_from(["classifier", "regressor"]),
       solver=st.sampled_from(["adam", "sgd", "lbfgs"]))
def test_valid_weights_train(w: list, kind: str, solver: str) -> None:
    X, y = _data(kind)
    est = _est(kind, solver).fit(X, y, sample_weight=np.array(w))
    assert np.isfinite(est.loss_)
    assert all(np.isfinite(c).all() for c in est.coefs_ + est.intercepts_)


_bad_value = st.sampled_from([-1.0, -1e-300, -5.0, np.nan, np.inf, -np.inf])


@settings(max_examples=40, deadline=None)
@given(w=_weights, bad=_bad_value, where=st.integers(0, N - 1), zero=st.booleans(),
       kind=st.sampled_from(["classifier", "regressor"]), method=st.sampled_from(["fit", "partial_fit"]))
def test_every_invalid_weight_raises(w: list, bad: float, where: int, zero: bool, kind: str, method: str) -> None:
    w = np.zeros(N) if zero else np.array(w)
    if not zero:
        w[where] = bad
    X, y = _data(kind)
    est = _est(kind, "sgd")
    kw = {"classes": [0, 1]} if method == "partial_fit" and kind == "classifier" else {}
    with pytest.raises(ValueError):
        getattr(est, method)(X, y, sample_weight=w, **kw)
    assert not hasattr(est, "coefs_") or method == "partial_fit"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(0, 3), min_size=N, max_size=N).filter(lambda c: sum(c) >= 4),
       kind=st.sampled_from(["classifier", "regressor"]), alpha=st.sampled_from([0.0, 1e-2]))
def test_integer_weights_equal_repeated_rows_and_scikit_learn(counts: list, kind: str, alpha: float) -> None:
    X, y = _data(kind)
    w = np.array(counts)
    if kind == "classifier" and len(set(y[w > 0])) < 2:
        return  # one class left: a different problem, not a weighting
    params = dict(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=8, random_state=0, alpha=alpha)
    Est, Sk = (MLPClassifier, SkClassifier) if kind == "classifier" else (MLPRegressor, SkRegressor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = Est(**params).fit(X, y, sample_weight=w.astype(float))
        repeated = Est(**params).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
        sklearn = Sk(**params).fit(X, y, sample_weight=w.astype(float))
    for ref in (repeated, sklearn):
        for a, b in zip(weighted.coefs_ + weighted.intercepts_, ref.coefs_ + ref.intercepts_):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
        assert weighted.loss_ == pytest.approx(ref.loss_, rel=1e-8)
