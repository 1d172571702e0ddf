"""A background reader: one thread runs a producer ahead of its consumer, boundedly.

The training loop computes a step while the next data is read: file reads,
decompression (zarr's codecs, HDF5) and NumPy copies release the GIL, and so do the
step's BLAS products, so the two overlap on separate cores. A :class:`Prefetcher`
runs ``produce(p)`` in a daemon thread; everything it hands to ``p.emit`` lands in a
queue of at most ``depth`` items, which the consumer takes with :meth:`Prefetcher.get`.
The producer blocks when the queue is full, so memory stays bounded by ``depth`` items
plus the one being produced; a producer that waits for something else (a free buffer)
waits with :meth:`Prefetcher.take`, which also notices a close.

An exception in the producer is re-raised in the consumer, at the :meth:`get` that
would have returned the next item (with the producer's traceback chained). Closing
(:meth:`close`, also on ``with``-exit) stops the producer at its next ``emit`` or
``take`` and waits for the thread, so no read outlives the epoch that asked for it.

Example
-------
>>> from mlpx.prefetch import Prefetcher
>>> def produce(p):
...     for i in range(3):
...         p.emit(i * i)
>>> with Prefetcher(produce, depth=2) as p:
...     [p.get() for _ in range(3)], p.get() is Prefetcher.END
([0, 1, 4], True)
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

__all__ = ["Prefetcher"]

_POLL_S = 0.05  # how often a blocked side looks at the stop flag


class _Stopped(Exception):
    """Raised inside the producer by ``emit`` once the consumer has closed."""


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Run ``produce(self)`` in a background thread, ``depth`` items ahead.

    Parameters
    ----------
    produce : callable
        Called once, in the thread, with this Prefetcher; it calls :meth:`emit` for
        every item in order and returns when done.
    depth : int
        Items the producer may be ahead of the consumer (at least 1).
    name : str
        The thread's name (shown by debuggers and ``threading.enumerate``).

    Attributes
    ----------
    END : object
        What :meth:`get` returns after the last item.
    """

    END = object()

    def __init__(self, produce: Callable[["Prefetcher"], None], depth: int = 1,
                 name: str = "mlpx-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def emit(self, item: Any) -> None:
        """Hand ``item`` to the consumer (producer side; blocks while the queue is full)."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def take(self, source: queue.Queue[Any]) -> Any:
        """The next item of ``source``, waiting for one (producer side; stops on close)."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return source.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _run(self, produce: Callable[["Prefetcher"], None]) -> None:
        try:
            produce(self)
            self.emit(self.END)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, raised there
            try:
                self.emit(_Failure(exc))
            except _Stopped:
                return

    def get(self) -> Any:
        """The next item (blocking), or :attr:`END` after the last one.

        Raises
        ------
        Exception
            Whatever the producer raised, when the consumer reaches that point.
        RuntimeError
            Called after :meth:`close`.
        """
        if self._stop.is_set():
            raise RuntimeError("this Prefetcher is closed")
        if self._done:
            return self.END
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread ended without a result") from None
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        if item is self.END:
            self._done = True
        return item

    def close(self) -> None:
        """Stop the producer and wait for its thread (idempotent)."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting for room
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=_POLL_S)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
