"""A backend for any namespace that follows the Python Array API standard.

The namespace is wrapped with ``array-api-compat`` (an optional dependency), so
NumPy, CuPy, PyTorch and ``array-api-strict`` all present the standard's functions.
Only generic kernel definitions run here: no ``out=``, no ndarray methods, nothing
outside the standard. That is what makes ``array-api-strict`` a useful oracle in the
test suite: code that passes on it does not lean on NumPy-only idioms.

The engine keeps its parameters in one flat buffer with per-layer views and writes
gradients into those views with ``a[...] = value``; namespaces whose slices are
views (NumPy, CuPy, PyTorch, array-api-strict) work, immutable ones (JAX) do not.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .base import Array, Backend, BackendUnavailableError, DeviceMismatchError

__all__ = ["ArrayAPIBackend"]


class ArrayAPIBackend(Backend):
    """Generic backend over an Array API namespace.

    Parameters
    ----------
    namespace : module or str
        The namespace or its import name, e.g. ``"array_api_strict"``.
    device : object or str, optional
        A device of that namespace (``array_api_strict.Device("device1")``); a
        string is looked up among ``namespace.__array_namespace_info__().devices()``.
    """

    kinds: tuple[str, ...] = ()  # generic definitions only

    def __init__(self, namespace: Any = "array_api_strict", device: Any = None) -> None:
        try:
            import array_api_compat
        except ImportError as exc:
            raise BackendUnavailableError(
                "the Array API backend needs array-api-compat: pip install \"mlpx[array-api]\""
            ) from exc
        if isinstance(namespace, str):
            try:
                namespace = importlib.import_module(namespace)
            except ImportError as exc:
                raise BackendUnavailableError(
                    f"Array API namespace {namespace!r} cannot be imported: {exc}"
                ) from exc
        xp = array_api_compat.array_namespace(namespace.asarray(0.0))
        if isinstance(device, str):
            devices = {str(d): d for d in xp.__array_namespace_info__().devices()}
            match = [d for k, d in devices.items() if device in k]
            if not match:
                raise BackendUnavailableError(
                    f"device {device!r} not found; {xp.__name__} offers {sorted(devices)}"
                )
            device = match[0]
        self._compat = array_api_compat
        name = namespace.__name__ + ("" if device is None else f"[{device}]")
        super().__init__(xp, device=device, name=name)

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
            x = np.asarray(x)
            if dtype is None and x.dtype.kind == "f":
                dtype = x.dtype.name
            kw: dict[str, Any] = {} if self.device is None else {"device": self.device}
            if dtype is not None:
                kw["dtype"] = self.dtype(dtype)
            elif x.dtype.kind in "iu":
                kw["dtype"] = self.xp.int64
            return self.xp.asarray(x, **kw)
        self.check(x)
        if dtype is not None and x.dtype != self.dtype(dtype):
            return self.xp.astype(x, self.dtype(dtype))
        return x

    def to_numpy(self, x: Array) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        if self.device is not None and hasattr(self.xp, "__array_namespace_info__"):
            x = self._to_host_device(x)
        try:
            return np.from_dlpack(x)
        except Exception:  # namespaces without host DLPack export
            return np.asarray(x)

    def _to_host_device(self, x: Array) -> Array:
        default = self.xp.__array_namespace_info__().default_device()
        if self._compat.device(x) == default:
            return x
        return self._compat.to_device(x, default)

    def check(self, x: Any) -> None:
        compat = self._compat
        if not compat.is_array_api_obj(x):
            return
        if isinstance(x, np.ndarray) and self.xp.__name__.split(".")[-1] != "numpy":
            raise DeviceMismatchError(
                f"a NumPy array was handed to backend {self.name!r}; move it with "
                "backend.asarray(x)"
            )
        own = getattr(self.xp, "__name__", "")
        theirs = getattr(compat.array_namespace(x), "__name__", "")
        if own != theirs:
            raise DeviceMismatchError(
                f"an array of {theirs} was handed to backend {self.name!r} ({own}); "
                "move it with backend.asarray(backend_of_x.to_numpy(x))"
            )
        # A backend without an explicit device lives on the namespace's default one.
        want = self.device
        if want is None and hasattr(self.xp, "__array_namespace_info__"):
            want = self.xp.__array_namespace_info__().default_device()
        if want is not None and compat.device(x) != want:
            raise DeviceMismatchError(
                f"an array on device {compat.device(x)} was handed to backend "
                f"{self.name!r} (device {want}); move it with x.to_device(backend.device) "
                "or backend.asarray(backend.to_numpy(x)) from the host, or use a backend on "
                "that device"
            )

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info["library"] = self.name.split("[")[0]
        return info
