"""``cupy.cuda`` of the stand-in: devices, streams, events, memory pools, runtime calls."""

from __future__ import annotations

import itertools
import warnings
import weakref
from typing import Any

import numpy as np

from . import _runtime
from ._runtime import EventMark, Queue, machine
from ._strict import API, StrictObject

__all__ = [
    "CUDARuntimeError",
    "Device",
    "Event",
    "MemoryPointer",
    "MemoryPool",
    "OutOfMemoryError",
    "PerformanceWarning",
    "PinnedMemoryPointer",
    "PinnedMemoryPool",
    "Stream",
    "current_queue",
    "get_current_stream",
]


class CUDARuntimeError(RuntimeError):
    """CuPy's ``cupy_backends.cuda.api.runtime.CUDARuntimeError``: ``"<name>: <message>"``."""

    def __init__(self, status: str, message: str) -> None:
        self.status = status
        super().__init__(f"{status}: {message}")


CUDARuntimeError.__module__ = "cupy_backends.cuda.api.runtime"


class OutOfMemoryError(MemoryError):
    """CuPy's ``cupy.cuda.memory.OutOfMemoryError``."""

    def __init__(self, size: int, total: int) -> None:
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


OutOfMemoryError.__module__ = "cupy.cuda.memory"


class PerformanceWarning(RuntimeWarning):
    """CuPy's ``cupy._util.PerformanceWarning``."""


def _check_device_id(device_id: int) -> int:
    m = machine()
    if not 0 <= device_id < len(m.devices):
        raise CUDARuntimeError("cudaErrorInvalidDevice", "invalid device ordinal")
    return device_id


# ------------------------------------------------------------------ devices
class Device(StrictObject):
    """``cupy.cuda.Device``: a device id; a context manager making it current."""

    _cupy_name = "cupy.cuda.Device"
    __slots__ = ("_id", "_saved")

    def __init__(self, device: Any = None) -> None:
        self._id = machine().current_device if device is None else int(device)
        self._saved: list[int] = []

    @property
    def id(self) -> int:
        return self._id

    def __int__(self) -> int:
        return self._id

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Device) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("Device", self._id))

    def __repr__(self) -> str:
        return f"<CUDA Device {self._id}>"

    def __enter__(self) -> "Device":
        m = machine()
        _check_device_id(self._id)
        self._saved.append(m.current_device)
        m.current_device = self._id
        return self

    def __exit__(self, *exc: Any) -> None:
        machine().current_device = self._saved.pop()

    def use(self) -> None:
        machine().current_device = _check_device_id(self._id)

    def synchronize(self) -> None:
        m = machine()
        m.host_waits["device"] += 1
        m.devices[_check_device_id(self._id)].synchronize()

    @property
    def compute_capability(self) -> str:
        _check_device_id(self._id)
        return machine().config.compute_capability

    @property
    def mem_info(self) -> tuple[int, int]:
        dev = machine().devices[_check_device_id(self._id)]
        return dev.total - dev.used - dev.cached, dev.total


# ------------------------------------------------------------------ streams
_LEGACY_PTR = API["modules"]["cupy.cuda.runtime"]["values"].get("streamLegacy", 1)


class Stream(StrictObject):
    """``cupy.cuda.Stream``.

    ``Stream.null`` (ptr 0) is the legacy default stream of whichever device is
    current when work is queued on it; any other stream belongs to the device that
    was current when it was created.
    """

    _cupy_name = "cupy.cuda.Stream"
    __slots__ = ("ptr", "device_id", "_queue", "_non_blocking", "_saved", "__weakref__")
    null: "Stream"

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False,
                 priority: Any = None) -> None:
        self._saved: list[Any] = []
        self._non_blocking = bool(non_blocking) and not null
        if null:
            self.ptr, self.device_id, self._queue = 0, -1, None
            return
        if ptds:
            raise NotImplementedError("cupy.cuda.Stream(ptds=True): the stand-in models the legacy default stream only")
        m = machine()
        self.device_id = m.current_device
        self._queue = m.devices[self.device_id].new_queue(blocking=not non_blocking)
        self.ptr = 0x5000 + 16 * next(_HANDLES)
        _STREAMS_BY_PTR[self.ptr] = self

    def _queue_now(self) -> Queue:
        """Where work queued on this stream now goes."""
        m = machine()
        if self._queue is None:
            return m.devices[m.current_device].legacy
        if self.device_id != m.current_device:
            raise CUDARuntimeError("cudaErrorInvalidResourceHandle", "invalid resource handle")
        return self._queue

    @property
    def is_non_blocking(self) -> bool:
        return self._non_blocking

    @property
    def done(self) -> bool:
        return self._queue_now().idle

    def synchronize(self) -> None:
        machine().host_waits["stream"] += 1
        self._queue_now().run_all()

    def record(self, event: "Event | None" = None) -> "Event":
        if event is None:
            event = Event()
        event.record(self)
        return event

    def wait_event(self, event: "Event") -> None:
        mark = event._mark
        if mark is not None:  # an event never recorded is complete
            self._queue_now().enqueue(_nothing, [(mark.queue, mark.count)])

    def use(self) -> "Stream":
        m = machine()
        m.current_stream[self._device_for(m)] = self
        return self

    def _device_for(self, m: _runtime.Machine) -> int:
        return m.current_device if self.device_id < 0 else self.device_id

    def __enter__(self) -> "Stream":
        m = machine()
        dev = self._device_for(m)
        self._saved.append((dev, m.current_stream.get(dev)))
        m.current_stream[dev] = self
        return self

    def __exit__(self, *exc: Any) -> None:
        dev, prev = self._saved.pop()
        machine().current_stream[dev] = prev

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self) -> int:
        return hash(("Stream", self.ptr))

    def __repr__(self) -> str:
        return f"<Stream {self.ptr} (device {self.device_id})>"


def _nothing() -> None:
    pass


# Raw stream and event handles, unique over every installation in the process (a stream
# kept from an earlier test must not share a handle with a new one).
_HANDLES = itertools.count(1)


_STREAMS_BY_PTR: "weakref.WeakValueDictionary[int, Stream]" = weakref.WeakValueDictionary()


def stream_from_ptr(ptr: int) -> Stream:
    """The Stream object with this raw handle (NCCL calls take handles)."""
    if ptr in (0, _LEGACY_PTR):
        return Stream.null
    try:
        return _STREAMS_BY_PTR[ptr]
    except KeyError:
        raise CUDARuntimeError("cudaErrorInvalidResourceHandle", "invalid resource handle") from None


def get_current_stream(device_id: int = -1) -> Stream:
    """``cupy.cuda.get_current_stream``: per device, ``Stream.null`` unless one was made current."""
    m = machine()
    dev = m.current_device if device_id < 0 else device_id
    s = m.current_stream.get(dev)
    return Stream.null if s is None else s


def current_queue(stream: Stream | None = None) -> Queue:
    """The queue work goes to now: ``stream``'s, or the current stream's."""
    return (stream if stream is not None else get_current_stream())._queue_now()


class Event(StrictObject):
    """``cupy.cuda.Event``: a position in a stream's work."""

    _cupy_name = "cupy.cuda.Event"
    __slots__ = ("_mark", "ptr", "_timing")

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        self._mark: EventMark | None = None
        self._timing = not disable_timing
        self.ptr = 0x9000 + 16 * next(_HANDLES)

    def record(self, stream: Stream | None = None) -> None:
        q = current_queue(stream)
        self._mark = EventMark(q, q.enqueued)

    @property
    def done(self) -> bool:
        return self._mark is None or self._mark.done

    def synchronize(self) -> None:
        if self._mark is not None:
            machine().host_waits["event"] += 1
            self._mark.synchronize()


# ------------------------------------------------------------------- memory
class MemoryPointer(StrictObject):
    """``cupy.cuda.MemoryPointer``: an allocation and an offset into it."""

    _cupy_name = "cupy.cuda.MemoryPointer"
    __slots__ = ("mem", "ptr", "device_id")

    def __init__(self, mem: Any, offset: int) -> None:
        self.mem = mem
        self.ptr = mem.ptr + int(offset)
        self.device_id = mem.device_id

    @property
    def device(self) -> Device:
        return Device(self.device_id)

    def __int__(self) -> int:
        return self.ptr

    def __add__(self, offset: int) -> "MemoryPointer":
        return MemoryPointer(self.mem, self.ptr - self.mem.ptr + int(offset))

    def __repr__(self) -> str:
        return f"<MemoryPointer 0x{self.ptr:x} device={self.device_id}>"


class MemoryPool(StrictObject):
    """``cupy.cuda.MemoryPool``: byte counts of the current device's pool."""

    _cupy_name = "cupy.cuda.MemoryPool"
    __slots__ = ()

    def used_bytes(self) -> int:
        m = machine()
        return m.devices[m.current_device].used

    def free_bytes(self) -> int:
        m = machine()
        return m.devices[m.current_device].cached

    def total_bytes(self) -> int:
        return self.used_bytes() + self.free_bytes()

    def free_all_blocks(self, stream: Any = None) -> None:
        m = machine()
        m.devices[m.current_device].free_all()

    def get_limit(self) -> int:
        return 0


class PinnedMemoryPointer(StrictObject):
    """``cupy.cuda.PinnedMemoryPointer``: page-locked host memory."""

    _cupy_name = "cupy.cuda.PinnedMemoryPointer"
    __slots__ = ("_raw", "ptr", "size")

    def __init__(self, raw: np.ndarray) -> None:
        self._raw = raw
        self.ptr = raw.__array_interface__["data"][0]
        self.size = raw.size


def alloc_pinned_memory(size: int) -> PinnedMemoryPointer:
    return PinnedMemoryPointer(machine().alloc_pinned(size))


class PinnedMemoryPool(StrictObject):
    """``cupy.cuda.PinnedMemoryPool`` (no caching is modelled)."""

    _cupy_name = "cupy.cuda.PinnedMemoryPool"
    __slots__ = ()

    def n_free_blocks(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass


_MEMORY_POOL = MemoryPool()
_PINNED_POOL = PinnedMemoryPool()


def get_default_memory_pool() -> MemoryPool:
    return _MEMORY_POOL


def get_default_pinned_memory_pool() -> PinnedMemoryPool:
    return _PINNED_POOL


# ------------------------------------------------------------------ runtime
def getDeviceCount() -> int:  # noqa: N802 - CUDA's names
    n = machine().config.n_devices
    if n == 0:
        raise CUDARuntimeError("cudaErrorNoDevice", "no CUDA-capable device is detected")
    return n


def getDevice() -> int:  # noqa: N802
    return machine().current_device


def setDevice(device: int) -> None:  # noqa: N802
    machine().current_device = _check_device_id(int(device))


def deviceSynchronize() -> None:  # noqa: N802
    m = machine()
    m.host_waits["device"] += 1
    m.devices[m.current_device].synchronize()


def memGetInfo() -> tuple[int, int]:  # noqa: N802
    m = machine()
    return Device(m.current_device).mem_info


def runtimeGetVersion() -> int:  # noqa: N802
    return 12080


def driverGetVersion() -> int:  # noqa: N802
    return 12080


def getDeviceProperties(device: int) -> dict[str, Any]:  # noqa: N802
    m = machine()
    _check_device_id(int(device))
    cc = m.config.compute_capability
    return {
        "name": f"Strict CuPy stand-in (sm_{cc})".encode(),
        "totalGlobalMem": m.devices[int(device)].total,
        "major": int(cc[:-1]),
        "minor": int(cc[-1]),
        "multiProcessorCount": 132,
        "warpSize": 32,
        "maxThreadsPerBlock": 1024,
        "pciBusID": int(device),
    }


_RT_VALUES = API["modules"]["cupy.cuda.runtime"]["values"]


class PointerAttributes:
    """``cupy.cuda.runtime.PointerAttributes``: what ``cudaPointerGetAttributes`` reports."""

    def __init__(self, device: int, devicePointer: int, hostPointer: int, type: int = -1) -> None:  # noqa: A002,N803
        self.device, self.devicePointer, self.hostPointer, self.type = device, devicePointer, hostPointer, type


PointerAttributes.__module__ = "cupy_backends.cuda.api.runtime"


def pointerGetAttributes(ptr: int) -> PointerAttributes:  # noqa: N802
    """Device memory of the stand-in, page-locked host memory, or unregistered memory."""
    m = machine()
    ptr = int(ptr)
    found = m.addresses.find(ptr)
    if found is not None:
        return PointerAttributes(found[0].device_id, ptr, 0, _RT_VALUES["memoryTypeDevice"])
    if m.pinned_owner(ptr, ptr + 1):
        return PointerAttributes(m.current_device, ptr, ptr, _RT_VALUES["memoryTypeHost"])
    return PointerAttributes(-2, 0, 0, _RT_VALUES["memoryTypeUnregistered"])


def streamSynchronize(ptr: int) -> None:  # noqa: N802
    stream_from_ptr(ptr).synchronize()


# ------------------------------------------------------- cuBLAS compute type
_LINALG = API["modules"]["cupy._core._routines_linalg"]["values"]
COMPUTE_TYPE_DEFAULT = _LINALG["COMPUTE_TYPE_DEFAULT"]


def get_compute_type(dtype: Any) -> int:
    """``cupy._core.get_compute_type``: cuBLAS's compute type for ``dtype``."""
    return machine().compute_types.get(np.dtype(dtype).name, COMPUTE_TYPE_DEFAULT)


def set_compute_type(dtype: Any, compute_type: int) -> None:
    """``cupy._core.set_compute_type``."""
    if compute_type not in _LINALG.values():
        raise ValueError(f"invalid compute type: {compute_type}")
    machine().compute_types[np.dtype(dtype).name] = int(compute_type)


def peer_check(device_id: int) -> None:
    """CuPy's ``_check_peer_access``: an array on another device than the current one."""
    m = machine()
    if device_id == m.current_device:
        return
    msg = f"The device where the array resides ({device_id}) is different from the current device ({m.current_device})."
    if not m.config.peer_access:
        raise ValueError(f"{msg} Peer access is unavailable between these devices.")
    warnings.warn(f"{msg} Peer access has been activated automatically.", PerformanceWarning, stacklevel=4)


Stream.null = Stream(null=True)
