"""The stand-in's module tree: ``cupy``, ``cupy.cuda``, ..., ``cupyx.scipy.sparse``.

Each module is a :class:`StrictModule` holding what the stand-in implements; every
other name goes through CuPy 14's list (AttributeError or NotImplementedError).
"""

from __future__ import annotations

import types
from typing import Any

from . import _cuda, _functions, _kernel, _nccl, _sparse  # noqa: F401 - _functions registers FUNCTIONS
from ._ndarray import FUNCTIONS, UFUNCS, _init_ufuncs, ndarray, ufunc
from ._runtime import machine
from ._strict import API, StrictModule

__all__ = ["build", "namespace"]

_BUILT: dict[str, types.ModuleType] = {}


def namespace(name: str) -> types.ModuleType:
    """The installed stand-in module called ``name``."""
    return _BUILT[name]


def _pick(names: dict[str, Any], entry: str) -> dict[str, Any]:
    allowed = API["modules"][entry]["names"]
    return {k: v for k, v in names.items() if k in allowed}


def _empty_pinned(shape: Any, dtype: Any = float, order: str = "C") -> Any:
    import numpy as np

    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = machine().alloc_pinned(nbytes)
    return np.ndarray(shape, dtype=dtype, buffer=raw, order=order)


def _zeros_pinned(shape: Any, dtype: Any = float, order: str = "C") -> Any:
    out = _empty_pinned(shape, dtype, order)
    out.fill(0)
    return out


def _empty_like_pinned(a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> Any:
    return _empty_pinned(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def _zeros_like_pinned(a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> Any:
    return _zeros_pinned(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def build() -> dict[str, types.ModuleType]:
    """Fresh module objects for one installation, keyed by their ``sys.modules`` names."""
    cfg = machine().config
    _init_ufuncs([n for n, k in API["modules"]["cupy"]["names"].items() if k == "ufunc"])
    mods: dict[str, types.ModuleType] = {}

    runtime = StrictModule("cupy.cuda.runtime", {
        "getDeviceCount": _cuda.getDeviceCount, "getDevice": _cuda.getDevice, "setDevice": _cuda.setDevice,
        "deviceSynchronize": _cuda.deviceSynchronize, "memGetInfo": _cuda.memGetInfo,
        "runtimeGetVersion": _cuda.runtimeGetVersion, "driverGetVersion": _cuda.driverGetVersion,
        "getDeviceProperties": _cuda.getDeviceProperties, "streamSynchronize": _cuda.streamSynchronize,
        "pointerGetAttributes": _cuda.pointerGetAttributes, "PointerAttributes": _cuda.PointerAttributes,
        "CUDARuntimeError": _cuda.CUDARuntimeError,
    })
    memory = StrictModule("cupy.cuda.memory", {
        "OutOfMemoryError": _cuda.OutOfMemoryError, "MemoryPool": _cuda.MemoryPool,
        "MemoryPointer": _cuda.MemoryPointer,
    })
    compiler = StrictModule("cupy.cuda.compiler", {"CompileException": _kernel.CompileException})
    stream = StrictModule("cupy.cuda.stream", {
        "Stream": _cuda.Stream, "Event": _cuda.Event, "get_current_stream": _cuda.get_current_stream,
    })
    device = StrictModule("cupy.cuda.device", {"Device": _cuda.Device})
    pinned = StrictModule("cupy.cuda.pinned_memory", {
        "PinnedMemoryPointer": _cuda.PinnedMemoryPointer, "alloc_pinned_memory": _cuda.alloc_pinned_memory,
        "PinnedMemoryPool": _cuda.PinnedMemoryPool,
    })
    if cfg.nccl_available:
        nccl = StrictModule("cupy.cuda.nccl", {
            "NcclCommunicator": _nccl.NcclCommunicator, "NcclError": _nccl.NcclError,
            "get_unique_id": _nccl.get_unique_id, "get_version": _nccl.get_version,
            "get_build_version": _nccl.get_build_version,
        })
    else:  # CuPy without libnccl: the module holds only available = False
        nccl = StrictModule("cupy.cuda.nccl", {}, key="cupy.cuda.nccl (library missing)")
    cuda = StrictModule("cupy.cuda", {
        "Device": _cuda.Device, "Stream": _cuda.Stream, "Event": _cuda.Event,
        "get_current_stream": _cuda.get_current_stream, "MemoryPointer": _cuda.MemoryPointer,
        "MemoryPool": _cuda.MemoryPool, "PinnedMemoryPool": _cuda.PinnedMemoryPool,
        "PinnedMemoryPointer": _cuda.PinnedMemoryPointer, "alloc_pinned_memory": _cuda.alloc_pinned_memory,
        "runtime": runtime, "memory": memory, "compiler": compiler, "stream": stream, "device": device,
        "pinned_memory": pinned, "is_available": FUNCTIONS["is_available"],
    })
    linalg_core = StrictModule("cupy._core._routines_linalg", {
        "get_compute_type": _cuda.get_compute_type, "set_compute_type": _cuda.set_compute_type,
    })
    core = StrictModule("cupy._core", {
        "get_compute_type": _cuda.get_compute_type, "set_compute_type": _cuda.set_compute_type,
        "_routines_linalg": linalg_core, "ndarray": ndarray, "ElementwiseKernel": _kernel.ElementwiseKernel,
    })
    linalg = StrictModule("cupy.linalg", {})
    cupy_attrs: dict[str, Any] = {}
    cupy_attrs.update(_pick(dict(UFUNCS), "cupy"))
    cupy_attrs.update(_pick(dict(FUNCTIONS), "cupy"))
    cupy_attrs.update({
        "ndarray": ndarray, "ufunc": ufunc, "ElementwiseKernel": _kernel.ElementwiseKernel,
        "cuda": cuda, "_core": core, "linalg": linalg,
    })
    cupy = StrictModule("cupy", cupy_attrs)
    cupy.__path__ = []  # a package, so "import cupy.cuda" resolves through sys.modules

    sparse = StrictModule("cupyx.scipy.sparse", {
        "csr_matrix": _sparse.csr_matrix, "spmatrix": _sparse.spmatrix, "issparse": _sparse.issparse,
        "isspmatrix": _sparse.isspmatrix, "isspmatrix_csr": _sparse.isspmatrix_csr,
    })
    scipy = StrictModule("cupyx.scipy", {"sparse": sparse})
    cupyx = StrictModule("cupyx", {
        "empty_pinned": _empty_pinned, "zeros_pinned": _zeros_pinned, "empty_like_pinned": _empty_like_pinned,
        "zeros_like_pinned": _zeros_like_pinned, "scipy": scipy,
    })
    for fn, name in ((_empty_pinned, "empty_pinned"), (_zeros_pinned, "zeros_pinned"),
                     (_empty_like_pinned, "empty_like_pinned"), (_zeros_like_pinned, "zeros_like_pinned")):
        fn.__module__, fn.__name__, fn.__qualname__ = "cupyx", name, name
    for m in (cupy, cuda, core, cupyx, scipy):
        m.__path__ = []
    for m in (cupy, cuda, runtime, memory, compiler, stream, device, pinned, nccl, core, linalg_core, linalg,
              cupyx, scipy, sparse):
        mods[m.__name__] = m
    _BUILT.clear()
    _BUILT.update(mods)
    return mods
