"""CPU BLAS providers (mlpx.backends.blas): every installed one against a float64 reference.

The reference is ``numpy.einsum`` in float64 with ``optimize=False`` (a plain loop, no
BLAS), so the "numpy" provider is not checked against itself. Providers that are not
installed skip with the command that installs them.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mlpx
from mlpx.backends import BackendUnavailableError, NumpyBackend, blas, get_backend


def _provider_or_skip(name: str) -> NumpyBackend:
    try:
        return NumpyBackend(blas=name)
    except BackendUnavailableError as e:
        pytest.skip(f"{e}")


@pytest.fixture(params=blas.BLAS_PROVIDERS)
def provider(request) -> NumpyBackend:
    return _provider_or_skip(request.param)


def _reference(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool) -> np.ndarray:
    A = (a.T if trans_a else a).astype(np.float64)
    B = (b.T if trans_b else b).astype(np.float64)
    return np.einsum("ik,kj->ij", A, B, optimize=False)


def _tol(dtype: str) -> float:
    return 2e-5 if dtype == "float32" else 1e-12


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (64, 130, 33)])
def test_every_transpose_and_dtype(provider, dtype, trans_a, trans_b, shape) -> None:
    m, n, k = shape
    rng = np.random.default_rng(m * n + k)
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    ret = provider.gemm(a, b, trans_a=trans_a, trans_b=trans_b, out=out)
    assert ret is out and out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out, _reference(a, b, trans_a, trans_b), rtol=_tol(dtype), atol=_tol(dtype) * k)
    fresh = provider.gemm(a, b, trans_a=trans_a, trans_b=trans_b)  # no out: allocated
    np.testing.assert_allclose(fresh, out, rtol=_tol(dtype), atol=_tol(dtype) * k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_with_a_leading_dimension_and_a_view_as_out(provider, dtype) -> None:
    """Row-strided operands (column slices of wider arrays) and out inside a flat buffer.

    The row stride reaches BLAS as the leading dimension; getting it wrong reads the
    wrong elements, which the reference catches.
    """
    rng = np.random.default_rng(1)
    wide_a = rng.normal(size=(9, 20)).astype(dtype)
    wide_b = rng.normal(size=(6, 30)).astype(dtype)
    a = wide_a[:, 2:8]  # (9, 6), row stride 20
    b = wide_b[:, 5:16]  # (6, 11), row stride 30
    flat = np.zeros(4 + 9 * 11, dtype)
    out = flat[4:].reshape(9, 11)
    provider.gemm(a, b, out=out)
    np.testing.assert_allclose(out, _reference(a, b, False, False), rtol=_tol(dtype), atol=_tol(dtype) * 6)
    np.testing.assert_array_equal(flat[:4], 0.0)
    # dW = Xᵀ dZ with a row-strided X
    dZ = rng.normal(size=(9, 4)).astype(dtype)
    dW = np.empty((6, 4), dtype)
    provider.gemm(a, dZ, trans_a=True, out=dW)
    np.testing.assert_allclose(dW, _reference(a, dZ, True, False), rtol=_tol(dtype), atol=_tol(dtype) * 9)


def test_products_blas_cannot_take_still_come_out_right(provider) -> None:
    """Column-strided, half-precision and aliased operands go to numpy.matmul."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(8, 12)).astype(np.float32)
    b = rng.normal(size=(6, 5)).astype(np.float32)
    a_cols = a[:, ::2]  # column stride 2: no BLAS layout
    got = provider.gemm(a_cols, b)
    np.testing.assert_allclose(got, _reference(a_cols, b, False, False), rtol=2e-5, atol=1e-4)
    h = provider.gemm(a_cols.astype(np.float16), b.astype(np.float16), out=np.empty((8, 5), np.float16))
    np.testing.assert_allclose(h, _reference(a_cols, b, False, False), rtol=2e-2, atol=5e-2)
    # out aliasing an input: BLAS would read what it already overwrote
    sq = rng.normal(size=(5, 5)).astype(np.float64)
    expected = _reference(sq, sq, False, True)
    provider.gemm(sq, sq, trans_b=True, out=sq)
    np.testing.assert_allclose(sq, expected, rtol=1e-12, atol=1e-12)
    mixed = provider.gemm(a, a.astype(np.float64), trans_b=True)  # mixed dtypes: NumPy promotes
    np.testing.assert_allclose(mixed, _reference(a, a, False, True), rtol=1e-5, atol=1e-4)


def test_shape_mismatch_is_numpys_error(provider) -> None:
    with pytest.raises(ValueError):
        provider.gemm(np.ones((3, 4), np.float32), np.ones((5, 2), np.float32), out=np.empty((3, 2), np.float32))
    with pytest.raises(ValueError):
        provider.gemm(np.ones((3, 4), np.float32), np.ones((4, 2), np.float32), out=np.empty((3, 3), np.float32))


@pytest.mark.parametrize("name", ["mkl", "blis"])
def test_training_on_another_blas_matches_numpy(name) -> None:
    """The same model trained on another BLAS ends within float32 rounding of NumPy's."""
    be = _provider_or_skip(name)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + (X[:, 3] > 1)
    models = []
    for backend in ("cpu", be):
        m = mlpx.MLP([20, 32, 16, 3], activation="relu", output="softmax", backend=backend, dtype="float32", seed=0)
        m.fit(X, y, epochs=3, batch_size=32, optimizer="adam", lr=1e-2, shuffle=True)
        models.append(m)
    ref, other = (np.asarray(m.backend.to_numpy(m.params)) for m in models)
    assert not np.array_equal(ref, 0)
    np.testing.assert_allclose(other, ref, rtol=1e-3, atol=1e-4)
    # the choice of BLAS is not part of the model: it saves and pickles as "cpu"
    clone = pickle.loads(pickle.dumps(models[1]))
    assert clone.backend.name == "cpu"
    np.testing.assert_array_equal(clone.backend.to_numpy(clone.params), other)


def test_names_and_errors(monkeypatch) -> None:
    assert get_backend("cpu:numpy").blas == "numpy"
    assert get_backend("CPU:Numpy") is get_backend("cpu:numpy")
    with pytest.raises(ValueError, match="unknown CPU BLAS 'openblas2'.*numpy, mkl, blis"):
        get_backend("cpu:openblas2")
    with pytest.raises(ValueError, match="from MLPX_CPU_BLAS"):
        monkeypatch.setenv("MLPX_CPU_BLAS", "nope")
        NumpyBackend()
    monkeypatch.setenv("MLPX_CPU_BLAS", "numpy")
    assert NumpyBackend().blas == "numpy"
    assert "numpy" in blas.available_providers()
    assert get_backend("cpu").describe()["blas"].startswith("numpy ")


def test_a_missing_library_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(blas, "_LOADED", {})
    monkeypatch.setitem(sys.modules, "blis.py", None)  # import blis.py -> ImportError
    with pytest.raises(BackendUnavailableError, match="pip install blis"):
        NumpyBackend(blas="blis")
    monkeypatch.setattr(blas.ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(OSError("not found")))
    with pytest.raises(BackendUnavailableError, match="pip install mkl"):
        NumpyBackend(blas="mkl")
    assert "blis" not in blas.available_providers()


def test_importing_mlpx_loads_no_blas_and_reads_no_environment() -> None:
    """A bad MLPX_CPU_BLAS fails where the CPU backend is first used, not at import."""
    code = textwrap.dedent("""
        import sys, mlpx
        assert "blis" not in sys.modules and "blis.py" not in sys.modules
        try:
            mlpx.backends.get_backend("cpu")
        except ValueError as e:
            print("raised:", e)
    """)
    env = {**os.environ, "MLPX_CPU_BLAS": "bogus"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "raised: unknown CPU BLAS 'bogus' (from MLPX_CPU_BLAS)" in out.stdout


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer:UserWarning")  # 20 iterations on purpose
@pytest.mark.parametrize("name", ["mkl", "blis"])
def test_estimator_takes_a_blas_by_name(name) -> None:
    """backend="cpu:<blas>" reaches the estimators; float64 products (the estimator default)."""
    _provider_or_skip(name)
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X[:400] / 16.0
    kw = dict(hidden_layer_sizes=(32,), max_iter=20, random_state=0)
    ref = mlpx.MLPClassifier(backend="cpu", **kw).fit(X, y[:400])
    other = mlpx.MLPClassifier(backend=f"cpu:{name}", **kw).fit(X, y[:400])
    for a, b in zip(ref.coefs_, other.coefs_):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)  # float64: rounding order only
    assert (other.predict(X) == ref.predict(X)).mean() == 1.0
