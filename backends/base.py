"""The backend interface and its generic (Array API) implementation.

A backend is an explicit object that owns one array namespace ``xp`` on one device.
Layers, losses and optimizers receive it when they are built and touch arrays only
through it. The interface is deliberately small:

=====================  =====================================================
transfer / creation    ``asarray``, ``to_numpy``, ``zeros``, ``empty``, ``copy``
matmul                 ``gemm`` (the single entry point to BLAS / cuBLAS)
reductions             ``sum``, ``to_float``
indexing               ``take_rows``, ``arange``
elementwise            ``run`` (a :class:`~backends.kernel.Kernel`)
device                 ``synchronize``, ``check``, ``describe``, ``dtype``
=====================  =====================================================

Everything here is written against the Python Array API standard, so it runs on
NumPy, CuPy and ``array-api-strict`` alike; concrete backends override only the hot
operations (``gemm`` with ``out=``, in-place kernels).
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np

from .kernel import Kernel

__all__ = ["Backend", "BackendError", "BackendUnavailableError", "DeviceMismatchError"]

Array = Any  # an array of the backend's namespace
Shape = int | Sequence[int]


class BackendError(ValueError):
    """Base class for backend selection and array-placement errors."""


class BackendUnavailableError(BackendError, RuntimeError):
    """A backend was asked for but cannot run here (package or device missing)."""


class DeviceMismatchError(BackendError, TypeError):
    """An array from another library or device was handed to a backend."""


_FLOAT_DTYPES = ("float32", "float64")


class Backend:
    """Generic backend over an Array API namespace.

    Parameters
    ----------
    xp : module
        An Array API compatible namespace.
    device : object, optional
        The namespace's device object; ``None`` means its default device.
    name : str, optional
        Human-readable name, e.g. ``"cpu"`` or ``"gpu:0"``.

    Attributes
    ----------
    xp : module
        The array namespace.
    kinds : tuple of str
        Kernel variant kinds this backend uses, most specific first.
    is_gpu : bool
        Whether arrays live in GPU memory.
    """

    kinds: tuple[str, ...] = ()
    is_gpu: bool = False

    def __init__(self, xp: Any, device: Any = None, name: str | None = None) -> None:
        self.xp = xp
        self.device = device
        self.name = name or getattr(xp, "__name__", "array-api")
        self._kernel_cache: dict[Kernel, Any] = {}

    # ------------------------------------------------------------------ info
    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def dtype(self, dtype: Any) -> Any:
        """The namespace's floating dtype for ``dtype`` ("float32", "float64", or a dtype).

        Raises
        ------
        TypeError
            For anything other than float32 or float64.
        """
        name = _dtype_name(dtype)
        if name not in _FLOAT_DTYPES:
            raise TypeError(
                f"unsupported dtype {dtype!r}: mlpx computes in float32 or float64"
            )
        return getattr(self.xp, name)

    def describe(self) -> dict[str, str]:
        """Backend name, array library and version, device: for logs and benchmarks."""
        return {
            "backend": self.name,
            "library": getattr(self.xp, "__name__", str(self.xp)),
            "version": str(getattr(self.xp, "__version__", "")),
            "device": str(self.device) if self.device is not None else "default",
        }

    # ------------------------------------------------------------- transfers
    def asarray(self, x: Any, dtype: Any = None) -> Array:
        """Move ``x`` (host data or an array of this backend) to this backend.

        Parameters
        ----------
        x : array_like
            NumPy array, list, or array of this backend.
        dtype : str or dtype, optional
            Target floating dtype; ``None`` keeps integer/float types as they are.
        """
        xp = self.xp
        kw: dict[str, Any] = {}
        if dtype is not None:
            kw["dtype"] = self.dtype(dtype)
        if self.device is not None:
            kw["device"] = self.device
        if isinstance(x, np.ndarray) and xp is not np:
            # Array API namespaces accept buffer-protocol/NumPy input in asarray.
            return xp.asarray(x, **kw)
        self.check(x)
        return xp.asarray(x, **kw)

    def to_numpy(self, x: Array) -> np.ndarray:
        """Copy ``x`` to a host NumPy array (no copy if it already is one)."""
        if isinstance(x, np.ndarray):
            return x
        return np.asarray(x)

    def zeros(self, shape: Shape, dtype: Any = "float32") -> Array:
        """A zero-filled array of ``shape`` on this backend's device."""
        return self.xp.zeros(shape, dtype=self.dtype(dtype), **self._dev())

    def empty(self, shape: Shape, dtype: Any = "float32") -> Array:
        """An uninitialised array of ``shape`` on this backend's device."""
        return self.xp.empty(shape, dtype=self.dtype(dtype), **self._dev())

    def arange(self, n: int) -> Array:
        """Integer indices ``0 .. n-1`` on the device (for minibatch gathers)."""
        return self.xp.arange(n, **self._dev())

    def copy(self, src: Array, out: Array) -> Array:
        """Copy ``src`` into the preallocated ``out`` (same shape) and return ``out``."""
        out[...] = src
        return out

    # ---------------------------------------------------------------- matmul
    def gemm(
        self,
        a: Array,
        b: Array,
        trans_a: bool = False,
        trans_b: bool = False,
        out: Array | None = None,
    ) -> Array:
        """Matrix product ``op(a) @ op(b)``, ``op`` transposing when asked.

        Parameters
        ----------
        a : array, shape (m, k), or (k, m) if ``trans_a``
        b : array, shape (k, n), or (n, k) if ``trans_b``
        out : array, shape (m, n), optional
            Written in place when given.

        Returns
        -------
        array, shape (m, n)
        """
        xp = self.xp
        if type(a) is np.ndarray or type(b) is np.ndarray:
            self.check(a)  # a host array here is a placement error: say how to move it
            self.check(b)
        if trans_a:
            a = xp.matrix_transpose(a)
        if trans_b:
            b = xp.matrix_transpose(b)
        result = xp.matmul(a, b)
        if out is None:
            return result
        out[...] = result
        return out

    # ------------------------------------------------------------ reductions
    def sum(self, x: Array, axis: int | None = None, out: Array | None = None) -> Array:
        """Sum of ``x`` over ``axis`` (all axes if ``None``), into ``out`` if given."""
        result = self.xp.sum(x, axis=axis)
        if out is None:
            return result
        out[...] = result
        return out

    def to_float(self, x: Array) -> float:
        """Read a 0-d (or size-1) device array back to a Python float.

        This synchronises with the device: call it once per epoch, not per step.
        """
        return float(self.to_numpy(x).reshape(-1)[0]) if not isinstance(x, float) else x

    # -------------------------------------------------------------- indexing
    def take_rows(self, x: Array, idx: Array, out: Array | None = None) -> Array:
        """Rows ``x[idx]`` gathered on the device (minibatches from a permutation)."""
        result = self.xp.take(x, idx, axis=0)
        if out is None:
            return result
        out[...] = result
        return out

    # ----------------------------------------------------------- elementwise
    def run(self, k: Kernel, *args: Any, **kwargs: Any) -> Any:
        """Run kernel ``k`` with this backend's most specific variant."""
        fn = self._kernel_cache.get(k)
        if fn is None:
            fn = self._kernel_cache[k] = k.resolve(self.kinds)
        return fn(self.xp, *args, **kwargs)

    # ---------------------------------------------------------------- device
    def activated(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which this backend's device is the current one (fit, predict)."""
        return contextlib.nullcontext()

    def blas_threads(self, gemm_flops: float) -> contextlib.AbstractContextManager[Any]:
        """Context with a thread count suited to matrix products of ``gemm_flops`` each.

        The generic backend leaves threading to the array library.
        """
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for queued device work to finish (no-op on synchronous backends)."""

    def check(self, x: Any) -> None:
        """Raise :class:`DeviceMismatchError` if ``x`` belongs to another library/device."""
        if isinstance(x, (list, tuple, int, float)):
            return
        mod = type(x).__module__.split(".")[0]
        own = getattr(self.xp, "__name__", "").split(".")[0]
        if mod in ("numpy", own) or own == "":
            return
        raise DeviceMismatchError(
            f"backend {self.name!r} was given a {type(x).__module__}.{type(x).__name__}; "
            f"move it with backend.asarray(x) (from the host) or pass a backend that "
            f"matches the array's library"
        )

    def _dev(self) -> dict[str, Any]:
        return {} if self.device is None else {"device": self.device}


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        pass
    text = str(dtype)
    for name in _FLOAT_DTYPES + ("float16", "int32", "int64"):
        if text.endswith(name):
            return name
    return text
