"""End-to-end checks that the boundary helpers are called where values enter: the
training loop, the estimators and ``Sequential.loss_and_grads``/``evaluate``.

Helpers: :func:`mlpx.validation.check_real` / ``check_int`` / ``check_bool``,
``check_X(..., dtype=)``, ``encode_targets(..., dtype=)``,
``check_sample_weight(..., dtype=)``, :func:`mlpx.callbacks.check_callbacks`,
:func:`mlpx.validation.check_dtype_range`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mlpx


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 3)), rng.integers(0, 2, 16), rng.normal(size=16)


def test_fit_refuses_a_callback_that_is_not_one(data) -> None:
    X, y, _ = data
    with pytest.raises(TypeError, match="mlpx.Callback"):
        mlpx.MLP([3, 2], seed=0).fit(X, y, epochs=1, callbacks=[object()])


def test_fit_l2_as_a_numpy_float_on_array_api_strict(data) -> None:
    X, y, _ = data
    runs = []
    for l2 in (0.1, np.float64(0.1)):
        model = mlpx.MLP([3, 2], backend="array_api_strict", seed=0)
        model.fit(X, y, epochs=2, l2=l2)
        runs.append(model.get_flat_params())
    np.testing.assert_array_equal(runs[1], runs[0])


def test_loss_and_grads_l2_as_a_numpy_float_on_array_api_strict(data) -> None:
    X, y, _ = data
    model = mlpx.MLP([3, 2], backend="array_api_strict", seed=0)
    assert model.loss_and_grads(X, y, l2=np.float64(0.1))[0] == model.loss_and_grads(X, y, l2=0.1)[0]


def test_regression_targets_beyond_float32_are_refused(data) -> None:
    X, _, yr = data
    yr = yr.copy()
    yr[3] = 1e39
    model = mlpx.MLP([3, 1], output="identity", seed=0)
    for call in (lambda: model.fit(X, yr, epochs=1), lambda: model.evaluate(X, yr),
                 lambda: model.loss_and_grads(X, yr)):
        with pytest.raises(ValueError, match="y holds values up to 1e\\+39"):
            call()


def test_sample_weights_beyond_float32_are_refused(data) -> None:
    X, y, _ = data
    w = np.ones(16)
    w[0] = 1e39
    model = mlpx.MLP([3, 2], seed=0)
    for call in (lambda: model.fit(X, y, epochs=1, sample_weight=w),
                 lambda: model.loss_and_grads(X, y, sample_weight=w)):
        with pytest.raises(ValueError, match="sample_weight holds values up to 1e\\+39"):
            call()


def test_a_minibatch_of_zero_weights_is_not_a_zero_division(data) -> None:
    X, y, _ = data
    w = np.zeros(16)
    w[0] = 1.0
    model = mlpx.MLP([3, 2], seed=0)
    try:
        model.fit(X, y, epochs=1, batch_size=1, shuffle=False, sample_weight=w)
    except ValueError as exc:
        assert "sample_weight" in str(exc)
    assert np.isfinite(model.get_flat_params()).all()


# ------------------------------------------------------------- estimators
def test_estimator_refuses_features_beyond_its_dtype(data) -> None:
    pytest.importorskip("sklearn")
    X, y, _ = data
    Xb = X.copy()
    Xb[0, 0] = 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        clf = mlpx.MLPClassifier(max_iter=5, dtype="float32").fit(X, y)
        for call in (lambda: clf.predict_proba(Xb), lambda: clf.score(Xb, y),
                     lambda: mlpx.MLPClassifier(max_iter=5, dtype="float32").fit(Xb, y)):
            with pytest.raises(ValueError, match="beyond float32's largest"):
                call()


def test_regressor_refuses_targets_beyond_its_dtype(data) -> None:
    pytest.importorskip("sklearn")
    X, _, yr = data
    yr = yr.copy()
    yr[0] = 1e39
    with warnings.catch_warnings(), pytest.raises(ValueError, match="y holds values up to 1e\\+39"):
        warnings.simplefilter("ignore")  # ConvergenceWarning
        mlpx.MLPRegressor(max_iter=5, dtype="float32").fit(X, yr)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_estimator_numpy_scalars_on_array_api_strict(data, solver) -> None:
    pytest.importorskip("sklearn")
    X, y, _ = data
    kw = dict(solver=solver, max_iter=3, random_state=0, backend="array_api_strict",
              learning_rate="invscaling")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        a = mlpx.MLPClassifier(alpha=np.float64(0.1), power_t=np.float64(0.5), **kw).fit(X, y)
        b = mlpx.MLPClassifier(alpha=0.1, power_t=0.5, **kw).fit(X, y)
    for ca, cb in zip(a.coefs_, b.coefs_):
        np.testing.assert_array_equal(ca, cb)


def test_estimator_refuses_fractional_hidden_layer_sizes(data) -> None:
    pytest.importorskip("sklearn")
    X, y, _ = data
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        mlpx.MLPClassifier(hidden_layer_sizes=(8.7,), max_iter=2).fit(X, y)


def test_estimator_minibatch_of_zero_weights(data) -> None:
    pytest.importorskip("sklearn")
    X, y, _ = data
    w = np.zeros(16)
    w[0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = mlpx.MLPClassifier(max_iter=2, batch_size=1, shuffle=False).fit(X, y, sample_weight=w)
    assert all(np.isfinite(c).all() for c in clf.coefs_)
