"""The backend interface, and its generic implementation over an array namespace.

A backend is an explicit object that owns one array namespace ``xp`` on one device.
Layers, losses and optimizers receive it when they are built and touch arrays only
through it. The interface:

=====================  =====================================================
transfer / creation    ``asarray``, ``to_numpy``, ``zeros``, ``empty``, ``copy``,
                       ``astype``, ``arange``
matmul                 ``gemm`` (the single entry point to BLAS / cuBLAS)
reductions             ``sum``, ``to_float`` (the one host read-back)
indexing               ``take_rows``
kernels                ``run`` (a :class:`~backends.kernel.Kernel`: its most specific
                       variant for this backend's ``kinds``)
placement              ``check`` (arrays of another library or device are refused),
                       ``dtype``, ``describe``
execution context      ``activated`` (the device is current), ``blas_threads``,
                       ``tf32_matmul``, ``synchronize``
host-to-device stream  ``empty_pinned``, ``upload``, ``copy_stream``, ``record_event``,
                       ``wait_event``, ``synchronize_event``, ``device_free_bytes``
=====================  =====================================================

:class:`Backend` implements all of it with Array API functions of ``xp`` and with no
streams (a synchronous device). That is what
:class:`~backends.array_api_backend.ArrayAPIBackend` uses as it is.

Buffers and results: every operation that takes an ``out`` buffer *returns* its result,
and callers use what it returns (``self.dW = be.gemm(X, dZ, trans_a=True, out=self.dW)``).
The NumPy and CuPy backends (``in_place``) write the results of ``gemm``, ``sum`` and
``take_rows`` into ``out`` and return ``out`` itself, so a workspace, or a view into a
larger buffer, stays what it was. The generic implementation computes functionally:
those three return new arrays and leave ``out`` alone (on a mutable namespace writing
would only add a copy; on an immutable one, JAX, nothing can be written). ``copy`` and
``upload``, whose purpose is the store, write into ``out`` wherever arrays can be
written (``mutable``): :meth:`Backend.assign` is that rule.
:class:`~backends.numpy_backend.NumpyBackend` and
:class:`~backends.cupy_backend.CupyBackend` override the operations where their
library does better: products into ``out`` through BLAS / cuBLAS, in-place ufuncs,
device contexts, pinned memory, streams and events.
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
_LOW_DTYPES = ("float16", "bfloat16")  # compute-only dtypes of mixed precision


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
    mutable : bool
        Whether arrays can be written in place (``a[...] = value``), so that views
        into a buffer see the writes. False for immutable namespaces (JAX): every
        result is then a new array (see :meth:`assign`).
    in_place : bool
        Whether ``gemm``, ``sum`` and ``take_rows`` write their result into the
        ``out`` they are given and return it (NumPy, CuPy). False here: the generic
        implementation returns new arrays.
    """

    kinds: tuple[str, ...] = ()
    is_gpu: bool = False
    mutable: bool = True
    in_place: bool = False

    def __init__(self, xp: Any, device: Any = None, name: str | None = None) -> None:
        self.xp = xp
        self.device = device
        self.name: str = name or str(getattr(xp, "__name__", "array-api"))
        self._kernel_cache: dict[Kernel, Any] = {}

    # ------------------------------------------------------------------ info
    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @property
    def spec(self) -> str | None:
        """The name :func:`mlpx.backends.get_backend` builds this backend from, or None.

        Backends that ``get_backend`` builds pickle (and deep-copy) as this name, so
        an estimator holding one clones, pickles and crosses process pools. None for
        a backend built by hand over a namespace object.
        """
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        # The backends get_backend builds are pickled by name (registered in the package);
        # anything else holds a module, which no pickle can carry.
        raise TypeError(
            f"{self!r} cannot be pickled or copied: only the backends get_backend builds "
            "(the CPU, GPU and Array API ones) pickle, as their name"
        )

    def dtype(self, dtype: Any) -> Any:
        """The namespace's floating dtype for ``dtype``.

        ``"float32"`` and ``"float64"`` are the dtypes parameters live in;
        ``"float16"`` and ``"bfloat16"`` are accepted as *compute* dtypes of the
        mixed-precision modes (:mod:`mlpx.precision`), where the namespace has them.

        Parameters
        ----------
        dtype : str or dtype
            ``"float32"``, ``"float64"``, ``"float16"`` or ``"bfloat16"``, or a dtype
            object of one of them.

        Returns
        -------
        dtype
            The namespace's dtype object.

        Raises
        ------
        TypeError
            For any other dtype, or a low-precision one the namespace lacks.
        """
        name = _dtype_name(dtype)
        if name in _FLOAT_DTYPES:
            return getattr(self.xp, name)
        if name in _LOW_DTYPES:
            return self._low_dtype(name)
        raise TypeError(f"unsupported dtype {dtype!r}: mlpx computes in float32 or float64")

    def _low_dtype(self, name: str) -> Any:
        lib = getattr(self.xp, "__name__", "").split(".")[0]
        if name == "float16" and lib in ("numpy", "cupy"):
            return self.xp.float16
        if name == "bfloat16" and lib in ("numpy", "cupy"):
            try:
                import ml_dtypes  # NumPy's (and CuPy >= 14's) bfloat16
            except ImportError:
                raise TypeError("bfloat16 needs the ml_dtypes package: pip install ml_dtypes") from None
            return ml_dtypes.bfloat16
        raise TypeError(f"backend {self.name!r} has no {name} arrays (the Array API standard has none)")

    def describe(self) -> dict[str, str]:
        """Backend name, array library and version, device: for logs and benchmarks.

        Returns
        -------
        dict of str to str
            ``"backend"``, ``"library"``, ``"version"`` and ``"device"``.
        """
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

        Returns
        -------
        array
            ``x`` on this backend's device, the same shape.

        Raises
        ------
        DeviceMismatchError
            ``x`` is an array of another library or device.
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
        """Copy ``x`` to a host NumPy array (no copy if it already is one).

        Parameters
        ----------
        x : array
            An array of this backend, any shape.

        Returns
        -------
        numpy.ndarray
            The same shape and dtype.
        """
        if isinstance(x, np.ndarray):
            return x
        return np.asarray(x)

    def zeros(self, shape: Shape, dtype: Any = "float32") -> Array:
        """A zero-filled array of ``shape`` on this backend's device.

        Parameters
        ----------
        shape : int or tuple of int
            The array's shape.
        dtype : str or dtype, default "float32"
            As :meth:`dtype` accepts.

        Returns
        -------
        array, shape ``shape``
            On this backend's device.
        """
        return self.xp.zeros(shape, dtype=self.dtype(dtype), **self._dev())

    def empty(self, shape: Shape, dtype: Any = "float32") -> Array:
        """An uninitialised array of ``shape`` on this backend's device.

        Parameters
        ----------
        shape : int or tuple of int
            The array's shape.
        dtype : str or dtype, default "float32"
            As :meth:`dtype` accepts.

        Returns
        -------
        array, shape ``shape``
            On this backend's device.
        """
        return self.xp.empty(shape, dtype=self.dtype(dtype), **self._dev())

    def arange(self, n: int) -> Array:
        """Integer indices ``0 .. n-1`` on the device (for minibatch gathers).

        Parameters
        ----------
        n : int
            The number of indices.

        Returns
        -------
        array, shape (n,)
            The namespace's default integer dtype.
        """
        return self.xp.arange(n, **self._dev())

    def assign(self, out: Array, value: Array) -> Array:
        """Store ``value`` (same shape as ``out``) as the content of ``out``; return the result.

        Mutable backends write ``value`` into ``out`` (``out[...] = value``, nothing
        when ``value`` is ``out``) and return ``out``; immutable ones return ``value``
        and leave ``out`` as it was. Callers rebind to what is returned. Used where
        the identity of a buffer matters (the model's flat parameters, a buffer
        another library shares).

        Parameters
        ----------
        out : array
            The buffer to hold the result.
        value : array
            The same shape as ``out``.

        Returns
        -------
        array
            ``out`` on mutable backends, ``value`` on immutable ones.
        """
        if value is out or not self.mutable:
            return value
        out[...] = value
        return out

    def copy(self, src: Array, out: Array) -> Array:
        """Copy ``src`` into the preallocated ``out`` (same shape); return the copy.

        A different dtype of ``out`` converts (e.g. float32 master weights into their
        bfloat16 compute copy). Mutable backends return ``out``; immutable ones return
        ``src`` (converted), which nothing can change.

        Parameters
        ----------
        src : array
            Any shape.
        out : array
            The same shape as ``src``; its dtype is the result's.

        Returns
        -------
        array
            The copy, in ``out``'s dtype.
        """
        return self.assign(out, src if src.dtype == out.dtype else self.xp.astype(src, out.dtype))

    def astype(self, x: Array, dtype: Any) -> Array:
        """Convert ``x`` to ``dtype`` on this backend (``x`` itself when it already is).

        Parameters
        ----------
        x : array
            Any shape.
        dtype : str or dtype
            As :meth:`dtype` accepts.

        Returns
        -------
        array
            The same shape as ``x``.
        """
        want = self.dtype(dtype)
        return x if x.dtype == want else self.xp.astype(x, want)

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
            The left operand.
        b : array, shape (k, n), or (n, k) if ``trans_b``
            The right operand.
        trans_a, trans_b : bool, default False
            Whether to transpose ``a`` or ``b`` (without copying).
        out : array, shape (m, n), optional
            Where the NumPy and CuPy backends write the product; the generic
            implementation returns a new array and leaves it alone.

        Returns
        -------
        array, shape (m, n)
            ``out`` on the NumPy and CuPy backends when it was given, else a new array.

        Raises
        ------
        DeviceMismatchError
            An operand is a host array on a device backend.
        """
        if type(a) is np.ndarray or type(b) is np.ndarray:
            self.check(a)  # a host array here is a placement error: say how to move it
            self.check(b)
        # .mT is the standard's transpose attribute: no namespace function call.
        return self._matmul(a.mT if trans_a else a, b.mT if trans_b else b)

    def _matmul(self, a: Array, b: Array) -> Array:
        return self.xp.matmul(a, b)

    def bmm(
        self,
        a: Array,
        b: Array,
        trans_a: bool = False,
        trans_b: bool = False,
        out: Array | None = None,
    ) -> Array:
        """Batched matrix product ``op(a) @ op(b)`` over a leading stack axis.

        ``op`` transposes the last two axes when asked; a 2-D operand broadcasts
        over the stack (every member multiplies the same matrix).

        Parameters
        ----------
        a : array, shape (K, m, k) or (m, k) (transposed: (K, k, m) or (k, m))
            The left operands.
        b : array, shape (K, k, n) or (k, n) (transposed: (K, n, k) or (n, k))
            The right operands.
        trans_a, trans_b : bool, default False
            Whether to transpose the last two axes of ``a`` or ``b``.
        out : array, shape (K, m, n), optional
            Where the product may be written. The generic definition returns a new
            array and leaves ``out`` alone (so immutable namespaces work); NumPy and
            CuPy write into it and return it. Callers use the returned value.

        Returns
        -------
        array, shape (K, m, n)
            Member k's product in ``[k]``.
        """
        # The generic product transposes the last two axes and broadcasts stacks
        # already: a batched product is the same call.
        return self.gemm(a, b, trans_a, trans_b, out)

    # ------------------------------------------------------------ reductions
    def sum(self, x: Array, axis: int | None = None, out: Array | None = None) -> Array:
        """Sum of ``x`` over ``axis`` (all axes if ``None``).

        Half-precision input accumulates in float32 (backends override accordingly).

        Parameters
        ----------
        x : array
            Any shape.
        axis : int, optional
            The axis to sum over; ``None`` sums everything.
        out : array, optional
            Where the NumPy and CuPy backends write the result (as :meth:`gemm`).

        Returns
        -------
        array
            ``x``'s shape without ``axis`` (0-d for ``axis=None``).
        """
        return self.xp.sum(x, axis=axis)

    def to_float(self, x: Array) -> float:
        """Read a 0-d (or size-1) device array back to a Python float.

        This synchronises with the device: call it once per epoch, not per step.

        Parameters
        ----------
        x : array or float
            A 0-d or size-1 array (a float is returned as it is).

        Returns
        -------
        float
            The value, read back to the host.
        """
        return float(self.to_numpy(x).reshape(-1)[0]) if not isinstance(x, float) else x

    # -------------------------------------------------------------- indexing
    def take_rows(self, x: Array, idx: Array, out: Array | None = None) -> Array:
        """Gather the rows ``x[idx]`` on the device (minibatches from a permutation).

        Parameters
        ----------
        x : array, shape (n, f)
            The rows to gather from.
        idx : array of int, shape (m,)
            Row indices on this backend.
        out : array, shape (m, f), optional
            Where the NumPy and CuPy backends write the rows (as :meth:`gemm`).

        Returns
        -------
        array, shape (m, f)
            ``out`` when given on NumPy and CuPy, else a new array.
        """
        return self.xp.take(x, idx, axis=0)

    def split(self, x: Array, stops: Sequence[int]) -> list[Array]:
        """Cut the 1-D ``x`` into consecutive pieces at ``stops``.

        The pieces are ``x[:stops[0]], x[stops[0]:stops[1]], ..., x[stops[-1]:]``:
        views where the namespace has views; the model cuts its flat parameters into
        the layers' arrays with it.

        Parameters
        ----------
        x : array, shape (n,)
            A flat buffer.
        stops : sequence of int
            Increasing offsets into ``x``.

        Returns
        -------
        list of array
            ``len(stops) + 1`` pieces.
        """
        bounds = [0, *stops, int(x.shape[0])]
        return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    # ----------------------------------------------------------- elementwise
    def run(self, k: Kernel, *args: Any, **kwargs: Any) -> Any:
        """Run kernel ``k`` with this backend's most specific variant.

        Parameters
        ----------
        k : Kernel
            Made with :func:`~mlpx.backends.kernel`.
        *args, **kwargs
            The kernel's arguments (after the namespace, which this passes first).

        Returns
        -------
        object
            What the kernel returns (use it: in-place variants return their ``out``).
        """
        fn = self._kernel_cache.get(k)
        if fn is None:
            fn = self._kernel_cache[k] = k.resolve(self.kinds)
        return fn(self.xp, *args, **kwargs)

    # ---------------------------------------------------------------- device
    def activated(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which this backend's device is the current one (fit, predict).

        Returns
        -------
        contextlib.AbstractContextManager
            Entered with ``with``; restores the previous state on exit.
        """
        return contextlib.nullcontext()

    def blas_threads(self, gemm_flops: float) -> contextlib.AbstractContextManager[Any]:
        """Context with a thread count suited to matrix products of ``gemm_flops`` each.

        The generic backend leaves threading to the array library.

        Parameters
        ----------
        gemm_flops : float
            The flops of a typical product that will run inside (2·m·n·k).

        Returns
        -------
        contextlib.AbstractContextManager
            Entered with ``with``; restores the previous state on exit.
        """
        return contextlib.nullcontext()

    def tf32_matmul(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which float32 products may use TF32 tensor cores (GPU backends).

        Elsewhere a no-op: there is no TF32 outside NVIDIA tensor cores.

        Returns
        -------
        contextlib.AbstractContextManager
            Entered with ``with``; restores the previous state on exit.
        """
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for queued device work to finish (no-op on synchronous backends)."""

    def check(self, x: Any) -> None:
        """Raise :class:`DeviceMismatchError` if ``x`` belongs to another library/device.

        Parameters
        ----------
        x : object
            An array, or a Python list, tuple or number (always accepted).

        Raises
        ------
        DeviceMismatchError
            ``x`` is an array of another library than NumPy or this backend's.
        """
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

    # ------------------------------------------------ host-to-device streams
    # Used by mlpx.streaming to feed minibatches from host memory. The defaults
    # describe a synchronous backend: staging buffers are plain host memory, a copy
    # has finished when it returns, and there are no streams or events (None), so
    # recording one is free and waiting on one returns at once. GPU backends override
    # all seven to overlap copies with computation.

    def empty_pinned(self, shape: Shape, dtype: Any) -> np.ndarray:
        """A host (NumPy) staging buffer to upload from.

        Parameters
        ----------
        shape : int or tuple of int
            The buffer's shape.
        dtype : NumPy dtype or name
            Any NumPy dtype (float16, ml_dtypes' bfloat16, ...).

        Returns
        -------
        numpy.ndarray
            Page-locked on GPU backends, so copies from it can run asynchronously;
            ordinary host memory here.
        """
        return np.empty(shape, dtype=dtype)

    def upload(self, src: np.ndarray, out: Array, stream: Any = None) -> Array:
        """Copy the host array ``src`` into the device array ``out`` (same shape and dtype).

        On backends with streams the copy is queued on ``stream`` (from
        :meth:`copy_stream`; ``None``: the current stream) and this returns before it
        ran: ``src`` must not change, nor ``out`` be read, until an event recorded on
        ``stream`` after it has completed. Here the copy is done when this returns.

        Parameters
        ----------
        src : numpy.ndarray
            Host data, ideally from :meth:`empty_pinned`.
        out : array
            The device buffer, the same shape and dtype.
        stream : object, optional
            A stream from :meth:`copy_stream`; ``None``: the current stream.

        Returns
        -------
        array
            ``out``, or a new array on an immutable backend.
        """
        return self.assign(out, self.asarray(src))

    def copy_stream(self) -> Any:
        """A new stream for uploads that runs beside the compute stream; ``None`` here."""
        return None

    def record_event(self, stream: Any = None) -> Any:
        """An event that completes when the work queued so far on ``stream`` has run.

        Parameters
        ----------
        stream : object, optional
            ``None``: the current (compute) stream.

        Returns
        -------
        object or None
            The event; ``None`` here: on a synchronous backend all work queued so far
            has already run.
        """
        return None

    def wait_event(self, event: Any, stream: Any = None) -> None:
        """Make ``stream`` wait for ``event`` on the device.

        Work queued on ``stream`` later starts only after ``event`` completed; the host
        does not block.

        Parameters
        ----------
        event : object or None
            From :meth:`record_event`; ``None`` is a no-op.
        stream : object, optional
            ``None``: the current stream.
        """

    def synchronize_event(self, event: Any) -> None:
        """Block the host until ``event`` has completed (a no-op for ``None``).

        Parameters
        ----------
        event : object or None
            From :meth:`record_event`.
        """

    def device_free_bytes(self) -> int | None:
        """Device memory available for new arrays, in bytes; ``None`` for host memory."""
        return None

    def _dev(self) -> dict[str, Any]:
        return {} if self.device is None else {"device": self.device}


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype
    try:
        return str(np.dtype(dtype).name)
    except TypeError:
        pass
    text = str(dtype)
    for name in _FLOAT_DTYPES + _LOW_DTYPES + ("int32", "int64"):
        if text.endswith(name):
            return name
    return text
