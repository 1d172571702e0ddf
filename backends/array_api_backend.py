"""A backend for any namespace that follows the Python Array API standard.

The namespace is wrapped with ``array-api-compat`` (an optional dependency), so
NumPy, CuPy, PyTorch and ``array-api-strict`` all present the standard's functions.
Only generic kernel definitions run here: no ``out=``, no ndarray methods, nothing
outside the standard. That is what makes ``array-api-strict`` a useful oracle in the
test suite: code that passes on it does not lean on NumPy-only idioms.

The generic path computes functionally on every namespace: kernels and products return
new arrays, and the model gathers its flat gradient from the layers after each backward
pass. Where arrays can be written (PyTorch, array-api-strict, NumPy) the updated
parameters are stored into the model's flat buffer, which the layers view; immutable
namespaces (JAX) are detected when the backend is built (``mutable`` is False), and
there the model cuts its layers' arrays from each new flat buffer (see
:meth:`backends.base.Backend.assign` and :func:`~mlpx.backends.kernel`).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import numpy as np

from .base import Array, Backend, BackendError, BackendUnavailableError, DeviceMismatchError, _dtype_name
from .numpy_backend import small_product_threads

__all__ = ["KNOWN_NAMESPACES", "ArrayAPIBackend"]

#: Array API namespaces that :class:`ArrayAPIBackend` imports by name. Importing a
#: module runs its code (``"this"`` prints a poem, a local ``evil.py`` does anything),
#: so a name outside this list is refused before anything is imported, unless this
#: process has already handed that namespace to :class:`ArrayAPIBackend` as a module
#: object: importing a namespace yourself and passing it is the way to use others.
KNOWN_NAMESPACES = frozenset({
    "array_api_strict",
    "numpy",
    "cupy",
    "torch",
    "jax.numpy",
    "dask.array",
    "sparse",
    "ndonnx",
    "array_api_compat.numpy",
    "array_api_compat.cupy",
    "array_api_compat.torch",
    "array_api_compat.dask.array",
})
# Names of namespaces given as module objects in this process: a pickle or a
# Sequential.to() of such a backend may then name them again.
_GIVEN: set[str] = set()


class ArrayAPIBackend(Backend):
    """Generic backend over an Array API namespace.

    Parameters
    ----------
    namespace : module or str
        The namespace, or its import name: one of :data:`KNOWN_NAMESPACES` (e.g.
        ``"array_api_strict"``, ``"torch"``, ``"jax.numpy"``), or the name of a
        namespace already passed here as a module object in this process. Any other
        name is refused without importing it, since importing runs the module's
        code; import such a namespace yourself and pass the module.
    device : object or str, optional
        A device of that namespace (``array_api_strict.Device("device1")``); a
        string is looked up among ``namespace.__array_namespace_info__().devices()``.

    Attributes
    ----------
    name : str
        ``"array-api:<module>"`` (``"array_api_strict"`` for array-api-strict), with
        ``"[<device>]"`` when a device was given: a name :func:`mlpx.backends.get_backend`
        resolves back to this backend (pickles, ``Sequential.to``, model files).
    mutable : bool
        Whether the namespace's arrays accept item assignment (probed once here).

    Raises
    ------
    BackendError
        A name that is not a known Array API namespace (nothing is imported).
    BackendUnavailableError
        array-api-compat is missing, or a known namespace is not installed.
    TypeError
        A module (or other object) that is not an Array API namespace.
    """

    kinds: tuple[str, ...] = ()  # generic definitions only

    def __init__(self, namespace: Any = "array_api_strict", device: Any = None) -> None:
        try:
            import array_api_compat
        except ImportError as exc:
            raise BackendUnavailableError(
                "the Array API backend needs array-api-compat: pip install \"mlpx[array-api]\""
            ) from exc
        given = not isinstance(namespace, str)
        if not given:
            namespace = _import_known(namespace)
        xp = _as_namespace(array_api_compat, namespace)
        if given:
            _GIVEN.add(namespace.__name__)
        if isinstance(device, str):
            devices = {str(d): d for d in xp.__array_namespace_info__().devices()}
            match = [d for k, d in devices.items() if device in k]
            if not match:
                raise BackendUnavailableError(
                    f"device {device!r} not found; {xp.__name__} offers {sorted(devices)}"
                )
            device = match[0]
        self._compat = array_api_compat
        module = namespace.__name__
        prefix = "" if module == "array_api_strict" else "array-api:"
        name = prefix + module + ("" if device is None else f"[{device}]")
        super().__init__(xp, device=device, name=name)
        self.mutable = _accepts_item_assignment(xp)
        # array-api-compat wraps some namespaces (PyTorch, NumPy, CuPy) to fix type
        # promotion; matmul of two arrays of one dtype needs no fixing, and the
        # wrapper's checks cost more than a small product (benchmarks/README.md).
        self._native_matmul = getattr(namespace, "matmul", None) if xp is not namespace else None
        self._split = _numpy_style_split(xp)

    @property
    def spec(self) -> str:
        """The backend's ``name``: ``get_backend`` resolves it to an equal backend."""
        return self.name

    def dtype(self, dtype: Any) -> Any:
        """The namespace's floating dtype for ``dtype``, as :meth:`Backend.dtype`.

        Parameters
        ----------
        dtype : str or dtype
            As :meth:`Backend.dtype`.

        Returns
        -------
        dtype
            The namespace's dtype object.

        Raises
        ------
        TypeError
            Also for float64 when the namespace has no float64 arrays in this process
            (JAX without ``jax_enable_x64``, which would silently compute in float32).
        """
        if _dtype_name(dtype) == "float64" and hasattr(self.xp, "__array_namespace_info__"):
            floats = self.xp.__array_namespace_info__().dtypes(kind="real floating")
            if "float64" not in floats:
                raise TypeError(self._no_float64(sorted(floats)))
        return super().dtype(dtype)

    def _no_float64(self, floats: list[str]) -> str:
        msg = (f"backend {self.name!r} has no float64 arrays in this process (its namespace "
               f"offers {', '.join(floats)}); use dtype='float32'")
        if self.xp.__name__.split(".")[0] == "jax":
            # mlpx does not switch x64 on itself: it changes the default dtypes of every
            # JAX computation in the process, not only mlpx's.
            msg += (", or enable JAX's 64-bit mode before building the model: "
                    "JAX_ENABLE_X64=1 in the environment, or jax.config.update('jax_enable_x64', True)")
        return msg

    def blas_threads(self, gemm_flops: float) -> contextlib.AbstractContextManager[Any]:
        """One thread in every native thread pool for small products (as the CPU backend).

        The array library's own pools (BLAS, and OpenMP: PyTorch's intra-op threads)
        are limited through threadpoolctl when the products are below
        :data:`~backends.numpy_backend.SMALL_GEMM_FLOPS`; on a busy machine extra
        threads spin on such products instead of speeding them up (the measurement
        is in benchmarks/README.md). ``MLPX_BLAS_THREADS=N`` forces N threads for
        every size. Without threadpoolctl nothing changes.

        Parameters
        ----------
        gemm_flops : float
            The flops of a typical product inside (2·m·n·k).

        Returns
        -------
        contextlib.AbstractContextManager
            Entered with ``with``; restores the previous limits on exit.
        """
        return small_product_threads(gemm_flops, None)

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
            x = np.asarray(x)
            if dtype is None and x.dtype.kind == "f":
                dtype = x.dtype.name
            kw: dict[str, Any] = {} if self.device is None else {"device": self.device}
            if dtype is not None:
                kw["dtype"] = self.dtype(dtype)
            elif x.dtype.kind in "iu":
                kw["dtype"] = self._index_dtype()
            return self.xp.asarray(x, **kw)
        self.check(x)
        if dtype is not None and x.dtype != self.dtype(dtype):
            return self.xp.astype(x, self.dtype(dtype))
        return x

    def _index_dtype(self) -> Any:
        # int64 where the namespace has it by default; JAX without x64 has int32 only.
        if hasattr(self.xp, "__array_namespace_info__"):
            return self.xp.__array_namespace_info__().default_dtypes(device=self.device)["indexing"]
        return self.xp.int64

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
        info["library"] = self.name.split("[")[0].removeprefix("array-api:")
        return info

    def _matmul(self, a: Array, b: Array) -> Array:
        if self._native_matmul is not None and a.dtype == b.dtype:
            return self._native_matmul(a, b)
        return self.xp.matmul(a, b)

    def split(self, x: Array, stops: Any) -> list[Array]:
        # One call where the namespace splits as NumPy does (JAX: one operation
        # instead of one slice each, which costs far more there).
        if self._split is not None:
            return list(self._split(x, list(stops)))
        return super().split(x, stops)


def _import_known(name: str) -> Any:
    """Import the namespace called ``name`` if it is a known one; refuse it unimported else."""
    if name not in KNOWN_NAMESPACES and name not in _GIVEN:
        raise BackendError(
            f"{name!r} is not a known Array API namespace, so it is not imported (importing "
            f"a module runs its code). Known: {', '.join(sorted(KNOWN_NAMESPACES))}. For "
            f"another namespace, import it yourself and pass the module: "
            f"mlpx.backends.ArrayAPIBackend(module)"
        )
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendUnavailableError(f"Array API namespace {name!r} cannot be imported: {exc}") from exc


def _as_namespace(compat: Any, namespace: Any) -> Any:
    """``namespace`` as array-api-compat presents it; TypeError if it is not an Array API one."""
    label = getattr(namespace, "__name__", None) or type(namespace).__name__
    if not isinstance(getattr(namespace, "__name__", None), str) or not callable(
            getattr(namespace, "asarray", None)):
        raise TypeError(f"{label!r} is not an Array API namespace (it has no asarray function)")
    try:
        return compat.array_namespace(namespace.asarray(0.0))
    except TypeError as exc:
        raise TypeError(f"{label!r} is not an Array API namespace: {exc}") from None


def _numpy_style_split(xp: Any) -> Any:
    """``xp.split`` when it cuts at indices as ``numpy.split`` does, else None.

    ``split`` is not in the Array API standard; PyTorch's takes piece sizes instead,
    which the probe tells apart (three pieces of 2, 1, 2 from ``[2, 3]``).
    """
    split = getattr(xp, "split", None)
    if split is None:
        return None
    try:
        pieces = split(xp.arange(5), [2, 3])
        if [tuple(p.shape) for p in pieces] == [(2,), (1,), (2,)]:
            return split
    except Exception:  # a different signature: not NumPy's
        pass
    return None


def _accepts_item_assignment(xp: Any) -> bool:
    """Whether arrays of ``xp`` can be written in place (False for JAX)."""
    a = xp.zeros((1,))
    try:
        a[...] = xp.ones((1,))
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return False
    return True
