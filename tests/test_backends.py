"""The backend layer: the same assertions on every available backend, and the errors.

``backend`` (tests/conftest.py) is NumPy, array-api-strict and, where a GPU exists,
CuPy. References are plain NumPy on the host.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import mlpx
from mlpx.backends import (
    ArrayAPIBackend,
    Backend,
    BackendError,
    BackendUnavailableError,
    CupyBackend,
    DeviceMismatchError,
    NumpyBackend,
    get_backend,
)

array_api_strict = pytest.importorskip("array_api_strict")


def _host(be: Backend, x) -> np.ndarray:
    return np.asarray(be.to_numpy(x))


# ----------------------------------------------------- the shared assertions
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_all_transposes(backend, dtype: str, trans_a: bool, trans_b: bool) -> None:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 3))  # op(A) is (5, 3)
    B = rng.normal(size=(3, 4))  # op(B) is (3, 4)
    a = A.T.copy() if trans_a else A
    b = B.T.copy() if trans_b else B
    be = backend
    ad, bd = be.asarray(a, dtype), be.asarray(b, dtype)
    expected = A @ B
    tol = 1e-5 if dtype == "float32" else 1e-12
    got = be.gemm(ad, bd, trans_a=trans_a, trans_b=trans_b)
    np.testing.assert_allclose(_host(be, got), expected, rtol=tol, atol=tol)
    out = be.zeros((5, 4), dtype)
    ret = be.gemm(ad, bd, trans_a=trans_a, trans_b=trans_b, out=out)
    np.testing.assert_allclose(_host(be, ret), expected, rtol=tol, atol=tol)
    assert _host(be, ret).dtype == np.dtype(dtype)
    _check_out(be, ret, out, np.zeros((5, 4)))


def _check_out(be: Backend, ret, out, before: np.ndarray) -> None:
    """The result is ``out`` on backends that write in place; elsewhere a new array,
    and ``out`` keeps what it held (the generic path is functional)."""
    if be.in_place:
        assert ret is out
    else:
        assert ret is not out
        np.testing.assert_array_equal(_host(be, out), before)


def test_gemm_into_a_view_of_a_flat_buffer(backend) -> None:
    """Dense writes dW = Xᵀ dZ into a reshaped slice of the flat gradient buffer (on
    backends that write in place; the generic one returns dW, which the model gathers)."""
    be = backend
    flat = be.zeros(3 + 12, "float64")
    view = be.xp.reshape(flat[3:15], (3, 4))
    X = np.arange(6.0).reshape(2, 3)
    dZ = np.arange(8.0).reshape(2, 4) - 3
    dW = be.gemm(be.asarray(X, "float64"), be.asarray(dZ, "float64"), trans_a=True, out=view)
    np.testing.assert_allclose(_host(be, dW), X.T @ dZ)
    host = _host(be, flat)
    np.testing.assert_array_equal(host[:3], 0.0)
    np.testing.assert_allclose(host[3:].reshape(3, 4), X.T @ dZ if be.in_place else 0.0)


def test_sum(backend) -> None:
    be = backend
    x = np.arange(12.0).reshape(3, 4)
    xd = be.asarray(x, "float64")
    assert be.to_float(be.sum(xd)) == 66.0
    np.testing.assert_array_equal(_host(be, be.sum(xd, axis=0)), x.sum(0))
    out = be.zeros(3, "float64")
    ret = be.sum(xd, axis=1, out=out)
    np.testing.assert_array_equal(_host(be, ret), x.sum(1))
    _check_out(be, ret, out, np.zeros(3))


def test_take_rows(backend) -> None:
    be = backend
    x = np.arange(20.0).reshape(5, 4)
    idx = np.array([4, 0, 0, 2])
    xd, idd = be.asarray(x, "float32"), be.asarray(idx)
    np.testing.assert_array_equal(_host(be, be.take_rows(xd, idd)), x[idx])
    out = be.zeros((4, 4), "float32")
    ret = be.take_rows(xd, idd, out=out)
    np.testing.assert_array_equal(_host(be, ret), x[idx])
    _check_out(be, ret, out, np.zeros((4, 4)))


def test_transfer_round_trip_and_creation(backend) -> None:
    be = backend
    x = np.random.default_rng(1).normal(size=(3, 2))
    for dtype in ("float32", "float64"):
        back = _host(be, be.asarray(x, dtype))
        assert back.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back, x.astype(dtype))
    # no dtype: floats keep theirs, integers stay integers
    assert _host(be, be.asarray(x)).dtype == np.float64
    assert _host(be, be.asarray(np.arange(3))).dtype.kind == "i"
    for make in (be.zeros, be.empty):
        for dtype in ("float32", "float64"):
            a = make((2, 3), dtype)
            assert tuple(a.shape) == (2, 3)
            assert _host(be, a).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(_host(be, be.zeros(4, "float64")), np.zeros(4))
    np.testing.assert_array_equal(_host(be, be.arange(5)), np.arange(5))
    src, dst = be.asarray(x, "float64"), be.zeros((3, 2), "float64")
    assert be.copy(src, dst) is dst
    np.testing.assert_array_equal(_host(be, dst), x)
    assert be.to_float(be.asarray(np.array(2.5), "float64")) == 2.5


@pytest.mark.parametrize("bad", ["int32", "int64", "complex64", np.int8, "nonsense"])
def test_dtype_errors(backend, bad) -> None:
    be = backend
    with pytest.raises(TypeError, match="float32 or float64"):
        be.dtype(bad)
    with pytest.raises(TypeError, match="float32 or float64"):
        be.zeros(3, bad)
    with pytest.raises(TypeError, match="float32 or float64"):
        be.asarray(np.ones(3), dtype=bad)


def test_half_precision_compute_dtypes(backend) -> None:
    """float16 / bfloat16 exist where the library has them (mixed precision), else a clear error."""
    be = backend
    lib = be.xp.__name__.split(".")[0]
    if lib in ("numpy", "cupy"):
        assert be.dtype("float16") == be.xp.float16
        with np.errstate(over="ignore"):
            x = be.asarray(np.array([1.0, 2.0**-20, 70000.0]), dtype="float16")
        np.testing.assert_array_equal(_host(be, x), np.array([1.0, 2.0**-20, np.inf], np.float16))
        # sums of half-precision arrays accumulate in float32: 4096 ones make 4096, where a
        # float16 running sum stops at 2048
        assert float(_host(be, be.sum(be.asarray(np.ones((4096, 1)), "float16"), axis=0))[0]) == 4096.0
    else:
        with pytest.raises(TypeError, match="no float16"):
            be.dtype("float16")
    if lib in ("numpy", "cupy"):
        ml_dtypes = pytest.importorskip("ml_dtypes")
        assert be.dtype("bfloat16") == ml_dtypes.bfloat16
    else:
        with pytest.raises(TypeError, match="no bfloat16"):
            be.dtype("bfloat16")


def test_dtype_accepts_names_and_dtypes(backend) -> None:
    be = backend
    assert be.dtype("float32") == be.dtype(np.float32) == be.dtype(np.dtype("float32"))
    assert be.dtype(be.xp.float64) == be.xp.float64


def test_describe_and_repr(backend) -> None:
    info = backend.describe()
    assert {"backend", "library", "device"} <= set(info)
    assert info["backend"] == backend.name
    assert backend.name in repr(backend)


def test_run_uses_the_most_specific_variant(backend) -> None:
    k = mlpx.backends.Kernel(lambda xp, a: "generic", name="probe")
    k.register("numpy")(lambda xp, a: "numpy")
    k.register("cupy")(lambda xp, a: "cupy")
    expected = backend.kinds[0] if backend.kinds else "generic"
    assert backend.run(k, None) == expected
    assert "probe" in repr(k)


def test_a_model_trains_and_predicts(backend) -> None:
    """The same small model code on each backend learns a separable problem."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    model = mlpx.MLP([3, 8, 2], activation="tanh", backend=backend, seed=0)
    hist = model.fit(X, y, epochs=30, batch_size=16, optimizer=mlpx.Adam(lr=0.05))
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert (model.predict(X) == y).mean() > 0.9


# ------------------------------------------------------------ get_backend
def test_get_backend_names() -> None:
    assert isinstance(get_backend("cpu"), NumpyBackend)
    assert get_backend("numpy") is get_backend("CPU") is get_backend(None)
    be = NumpyBackend()
    assert get_backend(be) is be  # an instance is accepted wherever a name is
    strict = get_backend("array_api_strict")
    assert isinstance(strict, ArrayAPIBackend) and strict.kinds == ()
    assert isinstance(get_backend("array-api:array_api_strict"), ArrayAPIBackend)
    assert "cpu" in mlpx.available_backends() and "array_api_strict" in mlpx.available_backends()


@pytest.mark.parametrize("name", ["tpu", "opencl", "gpu0x", ""])
def test_unknown_backend_lists_valid_names(name: str) -> None:
    with pytest.raises(ValueError) as err:
        get_backend(name)
    msg = str(err.value)
    for valid in ("cpu", "gpu", "gpu:N", "auto", "array_api_strict"):
        assert valid in msg


def test_backend_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="valid names"):
        get_backend(3.5)
    with pytest.raises(ValueError, match="gpu:N"):
        get_backend("gpu:x")


def test_unknown_array_api_module() -> None:
    with pytest.raises(BackendError, match="not a known Array API namespace") as err:
        get_backend("array-api:no_such_module_xyz")
    assert not isinstance(err.value, BackendUnavailableError)  # refused, not "missing"


@pytest.mark.parametrize("name", ["os", "this", "antigravity", "subprocess", "numpy.linalg"])
def test_array_api_names_outside_the_known_namespaces_are_not_imported(name: str, capsys) -> None:
    """Importing runs a module's code ("this" prints, "antigravity" opens a browser):
    a name that is not a known Array API namespace is refused before any import."""
    before = set(sys.modules)
    for spec in (f"array-api:{name}", f"array-api:{name}[cpu]"):
        with pytest.raises(BackendError, match=rf"'{name}' is not a known Array API namespace.*ArrayAPIBackend\(module\)"):
            get_backend(spec)
        with pytest.raises(BackendError, match="not a known Array API namespace"):
            ArrayAPIBackend(name)
    assert set(sys.modules) - before == set()
    assert capsys.readouterr().out == ""


def test_a_module_that_is_not_an_array_api_namespace_is_refused() -> None:
    import os

    with pytest.raises(TypeError, match="'os' is not an Array API namespace"):
        ArrayAPIBackend(os)
    with pytest.raises(TypeError, match="not an Array API namespace"):
        ArrayAPIBackend(types.SimpleNamespace(asarray=lambda x: x, __name__="fake"))


def test_a_namespace_passed_as_a_module_resolves_by_name_afterwards(monkeypatch) -> None:
    """The documented way to use a namespace mlpx does not list: pass the module.
    Its name then resolves in this process (pickles, Sequential.to)."""
    from mlpx.backends import array_api_backend as aab

    monkeypatch.setattr(aab, "KNOWN_NAMESPACES", aab.KNOWN_NAMESPACES - {"array_api_strict"})
    monkeypatch.setattr(aab, "_GIVEN", set())
    with pytest.raises(BackendError, match="not a known"):
        get_backend("array_api_strict")
    be = ArrayAPIBackend(array_api_strict)
    assert be.name == "array_api_strict"
    again = get_backend(be.spec)
    assert isinstance(again, ArrayAPIBackend) and again.xp is be.xp


def test_known_array_api_namespaces_still_resolve() -> None:
    for spec in ("array_api_strict", "array-api:array_api_strict", "array-api:numpy"):
        assert isinstance(get_backend(spec), ArrayAPIBackend)


# ------------------------------------------------------------- pickling
def _cpu_specs() -> list:
    specs = ["cpu", "cpu:numpy"]
    for blas_name in ("mkl", "blis"):
        try:
            get_backend(f"cpu:{blas_name}")
        except BackendUnavailableError:
            continue
        specs.append(f"cpu:{blas_name}")
    return specs


@pytest.mark.parametrize("spec", _cpu_specs() + ["array_api_strict", "array-api:numpy", "array_api_strict[device1]",
                                                 "array-api:torch"])
def test_backends_pickle_and_copy_as_their_name(spec: str) -> None:
    import copy
    import pickle

    if spec == "array-api:torch":
        pytest.importorskip("torch")
    be = get_backend(spec)
    for twin in (pickle.loads(pickle.dumps(be)), copy.deepcopy(be), copy.copy(be)):
        assert type(twin) is type(be) and twin.spec == be.spec and twin.name == be.name
        assert twin.xp is be.xp and str(twin.device) == str(be.device)
        if isinstance(be, NumpyBackend):
            assert twin is be  # the shared CPU backend, its BLAS included
            assert twin.blas == be.blas
    data = pickle.dumps(be)
    assert b"get_backend" in data and be.spec.encode() in data  # the name, no namespace module


def test_the_default_cpu_spec_follows_mlpx_cpu_blas() -> None:
    assert get_backend("cpu").spec == "cpu"
    assert get_backend("cpu:numpy").spec == "cpu:numpy"


def test_a_hand_built_backend_refuses_to_pickle_clearly() -> None:
    import pickle

    with pytest.raises(TypeError, match="only the backends get_backend builds"):
        pickle.dumps(Backend(np))


@pytest.fixture
def no_gpu_cache(monkeypatch: pytest.MonkeyPatch):
    """Let get_backend("gpu") re-check CuPy instead of returning a cached backend."""
    import mlpx.backends as backends

    monkeypatch.setattr(backends, "_GPU_CACHE", {})


def _fake_cupy(n_devices: int) -> types.ModuleType:
    """A stand-in for the ``cupy`` module: enough for device discovery, no arrays."""
    cupy = types.ModuleType("cupy")

    class Device:
        def __init__(self, i: int = 0) -> None:
            self.id = i

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def synchronize(self) -> None:
            pass

    class ndarray:  # noqa: N801 - CuPy's spelling
        pass

    runtime = types.SimpleNamespace(getDeviceCount=lambda: n_devices)
    cupy.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    cupy.ndarray = ndarray
    cupy.asarray = np.asarray
    cupy.float32, cupy.float64 = np.float32, np.float64
    cupy.__version__ = "14.2.0"  # a supported CuPy (the backend refuses < 14)
    return cupy


def test_gpu_without_cupy(monkeypatch: pytest.MonkeyPatch, no_gpu_cache) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendUnavailableError) as err:
        get_backend("gpu")
    assert 'pip install "mlpx[gpu]"' in str(err.value)
    assert isinstance(err.value, BackendError) and isinstance(err.value, RuntimeError)
    assert not mlpx.backends.cuda_available()
    with pytest.raises(BackendUnavailableError, match="mlpx\\[gpu\\]"):
        mlpx.MLP([2, 2], backend="gpu")


def test_gpu_without_a_device(monkeypatch: pytest.MonkeyPatch, no_gpu_cache) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(0))
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        get_backend("gpu")
    assert not mlpx.backends.cuda_available()


def test_gpu_device_count_error_reads_as_no_device(monkeypatch: pytest.MonkeyPatch, no_gpu_cache) -> None:
    cupy = _fake_cupy(0)

    def broken() -> int:
        raise RuntimeError("cudaErrorInsufficientDriver")

    cupy.cuda.runtime.getDeviceCount = broken
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        get_backend("gpu")


def test_gpu_n_selection(monkeypatch: pytest.MonkeyPatch, no_gpu_cache) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(2))
    be = get_backend("gpu:1")
    assert isinstance(be, CupyBackend) and be.name == "gpu:1" and be.device.id == 1 and be.is_gpu
    assert get_backend("cuda:1") is be  # cached per device
    assert get_backend("gpu").name == "gpu:0"
    with pytest.raises(BackendUnavailableError, match=r"gpu:0 \.\. gpu:1"):
        get_backend("gpu:5")


def test_gpu_backend_moves_host_arrays_and_rejects_them_in_compute(
    monkeypatch: pytest.MonkeyPatch, no_gpu_cache
) -> None:
    """asarray is *the* way to move host data; a host array inside gemm is an error."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1))
    be = get_backend("gpu")
    moved = be.asarray(np.ones((2, 2)), dtype="float32")  # must not be refused
    assert moved.dtype == np.float32
    with pytest.raises(DeviceMismatchError, match="asarray"):
        be.gemm(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(DeviceMismatchError, match="backend.asarray"):
        be.check(np.ones(3))


def test_auto_falls_back_to_cpu_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_gpu_cache
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    with caplog.at_level(logging.INFO, logger="mlpx"):
        be = get_backend("auto")
    assert isinstance(be, NumpyBackend)
    assert any("auto" in r.getMessage() and "cpu" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------ device mixing
def test_numpy_array_handed_to_strict_backend(strict_backend) -> None:
    be = strict_backend
    with pytest.raises(DeviceMismatchError, match="backend.asarray"):
        be.check(np.ones(3))
    w = be.asarray(np.ones((2, 2)), "float64")
    with pytest.raises(DeviceMismatchError, match="NumPy array"):
        be.gemm(np.ones((2, 2)), w)
    model = mlpx.MLP([2, 3, 2], backend=be, seed=0)
    with pytest.raises(DeviceMismatchError):
        model.forward(np.ones((4, 2), dtype=np.float32))
    # ...while the public entry points take host data and move it
    assert model.predict(np.ones((4, 2))).shape == (4,)


def test_strict_array_handed_to_cpu_backend() -> None:
    """Host-resident Array API arrays convert on the host (through ``__array__``)."""
    x = array_api_strict.asarray([1.0, 2.0])
    got = NumpyBackend().asarray(x)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, [1.0, 2.0])


def test_second_strict_device_rejects_cpu_device_arrays() -> None:
    dev1 = ArrayAPIBackend("array_api_strict", device="device1")
    assert "device1" in dev1.name
    x_cpu = array_api_strict.asarray([1.0, 2.0])
    with pytest.raises(DeviceMismatchError) as err:
        dev1.asarray(x_cpu)
    msg = str(err.value)
    assert "device1" in msg and "CPU_DEVICE" in msg and "to_device" in msg
    # the suggested move works
    moved = dev1.asarray(dev1.to_numpy(x_cpu))
    dev1.check(moved)


def test_default_strict_backend_rejects_device1_arrays(strict_backend) -> None:
    x1 = array_api_strict.asarray([[1.0, 2.0]], device=array_api_strict.Device("device1"))
    with pytest.raises(DeviceMismatchError, match="device1"):
        strict_backend.check(x1)
    model = mlpx.MLP([2, 3, 2], backend=strict_backend, seed=0)
    with pytest.raises(DeviceMismatchError, match="device1"):
        model.predict(x1)


def test_unknown_strict_device() -> None:
    with pytest.raises(BackendUnavailableError, match="device1"):
        ArrayAPIBackend("array_api_strict", device="device99")


def test_model_on_the_second_strict_device_matches_cpu() -> None:
    """Same seed, same data: a model on device1 trains exactly as on the default device."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    results = []
    for be in (ArrayAPIBackend("array_api_strict"), ArrayAPIBackend("array_api_strict", device="device1")):
        model = mlpx.MLP([3, 4, 2], backend=be, seed=1)
        model.fit(X, y, epochs=2, batch_size=8, validation_data=(X, y))
        results.append((model.get_flat_params(), model.predict_proba(X)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


# ---------------------------------------------------------------- imports
def test_importing_mlpx_does_not_import_cupy() -> None:
    """Run in a fresh interpreter that records any attempt to import CuPy."""
    code = textwrap.dedent(
        """
        import sys
        attempts = []

        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "cupy":
                    attempts.append(name)
                return None

        sys.meta_path.insert(0, Spy())
        import mlpx, mlpx.backends
        from mlpx.backends import get_backend
        get_backend("cpu")
        assert "cupy" not in sys.modules, "cupy in sys.modules"
        assert not attempts, f"tried to import {attempts}"
        print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"
