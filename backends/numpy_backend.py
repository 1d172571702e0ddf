"""The CPU backend: NumPy arrays, matrix products on the installed BLAS."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Iterator

import numpy as np

from .base import Array, Backend, DeviceMismatchError
from .blas import _LOADED, BLAS_PROVIDERS, load_provider, provider_version
from .jit import numba_enabled

__all__ = ["NumpyBackend", "SMALL_GEMM_FLOPS", "small_product_threads"]

#: Products below this many flops (2·m·n·k) run on one BLAS thread: on small products
#: extra OpenBLAS threads gain nothing and spin against whatever else holds a core
#: (the measurements are in benchmarks/README.md, "Why the code is as it is").
SMALL_GEMM_FLOPS = 4e6

# threadpoolctl's controller, kept: building one scans every loaded library (about
# 1 ms here, paid by every fit and predict call before); rebuilt when modules were
# imported or a BLAS provider loaded since (oneMKL comes through ctypes, no module),
# either of which may have brought thread pools of their own.
_controller: list[Any] = [None, None]


# The limit is process-wide state, held by a count: the first context that needs it
# sets it and the last to leave restores the original limits. Without the count, a
# prediction in one thread restored the limit while another thread's product ran
# (which then ran on several threads). A context opened while another holds the
# limit shares it (a different thread count or user_api asked for meanwhile is not
# applied: restoring limits in an interleaved order would leave stale ones behind).
_limit_lock = threading.Lock()
_limit_held: list[Any] = [None, 0]  # the limiter, the open contexts


@contextlib.contextmanager
def _held_limit(threads: int, user_api: str | None) -> Iterator[None]:
    with _limit_lock:
        if _limit_held[1] == 0:
            loaded = (len(sys.modules), len(_LOADED))
            if _controller[0] is None or _controller[1] != loaded:
                from threadpoolctl import ThreadpoolController

                _controller[:] = [ThreadpoolController(), loaded]
            _limit_held[0] = _controller[0].limit(limits=threads, user_api=user_api)
        _limit_held[1] += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_held[1] -= 1
            if _limit_held[1] == 0:
                _limit_held[0].restore_original_limits()
                _limit_held[0] = None


#: One BLAS thread for every product (``mlpx.set_deterministic``): OpenBLAS and MKL
#: sum a product's terms in an order that depends on their thread count, so the
#: bits of a large product depend on the cores a machine has (or is allowed).
_ONE_THREAD = [False]


def set_one_thread(enabled: bool) -> bool:
    """Run every product on one BLAS thread (True) or only the small ones (False).

    Returns
    -------
    bool
        The previous setting.
    """
    previous, _ONE_THREAD[0] = _ONE_THREAD[0], bool(enabled)
    return previous


def small_product_threads(gemm_flops: float, user_api: str | None) -> contextlib.AbstractContextManager[Any]:
    """One thread in the native pools of ``user_api`` (None: all) for small products.

    Below :data:`SMALL_GEMM_FLOPS` per product; ``MLPX_BLAS_THREADS=N`` forces N
    threads for every size, and ``set_one_thread(True)`` one thread for every size.
    Without threadpoolctl nothing changes. Safe from many threads at once: the
    limit stays while any thread's context is open.

    Parameters
    ----------
    gemm_flops : float
        The flops of a typical product inside (2·m·n·k).
    user_api : str or None
        The threadpoolctl pool kind (``"blas"``, ``"openmp"``); None: every pool.

    Returns
    -------
    contextlib.AbstractContextManager
        Entered with ``with``; restores the previous limits on exit.
    """
    forced = "1" if _ONE_THREAD[0] else os.environ.get("MLPX_BLAS_THREADS")
    if forced is None and gemm_flops >= SMALL_GEMM_FLOPS:
        return contextlib.nullcontext()
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return contextlib.nullcontext()
    return _held_limit(int(forced or 1), user_api)


class NumpyBackend(Backend):
    """NumPy on the host CPU.

    ``gemm`` is ``numpy.matmul`` with ``out=``: NumPy hands transposed views to BLAS
    as transpose flags, so no copy is made, and the product lands in a buffer the
    caller allocated once. Kernels use their ``"numpy"`` variants (ufuncs with
    ``out=``), which avoid the temporaries of the generic definitions.

    Parameters
    ----------
    blas : {"numpy", "mkl", "blis"}, optional
        Which library computes the matrix products (see :mod:`mlpx.backends.blas`).
        Default: the environment variable ``MLPX_CPU_BLAS``, else ``"numpy"``. The
        choice changes speed only: the model, its saved files and the backend's
        name (``"cpu"``) are the same whichever computes the products.
    """

    kinds = ("numpy",)
    in_place = True  # gemm, sum and take_rows write into out
    is_gpu = False

    def __init__(self, blas: str | None = None) -> None:
        super().__init__(np, device=None, name="cpu")
        self._low_cache: dict[Any, Any] = {}
        source = "" if blas is not None else " (from MLPX_CPU_BLAS)"
        blas = blas if blas is not None else os.environ.get("MLPX_CPU_BLAS") or "numpy"
        if str(blas).strip().lower() not in BLAS_PROVIDERS:
            raise ValueError(f"unknown CPU BLAS {blas!r}{source}; choose one of {', '.join(BLAS_PROVIDERS)}")
        self._gemm = load_provider(blas)
        self.blas = blas.strip().lower()
        self._spec = "cpu" if source else f"cpu:{self.blas}"

    @property
    def spec(self) -> str:
        """``"cpu"`` (the provider ``MLPX_CPU_BLAS`` picks) or ``"cpu:<blas>"`` when named."""
        return self._spec

    def run(self, k: Any, *args: Any, **kwargs: Any) -> Any:
        # numba compiles no half-precision loops: float16/bfloat16 operands (mixed
        # precision) take the NumPy variants, resolved into a cache of their own.
        try:
            low = args[0].dtype.itemsize < 4
        except (IndexError, AttributeError):
            low = False
        cache = self._low_cache if low else self._kernel_cache
        fn = cache.get(k)
        if fn is None:
            # numba variants (one compiled pass) first, when numba is usable; decided
            # on first use so that importing mlpx never imports numba.
            kinds = ("numba",) + self.kinds if numba_enabled() and not low else self.kinds
            fn = cache[k] = k.resolve(kinds)
        return fn(self.xp, *args, **kwargs)

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info["device"] = f"cpu ({os.cpu_count()} logical cores)"
        info["blas"] = f"{self.blas} {provider_version(self.blas)}".strip()
        return info

    def blas_threads(self, gemm_flops: float) -> contextlib.AbstractContextManager[Any]:
        """One BLAS thread for small products (see :data:`SMALL_GEMM_FLOPS`).

        Needs threadpoolctl (``pip install "mlpx[fast]"``); without it, BLAS keeps its
        own default. ``MLPX_BLAS_THREADS=N`` forces N threads for every size.

        Parameters
        ----------
        gemm_flops : float
            The flops of a typical product inside (2·m·n·k).

        Returns
        -------
        contextlib.AbstractContextManager
            Entered with ``with``; restores the previous limits on exit.
        """
        return small_product_threads(gemm_flops, "blas")

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        self.check(x)
        return np.asarray(x, dtype=None if dtype is None else self.dtype(dtype))

    def to_numpy(self, x: Array) -> np.ndarray:
        self.check(x)
        return np.asarray(x)

    def zeros(self, shape: Any, dtype: Any = "float32") -> Array:
        return np.zeros(shape, dtype=self.dtype(dtype))

    def empty(self, shape: Any, dtype: Any = "float32") -> Array:
        return np.empty(shape, dtype=self.dtype(dtype))

    def astype(self, x: Array, dtype: Any) -> Array:
        return x.astype(self.dtype(dtype), copy=False)

    def copy(self, src: Array, out: Array) -> Array:
        # unsafe: float32 -> bfloat16 is not a "same kind" cast to ml_dtypes
        np.copyto(out, src, casting="unsafe")
        return out

    def gemm(
        self,
        a: Array,
        b: Array,
        trans_a: bool = False,
        trans_b: bool = False,
        out: Array | None = None,
    ) -> Array:
        return self._gemm(a, b, trans_a, trans_b, out)

    def bmm(
        self,
        a: Array,
        b: Array,
        trans_a: bool = False,
        trans_b: bool = False,
        out: Array | None = None,
    ) -> Array:
        # numpy.matmul hands every member's product to BLAS (transposed views as
        # transpose flags) and writes into out. Checked only when not plain NumPy
        # arrays: this runs several times per layer and step.
        if type(a) is not np.ndarray:
            self.check(a)
        if type(b) is not np.ndarray:
            self.check(b)
        if self.blas != "numpy":  # the chosen library computes each member's product
            K = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
            parts = [self._gemm(a if a.ndim == 2 else a[min(k, a.shape[0] - 1)],
                                b if b.ndim == 2 else b[min(k, b.shape[0] - 1)], trans_a, trans_b,
                                None if out is None else out[k]) for k in range(K)]
            return out if out is not None else np.stack(parts)
        return np.matmul(a.mT if trans_a else a, b.mT if trans_b else b, out=out)

    def sum(self, x: Array, axis: int | None = None, out: Array | None = None) -> Array:
        # Half-precision sums (bias gradients over a batch) accumulate in float32:
        # float16's 11-bit mantissa stops counting past 2048 equal terms.
        acc = np.float32 if x.dtype.itemsize < 4 else None
        if type(x) is np.ndarray:
            return x.sum(axis=axis, out=out, dtype=acc)
        return np.sum(x, axis=axis, out=out, dtype=acc)

    def take_rows(self, x: Array, idx: Array, out: Array | None = None) -> Array:
        if type(x) is np.ndarray:  # (skips the dispatch of numpy.take: once per batch and step)
            return x.take(idx, axis=0, out=out)
        return np.take(x, idx, axis=0, out=out)

    def to_float(self, x: Array) -> float:
        return float(x)

    def check(self, x: Any) -> None:
        mod = type(x).__module__.split(".")[0]
        if mod in ("numpy", "builtins"):
            return
        if mod == "cupy":
            raise DeviceMismatchError(
                "a CuPy (GPU) array was handed to the CPU backend; move it to the host "
                "with cupy.asnumpy(x) or backend.to_numpy(x), or use backend='gpu'"
            )
        if hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
            return  # e.g. pandas objects, memoryviews: NumPy converts them on the host
        raise DeviceMismatchError(
            f"the CPU backend cannot use a {type(x).__module__}.{type(x).__name__}; "
            "convert it to a NumPy array first"
        )
