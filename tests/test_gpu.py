"""GPU tests (CuPy + CUDA): parity with the CPU, gradient checks, kernel variants,
device errors, device selection, and GPU → CPU model files.

Every test here is marked ``gpu``; tests/conftest.py skips them, with the reason,
where CuPy or a CUDA device is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

import mlpx
from mlpx.backends import DeviceMismatchError, get_backend
from mlpx.gradcheck import check_gradients

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu():
    return get_backend("gpu")


def _data(n: int = 200, d: int = 10, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(k, d))
    y = np.arange(n) % k
    return centers[y] + rng.normal(size=(n, d)), y


@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "gelu"])
def test_cpu_gpu_parity_after_a_few_epochs(gpu, activation: str) -> None:
    """Same seed, same data, same minibatches: float32 weights agree within tolerance."""
    X, y = _data()
    weights = []
    for be in ("cpu", gpu):
        model = mlpx.MLP([10, 32, 16, 4], activation=activation, backend=be, seed=0, dropout=0.1)
        model.fit(X, y, epochs=3, batch_size=32, optimizer=mlpx.Adam(lr=1e-3))
        weights.append(model.get_flat_params())
    assert weights[0].dtype == weights[1].dtype == np.float32
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-3, atol=1e-4)


def test_cpu_gpu_parity_float64_is_tight(gpu) -> None:
    X, y = _data()
    out = []
    for be in ("cpu", gpu):
        model = mlpx.MLP([10, 16, 4], activation="tanh", backend=be, dtype="float64", seed=1)
        model.fit(X, y, epochs=2, batch_size=50, optimizer=mlpx.SGD(lr=0.1, momentum=0.9, nesterov=True))
        out.append((model.get_flat_params(), model.predict_proba(X)))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-9, atol=1e-12)


def test_same_seed_same_initial_weights_on_gpu(gpu) -> None:
    a = mlpx.MLP([10, 8, 3], seed=7)
    b = mlpx.MLP([10, 8, 3], seed=7, backend=gpu)
    np.testing.assert_array_equal(a.get_flat_params(), b.get_flat_params())


@pytest.mark.parametrize("output", ["softmax", "logistic", "identity", "exp"])
def test_gradient_check_on_gpu_float64(gpu, output: str) -> None:
    X, _ = _data(n=6, d=4)
    rng = np.random.default_rng(2)
    y = {
        "softmax": rng.integers(0, 3, 6),
        "logistic": (rng.random((6, 3)) > 0.5).astype(float),
        "identity": rng.normal(size=(6, 3)),
        "exp": rng.poisson(1.0, (6, 3)).astype(float),
    }[output]
    model = mlpx.MLP([4, 5, 3], activation="tanh", output=output, backend=gpu, dtype="float64", seed=0, dropout=0.2)
    r = check_gradients(model, X, y, sample_weight=np.linspace(0.5, 2, 6), l2=0.3, inputs=True)
    assert r["max_rel_error"] < 1e-6, r["errors"]


def _kernel_tests():
    """The CPU kernel tests (case table and comparison), loaded by path (tests/ is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_mlpx_kernel_cases", Path(__file__).with_name("test_kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_variants_on_cupy_match_the_generic_definition(gpu, dtype: str) -> None:
    """What runs on the GPU (the "cupy" variant, else the "numpy" one, on CuPy arrays)
    against the generic definition run by NumPy on the host: same results, each in the
    device buffer it belongs to, other inputs untouched (tests/test_kernels.py)."""
    import zlib

    cp = gpu.xp
    mod = _kernel_tests()
    kernels = mod.all_kernels()
    for name, build in sorted(mod.CASES.items()):
        fast = kernels[name].resolve(gpu.kinds)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        for label, args, kwargs in build(rng, dtype):
            with gpu.device:
                mod.compare_variant(name, fast, args, kwargs, dtype, f"{name} [{label}] {dtype}",
                                    xp=cp, to_device=cp.asarray, to_host=cp.asnumpy, reduction_rtol=10.0)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_gelu_backward_kernel_in_half_precision_beyond_256(gpu, name: str) -> None:
    """The CUDA kernel computes g' in float: no NaN where z² overflows float16 (|z| >= 256)."""
    import math

    from mlpx.activations import gelu_backward

    if name == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
        eps = 2.0**-7
    else:
        dtype, eps = np.float16, 2.0**-10
    c, a = math.sqrt(2.0 / math.pi), 0.044715
    z = np.array([-65504.0, -300.0, -256.0, -3.0, -0.5, 0.0, 1.0, 4.0, 255.0, 256.0, 1000.0, 60000.0]).astype(dtype)
    dH = np.linspace(-2.0, 3.0, z.size).astype(dtype)
    z64, dH64 = z.astype(np.float64), dH.astype(np.float64)
    u = c * (z64 + a * z64**3)
    sech2 = np.where(np.abs(u) > 40.0, 0.0, 1.0 / np.cosh(np.clip(u, -40.0, 40.0)) ** 2)
    ref = dH64 * (0.5 * (1.0 + np.tanh(u)) + 0.5 * z64 * sech2 * c * (1.0 + 3.0 * a * z64**2))
    cp = gpu.xp
    out = cp.empty(z.shape, dtype=dtype)
    assert gelu_backward.resolve(gpu.kinds) is gelu_backward.variants["cupy"]
    got = cp.asnumpy(gpu.run(gelu_backward, cp.asarray(dH), cp.asarray(z), None, out)).astype(np.float64)
    assert np.isfinite(got).all(), got
    np.testing.assert_allclose(got, ref, rtol=eps, atol=eps * 1e-3)


def test_numpy_array_handed_to_gpu_computation(gpu) -> None:
    w = gpu.asarray(np.ones((3, 2)), "float32")  # asarray moves host data: fine
    with pytest.raises(DeviceMismatchError, match="asarray"):
        gpu.gemm(np.ones((4, 3), dtype=np.float32), w)
    model = mlpx.MLP([3, 2], backend=gpu, seed=0)
    with pytest.raises(DeviceMismatchError):
        model.forward(np.ones((4, 3), dtype=np.float32))
    # and the reverse: a CuPy array handed to the CPU backend
    with pytest.raises(DeviceMismatchError, match="to_numpy|asnumpy"):
        get_backend("cpu").asarray(w)
    # public entry points take device arrays too
    assert model.predict(gpu.asarray(np.ones((4, 3)), "float32")).shape == (4,)


def test_gpu_n_selection(gpu) -> None:
    import cupy

    n = cupy.cuda.runtime.getDeviceCount()
    assert get_backend("gpu") is get_backend("gpu:0") and gpu.name == "gpu:0"
    last = get_backend(f"gpu:{n - 1}")
    assert last.name == f"gpu:{n - 1}" and last.device.id == n - 1
    model = mlpx.MLP([3, 2], backend=last, seed=0)
    assert model.params.device.id == n - 1
    with pytest.raises(mlpx.backends.BackendUnavailableError, match=f"gpu:{n}"):
        get_backend(f"gpu:{n}")
    assert get_backend("auto").is_gpu
    info = gpu.describe()
    assert info["library"] == "cupy" and info["device"]


def test_save_on_gpu_load_on_cpu(gpu, tmp_path) -> None:
    X, y = _data()
    model = mlpx.MLP([10, 16, 4], backend=gpu, seed=0)
    model.fit(X, y, epochs=2)
    path = tmp_path / "gpu_model.npz"
    model.save(path)
    cpu_model = mlpx.load(path, backend="cpu")
    np.testing.assert_array_equal(cpu_model.get_flat_params(), model.get_flat_params())
    np.testing.assert_allclose(cpu_model.predict_proba(X), model.predict_proba(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cpu_model.predict(X), model.predict(X))
    back = cpu_model.to("gpu")
    np.testing.assert_array_equal(back.get_flat_params(), model.get_flat_params())


def test_divergence_on_gpu_keeps_finite_weights(gpu) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(scale=100.0, size=(64, 4))
    y = X @ np.array([3.0, -2.0, 1.0, 5.0]) * 100
    model = mlpx.MLP([4, 16, 1], output="identity", backend=gpu, seed=0)
    with pytest.raises(mlpx.TrainingDivergedError):
        model.fit(X, y, epochs=50, batch_size=8, optimizer=mlpx.SGD(lr=10.0))
    assert np.isfinite(model.get_flat_params()).all()
