"""The machine a result was measured on: CPU, BLAS, GPU, library versions, command.

Every results file carries this record, so a number is never separated from the
hardware and software that produced it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.config import cpu_cores

__all__ = ["gpu_info", "loadavg", "machine_info", "machine_tag", "torch_status"]

_PACKAGES = ("numpy", "scipy", "scikit-learn", "threadpoolctl", "torch", "cupy", "matplotlib", "tqdm", "mlpx")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _version(dist: str) -> str | None:
    for name in (dist, dist.replace("-", "_")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if dist == "cupy":  # wheels are named cupy-cuda12x etc.
        for d in importlib.metadata.distributions():
            name = d.metadata.get("Name", "") or ""
            if name.lower().startswith("cupy"):
                return d.version
    return None


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "mlpx", "backends"],
            cwd=root, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return {"commit": head or None, "engine_modified": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "engine_modified": None}


def gpu_info() -> dict[str, Any] | None:
    """Name, memory, compute capability and CUDA versions of GPU 0, or None."""
    from mlpx.backends import cuda_available

    if not cuda_available():
        return None
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    info: dict[str, Any] = {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "multiprocessors": props.get("multiProcessorCount"),
        "count": int(cupy.cuda.runtime.getDeviceCount()),
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
    }
    try:
        info["cublas"] = cupy.cuda.cublas.getVersion(cupy.cuda.device.get_cublas_handle())
    except Exception:  # older CuPy: not exposed
        pass
    return info


def torch_status() -> tuple[Any, str | None]:
    """(torch module or None, reason it is unusable or None)."""
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    except Exception as exc:  # a broken install must not stop the suite
        return None, f"torch failed to import: {exc}"
    return torch, None


def machine_info(argv: list[str] | None = None) -> dict[str, Any]:
    """The ``machine`` record of a results file.

    Parameters
    ----------
    argv : list of str, optional
        The command-line arguments after ``python -m benchmarks``.
    """
    import numpy
    from threadpoolctl import threadpool_info

    torch, torch_reason = torch_status()
    pools = [
        {k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "prefix")}
        for p in threadpool_info()
    ]
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": cpu_cores(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "thread_pools": pools,
        "numpy_blas": _numpy_blas(numpy),
        "versions": {p: _version(p) for p in _PACKAGES},
        "gpu": gpu_info(),
        "torch_cuda": bool(torch is not None and torch.cuda.is_available()),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_note": torch_reason,
        "load_avg_start": loadavg(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks" + ("" if not argv else " " + " ".join(argv)),
        "git": _git(),
    }
    return info


def busy_probe(threads: int) -> dict[str, Any]:
    """Is the CPU shared right now? Time a 256^3 float32 GEMM on 1 and on ``threads`` threads.

    On an idle machine the multi-threaded product is faster; when other processes
    hold the cores, each BLAS thread waits for a scheduler time slice and the
    multi-threaded product becomes many times slower (tens of ms). Timings of such
    a run say more about the neighbours than about the code: the report flags it.
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
    out: dict[str, Any] = {}
    for t in sorted({1, threads}):
        with threadpool_limits(limits=t, user_api="blas"):
            a @ a
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                a @ a
                best = min(best, time.perf_counter() - t0)
        out[f"gemm256_{t}t_s"] = max(best, 1e-9)
    ratio = out[f"gemm256_{threads}t_s"] / out["gemm256_1t_s"]
    out["busy"] = bool(threads > 1 and ratio > 3.0)
    return out


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews every timing."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _numpy_blas(numpy: Any) -> str:
    try:
        cfg = numpy.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        return "unknown"


def machine_tag(info: dict[str, Any]) -> str:
    """A short directory name for the machine, e.g. ``amd-epyc-2c`` or ``...-nvidia-h100``."""

    def slug(text: str) -> str:
        text = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*$|\d+-core", " ", text.lower())
        return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40]

    tag = f"{slug(info['cpu_model'])}-{info['cpu_cores']}c"
    if info.get("gpu"):
        tag += "-" + slug(info["gpu"]["name"])
    return tag
