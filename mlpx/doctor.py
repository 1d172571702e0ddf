"""``python -m mlpx.doctor``: what this machine can run, on one screen.

Each line is one piece of the stack, ``OK`` or ``MISSING``, what was found, and for
what is missing the command that fixes it::

    OK       NumPy + BLAS  NumPy 2.4.6, scipy-openblas 0.3.31 (2 threads, pthreads)
    OK       CuPy          14.2.0 (cupy-cuda12x), >= 14
    MISSING  CUDA driver   none loaded -> install the NVIDIA driver; `nvidia-smi` must list the GPU
    ...
    backends: cpu, array_api_strict   (mlpx.available_backends())

Every probe is guarded: a probe that raises becomes a ``MISSING`` line saying so,
and the command always exits 0 (it reports, it does not judge). The GPU lines come
from :func:`mlpx.backends.cupy_backend.gpu_status`, the probe behind
:func:`mlpx.available_backends`, so the two always agree.
"""

from __future__ import annotations

import platform
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mlpx.backends import available_backends
from mlpx.backends.cupy_backend import MIN_CUPY, GpuStatus, gpu_status

__all__ = ["Check", "main", "render", "run_checks"]

_GPU_EXTRA = 'pip install "mlpx[gpu]"  (CUDA 13 driver: pip install "cupy-cuda13x[ctk]>=14" ml-dtypes)'


@dataclass(frozen=True)
class Check:
    """One line of the report.

    Parameters
    ----------
    name : str
        What was probed ("CuPy", "NVRTC", ...).
    ok : bool
        Whether it works.
    detail : str
        What was found (or why it is missing).
    fix : str or None
        The command or step that fixes a missing piece.
    """

    name: str
    ok: bool
    detail: str
    fix: str | None = None


def _guarded(name: str, probe: Callable[[], list[Check]]) -> list[Check]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CuPy warns on import when libnccl is absent
            return probe()
    except Exception as exc:  # noqa: BLE001 - the doctor must never crash
        return [Check(name, False, f"the probe itself failed: {type(exc).__name__}: {exc}")]


def _version(major_minor: int | None) -> str:
    if not major_minor:
        return "none"
    return f"{major_minor // 1000}.{major_minor % 1000 // 10}"


# ------------------------------------------------------------------ probes
def _numpy_blas() -> list[Check]:
    try:
        dep = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{dep.get('name')} {dep.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy: no dict mode
        blas = "BLAS unknown"
    threads = "threads unknown: pip install threadpoolctl"
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        mine = [p for p in pools if "numpy" in str(p.get("filepath", ""))] or pools
        if mine:
            p = mine[0]
            threads = f"{p.get('num_threads')} threads" + (f", {p['threading_layer']}" if p.get("threading_layer") else "")
    except ImportError:
        pass
    return [Check("NumPy + BLAS", True, f"NumPy {np.__version__}, {blas} ({threads})")]


def _cpu_blas_providers() -> list[Check]:
    from mlpx.backends import blas

    found = blas.installed_providers()  # without loading a library into this process
    detail = ", ".join(f"{n} {blas.provider_version(n)}".strip() for n in found)
    missing = [n for n in blas.BLAS_PROVIDERS if n not in found]
    fix = " / ".join(f'pip install "mlpx[{n}]"' for n in missing) or None
    return [Check("CPU BLAS", True, f"backend='cpu:<name>' can use: {detail}"
                  + (f"; not installed: {', '.join(missing)}" if missing else ""), fix)]


def _gpu(st: GpuStatus) -> list[Check]:
    lines = []
    if st.cupy_error is not None:
        found = f"CuPy {st.cupy_version} installed, too old" if st.cupy_version else "not importable"
        lines.append(Check("CuPy", False, f"{found}: {st.cupy_error}", _GPU_EXTRA))
        return lines
    lines.append(Check("CuPy", True, f"{st.cupy_version} ({st.cupy_package}), >= {MIN_CUPY[0]}"))
    if st.driver_version:
        lines.append(Check("CUDA driver", True,
                           f"CUDA {_version(st.driver_version)} (CuPy built for CUDA {_version(st.runtime_version)})"))
    else:
        lines.append(Check("CUDA driver", False, "none loaded" + (f" ({st.device_error})" if st.device_error else ""),
                           "install the NVIDIA driver; `nvidia-smi` must list the GPU"))
    if st.device_count:
        for i, d in enumerate(st.devices):
            cc = d.get("compute_capability", "?")
            lines.append(Check(f"GPU {i}", True, f"{d.get('name')}, compute capability {cc}, "
                                                 f"{d.get('memory_gib', '?')} GiB"))
    else:
        lines.append(Check("GPU devices", False, "none visible",
                           "check `nvidia-smi` and CUDA_VISIBLE_DEVICES; backend='cpu' works meanwhile"))
    return lines


def _nvrtc(st: GpuStatus) -> list[Check]:
    if st.cupy_error is not None:
        return [Check("NVRTC", False, "needs CuPy", _GPU_EXTRA)]
    from mlpx.backends.cuda import lazy_elementwise
    from mlpx.backends.cuda_compile import codegen_unavailable, compile_kernel, nvrtc_version

    why = codegen_unavailable()
    if why is not None:
        return [Check("NVRTC", False, why, _GPU_EXTRA + " (the [ctk] part brings NVRTC and the CUDA headers)")]
    major, minor = nvrtc_version()
    probe = lazy_elementwise("T x", "T y", "y = x * x + (T)1;", "mlpx_doctor_probe", register=False)
    try:
        cubin = compile_kernel(probe, "float32", "90")
    except Exception as exc:  # noqa: BLE001 - e.g. CUDA headers missing
        return [Check("NVRTC", False, f"{major}.{minor}, but a test kernel did not compile for sm_90: "
                                      f"{str(exc).splitlines()[-1][:200]}", _GPU_EXTRA)]
    return [Check("NVRTC", True, f"{major}.{minor}; compiled a test kernel for sm_90 offline ({len(cubin)} bytes)")]


def _nccl(st: GpuStatus) -> list[Check]:
    fix = 'pip install "mlpx[nccl]"  (nvidia-nccl-cu13 for CUDA 13)'
    if st.cupy_error is not None:
        return [Check("NCCL", False, "needs CuPy (comm='nccl')", fix)]
    from cupy.cuda import nccl

    if not nccl.available:
        return [Check("NCCL", False, "libnccl not loadable (comm='nccl' unavailable)", fix)]
    v = int(nccl.get_version())
    return [Check("NCCL", True, f"{v // 10000}.{v // 100 % 100}.{v % 100}")]


def _mpi() -> list[Check]:
    fix = 'pip install "mlpx[mpi]"  (mpi4py + MPICH; or your cluster\'s MPI)'
    try:
        import mpi4py
        from mpi4py import MPI
    except ImportError as exc:
        return [Check("MPI", False, f"mpi4py not importable ({exc})", fix)]
    lib = MPI.Get_library_version().strip().splitlines()[0]
    return [Check("MPI", True, f"mpi4py {mpi4py.__version__}, {' '.join(lib.split())}")]


def run_checks() -> tuple[list[Check], list[str]]:
    """Run every probe.

    Returns
    -------
    checks : list of Check
        One per probe.
    backends : list of str
        :func:`mlpx.available_backends` (its GPU answer uses the same probe).
    """
    checks = _guarded("NumPy + BLAS", _numpy_blas) + _guarded("CPU BLAS", _cpu_blas_providers)
    try:
        st = gpu_status(details=True)  # designed never to raise; guarded all the same
    except Exception as exc:  # noqa: BLE001
        st = GpuStatus(cupy_error=f"the GPU probe itself failed: {type(exc).__name__}: {exc}")
    checks += _guarded("CuPy", lambda: _gpu(st))
    checks += _guarded("NVRTC", lambda: _nvrtc(st))
    checks += _guarded("NCCL", lambda: _nccl(st))
    checks += _guarded("MPI", _mpi)
    try:
        backends = available_backends()
    except Exception as exc:  # noqa: BLE001
        backends = [f"(available_backends() failed: {type(exc).__name__}: {exc})"]
    return checks, backends


def render(checks: list[Check], backends: list[str]) -> str:
    """The report as text (one line per check; a fix on its own line under a missing one).

    Parameters
    ----------
    checks : list of Check
        From :func:`run_checks`.
    backends : list of str
        The usable backends.

    Returns
    -------
    str
        The report, ending with a newline.
    """
    width = max(len(c.name) for c in checks)
    lines = [f"mlpx doctor: Python {platform.python_version()} on {platform.system()} {platform.machine()}"]
    for c in checks:
        lines.append(f"  {'OK' if c.ok else 'MISSING':8s} {c.name:{width}s}  {c.detail}")
        if c.fix:
            lines.append(f"  {'':8s} {'':{width}s}  -> {c.fix}")
    lines.append(f"  backends: {', '.join(backends)}   (mlpx.available_backends())")
    return "\n".join(lines)


def main() -> int:
    """Print the report.

    Returns
    -------
    int
        The exit status: always 0 (a missing piece is reported, not an error).
    """
    checks, backends = run_checks()
    print(render(checks, backends))
    return 0


if __name__ == "__main__":
    sys.exit(main())
