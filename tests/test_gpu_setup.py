"""GPU set-up without a GPU: the CuPy version policy, device selection, NCCL's presence.

A small fake ``cupy`` module stands in for CuPy: it records which device is current
when work is launched, so ``gpu:1`` can be checked to compute on device 1.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from mlpx.backends import BackendUnavailableError, kernel
from mlpx.backends.cupy_backend import CupyBackend, cuda_available, gpu_status, import_cupy


def fake_cupy(version: str = "14.2.0", n_devices: int = 2) -> tuple[types.ModuleType, Any]:
    """A CuPy look-alike on host arrays; ``state.current`` is the current device."""
    state = types.SimpleNamespace(current=0, launches=[])
    cupy = types.ModuleType("cupy")

    class Device:
        def __init__(self, i: int = 0) -> None:
            self.id = i
            self._outer: list[int] = []

        def __enter__(self):
            self._outer.append(state.current)
            state.current = self.id
            return self

        def __exit__(self, *exc) -> None:
            state.current = self._outer.pop()

        def synchronize(self) -> None:
            pass

    class ndarray:  # noqa: N801 - CuPy's spelling
        pass

    def launch(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **kw: Any) -> Any:
            state.launches.append((name, state.current))
            return fn(*a, **kw)

        return wrapped

    cupy.__version__ = version
    cupy.ndarray = ndarray
    cupy.float32, cupy.float64 = np.float32, np.float64
    cupy.asarray = np.asarray
    cupy.copyto = launch("copyto", np.copyto)
    cupy.matmul = launch("matmul", np.matmul)
    cupy.sum = launch("sum", np.sum)
    cupy.take = launch("take", np.take)
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: n_devices,
        driverGetVersion=lambda: 12080,
        runtimeGetVersion=lambda: 12090,
        getDeviceProperties=lambda i: {"name": b"Fake H200", "major": 9, "minor": 0, "totalGlobalMem": 141 * 2**30},
    )
    cupy.cuda = types.ModuleType("cupy.cuda")
    cupy.cuda.runtime = runtime
    cupy.cuda.Device = Device
    return cupy, state


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    def _install(cupy: types.ModuleType) -> None:
        monkeypatch.setitem(sys.modules, "cupy", cupy)
        monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)

    return _install


# ------------------------------------------------------------ version policy
@pytest.mark.parametrize("version", ["13.6.0", "12.3.0", "11.6.0"])
def test_cupy_older_than_14_is_refused_with_the_upgrade_command(install, version: str) -> None:
    install(fake_cupy(version)[0])
    with pytest.raises(BackendUnavailableError) as err:
        import_cupy()
    msg = str(err.value)
    assert f"CuPy {version}" in msg and ">= 14" in msg
    assert 'pip install -U "cupy-' in msg and '[ctk]>=14"' in msg
    assert not cuda_available()
    st = gpu_status()
    assert st.cupy_version == version and st.cupy_error == msg and not st.usable
    with pytest.raises(BackendUnavailableError, match=version):
        CupyBackend(0)


@pytest.mark.parametrize("version", ["14.0.0", "14.2.0", "15.0.0rc1"])
def test_cupy_14_and_newer_is_accepted(install, version: str) -> None:
    install(fake_cupy(version)[0])
    assert import_cupy().__version__ == version
    assert cuda_available()


def test_status_reads_devices_and_driver(install) -> None:
    install(fake_cupy(n_devices=2)[0])
    st = gpu_status(details=True)
    assert st.usable and st.device_count == 2 and st.driver_version == 12080 and st.runtime_version == 12090
    assert st.devices[1] == {"name": "Fake H200", "compute_capability": "9.0", "memory_gib": 141.0}


def test_status_with_a_driver_error_reads_as_no_device(install) -> None:
    cupy, _ = fake_cupy()

    def no_driver() -> int:
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    cupy.cuda.runtime.getDeviceCount = no_driver
    install(cupy)
    st = gpu_status(details=True)
    assert not st.usable and st.device_count == 0 and "InsufficientDriver" in st.device_error


# ------------------------------------------------------- device selection
@kernel
def _probe(xp: Any, out: Any) -> Any:
    out[...] = 1.0
    return out


def test_gpu_1_launches_copies_kernels_and_products_on_device_1(install) -> None:
    cupy, state = fake_cupy(n_devices=2)
    install(cupy)
    where: list[int] = []

    @_probe.register("cupy")
    def _probe_cupy(xp: Any, out: Any) -> Any:
        where.append(state.current)
        out[...] = 2.0
        return out

    try:
        be = CupyBackend(1)
        a = np.ones((2, 3), np.float32)
        out = np.zeros((2, 3), np.float32)
        assert state.current == 0
        be.copy(a, out)
        be.run(_probe, out)
        be.sum(out, axis=0)
        be.take_rows(out, np.array([1, 0]))
    finally:
        del _probe.variants["cupy"]
    assert where == [1]
    assert state.launches == [("copyto", 1), ("sum", 1), ("take", 1)]
    assert state.current == 0  # restored afterwards
    np.testing.assert_array_equal(out, 2.0)


def test_gpu_1_gemm_runs_on_device_1(install) -> None:
    cupy, state = fake_cupy(n_devices=2)

    class DeviceArray(np.ndarray):  # what CuPy hands back: not a host ndarray for check()
        pass

    install(cupy)
    be = CupyBackend(1)
    a = np.ones((2, 3), np.float32).view(DeviceArray)
    b = np.ones((3, 4), np.float32).view(DeviceArray)
    out = be.gemm(a, b)
    assert state.launches == [("matmul", 1)] and out.shape == (2, 4)


# ------------------------------------------------------------------- NCCL
def test_nccl_without_libnccl_says_how_to_install_it(install, monkeypatch: pytest.MonkeyPatch) -> None:
    MPI = pytest.importorskip("mpi4py.MPI")
    from mlpx.distributed import NcclReducer

    cupy, _ = fake_cupy(n_devices=1)
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available = False
    cupy.cuda.nccl = nccl
    install(cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    with pytest.raises(BackendUnavailableError, match=r'pip install "mlpx\[nccl\]"'):
        NcclReducer(MPI.COMM_SELF, CupyBackend(0))
    # with the library present the same set-up goes through to the communicator
    made = []
    nccl.available = True
    nccl.get_unique_id = lambda: b"uid"
    nccl.NcclCommunicator = lambda size, uid, rank: made.append((size, uid, rank)) or object()
    NcclReducer(MPI.COMM_SELF, CupyBackend(0))
    assert made == [(1, b"uid", 0)]
