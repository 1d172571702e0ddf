"""mlpx.MLPClassifier / MLPRegressor on the GPU backend (CuPy). Skipped without CUDA.

References: scikit-learn on the host, and the CPU backend started from the same
``random_state`` (identical initial weights, minibatch order and split), compared
at float32 tolerance.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import scipy.sparse as sp  # noqa: E402
from sklearn.datasets import load_digits, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402

from mlpx import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

# float32 on two devices: cuBLAS and OpenBLAS round differently (≈1e-7 relative per
# operation); after a few epochs weights agree to ~1e-4 relative.
F32 = dict(rtol=2e-3, atol=2e-4)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X[:600] / 16.0).astype(np.float32), y[:600]


def _close(a, b, **tol):
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(p, q, **tol)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_gpu_matches_cpu_same_random_state(digits, solver):
    X, y = digits
    params = dict(hidden_layer_sizes=(32,), random_state=0, max_iter=5, solver=solver)
    gpu = MLPClassifier(backend="gpu", **params).fit(X, y)
    cpu = MLPClassifier(backend="cpu", **params).fit(X, y)
    assert gpu.coefs_[0].dtype == np.float32 and isinstance(gpu.coefs_[0], np.ndarray)
    _close(gpu, cpu, **F32)
    assert gpu.n_iter_ == cpu.n_iter_
    assert (gpu.predict(X) == cpu.predict(X)).mean() > 0.99


def test_gpu_default_dtype_is_float32_for_float64_input(digits):
    X, y = digits
    est = MLPClassifier(backend="gpu", max_iter=2).fit(X.astype(np.float64), y)
    assert est.coefs_[0].dtype == np.float32
    est = MLPClassifier(backend="gpu", max_iter=2, dtype="float64").fit(X.astype(np.float64), y)
    assert est.coefs_[0].dtype == np.float64


def test_gpu_float64_follows_sklearn(digits):
    X, y = digits
    X = X.astype(np.float64)
    params = dict(hidden_layer_sizes=(32,), random_state=0, max_iter=5, solver="sgd")
    gpu = MLPClassifier(backend="gpu", dtype="float64", **params).fit(X, y)
    ref = SkClassifier(**params).fit(X, y)
    _close(gpu, ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gpu.loss_curve_, ref.loss_curve_, rtol=1e-9)


def test_gpu_partial_fit_and_pickle(digits):
    X, y = digits
    params = dict(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.05)
    gpu = MLPClassifier(backend="gpu", random_state=np.random.RandomState(0), **params)
    cpu = MLPClassifier(backend="cpu", random_state=np.random.RandomState(0), **params)
    for est in (gpu, cpu):
        est.partial_fit(X, y, classes=np.arange(10))
        est.partial_fit(X, y)
    _close(gpu, cpu, **F32)
    gpu2 = pickle.loads(pickle.dumps(gpu))
    np.testing.assert_allclose(gpu2.predict_proba(X), gpu.predict_proba(X), rtol=1e-6, atol=1e-7)
    gpu2.partial_fit(X, y)  # optimizer state survived the round trip
    cpu.partial_fit(X, y)
    _close(gpu2, cpu, **F32)
    # Move a fitted GPU model to the CPU by changing the parameter.
    gpu2.set_params(backend="cpu")
    np.testing.assert_allclose(gpu2.predict_proba(X), cpu.predict_proba(X), **F32)


def test_gpu_device_and_sparse_inputs(digits):
    cupy = pytest.importorskip("cupy")
    cpx_sparse = pytest.importorskip("cupyx.scipy.sparse")
    X, y = digits
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=3)
    ref = MLPClassifier(backend="gpu", **params).fit(X, y)
    on_device = MLPClassifier(backend="gpu", **params).fit(cupy.asarray(X), y)
    _close(on_device, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(on_device.predict(cupy.asarray(X)), ref.predict(X))
    Xs = sp.csr_matrix(X)
    for Xin in (Xs, cpx_sparse.csr_matrix(Xs)):
        est = MLPClassifier(backend="gpu", **params).fit(Xin, y)
        _close(est, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(est.predict_proba(Xin), ref.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_gpu_regressor_early_stopping_matches_cpu():
    X, y = make_regression(n_samples=400, n_features=10, noise=1.0, random_state=0)
    X, y = X.astype(np.float32), (y / y.std()).astype(np.float32)
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=15, early_stopping=True,
                  learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gpu = MLPRegressor(backend="gpu", **params).fit(X, y)
        cpu = MLPRegressor(backend="cpu", **params).fit(X, y)
    _close(gpu, cpu, **F32)
    np.testing.assert_allclose(gpu.validation_scores_, cpu.validation_scores_, rtol=1e-3, atol=1e-4)
