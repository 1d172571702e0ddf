"""mlpx.backends: the thin array layer under the engine.

Pick a backend by name and hand it to a model; everything the model does to arrays
goes through that object::

    from mlpx.backends import get_backend
    be = get_backend("cpu")        # NumPy + the installed BLAS
    be = get_backend("gpu")        # CuPy + cuBLAS on device 0 ("gpu:1" for device 1)
    be = get_backend("auto")       # GPU when usable, else CPU (and it says which)
    be = get_backend("array_api_strict")   # any Array API namespace, by import name

This package imports nothing from the rest of mlpx, and imports CuPy only when a GPU
backend is built.

Backends pickle (and deep-copy) as their :attr:`~Backend.spec`, the name
:func:`get_backend` builds them from, so that an estimator holding a backend object
clones, pickles and runs in process pools; unpickling calls ``get_backend(spec)``,
which gives the shared instance for ``"cpu"`` and ``"gpu:N"``.

``"array-api:<module>"`` imports only the namespaces listed in
:data:`~backends.array_api_backend.KNOWN_NAMESPACES`: any other name is refused before
it is imported, since importing a module runs its code (a backend name may come from
a configuration file or a search grid). Pass another namespace as a module object,
``ArrayAPIBackend(module)``; its name then resolves in this process too.
"""

from __future__ import annotations

import copyreg
import logging
import re
from typing import Any, Callable

from .array_api_backend import ArrayAPIBackend
from .base import Backend, BackendError, BackendUnavailableError, DeviceMismatchError
from .cupy_backend import CupyBackend, cuda_available
from .kernel import Kernel, kernel
from .numpy_backend import NumpyBackend

__all__ = [
    "ArrayAPIBackend",
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "CupyBackend",
    "DeviceMismatchError",
    "Kernel",
    "NumpyBackend",
    "available_backends",
    "cuda_available",
    "get_backend",
    "kernel",
]

log = logging.getLogger("mlpx")

BACKEND_NAMES = ("cpu", "cpu:<blas>", "gpu", "gpu:N", "auto", "array_api_strict", "array-api:<module>")

# One shared CPU backend per BLAS provider (they hold no model state); built on first
# use, so that importing mlpx never loads a BLAS library or reads MLPX_CPU_BLAS.
_CPU_CACHE: dict[str | None, NumpyBackend] = {}
_GPU_CACHE: dict[int, CupyBackend] = {}


def _cpu(blas: str | None = None) -> NumpyBackend:
    if blas not in _CPU_CACHE:
        _CPU_CACHE[blas] = NumpyBackend(blas)
    return _CPU_CACHE[blas]


def get_backend(spec: Any = "cpu") -> Backend:
    """Resolve a backend name (or instance) to a :class:`Backend`.

    Parameters
    ----------
    spec : str or Backend
        ``"cpu"``/``"numpy"``, ``"cpu:<blas>"`` (``"cpu:mkl"``, ``"cpu:blis"``: the
        library for the matrix products, see :mod:`mlpx.backends.blas`),
        ``"gpu"``/``"cuda"``/``"gpu:N"``, ``"auto"``,
        ``"array_api_strict"`` or ``"array-api:<module>"``, or a Backend instance
        (returned as is).

    Returns
    -------
    Backend
        The backend (``spec`` itself when it is a Backend).

    Raises
    ------
    BackendUnavailableError
        ``"gpu"`` without CuPy or without a visible CUDA device; a CPU BLAS that is
        not installed.
    ValueError
        An unknown name (the message lists the valid ones).
    """
    if isinstance(spec, Backend):
        return spec
    if spec is None:
        return _cpu()
    if not isinstance(spec, str):
        raise TypeError(
            f"backend must be a name or a Backend instance, not {type(spec).__name__}; "
            f"valid names: {', '.join(BACKEND_NAMES)}"
        )
    name = spec.strip().lower()
    if name in ("cpu", "numpy"):
        return _cpu()
    if name.startswith("cpu:"):
        return _cpu(name.split(":", 1)[1])
    if name in ("gpu", "cuda", "cupy") or name.startswith(("gpu:", "cuda:")):
        device_id = 0
        if ":" in name:
            try:
                device_id = int(name.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"bad GPU backend name {spec!r}; use 'gpu' or 'gpu:N'") from None
        if device_id not in _GPU_CACHE:
            _GPU_CACHE[device_id] = CupyBackend(device_id)
        return _GPU_CACHE[device_id]
    if name == "auto":
        if cuda_available():
            be = get_backend("gpu")
            log.info("backend='auto' chose %s (%s)", be.name, be.describe()["device"])
        else:
            be = _cpu()
            log.info("backend='auto' chose cpu: CuPy or a CUDA device is not available")
        return be
    if name in ("array_api_strict", "array-api-strict"):
        return ArrayAPIBackend("array_api_strict")
    on_device = re.fullmatch(r"(?:array-api:)?([\w.]+)\[(.+)\]", spec.strip())
    if on_device:  # an ArrayAPIBackend's own name, "<module>[<device>]" (pickles, model files)
        return ArrayAPIBackend(on_device.group(1), device=on_device.group(2))
    if name.startswith("array-api:"):
        return ArrayAPIBackend(spec.split(":", 1)[1])
    raise ValueError(f"unknown backend {spec!r}; valid names: {', '.join(BACKEND_NAMES)}")


def _pickle_as_spec(be: Backend) -> tuple[Callable[..., Backend], tuple[str]]:
    """Reduce a backend to ``get_backend(spec)``: a pickle holds the name, never the module."""
    spec = be.spec
    if spec is None:  # not one of the classes registered below, whose spec is a name
        raise TypeError(f"{be!r} has no name get_backend resolves, so it cannot be pickled")
    return get_backend, (spec,)


# copyreg rather than a __reduce__ in base.py: the rebuild needs get_backend, which
# sits above the backend classes. Exact types only: a subclass pickles as itself or not at all.
for _cls in (NumpyBackend, CupyBackend, ArrayAPIBackend):
    copyreg.pickle(_cls, _pickle_as_spec)


def available_backends() -> list[str]:
    """List the backends that can run on this machine, CPU first.

    Returns
    -------
    list of str
        Names for ``backend=``: ``"cpu"``, then ``"array_api_strict"`` where
        array-api-strict is installed and ``"gpu"`` where CUDA works.
    """
    names = ["cpu"]
    if cuda_available():
        names.append("gpu")
    try:
        ArrayAPIBackend("array_api_strict")
        names.append("array_api_strict")
    except BackendError:
        pass
    return names
