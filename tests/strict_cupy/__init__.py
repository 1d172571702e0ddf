"""A strict, asynchronous stand-in for CuPy 14, so the CPU test suite runs mlpx's GPU paths.

The real CuPy needs a GPU to do anything; NumPy subclasses pretending to be CuPy
arrays accept what CuPy refuses. This stand-in sits between the two:

* its arrays are not NumPy arrays and refuse implicit host conversion with CuPy's own
  exceptions and messages; explicit transfers (``get``, ``cupy.asnumpy``, ``float``
  of a 0-d array, ``item``) work and synchronise as CuPy's do;
* it offers only CuPy 14's API (``cupy14_api.json``, generated from CuPy 14.2 by
  ``make_api_list.py``): a name CuPy 14 lacks raises AttributeError, a name it has
  that the stand-in does not implement raises NotImplementedError naming it;
* device work runs asynchronously on streams, ordered only by stream order, events
  and the legacy default stream's rules (:mod:`._runtime`), with pinned host memory
  read by asynchronous copies when they run;
* ``ElementwiseKernel`` runs the kernel's CUDA source, translated to C++ and compiled
  with g++ (:mod:`._kernel`);
* devices (``gpu:1`` works with the default two), memory accounting, the cuBLAS
  compute-type switch (TF32 products round their inputs), ``cupyx.scipy.sparse``'s
  CSR matrix and an NCCL communicator over device pointers.

Use :func:`installed` (or the ``strict_cupy`` fixture of :mod:`.fixtures`): inside it
``import cupy`` gives the stand-in, ``mlpx.backends.get_backend("gpu")`` builds a
CupyBackend on it, and mlpx's caches of CuPy objects start empty; on exit the real
CuPy (if installed) and those caches are restored. ``session.py`` runs a whole pytest
session on it (the suite's ``gpu``-marked tests).

What it does not model: NVRTC itself (kernels compile with g++ against classes shaped
like CuPy's float16/bfloat16; an NVRTC-only error is caught only where those classes
reproduce it), CuPy's own ufunc type resolution where it differs from NumPy's, cuBLAS
and cuRAND numerics (products are NumPy's BLAS, TF32 rounds the inputs; no
``cupy.random``), timing (only the two extreme schedules, lazy and eager, per stream),
devices of events, peer-to-peer copies beyond a check, CUDA graphs, RawKernel /
RawModule / ReductionKernel, multi-process NCCL other than through mpi4py.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import types
import weakref
from typing import Any, Iterator

from ._runtime import ACTIVE, Config, Machine

__all__ = ["Config", "StandIn", "installed"]


class StandIn:
    """Handle on an installed stand-in.

    Attributes
    ----------
    machine : Machine
        The simulated devices, streams and memory.
    config : Config
    cupy, cupyx : module
        The stand-in modules (also ``sys.modules["cupy"]`` while installed).
    """

    def __init__(self, machine: Machine, modules: dict[str, types.ModuleType]) -> None:
        self.machine = machine
        self.config = machine.config
        self.modules = modules
        self.cupy = modules["cupy"]
        self.cupyx = modules["cupyx"]

    def synchronize_all(self) -> None:
        """Run every queued piece of device work, on every device."""
        self.machine.synchronize_all()

    def host_waits(self) -> int:
        """How often the host has waited for the device so far (reads, synchronisations)."""
        return sum(self.machine.host_waits.values())

    def pending(self) -> int:
        """Device work queued and not run yet, over all streams and devices."""
        return sum(q.enqueued - q.executed for dev in self.machine.devices for q in dev.queues())


def _is_cupy_module(name: str) -> bool:
    return name in ("cupy", "cupyx", "cupy_backends") or name.startswith(("cupy.", "cupyx.", "cupy_backends."))


_KERNELS: "weakref.WeakSet[Any] | None" = None


def _lazy_kernels() -> list[Any]:
    """Every ``lazy_elementwise`` of mlpx: found once by a heap scan, then kept in a
    weak set (they are made at import, except the bias + activation ones, which live
    in ``mlpx.layers._BIAS_ACT_CUDA``)."""
    global _KERNELS
    from mlpx.backends.cuda import lazy_elementwise

    if _KERNELS is None:
        # type(), not isinstance(): the latter reads __class__, which wakes lazily
        # imported modules (the real CuPy's cupyx) in the middle of the swap.
        _KERNELS = weakref.WeakSet(o for o in gc.get_objects() if type(o) is lazy_elementwise)
    layers = sys.modules.get("mlpx.layers")
    if layers is not None:
        _KERNELS.update(layers._BIAS_ACT_CUDA.values())
    return list(_KERNELS)


@contextlib.contextmanager
def _mlpx_caches_reset() -> Iterator[None]:
    """Empty mlpx's caches of CuPy objects for the stand-in; put them back afterwards."""
    import mlpx.backends as backends

    kernels = _lazy_kernels()
    saved_kernels = [(k, k._kernel) for k in kernels]
    saved_gpu = dict(backends._GPU_CACHE)
    backends._GPU_CACHE.clear()
    extra: list[tuple[dict[Any, Any], dict[Any, Any]]] = []
    for modname, attr in (("mlpx.layers", "_BIAS_ACT_CUDA"), ("mlpx.distributed", "_REDUCERS")):
        mod = sys.modules.get(modname)
        if mod is not None:
            cache = getattr(mod, attr)
            extra.append((cache, dict(cache)))
            cache.clear()
    for k in kernels:
        k._kernel = None
    try:
        yield
    finally:
        backends._GPU_CACHE.clear()
        backends._GPU_CACHE.update(saved_gpu)
        for cache, saved in extra:
            cache.clear()
            cache.update(saved)
        for k in _lazy_kernels():
            k._kernel = None  # built on the stand-in, or new: rebuilt on first use
        for k, old in saved_kernels:
            k._kernel = old


@contextlib.contextmanager
def installed(config: Config | None = None, **settings: Any) -> Iterator[StandIn]:
    """Make ``import cupy`` (and ``cupyx``) give the stand-in inside the block.

    Parameters
    ----------
    config : Config, optional
        The simulated machine; or give its fields as keywords (``n_devices=1``,
        ``null_schedule="eager"``, ...).
    """
    from ._cuda import OutOfMemoryError
    from ._modules import build

    cfg = config if config is not None else Config(**settings)
    machine = Machine(cfg, out_of_memory=lambda n, used: OutOfMemoryError(n, used))
    ACTIVE.append(machine)
    try:
        modules = build()
        with _mlpx_caches_reset():
            saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if _is_cupy_module(k)]}
            sys.modules.update(modules)
            try:
                yield StandIn(machine, modules)
            finally:
                for k in [k for k in sys.modules if _is_cupy_module(k)]:
                    del sys.modules[k]
                sys.modules.update(saved)
    finally:
        ACTIVE.remove(machine)
