"""The simulated machine behind the stand-in: devices, streams, events and memory.

Nothing here runs on a GPU. Device memory is host memory that only the stand-in's
queued operations touch; what makes the model useful is *when* they touch it:

* Every piece of device work (kernel, ufunc, reduction, copy, upload) is a closure
  queued on a stream (:class:`Queue`). It runs when something waits for it: a host
  read or a synchronisation of that stream, an event recorded after it being
  synchronised, or another stream waiting on such an event (which then runs the
  first stream up to the event before its own later work).
* Each stream runs in one of two schedules, both legal for a real GPU: ``"lazy"``
  (work runs only when something waits for it: the device is infinitely slow) or
  ``"eager"`` (work runs as soon as it is queued and what it waits for allows: the
  device is infinitely fast). A program whose streams are correctly ordered gives
  the same result under every combination; a missing event shows up as wrong data
  under at least one (tests parametrise over them).
* The legacy default stream (``Stream.null``, where CuPy launches unless told
  otherwise) is ordered with every *blocking* stream of its device, as in CUDA;
  streams created with ``non_blocking=True`` are ordered only by events.
* New device memory is filled with ``0xFF`` bytes (NaN for floats), so reading a
  buffer before the work that fills it has run gives NaN, not plausible numbers.
* Host memory from :func:`alloc_pinned` is registered as page-locked; an
  asynchronous host-to-device copy from it reads the host buffer when the copy
  *runs*, as DMA does. From pageable memory the copy reads it when it is queued
  (CUDA stages pageable data synchronously).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import weakref
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["Config", "Machine", "Queue", "EventMark", "DeviceMemory"]

_ALIGN = 512  # CuPy rounds allocations up to 512 bytes


@dataclasses.dataclass
class Config:
    """What the simulated machine looks like.

    Attributes
    ----------
    n_devices : int
        ``cupy.cuda.runtime.getDeviceCount()``; 0 makes it raise as CuPy does
        without a device.
    compute_capability : str
        ``Device.compute_capability`` of every device, as CuPy gives it ("90").
    memory_bytes : int
        Device memory per device (``memGetInfo``'s total).
    peer_access : bool
        Whether an operation may read an array on another device (with CuPy's
        PerformanceWarning) or must fail (CuPy's ValueError, the default).
    nccl_available : bool
        False: ``cupy.cuda.nccl`` holds only ``available = False``, as CuPy without
        libnccl.
    null_schedule, stream_schedule : {"lazy", "eager"}
        When work runs on the legacy default stream and on streams the program
        creates (see the module docstring).
    """

    n_devices: int = 2
    compute_capability: str = "90"
    memory_bytes: int = 16 * 2**30
    peer_access: bool = False
    nccl_available: bool = True
    null_schedule: str = "lazy"
    stream_schedule: str = "lazy"

    def __post_init__(self) -> None:
        for name in ("null_schedule", "stream_schedule"):
            if getattr(self, name) not in ("lazy", "eager"):
                raise ValueError(f"{name} must be 'lazy' or 'eager', got {getattr(self, name)!r}")


class Queue:
    """The work of one stream on one device, in order.

    Parameters
    ----------
    machine : Machine
    device_id : int
    legacy : bool
        The legacy default stream of ``device_id``.
    blocking : bool
        A created stream that synchronises with the legacy stream (CUDA's default).
    eager : bool
        Run work as soon as it is queued.
    """

    def __init__(self, machine: "Machine", device_id: int, legacy: bool, blocking: bool, eager: bool) -> None:
        self.machine = machine
        self.device_id = device_id
        self.legacy = legacy
        self.blocking = blocking
        self.eager = eager
        self.ops: collections.deque[tuple[Callable[[], None], list[tuple["Queue", int]]]] = collections.deque()
        self.enqueued = 0
        self.executed = 0

    def enqueue(self, fn: Callable[[], None], deps: Iterable[tuple["Queue", int]] = ()) -> int:
        """Queue ``fn``; it runs after everything queued here before it and after ``deps``.

        Returns the position of ``fn`` (run it with ``run_until(position)``).
        """
        deps = [(q, k) for q, k in deps if k > q.executed]
        dev = self.machine.devices[self.device_id]
        if self.legacy:  # the legacy stream waits for all blocking streams' earlier work
            deps += [(q, q.enqueued) for q in dev.blocking_queues() if q.enqueued > q.executed]
        elif self.blocking and dev.legacy.enqueued > dev.legacy.executed:
            deps.append((dev.legacy, dev.legacy.enqueued))
        self.ops.append((fn, deps))
        self.enqueued += 1
        if self.eager:
            self.run_until(self.enqueued)
        return self.enqueued

    def run_until(self, count: int) -> None:
        """Run this stream's work up to position ``count`` (what it waits for first)."""
        while self.executed < count:
            fn, deps = self.ops[0]
            for q, k in deps:
                q.run_until(k)
            self.ops.popleft()
            self.executed += 1
            fn()

    def run_all(self) -> None:
        self.run_until(self.enqueued)

    @property
    def idle(self) -> bool:
        return self.executed >= self.enqueued


@dataclasses.dataclass(frozen=True)
class EventMark:
    """Where an event was recorded: a queue and the position of the work before it."""

    queue: Queue
    count: int

    @property
    def done(self) -> bool:
        return self.queue.executed >= self.count

    def synchronize(self) -> None:
        self.queue.run_until(self.count)


class DeviceMemory:
    """One device allocation: ``nbytes`` of poisoned host memory at a fake device address.

    Like CuPy's memory pool, a freed block is kept and handed to the next allocation
    of the same size made while the same stream is current (``arena``), without
    waiting for work still queued on it: work queued on that stream is ordered anyway,
    work on another stream that still uses the block is a race, as on a GPU.
    """

    __slots__ = ("buf", "ptr", "size", "device_id", "last_use", "__weakref__")

    def __init__(self, machine: "Machine", device_id: int, nbytes: int, arena: int = 0) -> None:
        dev = machine.devices[device_id]
        rounded, buf, ptr, pending = dev.reserve(nbytes, arena)
        # Poisoned unless work queued by its previous owner has yet to run: that work
        # still reads or writes it, as it would on a GPU, and a poison written now
        # would be a write no GPU makes.
        if not pending:
            buf.fill(0xFF)
        self.buf = buf
        self.size = int(nbytes)
        self.device_id = device_id
        self.ptr = machine.addresses.add(self, rounded, ptr)
        self.last_use: list[Any] = [None, 0]  # (queue, position) of the last work touching it
        weakref.finalize(self, dev.release, rounded, arena, buf, self.ptr, self.last_use)

    def touched(self, queue: "Queue", position: int) -> None:
        """Record that work at ``position`` of ``queue`` uses this block."""
        self.last_use[0], self.last_use[1] = queue, position


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    try:
        from numpy.lib.array_utils import byte_bounds  # NumPy >= 2
    except ImportError:  # pragma: no cover
        byte_bounds = np.byte_bounds
    return byte_bounds(a)


class _AddressSpace:
    """Fake device addresses -> allocations (NCCL and ``__cuda_array_interface__`` use pointers)."""

    def __init__(self, start: int) -> None:
        self._next = start
        self._starts: list[int] = []
        self._owners: dict[int, tuple[weakref.ref[Any], int]] = {}

    def add(self, owner: Any, size: int, ptr: int | None = None) -> int:
        if ptr is None:
            ptr = self._next
            self._next += size + _ALIGN  # a gap, so a pointer one past the end resolves to nothing
        bisect.insort(self._starts, ptr)
        self._owners[ptr] = (weakref.ref(owner), size)
        return ptr

    def remove(self, ptr: int) -> None:
        i = bisect.bisect_left(self._starts, ptr)
        if i < len(self._starts) and self._starts[i] == ptr:
            del self._starts[i]
        self._owners.pop(ptr, None)

    def find(self, ptr: int, nbytes: int = 1) -> tuple[Any, int] | None:
        """The owner of ``[ptr, ptr + nbytes)`` and the offset of ``ptr`` in it, or None."""
        i = bisect.bisect_right(self._starts, ptr) - 1
        if i < 0:
            return None
        start = self._starts[i]
        ref, size = self._owners[start]
        owner = ref()
        if owner is None or ptr + nbytes > start + size:
            return None
        return owner, ptr - start


class _Device:
    """Per-device state: memory accounting, the legacy stream, created streams."""

    def __init__(self, machine: "Machine", device_id: int) -> None:
        self.machine = machine
        self.id = device_id
        self.total = int(machine.config.memory_bytes)
        self.used = 0  # bytes held by live arrays
        self.cached = 0  # bytes freed by arrays and kept by CuPy's pool
        self.free_blocks: dict[tuple[int, int], list[tuple[np.ndarray, int, list[Any]]]] = {}
        self.legacy = Queue(machine, device_id, legacy=True, blocking=False,
                            eager=machine.config.null_schedule == "eager")
        self._queues: list[weakref.ref[Queue]] = []

    def reserve(self, nbytes: int, arena: int) -> tuple[int, np.ndarray, int | None, bool]:
        """A block for ``nbytes``: (rounded size, buffer, its address or None when new,
        whether work queued before it was freed has yet to run)."""
        rounded = -(-max(int(nbytes), 1) // _ALIGN) * _ALIGN
        free = self.free_blocks.get((arena, rounded))
        if free:
            buf, ptr, last_use = free.pop()
            self.cached -= rounded
            self.used += rounded
            q, pos = last_use
            return rounded, buf, ptr, q is not None and q.executed < pos
        if self.used + self.cached + rounded > self.total:
            self.free_all()  # CuPy frees its cached blocks and retries before giving up
        if self.used + rounded > self.total:
            raise self.machine.out_of_memory(nbytes, self.used)
        self.used += rounded
        return rounded, np.empty(rounded, dtype=np.uint8), None, False

    def release(self, rounded: int, arena: int, buf: np.ndarray, ptr: int, last_use: list[Any]) -> None:
        self.machine.addresses.remove(ptr)
        self.used -= rounded
        self.cached += rounded
        self.free_blocks.setdefault((arena, rounded), []).append((buf, ptr, last_use))

    def free_all(self) -> None:
        self.free_blocks.clear()
        self.cached = 0

    def new_queue(self, blocking: bool) -> Queue:
        q = Queue(self.machine, self.id, legacy=False, blocking=blocking,
                  eager=self.machine.config.stream_schedule == "eager")
        self._queues.append(weakref.ref(q))
        return q

    def queues(self) -> list[Queue]:
        alive = [q for q in (r() for r in self._queues) if q is not None]
        self._queues = [weakref.ref(q) for q in alive]
        return [self.legacy] + alive

    def blocking_queues(self) -> list[Queue]:
        return [q for q in self.queues()[1:] if q.blocking]

    def synchronize(self) -> None:
        for q in self.queues():
            q.run_all()


class Machine:
    """All simulated devices, the current device and stream, and pinned host memory.

    Parameters
    ----------
    config : Config
    out_of_memory : callable
        ``(nbytes, used) -> exception`` (CuPy's OutOfMemoryError, built by the caller).
    """

    def __init__(self, config: Config, out_of_memory: Callable[[int, int], Exception]) -> None:
        self.config = config
        self.out_of_memory = out_of_memory
        self.addresses = _AddressSpace(0x7F0000000000)
        self.devices = [_Device(self, i) for i in range(config.n_devices)]
        self.current_device = 0
        self.device_stack: list[int] = []
        self.current_stream: dict[int, Any] = {}  # device -> Stream object (None: Stream.null)
        self.stream_stack: list[tuple[int, Any]] = []
        # page-locked host memory: start address -> (weakref to the buffer, size)
        self._pinned: dict[int, tuple[weakref.ref[np.ndarray], int]] = {}
        self._pinned_starts: list[int] = []
        self.compute_types: dict[str, int] = {}
        # Host waits on the device, by kind ("get", "stream", "event", "device", ...).
        self.host_waits: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------- pinned memory
    def alloc_pinned(self, nbytes: int) -> np.ndarray:
        """Page-locked host memory: a uint8 NumPy buffer registered by address."""
        raw = np.empty(max(int(nbytes), 1), dtype=np.uint8)
        start = raw.__array_interface__["data"][0]
        bisect.insort(self._pinned_starts, start)
        self._pinned[start] = (weakref.ref(raw), raw.size)
        weakref.finalize(raw, self._unpin, start)
        return raw

    def _unpin(self, start: int) -> None:
        i = bisect.bisect_left(self._pinned_starts, start)
        if i < len(self._pinned_starts) and self._pinned_starts[i] == start:
            del self._pinned_starts[i]
        self._pinned.pop(start, None)

    def pinned_owner(self, lo: int, hi: int) -> bool:
        """Whether the host address range ``[lo, hi)`` lies in one page-locked allocation."""
        i = bisect.bisect_right(self._pinned_starts, lo) - 1
        if i < 0:
            return False
        start = self._pinned_starts[i]
        ref, size = self._pinned[start]
        return ref() is not None and hi <= start + size

    def is_pinned(self, host: np.ndarray) -> bool:
        """Whether all of ``host``'s memory lies in one page-locked allocation."""
        if host.size == 0:
            return False
        lo, hi = _byte_bounds(host)
        return self.pinned_owner(lo, hi)

    # -------------------------------------------------------------- synchronisation
    def synchronize_all(self) -> None:
        for dev in self.devices:
            dev.synchronize()


# The machine of the installed stand-in (one at a time); set by strict_cupy.install.
ACTIVE: list[Machine] = []


def machine() -> Machine:
    """The installed stand-in's machine."""
    if not ACTIVE:
        raise RuntimeError("the strict CuPy stand-in is not installed (use the strict_cupy fixture)")
    return ACTIVE[-1]
