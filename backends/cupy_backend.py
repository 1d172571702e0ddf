"""The GPU backend: CuPy arrays, matrix products on cuBLAS.

CuPy is imported when a GPU backend is first built, never at ``import mlpx``, so the
package works on machines with NumPy alone.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from .base import Array, Backend, BackendUnavailableError, DeviceMismatchError

__all__ = ["CupyBackend", "cuda_available", "import_cupy"]

_INSTALL_HINT = 'install CuPy with: pip install "mlpx[gpu]" (or the cupy-cudaXXx wheel matching your CUDA)'


def import_cupy() -> Any:
    """Import CuPy, turning its absence into a clear :class:`BackendUnavailableError`."""
    try:
        import cupy
    except ImportError as exc:  # not installed, or its CUDA libraries are missing
        raise BackendUnavailableError(
            f"backend 'gpu' needs CuPy, which could not be imported ({exc}); {_INSTALL_HINT}"
        ) from exc
    return cupy


def _device_count(cupy: Any) -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        return 0


def cuda_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    try:
        cupy = import_cupy()
    except BackendUnavailableError:
        return False
    return _device_count(cupy) > 0


class CupyBackend(Backend):
    """CuPy on one CUDA device.

    Parameters
    ----------
    device_id : int
        CUDA device ordinal (``"gpu:1"`` gives 1).

    Notes
    -----
    Kernels use their ``"cupy"`` variants when registered (fused, one launch) and
    otherwise their ``"numpy"`` variants: CuPy's ufuncs take ``out=`` exactly as
    NumPy's do, so those run unchanged on the GPU without temporaries.
    """

    kinds = ("cupy", "numpy")
    is_gpu = True

    def __init__(self, device_id: int = 0) -> None:
        cupy = import_cupy()
        n = _device_count(cupy)
        if n == 0:
            raise BackendUnavailableError(
                "backend 'gpu' was asked for but no CUDA device is visible "
                "(check nvidia-smi, the driver, and CUDA_VISIBLE_DEVICES); "
                "use backend='cpu', or backend='auto' to fall back to the CPU"
            )
        if not 0 <= device_id < n:
            raise BackendUnavailableError(
                f"backend 'gpu:{device_id}' was asked for but only {n} CUDA device(s) "
                f"are visible (gpu:0 .. gpu:{n - 1})"
            )
        super().__init__(cupy, device=cupy.cuda.Device(device_id), name=f"gpu:{device_id}")
        self.device_id = device_id

    @property
    def compute_capability(self) -> int:
        """The device's compute capability as an int, e.g. 80 for an A100, 90 for an H100."""
        return int(self.device.compute_capability)

    def describe(self) -> dict[str, str]:
        cupy = self.xp
        props = cupy.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"]
        return {
            "backend": self.name,
            "library": "cupy",
            "version": cupy.__version__,
            "device": name.decode() if isinstance(name, bytes) else str(name),
            "memory_gib": f"{props['totalGlobalMem'] / 2**30:.1f}",
            "cuda_runtime": str(cupy.cuda.runtime.runtimeGetVersion()),
        }

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        # CuPy allocates and launches on the *current* device; make ours current
        # for the duration of a fit/predict so "gpu:1" really means device 1.
        with self.device:
            yield

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        if not isinstance(x, np.ndarray):  # host arrays are what asarray moves to the device
            self.check(x)
        with self.device:
            return self.xp.asarray(x, dtype=None if dtype is None else self.dtype(dtype))

    def to_numpy(self, x: Array) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        return self.xp.asnumpy(x)

    def zeros(self, shape: Any, dtype: Any = "float32") -> Array:
        with self.device:
            return self.xp.zeros(shape, dtype=self.dtype(dtype))

    def empty(self, shape: Any, dtype: Any = "float32") -> Array:
        with self.device:
            return self.xp.empty(shape, dtype=self.dtype(dtype))

    def arange(self, n: int) -> Array:
        with self.device:
            return self.xp.arange(n)

    def copy(self, src: Array, out: Array) -> Array:
        self.xp.copyto(out, src, casting="unsafe")  # dtype conversions (mixed precision) too
        return out

    @contextlib.contextmanager
    def tf32_matmul(self) -> Iterator[None]:
        """float32 products on TF32 tensor cores inside the block (compute capability >= 8.0).

        CuPy picks cuBLAS's compute type per dtype; ``cupy._core.set_compute_type``
        switches it for the process (the ``CUPY_TF32=1`` environment variable only
        sets the initial default), so the previous setting is restored on exit.
        """
        try:
            from cupy import _core
            from cupy._core import _routines_linalg as linalg

            get, set_ = _core.get_compute_type, _core.set_compute_type
        except (ImportError, AttributeError):
            raise BackendUnavailableError(
                f"TF32 needs CuPy's compute-type switch, which CuPy {self.xp.__version__} lacks; "
                "upgrade CuPy or use precision='float32'"
            ) from None
        tf32 = getattr(linalg, "COMPUTE_TYPE_TF32", 7)
        old = get(np.float32)
        set_(np.float32, tf32)
        try:
            yield
        finally:
            set_(np.float32, old)

    def gemm(
        self,
        a: Array,
        b: Array,
        trans_a: bool = False,
        trans_b: bool = False,
        out: Array | None = None,
    ) -> Array:
        if type(a) is np.ndarray or type(b) is np.ndarray:
            self.check(a)
            self.check(b)
        if trans_a:
            a = a.T
        if trans_b:
            b = b.T
        # cupy.matmul passes transposed views to cuBLAS as transpose flags.
        return self.xp.matmul(a, b, out=out)

    def sum(self, x: Array, axis: int | None = None, out: Array | None = None) -> Array:
        if x.dtype.itemsize < 4:
            # Half precision (mixed-precision bias gradients): accumulate in float32,
            # then store into out's dtype.
            total = self.xp.sum(x, axis=axis, dtype=self.xp.float32)
            if out is None:
                return total.astype(x.dtype)
            self.xp.copyto(out, total, casting="unsafe")
            return out
        return self.xp.sum(x, axis=axis, out=out)

    def take_rows(self, x: Array, idx: Array, out: Array | None = None) -> Array:
        return self.xp.take(x, idx, axis=0, out=out)

    def to_float(self, x: Array) -> float:
        return float(x)  # one device->host copy, which synchronises

    def synchronize(self) -> None:
        self.device.synchronize()

    # ------------------------------------------------ host-to-device streams
    # See Backend: these let mlpx.streaming overlap host->device copies with kernels.

    def empty_pinned(self, shape: Any, dtype: Any) -> np.ndarray:
        # Page-locked memory: the copy engine reads it by DMA while the host goes on.
        # From pageable memory the driver first stages the data itself, synchronously.
        # Allocated with this device current, so its context registers the pages.
        import cupyx

        with self.device:
            return cupyx.empty_pinned(shape, dtype=dtype)

    def upload(self, src: np.ndarray, out: Array, stream: Any = None) -> Array:
        # cudaMemcpyAsync on `stream`: returns at once when `src` is page-locked.
        # `out` must be C-contiguous (a whole buffer or its leading rows).
        out.set(src, stream=stream)
        return out

    def copy_stream(self) -> Any:
        # non_blocking: no implicit synchronisation with the legacy default stream,
        # where CuPy launches kernels unless told otherwise; the order between the two
        # streams is then exactly the events the caller records and waits on.
        with self.device:
            return self.xp.cuda.Stream(non_blocking=True)

    def record_event(self, stream: Any = None) -> Any:
        with self.device:
            # Without timing the event is a pure ordering marker (cheaper to record and wait on).
            event = self.xp.cuda.Event(disable_timing=True)
            event.record(stream if stream is not None else self.xp.cuda.get_current_stream())
        return event

    def wait_event(self, event: Any, stream: Any = None) -> None:
        if event is None:
            return
        with self.device:
            (stream if stream is not None else self.xp.cuda.get_current_stream()).wait_event(event)

    def synchronize_event(self, event: Any) -> None:
        if event is not None:
            event.synchronize()

    def device_free_bytes(self) -> int | None:
        with self.device:
            free, _total = self.xp.cuda.runtime.memGetInfo()
            # Blocks cached by CuPy's memory pool count as used for the driver, but new
            # CuPy arrays reuse them.
            return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def check(self, x: Any) -> None:
        if isinstance(x, np.ndarray):
            raise DeviceMismatchError(
                "a NumPy (host) array was handed to the GPU backend; move it to the "
                "device with backend.asarray(x) (or cupy.asarray(x))"
            )
        dev = getattr(x, "device", None)
        if isinstance(x, self.xp.ndarray) and dev is not None and dev.id != self.device_id:
            raise DeviceMismatchError(
                f"an array on gpu:{dev.id} was handed to backend {self.name!r}; move it "
                f"with backend.asarray(x) or use backend='gpu:{dev.id}'"
            )
