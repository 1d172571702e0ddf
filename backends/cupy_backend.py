"""The GPU backend: CuPy arrays, matrix products on cuBLAS.

CuPy is imported when a GPU backend is first built, never at ``import mlpx``, so the
package works on machines with NumPy alone. CuPy 14 or newer is required: CuPy 13
lacks ``cupy.astype`` (which the engine's Array API code calls), and its bfloat16
support is too incomplete for ``precision="bf16"``.

:func:`gpu_status` is the one probe of CuPy, the CUDA driver and the devices:
:func:`cuda_available` (and so ``mlpx.available_backends()`` and ``backend="auto"``)
and ``python -m mlpx.doctor`` both read it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, cast

import numpy as np

from .base import Array, Backend, BackendUnavailableError, DeviceMismatchError

__all__ = ["MIN_CUPY", "CupyBackend", "GpuStatus", "cuda_available", "gpu_status", "import_cupy"]

#: Oldest CuPy the GPU backend runs on (major, minor).
MIN_CUPY = (14, 0)

_INSTALL_HINT = 'install CuPy with: pip install "mlpx[gpu]" (or the cupy-cudaXXx wheel matching your CUDA)'


def _cupy_distribution() -> str:
    """The pip name of the installed CuPy wheel (``cupy-cuda12x``, ``cupy-cuda13x``, ...)."""
    try:
        for dist in importlib.metadata.distributions():
            name = (cast(Any, dist.metadata).get("Name") or "").lower()
            if name == "cupy" or name.startswith("cupy-cuda") or name.startswith("cupy-rocm"):
                return name
    except Exception:  # broken metadata must not hide the real message
        pass
    return "cupy-cuda12x"


def _version_tuple(version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def import_cupy() -> Any:
    """Import CuPy (>= :data:`MIN_CUPY`), turning its absence into a clear error.

    Returns
    -------
    module
        The ``cupy`` module.

    Raises
    ------
    BackendUnavailableError
        CuPy is missing or too old (the message names the fix).
    """
    try:
        import cupy
    except ImportError as exc:  # not installed, or its CUDA libraries are missing
        raise BackendUnavailableError(
            f"backend 'gpu' needs CuPy, which could not be imported ({exc}); {_INSTALL_HINT}"
        ) from exc
    version = str(getattr(cupy, "__version__", "unknown"))
    parsed = _version_tuple(version)
    if parsed is None or parsed < MIN_CUPY:
        dist = _cupy_distribution()
        raise BackendUnavailableError(
            f"backend 'gpu' needs CuPy >= {MIN_CUPY[0]}, but CuPy {version} ({dist}) is installed; "
            f'upgrade with: pip install -U "{dist}[ctk]>={MIN_CUPY[0]}" (or pip install -e ".[gpu]" '
            "in an mlpx checkout)"
        )
    return cupy


def _device_count(cupy: Any) -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        return 0


@dataclass
class GpuStatus:
    """What :func:`gpu_status` found.

    Parameters
    ----------
    cupy_version : str or None
        Installed CuPy's version (None when it does not import).
    cupy_package : str or None
        The pip name of its wheel (``cupy-cuda12x``, ...), read with ``details``.
    cupy_error : str or None
        Why CuPy is unusable: not importable, or older than :data:`MIN_CUPY` (the
        :class:`BackendUnavailableError` message, with the fix).
    driver_version : int or None
        The CUDA driver's API version (12080 for 12.8); 0 when no driver is loaded.
    runtime_version : int or None
        The CUDA runtime CuPy was built for.
    device_count : int
        Visible CUDA devices.
    device_error : str or None
        Why no device is visible (the driver's error), when none is.
    devices : list of dict
        Per device: ``name``, ``compute_capability`` (e.g. ``"9.0"``), ``memory_gib``.
    """

    cupy_version: str | None = None
    cupy_package: str | None = None
    cupy_error: str | None = None
    driver_version: int | None = None
    runtime_version: int | None = None
    device_count: int = 0
    device_error: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """CuPy is importable and new enough, and at least one device is visible."""
        return self.cupy_error is None and self.device_count > 0


def gpu_status(details: bool = False) -> GpuStatus:
    """Probe CuPy, the CUDA driver and the devices; never raises.

    Parameters
    ----------
    details : bool
        Also read the driver and runtime versions and each device's properties
        (for ``mlpx.doctor``; the usable/not-usable answer is the same).

    Returns
    -------
    GpuStatus
        What was found; ``usable`` says whether the GPU backend can run.
    """
    st = GpuStatus()
    try:
        cupy = import_cupy()
    except BackendUnavailableError as exc:
        st.cupy_error = str(exc)
        try:  # report the version of a CuPy that imports but is too old
            import cupy as old

            st.cupy_version = str(getattr(old, "__version__", "unknown"))
        except Exception:  # noqa: BLE001 - any import failure means no version to show
            pass
        return st
    except Exception as exc:  # noqa: BLE001 - a broken install must read as "unusable", not crash
        st.cupy_error = f"CuPy failed to import: {type(exc).__name__}: {exc}"
        return st
    st.cupy_version = str(cupy.__version__)
    try:
        st.device_count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - no driver, no device, broken driver
        st.device_error = f"{type(exc).__name__}: {exc}"
    if details:
        st.cupy_package = _cupy_distribution()
        for attr, fn in (("driver_version", "driverGetVersion"), ("runtime_version", "runtimeGetVersion")):
            try:
                setattr(st, attr, int(getattr(cupy.cuda.runtime, fn)()))
            except Exception:  # noqa: BLE001 - reported as unknown
                pass
        for i in range(st.device_count):
            try:
                props = cupy.cuda.runtime.getDeviceProperties(i)
                name = props["name"]
                st.devices.append({
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "compute_capability": f"{props['major']}.{props['minor']}",
                    "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                })
            except Exception as exc:  # noqa: BLE001
                st.devices.append({"name": f"unreadable ({type(exc).__name__}: {exc})"})
    return st


def cuda_available() -> bool:
    """Whether CuPy (>= 14) imports and at least one CUDA device is visible.

    Returns
    -------
    bool
        True when ``backend="gpu"`` can run here.
    """
    return gpu_status().usable


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
    in_place = True  # gemm, sum and take_rows write into out
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
    def spec(self) -> str:
        """``"gpu:N"``."""
        return self.name

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
        host: np.ndarray = self.xp.asnumpy(x)
        return host

    def zeros(self, shape: Any, dtype: Any = "float32") -> Array:
        with self.device:
            return self.xp.zeros(shape, dtype=self.dtype(dtype))

    def empty(self, shape: Any, dtype: Any = "float32") -> Array:
        with self.device:
            return self.xp.empty(shape, dtype=self.dtype(dtype))

    def arange(self, n: int) -> Array:
        with self.device:
            return self.xp.arange(n)

    # CuPy launches on the *current* device. Every method that launches work enters
    # this backend's, so "gpu:1" computes on device 1 even outside activated().
    def run(self, k: Any, *args: Any, **kwargs: Any) -> Any:
        with self.device:
            return super().run(k, *args, **kwargs)

    def copy(self, src: Array, out: Array) -> Array:
        with self.device:
            self.xp.copyto(out, src, casting="unsafe")  # dtype conversions (mixed precision) too
        return out

    @contextlib.contextmanager
    def tf32_matmul(self) -> Iterator[None]:
        """Run float32 products on TF32 tensor cores inside the block (compute capability >= 8.0).

        CuPy picks cuBLAS's compute type per dtype; ``cupy._core.set_compute_type``
        switches it for the process (the ``CUPY_TF32=1`` environment variable only
        sets the initial default), so the previous setting is restored on exit.

        Yields
        ------
        None
            Inside the block, float32 products use TF32.
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
            a = a.T if a.ndim == 2 else self.xp.swapaxes(a, -1, -2)
        if trans_b:
            b = b.T if b.ndim == 2 else self.xp.swapaxes(b, -1, -2)
        # cupy.matmul passes transposed views to cuBLAS as transpose flags; on stacks it
        # is one cublas<t>gemmStridedBatched call (or a broadcast of a 2-D operand).
        with self.device:
            return self.xp.matmul(a, b, out=out)

    def bmm(
        self,
        a: Array,
        b: Array,
        trans_a: bool = False,
        trans_b: bool = False,
        out: Array | None = None,
    ) -> Array:
        return self.gemm(a, b, trans_a, trans_b, out)

    def sum(self, x: Array, axis: int | None = None, out: Array | None = None) -> Array:
        with self.device:
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
        with self.device:
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
            pinned: np.ndarray = cupyx.empty_pinned(shape, dtype=dtype)
            return pinned

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
