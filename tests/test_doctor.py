"""``python -m mlpx.doctor``: one screen, never crashes, agrees with available_backends()."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import mlpx
from mlpx import doctor


def _doctor_says_gpu(checks: list[doctor.Check]) -> bool:
    by_name = {c.name: c for c in checks}
    return by_name["CuPy"].ok and any(c.ok for c in checks if c.name.startswith("GPU "))


def _fake_cupy(version: str, n_devices: int) -> types.ModuleType:
    cupy = types.ModuleType("cupy")
    cupy.__version__ = version
    cupy.cuda = types.ModuleType("cupy.cuda")
    cupy.cuda.runtime = types.SimpleNamespace(
        getDeviceCount=lambda: n_devices,
        driverGetVersion=lambda: 12080,
        runtimeGetVersion=lambda: 12090,
        getDeviceProperties=lambda i: {"name": f"Fake GPU {i}".encode(), "major": 9, "minor": 0,
                                       "totalGlobalMem": 80 * 2**30},
    )
    return cupy


def test_command_prints_every_line_and_exits_0() -> None:
    proc = subprocess.run([sys.executable, "-m", "mlpx.doctor"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("NumPy + BLAS", "CPU BLAS", "CuPy", "NVRTC", "NCCL", "MPI", "backends:"):
        assert name in out, (name, out)
    for line in out.splitlines()[1:-1]:
        assert line.split()[0] in ("OK", "MISSING", "->"), line
    assert len(out.splitlines()) <= 24  # one screen


def test_every_missing_line_says_how_to_fix_it() -> None:
    checks, _ = doctor.run_checks()
    missing = [c for c in checks if not c.ok]
    assert all(c.fix for c in missing if not c.detail.startswith("the probe itself failed")), missing


def test_agrees_with_available_backends_here() -> None:
    checks, backends = doctor.run_checks()
    assert backends == mlpx.available_backends()
    assert _doctor_says_gpu(checks) == ("gpu" in backends)


@pytest.mark.parametrize(("version", "n_devices", "usable"),
                         [("14.2.0", 2, True), ("14.2.0", 0, False), ("13.6.0", 1, False)])
def test_agrees_with_available_backends_on_a_faked_cupy(
    monkeypatch: pytest.MonkeyPatch, version: str, n_devices: int, usable: bool
) -> None:
    cupy = _fake_cupy(version, n_devices)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    checks, backends = doctor.run_checks()  # the fake has no NVRTC or NCCL: those probes must not crash
    assert ("gpu" in backends) is usable
    assert _doctor_says_gpu(checks) is usable
    text = doctor.render(checks, backends)
    if usable:
        assert "GPU 1" in text and "compute capability 9.0" in text and "CUDA 12.8" in text
    if version.startswith("13"):
        assert "13.6.0" in text and "MISSING  CuPy" in text and "mlpx[gpu]" in text


def test_a_probe_that_raises_becomes_a_missing_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def boom(*a, **k):
        raise OSError("library exploded")

    for name in ("_numpy_blas", "_cpu_blas_providers", "_mpi", "gpu_status"):
        monkeypatch.setattr(doctor, name, boom)
    assert doctor.main() == 0
    out = capsys.readouterr().out
    assert out.count("the probe itself failed: OSError: library exploded") >= 3
    assert "GPU probe itself failed" in out
    assert np.__version__  # NumPy untouched


def test_mlpx_import_still_needs_numpy_only() -> None:
    code = ("import sys; import mlpx, mlpx.doctor; "
            "print(sorted(m for m in ('cupy', 'mpi4py', 'sklearn', 'scipy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
